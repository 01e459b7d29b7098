//! `faultline plan FILE [--inventory F]`

use std::io::Write as _;
use std::path::Path;

use faultline_spec::located::SourceMap;
use faultline_spec::{Experiment, Inventory, Report, Severity, load_file};

use super::{Output, exit};

pub fn run(file: &Path, inventory: Option<&Path>, seed: u64, output: Output) -> anyhow::Result<u8> {
    let (_, plan) = match load_and_plan(file, inventory, seed) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    match output {
        Output::Json => super::print_json(&plan.1),
        Output::Text => {
            write!(std::io::stdout().lock(), "{}", plan.1.render())?;
            Ok(exit::OK)
        }
    }
}

/// The experiment, its inventory and its plan, or the exit code after the located
/// diagnostics went to stderr. Shared by `plan` and `run`: nothing runs before an
/// experiment and its targets resolve.
pub fn load_and_plan(
    file: &Path,
    inventory: Option<&Path>,
    seed: u64,
) -> Result<(Experiment, (Inventory, faultline_controller::Plan)), u8> {
    let loaded = load_file(file);
    let Some(experiment) = loaded.experiment else {
        eprint!("{}", loaded.report.render());
        return Err(exit::INVALID);
    };
    let inventory = load_inventory(inventory)?;
    match faultline_controller::plan(&experiment, &inventory, seed) {
        Ok(p) => Ok((experiment, (inventory, p))),
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
            Err(exit::INVALID)
        }
    }
}

pub(super) fn load_inventory(path: Option<&Path>) -> Result<Inventory, u8> {
    let Some(path) = path else {
        return Ok(Inventory::default());
    };
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("{name}:1:1: error: cannot read inventory: {e}");
        exit::INVALID
    })?;
    Inventory::parse(&name, &text).map_err(|report| {
        eprint!("{}", report.render());
        exit::INVALID
    })
}
