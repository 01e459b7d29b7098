//! `faultline agent`: the per-host agent daemon (crates/agent) with its flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use faultline_agent::register::RegisterConfig;
use faultline_agent::{AgentConfig, Token};

use super::exit;

/// Run the per-host agent: the HTTP API that injects and reverts faults on this
/// host, each under a lease, journaled under --state-dir before it is injected.
/// Flags override the --config file; both fall back to the defaults shown.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Agent config (YAML: listen, token_file, state_dir, labels, tls_cert,
    /// tls_key, controller, join_token_file, advertise, controller_ca, id); see
    /// agents/agent-config.example.yaml.
    #[arg(long, value_name = "F")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7600]. Anything beyond loopback
    /// needs a token.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// File holding the bearer token clients must send (whitespace trimmed).
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
    /// Where the intent journal lives; whatever it holds is reverted at start
    /// [default: /var/lib/faultline-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Labels the controller selects agents by: `role=gpu-worker,zone=a`.
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels)]
    labels: Option<BTreeMap<String, String>>,
    /// PEM certificate chain for TLS (with --tls-key); plain HTTP without.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Register with this controller and heartbeat (`https://controller:7700`);
    /// needs --join-token-file. The controller's api token is then accepted
    /// besides --token-file, and nothing is served until registration gave one.
    #[arg(long, value_name = "URL")]
    controller: Option<String>,
    /// File holding the fleet's join token (whitespace trimmed).
    #[arg(long, value_name = "F")]
    join_token_file: Option<PathBuf>,
    /// HOST:PORT the controller reaches this agent at [default: the listen
    /// address, unless it is a wildcard]; the scheme follows TLS.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// This agent's id in the fleet [default: the host name].
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

/// The `--config` file: the same settings as the flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    controller: Option<String>,
    join_token_file: Option<PathBuf>,
    advertise: Option<String>,
    /// PEM CA of the controller's certificate (https controllers with a private CA).
    controller_ca: Option<PathBuf>,
    id: Option<String>,
}

/// `HOST:PORT` with the agent's scheme; a full URL is taken as it is.
fn advertise_url(advertise: &str, tls: bool) -> anyhow::Result<String> {
    let a = advertise.trim().trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        return Ok(a.to_owned());
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(format!("{}://{a}", if tls { "https" } else { "http" }))
        }
        _ => bail!("--advertise {advertise:?}: expected HOST:PORT"),
    }
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
    let file: ConfigFile = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading agent config {}", path.display()))?;
            serde_yaml::from_str(&text)
                .with_context(|| format!("agent config {}", path.display()))?
        }
        None => ConfigFile::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7600)));
    let token = match args.token_file.or(file.token_file) {
        Some(f) => Some(faultline_agent::auth::read_token_file(&f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("TLS needs both a certificate and a key (tls_cert and tls_key)"),
    };
    let register = match args.controller.or(file.controller) {
        Some(controller) => {
            let Some(join) = args.join_token_file.or(file.join_token_file) else {
                bail!(
                    "--controller needs --join-token-file (join_token_file): registration is authenticated"
                );
            };
            let join_token =
                faultline_agent::auth::read_token_file(&join).map_err(anyhow::Error::msg)?;
            let url = match args.advertise.or(file.advertise) {
                Some(a) => Some(advertise_url(&a, tls.is_some())?),
                None => None,
            };
            Some(RegisterConfig {
                controller,
                join_token,
                id: args
                    .id
                    .or(file.id)
                    .unwrap_or_else(faultline_agent::register::hostname),
                url,
                controller_ca: file.controller_ca,
            })
        }
        None => None,
    };
    // With a controller, requests are refused until it issued a token.
    if token.is_none() && register.is_none() && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without a token: give --token-file or --controller, or listen on 127.0.0.1"
        );
    }
    let config = AgentConfig {
        register,
        listen,
        token: Token::new(token),
        state_dir: args
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/faultline-agent")),
        labels: args.labels.unwrap_or(file.labels),
        tls,
    };
    let controller = config.register.as_ref().map(|r| r.controller.clone());
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
        if let Some(c) = &controller {
            eprintln!("faultline agent: registering with {c}");
        }
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
    fn the_example_config_parses() {
        let text = include_str!("../../agents/agent-config.example.yaml");
        let c: ConfigFile = serde_yaml::from_str(text).expect("example config parses");
        assert!(c.controller.is_some() && c.join_token_file.is_some() && c.advertise.is_some());
        assert!(!c.labels.is_empty());
    }

    #[test]
    fn the_daemonset_config_map_holds_a_valid_config() {
        use serde::Deserialize as _;
        let text = include_str!("../../agents/daemonset.yaml");
        let mut found = false;
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = serde_yaml::Value::deserialize(doc).expect("manifest is YAML");
            if let Some(cfg) = v["data"]["agent.yaml"].as_str() {
                let c: ConfigFile = serde_yaml::from_str(cfg).expect("agent.yaml parses");
                // It listens beyond loopback: the registration's token guards it.
                assert!(
                    c.controller.is_some() && c.join_token_file.is_some(),
                    "a DaemonSet agent registers with the controller"
                );
                assert!(c.token_file.is_none(), "no static per-node token");
                found = true;
            }
        }
        assert!(found, "no agent.yaml in the ConfigMap");
    }

    #[test]
    fn advertise_takes_the_scheme_of_tls() {
        assert_eq!(
            advertise_url("10.0.0.5:7600", false).unwrap(),
            "http://10.0.0.5:7600"
        );
        assert_eq!(
            advertise_url("gpu-1:7600", true).unwrap(),
            "https://gpu-1:7600"
        );
        assert_eq!(advertise_url("https://x:1/", false).unwrap(), "https://x:1");
        assert!(advertise_url("nohost", false).is_err());
        assert!(advertise_url("h:notaport", false).is_err());
    }

    #[test]
    fn labels_parse() {
        let l = parse_labels("role=gpu, zone = a").expect("ok");
        assert_eq!(l.get("role").map(String::as_str), Some("gpu"));
        assert_eq!(l.get("zone").map(String::as_str), Some("a"));
        assert!(parse_labels("").expect("empty").is_empty());
        assert!(parse_labels("novalue").is_err());
    }
}
