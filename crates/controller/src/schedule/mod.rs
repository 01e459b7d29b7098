//! Game-day scheduling: when a schedule fires, and what a fire does.
//!
//! A schedule is a cron expression (5 fields, or 6 with seconds first; croner's
//! dialect: `L`, `W`, `#` and names work) evaluated in an IANA time zone, plus three
//! policies:
//!
//! - **overlap** (Kubernetes CronJob's `concurrencyPolicy`): what a fire does while a
//!   run of the same schedule is still queued or running. `skip` (`Forbid`): the fire
//!   is skipped and recorded; `queue`: a run is queued behind it; `replace`
//!   (`Replace`): the running one is aborted and a new one starts. There is no
//!   `Allow`: two game days of the same experiment on the same fleet at once is a
//!   mistake, not a policy.
//! - **blackouts**: freeze windows, absolute (`{start, end}`, RFC 3339) or recurring
//!   (`{cron, duration}`, in the schedule's time zone: `{cron: "0 0 17 * * FRI",
//!   duration: 64h}` is every weekend). Half-open: `[start, end)`. A fire whose slot or
//!   start falls inside one is skipped, and the skip is recorded with the window.
//! - **missed runs** after downtime. A slot is *late* once it is more than
//!   [`LATE_AFTER`] in the past (Kubernetes' `startingDeadlineSeconds`, fixed at 60 s).
//!   When the scheduler finds the latest due slot late (the controller was down),
//!   `skip` records the missed fires and waits for the next future one; `run_once` starts one catch-up run now if at least one missed slot was
//!   outside a blackout, however many were missed. Slots older than the latest are
//!   never run one by one. A slot found on time fires normally; slots it supersedes
//!   are counted in [`Due::missed`]. Creating, changing or re-enabling a schedule
//!   never catches up on slots before the change (see `store::Schedule::anchor`).
//!
//! The decision functions are pure ([`CompiledSchedule::next_fire`],
//! [`CompiledSchedule::decide`]): they take the clock as an argument and are tested
//! with fixed clocks. [`Scheduler`] (in `runner.rs`) is the tokio task that applies
//! them to the schedules in a [`crate::store::RunStore`].

mod runner;

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Duration as ChronoDuration, FixedOffset, LocalResult, Offset, SubsecRound, TimeZone,
    Utc,
};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, JobType};
use faultline_spec::units::Duration;
use serde::{Deserialize, Serialize};

pub use runner::{
    FireAction, FireRecorded, Leadership, ScheduleFire, Scheduler, SchedulerHandle, Trigger,
    TriggerError, trigger_fn,
};

/// How long after its slot a fire still counts as on time; later, it was missed.
pub const LATE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// The most fires counted between two instants (an every-second cron over a week of
/// downtime is not walked to the end; counts saturate here).
pub const MAX_COUNTED: u32 = 10_000;

/// What a fire does while a run of the same schedule is queued or running.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Skip the fire (CronJob `Forbid`).
    #[default]
    Skip,
    /// Queue a run behind the one in flight.
    Queue,
    /// Abort the run in flight and start a new one (CronJob `Replace`).
    Replace,
}

/// What the scheduler does about slots missed while it was not running.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MissedRunPolicy {
    /// Record the missed fires; run only at the next future slot.
    #[default]
    Skip,
    /// One catch-up run now if any slot was missed, then the normal cadence.
    RunOnce,
}

macro_rules! str_enum {
    ($ty:ty, $what:literal, { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " `{}`: expected one of {}"),
                        other,
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

str_enum!(OverlapPolicy, "overlap policy", { Skip => "skip", Queue => "queue", Replace => "replace" });
str_enum!(MissedRunPolicy, "missed-run policy", { Skip => "skip", RunOnce => "run_once" });

/// A freeze window: either absolute (`start` and `end`) or recurring (`cron` and
/// `duration`, in the schedule's time zone). `reason` is shown when a fire is skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Blackout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// How long a recurring window lasts, e.g. `64h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "64h")]
    pub duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Blackout {
    /// An absolute window `[start, end)`.
    pub fn window(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Blackout {
            start: Some(start),
            end: Some(end),
            ..Blackout::default()
        }
    }
    /// A window opening at every fire of `cron` and lasting `duration`.
    pub fn recurring(cron: &str, duration: Duration) -> Self {
        Blackout {
            cron: Some(cron.to_owned()),
            duration: Some(duration),
            ..Blackout::default()
        }
    }
    pub fn with_reason(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }
}

/// When and how a schedule fires: what the API accepts and the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// 5 fields, or 6 with seconds first.
    pub cron: String,
    /// An IANA zone name (`Europe/Berlin`, `UTC`).
    #[serde(default = "utc")]
    pub time_zone: String,
    #[serde(default)]
    pub overlap: OverlapPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blackouts: Vec<Blackout>,
    #[serde(default)]
    pub missed: MissedRunPolicy,
}

fn utc() -> String {
    "UTC".to_owned()
}

impl ScheduleSpec {
    /// A UTC schedule with the default policies (overlap skip, missed skip).
    pub fn new(cron: &str) -> Self {
        ScheduleSpec {
            cron: cron.to_owned(),
            time_zone: utc(),
            overlap: OverlapPolicy::default(),
            blackouts: Vec::new(),
            missed: MissedRunPolicy::default(),
        }
    }

    /// Checks everything and prepares the evaluation.
    pub fn compile(&self) -> Result<CompiledSchedule, ScheduleError> {
        let cron = parse_cron(&self.cron).map_err(|reason| ScheduleError::Cron {
            expr: self.cron.clone(),
            reason,
        })?;
        let tz = parse_tz(&self.time_zone)?;
        let mut blackouts = Vec::with_capacity(self.blackouts.len());
        for (index, b) in self.blackouts.iter().enumerate() {
            let bad = |reason: String| ScheduleError::Blackout { index, reason };
            let kind = match (b.start, b.end, &b.cron, b.duration) {
                (Some(start), Some(end), None, None) => {
                    if end <= start {
                        return Err(bad(format!("end {end} is not after start {start}")));
                    }
                    BlackoutKind::Window { start, end }
                }
                (None, None, Some(expr), Some(duration)) => {
                    let cron = parse_cron(expr)
                        .map_err(|reason| bad(format!("invalid cron `{expr}`: {reason}")))?;
                    let duration = ChronoDuration::from_std(duration.get())
                        .ok()
                        .filter(|d| *d > ChronoDuration::zero())
                        .ok_or_else(|| bad(format!("duration {duration} must be positive")))?;
                    BlackoutKind::Recurring {
                        cron: Box::new(cron),
                        duration,
                    }
                }
                _ => {
                    return Err(bad(
                        "expected either `start` and `end` (RFC 3339) or `cron` and `duration`"
                            .to_owned(),
                    ));
                }
            };
            blackouts.push(CompiledBlackout {
                kind,
                reason: b.reason.clone(),
            });
        }
        Ok(CompiledSchedule {
            spec: self.clone(),
            cron,
            tz,
            blackouts,
        })
    }
}

fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

fn parse_tz(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression `{expr}`: {reason} (5 fields, or 6 with seconds first)")]
    Cron { expr: String, reason: String },
    #[error("unknown time zone `{0}`: expected an IANA name like `Europe/Berlin` or `UTC`")]
    TimeZone(String),
    #[error("blackout #{index}: {reason}")]
    Blackout { index: usize, reason: String },
    #[error("cron expression `{0}` never fires again")]
    NeverFires(String),
}

#[derive(Debug, Clone)]
enum BlackoutKind {
    Window {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    Recurring {
        cron: Box<Cron>,
        duration: ChronoDuration,
    },
}

#[derive(Debug, Clone)]
struct CompiledBlackout {
    kind: BlackoutKind,
    reason: Option<String>,
}

/// One occurrence of a blackout: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveBlackout {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A validated schedule, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledSchedule {
    spec: ScheduleSpec,
    cron: Cron,
    tz: Tz,
    blackouts: Vec<CompiledBlackout>,
}

/// The slot a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Due {
    /// The cron occurrence this fire stands for (the latest one due).
    pub slot: DateTime<Utc>,
    /// A catch-up run for slots missed while down (`missed: run_once`).
    pub catch_up: bool,
    /// Slots outside blackouts that were due and are not run one by one: the ones
    /// before `slot`, plus `slot` itself when it was late.
    pub missed: u32,
}

/// Why a due fire does not start a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The slot or the instant of the fire is inside a blackout.
    Blackout(ActiveBlackout),
    /// A run of this schedule is still queued or running (`overlap: skip`).
    Overlap,
    /// Every due slot was late (`missed: skip`, or all of them inside blackouts).
    Missed { missed: u32 },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Blackout(b) => {
                write!(f, "inside blackout {} .. {}", b.start, b.end)?;
                if let Some(r) = &b.reason {
                    write!(f, " ({r})")?;
                }
                Ok(())
            }
            SkipReason::Overlap => {
                f.write_str("the previous run is still queued or running (overlap: skip)")
            }
            SkipReason::Missed { missed } => write!(
                f,
                "{missed} fire(s) missed while the scheduler was down (missed: skip)"
            ),
        }
    }
}

/// What the scheduler should do about a schedule now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due; the next slot is `until` (`None`: the cron never fires again).
    Wait { until: Option<DateTime<Utc>> },
    /// Start a run.
    Fire(Due),
    /// Queue a run behind the one in flight (`overlap: queue`).
    Queue(Due),
    /// Abort the run in flight and start a new one (`overlap: replace`).
    Replace(Due),
    /// Do not run; record why. The slot counts as handled.
    Skip { due: Due, reason: SkipReason },
}

impl CompiledSchedule {
    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `after`.
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_occurrence(&self.cron, self.tz, after)
    }

    /// The latest slot at or before `at`.
    pub fn previous_fire(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        previous_occurrence(&self.cron, self.tz, at)
    }

    /// Slots in `(after, until]`, at most [`MAX_COUNTED`], oldest first.
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_fire(cursor)?;
            (next <= until).then(|| {
                cursor = next;
                next
            })
        })
        .take(MAX_COUNTED as usize)
    }

    /// The blackout occurrence containing `at`, if any.
    pub fn blackout_at(&self, at: DateTime<Utc>) -> Option<ActiveBlackout> {
        self.blackouts.iter().find_map(|b| {
            let (start, end) = match &b.kind {
                BlackoutKind::Window { start, end } => (*start, *end),
                BlackoutKind::Recurring { cron, duration } => {
                    // The occurrence opening the window must lie in (at - duration, at].
                    let open = next_occurrence(cron, self.tz, at - *duration)?;
                    (open, open + *duration)
                }
            };
            (start <= at && at < end).then(|| ActiveBlackout {
                start,
                end,
                reason: b.reason.clone(),
            })
        })
    }

    /// What to do at `now`.
    ///
    /// `anchor` is the last slot already handled (fired or skipped), or, for a
    /// schedule that never fired, when it was created or last changed: slots at or
    /// before it are never due. `running`: a run of this schedule is queued or running.
    pub fn decide(&self, now: DateTime<Utc>, anchor: DateTime<Utc>, running: bool) -> Decision {
        let latest = match self.previous_fire(now) {
            Some(latest) if latest > anchor => latest,
            _ => {
                return Decision::Wait {
                    until: self.next_fire(anchor.max(now)),
                };
            }
        };
        let outside = |t: &DateTime<Utc>| self.blackout_at(*t).is_none();
        let earlier = self
            .fires_between(anchor, latest - ChronoDuration::seconds(1))
            .filter(outside)
            .count() as u32;
        let late = now - latest > late_after();
        if !late {
            let due = Due {
                slot: latest,
                catch_up: false,
                missed: earlier,
            };
            if let Some(b) = self.blackout_at(latest).or_else(|| self.blackout_at(now)) {
                return Decision::Skip {
                    due,
                    reason: SkipReason::Blackout(b),
                };
            }
            return overlap(self.spec.overlap, due, running);
        }
        let missed = earlier + u32::from(outside(&latest));
        let due = Due {
            slot: latest,
            catch_up: true,
            missed,
        };
        if missed == 0 || self.spec.missed == MissedRunPolicy::Skip {
            return Decision::Skip {
                due: Due {
                    catch_up: false,
                    ..due
                },
                reason: SkipReason::Missed { missed },
            };
        }
        if let Some(b) = self.blackout_at(now) {
            return Decision::Skip {
                due,
                reason: SkipReason::Blackout(b),
            };
        }
        overlap(self.spec.overlap, due, running)
    }
}

fn late_after() -> ChronoDuration {
    ChronoDuration::seconds(LATE_AFTER.as_secs() as i64)
}

fn overlap(policy: OverlapPolicy, due: Due, running: bool) -> Decision {
    if !running {
        return Decision::Fire(due);
    }
    match policy {
        OverlapPolicy::Skip => Decision::Skip {
            due,
            reason: SkipReason::Overlap,
        },
        OverlapPolicy::Queue => Decision::Queue(due),
        OverlapPolicy::Replace => Decision::Replace(due),
    }
}

/// Searches are done at one fixed UTC offset at a time: croner searches in naive
/// local time, which, in a named zone, skips the second pass of a DST fall-back hour.
/// When the answer lies past an offset change, the search restarts at the change with
/// the new offset. Interval jobs (`*/30 * * * *`) fire in both passes of a repeated
/// hour; fixed-time jobs (`0 30 2 * * *`) fire once, in the first, and a fixed time
/// that a spring-forward gap skips fires when the gap ends (as cron does).
const MAX_TRANSITIONS: usize = 64;

fn offset_at(tz: Tz, t: DateTime<Utc>) -> FixedOffset {
    tz.offset_from_utc_datetime(&t.naive_utc()).fix()
}

/// The first instant in `(lo, hi]` whose offset is `hi`'s (one change in between).
fn boundary(tz: Tz, mut lo: DateTime<Utc>, mut hi: DateTime<Utc>) -> DateTime<Utc> {
    let target = offset_at(tz, hi);
    while hi - lo > ChronoDuration::seconds(1) {
        let mid = (lo + (hi - lo) / 2).trunc_subsecs(0);
        if offset_at(tz, mid) == target {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// `u` is the later instant of a local time a fall-back repeats.
fn second_pass(tz: Tz, u: DateTime<Utc>) -> bool {
    let local = u.with_timezone(&tz).naive_local();
    tz.from_local_datetime(&local)
        .earliest()
        .is_some_and(|first| first.with_timezone(&Utc) != u)
}

/// A fixed-time fire whose local time a spring-forward gap skipped, next to the
/// transition `tr`.
fn skipped_by_gap(tz: Tz, m: &DateTime<FixedOffset>, u: DateTime<Utc>, tr: DateTime<Utc>) -> bool {
    tz.from_local_datetime(&m.naive_local()) == LocalResult::None
        && (u - tr).abs() <= ChronoDuration::hours(3)
}

/// The first occurrence of `cron` in `tz` strictly after `after`.
fn next_occurrence(cron: &Cron, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let fixed = cron.determine_job_type() == JobType::FixedTime;
    // Fires are whole seconds: "after 10:00:00.5" is "after 10:00:00".
    let mut cur = after.trunc_subsecs(0);
    for _ in 0..MAX_TRANSITIONS {
        let first = cur + ChronoDuration::seconds(1);
        let o = offset_at(tz, first);
        let m = cron
            .find_next_occurrence(&cur.with_timezone(&o), false)
            .ok()?;
        let u = m.with_timezone(&Utc);
        if offset_at(tz, u) == o {
            if fixed && second_pass(tz, u) {
                cur = u;
                continue;
            }
            return Some(u);
        }
        let tr = boundary(tz, first, u);
        if fixed && skipped_by_gap(tz, &m, u, tr) && tr > after {
            return Some(tr);
        }
        cur = tr - ChronoDuration::seconds(1);
    }
    None
}

/// The last occurrence of `cron` in `tz` at or before `at`.
fn previous_occurrence(cron: &Cron, tz: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let fixed = cron.determine_job_type() == JobType::FixedTime;
    // Exclusive upper bound.
    let mut cur = at.trunc_subsecs(0) + ChronoDuration::seconds(1);
    for _ in 0..MAX_TRANSITIONS {
        let last = cur - ChronoDuration::seconds(1);
        let o = offset_at(tz, last);
        let m = cron
            .find_previous_occurrence(&cur.with_timezone(&o), false)
            .ok()?;
        let u = m.with_timezone(&Utc);
        if offset_at(tz, u) == o {
            if fixed && second_pass(tz, u) {
                cur = u;
                continue;
            }
            return Some(u);
        }
        // The offset became `o` at `tr`, after `u`.
        let tr = boundary(tz, u, last);
        if fixed && skipped_by_gap(tz, &m, u, tr) && tr <= at {
            return Some(tr);
        }
        cur = tr;
    }
    None
}

/// [`CompiledSchedule::next_fire`] as a function.
pub fn next_fire(schedule: &CompiledSchedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule.next_fire(after)
}

/// [`CompiledSchedule::decide`] as a function.
pub fn decide(
    schedule: &CompiledSchedule,
    now: DateTime<Utc>,
    anchor: DateTime<Utc>,
    running: bool,
) -> Decision {
    schedule.decide(now, anchor, running)
}

#[cfg(test)]
mod tests;
