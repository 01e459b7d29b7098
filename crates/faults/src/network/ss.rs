//! Cutting established TCP connections with `ss -K` (SOCK_DESTROY): both ends see the
//! connection fail at once instead of waiting for a timeout. Used by connection
//! faults with `kill_existing`; needs CAP_NET_ADMIN and a kernel with
//! CONFIG_INET_DIAG_DESTROY.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::process::Command;

/// Which connections to cut: those whose local or remote port is one of `ports`,
/// or whose remote address is `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Port(u16),
    /// Only sockets whose local port is this one (a proxy's accepted connections).
    SourcePort(u16),
    Peer(SocketAddr),
}

/// The `ss` arguments for a filter (separate argv entries: no shell involved).
pub fn args(filter: &Filter) -> Vec<String> {
    let mut a: Vec<String> = ["-K", "-t", "-n", "state", "established"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    match filter {
        Filter::Port(p) => {
            for t in [
                "(",
                "sport",
                "=",
                &format!(":{p}"),
                "or",
                "dport",
                "=",
                &format!(":{p}"),
                ")",
            ] {
                a.push(t.to_owned());
            }
        }
        Filter::SourcePort(p) => {
            a.extend(["sport".to_owned(), "=".to_owned(), format!(":{p}")]);
        }
        Filter::Peer(addr) => {
            a.extend(["dst".to_owned(), addr.to_string()]);
        }
    }
    a
}

/// Cuts the matching established connections; returns how many `ss` listed as cut.
pub async fn kill_connections(filter: &Filter) -> Result<usize, String> {
    let out = Command::new("ss")
        .args(args(filter))
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                "`ss` not found: install iproute2 (scripts/setup.sh does)".to_owned()
            } else {
                format!("cannot run ss: {e}")
            }
        })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    // First line is the header; each further line is a destroyed socket.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count())
}

/// Before a transparent redirect is removed, when draining could not end them
/// (the redirect could not be stopped, or connections outlived the drain's
/// reset): resets the connections the fault's proxy accepted (local port
/// `proxy_port`), so their clients see a reset at once. Once the table is gone a
/// redirected connection's packets are no longer translated: its client would
/// wait on a connection nobody answers until its own timeout. Best effort: a
/// failure is logged, never a reason to keep the fault.
pub async fn cut_redirected(kind: &'static str, proxy_port: u16) {
    let filter = Filter::SourcePort(proxy_port);
    match kill_connections(&filter).await {
        Ok(cut) => tracing::debug!(kind, proxy_port, cut, "redirected connections reset"),
        Err(reason) => {
            tracing::warn!(kind, proxy_port, %reason, "cannot reset redirected connections")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_filter_matches_both_ends() {
        let a = args(&Filter::Port(8080)).join(" ");
        assert_eq!(
            a,
            "-K -t -n state established ( sport = :8080 or dport = :8080 )"
        );
    }

    #[test]
    fn source_port_filter_matches_only_the_local_end() {
        let a = args(&Filter::SourcePort(41000)).join(" ");
        assert_eq!(a, "-K -t -n state established sport = :41000");
    }

    #[tokio::test]
    async fn cuts_an_established_loopback_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (_server, _) = listener.accept().await.expect("accept");
        let cut = kill_connections(&Filter::Port(port))
            .await
            .expect("ss -K runs");
        assert!(cut >= 1, "ss -K cut nothing");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), client.read(&mut buf))
            .await
            .expect("the cut connection answers at once");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "connection still open: {read:?}"
        );
    }
}
