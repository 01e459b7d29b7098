//! Both `AgentClient` transports pass the same suite, against real processes: the
//! in-process manager and an agent served over HTTP in this process.

use std::time::Duration;

use faultline_controller::client::{AgentClient, FaultRequest, HttpClient, LocalClient};
use faultline_testkit::Child;
use serde_json::json;

const TOKEN: &str = "client-suite-token";

fn pause(child: &Child, lease: &str) -> FaultRequest {
    serde_json::from_value(json!({
        "kind": "process.pause", "params": {"pid": child.pid()}, "lease": lease
    }))
    .expect("request")
}

async fn suite(client: &dyn AgentClient) {
    let health = client.health().await.expect("health");
    assert!(health.capabilities.iter().any(|c| c == "process.pause"));

    let child = Child::sleep();
    let view = client
        .put_fault("s1", &pause(&child, "30s"))
        .await
        .expect("put");
    assert_eq!(view.kind, "process.pause");
    assert!(child.is_stopped());
    let again = client
        .put_fault("s1", &pause(&child, "30s"))
        .await
        .expect("idempotent put");
    assert_eq!(again.id, "s1");

    let other = Child::sleep();
    let err = client
        .put_fault("s1", &pause(&other, "30s"))
        .await
        .expect_err("conflict");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("conflict")),
        "{err}"
    );
    let unknown: FaultRequest =
        serde_json::from_value(json!({"kind": "process.nap", "params": {}, "lease": "1s"}))
            .expect("req");
    let err = client
        .put_fault("s2", &unknown)
        .await
        .expect_err("unknown kind");
    assert_eq!(
        (err.status(), err.code()),
        (Some(422), Some("unknown_kind")),
        "{err}"
    );

    let renewed = client
        .renew("s1", Some(faultline_spec::units::Duration::from_secs(60)))
        .await
        .expect("renew");
    assert!(renewed.expires_in_ms > 30_000);
    let err = client.renew("nope", None).await.expect_err("404");
    assert_eq!(err.status(), Some(404));

    assert_eq!(client.list().await.expect("list").len(), 1);
    assert!(client.delete_fault("s1").await.expect("delete"));
    assert!(!child.is_stopped());
    assert!(!client.delete_fault("s1").await.expect("delete again"));

    let a = Child::sleep();
    let b = Child::sleep();
    client
        .put_fault("h1", &pause(&a, "30s"))
        .await
        .expect("put");
    client
        .put_fault("h2", &pause(&b, "30s"))
        .await
        .expect("put");
    let report = client.halt().await.expect("halt");
    assert_eq!(report.reverted, ["h1", "h2"]);
    assert!(!a.is_stopped() && !b.is_stopped());
    assert!(client.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn local_transport() {
    let state = tempfile::tempdir().expect("tempdir");
    let (client, recovered) = LocalClient::start(state.path(), Default::default())
        .await
        .expect("local agent");
    assert!(recovered.reverted.is_empty());
    suite(&client).await;
}

#[tokio::test]
async fn http_transport() {
    let state = tempfile::tempdir().expect("tempdir");
    let agent = faultline_agent::start(faultline_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: faultline_agent::Token::new(Some(TOKEN.into())),
        state_dir: state.path().to_owned(),
        labels: Default::default(),
        tls: None,
        register: None,
    })
    .await
    .expect("agent");
    let base = format!("http://{}", agent.local_addr);
    let client = HttpClient::new(
        "a1",
        &base,
        Some(TOKEN.into()),
        None,
        Duration::from_secs(10),
    )
    .expect("client");
    suite(&client).await;

    let wrong = HttpClient::new(
        "a1",
        &base,
        Some("nope".into()),
        None,
        Duration::from_secs(10),
    )
    .expect("client");
    let err = wrong.health().await.expect_err("401");
    assert_eq!(
        (err.status(), err.code()),
        (Some(401), Some("unauthorized"))
    );
    agent.shutdown().await;
}

#[tokio::test]
async fn https_transport_with_a_private_ca() {
    let state = tempfile::tempdir().expect("tempdir");
    let certs = tempfile::tempdir().expect("tempdir");
    faultline_testkit::private_ca(certs.path());
    let agent = faultline_agent::start(faultline_agent::AgentConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        token: faultline_agent::Token::new(Some(TOKEN.into())),
        state_dir: state.path().to_owned(),
        labels: Default::default(),
        tls: Some((certs.path().join("cert.pem"), certs.path().join("key.pem"))),
        register: None,
    })
    .await
    .expect("agent with TLS");
    let base = format!("https://{}", agent.local_addr);
    let client = HttpClient::new(
        "tls",
        &base,
        Some(TOKEN.into()),
        Some(&certs.path().join("ca.pem")),
        Duration::from_secs(10),
    )
    .expect("client");
    suite(&client).await;

    // Plain HTTP to a TLS listener does not get through.
    let plain = HttpClient::new(
        "tls",
        &format!("http://{}", agent.local_addr),
        Some(TOKEN.into()),
        None,
        Duration::from_secs(3),
    )
    .expect("client");
    assert!(plain.health().await.is_err());
    agent.shutdown().await;
}
