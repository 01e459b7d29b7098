//! The JSON Schema that editors use agrees with the validator: every shipped
//! experiment conforms to it, and structural mistakes are caught by both.

use faultline_spec::schema::experiment_schema;

fn as_json(yaml: &str) -> serde_json::Value {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).expect("YAML parses");
    serde_json::to_value(v).expect("YAML converts to JSON")
}

#[test]
fn shipped_experiments_conform_to_the_schema() {
    let schema = experiment_schema();
    let validator =
        jsonschema::draft202012::new(&schema).expect("the schema is a valid 2020-12 schema");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../experiments");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).expect("experiments/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            n += 1;
            let doc = as_json(&std::fs::read_to_string(&path).expect("readable"));
            let errors: Vec<String> = validator
                .iter_errors(&doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        }
    }
    assert!(n >= 8);
}

#[test]
fn schema_rejects_what_the_validator_rejects() {
    let schema = experiment_schema();
    let validator = jsonschema::draft202012::new(&schema).expect("valid schema");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/invalid");
    // Structural mistakes a schema can see (cross-references and ranges are the
    // validator's alone).
    for name in [
        "06-wrong-version",
        "07-missing-version",
        "09-unknown-top-level-key",
        "10-unknown-fault",
        "12-two-faults-in-step",
        "15-duration-without-unit",
        "18-bad-rate",
        "20-threshold-without-operator",
        "22-unknown-key-in-fault",
        "23-unknown-key-in-step",
        "42-gpu-bad-error",
        "46-unknown-probe-type",
    ] {
        let doc =
            as_json(&std::fs::read_to_string(format!("{dir}/{name}.yaml")).expect("readable"));
        assert!(!validator.is_valid(&doc), "the schema accepts {name}");
    }
}
