//! What an experiment arriving over the API may do on the controller's own host.
//! Experiments from the API are untrusted: a `command` probe runs a program in the
//! controller's process, and a `process.*` step on the in-process agent signals
//! processes on the controller's host. Both are refused unless the server's
//! allow-list names them; refusals are located diagnostics, like validation's.

use faultline_spec::located::{DocPath, SourceMap};
use faultline_spec::{Experiment, FaultSpec, LOCAL_AGENT, Probe, Report, Severity};
use indexmap::IndexMap;

use super::config::AllowList;
use crate::select::Selection;

/// Whether storing or running this experiment needs the admin role: it has a
/// command probe.
pub fn needs_admin(exp: &Experiment) -> bool {
    exp.probes.values().any(|p| matches!(p, Probe::Command(_)))
}

/// Every way `exp` goes beyond `allow`, as diagnostics into `yaml`; empty: allowed.
pub fn check(
    file: &str,
    yaml: &str,
    exp: &Experiment,
    selections: &IndexMap<String, Selection>,
    allow: &AllowList,
) -> Report {
    let map = SourceMap::parse(yaml);
    let mut report = Report::new(file, yaml);
    for (name, probe) in &exp.probes {
        let Probe::Command(c) = probe else { continue };
        let program = c.run.first().map(String::as_str).unwrap_or_default();
        if !allow.commands.iter().any(|a| a == "*" || a == program) {
            let path = DocPath::root()
                .key("probes")
                .key(name)
                .key("command")
                .key("run");
            report.push(
                Severity::Error,
                map.locate(&path),
                path.to_string(),
                format!(
                    "command probe `{name}` runs `{program}` on the controller's host, which the server's allow-list does not name"
                ),
                Some(format!(
                    "an operator of the server can add `{program}` to `allow.commands` in its config"
                )),
            );
        }
    }
    for (i, step) in exp.method.iter().enumerate() {
        let on_local = selections
            .get(&step.target)
            .is_some_and(|s| s.agents.iter().any(|a| a == LOCAL_AGENT));
        if !on_local {
            continue;
        }
        let selectors: Vec<String> = match &step.fault {
            FaultSpec::ProcessPause(p) => selectors(p.pid, p.name.as_deref(), p.cgroup.as_deref()),
            FaultSpec::ProcessKill(p) => selectors(p.pid, p.name.as_deref(), p.cgroup.as_deref()),
            _ => continue,
        };
        for sel in selectors {
            if !allowed_process(&allow.local_processes, &sel) {
                let path = DocPath::root().key("method").index(i).key("fault");
                report.push(
                    Severity::Error,
                    map.locate(&path),
                    path.to_string(),
                    format!(
                        "step `{}` signals processes ({sel}) on the controller's own host, which the server's allow-list does not name",
                        step.name
                    ),
                    Some(format!(
                        "an operator of the server can add `{sel}` to `allow.local_processes`, or target an agent on another host"
                    )),
                );
            }
        }
    }
    report
}

fn selectors(pid: Option<u32>, name: Option<&str>, cgroup: Option<&str>) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(p) = pid {
        v.push(format!("pid:{p}"));
    }
    if let Some(n) = name {
        v.push(format!("name:{n}"));
    }
    if let Some(c) = cgroup {
        v.push(format!("cgroup:{c}"));
    }
    v
}

fn allowed_process(allow: &[String], sel: &str) -> bool {
    let kind = sel.split_once(':').map_or("", |(k, _)| k);
    allow
        .iter()
        .any(|a| a == "*" || a == sel || a.strip_suffix(":*") == Some(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(yaml: &str) -> Experiment {
        let loaded = faultline_spec::validate::load("t.yaml", yaml);
        match loaded.experiment {
            Some(e) => e,
            None => panic!("{}", loaded.report.render()),
        }
    }

    const YAML: &str = r#"version: faultline/v1
name: t
targets:
  host: { agents: [local] }
probes:
  q:
    command: { run: ["/usr/bin/true"] }
hypotheses:
  - { probe: q, availability: ">= 99%" }
method:
  - name: freeze
    target: host
    fault: { process.pause: { name: nginx } }
    duration: 1s
"#;

    fn check_with(allow: AllowList) -> Report {
        let e = exp(YAML);
        let sel = crate::select::resolve(&e, &Default::default(), 0).expect("resolves");
        check("t.yaml", YAML, &e, &sel, &allow)
    }

    #[test]
    fn command_probes_and_local_process_faults_need_the_allow_list() {
        let r = check_with(AllowList::default());
        assert_eq!(r.error_count(), 2, "{}", r.render());
        assert_eq!(r.diagnostics[0].path, "probes.q.command.run");
        assert_eq!(r.diagnostics[0].line, 7);
        assert_eq!(r.diagnostics[1].path, "method[0].fault");
        assert!(r.diagnostics[1].message.contains("name:nginx"));
        assert!(needs_admin(&exp(YAML)));

        let r = check_with(AllowList {
            commands: vec!["/usr/bin/true".into()],
            local_processes: vec!["name:*".into()],
        });
        assert_eq!(r.error_count(), 0, "{}", r.render());
        let r = check_with(AllowList {
            commands: vec!["*".into()],
            local_processes: vec!["name:nginx".into()],
        });
        assert_eq!(r.error_count(), 0, "{}", r.render());
        let r = check_with(AllowList {
            commands: vec!["*".into()],
            local_processes: vec!["pid:*".into()],
        });
        assert_eq!(r.error_count(), 1, "{}", r.render());
    }
}
