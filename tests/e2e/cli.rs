use predicates::prelude::*;

use crate::{faultline, files, rel, root};

#[test]
fn validate_accepts_every_shipped_experiment() {
    let experiments: Vec<String> = files("experiments", "yaml")
        .iter()
        .map(|p| rel(p))
        .collect();
    assert!(experiments.len() >= 8);
    faultline()
        .arg("validate")
        .args(&experiments)
        .assert()
        .code(0)
        .stdout(predicate::str::contains(
            "experiments/quickstart.yaml: valid",
        ));
}

#[test]
fn validate_rejects_every_invalid_fixture_with_a_location() {
    for fixture in files("crates/spec/tests/fixtures/invalid", "yaml") {
        let name = rel(&fixture);
        let out = faultline()
            .arg("validate")
            .arg(&name)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let located = stderr.lines().filter(|l| l.contains(": error: ")).all(|l| {
            let mut parts = l.splitn(4, ':');
            parts.next() == Some(name.as_str())
                && parts.next().is_some_and(|n| n.parse::<usize>().is_ok())
                && parts.next().is_some_and(|n| n.parse::<usize>().is_ok())
        });
        assert!(located && stderr.contains(": error: "), "{name}: {stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("invalid"));
    }
}

#[test]
fn validate_json_output_is_machine_readable() {
    let out = faultline()
        .args([
            "validate",
            "--output",
            "json",
            "crates/spec/tests/fixtures/invalid/13-unknown-target.yaml",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["valid"], false);
    let d = &v["files"][0]["diagnostics"][0];
    assert_eq!(d["line"], 12);
    assert_eq!(d["column"], 13);
    assert_eq!(d["path"], "method[0].target");
    assert_eq!(d["help"], "did you mean `web`?");
}

#[test]
fn validate_mixed_files_fails_and_names_each() {
    faultline()
        .args([
            "validate",
            "experiments/ci-gate.yaml",
            "crates/spec/tests/fixtures/invalid/02-empty-file.yaml",
            "no/such/file.yaml",
        ])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("experiments/ci-gate.yaml: valid"))
        .stdout(predicate::str::contains("02-empty-file.yaml: invalid"))
        .stderr(predicate::str::contains(
            "no/such/file.yaml:1:1: error: cannot read file",
        ));
}

#[test]
fn schema_is_json_schema_2020_12_and_matches_the_committed_copy() {
    let out = faultline().arg("schema").output().expect("runs");
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    for key in [
        "version",
        "name",
        "targets",
        "probes",
        "hypotheses",
        "during",
        "recovery",
        "method",
        "safety",
    ] {
        assert!(
            schema["properties"].get(key).is_some(),
            "schema lacks {key}"
        );
    }
    // Editors read docs/faultline-v1.schema.json (the experiments' $schema line).
    let committed = std::fs::read_to_string(root().join("docs/faultline-v1.schema.json"))
        .expect("committed schema");
    let committed: serde_json::Value =
        serde_json::from_str(&committed).expect("committed schema is JSON");
    assert_eq!(
        schema, committed,
        "docs/faultline-v1.schema.json is stale: run `faultline schema > docs/faultline-v1.schema.json`"
    );
}

#[test]
fn experiment_format_doc_covers_every_fault_and_key() {
    let doc =
        std::fs::read_to_string(root().join("docs/experiment-format.md")).expect("doc exists");
    for kind in faultline_spec::FaultSpec::KINDS {
        assert!(
            doc.contains(&format!("`{kind}`")),
            "docs/experiment-format.md does not document `{kind}`"
        );
    }
    for key in faultline_spec::validate::TOP_LEVEL_KEYS {
        assert!(
            doc.contains(&format!("`{key}`")),
            "docs/experiment-format.md does not document `{key}`"
        );
    }
    for probe in faultline_spec::Probe::KINDS {
        assert!(
            doc.contains(&format!("`{probe}`")),
            "docs/experiment-format.md does not document probe `{probe}`"
        );
    }
}

#[test]
fn completions_and_version() {
    faultline()
        .args(["completions", "bash"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("faultline"));
    faultline()
        .arg("--version")
        .assert()
        .code(0)
        .stdout(predicate::str::starts_with(format!(
            "faultline {}",
            env!("CARGO_PKG_VERSION")
        )));
}

#[test]
fn usage_errors_exit_2() {
    faultline().arg("validate").assert().code(2);
    faultline().arg("no-such-command").assert().code(2);
}

#[test]
fn plan_resolves_targets_and_draws_the_timeline() {
    let out = faultline()
        .args([
            "plan",
            "experiments/game-day.yaml",
            "--inventory",
            "agents/inventory.example.yaml",
            "--seed",
            "3",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("gpu-workers"));
    assert!(
        text.contains("1 of 4 matched"),
        "percent(25) of 4 gpu workers is one: {text}"
    );
    assert!(text.contains("|#"), "a Gantt bar: {text}");
    assert!(text.contains("agents affected"));
    // Reproducible: the same seed picks the same agents.
    let again = faultline()
        .args([
            "plan",
            "experiments/game-day.yaml",
            "--inventory",
            "agents/inventory.example.yaml",
            "--seed",
            "3",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn plan_every_shipped_experiment_against_the_example_inventory() {
    for exp in files("experiments", "yaml") {
        let out = faultline()
            .args([
                "plan",
                "--output",
                "json",
                "--inventory",
                "agents/inventory.example.yaml",
            ])
            .arg(rel(&exp))
            .output()
            .expect("runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            rel(&exp),
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
        assert!(
            plan["blast_radius"]["agents_affected"]
                .as_u64()
                .is_some_and(|n| n >= 1)
        );
    }
}

#[test]
fn plan_rejects_unknown_agents_with_a_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = dir.path().join("inv.yaml");
    std::fs::write(
        &inv,
        "agents:\n  db-2: { url: \"https://127.0.0.1:7600\", labels: { role: db } }\n",
    )
    .expect("write");
    faultline()
        .args(["plan", "experiments/db-lock.yaml", "--inventory"])
        .arg(&inv)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "experiments/db-lock.yaml:8:18: error: unknown agent `db-1`",
        ));
    // Without an inventory only `local` resolves.
    faultline()
        .args(["plan", "experiments/quickstart.yaml"])
        .assert()
        .code(0);
}

#[test]
fn plan_rejects_a_bad_inventory_with_a_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = dir.path().join("inv.yaml");
    std::fs::write(
        &inv,
        "agents:\n  db-1: { url: \"https://127.0.0.1:7600\", lables: { role: db } }\n",
    )
    .expect("write");
    faultline()
        .args(["plan", "experiments/db-lock.yaml", "--inventory"])
        .arg(&inv)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("inv.yaml:2:"))
        .stderr(predicate::str::contains("unknown key `lables`"));
    faultline()
        .args([
            "plan",
            "crates/spec/tests/fixtures/invalid/10-unknown-fault.yaml",
        ])
        .assert()
        .code(2);
}
