//! tcp, command, prometheus and sql probes through the runner.

use std::time::{Duration, Instant};

use faultline_probe::http::Limits;
use faultline_probe::runner::start_with;
use faultline_probe::slo::evaluate;
use faultline_probe::{Clock, FailureKind, ProbeError, Series};
use faultline_spec::{Hypothesis, Probe};

use crate::server::Server;
use crate::{bounded, spec};

fn limits(requests: u64) -> Limits {
    Limits {
        requests: Some(requests),
        ..Limits::default()
    }
}

async fn run(probe: &str, requests: u64) -> Series {
    let p: Probe = crate::probe(probe);
    let h = start_with(&p, Clock::start(), limits(requests)).expect("probe starts");
    let (series, report) = bounded(Duration::from_secs(10), h.finish()).await;
    assert_eq!(report.scheduled, requests);
    series
}

fn all(s: &Series) -> faultline_probe::WindowStats {
    s.window(Duration::ZERO, s.end())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connects() {
    let srv = Server::start().await;
    let s = run(
        &format!("{{ tcp: {{ address: '{}', rate: 50/s }} }}", srv.addr),
        5,
    )
    .await;
    let w = all(&s);
    assert_eq!(w.successes, 5);
    assert_eq!(w.latency.len(), 5);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let s = run(
        &format!("{{ tcp: {{ address: '127.0.0.1:{port}', rate: 50/s }} }}"),
        3,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Connect), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_succeed_on_exit_zero_and_are_killed_at_their_timeout() {
    let s = run("{ command: { run: [true], interval: 50ms } }", 2).await;
    assert_eq!(all(&s).successes, 2);
    let s = run("{ command: { run: [false], interval: 50ms } }", 2).await;
    assert_eq!(all(&s).failures(FailureKind::Rejected), 2);
    let s = run(
        "{ command: { run: [/nonexistent/program], interval: 50ms } }",
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Other), 1);
    let t0 = Instant::now();
    let s = run(
        "{ command: { run: [sleep, '30'], interval: 50ms, timeout: 200ms } }",
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Timeout), 1);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let p: Probe = crate::probe("{ command: { run: [] } }");
    assert!(matches!(
        start_with(&p, Clock::start(), limits(1)),
        Err(ProbeError::EmptyCommand)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_instant_query_value() {
    let srv = Server::start().await;
    let s = run(
        &format!(
            "{{ prometheus: {{ url: '{}', query: 'up{{job=\"api\"}}', interval: 20ms }} }}",
            srv.url("")
        ),
        3,
    )
    .await;
    let w = all(&s);
    assert_eq!(w.successes, 3);
    let v = w.values.expect("values");
    assert_eq!((v.min, v.max, v.last, v.count), (0.25, 0.25, 0.25, 3));
    assert_eq!(
        *srv.state.last_query.lock().await,
        "query=up%7Bjob%3D%22api%22%7D"
    );
    let h: Hypothesis = spec("{ probe: q, value: '<= 0.5' }");
    assert!(evaluate(&h, &w).holds);
    let h: Hypothesis = spec("{ probe: q, value: '> 0.25' }");
    assert!(!evaluate(&h, &w).holds);
    // Not Prometheus: a failure, not a value.
    let s = run(
        &format!(
            "{{ prometheus: {{ url: '{}', query: 'up', interval: 20ms }} }}",
            srv.url("/status/500")
        ),
        1,
    )
    .await;
    assert_eq!(all(&s).failed(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_query_value_and_missing_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("app.db");
    {
        let c = rusqlite::Connection::open(&db).expect("create db");
        c.execute_batch("CREATE TABLE jobs(id INTEGER); INSERT INTO jobs VALUES (1), (2), (3);")
            .expect("fill db");
    }
    let url = format!("sqlite://{}", db.display());
    let s = run(
        &format!("{{ sql: {{ url: '{url}', query: 'SELECT count(*) FROM jobs', rate: 50/s }} }}"),
        2,
    )
    .await;
    let w = all(&s);
    assert_eq!(w.successes, 2);
    assert_eq!(w.values.map(|v| v.max), Some(3.0));
    let missing = format!("sqlite://{}", dir.path().join("nope.db").display());
    let s = run(&format!("{{ sql: {{ url: '{missing}', rate: 50/s }} }}"), 1).await;
    assert_eq!(all(&s).failures(FailureKind::Connect), 1);
    assert!(
        !dir.path().join("nope.db").exists(),
        "a probe must not create a database"
    );
}

/// The MariaDB account scripts/setup.sh creates; FAULTLINE_TEST_MYSQL_URL overrides.
fn my_url() -> String {
    std::env::var("FAULTLINE_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://faultline:faultline@127.0.0.1:3306/faultline_test".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_query_value_failure_and_kill_at_timeout() {
    use mysql_async::prelude::Queryable as _;
    let url = my_url();
    let mut admin = match mysql_async::Conn::from_url(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "MariaDB is not reachable at {url} ({e}): start it with `./scripts/setup.sh` \
             (installs mariadb-server, starts it and creates the faultline user), or point \
             FAULTLINE_TEST_MYSQL_URL at a server"
        ),
    };
    let s = run(
        &format!("{{ sql: {{ url: '{url}', query: 'SELECT 40 + 2', rate: 50/s }} }}"),
        2,
    )
    .await;
    let w = all(&s);
    assert_eq!(w.successes, 2, "{w:?}");
    assert_eq!(w.values.map(|v| v.max), Some(42.0));

    let s = run(
        &format!("{{ sql: {{ url: '{url}', query: 'SELECT * FROM no_such_table', rate: 50/s }} }}"),
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Other), 1);

    // A query stuck past the timeout fails as a timeout and is killed on the
    // server rather than left running. The marker makes it findable.
    let marker = format!("faultline_probe_sleep_{}", std::process::id());
    let t0 = Instant::now();
    let s = run(
        &format!(
            "{{ sql: {{ url: '{url}', query: 'SELECT SLEEP(30) AS {marker}', rate: 50/s, timeout: 300ms }} }}"
        ),
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Timeout), 1);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let mut left = i64::MAX;
    for _ in 0..50 {
        let n: Option<i64> = admin
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE 'SELECT SLEEP(30) AS {marker}%'"
            ))
            .await
            .expect("processlist");
        left = n.unwrap_or(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the timed-out query still runs on the server");

    let s = run(
        "{ sql: { url: 'mysql://faultline:wrong@127.0.0.1:1/x', rate: 50/s } }",
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Connect), 1);
}

/// The PostgreSQL role scripts/setup.sh creates; FAULTLINE_TEST_PG_URL overrides.
fn pg_url() -> String {
    std::env::var("FAULTLINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://faultline:faultline@127.0.0.1:5432/postgres".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_query_value_failure_and_cancel_at_timeout() {
    let url = pg_url();
    if let Err(e) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        panic!(
            "PostgreSQL is not reachable ({e}): start it with `pg_ctlcluster 15 main start` \
             (scripts/setup.sh does, and creates the `faultline` role), or point \
             FAULTLINE_TEST_PG_URL at a server"
        );
    }
    let s = run(
        &format!("{{ sql: {{ url: '{url}', query: 'SELECT 40 + 2', rate: 50/s }} }}"),
        2,
    )
    .await;
    let w = all(&s);
    assert_eq!(w.successes, 2, "{w:?}");
    assert_eq!(w.values.map(|v| v.max), Some(42.0));

    let s = run(
        &format!("{{ sql: {{ url: '{url}', query: 'SELECT * FROM no_such_table', rate: 50/s }} }}"),
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Other), 1);

    // A query stuck past the timeout fails as a timeout, and is cancelled on the
    // server rather than left running.
    let t0 = Instant::now();
    let s = run(
        &format!(
            "{{ sql: {{ url: '{url}', query: 'SELECT pg_sleep(30)', rate: 50/s, timeout: 300ms }} }}"
        ),
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Timeout), 1);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let mut left = i64::MAX;
    for _ in 0..50 {
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'faultline-probe' AND query LIKE 'SELECT pg_sleep%' \
                 AND state = 'active'",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        left = row.get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the timed-out query still runs on the server");

    let s = run(
        "{ sql: { url: 'postgres://faultline:wrong@127.0.0.1:1/postgres', rate: 50/s } }",
        1,
    )
    .await;
    assert_eq!(all(&s).failures(FailureKind::Connect), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_runs_until_stopped() {
    let srv = Server::start().await;
    let p: Probe = crate::probe(&format!(
        "{{ http: {{ url: '{}', rate: 100/s }} }}",
        srv.url("/ok")
    ));
    let clock = Clock::start().with_bucket(Duration::from_millis(100));
    let h = faultline_probe::start(&p, clock).expect("starts");
    assert_eq!(h.kind(), "http");
    for _ in 0..200 {
        if h.recorder()
            .with(|s| s.window(Duration::ZERO, s.end()).total())
            >= 10
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, r) = bounded(Duration::from_secs(5), h.stop()).await;
    let w = s.window(Duration::ZERO, s.end());
    assert!(w.total() >= 10);
    assert_eq!(w.total(), r.scheduled);
    assert_eq!(w.successes, r.scheduled);
}
