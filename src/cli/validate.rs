//! `faultline validate FILE...`

use std::io::Write as _;
use std::path::PathBuf;

use faultline_spec::{Report, load_file};
use serde::Serialize;

use super::{Output, exit};

#[derive(Serialize)]
struct FileResult<'a> {
    file: &'a str,
    valid: bool,
    diagnostics: &'a [faultline_spec::Diagnostic],
}

pub fn run(files: &[PathBuf], output: Output) -> anyhow::Result<u8> {
    let reports: Vec<Report> = files.iter().map(|f| load_file(f).report).collect();
    let invalid = reports.iter().filter(|r| r.has_errors()).count();
    match output {
        Output::Json => {
            let results: Vec<FileResult<'_>> = reports
                .iter()
                .map(|r| FileResult {
                    file: &r.file,
                    valid: !r.has_errors(),
                    diagnostics: &r.diagnostics,
                })
                .collect();
            super::print_json(&serde_json::json!({ "valid": invalid == 0, "files": results }))?;
        }
        Output::Text => {
            let mut err = std::io::stderr().lock();
            for r in &reports {
                write!(err, "{}", r.render())?;
            }
            let mut out = std::io::stdout().lock();
            for r in &reports {
                if r.has_errors() {
                    writeln!(
                        out,
                        "{}: invalid ({} error{})",
                        r.file,
                        r.error_count(),
                        plural(r.error_count())
                    )?;
                } else {
                    writeln!(out, "{}: valid", r.file)?;
                }
            }
        }
    }
    Ok(if invalid == 0 {
        exit::OK
    } else {
        exit::INVALID
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
