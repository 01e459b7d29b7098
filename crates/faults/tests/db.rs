//! db.lock against real servers: PostgreSQL and MariaDB started by
//! scripts/setup.sh, and SQLite files. Every effect is observed from outside,
//! through a second session that the fault blocks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use faultline_faults::db::{DbError, DbLockFault};
use faultline_spec::fault::DbLock;

const PG_URL: &str = "postgres://faultline:faultline@127.0.0.1:5432/postgres";
const MY_URL: &str = "mysql://faultline:faultline@127.0.0.1:3306/faultline_test";

fn pg_url() -> String {
    std::env::var("FAULTLINE_TEST_PG_URL").unwrap_or_else(|_| PG_URL.to_owned())
}

fn my_url() -> String {
    std::env::var("FAULTLINE_TEST_MYSQL_URL").unwrap_or_else(|_| MY_URL.to_owned())
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn spec(yaml: &str) -> DbLock {
    serde_yaml::from_str(yaml).expect("spec parses")
}

// === PostgreSQL ===

async fn pg() -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {PG_URL} ({e}); start it with `./scripts/setup.sh` (runs `pg_ctlcluster 15 main start` and creates the faultline role)"
        ),
    };
    tokio::spawn(conn);
    client
}

/// A fresh table with three rows; dropped by the caller.
async fn pg_table() -> (tokio_postgres::Client, String) {
    let c = pg().await;
    let t = unique("fl_jobs");
    c.batch_execute(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text); INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c')"
    ))
    .await
    .expect("create table");
    (c, t)
}

async fn pg_checksum(c: &tokio_postgres::Client, t: &str) -> String {
    c.query_one(
        &format!("SELECT md5(string_agg(x::text, ',' ORDER BY id)) FROM {t} x"),
        &[],
    )
    .await
    .expect("checksum")
    .get(0)
}

/// Runs a write that changes nothing (`SET v = v`) and returns how long it waited.
fn pg_writer(t: &str, id: i32) -> tokio::task::JoinHandle<Duration> {
    let t = t.to_owned();
    tokio::spawn(async move {
        let c = pg().await;
        c.batch_execute("SET lock_timeout = '20s'")
            .await
            .expect("set");
        let start = Instant::now();
        c.execute(&format!("UPDATE {t} SET v = v WHERE id = $1"), &[&id])
            .await
            .expect("write");
        start.elapsed()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_table_lock_blocks_writers_until_revert_and_changes_nothing() {
    let (c, t) = pg_table().await;
    let before = pg_checksum(&c, &t).await;
    let fault = DbLockFault::new(
        &unique("f"),
        &spec(&format!(
            "{{ url: '{}', table: {t}, mode: access_exclusive }}",
            pg_url()
        )),
        Duration::from_secs(5),
    )
    .expect("valid");
    fault.inject().await.expect("lock taken");
    fault.inject().await.expect("injecting again is a no-op");

    let writer = pg_writer(&t, 1);
    // The writer is seen waiting from outside, and the fault reports it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = fault.status().await;
        if s.blocked.is_some_and(|b| b.waiting >= 1) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.holding);
    assert_eq!(status.blocked.map(|b| b.waiting), Some(1), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the writer went through a held ACCESS EXCLUSIVE lock"
    );

    let reverted_at = Instant::now();
    fault.revert().await.expect("revert verified");
    let waited = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer proceeds")
        .expect("writer ok");
    assert!(
        waited >= Duration::from_millis(200),
        "writer was not blocked: {waited:?}"
    );
    assert!(
        reverted_at.elapsed() < Duration::from_secs(2),
        "writer did not proceed right after revert"
    );
    fault.revert().await.expect("revert again is a no-op");
    assert_eq!(
        pg_checksum(&c, &t).await,
        before,
        "the fault changed the table"
    );
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_hold_releases_the_lock_after_the_hold_time() {
    let (c, t) = pg_table().await;
    let fault = DbLockFault::new(
        &unique("f"),
        &spec(&format!(
            "{{ url: '{}', table: {t}, mode: share, hold: 800ms, every: 10s }}",
            pg_url()
        )),
        Duration::from_secs(5),
    )
    .expect("valid");
    fault.inject().await.expect("lock taken");
    let waited = tokio::time::timeout(Duration::from_secs(5), pg_writer(&t, 2))
        .await
        .expect("writer proceeds")
        .expect("ok");
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(2500),
        "the writer waited {waited:?}, not about the 800ms hold"
    );
    assert!(!fault.status().await.holding);
    fault.revert().await.expect("revert");
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_row_lock_blocks_only_matching_rows() {
    let (c, t) = pg_table().await;
    let fault = DbLockFault::new(
        &unique("f"),
        &spec(&format!("{{ url: '{}', table: {t}, mode: for_update, where: [{{ column: id, op: '=', value: 1 }}] }}", pg_url())),
        Duration::from_secs(5),
    )
    .expect("valid");
    fault.inject().await.expect("rows locked");
    let other = tokio::time::timeout(Duration::from_secs(3), pg_writer(&t, 2))
        .await
        .expect("row 2 is free")
        .expect("ok");
    assert!(other < Duration::from_millis(500));
    let locked = pg_writer(&t, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!locked.is_finished(), "row 1 should be locked");
    fault.revert().await.expect("revert");
    tokio::time::timeout(Duration::from_secs(3), locked)
        .await
        .expect("row 1 freed")
        .expect("ok");
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_revert_after_a_lost_holder_ends_the_session_by_name() {
    let (c, t) = pg_table().await;
    let id = unique("f");
    let yaml = format!("{{ url: '{}', table: {t} }}", pg_url());
    let first = DbLockFault::new(&id, &spec(&yaml), Duration::from_secs(30)).expect("valid");
    first.inject().await.expect("lock taken");
    // A restarted agent knows the fault only from its journal: a new object.
    let recovered = DbLockFault::new(&id, &spec(&yaml), Duration::from_secs(30)).expect("valid");
    recovered
        .revert()
        .await
        .expect("the leftover session is ended and verified gone");
    let waited = tokio::time::timeout(Duration::from_secs(3), pg_writer(&t, 3))
        .await
        .expect("free")
        .expect("ok");
    assert!(waited < Duration::from_secs(1));
    drop(first);
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_lock_timeout_bounds_the_wait_and_leaves_nothing() {
    let (c, t) = pg_table().await;
    let blocker = pg().await;
    blocker
        .batch_execute(&format!("BEGIN; LOCK TABLE {t} IN ACCESS SHARE MODE"))
        .await
        .expect("blocker");
    let fault = DbLockFault::new(
        &unique("f"),
        &spec(&format!(
            "{{ url: '{}', table: {t}, lock_timeout: 300ms }}",
            pg_url()
        )),
        Duration::from_secs(5),
    )
    .expect("valid");
    let start = Instant::now();
    let err = fault.inject().await.expect_err("the lock is not available");
    assert!(matches!(err, DbError::LockTimeout { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    fault.verify_reverted().await.expect("nothing held");
    blocker.batch_execute("ROLLBACK").await.expect("rollback");
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn pg_bad_credentials_missing_tables_and_dead_servers_are_clear_errors() {
    let lease = Duration::from_secs(5);
    let wrong = DbLockFault::new(
        "bad-auth",
        &spec("{ url: 'postgres://faultline:nope@127.0.0.1:5432/postgres', table: jobs }"),
        lease,
    )
    .expect("valid");
    let err = wrong.inject().await.expect_err("wrong password");
    assert!(matches!(err, DbError::Auth { .. }), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked: {err}"
    );

    let missing = DbLockFault::new(
        "missing",
        &spec(&format!(
            "{{ url: '{}', table: no_such_table_here }}",
            pg_url()
        )),
        lease,
    )
    .expect("valid");
    let err = missing.inject().await.expect_err("no table");
    assert!(matches!(err, DbError::Missing { .. }), "{err}");
    missing.verify_reverted().await.expect("nothing held");

    // A port nothing listens on: bind one, learn it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let dead = DbLockFault::new(
        "dead",
        &spec(&format!(
            "{{ url: 'postgres://faultline:faultline@127.0.0.1:{port}/postgres', table: jobs }}"
        )),
        lease,
    )
    .expect("valid");
    let err = dead.inject().await.expect_err("unreachable");
    assert!(matches!(err, DbError::Unreachable { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_kill_9_of_the_holder_frees_the_lock_within_the_dead_man_timeout() {
    let (c, t) = pg_table().await;
    let holder_bin = example_path("db_lock_holder");
    let lease = Duration::from_secs(2);
    let mut child = std::process::Command::new(&holder_bin)
        .args([&pg_url(), &t, &unique("killed"), "2s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", holder_bin.display()));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "held", "the holder did not take the lock");
    let writer = pg_writer(&t, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!writer.is_finished(), "the lock is not held");
    let killed_at = Instant::now();
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    tokio::time::timeout(
        lease + faultline_faults::db::DEAD_MAN_MARGIN + Duration::from_secs(1),
        writer,
    )
    .await
    .expect("the lock outlived the dead man's switch")
    .expect("writer ok");
    assert!(
        killed_at.elapsed()
            <= lease + faultline_faults::db::DEAD_MAN_MARGIN + Duration::from_secs(1)
    );
    c.batch_execute(&format!("DROP TABLE {t}"))
        .await
        .expect("drop");
}

/// The example binaries `cargo test` builds next to the test binaries.
fn example_path(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    dir.join("examples").join(name)
}

// === MariaDB / MySQL ===

async fn my() -> mysql_async::Conn {
    use mysql_async::prelude::Queryable;
    let base = my_url();
    let server = base
        .rsplit_once('/')
        .map_or(base.as_str(), |(s, _)| s)
        .to_owned();
    let mut admin = match mysql_async::Conn::from_url(&server).await {
        Ok(c) => c,
        Err(e) => panic!(
            "MariaDB is not reachable at {server} ({e}); start it with `./scripts/setup.sh` (installs mariadb-server, runs `service mariadb start` and creates the faultline user)"
        ),
    };
    admin
        .query_drop("CREATE DATABASE IF NOT EXISTS faultline_test")
        .await
        .expect("create db");
    admin.disconnect().await.expect("disconnect");
    mysql_async::Conn::from_url(&base)
        .await
        .expect("connect to faultline_test")
}

async fn my_table() -> (mysql_async::Conn, String) {
    use mysql_async::prelude::Queryable;
    let mut c = my().await;
    let t = unique("fl_jobs");
    c.query_drop(format!(
        "CREATE TABLE {t} (id INT PRIMARY KEY, v VARCHAR(10)) ENGINE=InnoDB"
    ))
    .await
    .expect("create");
    c.query_drop(format!("INSERT INTO {t} VALUES (1,'a'),(2,'b'),(3,'c')"))
        .await
        .expect("insert");
    (c, t)
}

async fn my_checksum(c: &mut mysql_async::Conn, t: &str) -> String {
    use mysql_async::prelude::Queryable;
    c.query_first::<String, _>(format!(
        "SELECT MD5(GROUP_CONCAT(id, v ORDER BY id)) FROM {t}"
    ))
    .await
    .expect("checksum")
    .expect("a row")
}

fn my_writer(t: &str, id: i32) -> tokio::task::JoinHandle<Duration> {
    use mysql_async::prelude::Queryable;
    let t = t.to_owned();
    tokio::spawn(async move {
        // Straight to the database: `my()` would run CREATE DATABASE, which waits
        // on the schema's metadata lock itself.
        let mut c = mysql_async::Conn::from_url(&my_url())
            .await
            .expect("connect");
        let start = Instant::now();
        c.exec_drop(format!("UPDATE {t} SET v = v WHERE id = ?"), (id,))
            .await
            .expect("write");
        let waited = start.elapsed();
        let _ = c.disconnect().await;
        waited
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_table_lock_blocks_writers_until_revert_and_changes_nothing() {
    use mysql_async::prelude::Queryable;
    let (mut c, t) = my_table().await;
    let before = my_checksum(&mut c, &t).await;
    let fault = DbLockFault::new(
        &unique("f"),
        &spec(&format!(
            "{{ url: '{}', table: {t}, mode: write }}",
            my_url()
        )),
        Duration::from_secs(5),
    )
    .expect("valid");
    fault.inject().await.expect("lock taken");
    let writer = my_writer(&t, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = fault.status().await;
        if s.blocked.is_some_and(|b| b.waiting >= 1) || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.blocked.map(|b| b.waiting), Some(1), "{status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished());
    fault.revert().await.expect("revert verified");
    let waited = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer proceeds")
        .expect("ok");
    assert!(waited >= Duration::from_millis(200));
    fault.revert().await.expect("revert again is a no-op");
    assert_eq!(my_checksum(&mut c, &t).await, before);
    c.query_drop(format!("DROP TABLE {t}")).await.expect("drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_row_lock_and_crash_revert_by_marker() {
    use mysql_async::prelude::Queryable;
    let (mut c, t) = my_table().await;
    let id = unique("f");
    let yaml = format!(
        "{{ url: '{}', table: {t}, mode: for_update, where: [{{ column: id, op: '=', value: 2 }}] }}",
        my_url()
    );
    let first = DbLockFault::new(&id, &spec(&yaml), Duration::from_secs(30)).expect("valid");
    first.inject().await.expect("row locked");
    let free = tokio::time::timeout(Duration::from_secs(3), my_writer(&t, 1))
        .await
        .expect("row 1 free")
        .expect("ok");
    assert!(free < Duration::from_millis(500));
    let locked = my_writer(&t, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!locked.is_finished(), "row 2 should be locked");
    // A restarted agent reverts from the journal alone: KILL by the marker.
    let recovered = DbLockFault::new(&id, &spec(&yaml), Duration::from_secs(30)).expect("valid");
    recovered
        .revert()
        .await
        .expect("leftover session killed and verified");
    tokio::time::timeout(Duration::from_secs(3), locked)
        .await
        .expect("row 2 freed")
        .expect("ok");
    drop(first);
    c.query_drop(format!("DROP TABLE {t}")).await.expect("drop");
}

#[tokio::test]
async fn mysql_bad_credentials_are_a_clear_error() {
    let _ = my().await;
    let fault = DbLockFault::new(
        "bad",
        &spec("{ url: 'mysql://faultline:wrong@127.0.0.1:3306/faultline_test', table: jobs }"),
        Duration::from_secs(5),
    )
    .expect("valid");
    let err = fault.inject().await.expect_err("wrong password");
    assert!(matches!(err, DbError::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("wrong@"), "{err}");
}

// === SQLite ===

fn sqlite_db(wal: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.db");
    let c = rusqlite::Connection::open(&path).expect("create");
    if wal {
        let _: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .expect("wal");
    }
    c.execute_batch("CREATE TABLE jobs (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO jobs VALUES (1, 'a'), (2, 'b');")
        .expect("fill");
    let p = path.display().to_string();
    (dir, p)
}

fn sqlite_try(path: &str, sql: &str) -> Result<(), rusqlite::Error> {
    let c = rusqlite::Connection::open(path)?;
    c.busy_timeout(Duration::from_millis(100))?;
    c.execute_batch(sql)
}

#[tokio::test]
async fn sqlite_immediate_blocks_writers_not_readers() {
    let (_dir, path) = sqlite_db(false);
    let fault = DbLockFault::new(
        "lite-imm",
        &spec(&format!("{{ url: 'sqlite://{path}', mode: immediate }}")),
        Duration::from_secs(5),
    )
    .expect("valid");
    fault.inject().await.expect("locked");
    assert!(
        sqlite_try(&path, "UPDATE jobs SET v = v WHERE id = 1").is_err(),
        "a writer went through"
    );
    sqlite_try(&path, "SELECT count(*) FROM jobs").expect("readers go on");
    fault.revert().await.expect("revert verified");
    sqlite_try(&path, "UPDATE jobs SET v = v WHERE id = 1").expect("writers go on after revert");
}

#[tokio::test]
async fn sqlite_exclusive_blocks_readers_too_in_both_journal_modes() {
    for wal in [false, true] {
        let (_dir, path) = sqlite_db(wal);
        let fault = DbLockFault::new(
            "lite-ex",
            &spec(&format!("{{ url: 'sqlite://{path}' }}")),
            Duration::from_secs(5),
        )
        .expect("valid");
        fault.inject().await.expect("locked");
        assert!(
            sqlite_try(&path, "SELECT count(*) FROM jobs").is_err(),
            "a reader went through (wal={wal})"
        );
        fault.revert().await.expect("revert verified");
        sqlite_try(&path, "SELECT count(*) FROM jobs").expect("readers go on after revert");
        let c = rusqlite::Connection::open(&path).expect("open");
        let n: i64 = c
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 2, "the fault changed the table");
    }
}

#[tokio::test]
async fn sqlite_missing_file_is_an_error_and_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nope.db");
    let fault = DbLockFault::new(
        "lite-missing",
        &spec(&format!("{{ url: 'sqlite://{}' }}", path.display())),
        Duration::from_secs(5),
    )
    .expect("valid");
    assert!(matches!(
        fault.inject().await,
        Err(DbError::Unreachable { .. })
    ));
    assert!(!path.exists(), "the fault created a database file");
}
