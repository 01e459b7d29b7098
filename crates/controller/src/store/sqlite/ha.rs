//! The SQLite side of the HA store methods (see `store/ha.rs`). SQLite has one
//! writer at a time (`BEGIN IMMEDIATE`), so a plain conditional UPDATE is the claim;
//! lease times are this host's clock.

use super::*;
use crate::store::ha::{outcome_word, slot_detail};

pub(super) const MIGRATION: (i64, &str, &str) = (
    3,
    "replicas and run leases",
    r#"
CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    last_seen   TEXT NOT NULL
);
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT,
    epoch       INTEGER NOT NULL DEFAULT 0,
    expires_at  TEXT NOT NULL
);
INSERT INTO leases (name, holder, epoch, expires_at)
    VALUES ('scheduler', NULL, 0, '1970-01-01T00:00:00.000000Z');
CREATE TABLE schedule_slots (
    schedule_id  TEXT NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
    slot         TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    run_id       TEXT,
    replica      TEXT NOT NULL,
    epoch        INTEGER,
    at           TEXT NOT NULL,
    PRIMARY KEY (schedule_id, slot)
) WITHOUT ROWID;
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at TEXT;
ALTER TABLE runs ADD COLUMN abort_requested TEXT;
CREATE INDEX runs_owner ON runs (owner, status);
"#,
);

const IN_FLIGHT: &str = "status IN ('queued', 'running')";

fn until(ttl: std::time::Duration) -> String {
    let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
    ts(now()
        .checked_add_signed(ttl)
        .unwrap_or(DateTime::<Utc>::MAX_UTC))
}

fn replica(row: &Row<'_>) -> Result<Replica> {
    Ok(Replica {
        id: row.get("id")?,
        version: row.get("version")?,
        started_at: parse_ts(&row.get::<_, String>("started_at")?)?,
        last_seen: parse_ts(&row.get::<_, String>("last_seen")?)?,
    })
}

pub(super) fn heartbeat(
    s: &SqliteStore,
    id: &str,
    version: &str,
) -> BoxFuture<'static, Result<Replica>> {
    let (id, version) = (id.to_owned(), version.to_owned());
    s.call(move |conn| {
        let at = ts(now());
        one(
            conn,
            "INSERT INTO replicas (id, version, started_at, last_seen) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen, version = excluded.version
             RETURNING id, version, started_at, last_seen",
            params![id, version, at],
            replica,
        )?
        .ok_or_else(|| StoreError::Corrupt("heartbeat returned no row".to_owned()))
    })
}

pub(super) fn list_replicas(s: &SqliteStore) -> BoxFuture<'static, Result<Vec<Replica>>> {
    s.call(|conn| {
        collect(
            conn,
            "SELECT id, version, started_at, last_seen FROM replicas ORDER BY id",
            [],
            replica,
        )
    })
}

pub(super) fn acquire_lease(
    s: &SqliteStore,
    name: &str,
    holder: &str,
    ttl: std::time::Duration,
) -> BoxFuture<'static, Result<Option<LeaseGrant>>> {
    let (name, holder) = (name.to_owned(), holder.to_owned());
    s.call(move |conn| {
        let at = ts(now());
        let row: Option<(i64, String)> = conn
            .query_row(
                "UPDATE leases SET
                     epoch = CASE WHEN holder IS ?2 THEN epoch ELSE epoch + 1 END,
                     holder = ?2,
                     expires_at = ?4
                 WHERE name = ?1 AND (holder = ?2 OR expires_at < ?3)
                 RETURNING epoch, expires_at",
                params![name, holder, at, until(ttl)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((epoch, expires)) => Ok(Some(LeaseGrant {
                epoch,
                expires_at: parse_ts(&expires)?,
            })),
            None => {
                let exists: bool = conn.query_row(
                    "SELECT EXISTS (SELECT 1 FROM leases WHERE name = ?1)",
                    [&name],
                    |r| r.get(0),
                )?;
                if exists {
                    Ok(None)
                } else {
                    Err(not_found("lease", &name))
                }
            }
        }
    })
}

pub(super) fn release_lease(
    s: &SqliteStore,
    name: &str,
    holder: &str,
) -> BoxFuture<'static, Result<bool>> {
    let (name, holder) = (name.to_owned(), holder.to_owned());
    s.call(move |conn| {
        let at = ts(now());
        Ok(conn.execute(
            "UPDATE leases SET expires_at = ?3 WHERE name = ?1 AND holder = ?2 AND expires_at > ?3",
            params![name, holder, at],
        )? > 0)
    })
}

/// A run's insert, idempotent by (requested_by, idempotency_key): owned with a
/// run lease from now, or unowned (`create_run`).
pub(in crate::store) fn insert_run(
    tx: &Transaction<'_>,
    new: &NewRun,
    owner: Option<&RunOwner>,
) -> Result<CreatedRun> {
    if let Some(key) = &new.idempotency_key {
        let existing = one(
            tx,
            &format!(
                "SELECT {RUN_COLS} FROM runs WHERE requested_by = ?1 AND idempotency_key = ?2"
            ),
            params![new.requested_by, key],
            run,
        )?;
        if let Some(existing) = existing {
            return idempotent_match(existing, new);
        }
    }
    if let Some(exp) = &new.experiment_id
        && !experiment_exists(tx, exp)?
    {
        return Err(not_found("experiment", exp));
    }
    let id = new_id("run");
    tx.execute(
        "INSERT INTO runs (id, experiment_id, experiment_name, yaml, status, summary,
             requested_by, idempotency_key, schedule_id, created_at, owner, lease_expires_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', '{}', ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            id,
            new.experiment_id,
            new.experiment_name,
            new.yaml,
            new.requested_by,
            new.idempotency_key,
            new.schedule_id,
            ts(now()),
            owner.map(|o| o.replica.as_str()),
            owner.map(|o| until(o.lease))
        ],
    )?;
    let run = get_run(tx, &id)?.ok_or_else(|| not_found("run", &id))?;
    Ok(CreatedRun { run, created: true })
}

pub(super) fn create_owned_run(
    s: &SqliteStore,
    new: &NewRun,
    owner: &RunOwner,
) -> BoxFuture<'static, Result<CreatedRun>> {
    let (new, owner) = (new.clone(), owner.clone());
    s.call(move |conn| {
        let tx = immediate(conn)?;
        let created = insert_run(&tx, &new, Some(&owner))?;
        tx.commit()?;
        Ok(created)
    })
}

fn fence_holds(tx: &Transaction<'_>, fence: Option<&Fence>) -> Result<bool> {
    let Some(f) = fence else { return Ok(true) };
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM leases
             WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > ?4)",
        params![f.name, f.holder, f.epoch, ts(now())],
        |r| r.get(0),
    )?)
}

fn claim_slot(
    tx: &Transaction<'_>,
    id: &str,
    slot: DateTime<Utc>,
    next: Option<DateTime<Utc>>,
    outcome: &str,
    by: &SlotBy,
) -> Result<bool> {
    let n = tx.execute(
        "UPDATE schedules SET
             last_fired_at = CASE WHEN last_fired_at IS NULL OR last_fired_at < ?2
                                  THEN ?2 ELSE last_fired_at END,
             next_fire_at = ?3
         WHERE id = ?1",
        params![id, ts(slot), next.map(ts)],
    )?;
    if n == 0 {
        return Err(not_found("schedule", id));
    }
    let epoch = by.fence.as_ref().map(|f| f.epoch);
    let claimed = tx.execute(
        "INSERT INTO schedule_slots (schedule_id, slot, outcome, replica, epoch, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (schedule_id, slot) DO NOTHING",
        params![id, ts(slot), outcome, by.replica, epoch, ts(now())],
    )?;
    Ok(claimed == 1)
}

pub(super) fn fire_slot(s: &SqliteStore, f: &SlotFire) -> BoxFuture<'static, Result<SlotFired>> {
    let f = f.clone();
    s.call(move |conn| {
        let tx = immediate(conn)?;
        if !fence_holds(&tx, f.by.fence.as_ref())? {
            return Ok(SlotFired::Fenced);
        }
        if !claim_slot(&tx, &f.schedule_id, f.slot, f.next_fire_at, "fired", &f.by)? {
            return Ok(SlotFired::Taken);
        }
        let created = insert_run(&tx, &f.run, Some(&f.owner))?;
        tx.execute(
            "UPDATE schedule_slots SET run_id = ?3 WHERE schedule_id = ?1 AND slot = ?2",
            params![f.schedule_id, ts(f.slot), created.run.id],
        )?;
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
        )?;
        tx.commit()?;
        Ok(SlotFired::Fired {
            run: Box::new(created.run),
            created: created.created,
        })
    })
}

pub(super) fn record_slot(
    s: &SqliteStore,
    id: &str,
    fire: &FireRecord,
    by: &SlotBy,
) -> BoxFuture<'static, Result<bool>> {
    let (id, fire, by) = (id.to_owned(), fire.clone(), by.clone());
    s.call(move |conn| {
        let detail = slot_detail(&fire, &by)?;
        let tx = immediate(conn)?;
        if !fence_holds(&tx, by.fence.as_ref())? {
            return Ok(false);
        }
        if !claim_slot(
            &tx,
            &id,
            fire.slot,
            fire.next_fire_at,
            outcome_word(&fire.outcome),
            &by,
        )? {
            return Ok(false);
        }
        insert_audit(
            &tx,
            &NewAudit {
                actor: SCHEDULER_ACTOR.to_owned(),
                action: fire.outcome.audit_action().to_owned(),
                target: id.clone(),
                detail,
            },
        )?;
        tx.commit()?;
        Ok(true)
    })
}

pub(super) fn claim_run(
    s: &SqliteStore,
    id: &str,
    owner: &RunOwner,
) -> BoxFuture<'static, Result<Option<Run>>> {
    let (id, owner) = (id.to_owned(), owner.clone());
    s.call(move |conn| {
        let tx = immediate(conn)?;
        let at = now();
        let n = tx.execute(
            "UPDATE runs SET status = 'running', started_at = ?3, owner = ?2, lease_expires_at = ?4
             WHERE id = ?1 AND status = 'queued'
               AND (owner IS NULL OR owner = ?2 OR lease_expires_at < ?5)",
            params![id, owner.replica, ts(at), until(owner.lease), ts(at)],
        )?;
        if n == 0 {
            return Ok(None);
        }
        let run = get_run(&tx, &id)?;
        tx.commit()?;
        Ok(run)
    })
}

pub(super) fn renew_runs(
    s: &SqliteStore,
    owner: &RunOwner,
) -> BoxFuture<'static, Result<Vec<OwnedRun>>> {
    let owner = owner.clone();
    s.call(move |conn| {
        let mut stmt = conn.prepare_cached(&format!(
            "UPDATE runs SET lease_expires_at = ?2 WHERE owner = ?1 AND {IN_FLIGHT}
             RETURNING id, abort_requested"
        ))?;
        let rows = stmt.query_map(params![owner.replica, until(owner.lease)], |r| {
            Ok(OwnedRun {
                id: r.get(0)?,
                abort_requested: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    })
}

pub(super) fn run_lease(s: &SqliteStore, id: &str) -> BoxFuture<'static, Result<Option<RunLease>>> {
    let id = id.to_owned();
    s.call(move |conn| {
        let row: Option<(Option<String>, Option<String>, Option<String>)> = conn
            .query_row(
                "SELECT owner, lease_expires_at, abort_requested FROM runs WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        row.map(|(owner, lease, abort)| {
            Ok(RunLease {
                owner,
                lease_expires_at: opt_ts(lease)?,
                abort_requested: abort,
            })
        })
        .transpose()
    })
}

pub(super) fn request_abort(
    s: &SqliteStore,
    id: &str,
    reason: &str,
) -> BoxFuture<'static, Result<bool>> {
    let (id, reason) = (id.to_owned(), reason.to_owned());
    s.call(move |conn| {
        Ok(conn.execute(
            &format!(
                "UPDATE runs SET abort_requested = COALESCE(abort_requested, ?2)
                 WHERE id = ?1 AND {IN_FLIGHT}"
            ),
            params![id, reason],
        )? > 0)
    })
}

pub(super) fn request_abort_all(
    s: &SqliteStore,
    reason: &str,
    except: &str,
) -> BoxFuture<'static, Result<Vec<String>>> {
    let (reason, except) = (reason.to_owned(), except.to_owned());
    s.call(move |conn| {
        let mut stmt = conn.prepare(&format!(
            "UPDATE runs SET abort_requested = COALESCE(abort_requested, ?1)
             WHERE {IN_FLIGHT} AND owner IS NOT ?2 RETURNING id"
        ))?;
        let ids = stmt.query_map(params![reason, except], |r| r.get(0))?;
        Ok(ids.collect::<Result<_, _>>()?)
    })
}

pub(super) fn sweep_expired_runs(
    s: &SqliteStore,
    actor: &str,
) -> BoxFuture<'static, Result<Vec<SweptRun>>> {
    let actor = actor.to_owned();
    s.call(move |conn| {
        let tx = immediate(conn)?;
        let at = ts(now());
        let expired: Vec<(String, Option<String>, String)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT id, owner, lease_expires_at FROM runs
                 WHERE {IN_FLIGHT} AND lease_expires_at < ?1 ORDER BY ord"
            ))?;
            stmt.query_map([&at], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut swept = Vec::with_capacity(expired.len());
        for (id, owner, lease) in expired {
            let lease = parse_ts(&lease)?;
            let reason = swept_reason(owner.as_deref(), lease);
            tx.execute(
                "UPDATE runs SET status = 'aborted', reason = ?2, finished_at = ?3 WHERE id = ?1",
                params![id, reason, at],
            )?;
            insert_event(
                &tx,
                &id,
                "aborted",
                &serde_json::json!({ "reason": reason }),
            )?;
            insert_audit(
                &tx,
                &NewAudit {
                    actor: actor.clone(),
                    action: "run.abort".to_owned(),
                    target: id.clone(),
                    detail: serde_json::json!({
                        "reason": reason, "owner": owner, "lease_expired_at": lease
                    }),
                },
            )?;
            swept.push(SweptRun { id, owner, reason });
        }
        tx.commit()?;
        Ok(swept)
    })
}

pub(super) fn abort_replica_in_flight(
    s: &SqliteStore,
    replica: &str,
    reason: &str,
) -> BoxFuture<'static, Result<Vec<String>>> {
    let (replica, reason) = (replica.to_owned(), reason.to_owned());
    s.call(move |conn| {
        let tx = immediate(conn)?;
        let at = ts(now());
        let ids: Vec<String> = {
            let mut stmt = tx.prepare(&format!(
                "UPDATE runs SET status = 'aborted', reason = ?2, finished_at = ?3
                 WHERE {IN_FLIGHT}
                   AND (owner IS NULL OR owner = ?1 OR lease_expires_at IS NULL
                        OR lease_expires_at < ?3)
                 RETURNING id"
            ))?;
            stmt.query_map(params![replica, reason, at], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        let data = serde_json::json!({ "reason": reason });
        for id in &ids {
            insert_event(&tx, id, "aborted", &data)?;
        }
        tx.commit()?;
        Ok(ids)
    })
}
