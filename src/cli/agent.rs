//! `faultline agent`: the per-host agent daemon (crates/agent) with its flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use faultline_agent::{AgentConfig, Token};

use super::exit;

/// Run the per-host agent: the HTTP API that injects and reverts faults on this
/// host, each under a lease, journaled under --state-dir before it is injected.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Address to listen on. Anything beyond loopback needs --token-file.
    #[arg(long, default_value = "127.0.0.1:7450", value_name = "ADDR")]
    listen: SocketAddr,
    /// File holding the bearer token clients must send (whitespace trimmed).
    #[arg(long, value_name = "F", env = "FAULTLINE_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Where the intent journal lives; whatever it holds is reverted at start.
    #[arg(long, default_value = "/var/lib/faultline-agent", value_name = "DIR")]
    state_dir: PathBuf,
    /// Labels the controller selects agents by: `role=gpu-worker,zone=a`.
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels, default_value = "")]
    labels: BTreeMap<String, String>,
    /// PEM certificate chain for TLS (with --tls-key); plain HTTP without.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("label {kv:?} is not key=value")),
        })
        .collect()
}

pub fn run(args: AgentArgs) -> anyhow::Result<u8> {
    let token = match &args.token_file {
        Some(f) => Some(faultline_agent::auth::read_token_file(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    if token.is_none() && !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without a token: give --token-file, or listen on 127.0.0.1",
            args.listen
        );
    }
    let config = AgentConfig {
        listen: args.listen,
        token: Token::new(token),
        state_dir: args.state_dir,
        labels: args.labels,
        tls: args.tls_cert.zip(args.tls_key),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut agent = faultline_agent::start(config).await?;
        for id in &agent.recovered.reverted {
            eprintln!("faultline agent: reverted {id}, left by a previous run");
        }
        for f in &agent.recovered.failed {
            eprintln!("faultline agent: could NOT revert {}: {}", f.id, f.reason);
        }
        eprintln!("faultline agent: listening on {}", agent.local_addr);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = agent.wait() => {
                r.context("the API server stopped")?;
            }
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        // A stopped agent cannot guard leases: revert everything before exiting.
        let report = agent.shutdown().await;
        for f in &report.failed {
            eprintln!("faultline agent: could NOT revert {}: {}", f.id, f.reason);
        }
        Ok(if report.failed.is_empty() {
            exit::OK
        } else {
            4
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let l = parse_labels("role=gpu, zone = a").expect("ok");
        assert_eq!(l.get("role").map(String::as_str), Some("gpu"));
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("").expect("empty").is_empty());
        assert!(parse_labels("novalue").is_err());
    }
}
