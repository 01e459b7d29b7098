//! The proxy's error type. Messages of the API-facing variants are exactly
//! Toxiproxy's, because clients match on them.

use std::net::SocketAddr;

/// Everything the proxy library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No proxy of that name.
    #[error("proxy not found")]
    ProxyNotFound,
    /// A proxy of that name exists already.
    #[error("proxy already exists")]
    ProxyAlreadyExists,
    /// No toxic of that name on the proxy.
    #[error("toxic not found")]
    ToxicNotFound,
    /// A toxic of that name exists already on the proxy.
    #[error("toxic already exists")]
    ToxicAlreadyExists,
    /// `stream` is neither upstream nor downstream.
    #[error("stream was invalid, can be either upstream or downstream")]
    InvalidStream,
    /// `type` names no known toxic.
    #[error("invalid toxic type")]
    InvalidToxicType,
    /// A required field is missing or empty.
    #[error("missing required field: {0}")]
    MissingField(String),
    /// The body is not the JSON expected.
    #[error("bad request body: {0}")]
    BadRequestBody(String),
    /// The listen address could not be bound.
    #[error("listen tcp {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The listen address is not `host:port` with a literal IP.
    #[error("listen address {0:?} is not IP:PORT (for example 127.0.0.1:0)")]
    BadListen(String),
    /// The library was used outside a tokio runtime.
    #[error("faultline-proxy needs a tokio runtime: create ProxyServer inside one")]
    NoRuntime,
    /// An nftables command failed.
    #[error(
        "nft {what}: {detail}; is nftables installed (apt-get install -y nftables) and are we root?"
    )]
    Nft {
        /// What was being done.
        what: &'static str,
        /// stderr of nft, or the spawn error.
        detail: String,
    },
    /// The HTTP fault proxy could not start.
    #[error("http fault proxy on {addr}: {source}")]
    Http {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    /// The HTTP status Toxiproxy answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            Self::ProxyNotFound | Self::ToxicNotFound => 404,
            Self::ProxyAlreadyExists | Self::ToxicAlreadyExists => 409,
            Self::InvalidStream
            | Self::InvalidToxicType
            | Self::MissingField(_)
            | Self::BadRequestBody(_)
            | Self::BadListen(_) => 400,
            Self::Bind { .. } | Self::NoRuntime | Self::Nft { .. } | Self::Http { .. } => 500,
        }
    }
}
