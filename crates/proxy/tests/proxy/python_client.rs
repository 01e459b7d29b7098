//! A published Toxiproxy client (toxiproxy-python from PyPI) drives the API.

use std::path::PathBuf;
use std::process::Command;

use crate::util::{Harness, echo_server};

fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("FAULTLINE_PROXY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("proxy-test-venv/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_client_works_unchanged() {
    let python = venv_python();
    let has_client = Command::new(&python)
        .args(["-c", "import toxiproxy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_client,
        "toxiproxy-python is not installed at {}; run: ./scripts/setup.sh",
        python.display()
    );
    let h = Harness::start().await;
    let upstream = echo_server().await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/proxy/client.py");
    let api = h.api.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("API", api)
            .env("UPSTREAM", upstream.to_string())
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
