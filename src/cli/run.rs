//! `faultline run FILE [--inventory F] [--journal F] [--junit F] [--report DIR] [--seed N]`
//!
//! Progress goes to stderr (a live line on a terminal, one line per event
//! otherwise), results to stdout; the exit code is the run's status (DESIGN.md).

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use faultline_controller::connect::{ConnectError, Connector};
use faultline_controller::engine::{self, Abort, Agents, RunOptions};
use faultline_controller::journal::{Event, Journal, Phase, RunStatus};
use faultline_spec::{Experiment, Inventory, LOCAL_AGENT};
use tokio::sync::mpsc;

use super::guardian::Guardian;
use super::{Output, exit};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Agents and their labels (YAML); without it only `agents: [local]` resolves.
    #[arg(long, value_name = "F")]
    inventory: Option<PathBuf>,
    #[command(flatten)]
    out: OutputArgs,
    /// Seed for `count(n)` and `percent(p)` selection; the same seed picks the
    /// same agents. Random when not given (the journal records it).
    #[arg(long)]
    seed: Option<u64>,
    /// Submit the run to a controller instead (`POST /v1/runs`), print the
    /// selection it makes from its live registry, follow its events, and exit
    /// with the run's exit code.
    #[command(flatten)]
    remote: super::agents::ControllerOpts,
}

/// Where a run's results go; shared by `run` and `demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Write the run journal (JSON: phases, verdicts, faults, probe timelines).
    #[arg(long, value_name = "F")]
    pub journal: Option<PathBuf>,
    /// Write a JUnit XML report: one test case per hypothesis per phase.
    #[arg(long, value_name = "F")]
    pub junit: Option<PathBuf>,
    /// Write a self-contained HTML report with the latency and availability
    /// timeline into this directory.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// State directory of the in-process agent (`agents: [local]`): its journal
    /// lets the next run revert what a killed one left.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// No live progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let seed = args.seed.unwrap_or_else(rand::random);
    if let Some(client) = args.remote.client()? {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return runtime.block_on(remote::run(&client, &args.file, seed, &args.out));
    }
    let (exp, (inventory, _plan)) =
        match super::plan::load_and_plan(&args.file, args.inventory.as_deref(), seed) {
            Ok(loaded) => loaded,
            Err(code) => return Ok(code),
        };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(execute(&exp, inventory, seed, &args.out))
}

/// Connects the agents, runs the experiment with signal handling and progress,
/// writes every requested output and returns the exit code. When the plan uses
/// the in-process agent, a guardian process watches this one from before the
/// first inject until the clean end, so a run killed mid-fault leaves nothing.
pub async fn execute(
    exp: &Experiment,
    inventory: Inventory,
    seed: u64,
    out: &OutputArgs,
) -> anyhow::Result<u8> {
    let dir = out
        .state_dir
        .clone()
        .unwrap_or_else(|| super::default_state_dir().join("local-agent"));
    let connector = Connector::new(inventory.clone(), dir.clone());
    let guardian = if uses_local(&connector, exp, seed) {
        match Guardian::start(&dir).await {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("error: nothing injected: {e:#}");
                return Ok(exit::ABORTED);
            }
        }
    } else {
        None
    };
    let agents = match connect(&connector, exp, seed).await {
        Ok(a) => a,
        Err((code, e)) => {
            eprintln!("error: {e:#}");
            if let Some(g) = guardian {
                g.release().await;
            }
            return Ok(code);
        }
    };
    let mut opts = RunOptions::new(engine::new_run_id(), seed);
    opts.inventory = inventory;
    let abort = opts.abort.clone();
    let signals = tokio::spawn(on_signal(abort));
    let (tx, rx) = mpsc::unbounded_channel();
    opts.events = Some(tx);
    let live = std::io::stderr().is_terminal() && !out.quiet;
    let progress = tokio::spawn(show_progress(rx, exp.name.clone(), live, out.quiet));
    let journal = engine::run(exp, &agents, opts).await;
    signals.abort();
    let _ = progress.await;
    halt_local(&connector).await;
    if let Some(g) = guardian {
        g.release().await;
    }
    write_outputs(&journal, out)
}

/// Whether the experiment's targets resolve to the in-process agent.
fn uses_local(connector: &Connector, exp: &Experiment, seed: u64) -> bool {
    connector.resolve(exp, seed).is_ok_and(|selections| {
        selections
            .values()
            .any(|s| s.agents.iter().any(|a| a == LOCAL_AGENT))
    })
}

/// One client per agent the plan uses; the in-process agent when `local` is.
async fn connect(
    connector: &Connector,
    exp: &Experiment,
    seed: u64,
) -> Result<Agents, (u8, anyhow::Error)> {
    let agents = connector.agents(exp, seed).await.map_err(|e| {
        let code = match e {
            ConnectError::Local(_) => exit::ABORTED,
            ConnectError::Unresolved(_) | ConnectError::BadAgent { .. } => exit::INVALID,
        };
        (code, anyhow::Error::from(e))
    })?;
    if let Some(recovered) = connector.local_recovered() {
        for id in &recovered.reverted {
            eprintln!("faultline: reverted {id}, left by a previous run");
        }
    }
    Ok(agents)
}

/// The engine reverted everything it injected; halting the in-process agent
/// also clears anything a previous, killed run left that its lease still holds.
async fn halt_local(connector: &Connector) {
    if let Some(report) = connector.halt_local().await {
        for f in &report.failed {
            eprintln!("faultline: could NOT revert {}: {}", f.id, f.reason);
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM: revert everything and exit 3.
async fn on_signal(abort: Abort) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return;
    };
    let which = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    abort.trigger(format!("interrupted by {which}"));
}

async fn show_progress(
    mut rx: mpsc::UnboundedReceiver<Event>,
    name: String,
    live: bool,
    quiet: bool,
) {
    let bar = if live {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(name);
        bar.enable_steady_tick(Duration::from_millis(200));
        Some(bar)
    } else {
        None
    };
    let mut phase = Phase::Preflight;
    let mut active = 0usize;
    let mut figures: BTreeMap<String, String> = BTreeMap::new();
    let line = |msg: String| {
        if quiet {
            return;
        }
        match &bar {
            Some(b) => b.println(msg),
            None => eprintln!("{msg}"),
        }
    };
    while let Some(e) = rx.recv().await {
        match &e {
            Event::Phase { phase: p, at_s } => {
                phase = *p;
                line(format!("[{at_s:7.1}s] phase {}", p.as_str()));
            }
            Event::Window { probe, point } => {
                let avail = point
                    .availability
                    .map(|a| format!("{a:.1}%"))
                    .unwrap_or_else(|| "-".into());
                let p99 = point
                    .p99_ms
                    .map(|p| format!("{p:.0}ms"))
                    .unwrap_or_else(|| "-".into());
                figures.insert(probe.clone(), format!("{probe} {avail} p99 {p99}"));
            }
            Event::Injected {
                step, agent, at_s, ..
            } => {
                active += 1;
                line(format!("[{at_s:7.1}s] injected {step} on {agent}"));
            }
            Event::InjectFailed {
                fault,
                reason,
                at_s,
                ..
            } => line(format!("[{at_s:7.1}s] could not inject {fault}: {reason}")),
            Event::Reverted {
                fault,
                at_s,
                confirmed,
                error,
                ..
            } => {
                active = active.saturating_sub(1);
                match error {
                    None if *confirmed => line(format!("[{at_s:7.1}s] reverted {fault}")),
                    _ => line(format!(
                        "[{at_s:7.1}s] revert of {fault} NOT confirmed: {}",
                        error.as_deref().unwrap_or("unknown")
                    )),
                }
            }
            Event::Verdict(v) if !v.holds => line(format!(
                "[{:7.1}s] FAILED {}",
                v.at_s,
                faultline_controller::report::failure_line(v)
            )),
            Event::Aborting { reason, at_s } => {
                line(format!("[{at_s:7.1}s] aborting: {reason}"));
            }
            _ => {}
        }
        if let Some(b) = &bar {
            let now: Vec<&str> = figures.values().map(String::as_str).collect();
            b.set_message(format!(
                "{} | {} | faults active: {active}",
                phase.as_str(),
                now.join(" | ")
            ));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

fn write_outputs(journal: &Journal, out: &OutputArgs) -> anyhow::Result<u8> {
    if let Some(path) = &out.journal {
        let text = serde_json::to_string_pretty(journal)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the journal to {}", path.display()))?;
    }
    if let Some(path) = &out.junit {
        let xml = faultline_controller::report::junit(journal)?;
        std::fs::write(path, xml)
            .with_context(|| format!("writing JUnit XML to {}", path.display()))?;
    }
    let report = match &out.report {
        Some(dir) => Some(faultline_controller::report::html(journal, dir)?),
        None => None,
    };
    match out.output {
        Output::Json => {
            super::print_json(journal)?;
        }
        Output::Text => {
            let mut stdout = std::io::stdout().lock();
            write!(stdout, "{}", faultline_controller::report::table(journal))?;
            if let Some(index) = &report {
                writeln!(stdout, "report: {}", index.display())?;
            }
        }
    }
    if journal.status == RunStatus::RevertUnconfirmed {
        eprintln!(
            "error: {}",
            journal.reason.as_deref().unwrap_or("revert unconfirmed")
        );
    }
    Ok(exit_code(journal.status))
}

/// `run --controller`: the run happens on the controller; this process shows it.
mod remote {
    use std::path::Path;

    use anyhow::Context as _;
    use faultline_controller::client::ControllerClient;
    use faultline_controller::client::controller::Method;
    use faultline_controller::journal::{Event, Journal};
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    use super::{OutputArgs, exit};

    pub async fn run(
        c: &ControllerClient,
        file: &Path,
        seed: u64,
        out: &OutputArgs,
    ) -> anyhow::Result<u8> {
        // Validate here first: invalid input exits 2 with located diagnostics,
        // and nothing is sent.
        let yaml =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let (inventory, lost) = super::super::agents::snapshot_inventory(c).await?;
        let (_exp, plan) = match super::super::plan::plan_over(file, inventory, seed) {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        for sel in &plan.targets {
            eprintln!(
                "faultline: target {} ({}, {} matched): {}",
                sel.target,
                sel.mode,
                sel.matched,
                sel.agents.join(", ")
            );
        }
        if !lost.is_empty() {
            eprintln!("faultline: lost, never selected: {}", lost.join(", "));
        }
        let (status, run) = c
            .call(
                Method::POST,
                "/v1/runs",
                Some(&json!({ "yaml": yaml, "seed": seed })),
            )
            .await
            .context("submitting the run")?;
        match status {
            200 | 202 => {}
            422 => {
                for d in run["diagnostics"].as_array().into_iter().flatten() {
                    eprintln!(
                        "{}:{}:{}: error: {}",
                        file.display(),
                        d["line"],
                        d["column"],
                        d["message"].as_str().unwrap_or("")
                    );
                }
                eprintln!("error: {}", run["reason"].as_str().unwrap_or("refused"));
                return Ok(exit::INVALID);
            }
            _ => {
                eprintln!(
                    "error: the controller refused the run ({status} {}): {}",
                    run["error"].as_str().unwrap_or(""),
                    run["reason"].as_str().unwrap_or("")
                );
                // Nothing was injected.
                return Ok(if status == 400 || status == 403 || status == 401 {
                    exit::INVALID
                } else {
                    exit::ABORTED
                });
            }
        }
        let id = run["id"]
            .as_str()
            .context("the controller's answer has no run id")?
            .to_owned();
        eprintln!("faultline: run {id} on the controller (seed {seed})");
        // Ctrl-C / SIGTERM abort the run there; the stream then shows the revert.
        let abort = {
            let c = c.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                eprintln!("faultline: aborting run {id}");
                if let Err(e) = c
                    .call(Method::POST, &format!("/v1/runs/{id}/abort"), None)
                    .await
                {
                    eprintln!("faultline: could not abort {id}: {e}");
                }
            })
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let live = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !out.quiet;
        let name = plan.experiment.clone();
        let progress = tokio::spawn(super::show_progress(rx, name, live, out.quiet));
        let followed = c
            .follow_events(&id, 0, |ev| {
                if let Ok(e) = serde_json::from_value::<Event>(ev.data.clone()) {
                    let _ = tx.send(e);
                }
                true
            })
            .await;
        drop(tx);
        let _ = progress.await;
        abort.abort();
        followed.with_context(|| format!("following run {id}"))?;
        let run = c
            .get(&format!("/v1/runs/{id}"))
            .await
            .with_context(|| format!("reading run {id}"))?;
        finish(&run, out)
    }

    fn finish(run: &Value, out: &OutputArgs) -> anyhow::Result<u8> {
        if let Some(journal) = run.get("journal").filter(|j| !j.is_null()) {
            let journal: Journal = serde_json::from_value(journal.clone())
                .context("the run's journal is not one this faultline reads")?;
            return super::write_outputs(&journal, out);
        }
        // No journal: it never ran (invalid, or the controller failed).
        eprintln!(
            "error: run {} ended {}: {}",
            run["id"].as_str().unwrap_or("?"),
            run["status"].as_str().unwrap_or("?"),
            run["reason"].as_str().unwrap_or("")
        );
        Ok(run["exit_code"]
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(exit::ABORTED))
    }
}

/// The exit code of a run's status: the constants CI gates rely on.
fn exit_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Passed => exit::OK,
        RunStatus::Failed => exit::FAILED,
        RunStatus::Invalid => exit::INVALID,
        RunStatus::Aborted => exit::ABORTED,
        RunStatus::RevertUnconfirmed => exit::REVERT_UNCONFIRMED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_match_the_journal() {
        for s in [
            RunStatus::Passed,
            RunStatus::Failed,
            RunStatus::Invalid,
            RunStatus::Aborted,
            RunStatus::RevertUnconfirmed,
        ] {
            assert_eq!(i32::from(exit_code(s)), s.exit_code(), "{s:?}");
        }
    }
}
