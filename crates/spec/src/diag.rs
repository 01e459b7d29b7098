//! Diagnostics: what is wrong, where (file:line:col), and what to do about it.
//! Rendered like a compiler's: a `file:line:col: error: ...` head line, the source
//! line with a caret, and a help line with a suggestion where one fits.

use std::fmt::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// Where in the document, e.g. `method[1].fault.db.lock.mode`; empty for the root.
    pub path: String,
    /// What was expected and what was found.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

/// Every diagnostic of one file, with the source to render snippets from.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub file: String,
    pub diagnostics: Vec<Diagnostic>,
    #[serde(skip)]
    source: String,
}

impl Report {
    pub fn new(file: impl Into<String>, source: impl Into<String>) -> Self {
        Report {
            file: file.into(),
            diagnostics: Vec::new(),
            source: source.into(),
        }
    }

    pub fn push(
        &mut self,
        severity: Severity,
        pos: (usize, usize),
        path: String,
        message: String,
        help: Option<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            severity,
            file: self.file.clone(),
            line: pos.0.max(1),
            column: pos.1.max(1),
            path,
            message,
            help,
        });
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// Orders diagnostics by position, so output follows the file.
    pub fn sort(&mut self) {
        self.diagnostics
            .sort_by(|a, b| (a.line, a.column, &a.message).cmp(&(b.line, b.column, &b.message)));
        self.diagnostics.dedup();
    }

    /// Human-readable rendering of every diagnostic, with source snippets.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.diagnostics {
            render_one(&mut out, d, &self.source);
        }
        out
    }
}

fn render_one(out: &mut String, d: &Diagnostic, source: &str) {
    let _ = writeln!(
        out,
        "{}:{}:{}: {}: {}",
        d.file,
        d.line,
        d.column,
        d.severity.as_str(),
        d.message
    );
    if let Some(line) = source.lines().nth(d.line - 1) {
        let num = d.line.to_string();
        let pad = " ".repeat(num.len());
        // Tabs would misalign the caret: render them as single spaces on both lines.
        let shown: String = line
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        let caret_at = (d.column - 1).min(shown.chars().count());
        let _ = writeln!(out, "{pad} |");
        let _ = writeln!(out, "{num} | {}", shown.trim_end());
        let _ = writeln!(out, "{pad} | {}^", " ".repeat(caret_at));
    }
    if !d.path.is_empty() {
        let _ = writeln!(out, "  = at: {}", d.path);
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "  = help: {help}");
    }
}

/// The closest of `candidates` to `name`, if one is close enough to be a typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (c, strsim::jaro_winkler(name, c)))
        .filter(|(c, score)| *score >= 0.8 || strsim::levenshtein(name, c) <= 2)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(c, _)| c)
}

/// `did you mean ...?` for a near miss.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(name, candidates).map(|s| format!("did you mean `{s}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_catch_typos_only() {
        let kinds = ["network.latency", "network.drop", "db.lock"];
        assert_eq!(suggest("network.latencyy", kinds), Some("network.latency"));
        assert_eq!(suggest("db.lok", kinds), Some("db.lock"));
        assert_eq!(suggest("kubernetes", kinds), None);
    }

    #[test]
    fn renders_snippet_with_caret() {
        let mut r = Report::new("x.yaml", "a: 1\nbb: oops\n");
        r.push(
            Severity::Error,
            (2, 5),
            "bb".into(),
            "expected a number".into(),
            Some("try 2".into()),
        );
        assert_eq!(
            r.render(),
            "x.yaml:2:5: error: expected a number\n  |\n2 | bb: oops\n  |     ^\n  = at: bb\n  = help: try 2\n"
        );
    }
}
