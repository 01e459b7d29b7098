//! What can go wrong injecting and reverting, said so that an operator knows what
//! failed, on what, and what to do.

/// Injecting failed; nothing of this fault is left behind unless `Failed` says so.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The kind exists in the experiment format but this agent cannot inject it yet.
    #[error("{kind} is not supported by this agent: {reason}")]
    Unsupported { kind: &'static str, reason: String },
    /// The parameters are well-formed but unusable (e.g. two targets given).
    #[error("invalid parameters for {kind}: {reason}")]
    InvalidParams { kind: &'static str, reason: String },
    /// The parameters name nothing that exists on this host (no such pid, ...).
    #[error("{kind}: no target: {reason}")]
    NoTarget { kind: &'static str, reason: String },
    /// The host refused: a command or a system call failed.
    #[error("{kind}: {action} failed: {reason}")]
    Failed {
        kind: &'static str,
        action: String,
        reason: String,
    },
    /// The journaled recovery state does not belong to this kind.
    #[error("{kind}: journaled recovery state is unreadable: {reason}")]
    BadRecovery { kind: &'static str, reason: String },
}

/// Reverting failed, or the effect is still visible afterwards. Loud on purpose:
/// it names what may be left on the host.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error("{kind}: revert failed: {reason}; check {left}")]
    Failed {
        kind: &'static str,
        reason: String,
        left: String,
    },
    #[error("{kind}: still active after revert: {left}")]
    NotReverted { kind: &'static str, left: String },
}

impl InjectError {
    pub fn kind(&self) -> &'static str {
        match self {
            InjectError::Unsupported { kind, .. }
            | InjectError::InvalidParams { kind, .. }
            | InjectError::NoTarget { kind, .. }
            | InjectError::Failed { kind, .. }
            | InjectError::BadRecovery { kind, .. } => kind,
        }
    }
}
