//! The store's HA SQL (migration 3) on both backends: the leader lease, slots
//! claimed once whoever fires them, run claims, renewals and the sweeper, and a
//! replica's start that leaves the other replicas' runs alone. Leases here are
//! short (400 ms) so that an expiry is waited for, bounded, in well under a second.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use faultline_controller::schedule::{FireAction, ScheduleSpec, SkipReason};
use faultline_controller::store::{
    AuditQuery, Fence, FireOutcome, FireRecord, NewRun, RunOwner, RunQuery, RunStatus,
    SCHEDULER_LEASE, ScheduleDef, SlotBy, SlotFire, SlotFired,
};

use crate::common::Fixture;

crate::on_both_backends!(ha:
    the_leader_lease_is_exclusive_renewed_and_taken_over_when_it_expires,
    a_slot_is_fired_once_whoever_fires_it,
    runs_are_claimed_renewed_and_swept_when_their_owner_stops,
    a_starting_replica_aborts_only_its_own_unowned_and_expired_runs,
    replicas_heartbeat,
);

const SHORT: Duration = Duration::from_millis(400);

fn owner(replica: &str, lease: Duration) -> RunOwner {
    RunOwner {
        replica: replica.to_owned(),
        lease,
    }
}

fn inline(requested_by: &str) -> NewRun {
    NewRun {
        experiment_name: "inline".to_owned(),
        yaml: "version: faultline/v1\nname: inline\n".to_owned(),
        requested_by: requested_by.to_owned(),
        ..NewRun::default()
    }
}

/// Waits until `lease` has certainly run out (plus slack for a loaded machine).
async fn outlive(lease: Duration) {
    tokio::time::sleep(lease + Duration::from_millis(150)).await;
}

pub async fn the_leader_lease_is_exclusive_renewed_and_taken_over_when_it_expires(fx: Fixture) {
    let s = &fx.store;
    let a = s
        .acquire_lease(SCHEDULER_LEASE, "a", SHORT)
        .await
        .unwrap()
        .expect("a free lease is taken");
    assert!(
        s.acquire_lease(SCHEDULER_LEASE, "b", SHORT)
            .await
            .unwrap()
            .is_none(),
        "a live lease is not taken"
    );
    let renewed = s
        .acquire_lease(SCHEDULER_LEASE, "a", SHORT)
        .await
        .unwrap()
        .expect("its holder renews it");
    assert_eq!(renewed.epoch, a.epoch, "a renewal keeps the epoch");
    assert!(renewed.expires_at >= a.expires_at);

    outlive(SHORT).await;
    let b = s
        .acquire_lease(SCHEDULER_LEASE, "b", SHORT)
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(b.epoch, a.epoch + 1, "a new holder bumps the epoch");
    assert!(
        s.acquire_lease(SCHEDULER_LEASE, "a", SHORT)
            .await
            .unwrap()
            .is_none(),
        "the old holder cannot renew what it lost"
    );
    // A clean release hands over at once.
    assert!(s.release_lease(SCHEDULER_LEASE, "b").await.unwrap());
    assert!(!s.release_lease(SCHEDULER_LEASE, "b").await.unwrap());
    let a2 = s
        .acquire_lease(SCHEDULER_LEASE, "a", SHORT)
        .await
        .unwrap()
        .expect("a released lease is free");
    assert_eq!(a2.epoch, b.epoch + 1);
    assert!(s.acquire_lease("no-such-lease", "a", SHORT).await.is_err());
}

pub async fn a_slot_is_fired_once_whoever_fires_it(fx: Fixture) {
    let exp = fx.experiment("slots").await;
    let sch = fx
        .store
        .create_schedule(
            &ScheduleDef {
                name: "every second".to_owned(),
                experiment_id: exp.id.clone(),
                spec: ScheduleSpec::new("*/1 * * * * *"),
                enabled: true,
            },
            "alice",
        )
        .await
        .unwrap();
    let grant = fx
        .store
        .acquire_lease(SCHEDULER_LEASE, "a", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("lease");
    let slot = (Utc::now() + chrono::Duration::seconds(5)).trunc_subsecs(0);
    let fire = |replica: &str, epoch: i64| SlotFire {
        schedule_id: sch.id.clone(),
        slot,
        next_fire_at: Some(slot + chrono::Duration::seconds(1)),
        action: FireAction::Start,
        catch_up: false,
        missed: 0,
        run: NewRun {
            experiment_id: Some(exp.id.clone()),
            experiment_name: exp.name.clone(),
            yaml: exp.yaml.clone(),
            requested_by: "scheduler".to_owned(),
            idempotency_key: Some(format!("schedule:{}:{}", sch.id, slot.to_rfc3339())),
            schedule_id: Some(sch.id.clone()),
        },
        owner: owner(replica, Duration::from_secs(30)),
        by: SlotBy {
            replica: replica.to_owned(),
            fence: Some(Fence {
                name: SCHEDULER_LEASE.to_owned(),
                holder: "a".to_owned(),
                epoch,
            }),
        },
    };
    // A stale epoch writes nothing.
    assert_eq!(
        fx.store
            .fire_slot(&fire("a", grant.epoch - 1))
            .await
            .unwrap(),
        SlotFired::Fenced
    );
    // Two firers of one slot at once (both believe they lead): one fires.
    let (f1, f2) = (fire("a", grant.epoch), fire("a", grant.epoch));
    let (x, y) = tokio::join!(fx.store.fire_slot(&f1), fx.store.fire_slot(&f2));
    let outcomes = [x.unwrap(), y.unwrap()];
    let fired: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, SlotFired::Fired { created: true, .. }))
        .collect();
    assert_eq!(fired.len(), 1, "{outcomes:?}");
    assert!(outcomes.contains(&SlotFired::Taken), "{outcomes:?}");
    let SlotFired::Fired { run, .. } = fired[0] else {
        unreachable!()
    };
    assert_eq!(run.status, RunStatus::Queued);
    let lease = fx.store.run_lease(&run.id).await.unwrap().expect("lease");
    assert_eq!(lease.owner.as_deref(), Some("a"));
    assert!(lease.lease_expires_at.is_some());

    // Recording the same slot afterwards (what the scheduler does) is a no-op.
    let skipped = FireRecord {
        slot,
        outcome: FireOutcome::Skipped {
            reason: SkipReason::Overlap,
        },
        next_fire_at: None,
    };
    let by = SlotBy {
        replica: "b".to_owned(),
        fence: None,
    };
    assert!(!fx.store.record_slot(&sch.id, &skipped, &by).await.unwrap());
    // The next slot is free, once.
    let next = FireRecord {
        slot: slot + chrono::Duration::seconds(1),
        ..skipped.clone()
    };
    assert!(fx.store.record_slot(&sch.id, &next, &by).await.unwrap());
    assert!(!fx.store.record_slot(&sch.id, &next, &by).await.unwrap());

    let runs = fx
        .store
        .list_runs(&RunQuery {
            schedule_id: Some(sch.id.clone()),
            ..RunQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let audit = fx
        .store
        .list_audit(&AuditQuery {
            target: Some(sch.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(actions, ["schedule.skip", "schedule.fire"], "{audit:?}");
    assert_eq!(audit[1].detail["run_id"], run.id.as_str());
    assert_eq!(audit[1].detail["replica"], "a");
    assert_eq!(audit[1].detail["epoch"], grant.epoch);
    let s = fx
        .store
        .get_schedule(&sch.id)
        .await
        .unwrap()
        .expect("schedule");
    assert_eq!(s.last_fired_at, Some(slot + chrono::Duration::seconds(1)));
}

pub async fn runs_are_claimed_renewed_and_swept_when_their_owner_stops(fx: Fixture) {
    let s = &fx.store;
    let a = owner("replica-a", SHORT);
    let b = owner("replica-b", SHORT);
    let run = s.create_owned_run(&inline("ci"), &a).await.unwrap().run;
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(
        s.claim_run(&run.id, &b).await.unwrap(),
        None,
        "another replica's live run is not claimed"
    );
    let running = s
        .claim_run(&run.id, &a)
        .await
        .unwrap()
        .expect("the owner claims it");
    assert_eq!(running.status, RunStatus::Running);
    assert_eq!(s.claim_run(&run.id, &a).await.unwrap(), None, "only once");

    // Renewals keep it alive past its first lease.
    for _ in 0..3 {
        tokio::time::sleep(SHORT / 3).await;
        let owned = s.renew_runs(&a).await.unwrap();
        assert_eq!(owned.len(), 1);
        assert!(s.sweep_expired_runs("replica-b").await.unwrap().is_empty());
    }
    assert!(s.renew_runs(&b).await.unwrap().is_empty());

    // An abort asked on another replica reaches the owner at its next renewal.
    assert!(s.request_abort(&run.id, "aborted by ops").await.unwrap());
    let owned = s.renew_runs(&a).await.unwrap();
    assert_eq!(owned[0].abort_requested.as_deref(), Some("aborted by ops"));
    assert!(s.request_abort_all("halted", "replica-b").await.unwrap() == vec![run.id.clone()]);
    assert!(
        s.request_abort_all("halted", "replica-a")
            .await
            .unwrap()
            .is_empty()
    );

    // The owner stops renewing: a survivor sweeps it, once.
    outlive(SHORT).await;
    let swept = s.sweep_expired_runs("replica-b").await.unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(swept[0].id, run.id);
    assert_eq!(swept[0].owner.as_deref(), Some("replica-a"));
    assert!(s.sweep_expired_runs("replica-b").await.unwrap().is_empty());
    let after = s.get_run(&run.id).await.unwrap().expect("run");
    assert_eq!(after.status, RunStatus::Aborted);
    let reason = after.reason.unwrap_or_default();
    assert!(
        reason.contains("owner replica `replica-a` lost"),
        "{reason}"
    );
    let events = s.events_after(&run.id, 0).await.unwrap();
    assert_eq!(events.last().map(|e| e.kind.as_str()), Some("aborted"));
    let audit = s
        .list_audit(&AuditQuery {
            target: Some(run.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(audit[0].action, "run.abort");
    assert_eq!(audit[0].actor, "replica-b");
    // The old owner's renewal no longer includes it, and nothing is in flight.
    assert!(s.renew_runs(&a).await.unwrap().is_empty());
    assert!(!s.request_abort(&run.id, "late").await.unwrap());
}

pub async fn a_starting_replica_aborts_only_its_own_unowned_and_expired_runs(fx: Fixture) {
    let s = &fx.store;
    let long = Duration::from_secs(60);
    let own = s
        .create_owned_run(&inline("ci"), &owner("a", long))
        .await
        .unwrap()
        .run;
    let other = s
        .create_owned_run(&inline("ci"), &owner("b", long))
        .await
        .unwrap()
        .run;
    s.claim_run(&other.id, &owner("b", long))
        .await
        .unwrap()
        .expect("b runs it");
    let expired = s
        .create_owned_run(&inline("ci"), &owner("c", SHORT))
        .await
        .unwrap()
        .run;
    let unowned = s.create_run(&inline("ci")).await.unwrap().run;
    s.mark_running(&unowned.id).await.unwrap();
    outlive(SHORT).await;

    let mut aborted = s.abort_replica_in_flight("a", "restarted").await.unwrap();
    aborted.sort();
    let mut want = vec![own.id.clone(), expired.id.clone(), unowned.id.clone()];
    want.sort();
    assert_eq!(aborted, want);
    let live = s.get_run(&other.id).await.unwrap().expect("run");
    assert_eq!(
        live.status,
        RunStatus::Running,
        "b's live run is left alone"
    );
}

pub async fn replicas_heartbeat(fx: Fixture) {
    let first = fx.store.heartbeat_replica("a", "1.0").await.unwrap();
    fx.store.heartbeat_replica("b", "1.0").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = fx.store.heartbeat_replica("a", "1.1").await.unwrap();
    assert_eq!(again.started_at, first.started_at);
    assert!(again.last_seen > first.last_seen);
    let all = fx.store.list_replicas().await.unwrap();
    let ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(all[0].version, "1.1");
}
