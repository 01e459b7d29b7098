//! A run's event stream for `GET /v1/runs/{id}/events`: what the store holds after
//! the client's last event, then live events as the manager stores them, then one
//! `end` event once the run's final status is stored. The store is the source of
//! truth: a gap in the live feed (a slow client lagging, a reconnect) is filled
//! from it, so a client sees every event once, in order.
//!
//! A run another replica owns sends this replica no live events: its stream polls
//! the store ([`REMOTE_POLL`]) for events the owner appends and for the run's end.
//! A local run's stream polls too, rarely ([`LOCAL_POLL`]), so a run handed over
//! (swept by this replica after its owner died) still ends its streams.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::api::{RecvError, SseItem, is_final, sse_event};
use super::manager::{Live, Manager};
use crate::store::RunEvent;

/// How often a stream of another replica's run reads the store.
pub(crate) const REMOTE_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// How often a stream of this replica's run reads the store anyway.
pub(crate) const LOCAL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

struct Cursor {
    manager: Arc<Manager>,
    id: String,
    last: i64,
    live: broadcast::Receiver<Live>,
    stop: watch::Receiver<bool>,
    buf: VecDeque<RunEvent>,
    started: bool,
    done: bool,
    ended: bool,
}

pub(crate) fn stream(
    manager: Arc<Manager>,
    id: String,
    after: i64,
    live: broadcast::Receiver<Live>,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = SseItem> + Send + 'static {
    let cursor = Cursor {
        manager,
        id,
        last: after,
        live,
        stop,
        buf: VecDeque::new(),
        started: false,
        done: false,
        ended: false,
    };
    futures_util::stream::unfold(cursor, |mut c| async move {
        let item = c.next().await?;
        Some((item, c))
    })
}

impl Cursor {
    async fn next(&mut self) -> Option<SseItem> {
        loop {
            if let Some(e) = self.buf.pop_front() {
                if e.seq <= self.last {
                    continue;
                }
                self.last = e.seq;
                return Some(sse_event(&e));
            }
            if self.ended {
                return None;
            }
            if self.done {
                self.ended = true;
                return Some(Ok(self.end_event().await));
            }
            if !self.started {
                self.started = true;
                self.catch_up().await?;
                if self.is_over().await? {
                    self.catch_up().await?;
                    self.done = true;
                }
                continue;
            }
            if *self.stop.borrow() {
                return None;
            }
            let poll = if self.manager.is_local(&self.id).await {
                LOCAL_POLL
            } else {
                REMOTE_POLL
            };
            tokio::select! {
                () = tokio::time::sleep(poll) => {
                    self.catch_up().await?;
                    if self.is_over().await? {
                        self.catch_up().await?;
                        self.done = true;
                    }
                }
                msg = self.live.recv() => match msg {
                    Ok(Live::Event(e)) if e.run_id == self.id => {
                        if e.seq == self.last + 1 {
                            self.buf.push_back((*e).clone());
                        } else if e.seq > self.last {
                            self.catch_up().await?;
                        }
                    }
                    Ok(l) if is_final(&l, &self.id) => {
                        self.catch_up().await?;
                        self.done = true;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        tracing::debug!(run = %self.id, missed = n, "SSE client lagged; reading the store");
                        self.catch_up().await?;
                        if self.is_over().await? {
                            self.catch_up().await?;
                            self.done = true;
                        }
                    }
                    Err(RecvError::Closed) => self.done = true,
                },
                _ = self.stop.changed() => return None,
            }
        }
    }

    /// Queues what the store holds after the last event sent.
    async fn catch_up(&mut self) -> Option<()> {
        match self.manager.store().events_after(&self.id, self.last).await {
            Ok(events) => {
                self.buf.extend(events);
                Some(())
            }
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "SSE: cannot read events; closing the stream");
                None
            }
        }
    }

    async fn is_over(&self) -> Option<bool> {
        match self.manager.store().get_run(&self.id).await {
            Ok(r) => Some(r.is_none_or(|r| !r.status.in_flight())),
            Err(e) => {
                tracing::warn!(run = %self.id, error = %e, "SSE: cannot read the run; closing the stream");
                None
            }
        }
    }

    async fn end_event(&self) -> SseEvent {
        let data = match self.manager.store().get_run(&self.id).await {
            Ok(Some(r)) => json!({
                "status": r.status,
                "exit_code": r.exit_code,
                "reason": r.reason.or_else(|| r.summary.get("reason").and_then(|v| v.as_str()).map(str::to_owned)),
            }),
            _ => json!({}),
        };
        SseEvent::default().event("end").data(data.to_string())
    }
}
