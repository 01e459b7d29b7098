//! The Toxiproxy API against the documented JSON shapes, codes and errors.

use serde_json::json;

use crate::util::{Harness, echo_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_toxic_shapes_match_toxiproxy() {
    let h = Harness::start().await;
    let up = echo_server().await;

    let body = format!(r#"{{"name":"db","listen":"127.0.0.1:0","upstream":"{up}"}}"#);
    let (status, created) = h.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(status, 201);
    let obj = created.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["enabled", "listen", "name", "toxics", "upstream"]);
    assert_eq!(created["name"], "db");
    assert_eq!(created["upstream"], up.to_string());
    assert_eq!(created["enabled"], true);
    assert_eq!(created["toxics"], json!([]));
    assert!(
        !created["listen"].as_str().unwrap().ends_with(":0"),
        "port resolved"
    );

    let (status, err) = h.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(
        (status, err),
        (409, json!({"error":"proxy already exists","status":409}))
    );
    let (status, err) = h
        .call("POST", "/proxies", Some(r#"{"upstream":"x:1"}"#))
        .await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"error":"missing required field: name","status":400})
        )
    );
    let (status, err) = h.call("POST", "/proxies", Some("{nope")).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("bad request body: ")
    );

    let (status, index) = h.call("GET", "/proxies", None).await;
    assert_eq!(status, 200);
    assert_eq!(index["db"], created);
    let (status, shown) = h.call("GET", "/proxies/db", None).await;
    assert_eq!((status, &shown), (200, &created));
    let (status, err) = h.call("GET", "/proxies/nope", None).await;
    assert_eq!(
        (status, err),
        (404, json!({"error":"proxy not found","status":404}))
    );

    // Toxics: defaults, shape, order (upstream before downstream), errors.
    let (status, t) = h
        .call(
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","attributes":{"latency":10}}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        t,
        json!({"attributes":{"latency":10,"jitter":0},"name":"latency_downstream",
               "type":"latency","stream":"downstream","toxicity":1.0})
    );
    let (status, _) = h
        .call(
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"name":"cut","type":"limit_data","stream":"upstream","toxicity":0.5,"attributes":{"bytes":5}}"#),
        )
        .await;
    assert_eq!(status, 200);
    let (status, err) = h
        .call("POST", "/proxies/db/toxics", Some(r#"{"type":"latency"}"#))
        .await;
    assert_eq!(
        (status, err),
        (409, json!({"error":"toxic already exists","status":409}))
    );
    let (status, err) = h
        .call("POST", "/proxies/db/toxics", Some(r#"{"type":"bogus"}"#))
        .await;
    assert_eq!(
        (status, err),
        (400, json!({"error":"invalid toxic type","status":400}))
    );
    let (status, err) = h
        .call(
            "POST",
            "/proxies/db/toxics",
            Some(r#"{"type":"latency","stream":"up"}"#),
        )
        .await;
    assert_eq!(
        (status, err),
        (
            400,
            json!({"error":"stream was invalid, can be either upstream or downstream","status":400})
        )
    );

    let (status, list) = h.call("GET", "/proxies/db/toxics", None).await;
    assert_eq!(status, 200);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert_eq!(names, [json!("cut"), json!("latency_downstream")]);

    let (status, updated) = h
        .call(
            "POST",
            "/proxies/db/toxics/latency_downstream",
            Some(r#"{"attributes":{"jitter":3}}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(updated["attributes"], json!({"latency":10,"jitter":3}));
    let (status, shown) = h
        .call("GET", "/proxies/db/toxics/latency_downstream", None)
        .await;
    assert_eq!((status, shown), (200, updated));
    let (status, err) = h.call("GET", "/proxies/db/toxics/none", None).await;
    assert_eq!(
        (status, err),
        (404, json!({"error":"toxic not found","status":404}))
    );

    let (status, body) = h.call("DELETE", "/proxies/db/toxics/cut", None).await;
    assert_eq!((status, body), (204, serde_json::Value::Null));
    let (status, _) = h.call("DELETE", "/proxies/db/toxics/cut", None).await;
    assert_eq!(status, 404);

    let (status, _) = h.call("POST", "/reset", None).await;
    assert_eq!(status, 204);
    let (_, list) = h.call("GET", "/proxies/db/toxics", None).await;
    assert_eq!(list, json!([]));

    let (status, v) = h.call("GET", "/version", None).await;
    assert_eq!(status, 200);
    assert!(v["version"].is_string());

    let (status, body) = h.call("DELETE", "/proxies/db", None).await;
    assert_eq!((status, body), (204, serde_json::Value::Null));
    let (status, _) = h.call("DELETE", "/proxies/db", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn populate_creates_keeps_and_reports_errors() {
    let h = Harness::start().await;
    let up = echo_server().await;
    let body = format!(
        r#"[{{"name":"a","listen":"127.0.0.1:0","upstream":"{up}"}},
            {{"name":"b","listen":"127.0.0.1:0","upstream":"{up}","enabled":false}}]"#
    );
    let (status, out) = h.call("POST", "/populate", Some(&body)).await;
    assert_eq!(status, 201, "{out}");
    let proxies = out["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    assert_eq!(proxies[0]["name"], "a");
    assert_eq!(proxies[0]["enabled"], true);
    assert_eq!(proxies[1]["enabled"], false);

    let (status, out) = h
        .call(
            "POST",
            "/populate",
            Some(r#"[{"name":"c","listen":"127.0.0.1:0"}]"#),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(out["error"], "missing required field: upstream at proxy 1");
    assert_eq!(out["status"], 400);

    let (status, _) = h.call("POST", "/populate", Some("{}")).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_are_refused() {
    let h = Harness::start().await;
    let stream = tokio::net::TcpStream::connect(h.api).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    w.write_all(
        b"GET /proxies HTTP/1.1\r\nHost: x\r\nUser-Agent: Mozilla/5.0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(crate::util::LIMIT, r.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}
