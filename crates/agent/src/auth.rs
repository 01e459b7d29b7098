//! Bearer-token authentication, compared in constant time.

use subtle::ConstantTimeEq as _;

/// The agent's token, or none (then it listens on loopback only).
#[derive(Clone)]
pub struct Token(Option<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str(if self.0.is_some() {
            "Token(set)"
        } else {
            "Token(none)"
        })
    }
}

impl Token {
    pub fn new(token: Option<String>) -> Self {
        Self(token.map(String::into_bytes))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether an `Authorization` header value grants access.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.0 else {
            return true;
        };
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        // ct_eq of slices of different lengths is false without comparing contents;
        // the length of the token is not a secret worth hiding.
        given.ct_eq(expected).into()
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
        assert_eq!(format!("{t:?}"), "Token(set)");
    }
}
