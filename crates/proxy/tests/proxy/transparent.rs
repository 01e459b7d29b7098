//! Transparent mode in a network namespace and veth pair that the test creates
//! (and deletes on drop). Only addresses of that veth pair and loopback are
//! used; the nft table matches only the test's own interface or address.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use faultline_proxy::transparent::{Redirect, RedirectSpec, table_exists};
use faultline_proxy::{ProxyConfig, ProxyServer, ServerOptions, Stream, Toxic, ToxicKind};

use crate::util::echo_server;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
        panic!("cannot run {args:?}: {e}; transparent mode tests need root, iproute2 and nftables (apt-get install -y nftables)")
    })
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn require_tools() {
    let nft = Command::new("nft").arg("--version").output();
    assert!(
        nft.is_ok_and(|o| o.status.success()),
        "nft is missing; run: ./scripts/setup.sh (installs nftables)"
    );
}

/// A namespace `ns` holding veth end `peer` (10.237.X.Y+2/30) whose other end
/// `host` (10.237.X.Y+1/30) stays in the test's namespace. Deleted on drop.
struct VethNs {
    ns: String,
    host: String,
    host_ip: String,
    peer_ip: String,
}

impl VethNs {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = format!("flt-proxy-{pid}-{n}");
        let host = format!("fv{}{}a", pid % 1_000_000, n);
        let peer = format!("fv{}{}b", pid % 1_000_000, n);
        let (x, y) = (pid % 256, (n % 64) * 4);
        let host_ip = format!("10.237.{x}.{}", y + 1);
        let peer_ip = format!("10.237.{x}.{}", y + 2);
        must(&["ip", "netns", "add", &ns]);
        let me = Self {
            ns,
            host,
            host_ip,
            peer_ip,
        };
        must(&[
            "ip", "link", "add", &me.host, "type", "veth", "peer", "name", &peer,
        ]);
        must(&["ip", "link", "set", &peer, "netns", &me.ns]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.host_ip),
            "dev",
            &me.host,
        ]);
        must(&["ip", "link", "set", &me.host, "up"]);
        let exec = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", me.ns.as_str()];
            v.extend_from_slice(args);
            must(&v);
        };
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.peer_ip),
            "dev",
            &peer,
        ]);
        exec(&["ip", "link", "set", &peer, "up"]);
        exec(&["ip", "link", "set", "lo", "up"]);
        me
    }

    /// Runs a bash snippet inside the namespace; returns stdout and success.
    fn bash(&self, script: &str) -> (String, bool) {
        let out = run(&[
            "ip", "netns", "exec", &self.ns, "timeout", "5", "bash", "-c", script,
        ]);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }
}

/// Kills the child (which this test started) when the test ends, even on panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for VethNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host]);
        let _ = run(&["ip", "netns", "del", &self.ns]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_port_is_redirected_into_the_proxy_and_revert_restores() {
    require_tools();
    let net = VethNs::new();
    let echo = echo_server().await;
    let server = ProxyServer::new().unwrap();
    // The redirect rewrites to the incoming interface's address: listen there.
    let proxy = server
        .create(ProxyConfig::new(
            "tp",
            format!("{}:0", net.host_ip),
            echo.to_string(),
        ))
        .unwrap();
    proxy
        .add_toxic(Toxic::new(
            ToxicKind::LimitData(faultline_proxy::toxic::LimitData { bytes: 2 }),
            Stream::Downstream,
        ))
        .unwrap();
    let to_port = proxy.listen_addr().unwrap().port();
    let port = 7 + (std::process::id() % 1000) as u16 + 20000;
    let client = format!(
        "exec 3<>/dev/tcp/{}/{port} || exit 9; printf hello >&3; head -c 5 <&3",
        net.host_ip
    );

    // Before: nothing listens on that port.
    let (_, ok) = net.bash(&client);
    assert!(!ok, "port {port} must be closed before the redirect");

    let table = format!("faultline_test_{}", std::process::id());
    let mut spec = RedirectSpec::new(&table, port, to_port);
    spec.iifname = Some(net.host.clone());
    spec.local = false;
    let mut redirect = Redirect::install(&spec).unwrap();
    assert!(redirect.is_installed().unwrap());

    // Through the proxy: the limit_data toxic lets exactly 2 bytes back.
    let (out, _) = net.bash(&client);
    assert_eq!(out, "he", "traffic went through the proxy");

    redirect.revert().unwrap();
    assert!(!table_exists(None, &table).unwrap());
    redirect.revert().unwrap(); // idempotent
    let (_, ok) = net.bash(&client);
    assert!(!ok, "after revert the port is closed again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_are_redirected_and_proxy_traffic_is_excluded_by_mark() {
    require_tools();
    let net = VethNs::new();
    let mark = 0x0f17_0000 | (std::process::id() & 0xffff);
    let server = ProxyServer::with_options(ServerOptions {
        upstream_mark: Some(mark),
        ..ServerOptions::default()
    })
    .unwrap();
    // A real server inside the namespace at peer_ip:port; clients on this host
    // that dial it are redirected into the proxy, whose own upstream
    // connection to the same address is not (it carries the mark).
    let port = 21000 + (std::process::id() % 1000) as u16;
    let server_in_ns = std::process::Command::new("ip")
        .args(["netns", "exec", &net.ns, "python3", "-c"])
        .arg(format!(
            "import socket;s=socket.create_server((\"{}\",{port}));s.settimeout(10);c,_=s.accept();c.sendall(b\"from-ns:\"+c.recv(5))",
            net.peer_ip
        ))
        .spawn()
        .unwrap();
    let _server_in_ns = KillOnDrop(server_in_ns);
    let upstream = format!("{}:{port}", net.peer_ip);
    // Wait (bounded) until the namespace server listens.
    let mut ready = false;
    for _ in 0..100 {
        let (_, ok) = net.bash(&format!("ss -ltn | grep -q '{upstream}'"));
        if ok {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ready, "namespace server did not start");
    let proxy = server
        .create(ProxyConfig::new("tpl", "127.0.0.1:0", upstream.clone()))
        .unwrap();
    proxy
        .add_toxic(Toxic::new(
            ToxicKind::Latency(faultline_proxy::toxic::Latency {
                latency: 50,
                jitter: 0,
            }),
            Stream::Downstream,
        ))
        .unwrap();
    let mut spec = RedirectSpec::new(
        format!("faultline_tl_{}", std::process::id()),
        port,
        proxy.listen_addr().unwrap().port(),
    );
    spec.inbound = false;
    spec.daddr = Some(net.peer_ip.parse().unwrap());
    spec.exclude_mark = Some(mark);
    let mut redirect = Redirect::install(&spec).unwrap();

    let start = std::time::Instant::now();
    let mut sock = crate::util::connect(upstream.parse().unwrap()).await;
    use tokio::io::AsyncWriteExt;
    sock.write_all(b"hello").await.unwrap();
    let (data, _) = crate::util::read_to_end(&mut sock).await;
    assert_eq!(data, b"from-ns:hello");
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(50),
        "the latency toxic applied, so the proxy carried it"
    );
    redirect.revert().unwrap();
}
