//! `faultline run` with an llm probe against a real streaming server process: a
//! 2 s pause of the server mid-stream, and a 2 s `http.stream_stall` injected
//! transparently on its port, each show in `itl_p99` and fail the `during`
//! tolerance `itl_p99 <= 500ms` with exit 1, naming it; the SLA (availability and
//! TTFT) holds before and again after.

use faultline_testkit::Child;

use crate::faultline;

#[test]
fn a_stalled_stream_fails_itl_p99_with_exit_1_naming_it() {
    // Streams of 20 tokens at 50 ms: about ten are mid-stream when the pause hits.
    let (server, addr) = Child::sse_server(20, std::time::Duration::from_millis(50));
    let fault = format!("process.pause: {{ pid: {} }}", server.pid());
    stall_fails_itl_p99(&server, addr, &fault, "500ms", "2s");
}

#[test]
fn an_http_stream_stall_fails_itl_p99_with_exit_1_naming_it() {
    let (server, addr) = Child::sse_server(10, std::time::Duration::from_millis(50));
    // Every stream held 2 s after its 3rd event, through the transparent proxy.
    let fault = format!(
        "http.stream_stall: {{ port: {}, after_events: 3, hold: 2s, path: /v1/chat }}",
        addr.port()
    );
    stall_fails_itl_p99(&server, addr, &fault, "0s", "3s");
}

/// Runs `fault` (a flow-style fault map) against the streams of `server` and
/// checks the run fails `itl_p99 <= 500ms` during it, and only that, by about
/// the 2 s stall.
fn stall_fails_itl_p99(
    server: &Child,
    addr: std::net::SocketAddr,
    fault: &str,
    start: &str,
    duration: &str,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exp = dir.path().join("llm.yaml");
    std::fs::write(
        &exp,
        format!(
            r#"version: faultline/v1
name: llm-stall
targets:
  host: {{ agents: [local] }}
probes:
  chat:
    llm: {{ url: "http://{addr}/v1/chat/completions", model: demo, prompts: [hello, world],
           max_tokens: 20, rate: 10/s, timeout: 5s }}
hypotheses:
  - {{ probe: chat, availability: ">= 99%", ttft_p99: "<= 1s", window: 2s }}
during:
  - {{ probe: chat, itl_p99: "<= 500ms", window: 2s }}
recovery: {{ within: 10s }}
method:
  - name: freeze
    target: host
    fault: {{ {fault} }}
    start: {start}
    duration: {duration}
safety:
  lease: 5s
"#
        ),
    )
    .expect("write experiment");
    let out = faultline()
        .arg("run")
        .arg(&exp)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--journal")
        .arg(dir.path().join("journal.json"))
        .timeout(std::time::Duration::from_secs(90))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!server.is_stopped(), "left paused");
    let name = "chat: itl_p99 <= 500ms over 2s";
    assert!(stdout.contains(name), "{stdout}");

    let journal: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("journal.json")).expect("journal"),
    )
    .expect("journal is JSON");
    let failed = crate::failed_verdicts(&journal);
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert_eq!(failed[0]["name"], name);
    // Reverted, and confirmed from outside.
    assert_eq!(
        journal["faults"][0]["revert_confirmed"], true,
        "{:#}",
        journal["faults"]
    );
    let check = &failed[0]["checks"][0];
    assert_eq!(check["metric"], "itl_p99");
    // The stall is the 2 s pause, give or take the machine.
    let ms = check["value"].as_f64().expect("observed ms");
    assert!((1500.0..4000.0).contains(&ms), "{check}");
    // The baseline and the recovery held: TTFT and availability were judged.
    let held = crate::verdicts(&journal, |v| {
        v["holds"] == true && v["name"].as_str().is_some_and(|n| n.contains("ttft_p99"))
    });
    assert!(held.len() >= 2, "{:#?}", journal["verdicts"]);
}
