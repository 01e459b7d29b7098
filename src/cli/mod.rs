//! Command-line front end. The only module allowed to print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;

/// Chaos engineering for services that sell an SLA.
#[derive(Debug, Parser)]
#[command(name = "faultline", version, about)]
struct Cli {}

pub fn main() -> ExitCode {
    let _cli = Cli::parse();
    ExitCode::SUCCESS
}
