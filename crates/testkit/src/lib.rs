//! Test helpers shared by faultline's crates, used only as a dev-dependency:
//! [`assert_fault_compliance`], which every fault kind's tests call; real child
//! processes ([`Child`]); unique loopback addresses and network namespaces
//! ([`NetNs`]) that clean up after themselves; a fleet of real agent processes in
//! namespaces of their own on one bridge ([`fleet`]). Every wait here is bounded.
//!
//! Never a normal dependency of anything shipped; never mocks a part of the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod compliance;
pub mod fleet;
mod netns;
mod process;

pub use compliance::{ComplianceCase, assert_fault_compliance};
pub use fleet::{Fleet, FleetAgent, FleetNet, FleetSpec};
pub use netns::{NetNs, unique_loopback};
pub use process::Child;

use std::time::{Duration, Instant};

/// Polls `check` until it holds or `within` passes; true if it held.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking twin of [`eventually`] for tests without a runtime.
pub fn eventually_blocking(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a private CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it
/// (`cert.pem`, `key.pem`) into `dir`, with the openssl CLI (scripts/setup.sh
/// installs it).
pub fn private_ca(dir: &std::path::Path) {
    let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=faultline-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out req.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile ext.cnf 2>/dev/null
"#;
    let status = std::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .expect("run openssl (install it: scripts/setup.sh)");
    assert!(status.success(), "openssl could not make test certificates");
}
