//! The agent as a process of its own, for the crash tests: the same `start` as
//! `faultline agent`, plus failpoints from the FAILPOINTS environment variable.
//! Usage: faultline-agent-testbin LISTEN STATE_DIR [TOKEN]
//! Prints `listening <addr>` on stdout once it serves.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _scenario = fail::FailScenario::setup();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("FAULTLINE_LOG"))
        .with_writer(std::io::stderr)
        .try_init();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(state_dir)) = (args.next(), args.next()) else {
        eprintln!("usage: faultline-agent-testbin LISTEN STATE_DIR [TOKEN]");
        return std::process::ExitCode::from(2);
    };
    let Ok(listen) = listen.parse() else {
        eprintln!("bad listen address {listen}");
        return std::process::ExitCode::from(2);
    };
    let config = faultline_agent::AgentConfig {
        listen,
        token: faultline_agent::Token::new(args.next()),
        state_dir: state_dir.into(),
        labels: Default::default(),
        tls: None,
        register: None,
    };
    let mut agent = match faultline_agent::start(config).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("listening {}", agent.local_addr);
    println!(
        "recovered {}",
        serde_json::to_string(&agent.recovered).unwrap_or_default()
    );
    let _ = std::io::stdout().flush();
    tokio::select! {
        r = agent.wait() => { eprintln!("server ended: {r:?}"); std::process::ExitCode::from(1) }
        _ = tokio::signal::ctrl_c() => { agent.shutdown().await; std::process::ExitCode::SUCCESS }
    }
}
