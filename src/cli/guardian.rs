//! The guardian of a run's in-process agent: `faultline run` and `faultline demo`
//! carry the agent inside their own process, so when they die without a clean end
//! (kill -9, the OOM killer, a CI timeout) nothing would revert what that agent
//! injected. Before the first inject the run starts this small process (the same
//! binary, `faultline guardian`, spawned and exec'd, never a fork of the threaded
//! runner) in a process group and session of its own, so a signal to the run's
//! group does not reach it. It watches the run through a pidfd; when the run dies
//! without having said `done` on the guardian's stdin, it takes the journal (the
//! kernel released the run's lock with the run), reverts and verifies everything
//! in it, records what it did in `<state-dir>/guardian.log`, and exits.
//!
//! It holds nothing of its own but `<state-dir>/guardian.lock`: two guardians on
//! one state directory are refused, as two agents are.

use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use super::exit;

/// The line a guardian prints once it guards, and the one a run sends at a clean end.
const READY: &str = "ready";
const DONE: &str = "done";
/// How long a run waits for its guardian to say it guards.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a dead run's journal lock may take to be released (a child that
/// inherited it, a slow exit).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct GuardianArgs {
    /// The in-process agent's state directory (its journal).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// The pid of the run to watch: the guardian's own parent.
    #[arg(long, value_name = "PID")]
    watch: i32,
}

// === the run's side ===

/// A started guardian: tell it the run ended cleanly with [`Guardian::release`].
#[derive(Debug)]
pub struct Guardian {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl Guardian {
    /// Starts the guardian of `state_dir` and returns once it guards this process.
    pub async fn start(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
        let exe = std::env::current_exe().context("finding the faultline binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("guardian")
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--watch")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            // Its own group: Ctrl-C or a CI runner's signal to the run's group
            // must not take the guardian with the run.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .context("starting the guardian process")?;
        let stdout = child.stdout.take().context("the guardian's stdout")?;
        let mut line = String::new();
        let read =
            tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line)).await;
        match read {
            Ok(Ok(_)) if line.trim() == READY => Ok(Self {
                stdin: child.stdin.take(),
                child,
            }),
            Ok(Ok(_)) => {
                let _ = child.wait().await;
                let said = line.trim();
                anyhow::bail!(
                    "the guardian did not start: {}",
                    if said.is_empty() {
                        "it exited without a word"
                    } else {
                        said
                    }
                )
            }
            Ok(Err(e)) => Err(e).context("reading from the guardian"),
            Err(_) => {
                let _ = child.start_kill();
                anyhow::bail!("the guardian did not answer within {START_TIMEOUT:?}")
            }
        }
    }

    /// The run ended and reverted what it could itself: the guardian exits
    /// without touching anything.
    pub async fn release(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(format!("{DONE}\n").as_bytes()).await;
            let _ = stdin.shutdown().await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("the guardian did not exit after the run's clean end");
        }
    }
}

// === the guardian's side ===

pub fn run(args: GuardianArgs) -> anyhow::Result<u8> {
    let ppid = nix::unistd::getppid().as_raw();
    if ppid != args.watch {
        println!(
            "error: a guardian watches its own parent (pid {ppid}), not pid {}; `faultline run` starts it",
            args.watch
        );
        return Ok(exit::INVALID);
    }
    let lock_path = args.state_dir.join("guardian.lock");
    let _lock = match faultline_agent::journal::lock_owner(
        &lock_path,
        "one guardian per state directory",
    ) {
        Ok(l) => l,
        Err(e) => {
            println!("error: {e}");
            return Ok(exit::INVALID);
        }
    };
    // Opened after the parent check and checked again after: a parent that died
    // in between has been replaced by a reaper, and then it is already gone.
    let pidfd = pidfd(args.watch);
    let gone_already = nix::unistd::getppid().as_raw() != args.watch;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the guardian's runtime")?;
    println!("{READY}");
    let _ = std::io::stdout().flush();
    runtime.block_on(async move {
        if !gone_already && watch(args.watch, pidfd).await == Ending::Clean {
            return Ok(exit::OK);
        }
        Ok(take_over(&args.state_dir, args.watch).await)
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// The run said `done`: it reverted everything itself.
    Clean,
    /// The run is gone without saying so.
    Died,
}

fn pidfd(pid: i32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "no pidfd (Linux < 5.3?): watching the run's pipe and polling its pid");
            None
        }
    }
}

/// Blocks until process `pid` has exited: the pidfd turns readable then; without
/// one, the pid is polled (and a changed parent means the run is gone).
fn wait_for_death(pid: i32, pidfd: Option<OwnedFd>) {
    if let Some(fd) = pidfd {
        loop {
            let mut fds = [rustix::event::PollFd::new(
                &fd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut fds, None) {
                Ok(n) if n > 0 => return,
                Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "guardian: polling the pidfd failed; polling the pid");
                    break;
                }
            }
        }
    }
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && nix::unistd::getppid().as_raw() == pid
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for the run's end: `done` on stdin, or its death (the pidfd turning
/// readable; without a pidfd, the pipe's end and the pid's disappearance).
/// Signals are ignored: the guardian outlives whatever stops the run.
async fn watch(pid: i32, pidfd: Option<OwnedFd>) -> Ending {
    use tokio::signal::unix::{SignalKind, signal};
    // Registering a handler replaces the default action (exit): held, never
    // polled, these make SIGINT, SIGTERM and SIGHUP harmless until the run ends.
    let _signals: Vec<_> = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .filter_map(|k| signal(k).ok())
    .collect();
    // Both waits block a plain thread of their own (detached: the process
    // exits when the guardian is done, whatever they are doing).
    let (died_tx, died) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        wait_for_death(pid, pidfd);
        let _ = died_tx.send(());
    });
    let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == DONE => {
                    let _ = done_tx.send(());
                    return;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        // The pipe closed without `done`: the run is dying, and its pid says
        // when it is gone. Keep the sender so `done` never resolves.
        std::mem::forget(done_tx);
    });
    let said_done = async {
        if done.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let died = async {
        let _ = died.await;
    };
    tokio::select! {
        () = said_done => Ending::Clean,
        () = died => Ending::Died,
    }
}

/// The run died: take its journal, revert and verify everything in it.
async fn take_over(state_dir: &Path, pid: i32) -> u8 {
    let started = Instant::now();
    tracing::warn!(pid, state_dir = %state_dir.display(), "guardian: the run died without a clean end; reverting what it left");
    let halted = loop {
        match faultline_agent::host::halt(state_dir, false).await {
            Err(faultline_agent::host::HostError::Owned { .. })
                if started.elapsed() < TAKEOVER_TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    let took = started.elapsed();
    let (code, record) = match &halted {
        Ok(h) => {
            for id in &h.reverted {
                tracing::warn!(%id, "guardian: reverted");
            }
            for f in &h.failed {
                tracing::error!(id = %f.id, reason = %f.reason, "guardian: could NOT revert");
            }
            let code = if h.is_clear() {
                exit::OK
            } else {
                exit::REVERT_UNCONFIRMED
            };
            (code, serde_json::to_value(h).unwrap_or_default())
        }
        Err(e) => {
            tracing::error!(error = %e, "guardian: could not take over the journal");
            (
                exit::REVERT_UNCONFIRMED,
                serde_json::json!({ "error": e.to_string() }),
            )
        }
    };
    log(state_dir, pid, took, &record);
    code
}

/// Appends one JSON line to `<state-dir>/guardian.log`: when, whose run, how long
/// the takeover took and what it did. Best effort: the revert matters, not this.
fn log(state_dir: &Path, pid: i32, took: Duration, record: &serde_json::Value) {
    let line = serde_json::json!({
        "at": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "run_pid": pid,
        "took_ms": took.as_millis() as u64,
        "halt": record,
    });
    let path = state_dir.join("guardian.log");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "guardian: cannot write its log");
    }
}
