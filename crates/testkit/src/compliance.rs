//! The fault compliance check (vector's component spec, for faults): every fault
//! kind's tests call [`assert_fault_compliance`] with a case that makes real targets
//! and observes the effect from outside the fault's own code.

use std::future::Future;
use std::time::Duration;

use faultline_faults::{registry, revert_and_verify};
use faultline_spec::FaultSpec;

use crate::eventually;

/// How a fault kind is exercised: fresh targets, and an outside observation.
pub trait ComplianceCase {
    /// A spec whose targets exist now (spawning a new child, binding a listener...).
    /// Called once per phase, since some faults (process.kill) consume their target.
    fn spec(&mut self) -> FaultSpec;
    /// Whether the effect of the last spec's fault can be seen from outside now
    /// (the process is stopped, a connection fails...).
    fn effect_visible(&mut self) -> impl Future<Output = bool> + Send;
}

const WAIT: Duration = Duration::from_secs(3);
/// The lease faults are built under (it sizes server-side dead man's switches).
const LEASE: Duration = Duration::from_secs(30);

/// Inject, observe the effect from outside, revert, observe it gone, revert again is
/// a no-op, and revert from the journaled recovery state alone works both before
/// inject and after a crash mid-inject. Panics with the phase that failed.
pub async fn assert_fault_compliance<C: ComplianceCase + Send>(id: &str, case: &mut C) {
    // Phase 1: the life cycle.
    let spec = case.spec();
    let mut fault = registry::build(id, &spec, LEASE).expect("build the fault");
    let lasting = fault.lasting();
    fault.inject().await.expect("inject");
    assert!(
        eventually(WAIT, async || case.effect_visible().await).await,
        "{}: the effect is not visible from outside after inject",
        spec.kind()
    );
    assert!(
        fault.observe().await.active,
        "{}: observe() does not see its own effect",
        spec.kind()
    );
    fault.inject().await.expect("a second inject is idempotent");
    revert_and_verify(fault.as_mut())
        .await
        .expect("revert and verify");
    if !lasting {
        assert!(
            eventually(WAIT, async || !case.effect_visible().await).await,
            "{}: the effect is still visible after revert",
            spec.kind()
        );
        assert!(
            !fault.observe().await.active,
            "{}: observe() still sees the effect after revert",
            spec.kind()
        );
    }
    revert_and_verify(fault.as_mut())
        .await
        .expect("a second revert is a no-op");
    drop(fault);

    // Phase 2: crash after the intent was journaled, before inject.
    let spec = case.spec();
    let fault = registry::build(id, &spec, LEASE).expect("build the fault");
    let recovery = fault.recovery();
    drop(fault);
    let mut restored =
        registry::restore(id, &spec, LEASE, &recovery).expect("restore from the journal");
    revert_and_verify(restored.as_mut())
        .await
        .expect("revert of a never-injected fault");

    // Phase 3: crash after inject, before anything else: the restored fault reverts it.
    let spec = case.spec();
    let mut fault = registry::build(id, &spec, LEASE).expect("build the fault");
    let recovery = serde_json::from_str(&fault.recovery().to_string()).expect("journal round trip");
    fault.inject().await.expect("inject");
    assert!(
        eventually(WAIT, async || case.effect_visible().await).await,
        "{}: the effect is not visible after the second inject",
        spec.kind()
    );
    drop(fault); // the agent died here
    let mut restored =
        registry::restore(id, &spec, LEASE, &recovery).expect("restore from the journal");
    revert_and_verify(restored.as_mut())
        .await
        .expect("revert after a crash");
    if !lasting {
        assert!(
            eventually(WAIT, async || !case.effect_visible().await).await,
            "{}: a restored fault did not revert the effect",
            spec.kind()
        );
    }
    revert_and_verify(restored.as_mut())
        .await
        .expect("a second revert after a crash is a no-op");
}
