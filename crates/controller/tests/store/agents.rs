//! The registry's store methods (migration 2 "agents"), on both backends.

use std::collections::BTreeMap;
use std::time::Duration;

use faultline_controller::store::{
    AgentRegistration, AgentState, AuditQuery, LOST_AFTER_HEARTBEATS, StoreError,
};
use serde_json::json;

use crate::common::Fixture;

/// The interval heartbeats report in these tests, unless a test says otherwise.
const HB: u64 = 5000;

crate::on_both_backends!(agents:
    registration_upserts_and_bumps_the_generation,
    heartbeats_need_the_current_token_hash,
    silent_agents_become_lost_by_the_store_clock,
    invalid_registrations_write_nothing,
);

fn reg(id: &str, hash: &str, heartbeat_ms: u64) -> AgentRegistration {
    AgentRegistration {
        id: id.to_owned(),
        url: format!("http://10.0.0.1:7600/{id}"),
        labels: BTreeMap::from([("role".to_owned(), "worker".to_owned())]),
        capabilities: vec!["network.partition".to_owned(), "process.pause".to_owned()],
        version: "0.1.0".to_owned(),
        host: json!({ "hostname": "h", "os": "linux", "kernel": "6.1", "cpus": 4 }),
        token_hash: hash.to_owned(),
        heartbeat_ms,
    }
}

pub async fn registration_upserts_and_bumps_the_generation(fx: Fixture) {
    let s = &fx.store;
    let a = s
        .register_agent(&reg("w2", "h1", 5000), "agent:w2")
        .await
        .unwrap();
    assert_eq!(
        (a.generation, a.state, a.active_faults),
        (1, AgentState::Alive, 0)
    );
    assert_eq!(a.capabilities.len(), 2);
    assert_eq!(a.host["cpus"], 4);
    s.register_agent(&reg("w1", "x", 5000), "agent:w1")
        .await
        .unwrap();
    let mut again = reg("w2", "h2", 2000);
    again.labels.insert("zone".to_owned(), "b".to_owned());
    again.url = "http://10.0.0.9:7600".to_owned();
    let b = s.register_agent(&again, "agent:w2").await.unwrap();
    assert_eq!(b.generation, 2, "re-registration rotates");
    assert_eq!(b.heartbeat_ms, 2000);
    assert_eq!(b.labels.get("zone").map(String::as_str), Some("b"));
    assert_eq!(b.url, "http://10.0.0.9:7600");
    assert!(b.last_seen >= a.last_seen);
    // Listed by id; the same through get.
    let snap = s.list_agents().await.unwrap();
    let ids: Vec<&str> = snap.agents.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2"]);
    assert!(snap.at >= b.last_seen);
    assert_eq!(
        s.get_agent("w2").await.unwrap().map(|a| a.generation),
        Some(2)
    );
    assert_eq!(s.get_agent("nope").await.unwrap(), None);
    // Survives a reopen (it is in the store, not in memory).
    let reopened = fx.reopen().await;
    assert_eq!(reopened.list_agents().await.unwrap().agents.len(), 2);
    // Audited: a first registration and a re-registration.
    let audit = s
        .list_audit(&AuditQuery {
            target: Some("w2".to_owned()),
            ..AuditQuery::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["agent.reregister", "agent.register"]);
    assert_eq!(audit[0].actor, "agent:w2");
    assert_eq!(audit[0].detail["generation"], 2);
}

pub async fn heartbeats_need_the_current_token_hash(fx: Fixture) {
    let s = &fx.store;
    let first = s
        .register_agent(&reg("w1", "old", 5000), "agent:w1")
        .await
        .unwrap();
    let seen = s
        .heartbeat_agent("w1", "old", 3, HB)
        .await
        .unwrap()
        .expect("known");
    assert_eq!(seen.active_faults, 3);
    assert!(seen.last_seen >= first.last_seen);
    assert_eq!(s.heartbeat_agent("w1", "wrong", 0, HB).await.unwrap(), None);
    assert_eq!(
        s.heartbeat_agent("ghost", "old", 0, HB).await.unwrap(),
        None
    );
    // A re-registration rotates the token: the old one is refused.
    s.register_agent(&reg("w1", "new", 5000), "agent:w1")
        .await
        .unwrap();
    assert_eq!(s.heartbeat_agent("w1", "old", 0, HB).await.unwrap(), None);
    assert!(
        s.heartbeat_agent("w1", "new", 0, HB)
            .await
            .unwrap()
            .is_some()
    );
    // A refused heartbeat changed nothing.
    assert_eq!(s.get_agent("w1").await.unwrap().unwrap().active_faults, 0);
    // A heartbeat keeps the interval the agent is told now.
    let slower = s
        .heartbeat_agent("w1", "new", 1, 9000)
        .await
        .unwrap()
        .expect("known");
    assert_eq!(slower.heartbeat_ms, 9000);
}

pub async fn silent_agents_become_lost_by_the_store_clock(fx: Fixture) {
    let s = &fx.store;
    let hb = 100u64;
    s.register_agent(&reg("quiet", "q", hb), "agent:quiet")
        .await
        .unwrap();
    s.register_agent(&reg("chatty", "c", hb), "agent:chatty")
        .await
        .unwrap();
    // Keep one heartbeating; let the other fall silent past 3 intervals.
    let until = tokio::time::Instant::now()
        + Duration::from_millis(hb * u64::from(LOST_AFTER_HEARTBEATS) + 250);
    while tokio::time::Instant::now() < until {
        assert!(
            s.heartbeat_agent("chatty", "c", 0, hb)
                .await
                .unwrap()
                .is_some()
        );
        tokio::time::sleep(Duration::from_millis(hb / 2)).await;
    }
    let snap = s.list_agents().await.unwrap();
    let state = |id: &str| snap.agents.iter().find(|a| a.id == id).map(|a| a.state);
    assert_eq!(state("quiet"), Some(AgentState::Lost));
    assert_eq!(state("chatty"), Some(AgentState::Alive));
    assert_eq!(
        snap.alive().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["chatty"]
    );
    // A heartbeat brings a lost agent back.
    s.heartbeat_agent("quiet", "q", 0, hb).await.unwrap();
    assert_eq!(
        s.get_agent("quiet").await.unwrap().map(|a| a.state),
        Some(AgentState::Alive)
    );
}

pub async fn invalid_registrations_write_nothing(fx: Fixture) {
    let s = &fx.store;
    for bad in [reg("", "h", 5000), reg("a/b", "h", 5000), reg("ok", "h", 0)] {
        let e = s.register_agent(&bad, "x").await.unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    }
    assert!(s.list_agents().await.unwrap().agents.is_empty());
    assert!(
        s.list_audit(&AuditQuery::default())
            .await
            .unwrap()
            .is_empty()
    );
}
