//! Strings that may hold credentials: connection URLs, header values.
//!
//! A `Secret` keeps the text as written, with `${env:NAME}` references left
//! unresolved until `expose()` is called at the moment of use. Its `Debug` and
//! `Display` never show a resolved value, and they mask a password written
//! inline in a URL, so a secret cannot leak through a log line or a plan.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a secret could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "malformed reference `{0}`: expected `${{env:NAME}}` with NAME made of letters, digits and `_`"
    )]
    Malformed(String),
    #[error("environment variable `{0}` is not set (referenced as `${{env:{0}}}`)")]
    Unset(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

enum Part<'a> {
    Text(&'a str),
    Env(&'a str),
}

impl Secret {
    /// Checks every `${...}` reference in `text`.
    pub fn new(text: impl Into<String>) -> Result<Self, SecretError> {
        let s = Secret(text.into());
        s.parts()?;
        Ok(s)
    }

    /// The environment variables this secret reads.
    pub fn env_refs(&self) -> Vec<&str> {
        self.parts()
            .map(|p| {
                p.into_iter()
                    .filter_map(|p| match p {
                        Part::Env(n) => Some(n),
                        Part::Text(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value with every reference resolved from the environment. Call it at the
    /// point of use and never log the result.
    pub fn expose(&self) -> Result<String, SecretError> {
        self.expose_with(|name| std::env::var(name).ok())
    }

    pub fn expose_with(
        &self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, SecretError> {
        let mut out = String::with_capacity(self.0.len());
        for part in self.parts()? {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Env(n) => {
                    out.push_str(&lookup(n).ok_or_else(|| SecretError::Unset(n.to_owned()))?)
                }
            }
        }
        Ok(out)
    }

    /// The text exactly as written: `${env:NAME}` references unresolved, an inline
    /// password in clear. Only for the request that carries a fault to its agent
    /// and the agent's journal (a 0600 file it needs to revert after a crash),
    /// never for logs, reports or API answers.
    pub fn as_written(&self) -> &str {
        &self.0
    }

    /// The text as written, with an inline URL password masked. References stay as
    /// `${env:NAME}`: the name is not the secret.
    pub fn redacted(&self) -> String {
        mask_url_password(&self.0)
    }

    fn parts(&self) -> Result<Vec<Part<'_>>, SecretError> {
        let mut parts = Vec::new();
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(&rest[..start]));
            }
            let after = &rest[start..];
            let end = after
                .find('}')
                .ok_or_else(|| SecretError::Malformed(after.to_owned()))?;
            let reference = &after[..=end];
            let name = reference[2..end]
                .strip_prefix("env:")
                .filter(|n| {
                    !n.is_empty()
                        && !n.starts_with(|c: char| c.is_ascii_digit())
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                })
                .ok_or_else(|| SecretError::Malformed(reference.to_owned()))?;
            parts.push(Part::Env(name));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest));
        }
        Ok(parts)
    }
}

fn mask_url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = s[authority_start..]
        .find('/')
        .map_or(s.len(), |i| authority_start + i);
    let authority = &s[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else {
        return s.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.split_once(':') {
        Some((user, pass)) if !pass.starts_with("${env:") => {
            format!(
                "{}{user}:***{}",
                &s[..authority_start],
                &s[authority_start + at..]
            )
        }
        _ => s.to_owned(),
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Secret::new(s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialised as written (references unresolved, inline passwords masked).
        s.serialize_str(&self.redacted())
    }
}

impl JsonSchema for Secret {
    fn schema_name() -> Cow<'static, str> {
        "Secret".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "text that may reference the environment as `${env:NAME}`; never logged",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_never_shows_values() {
        let s = Secret::new("postgres://app:${env:PG_PASS}@db/app").unwrap();
        assert_eq!(s.env_refs(), vec!["PG_PASS"]);
        let v = s
            .expose_with(|n| (n == "PG_PASS").then(|| "hunter2".to_owned()))
            .unwrap();
        assert_eq!(v, "postgres://app:hunter2@db/app");
        assert!(!format!("{s} {s:?}").contains("hunter2"));
        assert_eq!(
            s.expose_with(|_| None).unwrap_err(),
            SecretError::Unset("PG_PASS".into())
        );
    }

    #[test]
    fn masks_inline_passwords_and_rejects_bad_refs() {
        let s = Secret::new("mysql://root:topsecret@127.0.0.1:3306/app").unwrap();
        assert_eq!(s.to_string(), "mysql://root:***@127.0.0.1:3306/app");
        assert!(!format!("{s:?}").contains("topsecret"));
        for bad in [
            "${PG}",
            "${env:}",
            "${env:1X}",
            "${env:A",
            "x${file:/etc/passwd}",
        ] {
            assert!(Secret::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
