//! `faultline status` and `faultline halt`: what faults are active or left, on
//! this host (a state directory's journal and what is seen from outside), on an
//! agent, or on every agent of a controller; and reverting all of it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use faultline_agent::host::{self, Leftover, Source, Survey};
use faultline_controller::client::{AgentClient as _, FaultView, HttpClient};
use faultline_controller::engine::parse_fault_id;
use serde::Serialize;

use super::{Output, exit};

/// How long one control call to an agent or a controller may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// Bearer token for `--agent` or `--controller` (a file holding it).
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
    /// The CA that signed the agent's or controller's certificate (HTTPS).
    #[arg(long, value_name = "F")]
    ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The state directory of an agent or of `run`'s in-process agent (the
    /// default: the one `run` and `demo` use).
    #[arg(long, value_name = "DIR", conflicts_with = "agent")]
    state_dir: Option<PathBuf>,
    /// Ask a running agent instead (`http://host:7600`).
    #[arg(long, value_name = "URL")]
    agent: Option<String>,
    #[command(flatten)]
    remote: Remote,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, clap::Args)]
pub struct HaltArgs {
    /// The state directory of an agent or of `run`'s in-process agent (the
    /// default: the one `run` and `demo` use). Also deletes nftables tables
    /// `faultline_*` that no journal entry accounts for.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["agent", "controller"])]
    state_dir: Option<PathBuf>,
    /// Halt a running agent (`POST /v1/halt`), then confirm it holds nothing.
    #[arg(long, value_name = "URL", conflicts_with = "controller")]
    agent: Option<String>,
    /// Halt a controller: every run aborted, every agent it knows halted.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    #[command(flatten)]
    remote: Remote,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

fn state_dir(given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| super::default_state_dir().join("local-agent"))
}

fn client(name: &str, url: &str, remote: &Remote) -> anyhow::Result<HttpClient> {
    let token = match &remote.token_file {
        Some(f) => Some(faultline_agent::auth::read_token_file(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    HttpClient::new(name, url, token, remote.ca.as_deref(), CALL_TIMEOUT)
        .with_context(|| format!("{name} at {url}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

// === status ===

/// One fault as `status` shows it: a leftover with the run and step its id names.
#[derive(Debug, Serialize)]
struct FaultLine {
    #[serde(flatten)]
    fault: Leftover,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

impl From<Leftover> for FaultLine {
    fn from(fault: Leftover) -> Self {
        let (run, step) = match parse_fault_id(&fault.id) {
            Some((r, s, _)) => (Some(r.to_owned()), Some(s.to_owned())),
            None => (None, None),
        };
        Self { fault, run, step }
    }
}

#[derive(Debug, Serialize)]
struct StatusView {
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
    /// The live process that owns the journal and guards its faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<u32>,
    faults: Vec<FaultLine>,
    problems: Vec<String>,
}

pub fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let view = match &args.agent {
        Some(url) => {
            let client = client("agent", url, &args.remote)?;
            let faults = runtime()?
                .block_on(client.list())
                .with_context(|| format!("listing the faults of the agent at {url}"))?;
            StatusView {
                state_dir: None,
                agent: Some(url.clone()),
                owner: None,
                faults: faults.into_iter().map(active_on_agent).collect(),
                problems: Vec::new(),
            }
        }
        None => {
            let dir = state_dir(args.state_dir);
            let Survey {
                state_dir,
                owner,
                faults,
                problems,
            } = runtime()?.block_on(host::survey(&dir));
            StatusView {
                state_dir: Some(state_dir),
                agent: None,
                owner,
                faults: faults.into_iter().map(FaultLine::from).collect(),
                problems,
            }
        }
    };
    match args.output {
        Output::Json => {
            super::print_json(&view)?;
        }
        Output::Text => print_status(&view)?,
    }
    Ok(exit::OK)
}

/// A live agent's fault: active and guarded by its lease.
fn active_on_agent(f: FaultView) -> FaultLine {
    Leftover {
        detail: format!("active, lease renewed or lapsing in {} ms", f.expires_in_ms),
        id: f.id,
        kind: f.kind,
        source: Source::Agent,
        state: Some(faultline_agent::journal::EntryState::Active),
        lease: Some(f.lease),
        expires_at: Some(f.expires_at),
        present: true,
    }
    .into()
}

fn print_status(view: &StatusView) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match (&view.state_dir, &view.agent) {
        (Some(d), _) => writeln!(out, "state directory {}", d.display())?,
        (_, Some(a)) => writeln!(out, "agent {a}")?,
        _ => {}
    }
    if let Some(pid) = view.owner {
        writeln!(
            out,
            "journal owned by live pid {pid}: its faults are guarded by it"
        )?;
    }
    for f in &view.faults {
        let l = &f.fault;
        // A live owner guards its faults; with none, what is in place is left.
        let what = match (l.source, l.present) {
            (Source::Host, _) => "SEEN",
            (Source::Agent, _) => "ACTIVE",
            (Source::Journal, true) if view.owner.is_some() => "ACTIVE",
            (Source::Journal, true) => "LEFT",
            (Source::Journal, false) => "JOURNALED",
        };
        writeln!(out, "{what:<9} {} {}", l.kind, l.id)?;
        let mut facts = Vec::new();
        if let Some(r) = &f.run {
            facts.push(format!("run {r}"));
        }
        if let Some(s) = &f.step {
            facts.push(format!("step {s}"));
        }
        if let Some(s) = l.state {
            facts.push(format!(
                "state {}",
                serde_json::to_value(s)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?")
            ));
        }
        if let Some(lease) = l.lease {
            facts.push(format!("lease {lease}"));
        }
        if let Some(e) = &l.expires_at {
            facts.push(format!("expires {e}"));
        }
        if !facts.is_empty() {
            writeln!(out, "          {}", facts.join(", "))?;
        }
        writeln!(out, "          {}", l.detail)?;
    }
    for p in &view.problems {
        writeln!(out, "could not check: {p}")?;
    }
    let left = view.faults.iter().filter(|f| f.fault.present).count();
    if view.faults.is_empty() && view.problems.is_empty() {
        writeln!(out, "nothing active or left")?;
    } else {
        writeln!(
            out,
            "{} fault(s) found, {left} still in place",
            view.faults.len()
        )?;
    }
    Ok(())
}

// === halt ===

#[derive(Debug, Default, Serialize)]
struct HaltView {
    reverted: Vec<String>,
    /// What could not be reverted or confirmed, each with why.
    left: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<serde_json::Value>,
}

pub fn halt(args: HaltArgs) -> anyhow::Result<u8> {
    let rt = runtime()?;
    let view = if let Some(url) = &args.controller {
        rt.block_on(halt_controller(url, &args.remote))?
    } else if let Some(url) = &args.agent {
        rt.block_on(halt_agent(url, &args.remote))?
    } else {
        let dir = state_dir(args.state_dir);
        rt.block_on(halt_host(&dir))?
    };
    let code = if view.left.is_empty() {
        exit::OK
    } else {
        exit::REVERT_UNCONFIRMED
    };
    match args.output {
        Output::Json => {
            super::print_json(&view)?;
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            for r in &view.reverted {
                writeln!(out, "reverted {r}")?;
            }
            if view.left.is_empty() {
                writeln!(out, "nothing is left")?;
            }
        }
    }
    for l in &view.left {
        eprintln!("error: NOT confirmed reverted: {l}");
    }
    Ok(code)
}

async fn halt_host(dir: &Path) -> anyhow::Result<HaltView> {
    let h = host::halt(dir, true).await?;
    let mut left: Vec<String> = h
        .failed
        .iter()
        .map(|f| format!("{}: {}", f.id, f.reason))
        .collect();
    for f in &h.left.faults {
        if !h.failed.iter().any(|x| x.id == f.id) {
            left.push(format!("{} {}: {}", f.kind, f.id, f.detail));
        }
    }
    left.extend(
        h.left
            .problems
            .iter()
            .map(|p| format!("could not check: {p}")),
    );
    Ok(HaltView {
        reverted: h.reverted,
        left,
        detail: None,
    })
}

async fn halt_agent(url: &str, remote: &Remote) -> anyhow::Result<HaltView> {
    let client = client("agent", url, remote)?;
    let report = client
        .halt()
        .await
        .with_context(|| format!("halting the agent at {url}"))?;
    let mut left: Vec<String> = report
        .failed
        .iter()
        .map(|f| format!("{}: {}", f.id, f.reason))
        .collect();
    // Confirmed from outside the halt's own answer: the agent holds nothing now.
    let still = client
        .list()
        .await
        .with_context(|| format!("listing the faults of the agent at {url} after the halt"))?;
    for f in still {
        if !report.failed.iter().any(|x| x.id == f.id) {
            left.push(format!("{} {}: still active on the agent", f.kind, f.id));
        }
    }
    Ok(HaltView {
        reverted: report.reverted,
        left,
        detail: None,
    })
}

async fn halt_controller(url: &str, remote: &Remote) -> anyhow::Result<HaltView> {
    let client = client("controller", url, remote)?;
    let answer = client
        .post("/v1/halt")
        .await
        .with_context(|| format!("halting the controller at {url}"))?;
    let mut view = HaltView::default();
    for run in answer["aborted"].as_array().into_iter().flatten() {
        if let Some(r) = run.as_str() {
            view.reverted.push(format!("run {r} aborted"));
        }
    }
    for a in answer["agents"].as_array().into_iter().flatten() {
        let agent = a["agent"].as_str().unwrap_or("?");
        if let Some(e) = a["error"].as_str() {
            view.left
                .push(format!("agent {agent} could not be halted: {e}"));
        }
        for id in a["report"]["reverted"].as_array().into_iter().flatten() {
            view.reverted
                .push(format!("{} on {agent}", id.as_str().unwrap_or("?")));
        }
        for f in a["report"]["failed"].as_array().into_iter().flatten() {
            view.left.push(format!(
                "{} on {agent}: {}",
                f["id"].as_str().unwrap_or("?"),
                f["reason"].as_str().unwrap_or("?")
            ));
        }
    }
    view.detail = Some(answer);
    Ok(view)
}
