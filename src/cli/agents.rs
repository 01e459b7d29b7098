//! `faultline agents --controller URL`: the fleet as the controller sees it
//! (registered agents with their state and last heartbeat, the inventory's, the
//! in-process one, and what each holds now); and the controller connection that
//! `plan --controller` and `run --controller` share.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use faultline_controller::client::ControllerClient;
use faultline_spec::Inventory;
use serde_json::Value;

use super::{Output, exit};

/// How long one call to the controller may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the controller is and how to talk to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerOpts {
    /// The controller (`https://controller:7700`): resolve against its live
    /// registry snapshot (and, for `run`, run there).
    #[arg(long, value_name = "URL", conflicts_with = "inventory")]
    pub controller: Option<String>,
    /// A file holding the API token for --controller.
    #[arg(long, value_name = "F", requires = "controller")]
    pub token_file: Option<PathBuf>,
    /// The CA that signed the controller's certificate (HTTPS).
    #[arg(long, value_name = "F", requires = "controller")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// The controller (`https://controller:7700`).
    #[arg(long, value_name = "URL")]
    controller: String,
    /// A file holding an API token (viewer is enough).
    #[arg(long, value_name = "F")]
    token_file: Option<PathBuf>,
    /// The CA that signed the controller's certificate (HTTPS).
    #[arg(long, value_name = "F")]
    ca: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

pub fn client(
    url: &str,
    token_file: Option<&std::path::Path>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<ControllerClient> {
    let token = match token_file {
        Some(f) => Some(faultline_agent::auth::read_token_file(f).map_err(anyhow::Error::msg)?),
        None => None,
    };
    ControllerClient::new(url, token, ca, CALL_TIMEOUT)
        .with_context(|| format!("controller at {url}"))
}

impl ControllerOpts {
    pub fn client(&self) -> anyhow::Result<Option<ControllerClient>> {
        match &self.controller {
            Some(url) => Ok(Some(client(
                url,
                self.token_file.as_deref(),
                self.ca.as_deref(),
            )?)),
            None => Ok(None),
        }
    }
}

/// What selection resolves against on the controller now (`GET
/// /v1/fleet/snapshot`): its inventory merged with the alive registered agents.
pub async fn snapshot_inventory(c: &ControllerClient) -> anyhow::Result<(Inventory, Vec<String>)> {
    let snap = c
        .get("/v1/fleet/snapshot")
        .await
        .context("reading the controller's registry snapshot")?;
    let inventory: Inventory = serde_json::from_value(snap["inventory"].clone())
        .context("the controller's snapshot is not an inventory")?;
    let lost = snap["lost"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok((inventory, lost))
}

pub fn run(args: AgentsArgs) -> anyhow::Result<u8> {
    let c = client(
        &args.controller,
        args.token_file.as_deref(),
        args.ca.as_deref(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let list = runtime
        .block_on(c.get("/v1/agents"))
        .with_context(|| format!("listing the agents of {}", args.controller))?;
    match args.output {
        Output::Json => super::print_json(&list),
        Output::Text => {
            let rows = list.as_array().map(Vec::as_slice).unwrap_or_default();
            write!(
                std::io::stdout().lock(),
                "{}",
                table(rows, std::time::SystemTime::now())
            )?;
            Ok(exit::OK)
        }
    }
}

/// ID, STATE, LAST SEEN, URL, LABELS, FAULTS: plain columns, no colour.
fn table(rows: &[Value], now: std::time::SystemTime) -> String {
    let mut lines: Vec<[String; 6]> = vec![[
        "ID".into(),
        "STATE".into(),
        "LAST SEEN".into(),
        "URL".into(),
        "LABELS".into(),
        "FAULTS".into(),
    ]];
    for a in rows {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
        let state = match (a["state"].as_str(), a["source"].as_str()) {
            (Some(st), _) => st.to_owned(),
            (None, Some("local")) => "local".to_owned(),
            (None, _) if a["reachable"] == true => "inventory".to_owned(),
            (None, _) => "unreachable".to_owned(),
        };
        let last_seen = a["last_seen"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map(|t| {
                let ago = now.duration_since(t).unwrap_or_default();
                format!("{:.1}s ago", ago.as_secs_f64())
            })
            .unwrap_or_else(|| "-".to_owned());
        let labels = a["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let faults = a["faults"]
            .as_array()
            .map(|f| {
                if f.is_empty() {
                    "-".to_owned()
                } else {
                    f.iter()
                        .filter_map(|x| x["kind"].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                }
            })
            .unwrap_or_else(|| "-".to_owned());
        lines.push([
            s("name"),
            state,
            last_seen,
            if s("url").is_empty() {
                "-".to_owned()
            } else {
                s("url")
            },
            if labels.is_empty() {
                "-".to_owned()
            } else {
                labels
            },
            faults,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let mut line = String::new();
        for (c, cell) in l.iter().enumerate() {
            if c + 1 == l.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_state_age_and_faults() {
        let now = std::time::SystemTime::now();
        let seen = humantime::format_rfc3339_micros(now - Duration::from_millis(1500)).to_string();
        let rows = serde_json::json!([
            { "name": "gpu-1", "source": "registry", "state": "alive", "last_seen": seen,
              "url": "http://10.0.0.5:7600", "labels": { "role": "gpu" }, "reachable": true,
              "faults": [{ "kind": "network.loss" }] },
            { "name": "gpu-2", "source": "registry", "state": "lost", "last_seen": seen,
              "url": "http://10.0.0.6:7600", "labels": {}, "reachable": false, "faults": [] },
            { "name": "local", "source": "local", "state": null, "url": null, "labels": {},
              "reachable": true, "faults": [] }
        ]);
        let t = table(rows.as_array().unwrap(), now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID") && lines[0].ends_with("FAULTS"),
            "{t}"
        );
        assert!(
            lines[1].contains("alive") && lines[1].contains("1.5s ago"),
            "{t}"
        );
        assert!(
            lines[1].contains("role=gpu") && lines[1].ends_with("network.loss"),
            "{t}"
        );
        assert!(lines[2].contains("lost"), "{t}");
        assert!(
            lines[3].starts_with("local") && lines[3].contains(" local "),
            "{t}"
        );
    }
}
