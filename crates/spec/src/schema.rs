//! The JSON Schema (draft 2020-12) of the experiment format, for editors and CI.

use schemars::generate::SchemaSettings;

use crate::experiment::Experiment;

/// Where editors are told to find the schema in the example experiments.
pub const SCHEMA_ID: &str = "https://faultline.dev/schema/faultline-v1.json";

/// The schema as a JSON value.
pub fn experiment_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<Experiment>();
    schema.insert("$id".into(), SCHEMA_ID.into());
    schema.insert("title".into(), "faultline/v1 experiment".into());
    schema.to_value()
}
