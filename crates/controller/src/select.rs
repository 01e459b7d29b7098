//! Target selection: which agents of the inventory each target resolves to.
//!
//! `count(n)` and `percent(p)` pick at random, reproducibly: the same seed, target
//! name and inventory always pick the same agents.

use faultline_spec::located::DocPath;
use faultline_spec::units::SelectMode;
use faultline_spec::{Experiment, Inventory, LOCAL_AGENT};
use indexmap::IndexMap;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A target that cannot be resolved; `path` points into the experiment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectError {
    pub path: DocPath,
    pub message: String,
}

/// One target, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub target: String,
    pub mode: String,
    /// How many agents matched before `mode` narrowed them.
    pub matched: usize,
    /// The chosen agents, sorted by name.
    pub agents: Vec<String>,
}

/// Resolves every target of `exp` against `inv`. Reports every target that fails,
/// not only the first.
pub fn resolve(
    exp: &Experiment,
    inv: &Inventory,
    seed: u64,
) -> Result<IndexMap<String, Selection>, Vec<SelectError>> {
    let mut out = IndexMap::new();
    let mut errors = Vec::new();
    for (name, target) in &exp.targets {
        let path = DocPath::root().key("targets").key(name);
        let candidates: Vec<String> = match (&target.agents, &target.selector) {
            (Some(agents), _) => {
                for (i, a) in agents.iter().enumerate() {
                    if a != LOCAL_AGENT && !inv.agents.contains_key(a) {
                        let known = if inv.agents.is_empty() {
                            "the inventory is empty (pass --inventory)".to_owned()
                        } else {
                            format!(
                                "the inventory has {}",
                                inv.agents
                                    .keys()
                                    .map(|k| format!("`{k}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        };
                        errors.push(SelectError {
                            path: path.key("agents").index(i),
                            message: format!("unknown agent `{a}`: {known}, and `{LOCAL_AGENT}` is the in-process agent"),
                        });
                    }
                }
                agents.clone()
            }
            (None, Some(selector)) => inv
                .agents
                .iter()
                .filter(|(_, e)| selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                .map(|(n, _)| n.clone())
                .collect(),
            (None, None) => Vec::new(),
        };
        if candidates.is_empty() {
            if target.selector.is_some() {
                errors.push(SelectError {
                    path: path.key("selector"),
                    message: "no agent in the inventory carries these labels".to_owned(),
                });
            }
            continue;
        }
        let chosen = choose(&candidates, target.mode, seed, name);
        out.insert(
            name.clone(),
            Selection {
                target: name.clone(),
                mode: target.mode.to_string(),
                matched: candidates.len(),
                agents: chosen,
            },
        );
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// How many of `n` candidates a mode takes.
pub fn take_count(mode: SelectMode, n: usize) -> usize {
    match mode {
        SelectMode::All => n,
        SelectMode::Count(c) => (c as usize).min(n),
        SelectMode::Percent(p) => ((p.ratio() * n as f64).ceil() as usize).clamp(1, n),
    }
}

fn choose(candidates: &[String], mode: SelectMode, seed: u64, target: &str) -> Vec<String> {
    let mut pool: Vec<String> = candidates.to_vec();
    pool.sort();
    let k = take_count(mode, pool.len());
    if k < pool.len() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(target.as_bytes()));
        pool.shuffle(&mut rng);
        pool.truncate(k);
        pool.sort();
    }
    pool
}

/// A hash that stays the same across Rust releases, unlike `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(n: usize) -> Inventory {
        let text: String = (0..n)
            .map(|i| {
                format!(
                    "  w{i}: {{ url: \"http://127.0.0.1:{}\", labels: {{ role: gpu-worker }} }}\n",
                    7600 + i
                )
            })
            .collect();
        Inventory::parse("inv.yaml", &format!("agents:\n{text}  db-1: {{ url: \"http://127.0.0.1:7700\", labels: {{ role: db }} }}\n"))
            .expect("inventory parses")
    }

    fn experiment(targets: &str) -> Experiment {
        let text = format!(
            "version: faultline/v1\nname: t\ntargets:\n{targets}\nmethod:\n  - {{ name: s, target: t, fault: {{ process.pause: {{ pid: 1 }} }}, duration: 1s }}\n"
        );
        let loaded = faultline_spec::load("t.yaml", &text);
        loaded
            .experiment
            .unwrap_or_else(|| panic!("{}", loaded.report.render()))
    }

    #[test]
    fn percent_and_count_are_reproducible_and_sized() {
        let inv = inventory(10);
        let exp = experiment("  t: { selector: { role: gpu-worker }, mode: percent(25) }");
        let a = resolve(&exp, &inv, 7).unwrap();
        let b = resolve(&exp, &inv, 7).unwrap();
        assert_eq!(a["t"].agents, b["t"].agents);
        assert_eq!(a["t"].agents.len(), 3, "ceil(25% of 10)");
        assert_eq!(a["t"].matched, 10);
        let differs = (0..20).any(|s| resolve(&exp, &inv, s).unwrap()["t"].agents != a["t"].agents);
        assert!(differs, "the seed changes the choice");
        let exp = experiment("  t: { selector: { role: db }, mode: count(5) }");
        assert_eq!(resolve(&exp, &inv, 0).unwrap()["t"].agents, vec!["db-1"]);
    }

    #[test]
    fn unknown_agents_and_empty_selectors_are_errors() {
        let inv = inventory(2);
        let exp =
            experiment("  t: { agents: [w0, ghost, local] }\n  u: { selector: { role: nothing } }");
        let errs = resolve(&exp, &inv, 0).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].path.to_string(), "targets.t.agents[1]");
        assert!(errs[0].message.contains("unknown agent `ghost`"));
        assert_eq!(errs[1].path.to_string(), "targets.u.selector");
    }
}
