//! `faultline demo [--break]`: the quickstart game day against an embedded target.
//!
//! Starts the demo completion API in this process (gateway 127.0.0.1:18080 ->
//! service 127.0.0.1:18081 -> SQLite jobs), the in-process agent, and runs
//! experiments/quickstart.yaml (compiled in) through the same engine and outputs
//! as `faultline run`. `--break` runs the same game day against a fragile build of
//! the target, whose SLA breaks: it exits 1, as a failing CI gate would.

use std::path::PathBuf;

use anyhow::Context as _;
use faultline_demo::{Demo, DemoConfig};
use faultline_spec::Inventory;

use super::exit;
use super::run::{OutputArgs, execute};

/// The quickstart, as shipped in experiments/.
const QUICKSTART: &str = include_str!("../../experiments/quickstart.yaml");
const QUICKSTART_PATH: &str = "experiments/quickstart.yaml";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Run against a fragile target (no database busy timeout, a gateway that
    /// admits 2 requests at once): its SLA breaks and the run exits 1.
    #[arg(long = "break")]
    broken: bool,
    /// Run this experiment against the demo target instead of the quickstart.
    #[arg(long, value_name = "FILE")]
    experiment: Option<PathBuf>,
    /// Bind free ports instead of 127.0.0.1:18080/18081, and point the
    /// experiment's probes and faults at them (for tests and busy machines).
    #[arg(long)]
    any_port: bool,
    #[command(flatten)]
    out: OutputArgs,
}

pub fn run(mut args: DemoArgs) -> anyhow::Result<u8> {
    let loaded = match &args.experiment {
        Some(path) => faultline_spec::load_file(path),
        None => faultline_spec::validate::load(QUICKSTART_PATH, QUICKSTART),
    };
    let Some(mut exp) = loaded.experiment else {
        eprint!("{}", loaded.report.render());
        return Ok(exit::INVALID);
    };
    if let Some(missing) = missing_prerequisite() {
        eprintln!("error: faultline demo needs {missing}");
        return Ok(exit::INVALID);
    }
    // The demo always leaves a report to look at.
    let report = args
        .out
        .report
        .get_or_insert_with(|| std::env::temp_dir().join("faultline-demo/report"))
        .clone();
    let mut config = if args.broken {
        DemoConfig::fragile()
    } else {
        DemoConfig::default()
    };
    if args.any_port {
        config.gateway.set_port(0);
        config.service.set_port(0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let demo = match Demo::start(config).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("error: cannot start the demo target: {e}");
                return Ok(exit::INVALID);
            }
        };
        retarget(&mut exp, &demo);
        eprintln!(
            "faultline demo: completion API at http://{}/v1/complete (gateway) -> {} (service){}",
            demo.gateway_addr(),
            demo.service_addr(),
            if args.broken { ", fragile build" } else { "" }
        );
        let code = execute(&exp, Inventory::default(), 0, &args.out).await;
        let stats = demo.stats();
        demo.shutdown().await;
        let code = code?;
        eprintln!(
            "faultline demo: the target answered {} requests: {} ok, {} rate-limited, {} server errors; report: {}",
            stats.requests,
            stats.ok,
            stats.rate_limited,
            stats.server_errors,
            report.join("index.html").display()
        );
        Ok(code)
    })
}

/// Points what the experiment aims at the demo's default addresses at the ones it
/// bound (the same unless `--any-port`): probe URLs and addresses, and the
/// `port`, `listen` and `upstream` of connection and HTTP faults.
fn retarget(exp: &mut faultline_spec::Experiment, demo: &Demo) {
    use faultline_spec::{FaultSpec, Probe};
    let map = [
        (faultline_demo::DEFAULT_GATEWAY_ADDR, demo.gateway_addr()),
        (faultline_demo::DEFAULT_SERVICE_ADDR, demo.service_addr()),
    ];
    let addr = |s: &mut String| {
        for (from, to) in map {
            *s = s.replace(&from.to_string(), &to.to_string());
        }
    };
    let port = |p: &mut Option<u16>| {
        for (from, to) in map {
            if *p == Some(from.port()) {
                *p = Some(to.port());
                break;
            }
        }
    };
    for probe in exp.probes.values_mut() {
        match probe {
            Probe::Http(h) => addr(&mut h.url),
            Probe::Llm(l) => addr(&mut l.url),
            Probe::Tcp(t) => addr(&mut t.address),
            _ => {}
        }
    }
    for step in &mut exp.method {
        let (listen, upstream, p) = match &mut step.fault {
            FaultSpec::NetworkLatency(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::NetworkDrop(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::NetworkBandwidth(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpError(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpDelay(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpRateLimit(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpQueue(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpStreamStall(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpStreamSlow(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            FaultSpec::HttpStreamTruncate(f) => (&mut f.listen, &mut f.upstream, &mut f.port),
            _ => continue,
        };
        listen.iter_mut().chain(upstream.iter_mut()).for_each(addr);
        port(p);
    }
}

/// The quickstart's network and gateway faults attach transparently to the
/// service's port with an nftables redirect: that takes root and `nft`.
fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some(
            "root: its network faults redirect a port with nftables (run it with sudo)".into(),
        );
    }
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .iter()
        .map(PathBuf::from)
        .any(|p| p.exists());
    if !nft {
        return Some(
            "nftables (`nft`): run ./scripts/setup.sh, or apt-get install nftables".into(),
        );
    }
    None
}
