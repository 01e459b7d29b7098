//! The loader never panics, whatever the input: arbitrary text, and valid
//! experiments with random lines removed or characters replaced.

use proptest::prelude::*;

const VALID: &str = include_str!("../../../experiments/game-day.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(text in "\\PC{0,400}") {
        let _ = faultline_spec::load("fuzz.yaml", &text);
    }

    #[test]
    fn yaml_shaped_text(text in "([a-z_.]{1,12}: ?(\\{|\\[|[-0-9a-z%/<>=. ]{0,12}|\\}|\\])?\n {0,4}){0,30}") {
        let _ = faultline_spec::load("fuzz.yaml", &text);
    }

    #[test]
    fn mutated_experiment(drop_line in 0usize..80, at in 0usize..4000, c in any::<char>()) {
        let mut lines: Vec<&str> = VALID.lines().collect();
        if drop_line < lines.len() {
            lines.remove(drop_line);
        }
        let mut text = lines.join("\n");
        let at = at.min(text.len());
        if text.is_char_boundary(at) {
            text.insert(at, c);
        }
        let loaded = faultline_spec::load("fuzz.yaml", &text);
        // Whatever happens, a rejection says where.
        for d in &loaded.report.diagnostics {
            prop_assert!(d.line >= 1 && d.column >= 1);
        }
    }
}
