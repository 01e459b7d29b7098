//! Test helpers shared by faultline's crates, used only as a dev-dependency:
//! [`assert_fault_compliance`], which every fault kind's tests call; real child
//! processes ([`Child`]); unique loopback addresses and network namespaces
//! ([`NetNs`]) that clean up after themselves. Every wait here is bounded.
//!
//! Never a normal dependency of anything shipped; never mocks a part of the host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod compliance;
mod netns;
mod process;

pub use compliance::{ComplianceCase, assert_fault_compliance};
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
