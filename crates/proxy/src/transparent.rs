//! Transparent mode: redirect a TCP port into a proxy listener with an
//! nftables table of its own, so clients that were never configured to use the
//! proxy go through it. One table per fault; revert deletes the table, which
//! removes every rule of the fault at once and touches nothing else.
//!
//! Limits: needs root (CAP_NET_ADMIN) and the `nft` binary (Debian package
//! `nftables`); rules are fed to `nft -f -` as one atomic transaction. The
//! `prerouting` hook catches traffic arriving from other hosts (the redirect
//! rewrites the destination to the primary address of the incoming interface,
//! so the proxy must listen there or on 0.0.0.0); the `output` hook catches
//! local clients (rewritten to 127.0.0.1). The proxy's own upstream traffic is
//! excluded by socket mark ([`crate::ServerOptions::upstream_mark`]).
//!
//! Ending a redirect without breaking the connections it already redirected:
//! [`Redirect::stop_redirecting`] replaces each chain's redirect rule with a
//! rule that only accepts (`ct state new accept`), in one transaction, keeping
//! the table and its `nat` chains. A redirected connection's NAT binding lives
//! in its conntrack entry; it is applied to the connection's later packets as
//! long as (a) the kernel's NAT hooks stay registered, which they do while any
//! `nat` chain of the family exists in the namespace, and (b) conntrack itself
//! stays hooked, which in a namespace without other conntrack users needs an
//! expression that uses it: the redirect held it, the `ct` rule replacing it
//! holds it on (with the rules merely flushed, an established redirected
//! connection's next packet goes untranslated to the service's port and is
//! reset; tested on Linux 6.18). New connections then go straight to the
//! service, while redirected ones keep being translated both ways (the proxy's
//! replies and FINs still reach their clients). Deleting the table removes
//! all of it: packets of connections still open are no longer translated, and
//! their clients hang or are reset. So: stop redirecting, drain the proxy
//! ([`crate::Proxy::drain`]), then revert.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::error::ProxyError;

/// What to redirect where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectSpec {
    /// nftables table name, unique per fault: `[A-Za-z0-9_]{1,32}`.
    pub table: String,
    /// TCP destination port to capture.
    pub port: u16,
    /// The proxy listener's port.
    pub to_port: u16,
    /// Only traffic to this address (default: any).
    pub daddr: Option<IpAddr>,
    /// Only traffic arriving on this interface (prerouting only).
    pub iifname: Option<String>,
    /// Capture traffic from other hosts (prerouting hook).
    pub inbound: bool,
    /// Capture locally generated traffic (output hook).
    pub local: bool,
    /// Packets carrying this mark are never redirected (the proxy's upstream).
    pub exclude_mark: Option<u32>,
    /// Run `nft` inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
}

impl RedirectSpec {
    /// Redirect inbound and local traffic for `port` to `to_port`.
    pub fn new(table: impl Into<String>, port: u16, to_port: u16) -> Self {
        Self {
            table: table.into(),
            port,
            to_port,
            daddr: None,
            iifname: None,
            inbound: true,
            local: true,
            exclude_mark: None,
            netns: None,
        }
    }

    fn validate(&self) -> Result<(), ProxyError> {
        let ok_name = |s: &str, max: usize| {
            !s.is_empty()
                && s.len() <= max
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !ok_name(&self.table, 32) || self.table.contains('-') {
            return Err(ProxyError::BadRequestBody(format!(
                "nft table name {:?} must be 1-32 of [A-Za-z0-9_]",
                self.table
            )));
        }
        if let Some(i) = &self.iifname
            && !ok_name(i, 15)
        {
            return Err(ProxyError::BadRequestBody(format!(
                "interface name {i:?} is not a valid interface name"
            )));
        }
        if let Some(n) = &self.netns
            && !ok_name(n, 64)
        {
            return Err(ProxyError::BadRequestBody(format!(
                "netns name {n:?} must be [A-Za-z0-9_-]"
            )));
        }
        if !self.inbound && !self.local {
            return Err(ProxyError::BadRequestBody(
                "a redirect needs inbound, local or both".into(),
            ));
        }
        Ok(())
    }

    /// The nft script: creates (or atomically replaces) the table.
    pub fn script(&self) -> String {
        let mut matchers = String::new();
        if let Some(d) = self.daddr {
            let fam = if d.is_ipv4() { "ip" } else { "ip6" };
            matchers.push_str(&format!("{fam} daddr {d} "));
        }
        matchers.push_str(&format!("tcp dport {} ", self.port));
        if let Some(m) = self.exclude_mark {
            matchers.push_str(&format!("meta mark != {m:#x} "));
        }
        let action = format!("redirect to :{}", self.to_port);
        let t = &self.table;
        // add + delete + add: one transaction that replaces a stale table of
        // the same fault instead of failing on it.
        let mut s = format!("add table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        if self.inbound {
            let iif = self
                .iifname
                .as_ref()
                .map(|i| format!("iifname \"{i}\" "))
                .unwrap_or_default();
            s.push_str(&format!(
                "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    {iif}{matchers}{action}\n  }}\n"
            ));
        }
        if self.local {
            s.push_str(&format!(
                "  chain output {{\n    type nat hook output priority -100; policy accept;\n    {matchers}{action}\n  }}\n"
            ));
        }
        s.push_str("}\n");
        s
    }
}

fn nft(netns: Option<&str>, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run nft: {e}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| format!("writing the nft script: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// An installed redirect. Reverted on [`Redirect::revert`] or, best effort, on drop.
#[derive(Debug)]
pub struct Redirect {
    table: String,
    netns: Option<String>,
    /// The table's chains (`prerouting`, `output`).
    chains: Vec<&'static str>,
    installed: bool,
}

impl Redirect {
    /// Installs the table (replacing a stale one of the same name).
    pub fn install(spec: &RedirectSpec) -> Result<Self, ProxyError> {
        spec.validate()?;
        nft(spec.netns.as_deref(), &["-f", "-"], Some(&spec.script())).map_err(|detail| {
            ProxyError::Nft {
                what: "install redirect table",
                detail,
            }
        })?;
        tracing::info!(table = %spec.table, port = spec.port, to_port = spec.to_port, "transparent redirect installed");
        let chains = [("prerouting", spec.inbound), ("output", spec.local)]
            .into_iter()
            .filter_map(|(c, on)| on.then_some(c))
            .collect();
        Ok(Self {
            table: spec.table.clone(),
            netns: spec.netns.clone(),
            chains,
            installed: true,
        })
    }

    /// Whether the table exists now.
    pub fn is_installed(&self) -> Result<bool, ProxyError> {
        table_exists(self.netns.as_deref(), &self.table)
    }

    /// Stops redirecting new connections, keeping the table and its chains so
    /// that connections already redirected keep being translated (see the
    /// module notes). [`Redirect::revert`] deletes the table afterwards.
    pub fn stop_redirecting(&self) -> Result<(), ProxyError> {
        nft(
            self.netns.as_deref(),
            &["-f", "-"],
            Some(&stop_script(&self.table, &self.chains)),
        )
        .map_err(|detail| ProxyError::Nft {
            what: "flush redirect table",
            detail,
        })?;
        tracing::info!(table = %self.table, "transparent redirect stopped for new connections");
        Ok(())
    }

    /// Deletes the table; idempotent (a missing table is success), verified.
    pub fn revert(&mut self) -> Result<(), ProxyError> {
        revert_table(self.netns.as_deref(), &self.table)?;
        self.installed = false;
        tracing::info!(table = %self.table, "transparent redirect reverted");
        Ok(())
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        if self.installed
            && let Err(e) = self.revert()
        {
            tracing::error!(table = %self.table, error = %e, "redirect table left behind");
        }
    }
}

/// The nft script that stops a redirect table redirecting: one transaction
/// replacing every rule with one that keeps conntrack in use (module notes).
fn stop_script(table: &str, chains: &[&str]) -> String {
    let mut s = format!("flush table inet {table}\n");
    for c in chains {
        s.push_str(&format!(
            "add rule inet {table} {c} ct state new accept comment \"faultline: redirect stopped, conntrack kept for redirected connections\"\n"
        ));
    }
    s
}

/// Whether the inet table exists.
pub fn table_exists(netns: Option<&str>, table: &str) -> Result<bool, ProxyError> {
    match nft(netns, &["list", "table", "inet", table], None) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("No such file") => Ok(false),
        Err(detail) => Err(ProxyError::Nft {
            what: "list table",
            detail,
        }),
    }
}

/// Deletes an inet table if present and verifies it is gone.
pub fn revert_table(netns: Option<&str>, table: &str) -> Result<(), ProxyError> {
    match nft(netns, &["delete", "table", "inet", table], None) {
        Ok(_) => {}
        Err(e) if e.contains("No such file") => {}
        Err(detail) => {
            return Err(ProxyError::Nft {
                what: "delete table",
                detail,
            });
        }
    }
    if table_exists(netns, table)? {
        return Err(ProxyError::Nft {
            what: "verify revert",
            detail: format!("table inet {table} still exists after delete"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_is_one_table_with_scoped_rules() {
        let mut spec = RedirectSpec::new("faultline_t1", 5432, 40000);
        spec.iifname = Some("veth0".into());
        spec.daddr = Some("10.1.2.3".parse().unwrap());
        spec.exclude_mark = Some(0xf17);
        let s = spec.script();
        assert!(s.starts_with("add table inet faultline_t1\ndelete table inet faultline_t1\n"));
        assert!(s.contains(
            "iifname \"veth0\" ip daddr 10.1.2.3 tcp dport 5432 meta mark != 0xf17 redirect to :40000"
        ));
        assert!(s.contains("type nat hook output priority -100"));
        assert!(RedirectSpec::new("bad name", 1, 2).validate().is_err());
        assert!(RedirectSpec::new("a-b", 1, 2).validate().is_err());
    }

    #[test]
    fn stopping_keeps_a_conntrack_rule_in_each_chain() {
        let s = stop_script("faultline_t1", &["prerouting", "output"]);
        assert!(s.starts_with("flush table inet faultline_t1\n"));
        assert!(s.contains("add rule inet faultline_t1 prerouting ct state new accept"));
        assert!(s.contains("add rule inet faultline_t1 output ct state new accept"));
        assert!(!s.contains("redirect to"));
    }
}
