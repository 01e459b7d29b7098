//! One suite, run against SQLite and PostgreSQL alike.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{Duration, Utc};
use faultline_controller::schedule::{
    Blackout, FireAction, MissedRunPolicy, OverlapPolicy, ScheduleSpec, SkipReason,
};
use faultline_controller::store::{
    self, AuditQuery, FireOutcome, FireRecord, NewAudit, NewRun, RunFinish, RunQuery, RunStatus,
    RunStore, ScheduleDef, StoreError,
};
use serde_json::json;

use crate::common::Fixture;

crate::on_both_backends!(suite:
    migrations_are_idempotent,
    experiments_round_trip,
    run_lifecycle_and_transitions,
    idempotency_key_returns_the_existing_run,
    concurrent_create_run_with_one_key_makes_one_run,
    list_runs_filters_newest_first,
    abort_in_flight_leaves_no_run_running,
    events_are_numbered_per_run_and_replay,
    concurrent_appends_get_distinct_gapless_seqs,
    schedules_crud_validates_and_records_fires,
    audit_log_appends_and_filters,
    failed_operations_write_nothing,
);

fn inline_run(requested_by: &str, key: Option<&str>) -> NewRun {
    NewRun {
        experiment_id: None,
        experiment_name: "inline".to_owned(),
        yaml: "version: faultline/v1\nname: inline\n".to_owned(),
        requested_by: requested_by.to_owned(),
        idempotency_key: key.map(str::to_owned),
        schedule_id: None,
    }
}

async fn new_run(store: &dyn RunStore, requested_by: &str) -> store::Run {
    store
        .create_run(&inline_run(requested_by, None))
        .await
        .expect("create run")
        .run
}

fn finish(status: RunStatus, code: i32) -> RunFinish {
    RunFinish {
        status,
        exit_code: Some(code),
        summary: json!({ "hypotheses": [{ "probe": "api", "held": code == 0 }] }),
        journal: Some(json!({ "steps": [{ "name": "lose-gpus", "reverted": true }] })),
        reason: (code != 0).then(|| format!("exit {code}")),
    }
}

fn schedule_def(experiment_id: &str, cron: &str) -> ScheduleDef {
    ScheduleDef {
        name: "weekly game day".to_owned(),
        experiment_id: experiment_id.to_owned(),
        spec: ScheduleSpec::new(cron),
        enabled: true,
    }
}

pub async fn migrations_are_idempotent(fx: Fixture) {
    assert_eq!(fx.store.schema_version().await.unwrap(), 2);
    let exp = fx.experiment("survives-reopen").await;
    // Open the same database again, twice at once: nothing is applied twice, nothing lost.
    let (a, b) = tokio::join!(fx.reopen(), fx.reopen());
    for s in [&a, &b] {
        assert_eq!(s.schema_version().await.unwrap(), 2);
        assert_eq!(s.get_experiment(&exp.id).await.unwrap(), Some(exp.clone()));
    }
    let again = fx.reopen().await;
    assert_eq!(again.list_experiments(10).await.unwrap().len(), 1);
}

pub async fn experiments_round_trip(fx: Fixture) {
    let first = fx.experiment("first").await;
    let second = fx.experiment("second").await;
    assert!(
        first.id.starts_with("exp_") && first.id.len() == 20,
        "{}",
        first.id
    );
    assert_ne!(first.id, second.id);
    assert_eq!(
        fx.store.get_experiment(&first.id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(fx.store.get_experiment("exp_nope").await.unwrap(), None);
    let listed = fx.store.list_experiments(10).await.unwrap();
    assert_eq!(listed, vec![second.clone(), first]);
    assert_eq!(fx.store.list_experiments(1).await.unwrap(), vec![second]);
    assert!(matches!(
        fx.store.list_experiments(0).await,
        Err(StoreError::Invalid { field: "limit", .. })
    ));
}

pub async fn run_lifecycle_and_transitions(fx: Fixture) {
    let exp = fx.experiment("gpu-loss").await;
    let before = Utc::now() - Duration::seconds(1);
    let created = fx
        .store
        .create_run(&NewRun {
            experiment_id: Some(exp.id.clone()),
            experiment_name: exp.name.clone(),
            yaml: exp.yaml.clone(),
            requested_by: "alice".to_owned(),
            idempotency_key: None,
            schedule_id: None,
        })
        .await
        .unwrap();
    assert!(created.created);
    let run = created.run;
    assert!(run.id.starts_with("run_"), "{}", run.id);
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.experiment_id.as_deref(), Some(exp.id.as_str()));
    assert_eq!(run.summary, json!({}));
    assert_eq!(run.journal, None);
    assert!(run.created_at > before);
    assert_eq!((run.started_at, run.finished_at), (None, None));
    assert_eq!(fx.store.get_run(&run.id).await.unwrap(), Some(run.clone()));

    // A final status cannot be skipped to from nowhere, nor be in flight.
    let e = fx
        .store
        .finish_run(
            &run.id,
            &RunFinish {
                status: RunStatus::Running,
                ..finish(RunStatus::Passed, 0)
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Invalid {
                field: "status",
                ..
            }
        ),
        "{e}"
    );

    let running = fx.store.mark_running(&run.id).await.unwrap();
    assert_eq!(running.status, RunStatus::Running);
    let started = running.started_at.expect("started_at stamped");
    assert!(started >= run.created_at);
    let e = fx.store.mark_running(&run.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("is running"), "{e}");

    let done = fx
        .store
        .finish_run(&run.id, &finish(RunStatus::Failed, 1))
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(done.exit_code, Some(1));
    assert_eq!(done.summary, finish(RunStatus::Failed, 1).summary);
    assert_eq!(done.journal, finish(RunStatus::Failed, 1).journal);
    assert_eq!(
        done.reason.as_deref(),
        Some("exit 1"),
        "the reason is stored"
    );
    assert!(done.finished_at.expect("finished_at stamped") >= started);
    assert_eq!(fx.store.get_run(&run.id).await.unwrap(), Some(done));

    // Final is final.
    let e = fx
        .store
        .finish_run(&run.id, &finish(RunStatus::Passed, 0))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    assert!(matches!(
        fx.store.mark_running("run_missing").await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
    assert!(matches!(
        fx.store
            .finish_run("run_missing", &finish(RunStatus::Passed, 0))
            .await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
    assert_eq!(fx.store.get_run("run_missing").await.unwrap(), None);
    // A run of an experiment that does not exist is refused.
    let e = fx
        .store
        .create_run(&NewRun {
            experiment_id: Some("exp_missing".to_owned()),
            ..inline_run("alice", None)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotFound {
                kind: "experiment",
                ..
            }
        ),
        "{e}"
    );
}

pub async fn idempotency_key_returns_the_existing_run(fx: Fixture) {
    let first = fx
        .store
        .create_run(&inline_run("alice", Some("deploy-42")))
        .await
        .unwrap();
    assert!(first.created);
    let again = fx
        .store
        .create_run(&inline_run("alice", Some("deploy-42")))
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.run, first.run);
    // The key is per requester.
    let bob = fx
        .store
        .create_run(&inline_run("bob", Some("deploy-42")))
        .await
        .unwrap();
    assert!(bob.created);
    assert_ne!(bob.run.id, first.run.id);
    // The same key for something else is a conflict, not a silent reuse.
    let e = fx
        .store
        .create_run(&NewRun {
            yaml: "version: faultline/v1\nname: other\n".to_owned(),
            ..inline_run("alice", Some("deploy-42"))
        })
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(e.to_string().contains(&first.run.id), "{e}");
    // No key: every request is a new run.
    let a = new_run(&*fx.store, "alice").await;
    let b = new_run(&*fx.store, "alice").await;
    assert_ne!(a.id, b.id);
    // The key still answers once the run finished.
    fx.store
        .finish_run(&first.run.id, &finish(RunStatus::Passed, 0))
        .await
        .unwrap();
    let later = fx
        .store
        .create_run(&inline_run("alice", Some("deploy-42")))
        .await
        .unwrap();
    assert!(!later.created);
    assert_eq!(later.run.status, RunStatus::Passed);
}

pub async fn concurrent_create_run_with_one_key_makes_one_run(fx: Fixture) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let store = Arc::clone(&fx.store);
        tasks.spawn(async move {
            store
                .create_run(&inline_run("ci", Some("pipeline-7")))
                .await
                .expect("create_run under contention")
        });
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("task");
        ids.insert(r.run.id);
        created += usize::from(r.created);
    }
    assert_eq!(ids.len(), 1, "one run for one key: {ids:?}");
    assert_eq!(created, 1);
    assert_eq!(
        fx.store
            .list_runs(&RunQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn list_runs_filters_newest_first(fx: Fixture) {
    let exp = fx.experiment("listed").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = fx
            .store
            .create_run(&NewRun {
                experiment_id: (i % 2 == 0).then(|| exp.id.clone()),
                schedule_id: (i == 4).then(|| "sch_x".to_owned()),
                ..inline_run("alice", None)
            })
            .await
            .unwrap()
            .run;
        ids.push(r.id);
    }
    fx.store.mark_running(&ids[1]).await.unwrap();
    fx.store
        .finish_run(&ids[2], &finish(RunStatus::Passed, 0))
        .await
        .unwrap();

    let all: Vec<_> = fx
        .store
        .list_runs(&RunQuery::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let newest_first: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(all, newest_first);

    let ids_of = |runs: Vec<store::Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let q = |statuses: Vec<RunStatus>| RunQuery {
        statuses,
        ..RunQuery::default()
    };
    assert_eq!(
        ids_of(
            fx.store
                .list_runs(&q(vec![RunStatus::Running]))
                .await
                .unwrap()
        ),
        vec![ids[1].clone()]
    );
    assert_eq!(
        ids_of(
            fx.store
                .list_runs(&q(vec![RunStatus::Queued, RunStatus::Running]))
                .await
                .unwrap()
        ),
        vec![
            ids[4].clone(),
            ids[3].clone(),
            ids[1].clone(),
            ids[0].clone()
        ]
    );
    assert_eq!(
        ids_of(
            fx.store
                .list_runs(&RunQuery {
                    experiment_id: Some(exp.id.clone()),
                    ..RunQuery::default()
                })
                .await
                .unwrap()
        ),
        vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        ids_of(
            fx.store
                .list_runs(&RunQuery {
                    schedule_id: Some("sch_x".to_owned()),
                    ..RunQuery::default()
                })
                .await
                .unwrap()
        ),
        vec![ids[4].clone()]
    );
    assert_eq!(
        ids_of(
            fx.store
                .list_runs(&RunQuery {
                    limit: 2,
                    ..RunQuery::default()
                })
                .await
                .unwrap()
        ),
        vec![ids[4].clone(), ids[3].clone()]
    );
}

pub async fn abort_in_flight_leaves_no_run_running(fx: Fixture) {
    let queued = new_run(&*fx.store, "alice").await;
    let running = new_run(&*fx.store, "alice").await;
    let passed = new_run(&*fx.store, "alice").await;
    fx.store.mark_running(&running.id).await.unwrap();
    fx.store
        .append_event(&running.id, "step", &json!({"n": 1}))
        .await
        .unwrap();
    fx.store.mark_running(&passed.id).await.unwrap();
    let passed = fx
        .store
        .finish_run(&passed.id, &finish(RunStatus::Passed, 0))
        .await
        .unwrap();

    // As on a controller's start: a fresh handle on the same database.
    let restarted = fx.reopen().await;
    let reason = "controller restarted; the run's owner is gone";
    let aborted: BTreeSet<_> = restarted
        .abort_in_flight(reason)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        aborted,
        BTreeSet::from([queued.id.clone(), running.id.clone()])
    );

    for id in [&queued.id, &running.id] {
        let r = restarted.get_run(id).await.unwrap().expect("still there");
        assert_eq!(r.status, RunStatus::Aborted);
        assert_eq!(r.reason.as_deref(), Some(reason));
        assert!(r.finished_at.is_some());
        let last = restarted
            .events_after(id, 0)
            .await
            .unwrap()
            .pop()
            .expect("an event");
        assert_eq!(last.kind, "aborted");
        assert_eq!(last.data, json!({ "reason": reason }));
    }
    // The running one's stream goes on from where it was.
    let seqs: Vec<_> = restarted
        .events_after(&running.id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(restarted.get_run(&passed.id).await.unwrap(), Some(passed));
    assert!(
        restarted
            .list_runs(&RunQuery {
                statuses: vec![RunStatus::Queued, RunStatus::Running],
                ..RunQuery::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
    assert!(restarted.abort_in_flight(reason).await.unwrap().is_empty());
}

pub async fn events_are_numbered_per_run_and_replay(fx: Fixture) {
    let a = new_run(&*fx.store, "alice").await;
    let b = new_run(&*fx.store, "alice").await;
    for i in 1..=5 {
        let seq = fx
            .store
            .append_event(&a.id, "probe", &json!({ "i": i, "availability": 99.9 }))
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    // Another run has its own numbering.
    assert_eq!(
        fx.store
            .append_event(&b.id, "started", &json!(null))
            .await
            .unwrap(),
        1
    );

    let all = fx.store.events_after(&a.id, 0).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(all.iter().all(|e| e.run_id == a.id && e.kind == "probe"));
    assert_eq!(all[2].data, json!({ "i": 3, "availability": 99.9 }));
    assert!(all.windows(2).all(|w| w[0].at <= w[1].at));

    // Last-Event-ID: 3 -> 4 and 5.
    let replay = fx.store.events_after(&a.id, 3).await.unwrap();
    assert_eq!(replay, all[3..].to_vec());
    assert!(fx.store.events_after(&a.id, 5).await.unwrap().is_empty());
    assert!(fx.store.events_after(&b.id, 0).await.unwrap().len() == 1);

    assert!(matches!(
        fx.store.append_event("run_missing", "x", &json!({})).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
    assert!(matches!(
        fx.store.events_after("run_missing", 0).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
}

pub async fn concurrent_appends_get_distinct_gapless_seqs(fx: Fixture) {
    let run = new_run(&*fx.store, "alice").await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let store = Arc::clone(&fx.store);
        let id = run.id.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..10 {
                seqs.push(
                    store
                        .append_event(&id, "tick", &json!({ "w": w, "i": i }))
                        .await
                        .expect("append under contention"),
                );
            }
            seqs
        });
    }
    let mut seqs = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let mine = r.expect("task");
        // Each writer sees its own events in order.
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
        seqs.extend(mine);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=80).collect::<Vec<i64>>());
    let stored: Vec<_> = fx
        .store
        .events_after(&run.id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(stored, (1..=80).collect::<Vec<i64>>());
}

pub async fn schedules_crud_validates_and_records_fires(fx: Fixture) {
    let exp = fx.experiment("weekly").await;
    let before = Utc::now();
    let mut def = schedule_def(&exp.id, "0 0 10 * * TUE");
    def.spec.time_zone = "Europe/Berlin".to_owned();
    def.spec.overlap = OverlapPolicy::Queue;
    def.spec.missed = MissedRunPolicy::RunOnce;
    def.spec.blackouts = vec![
        Blackout::window(before + Duration::days(1), before + Duration::days(2))
            .with_reason("change freeze"),
        Blackout::recurring("0 0 17 * * FRI", "64h".parse().unwrap()),
    ];
    let s = fx.store.create_schedule(&def, "alice").await.unwrap();
    assert!(s.id.starts_with("sch_"), "{}", s.id);
    assert_eq!(
        (s.name.as_str(), s.spec.clone(), s.enabled),
        (def.name.as_str(), def.spec.clone(), true)
    );
    assert_eq!(s.created_by, "alice");
    assert_eq!(s.last_fired_at, None);
    let next = s.next_fire_at.expect("next fire computed");
    assert!(
        next > before && next - before <= Duration::days(7),
        "{next}"
    );
    assert_eq!(s.created_at, s.updated_at);
    assert_eq!(fx.store.get_schedule(&s.id).await.unwrap(), Some(s.clone()));

    // Validation: clear errors, nothing stored.
    let e = fx
        .store
        .create_schedule(&schedule_def(&exp.id, "0 0 25 * * *"), "alice")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("cron"), "{e}");
    let mut bad_tz = schedule_def(&exp.id, "0 0 10 * * *");
    bad_tz.spec.time_zone = "Europe/Atlantis".to_owned();
    let e = fx
        .store
        .create_schedule(&bad_tz, "alice")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Europe/Atlantis"), "{e}");
    let e = fx
        .store
        .create_schedule(&schedule_def("exp_missing", "0 0 10 * * *"), "alice")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::NotFound {
                kind: "experiment",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(fx.store.list_schedules().await.unwrap(), vec![s.clone()]);

    // A handled slot: fired.
    let slot = next;
    let fired = fx
        .store
        .record_fired(
            &s.id,
            &FireRecord {
                slot,
                outcome: FireOutcome::Fired {
                    run_id: "run_abc".to_owned(),
                    action: FireAction::Start,
                    catch_up: false,
                    missed: 0,
                },
                next_fire_at: Some(slot + Duration::days(7)),
            },
        )
        .await
        .unwrap();
    assert_eq!(fired.last_fired_at, Some(slot));
    assert_eq!(fired.next_fire_at, Some(slot + Duration::days(7)));
    assert_eq!(fired.updated_at, s.updated_at, "firing is not an edit");
    // An older slot recorded late never moves last_fired_at back.
    let skipped = fx
        .store
        .record_fired(
            &s.id,
            &FireRecord {
                slot: slot - Duration::days(7),
                outcome: FireOutcome::Skipped {
                    reason: SkipReason::Overlap,
                },
                next_fire_at: Some(slot + Duration::days(7)),
            },
        )
        .await
        .unwrap();
    assert_eq!(skipped.last_fired_at, Some(slot));
    let audit = fx
        .store
        .list_audit(&AuditQuery {
            target: Some(s.id.clone()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
        vec!["schedule.skip", "schedule.fire"]
    );
    assert!(audit.iter().all(|a| a.actor == store::SCHEDULER_ACTOR));
    assert_eq!(audit[1].detail["run_id"], json!("run_abc"));
    assert_eq!(audit[1].detail["slot"], json!(slot.to_rfc3339()));
    assert_eq!(audit[0].detail["reason"]["kind"], json!("overlap"));

    // Update: a full replacement; last_fired_at kept, next recomputed, updated_at moves.
    let mut changed = schedule_def(&exp.id, "*/30 * * * * *");
    changed.name = "every half minute".to_owned();
    changed.enabled = false;
    let updated = fx.store.update_schedule(&s.id, &changed).await.unwrap();
    assert_eq!(updated.name, "every half minute");
    assert_eq!(updated.spec, changed.spec);
    assert!(!updated.enabled);
    assert_eq!(updated.last_fired_at, Some(slot));
    assert!(updated.updated_at >= s.updated_at);
    assert!(updated.next_fire_at.expect("next") - Utc::now() <= Duration::seconds(31));
    assert_eq!(updated.created_at, s.created_at);
    let e = fx
        .store
        .update_schedule(&s.id, &schedule_def(&exp.id, "bad"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    assert_eq!(fx.store.get_schedule(&s.id).await.unwrap(), Some(updated));
    assert!(matches!(
        fx.store.update_schedule("sch_missing", &changed).await,
        Err(StoreError::NotFound {
            kind: "schedule",
            ..
        })
    ));

    // Delete.
    assert!(fx.store.delete_schedule(&s.id).await.unwrap());
    assert!(!fx.store.delete_schedule(&s.id).await.unwrap());
    assert_eq!(fx.store.get_schedule(&s.id).await.unwrap(), None);
    assert!(matches!(
        fx.store
            .record_fired(
                &s.id,
                &FireRecord {
                    slot,
                    outcome: FireOutcome::Failed {
                        error: "x".to_owned()
                    },
                    next_fire_at: None,
                }
            )
            .await,
        Err(StoreError::NotFound {
            kind: "schedule",
            ..
        })
    ));
}

pub async fn audit_log_appends_and_filters(fx: Fixture) {
    let mut ids = Vec::new();
    for (actor, action, target) in [
        ("alice", "run.create", "run_1"),
        ("bob", "run.abort", "run_1"),
        ("alice", "schedule.create", "sch_1"),
    ] {
        let e = fx
            .store
            .append_audit(&NewAudit {
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                detail: json!({ "via": "api" }),
            })
            .await
            .unwrap();
        assert_eq!((e.actor.as_str(), e.action.as_str()), (actor, action));
        ids.push(e.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let all = fx.store.list_audit(&AuditQuery::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    assert_eq!(all[0].detail, json!({ "via": "api" }));
    let run1 = fx
        .store
        .list_audit(&AuditQuery {
            target: Some("run_1".to_owned()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        run1.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        vec!["run.abort", "run.create"]
    );
    let alice = fx
        .store
        .list_audit(&AuditQuery {
            actor: Some("alice".to_owned()),
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].action, "schedule.create");
}

pub async fn failed_operations_write_nothing(fx: Fixture) {
    // record_fired for a missing schedule: no audit entry either.
    let r = fx
        .store
        .record_fired(
            "sch_missing",
            &FireRecord {
                slot: Utc::now(),
                outcome: FireOutcome::Skipped {
                    reason: SkipReason::Missed { missed: 2 },
                },
                next_fire_at: None,
            },
        )
        .await;
    assert!(r.is_err());
    assert!(
        fx.store
            .list_audit(&AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
    // An idempotency conflict leaves one run.
    fx.store
        .create_run(&inline_run("alice", Some("k")))
        .await
        .unwrap();
    let _ = fx
        .store
        .create_run(&NewRun {
            yaml: "other".to_owned(),
            ..inline_run("alice", Some("k"))
        })
        .await
        .unwrap_err();
    assert_eq!(
        fx.store
            .list_runs(&RunQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // A refused schedule leaves none.
    let exp = fx.experiment("x").await;
    let _ = fx
        .store
        .create_schedule(&schedule_def(&exp.id, "0 0 0 30 2 *"), "alice")
        .await
        .unwrap_err();
    assert!(fx.store.list_schedules().await.unwrap().is_empty());
}

#[tokio::test]
async fn urls_name_the_backend_and_never_echo_secrets() {
    let e = store::open("mysql://root:hunter2@db/runs")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::BadUrl { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("`mysql`") && !msg.contains("hunter2"), "{msg}");
    let e = store::open("sqlite://relative/runs.db").await.unwrap_err();
    assert!(e.to_string().contains("absolute path"), "{e}");
    let e = store::open("postgres://faultline:hunter2@127.0.0.1:1/x?sslmode=bogus")
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let url = format!("sqlite://{}", path.display());
    drop(store::open(&url).await.unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO faultline_migrations (version, name, applied_at) VALUES (99, 'future', 'x')",
            [],
        )
        .unwrap();
    }
    let e = store::open(&url).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::SchemaTooNew {
                found: 99,
                known: 2
            }
        ),
        "{e}"
    );
}
