//! Loading and validation: text in, an `Experiment` or every problem out.
//!
//! Each item (a target, a probe, a hypothesis, a step) is deserialised on its own,
//! so one bad item does not hide the problems of the next; then the cross-checks run
//! over whatever parsed. Every diagnostic carries file:line:col.

use std::collections::HashSet;
use std::net::IpAddr;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::diag::{Report, Severity, did_you_mean};
use crate::experiment::{Experiment, Recovery, Safety, Step, Version};
use crate::fault::*;
use crate::hypothesis::Hypothesis;
use crate::located::{DocPath, Seg, SourceMap};
use crate::probe::Probe;
use crate::target::Target;
use crate::units::Duration;

/// Top-level keys of an experiment, in the order they are documented.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "duration",
    "targets",
    "probes",
    "hypotheses",
    "during",
    "recovery",
    "method",
    "safety",
];

/// The outcome of loading one file: the experiment when it has no errors, and the
/// report either way (it may hold warnings).
#[derive(Debug)]
pub struct Loaded {
    pub experiment: Option<Experiment>,
    pub report: Report,
}

/// Parses and validates an experiment. `file` is only used in diagnostics.
pub fn load(file: &str, text: &str) -> Loaded {
    let mut cx = Cx {
        report: Report::new(file, text),
        map: SourceMap::default(),
    };
    let experiment = cx.load(text);
    cx.report.sort();
    let experiment = if cx.report.has_errors() {
        None
    } else {
        experiment
    };
    Loaded {
        experiment,
        report: cx.report,
    }
}

/// Reads `path` and loads it; an unreadable file is a diagnostic too.
pub fn load_file(path: &std::path::Path) -> Loaded {
    let file = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => load(&file, &text),
            Err(e) => {
                let mut report = Report::new(&file, "");
                report.push(
                    Severity::Error,
                    (1, 1),
                    String::new(),
                    format!(
                        "expected UTF-8 text, found invalid bytes at offset {}",
                        e.utf8_error().valid_up_to()
                    ),
                    None,
                );
                Loaded {
                    experiment: None,
                    report,
                }
            }
        },
        Err(e) => {
            let mut report = Report::new(&file, "");
            report.push(
                Severity::Error,
                (1, 1),
                String::new(),
                format!("cannot read file: {e}"),
                None,
            );
            Loaded {
                experiment: None,
                report,
            }
        }
    }
}

/// Deserialises a whole YAML document of another kind (an inventory, an agent
/// config) with one located error.
pub fn load_document<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, Report> {
    let mut cx = Cx {
        report: Report::new(file, text),
        map: SourceMap::default(),
    };
    let value = cx.parse_yaml(text).ok_or_else(|| cx.report.clone())?;
    if value.is_null() {
        cx.report.push(
            Severity::Error,
            (1, 1),
            String::new(),
            "expected a YAML mapping, found an empty file".into(),
            None,
        );
        return Err(cx.report);
    }
    cx.de::<T>(&value, &DocPath::root(), false).ok_or(cx.report)
}

struct Cx {
    report: Report,
    map: SourceMap,
}

/// Items that parsed, plus the names of every item present (parsed or not), so a
/// reference to a broken item is not reported a second time as unknown.
#[derive(Default)]
struct Parts {
    version: Option<Version>,
    name: Option<String>,
    description: Option<String>,
    duration: Option<Duration>,
    targets: IndexMap<String, Target>,
    target_names: Vec<String>,
    probes: IndexMap<String, Probe>,
    probe_names: Vec<String>,
    hypotheses: Vec<(usize, Hypothesis)>,
    during: Vec<(usize, Hypothesis)>,
    recovery: Option<Recovery>,
    method: Vec<(usize, Step)>,
    method_present: bool,
    hypotheses_written: bool,
    safety: Option<Safety>,
}

impl Cx {
    fn error(&mut self, path: &DocPath, message: impl Into<String>, help: Option<String>) {
        // A problem with the document as a whole points at its start.
        let pos = if path.0.is_empty() {
            (1, 1)
        } else {
            self.map.locate(path)
        };
        self.report
            .push(Severity::Error, pos, path.to_string(), message.into(), help);
    }

    fn error_at_key(&mut self, path: &DocPath, message: impl Into<String>, help: Option<String>) {
        let pos = self.map.locate_key(path);
        self.report
            .push(Severity::Error, pos, path.to_string(), message.into(), help);
    }

    fn warning(&mut self, path: &DocPath, message: impl Into<String>) {
        let pos = self.map.locate(path);
        self.report.push(
            Severity::Warning,
            pos,
            path.to_string(),
            message.into(),
            None,
        );
    }

    fn parse_yaml(&mut self, text: &str) -> Option<Value> {
        match serde_yaml::from_str::<Value>(text) {
            Ok(v) => {
                self.map = SourceMap::parse(text);
                Some(v)
            }
            Err(e) => {
                let mut pos = e.location().map_or((1, 1), |l| (l.line(), l.column()));
                let msg = strip_location(&e.to_string());
                if msg.starts_with("duplicate entry") {
                    // serde_yaml does not say where; the source map does.
                    if let Some(dup) = SourceMap::parse(text).first_duplicate_key() {
                        pos = dup;
                    }
                }
                self.report.push(
                    Severity::Error,
                    pos,
                    String::new(),
                    format!("invalid YAML: {msg}"),
                    None,
                );
                None
            }
        }
    }

    fn load(&mut self, text: &str) -> Option<Experiment> {
        let value = self.parse_yaml(text)?;
        let root = DocPath::root();
        let Value::Mapping(top) = value else {
            let found = if value.is_null() {
                "an empty document".to_owned()
            } else {
                describe(&value)
            };
            self.error(
                &root,
                format!("expected a faultline/v1 experiment (a mapping with `version: faultline/v1`), found {found}"),
                None,
            );
            return None;
        };

        let mut parts = Parts::default();
        for (key, value) in &top {
            let Some(key) = key.as_str() else {
                self.error(
                    &root,
                    format!(
                        "expected string keys at the top level, found {}",
                        describe(key)
                    ),
                    None,
                );
                continue;
            };
            let path = root.key(key);
            match key {
                "version" => parts.version = self.de(value, &path, false),
                "name" => parts.name = self.de(value, &path, false),
                "description" => parts.description = self.de(value, &path, false),
                "duration" => parts.duration = self.de(value, &path, false),
                "targets" => {
                    for (name, v) in self.entries(value, &path) {
                        parts.target_names.push(name.clone());
                        if let Some(t) = self.de(v, &path.key(&name), false) {
                            parts.targets.insert(name, t);
                        }
                    }
                }
                "probes" => {
                    for (name, v) in self.entries(value, &path) {
                        parts.probe_names.push(name.clone());
                        if let Some(p) = self.de(v, &path.key(&name), true) {
                            parts.probes.insert(name, p);
                        }
                    }
                }
                "hypotheses" => {
                    parts.hypotheses_written = value.as_sequence().is_some_and(|s| !s.is_empty());
                    parts.hypotheses = self.items(value, &path);
                }
                "during" => parts.during = self.items(value, &path),
                "recovery" => parts.recovery = self.de(value, &path, false),
                "method" => {
                    parts.method_present = true;
                    parts.method = self.items(value, &path);
                }
                "safety" => parts.safety = self.de(value, &path, false),
                other => self.error_at_key(
                    &path,
                    format!(
                        "unknown key `{other}` at the top level; expected one of {}",
                        backticked(TOP_LEVEL_KEYS)
                    ),
                    did_you_mean(other, TOP_LEVEL_KEYS.iter().copied()),
                ),
            }
        }
        for required in ["version", "name", "method"] {
            if !top.contains_key(required) {
                self.error(&root, format!("missing required key `{required}`"), None);
            }
        }

        self.check(&parts);

        Some(Experiment {
            version: parts.version?,
            name: parts.name?,
            description: parts.description,
            duration: parts.duration,
            targets: parts.targets,
            probes: parts.probes,
            hypotheses: parts.hypotheses.into_iter().map(|(_, h)| h).collect(),
            during: parts.during.into_iter().map(|(_, h)| h).collect(),
            recovery: parts.recovery,
            method: parts.method.into_iter().map(|(_, s)| s).collect(),
            safety: parts.safety.unwrap_or_default(),
        })
    }

    /// The entries of a mapping section, with string keys.
    fn entries<'v>(&mut self, value: &'v Value, path: &DocPath) -> Vec<(String, &'v Value)> {
        match value {
            Value::Mapping(m) => m
                .iter()
                .filter_map(|(k, v)| match k.as_str() {
                    Some(k) => Some((k.to_owned(), v)),
                    None => {
                        self.error(
                            path,
                            format!("expected a name as key, found {}", describe(k)),
                            None,
                        );
                        None
                    }
                })
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.error(
                    path,
                    format!(
                        "expected a mapping of names to entries, found {}",
                        describe(other)
                    ),
                    None,
                );
                Vec::new()
            }
        }
    }

    /// The items of a sequence section that parse, with their index.
    fn items<T: DeserializeOwned>(&mut self, value: &Value, path: &DocPath) -> Vec<(usize, T)> {
        match value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| self.de(v, &path.index(i), false).map(|t| (i, t)))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                self.error(
                    path,
                    format!("expected a list, found {}", describe(other)),
                    None,
                );
                Vec::new()
            }
        }
    }

    /// Deserialises one item; on failure records a located diagnostic.
    fn de<T: DeserializeOwned>(
        &mut self,
        value: &Value,
        base: &DocPath,
        singleton: bool,
    ) -> Option<T> {
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        let result = if singleton {
            serde_yaml::with::singleton_map::deserialize(de)
        } else {
            T::deserialize(de)
        };
        match result {
            Ok(t) => Some(t),
            Err(e) => {
                let inner = track.path();
                let mut path = base.clone();
                for seg in inner.iter() {
                    match seg {
                        serde_path_to_error::Segment::Seq { index } => {
                            path.0.push(Seg::Index(*index))
                        }
                        serde_path_to_error::Segment::Map { key } => {
                            path.0.push(Seg::Key(key.clone()))
                        }
                        serde_path_to_error::Segment::Enum { variant } => {
                            path.0.push(Seg::Key(variant.clone()))
                        }
                        serde_path_to_error::Segment::Unknown => {}
                    }
                }
                self.serde_error(&path, &e.to_string(), singleton);
                None
            }
        }
    }

    /// Rewords serde's messages into "expected X, found Y" with suggestions.
    fn serde_error(&mut self, path: &DocPath, raw: &str, singleton: bool) {
        let msg = strip_location(raw);
        let is_key = |i: usize, name: &str| matches!(path.0.get(i), Some(Seg::Key(k)) if k == name);
        let n = path.0.len();
        let context = if (n >= 1 && is_key(n - 1, "fault")) || (n >= 2 && is_key(n - 2, "fault")) {
            "fault"
        } else if singleton && is_key(0, "probes") && (2..=3).contains(&n) {
            "probe type"
        } else {
            "value"
        };
        if let Some(rest) = msg.strip_prefix("unknown field ") {
            let (name, expected) = split_unknown(rest);
            // serde_path_to_error has already pushed the unknown key onto the path.
            let parent = if matches!(path.0.last(), Some(Seg::Key(k)) if *k == name) {
                path.clone()
            } else {
                path.key(&name)
            };
            let help = did_you_mean(&name, expected.iter().map(String::as_str));
            let expected = if expected.is_empty() {
                "no keys here".to_owned()
            } else {
                format!("expected one of {}", backticked(&expected))
            };
            self.error_at_key(&parent, format!("unknown key `{name}`; {expected}"), help);
        } else if let Some(rest) = msg.strip_prefix("unknown variant ") {
            let (name, expected) = split_unknown(rest);
            let what = match context {
                "fault" => "fault",
                "probe type" => "probe type",
                _ => "value",
            };
            let help = did_you_mean(&name, expected.iter().map(String::as_str));
            // An unknown variant written as a key points at the key.
            let key_path = if matches!(path.0.last(), Some(Seg::Key(k)) if *k == name) {
                path.clone()
            } else {
                path.key(&name)
            };
            let at_key = self.map.locate_key(&key_path) != self.map.locate(&key_path);
            let message = format!(
                "unknown {what} `{name}`; expected one of {}",
                backticked(&expected)
            );
            if at_key {
                self.error_at_key(&key_path, message, help);
            } else {
                self.error(path, message, help);
            }
        } else if let Some(rest) = msg.strip_prefix("missing field ") {
            self.error(path, format!("missing required key {rest}"), None);
        } else if let Some(rest) = msg
            .strip_prefix("invalid type: ")
            .or_else(|| msg.strip_prefix("invalid value: "))
        {
            match rest.rsplit_once(", expected ") {
                Some((found, expected)) => {
                    let message = if expected.contains("map containing 1 entry")
                        || expected.contains("single key")
                    {
                        let found = if found == "map" {
                            "a mapping with several entries"
                        } else {
                            found
                        };
                        format!(
                            "expected exactly one {context} written as `{{ kind: {{ ... }} }}`, found {found}"
                        )
                    } else {
                        format!("expected {}, found {found}", friendly_expected(expected))
                    };
                    self.error(path, message, None)
                }
                None => self.error(path, rest.to_owned(), None),
            }
        } else if let Some(rest) = msg.strip_prefix("invalid length ") {
            let message = match rest.split_once(", expected ") {
                Some((n, e)) if e.contains("map containing 1 entry") => {
                    format!("expected exactly one {context}, found {n}")
                }
                Some((n, e)) => format!("expected {e}, found {n} entries"),
                None => format!("invalid length {rest}"),
            };
            self.error(path, message, None);
        } else {
            self.error(path, msg, None);
        }
    }

    // === cross-checks ===

    fn check(&mut self, p: &Parts) {
        let root = DocPath::root();
        if let Some(name) = &p.name
            && !is_identifier(name)
        {
            self.error(
                    &root.key("name"),
                    format!("expected a name of letters, digits, `.`, `_` and `-` (at most 63, starting with a letter or digit), found `{name}`"),
                    None,
                );
        }
        if let Some(d) = p.duration
            && d.is_zero()
        {
            self.error(
                &root.key("duration"),
                "expected a positive duration, found `0s`",
                None,
            );
        }
        for (name, target) in &p.targets {
            self.check_target(&root.key("targets").key(name), name, target);
        }
        for (name, probe) in &p.probes {
            if !is_identifier(name) {
                self.error_at_key(
                    &root.key("probes").key(name),
                    format!(
                        "expected a probe name of letters, digits, `.`, `_` and `-`, found `{name}`"
                    ),
                    None,
                );
            }
            self.check_probe(&root.key("probes").key(name).key(probe.kind()), probe);
        }
        if !p.hypotheses_written && p.version.is_some() {
            self.warning(
                &root,
                "no hypotheses: the run checks no SLA before or after the faults",
            );
        }
        for (i, h) in &p.hypotheses {
            self.check_hypothesis(&root.key("hypotheses").index(*i), h, p, false);
        }
        for (i, h) in &p.during {
            self.check_hypothesis(&root.key("during").index(*i), h, p, true);
        }
        if let Some(r) = &p.recovery
            && r.within.is_zero()
        {
            self.error(
                &root.key("recovery").key("within"),
                "expected a positive duration, found `0s`",
                None,
            );
        }
        if let Some(s) = &p.safety {
            let path = root.key("safety");
            if s.lease.is_zero() {
                self.error(&path.key("lease"), "expected a positive lease, found `0s`: a fault without a lease would outlive a dead controller", None);
            }
            for (i, h) in s.abort_when.iter().enumerate() {
                self.check_hypothesis(&path.key("abort_when").index(i), h, p, true);
            }
        }
        if p.method_present && p.method.is_empty() && self.report.error_count() == 0 {
            self.error(
                &root.key("method"),
                "expected at least one step, found none",
                None,
            );
        }
        let mut seen = HashSet::new();
        for (i, step) in &p.method {
            let path = root.key("method").index(*i);
            if !seen.insert(step.name.as_str()) {
                self.error(
                    &path.key("name"),
                    format!(
                        "duplicate step name `{}`; step names must be unique",
                        step.name
                    ),
                    None,
                );
            }
            self.check_step(&path, step, p);
        }
    }

    fn check_target(&mut self, path: &DocPath, name: &str, t: &Target) {
        if !is_identifier(name) {
            self.error_at_key(
                path,
                format!(
                    "expected a target name of letters, digits, `.`, `_` and `-`, found `{name}`"
                ),
                None,
            );
        }
        match (&t.selector, &t.agents) {
            (Some(_), Some(_)) => self.error(path, "expected exactly one of `selector` and `agents`, found both", None),
            (None, None) => self.error(path, "expected one of `selector` (labels) or `agents` (names), found neither", None),
            (Some(sel), None) if sel.is_empty() => {
                self.error(&path.key("selector"), "expected at least one label, found an empty selector (it would match every agent; use `agents` to name them)", None)
            }
            (None, Some(agents)) => {
                if agents.is_empty() {
                    self.error(&path.key("agents"), "expected at least one agent name, found an empty list", None);
                }
                let mut seen = HashSet::new();
                for (i, a) in agents.iter().enumerate() {
                    if !is_identifier(a) {
                        self.error(&path.key("agents").index(i), format!("expected an agent name, found `{a}`"), None);
                    } else if !seen.insert(a) {
                        self.error(&path.key("agents").index(i), format!("agent `{a}` is listed twice"), None);
                    }
                }
                if let crate::units::SelectMode::Count(n) = t.mode
                    && n as usize > agents.len() {
                        self.error(
                            &path.key("mode"),
                            format!("expected a count of at most {} (the agents listed), found count({n})", agents.len()),
                            None,
                        );
                    }
            }
            _ => {}
        }
    }

    fn check_probe(&mut self, path: &DocPath, probe: &Probe) {
        let timeout = match probe {
            Probe::Http(h) => {
                self.check_http_url(&path.key("url"), &h.url);
                for (i, s) in h.success.iter().enumerate() {
                    if !is_status_rule(s) {
                        self.error(&path.key("success").index(i), format!("expected a status class like `2xx` or a code like `404`, found `{s}`"), None);
                    }
                }
                h.timeout
            }
            Probe::Tcp(t) => {
                self.check_address(&path.key("address"), &t.address);
                t.timeout
            }
            Probe::Sql(s) => {
                if s.engine.is_none() && engine_from_url(&s.url.redacted()).is_none() {
                    self.error(&path.key("url"), "cannot tell the database engine from this URL; add `engine: postgres | mysql | sqlite`", None);
                }
                if s.query.trim().is_empty() {
                    self.error(
                        &path.key("query"),
                        "expected a query, found an empty string",
                        None,
                    );
                }
                s.timeout
            }
            Probe::Prometheus(pr) => {
                self.check_http_url(&path.key("url"), &pr.url);
                if pr.query.trim().is_empty() {
                    self.error(
                        &path.key("query"),
                        "expected a PromQL expression, found an empty string",
                        None,
                    );
                }
                if pr.interval.is_zero() {
                    self.error(
                        &path.key("interval"),
                        "expected a positive interval, found `0s`",
                        None,
                    );
                }
                pr.timeout
            }
            Probe::Llm(l) => {
                self.check_http_url(&path.key("url"), &l.url);
                if l.resolved_api().is_none() {
                    self.error(&path.key("url"), format!("cannot tell the endpoint from `{}`; add `api: chat` (`/v1/chat/completions`) or `api: completions` (`/v1/completions`)", l.url), None);
                }
                if l.model.trim().is_empty() {
                    self.error(
                        &path.key("model"),
                        "expected a model name, found an empty string",
                        None,
                    );
                }
                match (l.prompts.is_empty(), &l.prompts_file) {
                    (false, Some(_)) => self.error(path, "expected one of `prompts` and `prompts_file`, found both", None),
                    (true, None) => self.error(path, "expected `prompts` (a list) or `prompts_file` (one prompt per line), found neither", None),
                    (true, Some(f)) if f.trim().is_empty() => self.error(&path.key("prompts_file"), "expected a file path, found an empty string", None),
                    _ => {}
                }
                if l.max_tokens == 0 {
                    self.error(&path.key("max_tokens"), "expected at least 1 token", None);
                }
                l.timeout
            }
            Probe::Command(c) => {
                if c.run.first().is_none_or(|p| p.trim().is_empty()) {
                    self.error(&path.key("run"), "expected a program and its arguments, like `[curl, -f, http://127.0.0.1/health]`", None);
                }
                if c.interval.is_zero() {
                    self.error(
                        &path.key("interval"),
                        "expected a positive interval, found `0s`",
                        None,
                    );
                }
                c.timeout
            }
        };
        if timeout.is_zero() {
            self.error(
                &path.key("timeout"),
                "expected a positive timeout, found `0s`",
                None,
            );
        }
    }

    fn check_hypothesis(
        &mut self,
        path: &DocPath,
        h: &Hypothesis,
        p: &Parts,
        sustained_allowed: bool,
    ) {
        if !p.probe_names.contains(&h.probe) {
            let help = did_you_mean(&h.probe, p.probe_names.iter().map(String::as_str));
            let known = if p.probe_names.is_empty() {
                "no probes are defined".to_owned()
            } else {
                format!("expected one of {}", backticked(&p.probe_names))
            };
            self.error(
                &path.key("probe"),
                format!("unknown probe `{}`; {known}", h.probe),
                help,
            );
        }
        if !h.has_criteria() {
            self.error(
                path,
                format!(
                    "expected at least one threshold ({}), found none",
                    backticked(Hypothesis::THRESHOLDS)
                ),
                None,
            );
        }
        if h.sustained.is_some() && !sustained_allowed {
            self.error_at_key(&path.key("for"), "`for` belongs in `during` and `safety.abort_when`; a hypothesis must hold over its whole window", None);
        }
        if h.burn_rate.is_some() && h.slo.is_none() {
            self.error(
                &path.key("burn_rate"),
                "`burn_rate` needs `slo`, the target it burns against (e.g. `slo: 99.9%`)",
                None,
            );
        }
        if h.slo.is_some_and(|s| s.value() >= 100.0) {
            self.error(
                &path.key("slo"),
                "expected an SLO below 100% (a 100% SLO has no error budget to burn)",
                None,
            );
        }
        if let Some(w) = h.window
            && w.is_zero()
        {
            self.error(
                &path.key("window"),
                "expected a positive window, found `0s`",
                None,
            );
        }
        if let Some(probe) = p.probes.get(&h.probe) {
            if h.value.is_some() && !probe.yields_value() {
                self.error(&path.key("value"), format!("`value` needs a probe that yields a value (sql, prometheus); `{}` is a {} probe", h.probe, probe.kind()), None);
            }
            let latency = [
                ("p50", h.p50.is_some()),
                ("p90", h.p90.is_some()),
                ("p99", h.p99.is_some()),
                ("p999", h.p999.is_some()),
            ];
            let stream_terms = [
                ("ttft_p50", h.ttft_p50.is_some()),
                ("ttft_p99", h.ttft_p99.is_some()),
                ("itl_p99", h.itl_p99.is_some()),
            ];
            for (key, set) in stream_terms {
                if !set || probe.streams_tokens() {
                    continue;
                }
                let why = match probe {
                    Probe::Llm(_) => format!(
                        "`{}` has `stream: false`: a whole answer at once has no first token or gaps to time; set `stream: true`",
                        h.probe
                    ),
                    other => format!(
                        "`{}` is a {} probe; use an `llm` probe with `stream: true`",
                        h.probe,
                        other.kind()
                    ),
                };
                self.error_at_key(
                    &path.key(key),
                    format!("`{key}` needs a streaming llm probe: {why}"),
                    None,
                );
            }
            if h.tokens_per_s.is_some() && !matches!(probe, Probe::Llm(_)) {
                self.error_at_key(
                    &path.key("tokens_per_s"),
                    format!(
                        "`tokens_per_s` needs an llm probe; `{}` is a {} probe",
                        h.probe,
                        probe.kind()
                    ),
                    None,
                );
            }
            if matches!(probe, Probe::Prometheus(_)) {
                for (key, set) in latency {
                    if set {
                        self.error(
                            &path.key(key),
                            format!(
                                "a prometheus probe has no latency to bound; use `value` on `{}`",
                                h.probe
                            ),
                            None,
                        );
                    }
                }
            }
        }
    }

    fn check_step(&mut self, path: &DocPath, step: &Step, p: &Parts) {
        if !is_identifier(&step.name) {
            self.error(
                &path.key("name"),
                format!(
                    "expected a step name of letters, digits, `.`, `_` and `-`, found `{}`",
                    step.name
                ),
                None,
            );
        }
        if !p.target_names.contains(&step.target) {
            let help = did_you_mean(&step.target, p.target_names.iter().map(String::as_str));
            let known = if p.target_names.is_empty() {
                "no targets are defined".to_owned()
            } else {
                format!("expected one of {}", backticked(&p.target_names))
            };
            self.error(
                &path.key("target"),
                format!("unknown target `{}`; {known}", step.target),
                help,
            );
        }
        if step.duration.is_zero() {
            self.error(
                &path.key("duration"),
                "expected a positive duration, found `0s`",
                None,
            );
        }
        if let Some(limit) = p.duration
            && step.end() > limit
        {
            self.error(
                    &path.key("duration"),
                    format!("step ends at {} (start {} + duration {}), after the experiment's duration {limit}", step.end(), step.start, step.duration),
                    None,
                );
        }
        let fp = path.key("fault").key(step.fault.kind());
        self.check_fault(&fp, &step.fault, step);
    }

    fn check_fault(&mut self, path: &DocPath, fault: &FaultSpec, step: &Step) {
        match fault {
            FaultSpec::NetworkLatency(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if f.delay.is_zero() {
                    self.error(
                        &path.key("delay"),
                        "expected a positive delay, found `0s`",
                        None,
                    );
                }
            }
            FaultSpec::NetworkDrop(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                match (f.action, f.after) {
                    (DropAction::CloseAfter, None) => self.error(path, "`action: close_after` needs `after`, the bytes let through (e.g. `after: 1KiB`)", None),
                    (a, Some(_)) if a != DropAction::CloseAfter => self.error(&path.key("after"), "`after` only applies to `action: close_after`", None),
                    _ => {}
                }
            }
            FaultSpec::NetworkBandwidth(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port)
            }
            FaultSpec::NetworkLoss(f) => {
                if f.ports.is_empty() && f.peers.is_empty() {
                    self.error(path, "expected `ports` or `peers` to scope the loss; dropping every packet of the host would cut the agent off too", None);
                }
                if f.probability.value() == 0.0 {
                    self.error(
                        &path.key("probability"),
                        "expected a loss probability above 0%",
                        None,
                    );
                }
                self.check_ports(&path.key("ports"), &f.ports);
                self.check_peers(&path.key("peers"), &f.peers);
            }
            FaultSpec::NetworkPartition(f) => {
                if f.peers.is_empty() {
                    self.error(
                        &path.key("peers"),
                        "expected at least one peer address or CIDR to cut off",
                        None,
                    );
                }
                self.check_ports(&path.key("ports"), &f.ports);
                self.check_peers(&path.key("peers"), &f.peers);
            }
            FaultSpec::HttpError(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if !(400..=599).contains(&f.status) {
                    self.error(
                        &path.key("status"),
                        format!(
                            "expected an error status between 400 and 599, found {}",
                            f.status
                        ),
                        None,
                    );
                }
                if f.retry_after.is_some() && !matches!(f.status, 429 | 503) {
                    self.error(
                        &path.key("retry_after"),
                        format!("`retry_after` applies to 429 and 503, not {}", f.status),
                        None,
                    );
                }
                self.check_http_match(path, f.path.as_deref(), f.method.as_deref());
            }
            FaultSpec::HttpDelay(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if f.delay.is_zero() {
                    self.error(
                        &path.key("delay"),
                        "expected a positive delay, found `0s`",
                        None,
                    );
                }
                self.check_http_match(path, f.path.as_deref(), f.method.as_deref());
            }
            FaultSpec::HttpRateLimit(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if f.burst == Some(0) {
                    self.error(
                        &path.key("burst"),
                        "expected a burst of at least 1 request (leave it out for one second of `rate`)",
                        None,
                    );
                }
                match (f.key, f.header.as_deref()) {
                    (RateLimitKey::Header, None) => self.error(
                        &path.key("key"),
                        "`key: header` needs `header`, the request header that carries the key (e.g. `header: authorization`)",
                        None,
                    ),
                    (RateLimitKey::Header, Some(h)) if !is_header_name(h) => self.error(
                        &path.key("header"),
                        format!("expected an HTTP header name like `x-api-key`, found `{h}`"),
                        None,
                    ),
                    (RateLimitKey::ClientIp | RateLimitKey::Global, Some(_)) => self.error(
                        &path.key("header"),
                        "`header` only applies to `key: header`",
                        None,
                    ),
                    _ => {}
                }
                self.check_http_match(path, f.path.as_deref(), f.method.as_deref());
            }
            FaultSpec::HttpQueue(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if f.concurrency == 0 {
                    self.error(
                        &path.key("concurrency"),
                        "expected a concurrency of at least 1 (0 would answer every request 503)",
                        None,
                    );
                }
                if f.timeout.is_zero() {
                    self.error(
                        &path.key("timeout"),
                        "expected a positive queue timeout, found `0s`",
                        None,
                    );
                }
                self.check_http_match(path, f.path.as_deref(), f.method.as_deref());
            }
            FaultSpec::HttpStreamStall(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                if f.after_events.is_some() && f.after.is_some() {
                    self.error(
                        path,
                        "expected at most one of `after_events` and `after`, found both",
                        None,
                    );
                }
                if f.hold.is_zero() {
                    self.error(
                        &path.key("hold"),
                        "expected a positive hold, found `0s`",
                        None,
                    );
                }
                self.check_http_match(path, f.path.as_deref(), None);
            }
            FaultSpec::HttpStreamSlow(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                self.check_http_match(path, f.path.as_deref(), None);
            }
            FaultSpec::HttpStreamTruncate(f) => {
                self.check_attachment(path, &f.listen, &f.upstream, f.port);
                self.check_http_match(path, f.path.as_deref(), None);
            }
            FaultSpec::NetworkSkew(f) => {
                if f.port == 0 {
                    self.error(
                        &path.key("port"),
                        "expected a port between 1 and 65535, found 0",
                        None,
                    );
                }
                if f.to.parse::<std::net::SocketAddr>().is_err() {
                    self.error(
                        &path.key("to"),
                        format!(
                            "expected the backend as `ip:port` (e.g. `10.0.0.2:8080`, `[fd00::2]:8080`), found `{}`",
                            f.to
                        ),
                        None,
                    );
                }
                if f.share.value() == 0.0 {
                    self.error(&path.key("share"), "expected a share above 0%", None);
                }
            }
            FaultSpec::DbLock(f) => self.check_db_lock(path, f, step),
            FaultSpec::GpuUnavailable(f) => {
                if f.after_calls == Some(0) {
                    self.error(
                        &path.key("after_calls"),
                        "expected at least 1 (leave it out to fail from the first call)",
                        None,
                    );
                }
            }
            FaultSpec::GpuSlow(f) => {
                if f.delay.is_zero() {
                    self.error(
                        &path.key("delay"),
                        "expected a positive delay, found `0s`",
                        None,
                    );
                }
            }
            FaultSpec::GpuMemoryHog(f) => match (f.size, f.share) {
                (Some(_), Some(_)) => self.error(
                    path,
                    "expected exactly one of `size` and `share`, found both",
                    None,
                ),
                (None, None) => self.error(
                    path,
                    "expected one of `size` (e.g. `8GiB`) or `share` (e.g. `90%`), found neither",
                    None,
                ),
                (Some(s), None) if s.bytes() == 0 => {
                    self.error(&path.key("size"), "expected a positive size", None)
                }
                _ => {}
            },
            FaultSpec::GpuComputeHog(f) => {
                if f.utilization.value() == 0.0 {
                    self.error(
                        &path.key("utilization"),
                        "expected a utilisation above 0%",
                        None,
                    );
                }
            }
            FaultSpec::GpuDeviceDeny(f) => {
                if f.cgroup.trim().is_empty() {
                    self.error(
                        &path.key("cgroup"),
                        "expected a cgroup path like `system.slice/inference.service`",
                        None,
                    );
                }
            }
            FaultSpec::ProcessPause(f) => {
                self.check_process(path, f.pid, f.name.as_deref(), f.cgroup.as_deref())
            }
            FaultSpec::ProcessKill(f) => {
                self.check_process(path, f.pid, f.name.as_deref(), f.cgroup.as_deref())
            }
        }
    }

    fn check_attachment(
        &mut self,
        path: &DocPath,
        listen: &Option<String>,
        upstream: &Option<String>,
        port: Option<u16>,
    ) {
        match (listen, upstream, port) {
            (Some(l), Some(u), None) => {
                self.check_address(&path.key("listen"), l);
                self.check_address(&path.key("upstream"), u);
            }
            (None, None, Some(0)) => self.error(&path.key("port"), "expected a port between 1 and 65535, found 0", None),
            (None, None, Some(_)) => {}
            (_, _, Some(_)) => self.error(path, "expected either `listen` and `upstream` (proxy mode) or `port` (transparent mode), found both", None),
            (Some(_), None, None) => self.error(path, "proxy mode needs `upstream` too (where `listen` forwards to)", None),
            (None, Some(_), None) => self.error(path, "proxy mode needs `listen` too (where clients connect)", None),
            (None, None, None) => self.error(path, "expected `listen` and `upstream` (proxy mode) or `port` (transparent mode), found neither", None),
        }
    }

    fn check_address(&mut self, path: &DocPath, addr: &str) {
        if !is_host_port(addr) {
            self.error(
                path,
                format!("expected `host:port` (e.g. `127.0.0.1:8080`), found `{addr}`"),
                None,
            );
        }
    }

    fn check_http_url(&mut self, path: &DocPath, url: &str) {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') => {}
            _ => self.error(
                path,
                format!("expected an `http://` or `https://` URL with a host, found `{url}`"),
                None,
            ),
        }
    }

    fn check_ports(&mut self, path: &DocPath, ports: &[u16]) {
        for (i, p) in ports.iter().enumerate() {
            if *p == 0 {
                self.error(
                    &path.index(i),
                    "expected a port between 1 and 65535, found 0",
                    None,
                );
            }
        }
    }

    fn check_peers(&mut self, path: &DocPath, peers: &[String]) {
        for (i, peer) in peers.iter().enumerate() {
            if !is_ip_or_cidr(peer) {
                self.error(
                    &path.index(i),
                    format!("expected an IP address or CIDR like `10.0.0.0/8`, found `{peer}`"),
                    None,
                );
            }
        }
    }

    fn check_http_match(&mut self, path: &DocPath, url_path: Option<&str>, method: Option<&str>) {
        if let Some(p) = url_path
            && !p.starts_with('/')
        {
            self.error(
                &path.key("path"),
                format!("expected a path prefix starting with `/`, found `{p}`"),
                None,
            );
        }
        if let Some(m) = method
            && (m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()))
        {
            self.error(
                &path.key("method"),
                format!("expected an HTTP method in capitals like `POST`, found `{m}`"),
                None,
            );
        }
    }

    fn check_process(
        &mut self,
        path: &DocPath,
        pid: Option<u32>,
        name: Option<&str>,
        cgroup: Option<&str>,
    ) {
        let given = [pid.is_some(), name.is_some(), cgroup.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if given != 1 {
            let found = if given == 0 {
                "none".to_owned()
            } else {
                format!("{given}")
            };
            self.error(
                path,
                format!("expected exactly one of `pid`, `name` and `cgroup`, found {found}"),
                None,
            );
        }
        if pid == Some(0) {
            self.error(&path.key("pid"), "expected a process id above 0", None);
        }
        if let Some(n) = name
            && (n.is_empty() || n.len() > 15)
        {
            self.error(
                &path.key("name"),
                format!(
                    "expected a command name of 1 to 15 bytes (the kernel's comm), found `{n}`"
                ),
                None,
            );
        }
        if cgroup.is_some_and(|c| c.trim().is_empty()) {
            self.error(
                &path.key("cgroup"),
                "expected a cgroup path, found an empty string",
                None,
            );
        }
    }

    fn check_db_lock(&mut self, path: &DocPath, f: &DbLock, step: &Step) {
        let Some(engine) = f.resolved_engine() else {
            self.error(&path.key("url"), "cannot tell the database engine from this URL; add `engine: postgres | mysql | sqlite`", None);
            return;
        };
        let engine_name = match engine {
            DbEngine::Postgres => "postgres",
            DbEngine::Mysql => "mysql",
            DbEngine::Sqlite => "sqlite",
        };
        if let Some(mode) = f.mode {
            let allowed = LockMode::names_for(engine);
            if !allowed.contains(&mode.name()) {
                self.error(
                    &path.key("mode"),
                    format!(
                        "mode `{}` is not a {engine_name} lock mode; expected one of {}",
                        mode.name(),
                        backticked(allowed)
                    ),
                    did_you_mean(mode.name(), allowed.iter().copied()),
                );
            }
        }
        match (&f.table, f.advisory, engine) {
            (Some(_), Some(_), _) => self.error(
                path,
                "expected one of `table` and `advisory`, found both",
                None,
            ),
            (None, None, DbEngine::Postgres | DbEngine::Mysql) => self.error(
                path,
                "expected `table` (a table or row lock) or `advisory` (a lock key), found neither",
                None,
            ),
            (_, Some(_), DbEngine::Sqlite) => self.error(
                &path.key("advisory"),
                "sqlite has no advisory locks; it locks the whole database file",
                None,
            ),
            _ => {}
        }
        if let Some(t) = &f.table
            && !is_sql_identifier(t)
        {
            self.error(&path.key("table"), format!("expected a table name like `jobs` or `app.jobs` (letters, digits, `_`), found `{t}`"), None);
        }
        let row_mode = f.mode.is_some_and(LockMode::is_row_mode);
        if row_mode && f.rows.is_empty() {
            self.error(&path.key("mode"), "a row lock mode needs `where`, the rows to lock (e.g. `where: [{ column: id, op: \"=\", value: 42 }]`)", None);
        }
        if !f.rows.is_empty() && !row_mode {
            self.error_at_key(&path.key("where"), "`where` needs a row lock mode (`for_update`, `for_no_key_update`, `for_share`, `for_key_share`)", None);
        }
        for (i, r) in f.rows.iter().enumerate() {
            if !is_sql_identifier(&r.column) || r.column.contains('.') {
                self.error(
                    &path.key("where").index(i).key("column"),
                    format!(
                        "expected a column name (letters, digits, `_`), found `{}`",
                        r.column
                    ),
                    None,
                );
            }
        }
        if let Some(hold) = f.hold {
            if hold.is_zero() {
                self.error(
                    &path.key("hold"),
                    "expected a positive hold, found `0s`",
                    None,
                );
            } else if hold > step.duration {
                self.error(
                    &path.key("hold"),
                    format!(
                        "hold {hold} is longer than the step's duration {}",
                        step.duration
                    ),
                    None,
                );
            }
        }
        match (f.hold, f.every) {
            (None, Some(_)) => self.error(
                &path.key("every"),
                "`every` needs `hold`, how long each stall lasts",
                None,
            ),
            (Some(h), Some(e)) if e <= h => self.error(
                &path.key("every"),
                format!("expected `every` longer than `hold` ({h}), found {e}"),
                None,
            ),
            _ => {}
        }
        if f.lock_timeout.is_zero() {
            self.error(
                &path.key("lock_timeout"),
                "expected a positive lock_timeout, found `0s`",
                None,
            );
        }
    }
}

// === helpers ===

fn strip_location(msg: &str) -> String {
    // serde_yaml appends " at line L column C"; the diagnostic carries it already.
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => msg[..i].to_owned(),
        _ => msg.to_owned(),
    }
}

/// serde names Rust types in "expected" texts; say what to write instead.
fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" => "an integer from 0 to 255".into(),
        "u16" => "an integer from 0 to 65535".into(),
        "u32" | "u64" => "a non-negative integer".into(),
        "i32" | "i64" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        other => other.to_owned(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) => format!("number `{n}`"),
        Value::String(s) => format!("string `{s}`"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("tagged value `{}`", t.tag),
    }
}

/// `name` and the candidates out of "`name`, expected one of `a`, `b`".
fn split_unknown(rest: &str) -> (String, Vec<String>) {
    let mut ticks = rest.split('`').skip(1).step_by(2).map(str::to_owned);
    let name = ticks.next().unwrap_or_default();
    (name, ticks.collect())
}

fn backticked<S: AsRef<str>>(items: &[S]) -> String {
    items
        .iter()
        .map(|s| format!("`{}`", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn is_sql_identifier(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    match s.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(s),
    }
}

fn is_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && !host.contains(':')
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        Some((ip, bits)) => match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        },
        None => s.parse::<IpAddr>().is_ok(),
    }
}

fn is_status_rule(s: &str) -> bool {
    let b = s.as_bytes();
    match b {
        [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => *d >= b'1',
        _ => s.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_forms() {
        assert!(is_host_port("127.0.0.1:8080"));
        assert!(is_host_port("db-1.internal:5432"));
        assert!(is_host_port("[::1]:80"));
        assert!(!is_host_port("127.0.0.1"));
        assert!(!is_host_port("127.0.0.1:0"));
        assert!(!is_host_port("::1:80"));
        assert!(is_ip_or_cidr("10.0.0.0/8"));
        assert!(!is_ip_or_cidr("10.0.0.0/33"));
        assert!(
            is_status_rule("2xx")
                && is_status_rule("404")
                && !is_status_rule("6xx")
                && !is_status_rule("abc")
        );
        assert!(
            is_sql_identifier("app.jobs")
                && !is_sql_identifier("jobs; DROP TABLE x")
                && !is_sql_identifier("1x")
        );
    }
}
