//! Every invalid fixture yields located diagnostics, and the rendering is pinned by a
//! snapshot, so a change in wording or position is reviewed, not accidental.

use faultline_spec::{Severity, load};

#[test]
fn invalid_fixtures_report_located_errors() {
    let mut count = 0;
    insta::glob!("fixtures/invalid/*.yaml", |path| {
        count += 1;
        let text = std::fs::read_to_string(path).expect("fixture is readable");
        let name = format!(
            "fixtures/invalid/{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .expect("utf-8 name")
        );
        let loaded = load(&name, &text);
        assert!(loaded.experiment.is_none(), "{name} was accepted");
        assert!(loaded.report.has_errors(), "{name} has no error");
        for d in &loaded.report.diagnostics {
            assert!(
                d.line >= 1 && d.column >= 1,
                "{name}: unlocated diagnostic {d:?}"
            );
            if d.severity == Severity::Error {
                assert!(!d.message.is_empty());
            }
        }
        insta::assert_snapshot!(loaded.report.render());
    });
    assert!(count >= 40, "only {count} invalid fixtures");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/invalid/53-many-errors.yaml"
    ))
    .expect("fixture is readable");
    let report = load("many.yaml", &text).report;
    assert!(report.error_count() >= 8, "{}", report.render());
}

#[test]
fn shipped_experiments_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("experiments/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            n += 1;
            let loaded = faultline_spec::load_file(&path);
            assert!(loaded.experiment.is_some(), "{}", loaded.report.render());
            assert!(!loaded.report.has_errors(), "{}", loaded.report.render());
        }
    }
    assert!(
        n >= 8,
        "expected an experiment per fault family, a game day, a CI gate and the quickstart; found {n}"
    );
}
