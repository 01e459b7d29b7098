//! `faultline proxy`: the standalone fault proxy, driven by its
//! Toxiproxy-compatible HTTP API, until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use faultline_proxy::{ProxyConfig, ProxyServer, api};

/// Run the fault proxy with its Toxiproxy-compatible API.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// Listen address of the Toxiproxy-compatible HTTP API.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8474")]
    pub api: SocketAddr,
    /// Toxiproxy-style JSON file (an array of {name, listen, upstream, enabled})
    /// of proxies to create at start, as `toxiproxy-server -config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Serves until Ctrl-C or SIGTERM; every proxy is stopped before returning.
pub fn run(args: ProxyArgs) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("faultline-proxy")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ProxyArgs) -> anyhow::Result<u8> {
    let server = ProxyServer::new()?;
    if let Some(path) = &args.config {
        let text = std::fs::read(path)
            .with_context(|| format!("reading proxy config {}", path.display()))?;
        let configs: Vec<ProxyConfig> = serde_json::from_slice(&text).with_context(|| {
            format!(
                "{}: expected a JSON array of {{\"name\", \"listen\", \"upstream\"}}",
                path.display()
            )
        })?;
        let created = server
            .populate(configs)
            .map_err(|(e, _)| e)
            .with_context(|| format!("creating the proxies of {}", path.display()))?;
        for p in &created {
            let info = p.info();
            eprintln!(
                "faultline proxy: {} {} -> {}",
                info.name, info.listen, info.upstream
            );
        }
    }
    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| format!("binding the API on {} (is it in use?)", args.api))?;
    let bound = listener.local_addr().context("reading the API address")?;
    eprintln!("faultline proxy: Toxiproxy-compatible API on http://{bound}");
    api::serve(listener, server.clone(), shutdown_signal())
        .await
        .context("serving the API")?;
    server.shutdown();
    eprintln!("faultline proxy: stopped");
    Ok(super::exit::OK)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
