//! faultline's fault proxy: the data path that injects network faults between a
//! client and a server, and the Toxiproxy-compatible API that drives it.
//!
//! Its job: L4 proxies (listen -> upstream) with Toxiproxy's toxics (latency
//! with jitter, bandwidth, slow_close, timeout, reset_peer, limit_data, slicer,
//! plus `refuse`) applied per direction with a per-connection probability; L7
//! HTTP faults on a hyper proxy (`http.error`, `http.delay`, the gateway limits
//! `http.rate_limit` and `http.queue`, and `http.stream_*` on streamed SSE and
//! chunked responses); transparent
//! redirection of a port into a proxy with an nftables table of its own; and
//! the Toxiproxy 2.x HTTP API ([`api::router`]) so existing clients work
//! unchanged. [`ProxyServer`] and [`Proxy`] are the same operations in-process.
//!
//! Its limits: the hot path takes no lock and makes no allocation per chunk
//! (toxic sets are immutable snapshots swapped atomically; buffers come from a
//! pool), and it must never distort what it does not inject: a connection with
//! no active toxic is a plain read/write loop. It knows nothing of experiments,
//! leases or agents; it never targets an address it was not given. Bulk streams
//! with no active toxic move through `splice(2)` (no copy to user space); toxics
//! see the bytes, so a direction with a toxic copies through a pooled buffer.

mod error;
mod gateway;
mod link;
mod pool;
mod server;
mod stream;
mod timer;

pub mod api;
pub mod http;
pub mod toxic;
pub mod transparent;

pub use error::ProxyError;
pub use link::DRAIN_QUIET;
pub use server::{
    DrainReport, Proxy, ProxyConfig, ProxyInfo, ProxyServer, ProxyUpdate, ServerOptions,
};
pub use toxic::{Stream, Toxic, ToxicKind};
