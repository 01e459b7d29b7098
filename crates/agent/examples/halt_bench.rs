//! Halt of 100 active faults: 50 process.pause (each on its own `sleep`) and 50
//! network.partition tables (each on its own loopback peer), reverted by one
//! `halt()` and verified from outside. Prints one line per round and a summary.
//! Run as root: `bench/agent-halt/run.sh`. A measurement, not a test.
#![allow(clippy::print_stdout, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use faultline_agent::{FaultRequest, Manager};
use serde_json::json;

const FAULTS: usize = 100;
const ROUNDS: usize = 5;

fn request(kind: &str, params: serde_json::Value) -> FaultRequest {
    serde_json::from_value(json!({"kind": kind, "params": params, "lease": "60s"}))
        .expect("request")
}

#[tokio::main]
async fn main() {
    let state = std::env::temp_dir().join(format!("faultline-halt-bench-{}", std::process::id()));
    let manager = Manager::open(&state, Default::default()).expect("journal");
    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let mut children = Vec::new();
        for i in 0..FAULTS {
            let id = format!("r{round}-f{i}");
            let req = if i % 2 == 0 {
                let child = Command::new("sleep")
                    .arg("600")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("sleep");
                let req = request("process.pause", json!({"pid": child.id()}));
                children.push(child);
                req
            } else {
                let peer = format!("127.78.{}.{}", round + 1, i + 1);
                request("network.partition", json!({"peers": [peer]}))
            };
            manager.put(&id, &req).await.expect("inject");
        }
        let started = Instant::now();
        let report = manager.halt().await;
        let took = started.elapsed();
        assert_eq!(report.reverted.len(), FAULTS, "failed: {:?}", report.failed);
        for c in &children {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim().chars().next());
            assert_ne!(state, Some('T'), "pid {} still stopped", c.id());
        }
        println!("round {round}: halt of {FAULTS} faults took {took:?}");
        times.push(took);
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "halt of {FAULTS} faults (50 process.pause + 50 network.partition): best {:?}, median {:?}, worst {:?}; target < {:?}",
        times[0],
        median,
        times[times.len() - 1],
        Duration::from_secs(1)
    );
    let _ = std::fs::remove_dir_all(&state);
}
