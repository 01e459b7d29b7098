//! `faultline-gpu-state`: writes a GPU fault-state file by hand, the way the
//! agent's gpu faults do. For scripts/gpu-check.sh and for tests that kill the
//! writer to prove the lease lapses. Not an agent: one file, no journal.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use faultline_cuda_shim::state::{DeviceMask, Fault, FaultMode, GpuError, StateFile};

const USAGE: &str = "\
usage: faultline-gpu-state init FILE
       faultline-gpu-state show FILE
       faultline-gpu-state clear FILE
       faultline-gpu-state set FILE FAULT [--lease-ms N]       (set once, lease not renewed)
       faultline-gpu-state hold FILE FAULT [--lease-ms N] [--renew-ms N]
                                            (set, then renew until killed: an agent stand-in)
FAULT: --error NAME | --delay-ms N,  plus [--devices all|0,1,...] [--after N]
NAME:  no_device device_unavailable ecc_uncorrectable out_of_memory launch_failed gpu_is_lost";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-gpu-state: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct Opts {
    fault: Option<Fault>,
    lease: Duration,
    renew: Duration,
}

fn parse_fault(args: &[String]) -> Result<Opts, String> {
    let mut mode = None;
    let mut devices = DeviceMask::ALL;
    let mut after_calls = 0;
    let mut lease = Duration::from_secs(10);
    let mut renew = Duration::from_secs(1);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--error" => {
                let v = value()?;
                let e = GpuError::from_name(v).ok_or_else(|| format!("unknown error {v}"))?;
                mode = Some(FaultMode::unavailable(e));
            }
            "--delay-ms" => {
                mode = Some(FaultMode::Slow {
                    delay: Duration::from_millis(num(value()?)?),
                });
            }
            "--devices" => {
                let v = value()?;
                devices = if v == "all" {
                    DeviceMask::ALL
                } else {
                    let ords = v
                        .split(',')
                        .map(|o| {
                            o.trim()
                                .parse::<u32>()
                                .map_err(|e| format!("device {o}: {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    DeviceMask::ordinals(ords)
                };
            }
            "--after" => after_calls = num(value()?)?,
            "--lease-ms" => lease = Duration::from_millis(num(value()?)?),
            "--renew-ms" => renew = Duration::from_millis(num(value()?)?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Opts {
        fault: mode.map(|mode| Fault {
            mode,
            devices,
            after_calls,
        }),
        lease,
        renew,
    })
}

fn run(args: &[String]) -> Result<(), String> {
    let (cmd, file, rest) = match args {
        [cmd, file, rest @ ..] => (cmd.as_str(), file, rest),
        _ => return Err("missing command or FILE".into()),
    };
    let mut sf = StateFile::create(file).map_err(|e| e.to_string())?;
    match cmd {
        "init" => Ok(()),
        "clear" => {
            sf.clear();
            Ok(())
        }
        "show" => {
            let snap = sf.snapshot().ok_or("writer stuck mid-update")?;
            let (attached, faulted) = sf.counters();
            println!("{snap:?}");
            println!("active: {:?}", sf.active_fault());
            println!("attached: {attached} faulted_calls: {faulted}");
            Ok(())
        }
        "set" | "hold" => {
            let opts = parse_fault(rest)?;
            let fault = opts.fault.ok_or("--error or --delay-ms is required")?;
            sf.set_fault(&fault, SystemTime::now() + opts.lease)
                .map_err(|e| e.to_string())?;
            if cmd == "set" {
                return Ok(());
            }
            println!("holding");
            loop {
                std::thread::sleep(opts.renew);
                sf.renew(SystemTime::now() + opts.lease)
                    .map_err(|e| e.to_string())?;
            }
        }
        other => Err(format!("unknown command {other}")),
    }
}
