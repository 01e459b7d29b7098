//! `faultline plan FILE [--inventory F]`

use std::io::Write as _;
use std::path::Path;

use faultline_spec::located::SourceMap;
use faultline_spec::{Inventory, Report, Severity, load_file};

use super::{Output, exit};

pub fn run(file: &Path, inventory: Option<&Path>, seed: u64, output: Output) -> anyhow::Result<u8> {
    let loaded = load_file(file);
    let Some(experiment) = loaded.experiment else {
        eprint!("{}", loaded.report.render());
        return Ok(exit::INVALID);
    };
    let inventory = match inventory {
        None => Inventory::default(),
        Some(path) => {
            let name = path.display().to_string();
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{name}:1:1: error: cannot read inventory: {e}");
                    return Ok(exit::INVALID);
                }
            };
            match Inventory::parse(&name, &text) {
                Ok(inv) => inv,
                Err(report) => {
                    eprint!("{}", report.render());
                    return Ok(exit::INVALID);
                }
            }
        }
    };
    let plan = match faultline_controller::plan(&experiment, &inventory, seed) {
        Ok(p) => p,
        Err(errors) => {
            // Point each unresolvable target at its place in the experiment.
            let name = file.display().to_string();
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let map = SourceMap::parse(&text);
            let mut report = Report::new(&name, &text);
            for e in errors {
                report.push(
                    Severity::Error,
                    map.locate(&e.path),
                    e.path.to_string(),
                    e.message,
                    None,
                );
            }
            eprint!("{}", report.render());
            return Ok(exit::INVALID);
        }
    };
    match output {
        Output::Json => super::print_json(&plan),
        Output::Text => {
            write!(std::io::stdout().lock(), "{}", plan.render())?;
            Ok(exit::OK)
        }
    }
}
