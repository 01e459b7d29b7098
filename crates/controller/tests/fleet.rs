//! The registry over real HTTP: which token opens which door (join token:
//! registration only; agent token: its own heartbeats only; API tokens: never
//! registration), token rotation on re-registration, the api token an agent is
//! given being the documented HMAC, and a real agent (the agent crate's
//! `start` with `register`) registering, refusing requests until it has its
//! token, and being reached by the controller with it. Every wait is bounded.

use std::time::Duration;

use faultline_agent::register::RegisterConfig;
use faultline_controller::fleet::FleetSecret;
use faultline_controller::service::{self, ApiToken, Role, Service, ServiceConfig};
use serde_json::{Value, json};

const ADMIN: &str = "fleet-admin-token";
const JOIN: &str = "fleet-join-token";

struct Fx {
    _svc: Service,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

async fn fixture(join: bool) -> Fx {
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = ServiceConfig::new(
        format!("sqlite://{}/runs.db", dir.path().display()),
        dir.path().join("state"),
    );
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.tokens = vec![ApiToken::new("root", Role::Admin, ADMIN)];
    if join {
        std::fs::write(dir.path().join("join"), format!("{JOIN}\n")).expect("join file");
        c.fleet.join_token_file = Some(dir.path().join("join"));
    }
    std::fs::write(dir.path().join("secret"), "s".repeat(40)).expect("secret file");
    c.fleet.secret_file = Some(dir.path().join("secret"));
    c.fleet.heartbeat = Duration::from_millis(200);
    let svc = service::start(c).await.expect("service starts");
    Fx {
        base: format!("http://{}", svc.local_addr()),
        _svc: svc,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
        dir,
    }
}

impl Fx {
    async fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let method: reqwest::Method = method.parse().expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if !body.is_null() {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn registration(id: &str) -> Value {
    json!({
        "id": id,
        "url": "http://127.0.0.1:9",
        "labels": { "role": "worker" },
        "capabilities": ["network.partition"],
        "version": "0.1.0",
        "host": { "hostname": "h", "os": "linux", "kernel": "6.1", "cpus": 2 }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_opens_only_its_own_door() {
    let fx = fixture(true).await;
    // API tokens do not register agents; nor does nothing.
    let (code, body) = fx
        .call("POST", "/v1/agents/register", ADMIN, registration("w1"))
        .await;
    assert_eq!(code, 401, "{body}");
    let (code, _) = fx
        .call("POST", "/v1/agents/register", "", registration("w1"))
        .await;
    assert_eq!(code, 401);
    // The join token does.
    let (code, r) = fx
        .call("POST", "/v1/agents/register", JOIN, registration("w1"))
        .await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(
        (r["generation"].as_i64(), r["heartbeat_ms"].as_u64()),
        (Some(1), Some(200))
    );
    let agent_token = r["agent_token"].as_str().expect("agent token").to_owned();
    let api_token = r["api_token"].as_str().expect("api token").to_owned();
    assert_eq!(agent_token.len(), 64);
    // The api token is the documented HMAC of the fleet secret: any replica
    // with the secret computes it.
    let secret = FleetSecret::load(&fx.dir.path().join("secret")).expect("secret");
    assert_eq!(api_token, secret.api_token("w1", 1));
    // The join token opens nothing else; neither do agent or api tokens.
    for token in [JOIN, agent_token.as_str(), api_token.as_str()] {
        for (m, p) in [
            ("GET", "/v1/runs"),
            ("GET", "/v1/agents"),
            ("POST", "/v1/halt"),
        ] {
            let (code, body) = fx.call(m, p, token, Value::Null).await;
            assert_eq!(code, 401, "{m} {p}: {body}");
        }
    }
    // Heartbeats: its own agent token only, for its own id.
    let beat = json!({ "active_faults": 0 });
    let (code, hb) = fx
        .call(
            "POST",
            "/v1/agents/w1/heartbeat",
            &agent_token,
            beat.clone(),
        )
        .await;
    assert_eq!(
        (code, hb["heartbeat_ms"].as_u64()),
        (200, Some(200)),
        "{hb}"
    );
    for token in [JOIN, ADMIN, api_token.as_str()] {
        let (code, _) = fx
            .call("POST", "/v1/agents/w1/heartbeat", token, beat.clone())
            .await;
        assert_eq!(code, 401);
    }
    let (_, r2) = fx
        .call("POST", "/v1/agents/register", JOIN, registration("w2"))
        .await;
    let (code, _) = fx
        .call(
            "POST",
            "/v1/agents/w2/heartbeat",
            &agent_token,
            beat.clone(),
        )
        .await;
    assert_eq!(code, 401, "w1's token is not w2's");
    assert_eq!(r2["generation"], 1);
    // Re-registration rotates both tokens.
    let (_, r3) = fx
        .call("POST", "/v1/agents/register", JOIN, registration("w1"))
        .await;
    assert_eq!(r3["generation"], 2);
    assert_ne!(r3["agent_token"], r["agent_token"]);
    assert_eq!(
        r3["api_token"].as_str(),
        Some(secret.api_token("w1", 2).as_str())
    );
    let (code, _) = fx
        .call(
            "POST",
            "/v1/agents/w1/heartbeat",
            &agent_token,
            beat.clone(),
        )
        .await;
    assert_eq!(code, 401, "the old agent token is gone");
    // Audited.
    let (_, audit) = fx
        .call("GET", "/v1/audit?target=w1", ADMIN, Value::Null)
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["agent.reregister", "agent.register"]);
    // A bad body is a 400 after the token, never before.
    let (code, _) = fx
        .call("POST", "/v1/agents/register", JOIN, json!({ "id": "x" }))
        .await;
    assert_eq!(code, 400);
    let (code, _) = fx
        .call("POST", "/v1/agents/register", ADMIN, json!({ "id": "x" }))
        .await;
    assert_eq!(code, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_join_token_registration_is_off() {
    let fx = fixture(false).await;
    let (code, body) = fx
        .call("POST", "/v1/agents/register", JOIN, registration("w1"))
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"], "registration_disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_registers_refuses_until_then_and_is_reached_with_its_api_token() {
    let fx = fixture(true).await;
    let state = tempfile::tempdir().expect("state");
    let agent = faultline_agent::start(faultline_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: faultline_agent::Token::new(None),
        state_dir: state.path().to_owned(),
        labels: [("role".to_owned(), "worker".to_owned())].into(),
        tls: None,
        register: Some(RegisterConfig {
            controller: fx.base.clone(),
            join_token: JOIN.to_owned(),
            id: "real-1".to_owned(),
            url: None,
            controller_ca: None,
        }),
    })
    .await
    .expect("agent starts");
    let agent_url = format!("http://{}", agent.local_addr);
    // Registered and alive, seen through the controller's own call to it.
    let mut seen = Value::Null;
    let ok = faultline_testkit::eventually(Duration::from_secs(10), async || {
        let (_, list) = fx.call("GET", "/v1/agents", ADMIN, Value::Null).await;
        seen = list
            .as_array()
            .and_then(|l| l.iter().find(|a| a["name"] == "real-1").cloned())
            .unwrap_or(Value::Null);
        seen["state"] == "alive" && seen["reachable"] == true
    })
    .await;
    assert!(ok, "not registered and reachable: {seen}");
    assert_eq!(seen["url"].as_str(), Some(agent_url.as_str()));
    assert_eq!(seen["source"], "registry");
    // Its API takes the controller's api token and nothing else.
    let secret = FleetSecret::load(&fx.dir.path().join("secret")).expect("secret");
    let api_token = secret.api_token("real-1", seen["generation"].as_i64().expect("generation"));
    let ask = |token: String| {
        let http = fx.http.clone();
        let url = format!("{agent_url}/v1/faults");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("agent answers")
                .status()
        }
    };
    assert_eq!(ask(api_token).await.as_u16(), 200);
    assert_eq!(ask(JOIN.to_owned()).await.as_u16(), 401);
    assert_eq!(ask(String::new()).await.as_u16(), 401);
    // Heartbeats keep it alive past 3 intervals.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, list) = fx.call("GET", "/v1/agents", ADMIN, Value::Null).await;
    let a = list
        .as_array()
        .and_then(|l| l.iter().find(|a| a["name"] == "real-1").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(a["state"], "alive", "{a}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_waiting_for_its_controller_refuses_every_request() {
    let state = tempfile::tempdir().expect("state");
    // A controller that is not there: registration keeps failing.
    let agent = faultline_agent::start(faultline_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: faultline_agent::Token::new(None),
        state_dir: state.path().to_owned(),
        labels: Default::default(),
        tls: None,
        register: Some(RegisterConfig {
            controller: "http://127.0.0.1:9".to_owned(),
            join_token: JOIN.to_owned(),
            id: "lonely".to_owned(),
            url: None,
            controller_ca: None,
        }),
    })
    .await
    .expect("agent starts");
    let http = reqwest::Client::new();
    for path in ["/v1/health", "/v1/faults"] {
        let status = http
            .get(format!("http://{}{path}", agent.local_addr))
            .send()
            .await
            .expect("answers")
            .status();
        assert_eq!(status.as_u16(), 401, "{path}");
    }
    assert!(!agent.token.has_issued());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_that_is_also_an_api_token_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = ServiceConfig::new(
        format!("sqlite://{}/runs.db", dir.path().display()),
        dir.path().join("state"),
    );
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.tokens = vec![ApiToken::new("root", Role::Admin, ADMIN)];
    std::fs::write(dir.path().join("join"), ADMIN).expect("join file");
    c.fleet.join_token_file = Some(dir.path().join("join"));
    let e = service::start(c).await.expect_err("refused").to_string();
    assert!(e.contains("also an API token"), "{e}");
}

#[test]
fn the_fleet_block_of_the_config_file_parses_with_defaults() {
    use faultline_controller::service::ConfigFile;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("serve.yaml");
    std::fs::write(
        &path,
        "fleet:\n  join_token_file: /etc/faultline/join/token\n  secret_file: /etc/faultline/fleet/secret\n  heartbeat: 300ms\n",
    )
    .expect("config");
    let f = ConfigFile::load(&path)
        .expect("parses")
        .fleet
        .settings()
        .expect("valid");
    assert_eq!(f.heartbeat, Duration::from_millis(300));
    assert_eq!(
        f.join_token_file.as_deref(),
        Some(std::path::Path::new("/etc/faultline/join/token"))
    );
    std::fs::write(&path, "fleet: {}\n").expect("config");
    let d = ConfigFile::load(&path)
        .expect("parses")
        .fleet
        .settings()
        .expect("valid");
    assert_eq!(d.heartbeat, faultline_controller::fleet::DEFAULT_HEARTBEAT);
    assert!(d.join_token_file.is_none() && d.secret_file.is_none());
    std::fs::write(&path, "fleet: { heartbeat: 0s }\n").expect("config");
    assert!(
        ConfigFile::load(&path)
            .expect("parses")
            .fleet
            .settings()
            .is_err()
    );
    std::fs::write(&path, "fleet: { joins: x }\n").expect("config");
    assert!(ConfigFile::load(&path).is_err(), "unknown keys are errors");
}
