//! The fleet's tokens (docs/security.md), all through ring:
//!
//! - the **join token**: a secret an operator gives every agent; it only
//!   registers agents (`POST /v1/agents/register`) and is refused everywhere else;
//! - the **agent token**: 256 random bits the controller issues at registration;
//!   the agent presents it on heartbeats; only its SHA-256 is stored;
//! - the **api token**: what the controller presents to an agent's API,
//!   HMAC-SHA256(fleet secret, `faultline/agent-api/v1:<id>:<generation>`), hex;
//!   nothing recoverable is stored, and every replica with the fleet secret
//!   computes the same one.
//!
//! Every comparison of a secret is constant-time.

use std::fmt;
use std::io::Write as _;
use std::path::Path;

use ring::rand::{SecureRandom as _, SystemRandom};
use subtle::ConstantTimeEq as _;

/// The domain of api tokens; a version bump here rotates every one of them.
pub const API_TOKEN_CONTEXT: &str = "faultline/agent-api/v1:";
/// A fleet secret shorter than this is refused.
pub const SECRET_MIN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the system random number generator failed")]
    Random,
    #[error("fleet secret {path}: {reason}")]
    Secret { path: String, reason: String },
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> Result<String, TokenError> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(hex(&bytes))
}

/// A new agent token: 256 random bits, hex.
pub fn new_agent_token() -> Result<String, TokenError> {
    random_hex(32)
}

/// The SHA-256 of a token, lowercase hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    header?.strip_prefix(b"Bearer ")
}

/// The join token.
#[derive(Clone)]
pub struct JoinToken(Vec<u8>);

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(set)")
    }
}

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        JoinToken(token.into().into_bytes())
    }

    /// Whether a bearer token is this join token (constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        given.ct_eq(&self.0).into()
    }
}

/// The key of the api tokens, shared by every replica.
#[derive(Clone)]
pub struct FleetSecret(ring::hmac::Key);

impl fmt::Debug for FleetSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetSecret(..)")
    }
}

impl FleetSecret {
    pub fn new(secret: &[u8]) -> Self {
        FleetSecret(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
    }

    /// Reads a secret file (surrounding whitespace trimmed, at least
    /// [`SECRET_MIN_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let err = |reason: String| TokenError::Secret {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let secret = text.trim();
        if secret.len() < SECRET_MIN_BYTES {
            return Err(err(format!(
                "{} bytes; at least {SECRET_MIN_BYTES} are needed (`openssl rand -hex 32`)",
                secret.len()
            )));
        }
        Ok(Self::new(secret.as_bytes()))
    }

    /// The secret at `path`, created (64 random hex characters, mode 0600) if
    /// there is none: a single controller needs no configuration. Replicas must
    /// share one `secret_file` instead.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        if !path.exists() {
            let err = |reason: String| TokenError::Secret {
                path: path.display().to_string(),
                reason,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            let secret = random_hex(32)?;
            use std::os::unix::fs::OpenOptionsExt as _;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    f.write_all(secret.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(|e| err(e.to_string()))?;
                    tracing::info!(path = %path.display(), "created a fleet secret");
                }
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        Self::load(path)
    }

    /// The api token of agent `id` at `generation`.
    pub fn api_token(&self, id: &str, generation: i64) -> String {
        let message = format!("{API_TOKEN_CONTEXT}{id}:{generation}");
        hex(ring::hmac::sign(&self.0, message.as_bytes()).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_hmac_match_known_answers() {
        // FIPS 180-2 "abc".
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2: key "Jefe", "what do ya want for nothing?".
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hex(ring::hmac::sign(&key, b"what do ya want for nothing?").as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The api token is exactly that HMAC over the documented message.
        let s = FleetSecret::new(b"Jefe");
        let expected = hex(ring::hmac::sign(&key, b"faultline/agent-api/v1:gpu-1:3").as_ref());
        assert_eq!(s.api_token("gpu-1", 3), expected);
    }

    #[test]
    fn api_tokens_differ_by_agent_generation_and_secret() {
        let a = FleetSecret::new(&[7u8; 32]);
        let b = FleetSecret::new(&[8u8; 32]);
        let t = a.api_token("w1", 1);
        assert_eq!(t.len(), 64);
        assert_eq!(t, a.api_token("w1", 1), "any replica computes the same");
        assert_ne!(t, a.api_token("w1", 2), "re-registration rotates it");
        assert_ne!(t, a.api_token("w2", 1));
        assert_ne!(t, b.api_token("w1", 1));
        // No separator confusion: `w1:1` + `2` is not `w1` + `1:2`... ids cannot
        // hold `:`, and the generation is last.
        assert_ne!(a.api_token("w1", 12), a.api_token("w11", 2));
    }

    #[test]
    fn agent_tokens_are_random_256_bits() {
        let a = new_agent_token().unwrap();
        let b = new_agent_token().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[test]
    fn join_tokens_match_exactly() {
        let j = JoinToken::new("join-me");
        assert!(j.matches(b"join-me"));
        assert!(!j.matches(b"join-m"));
        assert!(!j.matches(b"join-me!"));
        assert_eq!(bearer(Some(b"Bearer x")), Some(&b"x"[..]));
        assert_eq!(bearer(Some(b"x")), None);
        assert!(!format!("{j:?}").contains("join-me"));
    }

    #[test]
    fn secrets_are_created_once_private_and_checked() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/fleet-secret");
        let a = FleetSecret::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = FleetSecret::load_or_create(&path).unwrap();
        assert_eq!(
            a.api_token("x", 1),
            b.api_token("x", 1),
            "reused, not rewritten"
        );
        let short = dir.path().join("short");
        std::fs::write(&short, "tooshort\n").unwrap();
        let e = FleetSecret::load(&short).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }
}
