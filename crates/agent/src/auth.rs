//! Bearer-token authentication, compared in constant time. An agent accepts a
//! static token (`--token-file`) and, once it registered with a controller, the
//! `api_token` that controller issued it; the latter is swapped at run time (each
//! re-registration rotates it), without a lock on the request path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use subtle::ConstantTimeEq as _;

/// The tokens an agent accepts: none (then it listens on loopback only), a
/// static one, a controller-issued one, or both.
#[derive(Clone, Default)]
pub struct Token {
    fixed: Option<Arc<[u8]>>,
    /// `Some` when the agent registers with a controller: requests are refused
    /// (unless the static token matches) until registration stored a token here.
    issued: Option<Arc<ArcSwapOption<Vec<u8>>>>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a token.
        let issued = match &self.issued {
            None => "none",
            Some(s) if s.load().is_some() => "issued",
            Some(_) => "awaiting registration",
        };
        f.debug_struct("Token")
            .field("fixed", &self.fixed.is_some())
            .field("controller", &issued)
            .finish()
    }
}

impl Token {
    pub fn new(token: Option<String>) -> Self {
        Self {
            fixed: token.map(|t| Arc::from(t.into_bytes())),
            issued: None,
        }
    }

    /// A static token (optional) plus a slot for the token a controller issues
    /// at registration; until then only the static token (if any) is accepted.
    pub fn with_controller(token: Option<String>) -> Self {
        Self {
            issued: Some(Arc::new(ArcSwapOption::empty())),
            ..Self::new(token)
        }
    }

    /// This token with a slot for a controller-issued one (kept if it has one).
    pub fn for_controller(&self) -> Self {
        Self {
            fixed: self.fixed.clone(),
            issued: Some(
                self.issued
                    .clone()
                    .unwrap_or_else(|| Arc::new(ArcSwapOption::empty())),
            ),
        }
    }

    /// Whether anything is required of a request (a token, or a registration
    /// that has not happened yet): then the agent may listen beyond loopback.
    pub fn is_set(&self) -> bool {
        self.fixed.is_some() || self.issued.is_some()
    }

    /// Whether a controller-issued token is in place.
    pub fn has_issued(&self) -> bool {
        self.issued.as_ref().is_some_and(|s| s.load().is_some())
    }

    /// Replaces the controller-issued token (a no-op on a token made without
    /// [`Token::with_controller`]).
    pub fn set_issued(&self, token: Option<String>) {
        if let Some(slot) = &self.issued {
            slot.store(token.map(|t| Arc::new(t.into_bytes())));
        }
    }

    /// Whether an `Authorization` header value grants access.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        if !self.is_set() {
            return true;
        }
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // ct_eq of slices of different lengths is false without comparing contents;
        // the length of a token is not a secret worth hiding. Both are compared,
        // whichever matches.
        let fixed = self
            .fixed
            .as_ref()
            .is_some_and(|t| bool::from(given.ct_eq(t)));
        let issued = self
            .issued
            .as_ref()
            .and_then(|s| s.load_full())
            .is_some_and(|t| bool::from(given.ct_eq(t.as_slice())));
        fixed | issued
    }
}

/// Reads a token file: the whole file, surrounding whitespace trimmed.
pub fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_checked() {
        let t = Token::new(Some("s3cret".into()));
        assert!(t.allows(Some(b"Bearer s3cret")));
        assert!(!t.allows(Some(b"Bearer s3cre")));
        assert!(!t.allows(Some(b"Bearer s3cret2")));
        assert!(!t.allows(Some(b"s3cret")));
        assert!(!t.allows(None));
        assert!(Token::new(None).allows(None));
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn controller_tokens_swap_and_refuse_until_issued() {
        let t = Token::with_controller(None);
        assert!(t.is_set(), "awaiting registration counts as protected");
        assert!(!t.allows(None));
        assert!(!t.allows(Some(b"Bearer anything")));
        t.set_issued(Some("gen1".into()));
        assert!(t.allows(Some(b"Bearer gen1")));
        let clone = t.clone();
        t.set_issued(Some("gen2".into()));
        assert!(!clone.allows(Some(b"Bearer gen1")), "clones share the slot");
        assert!(clone.allows(Some(b"Bearer gen2")));
        let both = Token::with_controller(Some("static".into()));
        both.set_issued(Some("issued".into()));
        assert!(both.allows(Some(b"Bearer static")) && both.allows(Some(b"Bearer issued")));
        assert!(!both.allows(Some(b"Bearer other")));
        assert!(!format!("{both:?}").contains("static"));
    }
}
