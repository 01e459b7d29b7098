//! TCP probe: a connect per attempt, timed from the scheduled instant, closed at once.

use tokio::net::TcpStream;

use crate::window::FailureKind;

/// Connects to `address` (`host:port`) and closes the connection.
pub async fn attempt(address: &str) -> Result<Option<f64>, FailureKind> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|_| FailureKind::Connect)?;
    drop(stream);
    Ok(None)
}
