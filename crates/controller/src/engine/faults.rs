//! The faults of a run: one slot per (step, agent), each a lease the engine
//! injects, renews, observes and reverts through its agent's `AgentClient`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use faultline_probe::Clock;
use faultline_spec::Experiment;
use indexmap::IndexMap;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Agents, PREFLIGHT_TIMEOUT, rfc3339};
use crate::client::{AgentClient, ClientError, FaultRequest};
use crate::journal::{Event, FaultRecord, LeftBehind, ObservationRecord, RunStatus};
use crate::select::Selection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not injected yet.
    Pending,
    /// Injected and leased.
    Active,
    /// The inject call failed; the agent may hold part of it, so it is reverted
    /// like an active one.
    InjectFailed,
    /// Reverted (or the revert was attempted: see the record's error).
    Reverted,
    /// Never injected: the run stopped first.
    Skipped,
}

#[derive(Debug)]
struct Slot {
    rec: FaultRecord,
    client: Arc<dyn AgentClient>,
    request: FaultRequest,
    start: Duration,
    end: Duration,
    state: State,
    last_renew: Duration,
    last_ok: Duration,
    next_observe: Duration,
    expires_at: Option<String>,
    reverted: Option<Duration>,
}

impl Slot {
    /// Whether the agent may hold something of this slot.
    fn attempted(&self) -> bool {
        !matches!(self.state, State::Pending | State::Skipped)
    }
}

/// At most this many agent calls of one run are in flight at once. A run on
/// hundreds of agents injects, renews, observes and reverts them all
/// concurrently, but never opens hundreds of connections in the same instant:
/// a call waits for a permit, and its own timeout starts only once it has one.
pub const FAN_OUT: usize = 64;

/// The permits behind [`FAN_OUT`], shared by every call of one run.
#[derive(Debug, Clone)]
pub(crate) struct FanOut(Arc<Semaphore>);

impl Default for FanOut {
    fn default() -> Self {
        FanOut(Arc::new(Semaphore::new(FAN_OUT)))
    }
}

impl FanOut {
    /// Spawns `call` on `set` once a permit is free.
    pub(crate) fn spawn<T, F>(&self, set: &mut JoinSet<T>, call: F)
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let permits = Arc::clone(&self.0);
        set.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail; if it
            // ever did, the call goes ahead unbounded rather than not at all.
            let _permit = permits.acquire_owned().await.ok();
            call.await
        });
    }
}

#[derive(Debug, Default)]
pub(super) struct Slots {
    slots: Vec<Slot>,
    origin: Option<Duration>,
    fan_out: FanOut,
    /// Set when the run must stop: a fault could not be injected or renewed.
    pub(super) fatal: Option<String>,
}

/// The run, step and agent a fault id made by [`fault_id`] names, for `faultline
/// status` on a host where only the agent's journal is left. Best effort: a step
/// or agent name with characters an id cannot carry comes back as `-`, and an id
/// made by anything else is `None`.
pub fn parse_fault_id(id: &str) -> Option<(&str, &str, &str)> {
    let (run, rest) = id.split_once('.')?;
    let (index, rest) = rest.split_once('-')?;
    if !run.starts_with("run-") || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (step, agent) = rest.rsplit_once('.')?;
    Some((run, step, agent))
}

/// `run-1a2b.03-lose-gpus.gpu-1`: unique per slot, valid as an agent fault id.
fn fault_id(run_id: &str, index: usize, step: &str, agent: &str) -> String {
    let raw = format!("{run_id}.{index:02}-{step}.{agent}");
    let mut id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(128)
        .collect();
    if id.starts_with('.') {
        id.replace_range(0..1, "r");
    }
    id
}

impl Slots {
    pub(super) fn plan(
        exp: &Experiment,
        selections: &IndexMap<String, Selection>,
        agents: &Agents,
        run_id: &str,
    ) -> Result<Slots, String> {
        let mut slots = Vec::new();
        let lease = exp.safety.lease;
        for step in &exp.method {
            let params = step
                .fault
                .params()
                .map_err(|e| format!("step {}: parameters: {e}", step.name))?;
            let chosen = selections
                .get(&step.target)
                .map(|s| s.agents.as_slice())
                .unwrap_or_default();
            for agent in chosen {
                let client = agents.get(agent).ok_or_else(|| {
                    format!(
                        "step {}: agent {agent} has no client (is it in the inventory?)",
                        step.name
                    )
                })?;
                let id = fault_id(run_id, slots.len(), &step.name, agent);
                slots.push(Slot {
                    rec: FaultRecord {
                        id,
                        step: step.name.clone(),
                        kind: step.fault.kind().to_owned(),
                        agent: agent.clone(),
                        params: redacted(&step.fault),
                        planned_start_s: 0.0,
                        planned_end_s: 0.0,
                        injected_at: None,
                        injected_s: None,
                        inject_error: None,
                        reverted_at: None,
                        reverted_s: None,
                        revert_error: None,
                        revert_confirmed: false,
                        renewals: 0,
                        observations: Vec::new(),
                    },
                    client: Arc::clone(client),
                    request: FaultRequest {
                        kind: step.fault.kind().to_owned(),
                        params: params.clone(),
                        lease,
                    },
                    start: step.start.0,
                    end: step.end().0,
                    state: State::Pending,
                    last_renew: Duration::ZERO,
                    last_ok: Duration::ZERO,
                    next_observe: Duration::ZERO,
                    expires_at: None,
                    reverted: None,
                });
            }
        }
        Ok(Slots {
            slots,
            origin: None,
            fan_out: FanOut::default(),
            fatal: None,
        })
    }

    /// Every agent a fault goes to answers its health check and offers the kinds
    /// it will be asked for. Nothing is injected before this passes.
    pub(super) async fn preflight(&self, agents: &Agents) -> Result<(), (RunStatus, String)> {
        let mut kinds: IndexMap<&str, BTreeSet<&str>> = IndexMap::new();
        for s in &self.slots {
            kinds
                .entry(s.rec.agent.as_str())
                .or_default()
                .insert(s.rec.kind.as_str());
        }
        let mut set = JoinSet::new();
        for name in kinds.keys() {
            if let Some(c) = agents.get(*name) {
                let c = Arc::clone(c);
                self.fan_out.spawn(&mut set, async move {
                    let r = tokio::time::timeout(PREFLIGHT_TIMEOUT, c.health()).await;
                    (c.name().to_owned(), r)
                });
            }
        }
        let mut problems = Vec::new();
        let mut invalid = false;
        while let Some(joined) = set.join_next().await {
            let Ok((name, r)) = joined else { continue };
            match r {
                Err(_) => problems.push(format!(
                    "agent {name} did not answer within {}",
                    faultline_spec::units::Duration(PREFLIGHT_TIMEOUT)
                )),
                Ok(Err(e)) => problems.push(format!("agent {name} did not answer: {e}")),
                Ok(Ok(health)) => {
                    let offered: BTreeSet<&str> =
                        health.capabilities.iter().map(String::as_str).collect();
                    for kind in kinds.get(name.as_str()).into_iter().flatten() {
                        if !offered.contains(kind) {
                            invalid = true;
                            problems.push(format!("agent {name} cannot inject {kind}"));
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort();
        let status = if invalid {
            RunStatus::Invalid
        } else {
            RunStatus::Aborted
        };
        Err((status, format!("{}; nothing injected", problems.join("; "))))
    }

    /// Injects what is due, reverts what has ended and renews leases.
    pub(super) async fn step(
        &mut self,
        now: Duration,
        t0: Duration,
        lease: faultline_spec::units::Duration,
        clock: &Clock,
    ) -> Vec<Event> {
        if self.origin.is_none() {
            self.origin = Some(t0);
            for s in &mut self.slots {
                s.rec.planned_start_s = (t0 + s.start).as_secs_f64();
                s.rec.planned_end_s = (t0 + s.end).as_secs_f64();
            }
        }
        let mut events = Vec::new();

        // Reverts first: a step that ends when another starts frees its resource
        // (a port, a lock) before the next one takes it.
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.state == State::Active && now >= t0 + s.end
            })
            .collect();
        events.extend(self.revert(&due, clock, None).await);

        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.state == State::Pending && now >= t0 + s.start
            })
            .collect();
        if !due.is_empty() {
            let mut set = JoinSet::new();
            for &i in &due {
                let s = &self.slots[i];
                let (c, id, req) = (Arc::clone(&s.client), s.rec.id.clone(), s.request.clone());
                self.fan_out
                    .spawn(&mut set, async move { (i, c.put_fault(&id, &req).await) });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((i, r)) = joined else { continue };
                let at = clock.now();
                let s = &mut self.slots[i];
                match r {
                    Ok(view) => {
                        s.state = State::Active;
                        s.last_renew = at;
                        s.last_ok = at;
                        s.next_observe = at;
                        s.expires_at = Some(view.expires_at);
                        s.rec.params = view.params;
                        s.rec.injected_at = Some(rfc3339(SystemTime::now()));
                        s.rec.injected_s = Some(at.as_secs_f64());
                        tracing::info!(fault = %s.rec.id, agent = %s.rec.agent, kind = %s.rec.kind, "injected");
                        events.push(Event::Injected {
                            fault: s.rec.id.clone(),
                            step: s.rec.step.clone(),
                            kind: s.rec.kind.clone(),
                            agent: s.rec.agent.clone(),
                            at_s: at.as_secs_f64(),
                        });
                    }
                    Err(e) => {
                        s.state = State::InjectFailed;
                        let reason = e.to_string();
                        s.rec.inject_error = Some(reason.clone());
                        events.push(Event::InjectFailed {
                            fault: s.rec.id.clone(),
                            agent: s.rec.agent.clone(),
                            reason: reason.clone(),
                            at_s: at.as_secs_f64(),
                        });
                        self.fatal.get_or_insert_with(|| {
                            format!(
                                "step {} could not be injected on {}: {reason}",
                                s.rec.step, s.rec.agent
                            )
                        });
                    }
                }
            }
        }

        // Renew a third of the way into each lease; an agent that cannot be
        // renewed for half a lease is lost (its faults lapse on their own).
        let every = lease.0 / 3;
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.state == State::Active && now >= s.last_renew + every
            })
            .collect();
        if !due.is_empty() {
            let mut set = JoinSet::new();
            let limit = every.clamp(Duration::from_millis(200), Duration::from_secs(2));
            for &i in &due {
                let s = &mut self.slots[i];
                s.last_renew = now;
                let (c, id) = (Arc::clone(&s.client), s.rec.id.clone());
                self.fan_out.spawn(&mut set, async move {
                    (i, tokio::time::timeout(limit, c.renew(&id, None)).await)
                });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((i, r)) = joined else { continue };
                let at = clock.now();
                let s = &mut self.slots[i];
                match r {
                    Ok(Ok(view)) => {
                        s.last_ok = at;
                        s.rec.renewals += 1;
                        s.expires_at = Some(view.expires_at);
                    }
                    Ok(Err(e @ ClientError::Rejected { .. })) => {
                        // The agent no longer has it (it restarted, or the lease
                        // lapsed): the timeline is broken.
                        self.fatal.get_or_insert_with(|| {
                            format!(
                                "fault {} on {} could not be renewed: {e}",
                                s.rec.id, s.rec.agent
                            )
                        });
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(fault = %s.rec.id, error = %e, "renewal failed");
                        if at.saturating_sub(s.last_ok) > lease.0 / 2 {
                            self.fatal.get_or_insert_with(|| {
                                format!(
                                    "agent {} lost: {e}; its faults lapse with their lease{}",
                                    s.rec.agent,
                                    s.expires_at
                                        .as_ref()
                                        .map(|t| format!(" at {t}"))
                                        .unwrap_or_default()
                                )
                            });
                        }
                    }
                    Err(_) => {
                        tracing::warn!(fault = %s.rec.id, "renewal timed out");
                        if at.saturating_sub(s.last_ok) > lease.0 / 2 {
                            self.fatal.get_or_insert_with(|| {
                                format!("agent {} lost: renewals time out", s.rec.agent)
                            });
                        }
                    }
                }
            }
        }
        events
    }

    /// Samples the observation of active faults whose turn it is.
    pub(super) async fn observe(
        &mut self,
        now: Duration,
        every: Duration,
        clock: &Clock,
    ) -> Vec<Event> {
        let due: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let s = &self.slots[i];
                s.state == State::Active && now >= s.next_observe
            })
            .collect();
        let mut set = JoinSet::new();
        for &i in &due {
            let s = &mut self.slots[i];
            s.next_observe = now + every;
            let (c, id) = (Arc::clone(&s.client), s.rec.id.clone());
            self.fan_out.spawn(&mut set, async move {
                (
                    i,
                    tokio::time::timeout(Duration::from_secs(1), c.status(&id)).await,
                )
            });
        }
        let mut events = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((i, Ok(Ok(Some(status))))) = joined else {
                continue;
            };
            let s = &mut self.slots[i];
            let o = ObservationRecord {
                at_s: clock.now().as_secs_f64(),
                active: status.observation.active,
                detail: status.observation.detail,
                figures: status.observation.figures,
            };
            s.rec.observations.push(o.clone());
            events.push(Event::Observed {
                fault: s.rec.id.clone(),
                observation: o,
            });
        }
        events
    }

    /// Reverts the slots `which` concurrently, each within `limit` if given.
    async fn revert(
        &mut self,
        which: &[usize],
        clock: &Clock,
        limit: Option<Duration>,
    ) -> Vec<Event> {
        if which.is_empty() {
            return Vec::new();
        }
        let mut set = JoinSet::new();
        for &i in which {
            let s = &self.slots[i];
            let (c, id) = (Arc::clone(&s.client), s.rec.id.clone());
            self.fan_out.spawn(&mut set, async move {
                let r = match limit {
                    Some(l) => match tokio::time::timeout(l, c.delete_fault(&id)).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!(
                            "no answer within {}",
                            faultline_spec::units::Duration(l)
                        )),
                    },
                    None => c.delete_fault(&id).await.map_err(|e| e.to_string()),
                };
                (i, r)
            });
        }
        let mut events = Vec::new();
        while let Some(joined) = set.join_next().await {
            let Ok((i, r)) = joined else { continue };
            let at = clock.now();
            let s = &mut self.slots[i];
            s.state = State::Reverted;
            s.reverted = Some(at);
            s.rec.reverted_at = Some(rfc3339(SystemTime::now()));
            s.rec.reverted_s = Some(at.as_secs_f64());
            let error = match r {
                Ok(_) => {
                    s.rec.revert_confirmed = true;
                    tracing::info!(fault = %s.rec.id, agent = %s.rec.agent, "reverted");
                    None
                }
                Err(e) => {
                    tracing::error!(fault = %s.rec.id, agent = %s.rec.agent, error = %e, "revert failed");
                    s.rec.revert_error = Some(e.clone());
                    Some(e)
                }
            };
            events.push(Event::Reverted {
                fault: s.rec.id.clone(),
                agent: s.rec.agent.clone(),
                at_s: at.as_secs_f64(),
                confirmed: error.is_none(),
                error,
            });
        }
        events
    }

    /// Reverts everything the agents may hold; pending slots are skipped.
    pub(super) async fn revert_all(&mut self, clock: &Clock, budget: Duration) -> Vec<Event> {
        for s in &mut self.slots {
            if s.state == State::Pending {
                s.state = State::Skipped;
            }
        }
        let which: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i].state, State::Active | State::InjectFailed))
            .collect();
        self.revert(&which, clock, Some(budget)).await
    }

    pub(super) fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| !matches!(s.state, State::Pending | State::Active))
    }

    pub(super) fn any_injected(&self) -> bool {
        self.slots.iter().any(Slot::attempted)
    }

    pub(super) fn last_revert(&self) -> Option<Duration> {
        self.slots.iter().filter_map(|s| s.reverted).max()
    }

    /// Asks every agent that received a fault what it still holds of this run.
    pub(super) async fn verify(&mut self) -> Vec<LeftBehind> {
        let mut by_agent: IndexMap<String, (Arc<dyn AgentClient>, Vec<usize>)> = IndexMap::new();
        for (i, s) in self.slots.iter().enumerate() {
            if s.attempted() {
                by_agent
                    .entry(s.rec.agent.clone())
                    .or_insert_with(|| (Arc::clone(&s.client), Vec::new()))
                    .1
                    .push(i);
            }
        }
        // Every agent is asked at once (bounded), so confirming a revert on a
        // fleet costs one round trip, not one per agent.
        let mut set = JoinSet::new();
        for (n, (_, (client, _))) in by_agent.iter().enumerate() {
            let client = Arc::clone(client);
            self.fan_out.spawn(&mut set, async move {
                let listed = tokio::time::timeout(Duration::from_secs(2), client.list()).await;
                let held: Option<BTreeSet<String>> = match listed {
                    Ok(Ok(list)) => Some(list.into_iter().map(|v| v.id).collect()),
                    _ => None,
                };
                (n, held)
            });
        }
        let mut held_by: Vec<Option<BTreeSet<String>>> = vec![None; by_agent.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((n, held)) = joined {
                held_by[n] = held;
            }
        }
        let mut left = Vec::new();
        for ((agent, (_, idx)), held) in by_agent.into_iter().zip(held_by) {
            for i in idx {
                let s = &mut self.slots[i];
                let reason = match &held {
                    Some(ids) if ids.contains(&s.rec.id) => {
                        s.rec.revert_confirmed = false;
                        Some("the agent still lists it".to_owned())
                    }
                    Some(_) => {
                        // Gone from the agent: reverted, by the call or its lease.
                        s.rec.revert_confirmed = true;
                        None
                    }
                    None if s.rec.revert_confirmed => None,
                    None => Some(format!(
                        "the agent cannot be reached to confirm ({})",
                        s.rec.revert_error.as_deref().unwrap_or("revert unanswered")
                    )),
                };
                if let Some(reason) = reason {
                    left.push(LeftBehind {
                        agent: agent.clone(),
                        fault: s.rec.id.clone(),
                        kind: s.rec.kind.clone(),
                        reason,
                        lease_expires_at: s.expires_at.clone(),
                    });
                }
            }
        }
        left
    }

    pub(super) fn records(&self) -> Vec<FaultRecord> {
        self.slots.iter().map(|s| s.rec.clone()).collect()
    }
}

/// The parameters for the journal: serialised with secrets redacted.
fn redacted(spec: &faultline_spec::FaultSpec) -> serde_json::Value {
    serde_yaml::with::singleton_map::serialize(spec, serde_json::value::Serializer)
        .ok()
        .and_then(|mut v| v.as_object_mut().and_then(|m| m.remove(spec.kind())))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_fan_out_keeps_at_most_its_bound_in_flight_and_runs_every_call() {
        let fan_out = FanOut::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut set = JoinSet::new();
        for i in 0..(FAN_OUT * 3 + 7) {
            let (in_flight, most) = (Arc::clone(&in_flight), Arc::clone(&most));
            fan_out.spawn(&mut set, async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Unbounded, every call would be in flight across these yields.
                for _ in 0..8 {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                i
            });
        }
        let mut done = Vec::new();
        while let Some(joined) = set.join_next().await {
            done.push(joined.expect("call finished"));
        }
        done.sort_unstable();
        assert_eq!(done, (0..(FAN_OUT * 3 + 7)).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), FAN_OUT);
    }

    #[test]
    fn a_fault_id_names_its_run_step_and_agent() {
        let id = fault_id("run-00ab12cd34ef", 3, "lose-gpus", "gpu-1");
        assert_eq!(id, "run-00ab12cd34ef.03-lose-gpus.gpu-1");
        assert_eq!(
            parse_fault_id(&id),
            Some(("run-00ab12cd34ef", "lose-gpus", "gpu-1"))
        );
        let odd = fault_id("run-1", 12, "stall db", "local");
        assert_eq!(parse_fault_id(&odd), Some(("run-1", "stall-db", "local")));
        assert_eq!(parse_fault_id("my-own-fault"), None);
        assert_eq!(parse_fault_id("run-1.x-step.local"), None);
    }
}
