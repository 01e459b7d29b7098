//! The PostgreSQL side of the HA store methods (see `store/ha.rs`). Lease times are
//! the database's `now()`; run rows are taken `FOR UPDATE SKIP LOCKED` so that a
//! replica never waits on a row another one is working on.

use super::*;
use crate::store::ha::{outcome_word, secs, slot_detail};

pub(super) const MIGRATION: (i64, &str, &str) = (
    3,
    "replicas and run leases",
    r#"
CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL
);
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    epoch       BIGINT NOT NULL DEFAULT 0,
    expires_at  TIMESTAMPTZ NOT NULL
);
INSERT INTO leases (name, holder, epoch, expires_at)
    VALUES ('scheduler', NULL, 0, '1970-01-01T00:00:00Z');
CREATE TABLE schedule_slots (
    schedule_id  TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    slot         TIMESTAMPTZ NOT NULL,
    outcome      TEXT NOT NULL,
    run_id       TEXT,
    replica      TEXT NOT NULL,
    epoch        BIGINT,
    at           TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (schedule_id, slot)
);
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN abort_requested TEXT;
CREATE INDEX runs_owner ON runs (owner, status);
"#,
);

const IN_FLIGHT: &str = "status IN ('queued', 'running')";

fn replica(row: &Row) -> Result<Replica> {
    Ok(Replica {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        started_at: row.try_get("started_at")?,
        last_seen: row.try_get("last_seen")?,
    })
}

pub(super) async fn heartbeat(s: &PostgresStore, id: &str, version: &str) -> Result<Replica> {
    let c = s.conn().await?;
    one(
        &*c,
        "INSERT INTO replicas (id, version, started_at, last_seen) VALUES ($1, $2, now(), now())
         ON CONFLICT (id) DO UPDATE SET last_seen = now(), version = EXCLUDED.version
         RETURNING id, version, started_at, last_seen",
        &[&id, &version],
        replica,
    )
    .await?
    .ok_or_else(|| StoreError::Corrupt("heartbeat returned no row".to_owned()))
}

pub(super) async fn list_replicas(s: &PostgresStore) -> Result<Vec<Replica>> {
    let c = s.conn().await?;
    collect(
        &*c,
        "SELECT id, version, started_at, last_seen FROM replicas ORDER BY id",
        &[],
        replica,
    )
    .await
}

pub(super) async fn acquire_lease(
    s: &PostgresStore,
    name: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> Result<Option<LeaseGrant>> {
    let c = s.conn().await?;
    let row = c
        .query_opt(
            "UPDATE leases SET
                 epoch = CASE WHEN holder IS NOT DISTINCT FROM $2 THEN epoch ELSE epoch + 1 END,
                 holder = $2,
                 expires_at = now() + $3::float8 * interval '1 second'
             WHERE name = $1 AND (holder = $2 OR expires_at < now())
             RETURNING epoch, expires_at",
            &[&name, &holder, &secs(ttl)],
        )
        .await?;
    match row {
        Some(r) => Ok(Some(LeaseGrant {
            epoch: r.try_get(0)?,
            expires_at: r.try_get(1)?,
        })),
        None => {
            let exists: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM leases WHERE name = $1)",
                    &[&name],
                )
                .await?
                .try_get(0)?;
            if exists {
                Ok(None)
            } else {
                Err(not_found("lease", name))
            }
        }
    }
}

pub(super) async fn release_lease(s: &PostgresStore, name: &str, holder: &str) -> Result<bool> {
    let c = s.conn().await?;
    Ok(c.execute(
        "UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND expires_at > now()",
        &[&name, &holder],
    )
    .await?
        > 0)
}

/// A run's insert, idempotent by (requested_by, idempotency_key): owned with a
/// run lease from now, or unowned (`create_run`, SQLite-style single node).
pub(in crate::store) async fn insert_run(
    tx: &tokio_postgres::Transaction<'_>,
    new: &NewRun,
    owner: Option<&RunOwner>,
) -> Result<CreatedRun> {
    if let Some(exp) = &new.experiment_id
        && !experiment_exists(tx, exp).await?
    {
        return Err(not_found("experiment", exp));
    }
    // A concurrent insert with the same key makes this wait for its commit and
    // then do nothing; the SELECT below (a new snapshot) sees that run.
    let inserted = one(
        tx,
        &format!(
            "INSERT INTO runs (id, experiment_id, experiment_name, yaml, status, summary,
                 requested_by, idempotency_key, schedule_id, created_at, owner, lease_expires_at)
             VALUES ($1, $2, $3, $4, 'queued', '{{}}', $5, $6, $7, $8, $9,
                 now() + $10::float8 * interval '1 second')
             ON CONFLICT (requested_by, idempotency_key) DO NOTHING
             RETURNING {RUN_COLS}"
        ),
        &[
            &new_id("run"),
            &new.experiment_id,
            &new.experiment_name,
            &new.yaml,
            &new.requested_by,
            &new.idempotency_key,
            &new.schedule_id,
            &now(),
            &owner.map(|o| o.replica.as_str()),
            &owner.map(|o| secs(o.lease)),
        ],
        run,
    )
    .await?;
    match inserted {
        Some(run) => Ok(CreatedRun { run, created: true }),
        None => {
            let existing = one(
                tx,
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE requested_by = $1 AND idempotency_key = $2"
                ),
                &[&new.requested_by, &new.idempotency_key],
                run,
            )
            .await?
            .ok_or_else(|| {
                StoreError::Conflict("idempotency key conflict with a vanished run".to_owned())
            })?;
            idempotent_match(existing, new)
        }
    }
}

pub(super) async fn create_owned_run(
    s: &PostgresStore,
    new: &NewRun,
    owner: &RunOwner,
) -> Result<CreatedRun> {
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    let created = insert_run(&tx, new, Some(owner)).await?;
    tx.commit().await?;
    Ok(created)
}

/// True when the fence's lease is still held at its epoch (or there is no fence).
async fn fence_holds(tx: &tokio_postgres::Transaction<'_>, fence: Option<&Fence>) -> Result<bool> {
    let Some(f) = fence else { return Ok(true) };
    Ok(tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM leases
                 WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now())",
            &[&f.name, &f.holder, &f.epoch],
        )
        .await?
        .try_get(0)?)
}

/// Moves the schedule's marks (locking its row, which orders two firers of one
/// schedule) and claims the slot; false when the slot was handled already.
async fn claim_slot(
    tx: &tokio_postgres::Transaction<'_>,
    id: &str,
    slot: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    outcome: &str,
    by: &SlotBy,
) -> Result<bool> {
    let slot = slot.trunc_subsecs(6);
    let n = tx
        .execute(
            "UPDATE schedules SET last_fired_at = GREATEST(last_fired_at, $2), next_fire_at = $3
             WHERE id = $1",
            &[&id, &slot, &next],
        )
        .await?;
    if n == 0 {
        return Err(not_found("schedule", id));
    }
    let epoch = by.fence.as_ref().map(|f| f.epoch);
    let claimed = tx
        .execute(
            "INSERT INTO schedule_slots (schedule_id, slot, outcome, replica, epoch, at)
             VALUES ($1, $2, $3, $4, $5, now())
             ON CONFLICT (schedule_id, slot) DO NOTHING",
            &[&id, &slot, &outcome, &by.replica, &epoch],
        )
        .await?;
    Ok(claimed == 1)
}

pub(super) async fn fire_slot(s: &PostgresStore, f: &SlotFire) -> Result<SlotFired> {
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    if !fence_holds(&tx, f.by.fence.as_ref()).await? {
        return Ok(SlotFired::Fenced);
    }
    if !claim_slot(&tx, &f.schedule_id, f.slot, f.next_fire_at, "fired", &f.by).await? {
        // Dropping the transaction rolls the schedule's marks back too.
        return Ok(SlotFired::Taken);
    }
    let created = insert_run(&tx, &f.run, Some(&f.owner)).await?;
    tx.execute(
        "UPDATE schedule_slots SET run_id = $3 WHERE schedule_id = $1 AND slot = $2",
        &[&f.schedule_id, &f.slot.trunc_subsecs(6), &created.run.id],
    )
    .await?;
    let record = FireRecord {
        slot: f.slot,
        outcome: FireOutcome::Fired {
            run_id: created.run.id.clone(),
            action: f.action,
            catch_up: f.catch_up,
            missed: f.missed,
        },
        next_fire_at: f.next_fire_at,
    };
    insert_audit(
        &tx,
        &NewAudit {
            actor: SCHEDULER_ACTOR.to_owned(),
            action: record.outcome.audit_action().to_owned(),
            target: f.schedule_id.clone(),
            detail: slot_detail(&record, &f.by)?,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(SlotFired::Fired {
        run: Box::new(created.run),
        created: created.created,
    })
}

pub(super) async fn record_slot(
    s: &PostgresStore,
    id: &str,
    fire: &FireRecord,
    by: &SlotBy,
) -> Result<bool> {
    let detail = slot_detail(fire, by)?;
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    if !fence_holds(&tx, by.fence.as_ref()).await? {
        return Ok(false);
    }
    if !claim_slot(
        &tx,
        id,
        fire.slot,
        fire.next_fire_at,
        outcome_word(&fire.outcome),
        by,
    )
    .await?
    {
        return Ok(false);
    }
    insert_audit(
        &tx,
        &NewAudit {
            actor: SCHEDULER_ACTOR.to_owned(),
            action: fire.outcome.audit_action().to_owned(),
            target: id.to_owned(),
            detail,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn claim_run(
    s: &PostgresStore,
    id: &str,
    owner: &RunOwner,
) -> Result<Option<Run>> {
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    let free = tx
        .query_opt(
            "SELECT id FROM runs WHERE id = $1 AND status = 'queued'
                 AND (owner IS NULL OR owner = $2 OR lease_expires_at < now())
             FOR UPDATE SKIP LOCKED",
            &[&id, &owner.replica],
        )
        .await?;
    if free.is_none() {
        return Ok(None);
    }
    let claimed = one(
        &tx,
        &format!(
            "UPDATE runs SET status = 'running', started_at = $2, owner = $3,
                 lease_expires_at = now() + $4::float8 * interval '1 second'
             WHERE id = $1 RETURNING {RUN_COLS}"
        ),
        &[&id, &now(), &owner.replica, &secs(owner.lease)],
        run,
    )
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

pub(super) async fn renew_runs(s: &PostgresStore, owner: &RunOwner) -> Result<Vec<OwnedRun>> {
    let c = s.conn().await?;
    let rows = c
        .query(
            &format!(
                "UPDATE runs SET lease_expires_at = now() + $2::float8 * interval '1 second'
                 WHERE owner = $1 AND {IN_FLIGHT} RETURNING id, abort_requested"
            ),
            &[&owner.replica, &secs(owner.lease)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(OwnedRun {
                id: r.try_get(0)?,
                abort_requested: r.try_get(1)?,
            })
        })
        .collect()
}

pub(super) async fn run_lease(s: &PostgresStore, id: &str) -> Result<Option<RunLease>> {
    let c = s.conn().await?;
    c.query_opt(
        "SELECT owner, lease_expires_at, abort_requested FROM runs WHERE id = $1",
        &[&id],
    )
    .await?
    .map(|r| {
        Ok(RunLease {
            owner: r.try_get(0)?,
            lease_expires_at: r.try_get(1)?,
            abort_requested: r.try_get(2)?,
        })
    })
    .transpose()
}

pub(super) async fn request_abort(s: &PostgresStore, id: &str, reason: &str) -> Result<bool> {
    let c = s.conn().await?;
    Ok(c.execute(
        &format!(
            "UPDATE runs SET abort_requested = COALESCE(abort_requested, $2)
             WHERE id = $1 AND {IN_FLIGHT}"
        ),
        &[&id, &reason],
    )
    .await?
        > 0)
}

pub(super) async fn request_abort_all(
    s: &PostgresStore,
    reason: &str,
    except: &str,
) -> Result<Vec<String>> {
    let c = s.conn().await?;
    c.query(
        &format!(
            "UPDATE runs SET abort_requested = COALESCE(abort_requested, $1)
             WHERE {IN_FLIGHT} AND owner IS DISTINCT FROM $2 RETURNING id"
        ),
        &[&reason, &except],
    )
    .await?
    .iter()
    .map(|r| Ok(r.try_get(0)?))
    .collect()
}

pub(super) async fn sweep_expired_runs(s: &PostgresStore, actor: &str) -> Result<Vec<SweptRun>> {
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    let expired = tx
        .query(
            &format!(
                "SELECT id, owner, lease_expires_at FROM runs
                 WHERE {IN_FLIGHT} AND lease_expires_at < now()
                 ORDER BY ord FOR UPDATE SKIP LOCKED"
            ),
            &[],
        )
        .await?;
    let mut swept = Vec::with_capacity(expired.len());
    for row in &expired {
        let id: String = row.try_get(0)?;
        let owner: Option<String> = row.try_get(1)?;
        let at: DateTime<Utc> = row.try_get(2)?;
        let reason = swept_reason(owner.as_deref(), at);
        tx.execute(
            "UPDATE runs SET status = 'aborted', reason = $2, finished_at = $3 WHERE id = $1",
            &[&id, &reason, &now()],
        )
        .await?;
        insert_event(
            &tx,
            &id,
            "aborted",
            &serde_json::json!({ "reason": reason }),
        )
        .await?;
        insert_audit(
            &tx,
            &NewAudit {
                actor: actor.to_owned(),
                action: "run.abort".to_owned(),
                target: id.clone(),
                detail: serde_json::json!({ "reason": reason, "owner": owner, "lease_expired_at": at }),
            },
        )
        .await?;
        swept.push(SweptRun { id, owner, reason });
    }
    tx.commit().await?;
    Ok(swept)
}

pub(super) async fn abort_replica_in_flight(
    s: &PostgresStore,
    replica: &str,
    reason: &str,
) -> Result<Vec<String>> {
    let mut c = s.conn().await?;
    let tx = c.transaction().await?;
    let ids: Vec<String> = tx
        .query(
            &format!(
                "UPDATE runs SET status = 'aborted', reason = $2, finished_at = $3
                 WHERE {IN_FLIGHT}
                   AND (owner IS NULL OR owner = $1 OR lease_expires_at IS NULL
                        OR lease_expires_at < now())
                 RETURNING id"
            ),
            &[&replica, &reason, &now()],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let data = serde_json::json!({ "reason": reason });
    for id in &ids {
        insert_event(&tx, id, "aborted", &data).await?;
    }
    tx.commit().await?;
    Ok(ids)
}
