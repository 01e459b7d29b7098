//! The controller service over real HTTP (reqwest): runs against a real HTTP
//! server process paused by `process.pause` on the in-process agent, events read
//! live by a real SSE client, a seconds-resolution schedule firing, roles, the
//! allow-list, per-agent concurrency, restart recovery; the store on SQLite and,
//! for the schedule and restart tests, PostgreSQL (the cluster `./scripts/setup.sh`
//! starts). Every wait is bounded.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use faultline_controller::service::{
    self, AllowList, ApiToken, ConcurrencyPolicy, Role, RunTuning, Service, ServiceConfig,
};
use faultline_controller::store::{self, NewRun, RunStatus};
use faultline_testkit::Child;
use serde_json::{Value, json};

const ADMIN: &str = "admin-token";
const OPERATOR: &str = "operator-token";
const VIEWER: &str = "viewer-token";

// === fixtures ===

struct Fixture {
    svc: Option<Service>,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    db: String,
    pg: Option<PgDb>,
}

fn config(db: &str, dir: &std::path::Path) -> ServiceConfig {
    let mut c = ServiceConfig::new(db, dir.join("state"));
    c.listen = "127.0.0.1:0".parse().expect("addr");
    c.tokens = vec![
        ApiToken::new("root", Role::Admin, ADMIN),
        ApiToken::new("ci", Role::Operator, OPERATOR),
        ApiToken::new("dashboard", Role::Viewer, VIEWER),
    ];
    c.allow = AllowList {
        commands: Vec::new(),
        local_processes: vec!["pid:*".to_owned()],
    };
    c.tuning = RunTuning {
        bucket: Duration::from_millis(250),
        tick: Duration::from_millis(50),
        observe_every: Duration::from_millis(500),
    };
    c.shutdown_grace = Duration::from_secs(10);
    c
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

async fn fixture_with(backend: Backend, tweak: impl FnOnce(&mut ServiceConfig)) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db, pg) = match backend {
        Backend::Sqlite => (format!("sqlite://{}/runs.db", dir.path().display()), None),
        Backend::Postgres => {
            let pg = PgDb::create().await;
            (pg.url.clone(), Some(pg))
        }
    };
    let mut c = config(&db, dir.path());
    tweak(&mut c);
    let svc = service::start(c).await.expect("service starts");
    let _ =
        rustls::crypto::CryptoProvider::install_default(rustls::crypto::ring::default_provider());
    Fixture {
        base: format!("http://{}", svc.local_addr()),
        svc: Some(svc),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client"),
        _dir: dir,
        db,
        pg,
    }
}

async fn fixture(backend: Backend) -> Fixture {
    fixture_with(backend, |_| {}).await
}

impl Fixture {
    /// Stores `yaml` as an experiment and schedules it: the schedule's id.
    async fn schedule(
        &self,
        yaml: &str,
        name: &str,
        cron: &str,
        time_zone: &str,
        overlap: &str,
    ) -> String {
        let (code, exp) = self
            .call(
                "POST",
                "/v1/experiments",
                Some(ADMIN),
                Some(json!({ "yaml": yaml })),
            )
            .await;
        assert_eq!(code, 201, "{exp}");
        let (code, sch) = self
            .call(
                "POST",
                "/v1/schedules",
                Some(ADMIN),
                Some(json!({
                    "name": name,
                    "experiment_id": exp["id"],
                    "cron": cron,
                    "time_zone": time_zone,
                    "overlap": overlap,
                })),
            )
            .await;
        assert_eq!(code, 201, "{sch}");
        sch["id"].as_str().expect("id").to_owned()
    }

    /// The schedule's runs (newest first) once there are at least `n`, polled
    /// until `within`.
    async fn runs_of(&self, schedule: &str, n: usize, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let (_, runs) = self
                .call(
                    "GET",
                    &format!("/v1/runs?schedule_id={schedule}"),
                    Some(VIEWER),
                    None,
                )
                .await;
            let runs = runs.as_array().cloned().unwrap_or_default();
            if runs.len() >= n {
                return runs;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} runs of the schedule within {within:?}: {runs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_with(method, path, token, body, &[]).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn run_status(&self, id: &str) -> String {
        let (code, run) = self
            .call("GET", &format!("/v1/runs/{id}"), Some(VIEWER), None)
            .await;
        assert_eq!(code, 200, "{run}");
        run["status"].as_str().expect("status").to_owned()
    }

    /// Polls until the run is final (bounded); answers the run.
    async fn until_final(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (_, run) = self
                .call("GET", &format!("/v1/runs/{id}"), Some(VIEWER), None)
                .await;
            let st = run["status"].as_str().unwrap_or("");
            if !matches!(st, "queued" | "running") {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} still {st} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn shutdown(mut self) {
        if let Some(svc) = self.svc.take() {
            svc.shutdown().await;
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_db().await;
        }
    }
}

/// Pauses `pid` for `hold` while probing the HTTP server at `addr`.
fn pause_yaml(addr: std::net::SocketAddr, pid: u32, hold: &str) -> String {
    format!(
        r#"version: faultline/v1
name: pause-web
targets:
  host: {{ agents: [local] }}
probes:
  web:
    http: {{ url: "http://{addr}/", rate: 40/s, timeout: 500ms }}
hypotheses:
  - {{ probe: web, availability: ">= 99%", p99: "<= 400ms", window: 1s }}
during:
  - {{ probe: web, availability: ">= 0%", window: 1s }}
recovery: {{ within: 3s }}
method:
  - name: freeze
    target: host
    fault: {{ process.pause: {{ pid: {pid} }} }}
    start: 250ms
    duration: {hold}
safety:
  lease: 3s
"#
    )
}

// === SSE client ===

#[derive(Debug, Clone)]
struct Sse {
    id: Option<i64>,
    event: String,
    data: Value,
    /// When the client read it.
    at: Instant,
}

/// Reads a run's event stream until `end` (or `within` passes), calling `seen`
/// for each event as it arrives.
async fn read_events(
    f: &Fixture,
    id: &str,
    last_event_id: Option<i64>,
    within: Duration,
    mut seen: impl AsyncFnMut(&Sse),
) -> Vec<Sse> {
    let mut req = f
        .http
        .get(format!("{}/v1/runs/{id}/events", f.base))
        .bearer_auth(VIEWER)
        .timeout(within);
    if let Some(l) = last_event_id {
        req = req.header("Last-Event-ID", l.to_string());
    }
    let mut resp = req.send().await.expect("events request");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let deadline = Instant::now() + within;
    let mut buf = String::new();
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("no `end` event within {within:?}; got {out:#?}"))
            .expect("stream");
        let Some(chunk) = chunk else { return out };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(pos) = buf.find("\n\n") {
            let block: String = buf.drain(..pos + 2).collect();
            let mut ev = Sse {
                id: None,
                event: "message".to_owned(),
                data: Value::Null,
                at: Instant::now(),
            };
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    ev.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    ev.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            ev.data = serde_json::from_str(&data).expect("event data is JSON");
            seen(&ev).await;
            let end = ev.event == "end";
            out.push(ev);
            if end {
                return out;
            }
        }
    }
}

// === tests ===

async fn a_run_over_http_completes_streams_live_and_its_journal_is_readable(backend: Backend) {
    let f = fixture(backend).await;
    let (server, addr) = Child::http_server();
    let yaml = pause_yaml(addr, server.pid(), "2s");

    let (code, exp) = f
        .call(
            "POST",
            "/v1/experiments",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 201, "{exp}");
    let exp_id = exp["id"].as_str().expect("id").to_owned();

    let body = json!({ "experiment_id": exp_id });
    let (code, run) = f
        .call_with(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(body.clone()),
            &[("Idempotency-Key", "gate-42")],
        )
        .await;
    assert_eq!(code, 202, "{run}");
    let id = run["id"].as_str().expect("run id").to_owned();
    assert_eq!(run["requested_by"], "ci");

    // A retry with the same key is the same run, not a second one.
    let (code, again) = f
        .call_with(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(body),
            &[("Idempotency-Key", "gate-42")],
        )
        .await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["id"], id.as_str());

    // The events, read live by a real SSE client: while the fault is injected, the
    // run is still running.
    let mut running_when_injected = None;
    let events = read_events(&f, &id, None, Duration::from_secs(60), async |e: &Sse| {
        if e.event == "injected" && running_when_injected.is_none() {
            running_when_injected = Some(f.run_status(&id).await);
        }
    })
    .await;
    assert_eq!(
        running_when_injected.as_deref(),
        Some("running"),
        "{events:#?}"
    );
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    for k in [
        "phase", "window", "injected", "reverted", "verdict", "finished", "end",
    ] {
        assert!(kinds.contains(&k), "no `{k}` event in {kinds:?}");
    }
    // Numbered from 1 without gaps; `end` carries the final status.
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    let end = events.last().expect("end");
    assert_eq!(end.data["status"], "passed", "{:?}", end.data);
    // Live: events arrived over the run's seconds, not in one burst at its end.
    let spread = end.at.duration_since(events[0].at);
    assert!(
        spread > Duration::from_secs(2),
        "all events at once ({spread:?})"
    );

    // Verdict and journal over HTTP.
    let run = f.until_final(&id, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "passed", "{run:#}");
    assert_eq!(run["exit_code"], 0);
    let verdicts = run["summary"]["verdicts"].as_array().expect("verdicts");
    assert!(
        verdicts
            .iter()
            .any(|v| v["phase"] == "recovery" && v["holds"] == true),
        "{verdicts:#?}"
    );
    let journal = &run["journal"];
    assert_eq!(journal["run_id"], id.as_str());
    assert_eq!(journal["faults"][0]["kind"], "process.pause");
    assert_eq!(journal["faults"][0]["revert_confirmed"], true);
    assert!(!server.is_stopped(), "the server was left paused");

    // Reconnect with Last-Event-ID: only what came after, then `end`.
    let n = ids.len() as i64;
    let tail = read_events(
        &f,
        &id,
        Some(n - 2),
        Duration::from_secs(10),
        async |_: &Sse| {},
    )
    .await;
    let tail_ids: Vec<i64> = tail.iter().filter_map(|e| e.id).collect();
    assert_eq!(tail_ids, vec![n - 1, n]);
    assert_eq!(tail.last().map(|e| e.event.as_str()), Some("end"));

    // Listed, audited, counted.
    let (_, list) = f
        .call(
            "GET",
            "/v1/runs?status=passed,failed&limit=10",
            Some(VIEWER),
            None,
        )
        .await;
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .any(|r| r["id"] == id.as_str())
    );
    assert!(list[0].get("journal").is_none(), "lists leave out journals");
    let (code, audit) = f
        .call("GET", &format!("/v1/audit?target={id}"), Some(ADMIN), None)
        .await;
    assert_eq!(code, 200, "{audit}");
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|a| a["action"] == "run.start" && a["actor"] == "ci")
    );
    let resp = f
        .http
        .get(format!("{}/metrics", f.base))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("metrics");
    let text = resp.text().await.expect("text");
    assert!(
        text.contains("faultline_controller_runs_finished_total{status=\"passed\"} 1"),
        "{text}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_tokens_and_the_allow_list_are_enforced_with_json_errors() {
    let f = fixture_with(Backend::Sqlite, |c| c.allow = AllowList::default()).await;
    let sleeper = Child::sleep();
    let addr: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let yaml = pause_yaml(addr, sleeper.pid(), "1s");

    // A viewer may read but not start a run.
    let (code, body) = f
        .call(
            "POST",
            "/v1/runs",
            Some(VIEWER),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["reason"].as_str().unwrap_or("").contains("viewer"),
        "{body}"
    );
    let (code, _) = f.call("GET", "/v1/runs", Some(VIEWER), None).await;
    assert_eq!(code, 200);

    // No token, a wrong one: 401.
    for token in [None, Some("nope")] {
        let (code, body) = f.call("GET", "/v1/runs", token, None).await;
        assert_eq!(code, 401, "{body}");
        assert_eq!(body["error"], "unauthorized");
    }
    // Health and the OpenAPI document need none.
    let (code, health) = f.call("GET", "/v1/health", None, None).await;
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, doc) = f.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/runs/{id}/events"]["get"].is_object());

    // Process faults on the controller's host need the allow-list: located.
    let (code, body) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"], "not_allowed");
    assert_eq!(body["diagnostics"][0]["path"], "method[0].fault");
    assert_eq!(body["diagnostics"][0]["line"], 16);

    // Invalid experiments: the CLI's located diagnostics.
    let (code, body) = f
        .call(
            "POST",
            "/v1/experiments",
            Some(OPERATOR),
            Some(json!({ "yaml": "version: faultline/v1\nname: x\nmethod: []\nbogus: 1\n" })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["error"], "invalid_experiment");
    let d = body["diagnostics"].as_array().expect("diagnostics");
    assert!(
        d.iter()
            .any(|d| d["path"] == "bogus" && d["line"] == 4 && d["column"] == 1),
        "{d:#?}"
    );

    // Raw YAML bodies work too.
    let resp = f
        .http
        .post(format!("{}/v1/experiments", f.base))
        .bearer_auth(OPERATOR)
        .header("content-type", "application/yaml")
        .body("version: faultline/v1\nname: [\n")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 422);

    // Command probes: admin only, and only what the allow-list names.
    let cmd = "version: faultline/v1\nname: c\ntargets:\n  h: { agents: [local] }\nprobes:\n  q:\n    command: { run: [\"/bin/true\"] }\nmethod:\n  - { name: s, target: h, fault: { process.pause: { pid: 1 } }, duration: 1s }\n";
    let (code, body) = f
        .call(
            "POST",
            "/v1/experiments",
            Some(OPERATOR),
            Some(json!({ "yaml": cmd })),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = f
        .call(
            "POST",
            "/v1/experiments",
            Some(ADMIN),
            Some(json!({ "yaml": cmd })),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["diagnostics"][0]["path"], "probes.q.command.run");

    // Bad JSON, unknown things, schedules for admins only, halt for admins only.
    let resp = f
        .http
        .post(format!("{}/v1/runs", f.base))
        .bearer_auth(OPERATOR)
        .body("{")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let (code, body) = f
        .call("GET", "/v1/runs/run_0000000000000000", Some(VIEWER), None)
        .await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    let (code, _) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "experiment_id": "exp_0000000000000000" })),
        )
        .await;
    assert_eq!(code, 422);
    let (code, _) = f
        .call("POST", "/v1/schedules", Some(OPERATOR), Some(json!({})))
        .await;
    assert_eq!(code, 403);
    let (code, _) = f.call("POST", "/v1/halt", Some(OPERATOR), None).await;
    assert_eq!(code, 403);
    let (code, _) = f.call("GET", "/v1/runs?limit=0", Some(VIEWER), None).await;
    assert_eq!(code, 400);
    let (code, _) = f
        .call("GET", "/v1/runs?status=sleeping", Some(VIEWER), None)
        .await;
    assert_eq!(code, 400);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runs_on_one_agent_are_refused_abort_and_halt_stop_them() {
    let f = fixture(Backend::Sqlite).await;
    let (server, addr) = Child::http_server();
    let yaml = pause_yaml(addr, server.pid(), "20s");
    let (code, first) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 202, "{first}");
    let first = first["id"].as_str().expect("id").to_owned();

    let (code, body) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"], "agent_busy");
    assert!(
        body["reason"].as_str().unwrap_or("").contains(&first),
        "{body}"
    );

    let (code, body) = f
        .call(
            "POST",
            &format!("/v1/runs/{first}/abort"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let run = f.until_final(&first, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "aborted", "{run:#}");
    assert_eq!(run["exit_code"], 3);
    assert!(!server.is_stopped(), "abort left the server paused");
    let (code, _) = f
        .call(
            "POST",
            &format!("/v1/runs/{first}/abort"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(code, 409, "an ended run cannot be aborted");

    // Now the agent is free; halt stops the next one.
    let (code, second) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!(code, 202, "{second}");
    let second = second["id"].as_str().expect("id").to_owned();
    let (code, halted) = f.call("POST", "/v1/halt", Some(ADMIN), None).await;
    assert_eq!(code, 200, "{halted}");
    assert_eq!(halted["aborted"], json!([second]));
    assert!(
        halted["agents"]
            .as_array()
            .expect("agents")
            .iter()
            .any(|a| a["agent"] == "local")
    );
    let run = f.until_final(&second, Duration::from_secs(10)).await;
    assert_eq!(run["status"], "aborted", "{run:#}");
    assert!(!server.is_stopped(), "halt left the server paused");
    let (_, audit) = f
        .call("GET", "/v1/audit?actor=root", Some(ADMIN), None)
        .await;
    assert!(
        audit
            .as_array()
            .expect("audit")
            .iter()
            .any(|a| a["action"] == "halt"),
        "{audit:#}"
    );
    f.shutdown().await;
}

/// `POST /v1/halt` reaches every agent of the inventory over HTTP, not only the
/// in-process one: a fault put there by someone else entirely is reverted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halt_reverts_every_agent_of_the_inventory() {
    use faultline_controller::client::{AgentClient, FaultRequest, HttpClient};
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let agent = faultline_agent::start(faultline_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: faultline_agent::Token::new(Some("agent-token".into())),
        state_dir: agent_dir.path().join("state"),
        labels: Default::default(),
        tls: None,
        register: None,
    })
    .await
    .expect("agent");
    let token_file = agent_dir.path().join("token");
    std::fs::write(&token_file, "agent-token\n").expect("token file");
    let inventory: faultline_spec::Inventory = serde_yaml::from_str(&format!(
        "agents: {{ a1: {{ url: 'http://{}', token_file: '{}' }} }}",
        agent.local_addr,
        token_file.display()
    ))
    .expect("inventory");
    let f = fixture_with(Backend::Sqlite, |c| c.inventory = inventory).await;

    let server = Child::sleep();
    let direct = HttpClient::new(
        "a1",
        &format!("http://{}", agent.local_addr),
        Some("agent-token".into()),
        None,
        Duration::from_secs(5),
    )
    .expect("client");
    let pause: FaultRequest = serde_json::from_value(json!({
        "kind": "process.pause", "params": { "pid": server.pid() }, "lease": "60s"
    }))
    .expect("request");
    direct.put_fault("by-hand", &pause).await.expect("paused");
    assert!(server.is_stopped());

    let (code, halted) = f.call("POST", "/v1/halt", Some(ADMIN), None).await;
    assert_eq!(code, 200, "{halted}");
    let a1 = halted["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["agent"] == "a1")
        .cloned()
        .expect("a1 halted");
    assert_eq!(a1["report"]["reverted"], json!(["by-hand"]), "{halted:#}");
    assert!(!server.is_stopped(), "halt left the process paused");
    assert!(direct.list().await.expect("list").is_empty());
    f.shutdown().await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queued_runs_wait_for_their_agent() {
    let f = fixture_with(Backend::Sqlite, |c| {
        c.concurrency = ConcurrencyPolicy::Queue
    })
    .await;
    let (server, addr) = Child::http_server();
    let yaml = pause_yaml(addr, server.pid(), "1s");
    let (c1, first) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    let (c2, second) = f
        .call(
            "POST",
            "/v1/runs",
            Some(OPERATOR),
            Some(json!({ "yaml": yaml })),
        )
        .await;
    assert_eq!((c1, c2), (202, 202), "{first} {second}");
    assert_eq!(second["status"], "queued");
    let (a, b) = (
        first["id"].as_str().expect("id"),
        second["id"].as_str().expect("id"),
    );
    let one = f.until_final(a, Duration::from_secs(30)).await;
    let two = f.until_final(b, Duration::from_secs(30)).await;
    assert_eq!(
        (one["status"].as_str(), two["status"].as_str()),
        (Some("passed"), Some("passed"))
    );
    // Never interleaved: the second started after the first ended.
    assert!(
        two["started_at"].as_str() >= one["finished_at"].as_str(),
        "{one:#}\n{two:#}"
    );
    f.shutdown().await;
}

async fn a_schedule_fires_and_its_run_appears(backend: Backend) {
    let f = fixture(backend).await;
    let (server, addr) = Child::http_server();
    let yaml = pause_yaml(addr, server.pid(), "500ms");
    let sch_id = f
        .schedule(
            &yaml,
            "every-second",
            "*/1 * * * * *",
            "Europe/Berlin",
            "skip",
        )
        .await;
    let created = Instant::now();
    // An every-second cron: the run appears within about a second.
    let run = f.runs_of(&sch_id, 1, Duration::from_secs(5)).await;
    let run = run.last().cloned().expect("a run");
    assert!(
        created.elapsed() < Duration::from_secs(3),
        "fired late: {:?}",
        created.elapsed()
    );
    assert_eq!(run["requested_by"], "scheduler");
    let id = run["id"].as_str().expect("id").to_owned();
    // Stop further fires, then let the run end on its own.
    let (code, _) = f
        .call(
            "DELETE",
            &format!("/v1/schedules/{sch_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let run = f.until_final(&id, Duration::from_secs(30)).await;
    assert_eq!(run["status"], "passed", "{run:#}");
    let (code, _) = f
        .call(
            "GET",
            &format!("/v1/schedules/{sch_id}"),
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(code, 404);
    f.shutdown().await;
}

/// `overlap: replace`: the next fire aborts the schedule's run still going (its
/// faults reverted) and starts a fresh one.
async fn a_replacing_schedule_aborts_the_run_still_going(backend: Backend) {
    let f = fixture(backend).await;
    let (server, addr) = Child::http_server();
    // Far longer than the schedule's period: every run is still going at the next fire.
    let yaml = pause_yaml(addr, server.pid(), "60s");
    let sch_id = f
        .schedule(&yaml, "replace-me", "*/3 * * * * *", "UTC", "replace")
        .await;
    let runs = f.runs_of(&sch_id, 2, Duration::from_secs(20)).await;
    let (code, _) = f
        .call(
            "DELETE",
            &format!("/v1/schedules/{sch_id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(code, 204);
    // Newest first: the older run was replaced.
    let first = runs.last().expect("first run")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let replaced = f.until_final(&first, Duration::from_secs(20)).await;
    assert_eq!(replaced["status"], "aborted", "{replaced:#}");
    assert!(
        replaced["reason"]
            .as_str()
            .unwrap_or("")
            .contains("replaced by the next fire of schedule `replace-me`"),
        "{replaced:#}"
    );
    let (code, _) = f.call("POST", "/v1/halt", Some(ADMIN), None).await;
    assert_eq!(code, 200);
    assert!(
        faultline_testkit::eventually(Duration::from_secs(10), async || !server.is_stopped()).await,
        "the server was left paused"
    );
    f.shutdown().await;
}

async fn a_restart_leaves_no_run_running(backend: Backend) {
    let f = fixture(backend).await;
    // What a controller killed mid-run leaves in the store.
    let store = store::open(&f.db).await.expect("store");
    let left = store
        .create_run(&NewRun {
            experiment_name: "killed".to_owned(),
            yaml: "version: faultline/v1\n".to_owned(),
            requested_by: "ci".to_owned(),
            ..NewRun::default()
        })
        .await
        .expect("run")
        .run;
    store.mark_running(&left.id).await.expect("running");
    drop(store);
    // The next controller on the same store.
    let mut f = f;
    let dir = f._dir.path().to_owned();
    if let Some(svc) = f.svc.take() {
        svc.shutdown().await;
    }
    let svc = service::start(config(&f.db, &dir)).await.expect("restart");
    assert_eq!(svc.recovered, vec![left.id.clone()]);
    f.base = format!("http://{}", svc.local_addr());
    f.svc = Some(svc);
    let (_, run) = f
        .call("GET", &format!("/v1/runs/{}", left.id), Some(VIEWER), None)
        .await;
    assert_eq!(run["status"], "aborted", "{run:#}");
    assert!(
        run["reason"].as_str().unwrap_or("").contains("restarted"),
        "{run:#}"
    );
    let events = read_events(
        &f,
        &left.id,
        None,
        Duration::from_secs(10),
        async |_: &Sse| {},
    )
    .await;
    assert_eq!(
        events.last().map(|e| e.data["status"].clone()),
        Some(json!(RunStatus::Aborted))
    );
    let (_, audit) = f
        .call("GET", "/v1/audit?actor=controller", Some(ADMIN), None)
        .await;
    assert_eq!(audit[0]["target"], left.id.as_str());
    f.shutdown().await;
}

mod sqlite {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_run_over_http_completes_streams_live_and_its_journal_is_readable() {
        super::a_run_over_http_completes_streams_live_and_its_journal_is_readable(Backend::Sqlite)
            .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_replacing_schedule_aborts_the_run_still_going() {
        super::a_replacing_schedule_aborts_the_run_still_going(Backend::Sqlite).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_schedule_fires_and_its_run_appears() {
        super::a_schedule_fires_and_its_run_appears(Backend::Sqlite).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_leaves_no_run_running() {
        super::a_restart_leaves_no_run_running(Backend::Sqlite).await;
    }
}

mod postgres {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_run_over_http_completes_streams_live_and_its_journal_is_readable() {
        super::a_run_over_http_completes_streams_live_and_its_journal_is_readable(
            Backend::Postgres,
        )
        .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_schedule_fires_and_its_run_appears() {
        super::a_schedule_fires_and_its_run_appears(Backend::Postgres).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_leaves_no_run_running() {
        super::a_restart_leaves_no_run_running(Backend::Postgres).await;
    }
}

// === the dashboard ===

/// The dashboard's files need no token and carry a strict CSP; what they show
/// comes from `/v1/me` and `/v1/agents`, which do. (tests/e2e/ui.rs drives the
/// pages themselves in Chromium.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_without_a_token_and_its_data_needs_one() {
    let f = fixture(Backend::Sqlite).await;
    for (path, ct) in [
        ("/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/palette.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = f
            .http
            .get(format!("{}{path}", f.base))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert!(
            h["content-type"].to_str().is_ok_and(|v| v.starts_with(ct)),
            "{path}: {h:?}"
        );
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
    }
    let (code, body) = f.call("GET", "/ui/../v1/runs", None, None).await;
    assert_ne!(code, 200, "{body}");
    let (code, body) = f.call("GET", "/ui/nope.js", None, None).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (code, body) = f.call("GET", "/docs", None, None).await;
    assert!(
        code == 200
            && body
                .as_str()
                .is_some_and(|b| b.contains("/v1/openapi.json"))
    );

    let (code, _) = f.call("GET", "/v1/me", None, None).await;
    assert_eq!(code, 401);
    let (code, me) = f.call("GET", "/v1/me", Some(VIEWER), None).await;
    assert_eq!(code, 200, "{me}");
    assert_eq!(me, json!({ "name": "dashboard", "role": "viewer" }));
    let (code, _) = f.call("GET", "/v1/agents", None, None).await;
    assert_eq!(code, 401);
    let (code, agents) = f.call("GET", "/v1/agents", Some(VIEWER), None).await;
    assert_eq!(code, 200, "{agents}");
    assert_eq!(agents[0]["name"], "local", "{agents}");
    assert_eq!(agents[0]["reachable"], true, "{agents}");
    assert_eq!(agents[0]["faults"], json!([]), "{agents}");
    f.shutdown().await;
}

// === schemathesis ===

/// schemathesis (PyPI) generates requests from the OpenAPI document and checks
/// that none answers 5xx. Its virtualenv is made by `./scripts/setup.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_tls_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("tempdir");
    faultline_testkit::private_ca(certs.path());
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let f = fixture_with(Backend::Sqlite, |c| c.tls = Some((cert, key))).await;
    let addr = f.svc.as_ref().expect("service").local_addr();
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(certs.path().join("ca.pem")).expect("ca.pem"),
    )
    .expect("CA");
    let https = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let resp = https
        .get(format!("https://{addr}/v1/runs"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("HTTPS answers");
    assert_eq!(resp.status(), 200);
    // Plain HTTP to the TLS listener gets no API answer.
    let plain = f
        .http
        .get(format!("http://{addr}/v1/runs"))
        .bearer_auth(VIEWER)
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    f.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.pem");
    let mut c = config(
        &format!("sqlite://{}/runs.db", dir.path().display()),
        dir.path(),
    );
    c.tls = Some((missing.clone(), missing));
    let err = service::start(c).await.expect_err("refused");
    assert!(
        err.to_string().starts_with("TLS: cannot read certificates"),
        "{err}"
    );
    assert!(
        !dir.path().join("runs.db").exists(),
        "the store was opened anyway"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let bin = target.join("schemathesis-venv/bin/schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/setup.sh (it creates target/schemathesis-venv with schemathesis from PyPI)",
        bin.display()
    );
    let f = fixture(Backend::Sqlite).await;
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&bin)
            .arg("run")
            .arg(format!("{}/v1/openapi.json", f.base))
            .args(["--checks", "not_a_server_error"])
            .args(["--max-examples", "20"])
            .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
            .args(["--request-timeout", "10"])
            .env("NO_COLOR", "1")
            // It keeps a cache in its working directory; not in the source tree.
            .current_dir(f._dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within 240 s")
    .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{stderr}"
    );
    // It ran: a run that generated no request would prove nothing.
    assert!(stdout.contains(" generated, "), "{stdout}\n{stderr}");
    f.shutdown().await;
}

// === PostgreSQL ===

struct PgDb {
    url: String,
    name: String,
}

fn pg_admin_url() -> String {
    std::env::var("FAULTLINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://faultline:faultline@127.0.0.1:5432/postgres".to_owned())
}

async fn pg_admin() -> tokio_postgres::Client {
    match tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => panic!(
            "PostgreSQL is not reachable at 127.0.0.1:5432 ({e}); start it with `./scripts/setup.sh`"
        ),
    }
}

impl PgDb {
    async fn create() -> PgDb {
        let name = format!("faultline_service_{:016x}", rand::random::<u64>());
        pg_admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let base = pg_admin_url();
        let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
        PgDb {
            url: format!("{prefix}/{name}"),
            name,
        }
    }

    async fn drop_db(self) {
        pg_admin()
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .expect("drop test database");
    }
}
