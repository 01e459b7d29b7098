//! The deployment files in agents/ are checked by the tools that would reject them
//! in production: the Kubernetes manifests against the API's published schemas
//! (kubernetes-validate, strict: unknown fields fail), the systemd unit by
//! `systemd-analyze verify`. scripts/setup.sh installs both.

use std::process::Command;

use crate::root;

/// Every Kubernetes manifest the project ships.
const MANIFESTS: &[&str] = &["agents/daemonset.yaml", "agents/controller.yaml"];

#[test]
fn kubernetes_manifests_pass_strict_schema_validation() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let bin = target.join("k8s-validate-venv/bin/kubernetes-validate");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/setup.sh (it creates target/k8s-validate-venv with kubernetes-validate from PyPI)",
        bin.display()
    );
    for manifest in MANIFESTS {
        let out = Command::new(&bin)
            .args(["--strict", "--kubernetes-version", "1.34.0"])
            .arg(root().join(manifest))
            .output()
            .expect("kubernetes-validate runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{manifest} does not validate:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every document was checked, none skipped as an unknown kind.
        let docs = std::fs::read_to_string(root().join(manifest))
            .expect("manifest reads")
            .lines()
            .filter(|l| l.starts_with("kind:"))
            .count();
        let passed = stdout.matches(" passed for resource ").count();
        assert_eq!(
            passed, docs,
            "{manifest}: {passed} of {docs} resources passed:\n{stdout}"
        );
    }
}

#[test]
fn the_controller_runs_two_replicas_on_postgresql_behind_one_service() {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(root().join("agents/controller.yaml")).expect("reads");
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = serde_yaml::Value::deserialize(doc).expect("manifest is YAML");
        let kind = v["kind"]
            .as_str()
            .expect("every document has a kind")
            .to_owned();
        if kind == "Deployment" {
            assert_eq!(v["spec"]["replicas"].as_u64(), Some(2));
            let c = &v["spec"]["template"]["spec"]["containers"][0];
            let db = c["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .find(|e| e["name"] == "FAULTLINE_DB")
                .expect("the store URL comes from the environment");
            assert!(
                db["valueFrom"]["secretKeyRef"].is_mapping(),
                "from a Secret"
            );
        }
        kinds.push(kind);
    }
    for want in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
        assert!(kinds.iter().any(|k| k == want), "no {want} in {kinds:?}");
    }
}

#[test]
fn the_agent_unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(root().join("agents/faultline-agent.service"))
        .expect("unit file reads");
    let binary = assert_cmd::cargo::cargo_bin("faultline");
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/local/bin/faultline", &binary.display().to_string());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("faultline-agent.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh installs systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // An unknown key or a bad value is only a warning to systemd: fail on any.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
