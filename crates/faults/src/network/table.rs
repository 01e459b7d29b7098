//! The fault shared by every nftables kind: a named table, put in place by inject and
//! deleted by revert. Only the table name is journaled: deleting it by name is the
//! whole revert, whatever the rules were.

use serde::{Deserialize, Serialize};

use super::nft;
use crate::{BoxFuture, Fault, InjectError, Observation, RevertError};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recovery {
    table: String,
}

#[derive(Debug)]
pub struct NftTableFault {
    kind: &'static str,
    table: String,
    /// Chains and rules; `None` for a fault rebuilt from the journal, which can only
    /// be reverted.
    body: Option<String>,
}

impl NftTableFault {
    pub fn new(kind: &'static str, id: &str, body: String) -> Self {
        Self {
            kind,
            table: nft::table_name(id),
            body: Some(body),
        }
    }

    pub fn restore(kind: &'static str, recovery: &serde_json::Value) -> Result<Self, InjectError> {
        let r: Recovery =
            serde_json::from_value(recovery.clone()).map_err(|e| InjectError::BadRecovery {
                kind,
                reason: e.to_string(),
            })?;
        if !r.table.starts_with("faultline_")
            || !r
                .table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(InjectError::BadRecovery {
                kind,
                reason: format!("{:?} is not a faultline table name", r.table),
            });
        }
        Ok(Self {
            kind,
            table: r.table,
            body: None,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The ruleset this fault puts in place (for `--dry-run` style displays and tests).
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }
}

impl Fault for NftTableFault {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn recovery(&self) -> serde_json::Value {
        serde_json::json!({ "table": self.table })
    }

    fn inject(&mut self) -> BoxFuture<'_, Result<(), InjectError>> {
        Box::pin(async move {
            let Some(body) = &self.body else {
                return Err(InjectError::BadRecovery {
                    kind: self.kind,
                    reason: "a fault restored from the journal can only be reverted".into(),
                });
            };
            nft::replace_table(&self.table, body)
                .await
                .map_err(|e| InjectError::Failed {
                    kind: self.kind,
                    action: format!("nft add table inet {}", self.table),
                    reason: e.0,
                })?;
            tracing::info!(table = %self.table, kind = self.kind, "nft table in place");
            Ok(())
        })
    }

    fn revert(&mut self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            nft::delete_table(&self.table)
                .await
                .map_err(|e| RevertError::Failed {
                    kind: self.kind,
                    reason: e.0,
                    left: format!("`nft list table inet {}`", self.table),
                })
        })
    }

    fn verify_reverted(&self) -> BoxFuture<'_, Result<(), RevertError>> {
        Box::pin(async move {
            match nft::table_exists(&self.table).await {
                Ok(false) => Ok(()),
                Ok(true) => Err(RevertError::NotReverted {
                    kind: self.kind,
                    left: format!("nft table inet {}", self.table),
                }),
                Err(e) => Err(RevertError::Failed {
                    kind: self.kind,
                    reason: format!("cannot list the ruleset: {}", e.0),
                    left: format!("`nft list table inet {}`", self.table),
                }),
            }
        })
    }

    fn observe(&self) -> BoxFuture<'_, Observation> {
        Box::pin(async move {
            let present = nft::table_exists(&self.table).await;
            Observation {
                figures: serde_json::Value::Null,
                active: matches!(present, Ok(true)),
                detail: match present {
                    Ok(true) => format!("table inet {} present", self.table),
                    Ok(false) => format!("table inet {} absent", self.table),
                    Err(e) => format!("cannot list the ruleset: {}", e.0),
                },
            }
        })
    }
}
