//! The command line itself: data generation, and errors for what cannot be run.

use crate::support::{Scenario, flumen, text};

#[test]
fn gen_is_deterministic_per_seed() {
    let run = |seed: &str| {
        let output = flumen()
            .args(["gen", "orders", "--count", "300", "--seed", seed])
            .output()
            .unwrap();
        assert!(output.status.success());
        text(&output.stdout)
    };
    let a = run("3");
    assert_eq!(a.lines().count(), 300);
    assert_eq!(a, run("3"));
    assert_ne!(a, run("4"));
}

#[test]
fn a_missing_pipeline_file_is_an_error() {
    let scenario = Scenario::new();
    let missing = scenario.path("nope.toml");
    let output = scenario.flumen(&["validate", missing.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("nope.toml: cannot read the pipeline file"));
}
