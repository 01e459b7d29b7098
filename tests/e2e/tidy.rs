//! Tidy checks: the crate dependency graph follows DESIGN.md's one direction of
//! data flow (spec -> probe, proxy -> faults -> agent -> controller -> binary).

use std::collections::BTreeMap;

use crate::root;

/// What each library crate may depend on (by directory name under crates/).
fn allowed() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("spec", &[][..]),
        ("probe", &["spec"][..]),
        ("proxy", &["spec"][..]),
        ("faults", &["spec", "proxy", "cuda-shim"][..]),
        ("agent", &["spec", "proxy", "faults"][..]),
        (
            "controller",
            &["spec", "probe", "proxy", "faults", "agent"][..],
        ),
        ("cuda-shim", &[][..]),
        // The SONAME builds of the interposer re-export it under libcuda.so.1 /
        // libnvidia-ml.so.1; the fakes are GPU-less test fixtures.
        ("cuda-shim-soname", &["cuda-shim"][..]),
        ("nvml-shim-soname", &["cuda-shim"][..]),
        ("fake-cuda", &[][..]),
        ("fake-nvml", &[][..]),
        // The demo target of `faultline demo`: a service to break, so it depends on
        // nothing of faultline, and no library lists it: only the binary uses it.
        ("demo", &[][..]),
        // testkit is a dev-dependency helper: it may use anything below the binary.
        (
            "testkit",
            &[
                "spec",
                "probe",
                "proxy",
                "faults",
                "agent",
                "controller",
                "cuda-shim",
            ][..],
        ),
    ])
}

fn workspace_deps(manifest: &toml::Table) -> Vec<String> {
    ["dependencies", "build-dependencies"]
        .iter()
        .filter_map(|section| manifest.get(*section).and_then(|d| d.as_table()))
        .flat_map(|t| t.keys().cloned())
        .filter(|k| k.starts_with("faultline-"))
        .map(|k| k.trim_start_matches("faultline-").to_owned())
        .collect()
}

#[test]
fn crate_dependencies_follow_the_data_flow() {
    let allowed = allowed();
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/ exists") {
        let dir = entry.expect("dir entry").path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
        let Some(may) = allowed.get(name.as_str()) else {
            panic!(
                "crates/{name} is not in the dependency map of tests/e2e/tidy.rs (and DESIGN.md)"
            );
        };
        for dep in workspace_deps(&manifest) {
            assert!(
                may.contains(&dep.as_str()),
                "crates/{name} depends on faultline-{dep}, against the data flow in DESIGN.md"
            );
        }
        // Only the testkit may be a dev-dependency of libraries beyond their flow.
        if let Some(dev) = manifest.get("dev-dependencies").and_then(|d| d.as_table()) {
            for dep in dev.keys().filter(|k| k.starts_with("faultline-")) {
                let dep = dep.trim_start_matches("faultline-");
                assert!(
                    dep == "testkit" || may.contains(&dep),
                    "crates/{name} dev-depends on faultline-{dep}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 1);
}

#[test]
fn libraries_forbid_unsafe_and_do_not_print() {
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/ exists") {
        let dir = entry.expect("dir entry").path();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let manifest: toml::Table = text.parse().expect("Cargo.toml parses");
        let inherits = manifest
            .get("lints")
            .and_then(|l| l.get("workspace"))
            .and_then(|w| w.as_bool())
            .unwrap_or(false);
        // The CUDA interposer and its fake driver are FFI by nature; all else inherits
        // the workspace lints (unsafe forbidden, no printing).
        if !["cuda-shim", "fake-cuda", "fake-nvml"].contains(&name.as_str()) {
            assert!(
                inherits,
                "crates/{name} must use `[lints] workspace = true`"
            );
        }
    }
}
