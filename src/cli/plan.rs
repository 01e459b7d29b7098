//! `faultline plan FILE [--inventory F | --controller URL]`

use std::io::Write as _;
use std::path::Path;

use faultline_spec::located::SourceMap;
use faultline_spec::{Experiment, Inventory, Report, Severity, load_file};

use super::{Output, exit};

pub fn run(
    file: &Path,
    inventory: Option<&Path>,
    seed: u64,
    output: Output,
    remote: &super::agents::ControllerOpts,
) -> anyhow::Result<u8> {
    let plan = match remote.client()? {
        // The controller's live registry snapshot, resolved here with the same
        // code and seed the service uses.
        Some(c) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (inv, lost) = runtime.block_on(super::agents::snapshot_inventory(&c))?;
            if !lost.is_empty() {
                eprintln!("faultline: lost, never selected: {}", lost.join(", "));
            }
            match plan_over(file, inv, seed) {
                Ok((_, plan)) => plan,
                Err(code) => return Ok(code),
            }
        }
        None => match load_and_plan(file, inventory, seed) {
            Ok((_, (_, plan))) => plan,
            Err(code) => return Ok(code),
        },
    };
    match output {
        Output::Json => super::print_json(&plan),
        Output::Text => {
            write!(std::io::stdout().lock(), "{}", plan.render())?;
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
    let inventory = load_inventory(inventory)?;
    let (experiment, plan) = plan_over(file, inventory.clone(), seed)?;
    Ok((experiment, (inventory, plan)))
}

/// The experiment in `file` planned over `inventory`, or the exit code after the
/// located diagnostics went to stderr.
pub fn plan_over(
    file: &Path,
    inventory: Inventory,
    seed: u64,
) -> Result<(Experiment, faultline_controller::Plan), u8> {
    let loaded = load_file(file);
    let Some(experiment) = loaded.experiment else {
        eprint!("{}", loaded.report.render());
        return Err(exit::INVALID);
    };
    match faultline_controller::plan(&experiment, &inventory, seed) {
        Ok(p) => Ok((experiment, p)),
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
