//! Integration tests of faultline-proxy: real sockets on 127.0.0.1, an echo
//! server, the Toxiproxy API over HTTP, and a published Toxiproxy client.
//! One binary, so the crate links once.

mod api;
mod drain;
mod http;
mod l4;
mod llm;
mod python_client;
mod transparent;
mod util;
