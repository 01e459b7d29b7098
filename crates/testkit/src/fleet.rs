//! A fleet of real `faultline agent` processes, each in a network namespace of
//! its own with its own address, on one bridge the harness creates: the bridge
//! holds `.1` of a /24 of 10.214.0.0/16 that no other harness uses (the
//! controller listens there), agent `i` is `.(i + 2)` behind a veth pair, and
//! every agent registers with the controller by `--controller` and a join token.
//!
//! Names carry the harness number and the owning pid (`flfleet-<k>-<i>-p<pid>`
//! namespaces, `flfb<k>` bridges, `flf<k>h<i>` veths), so [`cleanup_leftovers`]
//! can find and remove what a killed test left (its pid is gone) without
//! touching a live harness. Everything is torn down on drop: agents are stopped
//! (SIGTERM, which reverts their faults; SIGKILL after 3 s), namespaces and the
//! bridge deleted. Network setup goes through two `ip -batch` calls plus one per
//! namespace, so 200 agents cost seconds, not minutes. Every wait is bounded.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, Stdio};
use std::time::{Duration, Instant};

/// The most agents one harness holds (a /24 less the bridge, network and broadcast).
pub const MAX_AGENTS: usize = 250;
/// The port every agent listens on inside its namespace.
pub const AGENT_PORT: u16 = 7600;
const PREFIX: &str = "flfleet-";

/// What to start.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The `faultline` binary.
    pub binary: PathBuf,
    pub agents: usize,
    /// Agent ids are `<id_prefix><i>`, i from 0.
    pub id_prefix: String,
    /// Labels of agent `i`.
    pub labels: fn(usize) -> Vec<(String, String)>,
    /// A static token every agent also accepts, so tests and benches can ask the
    /// agents themselves (besides the controller's api token).
    pub agent_token: String,
    /// Extra environment for the agents (e.g. `FAULTLINE_LOG`).
    pub env: Vec<(String, String)>,
}

impl FleetSpec {
    pub fn new(binary: impl Into<PathBuf>, agents: usize) -> Self {
        FleetSpec {
            binary: binary.into(),
            agents,
            id_prefix: "agent-".to_owned(),
            labels: |_| vec![("role".to_owned(), "worker".to_owned())],
            agent_token: "fleet-test-agent-token".to_owned(),
            env: Vec::new(),
        }
    }
}

/// One agent of the fleet.
#[derive(Debug)]
pub struct FleetAgent {
    pub id: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub labels: Vec<(String, String)>,
    process: Option<Process>,
}

impl FleetAgent {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, AGENT_PORT))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::id)
    }

    /// `kill -9`: no chance to revert or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Runs `program args...` inside the agent's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns, program]);
        c
    }
}

/// The bridge and namespaces, without agents yet: create it, start the
/// controller on [`FleetNet::controller_ip`], then [`FleetNet::start`] the agents.
#[derive(Debug)]
pub struct FleetNet {
    pub number: u8,
    pub bridge: String,
    /// The bridge's address: where the controller listens.
    pub controller_ip: Ipv4Addr,
    dir: tempfile_dir::Dir,
    namespaces: Vec<String>,
}

/// A fleet: the net plus running agents.
#[derive(Debug)]
pub struct Fleet {
    pub agents: Vec<FleetAgent>,
    /// When the first agent process was spawned.
    pub spawned_at: Instant,
    net: FleetNet,
}

fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip (install iproute2: scripts/setup.sh): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch{}: {}",
            netns.map(|n| format!(" -n {n}")).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces and bridges of harnesses whose process is gone (a
/// test killed before its drop ran); answers what it removed.
pub fn cleanup_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    let list = ip(&["netns", "list"]).unwrap_or_default();
    let mut dead_numbers = std::collections::BTreeSet::new();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // <k>-<i>-p<pid>
        let mut parts = rest.split('-');
        let (Some(k), Some(_), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(pid) = pid.strip_prefix('p').and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            if ip(&["netns", "del", name]).is_ok() {
                removed.push(name.to_owned());
            }
            if let Ok(k) = k.parse::<u8>() {
                dead_numbers.insert(k);
            }
        }
    }
    for k in dead_numbers {
        let bridge = format!("flfb{k}");
        if owner_of_bridge(&bridge).is_none_or(|pid| !pid_alive(pid))
            && ip(&["link", "del", &bridge]).is_ok()
        {
            removed.push(bridge);
        }
    }
    removed
}

/// The pid recorded in a bridge's alias (`faultline-fleet-p<pid>`).
fn owner_of_bridge(bridge: &str) -> Option<u32> {
    let out = ip(&["-o", "link", "show", bridge]).ok()?;
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("faultline-fleet-p"))
        .and_then(|p| p.trim_end_matches('\\').parse().ok())
}

impl FleetNet {
    /// Creates the bridge and `agents` namespaces; panics with the failing
    /// command if it cannot (needs CAP_NET_ADMIN).
    pub fn new(agents: usize) -> Self {
        assert!(
            (1..=MAX_AGENTS).contains(&agents),
            "1 to {MAX_AGENTS} agents per harness"
        );
        cleanup_leftovers();
        let pid = std::process::id();
        // A free number: no bridge of that name and no address of that /24.
        let addrs = ip(&["-4", "-o", "addr", "show"]).unwrap_or_default();
        let links = ip(&["-o", "link", "show"]).unwrap_or_default();
        let start = (crate::netns::unique_number() % 256) as u8;
        let number = (0..=255u8)
            .map(|o| start.wrapping_add(o))
            .find(|k| {
                !links.contains(&format!(" flfb{k}:")) && !addrs.contains(&format!(" 10.214.{k}."))
            })
            .expect("a free fleet subnet in 10.214.0.0/16");
        let bridge = format!("flfb{number}");
        let controller_ip = Ipv4Addr::new(10, 214, number, 1);
        let mut host = format!(
            "link add {bridge} type bridge\nlink set {bridge} alias faultline-fleet-p{pid}\naddr add {controller_ip}/24 dev {bridge}\nlink set {bridge} up\n"
        );
        let mut namespaces = Vec::with_capacity(agents);
        for i in 0..agents {
            let ns = format!("{PREFIX}{number}-{i}-p{pid}");
            let (h, n) = (format!("flf{number}h{i}"), format!("flf{number}n{i}"));
            host.push_str(&format!(
                "netns add {ns}\nlink add {h} type veth peer name {n} netns {ns}\nlink set {h} master {bridge}\nlink set {h} up\n"
            ));
            namespaces.push(ns);
        }
        let net = FleetNet {
            number,
            bridge,
            controller_ip,
            dir: tempfile_dir::Dir::new(&format!("faultline-fleet-{number}-{pid}")),
            namespaces,
        };
        // From here on, drop cleans up whatever was made.
        if let Err(e) = ip_batch(None, &host) {
            panic!("fleet network: {e}");
        }
        for (i, ns) in net.namespaces.iter().enumerate() {
            let addr = net.agent_ip(i);
            let inside = format!(
                "addr add {addr}/24 dev flf{number}n{i}\nlink set flf{number}n{i} up\nlink set lo up\n"
            );
            if let Err(e) = ip_batch(Some(ns), &inside) {
                panic!("fleet network, namespace {ns}: {e}");
            }
        }
        net
    }

    pub fn agent_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.number, u8::try_from(i + 2).expect("< 254"))
    }

    /// A scratch directory removed with the harness (state dirs, token files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts one agent per namespace, all at once, registering with
    /// `controller` (a URL the namespaces reach: the bridge address) with the
    /// join token in `join_token_file`.
    pub fn start(self, spec: &FleetSpec, controller: &str, join_token_file: &Path) -> Fleet {
        assert_eq!(
            spec.agents,
            self.namespaces.len(),
            "one agent per namespace"
        );
        let token_file = self.dir().join("agent-token");
        std::fs::write(&token_file, &spec.agent_token).expect("agent token file");
        let mut agents = Vec::with_capacity(spec.agents);
        let spawned_at = Instant::now();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let ip = self.agent_ip(i);
            let id = format!("{}{i}", spec.id_prefix);
            let labels = (spec.labels)(i);
            let labels_arg = labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let state = self.dir().join(format!("state-{i}"));
            let log = std::fs::File::create(self.dir().join(format!("agent-{i}.log")))
                .expect("agent log");
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns])
                .arg(&spec.binary)
                .arg("agent")
                .args(["--listen", &format!("{ip}:{AGENT_PORT}")])
                .args(["--advertise", &format!("{ip}:{AGENT_PORT}")])
                .args(["--id", &id])
                .args(["--controller", controller])
                .arg("--join-token-file")
                .arg(join_token_file)
                .arg("--token-file")
                .arg(&token_file)
                .arg("--state-dir")
                .arg(&state);
            if !labels_arg.is_empty() {
                cmd.args(["--labels", &labels_arg]);
            }
            for (k, v) in &spec.env {
                cmd.env(k, v);
            }
            let process = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn faultline agent");
            agents.push(FleetAgent {
                id,
                netns: ns.clone(),
                ip,
                labels,
                process: Some(process),
            });
        }
        Fleet {
            agents,
            spawned_at,
            net: self,
        }
    }
}

impl Fleet {
    pub fn net(&self) -> &FleetNet {
        &self.net
    }

    pub fn agent(&self, id: &str) -> Option<&FleetAgent> {
        self.agents.iter().find(|a| a.id == id)
    }

    pub fn agent_mut(&mut self, id: &str) -> Option<&mut FleetAgent> {
        self.agents.iter_mut().find(|a| a.id == id)
    }

    /// An agent's stderr so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.net.dir().join(format!("agent-{i}.log"))).unwrap_or_default()
    }

    /// Polls the controller at `api` (with `token`) until every agent of the
    /// fleet is registered and alive, at most `within` ([`alive_ids`]); answers
    /// how long it took from the spawn of the first agent, or the ids still
    /// missing.
    pub fn await_registered(
        &self,
        api: SocketAddr,
        token: &str,
        within: Duration,
    ) -> Result<Duration, Vec<String>> {
        let deadline = Instant::now() + within;
        loop {
            let alive = alive_ids(api, token);
            let missing: Vec<String> = self
                .agents
                .iter()
                .filter(|a| a.process.is_some() && !alive.contains(&a.id))
                .map(|a| a.id.clone())
                .collect();
            if missing.is_empty() {
                return Ok(self.spawned_at.elapsed());
            }
            if Instant::now() >= deadline {
                return Err(missing);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The ids the controller would select from now (`GET /v1/fleet/snapshot`: the
/// alive registered agents and its inventory's), empty on any error. Cheap: the
/// store only, no agent is asked, so polling it does not load the fleet.
pub fn alive_ids(api: SocketAddr, token: &str) -> Vec<String> {
    match http_json(api, "GET", "/v1/fleet/snapshot", token, "") {
        Ok((200, snap)) => snap["inventory"]["agents"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The ids `GET /v1/agents` lists as registered and alive: the controller's
/// full view, each agent asked (empty on any error).
pub fn listed_alive(api: SocketAddr, token: &str) -> Vec<String> {
    match http_json(api, "GET", "/v1/agents", token, "") {
        Ok((200, serde_json::Value::Array(list))) => list
            .iter()
            .filter(|a| a["source"] == "registry" && a["state"] == "alive")
            .filter_map(|a| a["name"].as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// One HTTP/1.1 request with a bearer token and a JSON (or empty) body; the
/// status and the JSON answer. Bounded by a 10 s timeout; no chunked bodies
/// (the controller and agents answer with a length).
pub fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))?;
    let text = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.to_owned()));
    Ok((status, json))
}

impl Drop for FleetNet {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // Deleting the namespace deletes its veth pair.
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // SIGTERM: an agent reverts what it holds before it exits.
        for a in &self.agents {
            if let Some(p) = &a.process {
                let _ = Command::new("kill")
                    .args(["-TERM", &p.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for a in &mut self.agents {
            if let Some(mut p) = a.process.take() {
                loop {
                    match p.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = p.kill();
                            let _ = p.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        // Then the net (FleetNet's drop).
    }
}

/// A temporary directory without a tempfile dependency in the shipped graph
/// (testkit is dev-only, but keeps its own dependencies few).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("fleet scratch directory");
            Dir(path)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_owners_are_removed_and_live_ones_kept() {
        // A namespace named for a pid that cannot exist (beyond pid_max).
        let dead = format!("{PREFIX}250-0-p4294967");
        let live = format!("{PREFIX}251-0-p{}", std::process::id());
        ip(&["netns", "add", &dead]).expect("ip netns add (needs CAP_NET_ADMIN)");
        ip(&["netns", "add", &live]).expect("ip netns add");
        let removed = cleanup_leftovers();
        let list = ip(&["netns", "list"]).unwrap_or_default();
        let _ = ip(&["netns", "del", &live]);
        assert!(removed.contains(&dead), "{removed:?}");
        assert!(!list.contains(&dead));
        assert!(list.contains(&live), "a live harness is left alone");
    }
}
