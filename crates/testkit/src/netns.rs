//! Addresses that only the calling test uses: a unique loopback address, or a network
//! namespace joined to the host by a veth pair. Network tests target only these.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub(crate) fn unique_number() -> u32 {
    // Tests of several binaries run at once: mix the pid in.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(131) + n) % 60_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_do_not_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let a = unique_loopback();
            assert!(a.is_loopback() && a.octets()[3] != 0 && a.octets()[3] != 255);
            assert!(seen.insert(a), "{a} given twice");
        }
    }
}

/// An address in 127.77.0.0/16 no other test of this run uses. The whole of 127/8
/// is local on Linux, so a listener can bind it without setup.
pub fn unique_loopback() -> Ipv4Addr {
    // Never .0 or .255 in the last octet, and never two numbers on one address.
    let n = unique_number();
    Ipv4Addr::new(127, 77, (n / 254 % 256) as u8, (n % 254 + 1) as u8)
}

/// A network namespace with a veth pair: `host_ip` on this side, `ns_ip` inside.
/// Deleted (with its veth) on drop.
#[derive(Debug)]
pub struct NetNs {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip (install iproute2: scripts/setup.sh): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace; panics with the failing command if it cannot (needs
    /// CAP_NET_ADMIN).
    pub fn new() -> Self {
        let n = unique_number();
        let name = format!("fltest{n}");
        // One /30 of 10.213.0.0/16 per namespace.
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + (n % 16_384) * 4;
        let host_ip = Ipv4Addr::from(base + 1);
        let ns_ip = Ipv4Addr::from(u32::from(host_ip) + 1);
        let ns = Self {
            name: name.clone(),
            host_ip,
            ns_ip,
        };
        let (a, b) = (format!("flh{n}"), format!("fln{n}"));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                a.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                b.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                b.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host_ip}/30"),
                "dev".into(),
                a.clone(),
            ],
            vec!["link".into(), "set".into(), a, "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{ns_ip}/30"),
                "dev".into(),
                b.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                b,
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                panic!("network namespace fixture: {e}");
            }
        }
        ns
    }

    /// Runs `program args...` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}
