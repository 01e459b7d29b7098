//! The HTTP transport: reqwest over rustls (ring provider), bearer token, JSON.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use faultline_spec::units::Duration;
use reqwest::Method;
use serde::de::DeserializeOwned;

use super::{
    AgentClient, BoxFuture, ClientError, FaultRequest, FaultStatus, FaultView, HaltReport, Health,
};

#[derive(Clone)]
pub struct HttpClient {
    name: String,
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("HttpClient")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client for the agent `name` at `base` (`http://host:7600` or `https://...`).
    /// `ca_pem`: the CA that signed the agent's certificate (agents usually have a
    /// private one); without it the platform's roots are used.
    pub fn new(
        name: &str,
        base: &str,
        token: Option<String>,
        ca_pem: Option<&Path>,
        timeout: StdDuration,
    ) -> Result<Self, ClientError> {
        let http = reqwest_client(name, ca_pem, Some(timeout), timeout)?;
        Ok(Self {
            name: name.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// `POST path` without a body, its JSON answer as it is: for calls beyond the
    /// agent API, such as a controller's `POST /v1/halt`.
    pub async fn post(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(Method::POST, path, None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            agent: self.name.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            agent: self.name.clone(),
            reason: e.to_string(),
        })?;
        let protocol = |reason: String| ClientError::Protocol {
            agent: self.name.clone(),
            reason,
        };
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| protocol(e.to_string()));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|_| protocol(format!("{status} without a JSON error body")))?;
        Err(ClientError::Rejected {
            agent: self.name.clone(),
            status: status.as_u16(),
            error: v["error"].as_str().unwrap_or("unknown").to_owned(),
            reason: v["reason"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// A reqwest client over rustls with the ring provider: `ca_pem`, the CA that
/// signed the peer's certificate, or the platform's roots without it.
/// `timeout` bounds whole calls (`None`: streams); `connect` the connection.
pub(crate) fn reqwest_client(
    name: &str,
    ca_pem: Option<&Path>,
    timeout: Option<StdDuration>,
    connect: StdDuration,
) -> Result<reqwest::Client, ClientError> {
    let fail = |reason: String| ClientError::Unreachable {
        agent: name.to_owned(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut builder =
        reqwest::Client::builder().connect_timeout(connect.min(StdDuration::from_secs(5)));
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    match ca_pem {
        Some(path) => {
            use rustls_pki_types::CertificateDer;
            use rustls_pki_types::pem::PemObject as _;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(format!("cannot read CA {}: {e}", path.display())))?
            {
                let cert = cert.map_err(|e| fail(format!("CA {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("CA {}: {e}", path.display())))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder = builder.tls_backend_preconfigured(config);
        }
        None => {
            // reqwest builds its own config from the process-wide provider.
            let _ = rustls::crypto::CryptoProvider::install_default(
                rustls::crypto::ring::default_provider(),
            );
        }
    }
    builder.build().map_err(|e| fail(e.to_string()))
}

/// Percent-encoding is not needed: fault ids are `[A-Za-z0-9._-]` (the agent
/// refuses others), so refuse others here too rather than send a different path.
fn checked_id<'a>(agent: &str, id: &'a str) -> Result<&'a str, ClientError> {
    if faultline_agent::manager::valid_id(id) {
        Ok(id)
    } else {
        Err(ClientError::Rejected {
            agent: agent.to_owned(),
            status: 400,
            error: "bad_id".into(),
            reason: format!("invalid fault id {id:?}"),
        })
    }
}

impl AgentClient for HttpClient {
    fn name(&self) -> &str {
        &self.name
    }

    fn health(&self) -> BoxFuture<'_, Result<Health, ClientError>> {
        Box::pin(self.call(Method::GET, "/v1/health", None))
    }

    fn put_fault<'a>(
        &'a self,
        id: &'a str,
        request: &'a FaultRequest,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>> {
        Box::pin(async move {
            let id = checked_id(&self.name, id)?;
            let body = serde_json::to_value(request).map_err(|e| ClientError::Protocol {
                agent: self.name.clone(),
                reason: e.to_string(),
            })?;
            self.call(Method::PUT, &format!("/v1/faults/{id}"), Some(body))
                .await
        })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        lease: Option<Duration>,
    ) -> BoxFuture<'a, Result<FaultView, ClientError>> {
        Box::pin(async move {
            let id = checked_id(&self.name, id)?;
            let body = lease.map(|l| serde_json::json!({ "lease": l.to_string() }));
            self.call(Method::POST, &format!("/v1/faults/{id}/renew"), body)
                .await
        })
    }

    fn delete_fault<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, ClientError>> {
        Box::pin(async move {
            let id = checked_id(&self.name, id)?;
            let v: serde_json::Value = self
                .call(Method::DELETE, &format!("/v1/faults/{id}"), None)
                .await?;
            Ok(v["reverted"].as_bool().unwrap_or(false))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<FaultView>, ClientError>> {
        Box::pin(self.call(Method::GET, "/v1/faults", None))
    }

    fn status<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FaultStatus>, ClientError>> {
        Box::pin(async move {
            let id = checked_id(&self.name, id)?;
            match self
                .call(Method::GET, &format!("/v1/faults/{id}"), None)
                .await
            {
                Ok(s) => Ok(Some(s)),
                Err(e) if e.status() == Some(404) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn halt(&self) -> BoxFuture<'_, Result<HaltReport, ClientError>> {
        Box::pin(self.call(Method::POST, "/v1/halt", None))
    }
}
