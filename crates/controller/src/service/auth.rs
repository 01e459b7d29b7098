//! API tokens and roles. A request carries `Authorization: Bearer <token>`; the
//! token is compared in constant time against every configured token (all of
//! them, whatever matches first), and the match names who acts, for the audit log.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// What a token may do; each role may do what the ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read runs, experiments, schedules, events and metrics.
    Viewer,
    /// Also store experiments (without command probes), start and abort runs.
    Operator,
    /// Also schedules, halt, the audit log, and experiments with command probes.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured token.
#[derive(Clone)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    secret: Vec<u8>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    pub fn new(name: &str, role: Role, secret: impl Into<String>) -> Self {
        ApiToken {
            name: name.to_owned(),
            role,
            secret: secret.into().into_bytes(),
        }
    }
}

impl ApiToken {
    /// Whether this token's secret is `s` (constant time).
    pub fn is_secret(&self, s: &str) -> bool {
        self.secret.ct_eq(s.as_bytes()).into()
    }
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (`anonymous` when the service has no tokens).
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn may(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(Vec<ApiToken>);

impl Tokens {
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Tokens(tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Who an `Authorization` header value is; `None`: missing or unknown token.
    /// Without configured tokens everyone is the anonymous admin (the service then
    /// listens on loopback only).
    pub fn authenticate(&self, header: Option<&[u8]>) -> Option<Principal> {
        if self.0.is_empty() {
            return Some(Principal {
                name: "anonymous".to_owned(),
                role: Role::Admin,
            });
        }
        let given = header?.strip_prefix(b"Bearer ")?;
        let mut found: Option<&ApiToken> = None;
        // Compare against every token, so the time taken does not say which one
        // (or how many) came close. ct_eq of different lengths is false without
        // looking at the contents; lengths are not worth hiding.
        for t in &self.0 {
            let eq: bool = given.ct_eq(&t.secret).into();
            if eq && found.is_none() {
                found = Some(t);
            }
        }
        found.map(|t| Principal {
            name: t.name.clone(),
            role: t.role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_holder_and_role() {
        let t = Tokens::new(vec![
            ApiToken::new("ci", Role::Operator, "op-secret"),
            ApiToken::new("dash", Role::Viewer, "view-secret"),
        ]);
        let p = t.authenticate(Some(b"Bearer op-secret")).expect("known");
        assert_eq!((p.name.as_str(), p.role), ("ci", Role::Operator));
        assert_eq!(
            t.authenticate(Some(b"Bearer view-secret")).map(|p| p.role),
            Some(Role::Viewer)
        );
        assert!(t.authenticate(Some(b"Bearer op-secre")).is_none());
        assert!(t.authenticate(Some(b"op-secret")).is_none());
        assert!(t.authenticate(None).is_none());
        assert!(!format!("{t:?}").contains("secret\""));
        assert!(!format!("{t:?}").contains("op-secret"));
    }

    #[test]
    fn roles_are_ordered() {
        let op = Principal {
            name: "x".into(),
            role: Role::Operator,
        };
        assert!(op.may(Role::Viewer) && op.may(Role::Operator) && !op.may(Role::Admin));
        assert_eq!(
            Tokens::default().authenticate(None).map(|p| p.role),
            Some(Role::Admin)
        );
    }
}
