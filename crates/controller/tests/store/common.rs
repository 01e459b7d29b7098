//! Fixtures: a fresh store per test, on SQLite (a file in a temporary directory) or
//! on PostgreSQL (a database of its own on the cluster `./scripts/setup.sh` starts,
//! dropped afterwards, also when the test fails).

use std::future::Future;
use std::sync::Arc;

use faultline_controller::store::{self, NewExperiment, RunStore};

#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What a test gets: the store, and the URL to open it again.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub store: Arc<dyn RunStore>,
    pub url: String,
}

impl Fixture {
    pub async fn reopen(&self) -> Arc<dyn RunStore> {
        store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("reopen {}: {e}", self.store.backend()))
    }

    pub async fn experiment(&self, name: &str) -> store::Experiment {
        self.store
            .create_experiment(&NewExperiment {
                name: name.to_owned(),
                yaml: format!("version: faultline/v1\nname: {name}\n"),
                created_by: "alice".to_owned(),
            })
            .await
            .expect("create experiment")
    }
}

/// The admin URL: `FAULTLINE_TEST_PG_URL`, or the role `./scripts/setup.sh` creates.
fn pg_admin_url() -> String {
    std::env::var("FAULTLINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://faultline:faultline@127.0.0.1:5432/postgres".to_owned())
}

async fn pg_admin() -> tokio_postgres::Client {
    let url = pg_admin_url();
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            client
        }
        Err(e) => {
            let at = url
                .rsplit_once('@')
                .map_or("127.0.0.1:5432", |(_, host)| host);
            panic!(
                "PostgreSQL is not reachable at {at} ({e}); start it with `./scripts/setup.sh` \
                 (runs `pg_ctlcluster 15 main start` and creates the faultline role)"
            )
        }
    }
}

fn unique(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}_{:016x}", rand::rng().random::<u64>())
}

/// Runs `test` against a fresh store of `backend`, cleaning up whatever happens.
pub async fn run<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}/runs.db", dir.path().display());
            let store = store::open(&url).await.expect("open sqlite store");
            let outcome = tokio::spawn(test(Fixture { store, url })).await;
            drop(dir);
            if let Err(e) = outcome {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Backend::Postgres => {
            let admin = pg_admin().await;
            let name = unique("faultline_store");
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .expect("create test database");
            let base = pg_admin_url();
            let (prefix, _) = base.rsplit_once('/').expect("a URL with a database path");
            let url = format!("{prefix}/{name}");
            let outcome = match store::open(&url).await {
                Ok(store) => tokio::spawn(test(Fixture { store, url })).await,
                Err(e) => tokio::spawn(async move { panic!("open postgres store: {e}") }).await,
            };
            // FORCE ends the store's pooled connections.
            let dropped = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            if let Err(e) = outcome {
                std::panic::resume_unwind(e.into_panic());
            }
            dropped.expect("drop test database");
        }
    }
}

/// One `#[tokio::test]` per backend for each suite function `async fn(Fixture)`.
#[macro_export]
macro_rules! on_both_backends {
    ($suite:ident: $($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Sqlite, $crate::$suite::$name).await
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::common::run($crate::common::Backend::Postgres, $crate::$suite::$name).await
                }
            )+
        }
    };
}
