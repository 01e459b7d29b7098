//! The agent with real processes, real nftables tables and real sockets: the API
//! contract, auth, leases, and kill -9 at each failpoint followed by a restart.
//! One integration binary (cheap to link); every wait is bounded.

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faultline_agent::{AgentConfig, RunningAgent, Token};
use faultline_testkit::{Child, eventually, unique_loopback};
use serde_json::{Value, json};

const TOKEN: &str = "test-token-0123456789";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn start(state: &Path, token: Option<&str>) -> RunningAgent {
    faultline_agent::start(AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: Token::new(token.map(str::to_owned)),
        state_dir: state.to_owned(),
        labels: [("role".to_owned(), "test".to_owned())].into(),
        tls: None,
        register: None,
    })
    .await
    .expect("agent starts")
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: client(),
        }
    }
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn put(&self, id: &str, body: Value) -> (u16, Value) {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/faults/{id}"),
            Some(body),
        )
        .await
    }
}

fn journal_files(state: &Path) -> Vec<String> {
    std::fs::read_dir(state.join("journal"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_is_a_4xx_json_error_and_nothing_is_journaled() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = start(state.path(), Some(TOKEN)).await;
    let api = Api::new(agent.local_addr);
    let child = Child::sleep();

    let cases = [
        (
            "a",
            json!({"kind": "process.freeze", "params": {"pid": child.pid()}, "lease": "2s"}),
            422,
            "unknown_kind",
        ),
        (
            "a",
            json!({"kind": "process.pause", "params": {"pid": "x"}, "lease": "2s"}),
            400,
            "bad_params",
        ),
        (
            "a",
            json!({"kind": "process.pause", "params": {"pid": child.pid(), "bogus": 1}, "lease": "2s"}),
            400,
            "bad_params",
        ),
        (
            "a",
            json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "2"}),
            400,
            "bad_request",
        ),
        (
            "a",
            json!({"kind": "process.pause", "params": {"pid": i32::MAX}, "lease": "2s"}),
            422,
            "no_target",
        ),
        (
            "a",
            json!({"kind": "process.pause", "params": {}, "lease": "2s"}),
            400,
            "bad_params",
        ),
        (
            "a",
            // Every kind is wired; some parameters are not (the shim delays
            // launches and syncs together).
            json!({"kind": "gpu.slow", "params": {"delay": "10ms", "calls": "launch"}, "lease": "2s"}),
            422,
            "unsupported",
        ),
        (
            "a b",
            json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "2s"}),
            400,
            "bad_id",
        ),
    ];
    for (id, body, status, error) in cases {
        let (got, resp) = api.put(&id.replace(' ', "%20"), body.clone()).await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert_eq!(resp["error"], error, "{body} -> {resp}");
        assert!(
            resp["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{resp}"
        );
        assert!(
            journal_files(state.path()).is_empty(),
            "{body} journaled something"
        );
        assert!(!child.is_stopped(), "{body} injected something");
    }

    // Same id, different body: 409, the first fault untouched.
    let body = json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "30s"});
    assert_eq!(api.put("p", body).await.0, 201);
    let other = Child::sleep();
    let (status, resp) = api
        .put(
            "p",
            json!({"kind": "process.pause", "params": {"pid": other.pid()}, "lease": "30s"}),
        )
        .await;
    assert_eq!(status, 409, "{resp}");
    assert_eq!(resp["error"], "conflict");
    assert!(!other.is_stopped());
    assert_eq!(journal_files(state.path()), ["p.json"]);
    agent.shutdown().await;
    assert!(!child.is_stopped());
}

#[tokio::test]
async fn put_is_idempotent_renew_extends_delete_reverts() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = start(state.path(), Some(TOKEN)).await;
    let api = Api::new(agent.local_addr);
    let child = Child::sleep();
    let body = json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "30s"});

    let (status, view) = api.put("pause-1", body.clone()).await;
    assert_eq!(status, 201, "{view}");
    assert_eq!(view["kind"], "process.pause");
    assert_eq!(view["lease"], "30s");
    assert!(
        child.is_stopped() || eventually(Duration::from_secs(2), async || child.is_stopped()).await
    );
    let (status, _) = api.put("pause-1", body.clone()).await;
    assert_eq!(status, 200, "same id + same body = same fault");

    let (status, list) = api.call(reqwest::Method::GET, "/v1/faults", None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    let (status, renewed) = api
        .call(
            reqwest::Method::POST,
            "/v1/faults/pause-1/renew",
            Some(json!({"lease": "60s"})),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert!(
        renewed["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 30_000),
        "{renewed}"
    );
    let (status, _) = api
        .call(reqwest::Method::POST, "/v1/faults/nope/renew", None)
        .await;
    assert_eq!(status, 404);

    let (status, health) = api.call(reqwest::Method::GET, "/v1/health", None).await;
    assert_eq!(status, 200);
    assert_eq!(health["labels"]["role"], "test");
    assert_eq!(health["active"], 1);
    for kind in [
        "process.pause",
        "http.error",
        "http.delay",
        "http.rate_limit",
        "http.queue",
        "http.stream_stall",
        "http.stream_slow",
        "http.stream_truncate",
        "network.bandwidth",
        "network.skew",
    ] {
        assert!(
            health["capabilities"]
                .as_array()
                .is_some_and(|c| c.contains(&json!(kind))),
            "{kind} not in {health}"
        );
    }

    let (status, resp) = api
        .call(reqwest::Method::DELETE, "/v1/faults/pause-1", None)
        .await;
    assert_eq!((status, &resp["reverted"]), (200, &json!(true)));
    assert!(!child.is_stopped());
    let (status, resp) = api
        .call(reqwest::Method::DELETE, "/v1/faults/pause-1", None)
        .await;
    assert_eq!(
        (status, &resp["reverted"]),
        (200, &json!(false)),
        "DELETE is idempotent"
    );
    assert!(journal_files(state.path()).is_empty());

    let (_, metrics) = api.call(reqwest::Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    for line in [
        "faultline_agent_injects_total 1",
        "faultline_agent_reverts_total 1",
        "faultline_agent_active_faults 0",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    agent.shutdown().await;
}

#[tokio::test]
async fn missing_or_wrong_token_gets_401() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = start(state.path(), Some(TOKEN)).await;
    let http = client();
    let child = Child::sleep();
    let url = format!("http://{}/v1/faults/x", agent.local_addr);
    let body = json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "5s"});
    for auth in [None, Some("wrong"), Some("test-token-012345678"), Some("")] {
        let mut req = http.put(&url).json(&body);
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status().as_u16(), 401, "token {auth:?}");
        let v: Value = resp.json().await.expect("json error");
        assert_eq!(v["error"], "unauthorized");
    }
    for path in ["/v1/health", "/metrics", "/v1/faults"] {
        let resp = http
            .get(format!("http://{}{path}", agent.local_addr))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 401, "{path}");
    }
    assert!(!child.is_stopped());
    assert!(journal_files(state.path()).is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn refuses_to_listen_beyond_loopback_without_a_token() {
    let state = tempfile::tempdir().expect("tempdir");
    let err = faultline_agent::start(AgentConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        token: Token::new(None),
        state_dir: state.path().to_owned(),
        labels: Default::default(),
        tls: None,
        register: None,
    })
    .await
    .expect_err("refused");
    assert!(err.to_string().contains("without a token"), "{err}");
}

#[tokio::test]
async fn a_lapsed_lease_is_reverted_within_a_second() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = start(state.path(), Some(TOKEN)).await;
    let api = Api::new(agent.local_addr);
    let child = Child::sleep();
    let listener = std::net::TcpListener::bind((unique_loopback(), 0)).expect("bind");
    let peer = listener.local_addr().expect("addr");
    let lease = Duration::from_millis(600);
    let sent = Instant::now();
    let (s1, _) = api
        .put(
            "lapse-pause",
            json!({"kind": "process.pause", "params": {"pid": child.pid()}, "lease": "600ms"}),
        )
        .await;
    let (s2, v) = api
        .put("lapse-part", json!({"kind": "network.partition", "params": {"peers": [peer.ip().to_string()]}, "lease": "600ms"}))
        .await;
    assert_eq!((s1, s2), (201, 201), "{v}");
    let table = faultline_faults::network::nft::table_name("lapse-part");
    assert!(
        faultline_faults::network::nft::table_exists(&table)
            .await
            .expect("nft")
    );
    assert!(
        eventually(lease + Duration::from_secs(1), async || {
            !child.is_stopped()
                && !faultline_faults::network::nft::table_exists(&table)
                    .await
                    .unwrap_or(true)
        })
        .await,
        "not reverted within lease + 1 s"
    );
    assert!(sent.elapsed() >= lease, "reverted before the lease lapsed");
    // The reaper counts once both reverts are verified: moments after the effects go.
    let counted = eventually(Duration::from_secs(1), async || {
        agent
            .manager
            .metrics
            .encode()
            .contains("faultline_agent_lease_lapses_total 2")
    })
    .await;
    assert!(counted, "{}", agent.manager.metrics.encode());
    assert!(journal_files(state.path()).is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn halt_reverts_everything_and_says_what() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = start(state.path(), Some(TOKEN)).await;
    let api = Api::new(agent.local_addr);
    let children: Vec<Child> = (0..5).map(|_| Child::sleep()).collect();
    for (i, c) in children.iter().enumerate() {
        let (s, v) = api
            .put(
                &format!("h{i}"),
                json!({"kind": "process.pause", "params": {"pid": c.pid()}, "lease": "30s"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    let (status, report) = api.call(reqwest::Method::POST, "/v1/halt", None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["reverted"], json!(["h0", "h1", "h2", "h3", "h4"]));
    assert!(children.iter().all(|c| !c.is_stopped()));
    assert!(journal_files(state.path()).is_empty());
    agent.shutdown().await;
}

// === kill -9 at each failpoint, then restart ===

struct AgentProcess {
    child: std::process::Child,
    addr: SocketAddr,
}

impl AgentProcess {
    fn spawn(state: &Path, failpoints: Option<&str>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_faultline-agent-testbin"));
        cmd.args(["127.0.0.1:0", &state.to_string_lossy(), TOKEN])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("FAILPOINTS");
        if let Some(fp) = failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        let mut child = cmd.spawn().expect("spawn the agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(addr) = line.strip_prefix("listening ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the agent says where it listens")
            .parse()
            .expect("addr");
        Self { child, addr }
    }

    fn kill9(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9");
        self.child.wait().expect("reap");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn journal_state(state: &Path, id: &str) -> Option<String> {
    let text = std::fs::read_to_string(state.join("journal").join(format!("{id}.json"))).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["state"].as_str().map(str::to_owned)
}

/// One fault kind under test: how to ask for it, and what it looks like from outside.
enum Target {
    Pause(Child),
    Partition(String),
    /// A latency proxy listening here (the upstream need not exist).
    Proxy(SocketAddr),
    /// An http.error capturing this port transparently; the listener holds the
    /// port so no other test's traffic is redirected.
    HttpTransparent(std::net::TcpListener),
}

impl Target {
    fn body(&self, id: &str) -> Value {
        let _ = id;
        match self {
            Target::Pause(c) => {
                json!({"kind": "process.pause", "params": {"pid": c.pid()}, "lease": "60s"})
            }
            Target::Partition(peer) => {
                json!({"kind": "network.partition", "params": {"peers": [peer]}, "lease": "60s"})
            }
            Target::Proxy(listen) => json!({
                "kind": "network.latency",
                "params": {"listen": listen.to_string(), "upstream": "127.0.0.1:9", "delay": "100ms"},
                "lease": "60s"
            }),
            Target::HttpTransparent(l) => json!({
                "kind": "http.error",
                "params": {"port": l.local_addr().expect("addr").port(), "status": 503},
                "lease": "60s"
            }),
        }
    }
    async fn injected(&self, id: &str) -> bool {
        match self {
            Target::Pause(c) => c.is_stopped(),
            Target::Partition(_) => faultline_faults::network::nft::table_exists(
                &faultline_faults::network::nft::table_name(id),
            )
            .await
            .expect("nft"),
            Target::Proxy(listen) => std::net::TcpStream::connect(listen).is_ok(),
            // The redirect table outlives the agent's process: the journal's job.
            Target::HttpTransparent(_) => faultline_faults::network::nft::table_exists(
                &faultline_faults::network::proxied::redirect_table(id),
            )
            .await
            .expect("nft"),
        }
    }
}

async fn crash_at(failpoint: &str, target: Target) {
    let state = tempfile::tempdir().expect("tempdir");
    let id = format!("crash-{}-{}", failpoint, std::process::id());
    let agent = AgentProcess::spawn(state.path(), Some(&format!("{failpoint}=pause")));
    let api = Api::new(agent.addr);
    let body = target.body(&id);

    // Drive the agent to the failpoint; the request that hits it never returns.
    let http = client();
    let url = format!("{}/v1/faults/{id}", api.base);
    if failpoint == "mid-revert" {
        let (s, v) = api.put(&id, body.clone()).await;
        assert_eq!(s, 201, "{v}");
        let _hung = tokio::spawn(http.delete(url).bearer_auth(TOKEN).send());
    } else {
        let _hung = tokio::spawn(http.put(url).bearer_auth(TOKEN).json(&body).send());
    }
    let reached = eventually(Duration::from_secs(10), async || match failpoint {
        "journaled-not-injected" => journal_state(state.path(), &id).as_deref() == Some("intent"),
        "injected-not-journaled-active" => {
            journal_state(state.path(), &id).as_deref() == Some("intent")
                && target.injected(&id).await
        }
        _ => journal_state(state.path(), &id).as_deref() == Some("reverting"),
    })
    .await;
    assert!(reached, "the agent never reached {failpoint}");
    if failpoint != "journaled-not-injected" {
        assert!(
            target.injected(&id).await,
            "the fault should be in place at {failpoint}"
        );
    }
    let old = agent.addr;
    agent.kill9();

    // Restart on the same state dir: it reverts what the journal holds before serving.
    let agent = AgentProcess::spawn(state.path(), None);
    assert!(
        !target.injected(&id).await,
        "{failpoint}: the fault survived kill -9 and restart"
    );
    assert!(
        journal_files(state.path()).is_empty(),
        "{failpoint}: journal not emptied"
    );
    assert!(
        std::net::TcpStream::connect(old).is_err() || old.port() == agent.addr.port(),
        "the dead agent's listener is gone"
    );
    let (status, list) = Api::new(agent.addr)
        .call(reqwest::Method::GET, "/v1/faults", None)
        .await;
    assert_eq!((status, list), (200, json!([])));
}

fn partition_peer() -> String {
    unique_loopback().to_string()
}

#[tokio::test]
async fn kill_9_journaled_not_injected_pause() {
    crash_at("journaled-not-injected", Target::Pause(Child::sleep())).await;
}

#[tokio::test]
async fn kill_9_injected_not_journaled_active_pause() {
    crash_at(
        "injected-not-journaled-active",
        Target::Pause(Child::sleep()),
    )
    .await;
}

#[tokio::test]
async fn kill_9_mid_revert_pause() {
    crash_at("mid-revert", Target::Pause(Child::sleep())).await;
}

#[tokio::test]
async fn kill_9_journaled_not_injected_partition() {
    crash_at(
        "journaled-not-injected",
        Target::Partition(partition_peer()),
    )
    .await;
}

#[tokio::test]
async fn kill_9_injected_not_journaled_active_partition() {
    crash_at(
        "injected-not-journaled-active",
        Target::Partition(partition_peer()),
    )
    .await;
}

#[tokio::test]
async fn kill_9_mid_revert_partition() {
    crash_at("mid-revert", Target::Partition(partition_peer())).await;
}

fn proxy_listen() -> SocketAddr {
    let l = std::net::TcpListener::bind((unique_loopback(), 0)).expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn kill_9_injected_not_journaled_active_leaves_no_proxy_listener() {
    crash_at(
        "injected-not-journaled-active",
        Target::Proxy(proxy_listen()),
    )
    .await;
}

#[tokio::test]
async fn kill_9_mid_revert_leaves_no_proxy_listener() {
    crash_at("mid-revert", Target::Proxy(proxy_listen())).await;
}

#[tokio::test]
async fn kill_9_injected_not_journaled_active_leaves_no_http_redirect() {
    let port = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    crash_at(
        "injected-not-journaled-active",
        Target::HttpTransparent(port),
    )
    .await;
}

#[tokio::test]
async fn kill_9_mid_revert_leaves_no_http_redirect() {
    let port = std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    crash_at("mid-revert", Target::HttpTransparent(port)).await;
}
