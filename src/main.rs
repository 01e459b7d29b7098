//! The `faultline` binary: a thin command line over the library crates.
//! Everything that decides anything lives in `crates/`; this file parses
//! arguments, wires logging and maps outcomes to stable exit codes.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
