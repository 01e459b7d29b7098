//! The HTML report: one self-contained `index.html` (inline CSS, the timeline SVG
//! inline, no script, no external asset; a Content-Security-Policy that forbids
//! loading anything), with `timeline.svg` and `journal.json` beside it so the
//! figure and the raw record can be attached to a ticket on their own.
//!
//! Every piece of journal text (experiment names, descriptions, agent details,
//! error messages) goes through [`escape`].

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::{
    ReportError, check_text, failure_line, failure_word, fmt_duration, fmt_offset, kind_str,
    revert_in_doubt, status_word, timeline_svg,
};
use crate::journal::{CheckKind, FaultRecord, Journal, RunStatus};

/// Writes `index.html`, `timeline.svg` and `journal.json` into `dir` (created
/// with its parents) and returns the path of `index.html`.
pub fn html(j: &Journal, dir: &Path) -> Result<PathBuf, ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let svg = timeline_svg(j)?;
    let json = serde_json::to_string_pretty(j)?;
    let page = page(j, &svg);

    let svg_path = dir.join("timeline.svg");
    fs::write(&svg_path, &svg).map_err(io(&svg_path))?;
    let json_path = dir.join("journal.json");
    fs::write(&json_path, json).map_err(io(&json_path))?;
    let index = dir.join("index.html");
    fs::write(&index, page).map_err(io(&index))?;
    tracing::debug!(path = %index.display(), "wrote the HTML report");
    Ok(index)
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = r#"
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 16px; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 12px; color: #fff; font-weight: 600; }
.passed { background: var(--ok); } .failed, .aborted, .invalid { background: var(--bad); }
.revert_unconfirmed { background: #82071e; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0 0; }
dl.meta dt { color: var(--muted); } dl.meta dd { margin: 0; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
td.ok { color: var(--ok); font-weight: 600; } td.bad { color: var(--bad); font-weight: 700; }
ul.checks { list-style: none; margin: 0; padding: 0; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 6px 8px; margin: 4px 0; overflow-x: auto; font-size: 12px; }
.failures li { color: var(--bad); font-weight: 600; }
.left-behind { background: #ffebe9; border: 2px solid var(--bad); border-radius: 6px; padding: 12px 16px; }
.left-behind h2 { color: var(--bad); border: 0; margin-top: 0; }
.timeline { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px; overflow-x: auto; }
.timeline svg { max-width: 100%; height: auto; }
.muted { color: var(--muted); }
"#;

fn page(j: &Journal, svg: &str) -> String {
    let mut h = String::new();
    let e = escape;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} {}: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n",
        e(&j.experiment),
        e(&j.run_id),
        status_word(j.status),
    );

    // Header: what ran, how it ended.
    let _ = write!(
        h,
        "<div class=\"card\">\n<h1>{} <span class=\"badge {}\">{} (exit {})</span></h1>\n",
        e(&j.experiment),
        j.status.as_str(),
        status_word(j.status),
        j.exit_code
    );
    if let Some(d) = &j.description {
        let _ = writeln!(h, "<p>{}</p>", e(d));
    }
    if let Some(r) = &j.reason {
        let _ = writeln!(h, "<p><strong>Reason:</strong> {}</p>", e(r));
    }
    h.push_str("<dl class=\"meta\">\n");
    let targets = j
        .targets
        .iter()
        .map(|t| format!("{} ({}): {}", t.target, t.mode, t.agents.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    for (k, v) in [
        ("run", j.run_id.clone()),
        ("seed", j.seed.to_string()),
        ("started", j.started_at.clone()),
        ("ended", j.ended_at.clone()),
        ("duration", fmt_duration(j.duration_s)),
        ("targets", targets),
        ("faultline", j.faultline.clone()),
    ] {
        let _ = writeln!(h, "<dt>{k}</dt><dd>{}</dd>", e(&v));
    }
    h.push_str("</dl>\n</div>\n");

    if !j.left_behind.is_empty() {
        h.push_str("<section class=\"left-behind\">\n<h2>Left behind: faults that may still be active</h2>\n<ul>\n");
        for l in &j.left_behind {
            let _ = write!(
                h,
                "<li><strong>{}</strong> on <strong>{}</strong> (fault <code>{}</code>): {}",
                e(&l.kind),
                e(&l.agent),
                e(&l.fault),
                e(&l.reason)
            );
            if let Some(at) = &l.lease_expires_at {
                let _ = write!(
                    h,
                    "; the agent reverts it when its lease lapses at {}",
                    e(at)
                );
            }
            h.push_str("</li>\n");
        }
        h.push_str("</ul>\n<p>Check these agents now: <code>GET /v1/faults</code>, <code>POST /v1/halt</code>.</p>\n</section>\n");
    }

    failures(&mut h, j);

    h.push_str("<h2>Timeline</h2>\n<div class=\"timeline\">\n");
    h.push_str(&inline_svg(svg));
    h.push_str(
        "\n</div>\n<p class=\"muted\">Shaded: each fault step's active window (injected to \
         reverted). Dashed verticals: phase boundaries. Latency: p99 solid, p50 dashed.</p>\n",
    );

    verdicts(&mut h, j);
    faults(&mut h, j);
    probes(&mut h, j);

    h.push_str(
        "<p class=\"muted\">The full record is in <code>journal.json</code> beside this file; \
         the timeline alone in <code>timeline.svg</code>.</p>\n</main>\n</body>\n</html>\n",
    );
    h
}

/// The SVG for inlining: the XML namespace declaration is dropped, since HTML
/// needs none and the page keeps no URL of any kind.
fn inline_svg(svg: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

fn failures(h: &mut String, j: &Journal) {
    let mut lines = Vec::new();
    for v in j.failures() {
        lines.push(format!("{}: {}", failure_word(v), failure_line(v)));
    }
    for f in &j.faults {
        if let Some(err) = &f.inject_error {
            lines.push(format!(
                "FAILED: inject {} ({}) on {}: {err}",
                f.step, f.kind, f.agent
            ));
        }
        if revert_in_doubt(f) {
            lines.push(format!(
                "REVERT UNCONFIRMED: {} ({}) on {}: {}",
                f.step,
                f.kind,
                f.agent,
                f.revert_error
                    .as_deref()
                    .unwrap_or("the agent did not confirm it gone")
            ));
        }
    }
    if lines.is_empty() {
        if j.status == RunStatus::Passed {
            h.push_str("<p><strong>Every hypothesis held.</strong></p>\n");
        }
        return;
    }
    h.push_str("<h2>Failures</h2>\n<ul class=\"failures\">\n");
    for l in lines {
        let _ = writeln!(h, "<li>{}</li>", escape(&l));
    }
    h.push_str("</ul>\n");
}

fn verdicts(h: &mut String, j: &Journal) {
    h.push_str("<h2>Verdicts</h2>\n");
    if j.verdicts.is_empty() {
        h.push_str(
            "<p class=\"muted\">None: the run stopped before any condition was checked.</p>\n",
        );
        return;
    }
    h.push_str(
        "<table>\n<thead><tr><th>phase</th><th>check</th><th>condition</th><th>result</th>\
         <th>checks</th><th>window</th><th>time to recover</th></tr></thead>\n<tbody>\n",
    );
    for v in &j.verdicts {
        let (class, word) = match (v.kind, v.holds) {
            (_, true) => ("ok", "ok"),
            (CheckKind::AbortWhen, false) => ("bad", "FIRED"),
            (_, false) => ("bad", "FAIL"),
        };
        let mut checks = String::from("<ul class=\"checks\">");
        for c in &v.checks {
            let mark = match (v.kind, c.holds) {
                (CheckKind::AbortWhen, _) => "",
                (_, true) => "<span class=\"muted\">ok</span> ",
                (_, false) => "<strong style=\"color:var(--bad)\">FAIL</strong> ",
            };
            let _ = write!(checks, "<li>{mark}{}</li>", escape(&check_text(c)));
        }
        checks.push_str("</ul>");
        if let Some(r) = &v.reason {
            let _ = write!(checks, "<div class=\"muted\">{}</div>", escape(r));
        }
        let ttr = match (v.time_to_recover_s, v.phase, v.kind, v.holds) {
            (Some(s), ..) => fmt_duration(s),
            (None, crate::journal::Phase::Recovery, CheckKind::Hypothesis, false) => {
                "not recovered".to_owned()
            }
            _ => String::new(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}[{}]</td><td>{}</td><td class=\"{class}\">{word}</td><td>{checks}</td>\
             <td>{} to {}, {} samples</td><td>{}</td></tr>",
            v.phase.as_str(),
            kind_str(v.kind),
            v.index,
            escape(&v.name),
            fmt_offset(v.at_s - v.window_s),
            fmt_offset(v.at_s),
            v.samples,
            escape(&ttr),
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn faults(h: &mut String, j: &Journal) {
    if j.faults.is_empty() {
        return;
    }
    h.push_str("<h2>Faults</h2>\n");
    h.push_str(
        "<table>\n<thead><tr><th>step</th><th>kind</th><th>agent</th><th>planned</th>\
         <th>injected</th><th>reverted</th><th>confirmed</th><th>renewals</th></tr></thead>\n<tbody>\n",
    );
    for f in &j.faults {
        let injected = match (&f.inject_error, f.injected_s) {
            (Some(err), _) => format!(
                "<span style=\"color:var(--bad)\">FAILED: {}</span>",
                escape(err)
            ),
            (None, Some(s)) => fmt_offset(s),
            (None, None) => "-".to_owned(),
        };
        let reverted = match (&f.revert_error, f.reverted_s) {
            (Some(err), _) => format!(
                "<span style=\"color:var(--bad)\">FAILED: {}</span>",
                escape(err)
            ),
            (None, Some(s)) => fmt_offset(s),
            (None, None) => "-".to_owned(),
        };
        let confirmed = if f.revert_confirmed {
            "<td class=\"ok\">yes</td>"
        } else if revert_in_doubt(f) {
            "<td class=\"bad\">NO</td>"
        } else {
            "<td>-</td>"
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} to {}</td><td>{injected}</td>\
             <td>{reverted}</td>{confirmed}<td>{}</td></tr>",
            escape(&f.step),
            escape(&f.kind),
            escape(&f.agent),
            fmt_offset(f.planned_start_s),
            fmt_offset(f.planned_end_s),
            f.renewals,
        );
    }
    h.push_str("</tbody>\n</table>\n");
    for f in &j.faults {
        fault_detail(h, f);
    }
}

fn fault_detail(h: &mut String, f: &FaultRecord) {
    let _ = writeln!(
        h,
        "<h3>{} on {} <span class=\"muted\">({}, fault <code>{}</code>)</span></h3>",
        escape(&f.step),
        escape(&f.agent),
        escape(&f.kind),
        escape(&f.id)
    );
    let _ = writeln!(h, "<pre>{}</pre>", escape(&pretty(&f.params)));
    if f.observations.is_empty() {
        h.push_str("<p class=\"muted\">No observations.</p>\n");
        return;
    }
    h.push_str(
        "<table>\n<thead><tr><th>at</th><th>active</th><th>detail</th><th>figures</th></tr></thead>\n<tbody>\n",
    );
    for o in &f.observations {
        let figures = if o.figures.is_null() {
            String::new()
        } else {
            format!("<pre>{}</pre>", escape(&pretty(&o.figures)))
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{figures}</td></tr>",
            fmt_offset(o.at_s),
            if o.active { "yes" } else { "no" },
            escape(&o.detail),
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn probes(h: &mut String, j: &Journal) {
    if j.probes.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Probes</h2>\n<table>\n<thead><tr><th>probe</th><th>kind</th><th>buckets</th>\
         <th>requests</th><th>lowest availability</th><th>highest p99</th><th>failures</th></tr></thead>\n<tbody>\n",
    );
    for (name, t) in &j.probes {
        let total: u64 = t.points.iter().map(|p| p.total).sum();
        let low = t
            .points
            .iter()
            .filter_map(|p| p.availability)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))));
        let high = t
            .points
            .iter()
            .filter_map(|p| p.p99_ms)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let mut kinds: std::collections::BTreeMap<&str, u64> = Default::default();
        for p in &t.points {
            for (k, n) in &p.failures {
                *kinds.entry(k.as_str()).or_default() += n;
            }
        }
        let kinds = kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{} &times; {}</td><td>{total}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(&t.kind),
            t.points.len(),
            fmt_duration(t.bucket_s),
            low.map(|v| format!("{v:.2}%")).unwrap_or_default(),
            high.map(|v| format!("{v:.0}ms")).unwrap_or_default(),
            escape(&kinds),
        );
    }
    h.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    #[test]
    fn report_escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x") & 'y'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;) &amp; &#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn report_html_writes_a_self_contained_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("reports/run-1");
        let index = html(&fixtures::failed_run(), &out).expect("html");
        assert_eq!(index, out.join("index.html"));
        let page = fs::read_to_string(&index).expect("index.html");

        assert!(page.contains("<svg"), "the timeline is inline");
        assert!(page.contains("lose-gpus (2 agents)"), "fault window label");
        assert!(page.contains("stall-db"), "fault window label");
        // The description's script is text, not markup.
        assert!(!page.contains("<script"), "no script element");
        assert!(page.contains("&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;"));
        assert!(page.contains("&quot;quoted&quot;"));
        // Nothing external: no URL at all, and no attribute that loads anything.
        assert!(!page.contains("http://") && !page.contains("https://"));
        for attr in ["src=", "href=", "url(", "@import"] {
            assert!(!page.contains(attr), "{attr} in the page");
        }
        // The failed hypothesis, the db.lock figures pretty-printed.
        assert!(page.contains(
            "FAILED: recovery: api: availability &gt;= 99%, p99 &lt;= 300ms (p99 612ms &gt; 300ms)"
        ));
        assert!(
            page.contains("&quot;blocked_sessions&quot;: 3,\n  &quot;longest_wait_ms&quot;: 1800")
        );

        let svg = fs::read_to_string(out.join("timeline.svg")).expect("timeline.svg");
        assert!(
            svg.starts_with("<svg") && svg.contains("xmlns="),
            "a standalone SVG"
        );
        let back: Journal =
            serde_json::from_str(&fs::read_to_string(out.join("journal.json")).expect("json"))
                .expect("journal.json parses back");
        assert_eq!(back, fixtures::failed_run());
    }

    #[test]
    fn report_html_shows_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = html(&fixtures::unconfirmed_run(), dir.path()).expect("html");
        let page = fs::read_to_string(index).expect("index.html");
        assert!(page.contains("class=\"left-behind\""));
        assert!(page.contains("lease lapses at 2025-03-04T10:01:25Z"));
        assert!(page.contains("REVERT UNCONFIRMED: stall-db (db.lock) on db-1"));
        assert!(page.contains("FAILED: gpu-3 refused: 409 shim_not_loaded"));
    }

    #[test]
    fn report_html_reports_an_unwritable_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        fs::write(&file, "x").expect("write");
        match html(&fixtures::passed_run(), &file.join("sub")) {
            Err(ReportError::Io { path, .. }) => assert_eq!(path, file.join("sub")),
            other => panic!("expected an Io error, got {other:?}"),
        }
    }
}
