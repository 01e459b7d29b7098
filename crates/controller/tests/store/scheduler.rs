//! The scheduler task over a real store, on both backends: every-second schedules,
//! so each test is over in a few seconds, and every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use faultline_controller::schedule::{
    FireAction, FireRecorded, ScheduleFire, ScheduleSpec, Scheduler, SkipReason, TriggerError,
    trigger_fn,
};
use faultline_controller::store::{
    AuditQuery, FireOutcome, NewRun, RunFinish, RunQuery, RunStatus, RunStore, SCHEDULER_ACTOR,
    ScheduleDef,
};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::common::Fixture;

crate::on_both_backends!(scheduler:
    an_every_second_schedule_fires_and_is_recorded,
    overlap_skip_records_why,
    disabled_and_deleted_schedules_do_not_fire,
);

/// A fire must arrive this soon (an every-second cron: at most ~1 s, plus slack for a
/// loaded CI machine).
const FIRE_WITHIN: Duration = Duration::from_secs(3);

/// A trigger that creates the run as the engine would (one run per slot through the
/// idempotency key), optionally finishes it at once, and reports each fire.
fn trigger(
    store: Arc<dyn RunStore>,
    finish: bool,
) -> (
    faultline_controller::schedule::Trigger,
    mpsc::UnboundedReceiver<(ScheduleFire, String)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let t = trigger_fn(move |fire: ScheduleFire| {
        let (store, tx) = (Arc::clone(&store), tx.clone());
        async move {
            let exp = store
                .get_experiment(&fire.experiment_id)
                .await
                .map_err(|e| TriggerError(e.to_string()))?
                .ok_or_else(|| TriggerError("experiment gone".to_owned()))?;
            let run = store
                .create_run(&NewRun {
                    experiment_id: Some(exp.id),
                    experiment_name: exp.name,
                    yaml: exp.yaml,
                    requested_by: SCHEDULER_ACTOR.to_owned(),
                    idempotency_key: Some(fire.idempotency_key()),
                    schedule_id: Some(fire.schedule_id.clone()),
                })
                .await
                .map_err(|e| TriggerError(e.to_string()))?
                .run;
            if finish {
                store
                    .finish_run(
                        &run.id,
                        &RunFinish {
                            status: RunStatus::Passed,
                            exit_code: Some(0),
                            summary: json!({}),
                            journal: None,
                            reason: None,
                        },
                    )
                    .await
                    .map_err(|e| TriggerError(e.to_string()))?;
            }
            let _ = tx.send((fire, run.id.clone()));
            Ok(run.id)
        }
    });
    (t, rx)
}

async fn next_fire(
    rx: &mut mpsc::UnboundedReceiver<(ScheduleFire, String)>,
) -> (ScheduleFire, String) {
    tokio::time::timeout(FIRE_WITHIN, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no fire within {FIRE_WITHIN:?}"))
        .expect("trigger channel open")
}

/// The next recorded slot, within [`FIRE_WITHIN`].
async fn next_record(rx: &mut broadcast::Receiver<FireRecorded>) -> FireRecorded {
    tokio::time::timeout(FIRE_WITHIN, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing recorded within {FIRE_WITHIN:?}"))
        .expect("scheduler announcements")
}

fn every_second(experiment_id: &str) -> ScheduleDef {
    ScheduleDef {
        name: "every second".to_owned(),
        experiment_id: experiment_id.to_owned(),
        spec: ScheduleSpec::new("* * * * * *"),
        enabled: true,
    }
}

pub async fn an_every_second_schedule_fires_and_is_recorded(fx: Fixture) {
    let exp = fx.experiment("tick").await;
    let (trig, mut fires) = trigger(Arc::clone(&fx.store), true);
    // Started with nothing to do: it sleeps until told.
    let handle = Scheduler::new(Arc::clone(&fx.store), trig).spawn();
    let s = fx
        .store
        .create_schedule(&every_second(&exp.id), "alice")
        .await
        .unwrap();
    handle.changed();

    let (first, first_run) = next_fire(&mut fires).await;
    assert_eq!(first.schedule_id, s.id);
    assert_eq!(first.experiment_id, exp.id);
    assert_eq!(first.action, FireAction::Start);
    assert!(!first.catch_up);
    assert!(first.slot > s.created_at);
    let (second, _) = next_fire(&mut fires).await;
    assert!(
        second.slot > first.slot,
        "{} then {}",
        first.slot,
        second.slot
    );
    handle.shutdown().await;

    // The first fire was recorded before the second was decided.
    let stored = fx
        .store
        .get_schedule(&s.id)
        .await
        .unwrap()
        .expect("schedule");
    assert!(stored.last_fired_at >= Some(second.slot));
    assert!(stored.next_fire_at > stored.last_fired_at);
    let run = fx.store.get_run(&first_run).await.unwrap().expect("run");
    assert_eq!(run.schedule_id.as_deref(), Some(s.id.as_str()));
    assert_eq!(run.requested_by, SCHEDULER_ACTOR);
    let audit = fx
        .store
        .list_audit(&AuditQuery {
            target: Some(s.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let fired = audit
        .iter()
        .find(|a| a.detail["run_id"] == json!(first_run))
        .expect("the first fire in the audit log");
    assert_eq!(fired.action, "schedule.fire");
    assert_eq!(fired.detail["action"], json!("start"));
}

pub async fn overlap_skip_records_why(fx: Fixture) {
    let exp = fx.experiment("slow").await;
    // Runs are left queued: the next slot finds one in flight.
    let (trig, mut fires) = trigger(Arc::clone(&fx.store), false);
    let handle = Scheduler::new(Arc::clone(&fx.store), trig).spawn();
    let mut records = handle.subscribe();
    let s = fx
        .store
        .create_schedule(&every_second(&exp.id), "alice")
        .await
        .unwrap();
    handle.changed();

    let (first, run_id) = next_fire(&mut fires).await;
    let fired = next_record(&mut records).await;
    assert_eq!(fired.schedule_id, s.id);
    assert_eq!(fired.record.slot, first.slot);
    assert!(matches!(&fired.record.outcome, FireOutcome::Fired { run_id: r, .. } if *r == run_id));
    // The next slot: skipped, and why.
    let skipped = next_record(&mut records).await;
    handle.shutdown().await;
    assert!(skipped.record.slot > first.slot);
    assert_eq!(
        skipped.record.outcome,
        FireOutcome::Skipped {
            reason: SkipReason::Overlap
        }
    );
    assert!(
        fires.try_recv().is_err(),
        "no second run while the first is queued"
    );
    let runs = fx
        .store
        .list_runs(&RunQuery {
            schedule_id: Some(s.id.clone()),
            ..RunQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    // The skip is in the audit log with its reason.
    let audit = fx
        .store
        .list_audit(&AuditQuery {
            target: Some(s.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(audit[0].action, "schedule.skip");
    assert_eq!(audit[0].detail["reason"]["kind"], json!("overlap"));
}

pub async fn disabled_and_deleted_schedules_do_not_fire(fx: Fixture) {
    let exp = fx.experiment("quiet").await;
    let (trig, mut fires) = trigger(Arc::clone(&fx.store), true);
    let mut def = every_second(&exp.id);
    def.enabled = false;
    let off = fx.store.create_schedule(&def, "alice").await.unwrap();
    let on = fx
        .store
        .create_schedule(&every_second(&exp.id), "alice")
        .await
        .unwrap();
    let handle = Scheduler::new(Arc::clone(&fx.store), trig).spawn();
    let (fire, _) = next_fire(&mut fires).await;
    assert_eq!(fire.schedule_id, on.id);
    // Delete the enabled one; after the change is seen, nothing fires any more.
    assert!(fx.store.delete_schedule(&on.id).await.unwrap());
    handle.changed();
    // A fire already in progress when the delete landed may still arrive; drain it.
    let quiet_from = tokio::time::Instant::now() + Duration::from_millis(1200);
    loop {
        match tokio::time::timeout_at(quiet_from + Duration::from_millis(1500), fires.recv()).await
        {
            Ok(Some((f, _))) => {
                assert_eq!(f.schedule_id, on.id, "the disabled schedule fired");
                assert!(
                    tokio::time::Instant::now() < quiet_from,
                    "the deleted schedule still fires"
                );
            }
            Ok(None) => panic!("trigger channel closed"),
            Err(_) => break,
        }
    }
    handle.shutdown().await;
    assert_eq!(
        fx.store
            .get_schedule(&off.id)
            .await
            .unwrap()
            .and_then(|s| s.last_fired_at),
        None
    );
}
