//! Command-line front end: argument parsing, output formats and exit codes. The
//! only module allowed to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod agents;
mod demo;
mod guardian;
mod host;
mod plan;
mod proxy;
mod run;
mod serve;
mod validate;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

/// Exit codes, stable for CI gates (DESIGN.md); `run` and `demo` use them all.
pub mod exit {
    /// Every hypothesis held / the input is valid.
    pub const OK: u8 = 0;
    /// A hypothesis failed: the gate fails. Every fault was reverted.
    pub const FAILED: u8 = 1;
    /// Invalid input; nothing was injected.
    pub const INVALID: u8 = 2;
    /// Aborted (safety stop, signal, agent lost) with every fault reverted.
    pub const ABORTED: u8 = 3;
    /// A revert could not be confirmed; what may be left is named on stderr.
    pub const REVERT_UNCONFIRMED: u8 = 4;
}

/// Chaos engineering for services that sell an SLA: run YAML experiments through
/// per-host agents, check availability and tail latency before, during and after
/// the faults, and revert every fault, always.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: diagnostics with source snippets, tables.
    Text,
    /// For machines: one JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse and check experiments; nothing runs. Exit 0 valid, 2 invalid.
    Validate {
        /// Experiment files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show resolved targets, the timeline of fault windows and the blast radius;
    /// nothing runs. Exit 0, or 2 on invalid input.
    Plan {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Agents and their labels (YAML); without it only `agents: [local]` resolves.
        #[arg(long, value_name = "F")]
        inventory: Option<PathBuf>,
        /// Seed for `count(n)` and `percent(p)` selection; the same seed picks the
        /// same agents.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        // === fleet (registry) ===
        #[command(flatten)]
        remote: agents::ControllerOpts,
    },
    /// Run an experiment: baseline, faults through the agents, recovery, verify.
    /// Exit 0 every hypothesis held, 1 one failed, 2 invalid input, 3 aborted with
    /// every fault reverted, 4 a revert could not be confirmed.
    Run(run::RunArgs),
    /// The quickstart game day against an embedded completion API, with an
    /// in-process agent: nothing else needs to run. `--break` shows a failing gate.
    Demo(demo::DemoArgs),
    /// Run the per-host agent: faults injected under leases, journaled before
    /// injecting, reverted when a lease lapses and at start.
    Agent(agent::AgentArgs),
    /// The fleet a controller knows: registered agents with their state (alive,
    /// lost) and last heartbeat, the inventory's, and the faults each holds now.
    Agents(agents::AgentsArgs),
    /// Run the controller service: HTTP API, run manager and game-day scheduler,
    /// until Ctrl-C or SIGTERM (which abort and revert every run in flight).
    Serve(serve::ServeArgs),
    /// Run the standalone fault proxy with its Toxiproxy-compatible API, until
    /// Ctrl-C or SIGTERM.
    Proxy(proxy::ProxyArgs),
    /// What faults are active or left on this host (a state directory's journal
    /// and what is seen: nftables tables, stopped processes, lock sessions, GPU
    /// state files) or on an agent, with their run, step and lease expiry.
    Status(host::StatusArgs),
    /// Revert everything found on this host, an agent or a controller's agents,
    /// then confirm from outside. Exit 0 when nothing is left, 4 when something
    /// could not be confirmed (named on stderr).
    Halt(host::HaltArgs),
    /// Print the JSON Schema (draft 2020-12) of the experiment format.
    Schema,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout.
    #[command(hide = true)]
    Manpage,
    /// The guardian of a run's in-process agent (started by `run` and `demo`).
    #[command(hide = true)]
    Guardian(guardian::GuardianArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let code = match cli.command {
        Command::Validate { files, output } => validate::run(&files, output),
        Command::Plan {
            file,
            inventory,
            seed,
            output,
            remote,
        } => plan::run(&file, inventory.as_deref(), seed, output, &remote),
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Agents(args) => agents::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Proxy(args) => proxy::run(args),
        Command::Status(args) => host::status(args),
        Command::Halt(args) => host::halt(args),
        Command::Guardian(args) => guardian::run(args),
        Command::Schema => print_json(&faultline_spec::schema::experiment_schema()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "faultline",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
        Command::Manpage => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map(|()| exit::OK)
            .map_err(anyhow::Error::from),
    };
    match code {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::INVALID)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FAULTLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<u8> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(exit::OK)
}

/// Where faultline keeps its state when `--state-dir` is not given: the run
/// store of `serve`, and under `local-agent/` the in-process agent's journal
/// (shared by `run`, `demo` and `serve`, so whichever starts next reverts what a
/// killed one left).
fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("faultline");
    }
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/var/lib/faultline");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/faultline"),
        None => std::env::temp_dir().join("faultline"),
    }
}
