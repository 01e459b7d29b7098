//! One HTTP/1.1 listener with keep-alive: an accept loop that owns its connection
//! tasks, so that aborting it ends every connection, and a graceful stop.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::Counters;

/// A running listener.
#[derive(Debug)]
pub(crate) struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `listener`; `accepted` counts accepted connections.
    pub(crate) fn start(
        listener: TcpListener,
        router: Router,
        accepted: Option<Arc<Counters>>,
    ) -> Server {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, router, accepted, stopped));
        Server { stop, task }
    }

    /// Stops accepting (the port is free at once), lets open exchanges finish for
    /// at most `grace`, then aborts what is left.
    pub(crate) async fn stop(self, grace: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Ends the listener and every connection now.
    pub(crate) fn abort(self) {
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    router: Router,
    accepted: Option<Arc<Counters>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    // Dropped with this task when it is aborted: every connection ends with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accept = listener.accept() => match accept {
                Ok((tcp, _peer)) => {
                    if let Some(counters) = &accepted {
                        Counters::bump(&counters.service_connections);
                    }
                    if let Err(err) = tcp.set_nodelay(true) {
                        tracing::debug!(%err, "TCP_NODELAY not set");
                    }
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(router.clone()));
                    let conn = graceful.watch(conn);
                    connections.spawn(async move {
                        if let Err(err) = conn.await {
                            tracing::debug!(%err, "demo connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(%err, "demo listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Idle keep-alive connections close now; open exchanges finish first.
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
}
