//! A bad pipeline file gives a clear error naming file, line and key, and a non-zero exit; every
//! problem is reported at once.

use crate::support::{Scenario, modules};

const GOOD: &str = r#"[pipeline]
dead_letter = "dead"

[sources.orders]
type = "file"
path = "{dir}/orders.jsonl"

[operators.validate]
module = "{modules}/validate.wasm"
inputs = ["orders"]

[sinks.valid]
type = "file"
path = "{dir}/valid.jsonl"
inputs = ["validate"]

[sinks.dead]
type = "stdout"
"#;

/// Each case: what it breaks, the replacement made in `GOOD`, and what the error must say.
const CASES: &[(&str, &str, &str, &[&str])] = &[
    (
        "syntax error",
        "inputs = [\"orders\"]",
        "inputs = [\"orders\"",
        &["pipeline.toml:10:1: `operators.validate.inputs`: missing comma"],
    ),
    (
        "unknown key",
        "type = \"file\"\npath = \"{dir}/orders",
        "type = \"file\"\npaht = \"x\"\npath = \"{dir}/orders",
        &["pipeline.toml:6:1: `sources.orders.paht`: unknown key; expected one of"],
    ),
    (
        "unknown input",
        "inputs = [\"validate\"]",
        "inputs = [\"validat\"]",
        &[
            "pipeline.toml:15:1: `sinks.valid.inputs`: input `validat`: no source or operator is named `validat`",
        ],
    ),
    (
        "unknown output port",
        "inputs = [\"validate\"]",
        "inputs = [\"validate.refused\"]",
        &[
            "`sinks.valid.inputs`: input `validate.refused`: `validate` has no output `refused`; it has main, rejected",
        ],
    ),
    (
        "cycle",
        "inputs = [\"orders\"]",
        "inputs = [\"orders\", \"again\"]\n\n[operators.again]\nmodule = \"{modules}/validate.wasm\"\ninputs = [\"validate\"]",
        &[
            "`operators.validate.inputs`: operators again, validate form a cycle",
            "`operators.again.inputs`",
        ],
    ),
    (
        "type mismatch",
        "[sinks.valid]",
        "[operators.probe]\nmodule = \"{modules}/misbehave.wasm\"\ninputs = [\"validate\"]\n\n[sinks.valid]",
        &[
            "`operators.probe.inputs`: input `validate` carries `ValidOrder`, but `probe` takes `Probe`",
        ],
    ),
    (
        "missing module",
        "validate.wasm",
        "nowhere.wasm",
        &[
            "pipeline.toml:9:1: `operators.validate.module`: module",
            "nowhere.wasm not found; build the UDFs",
        ],
    ),
    (
        "bad params",
        "inputs = [\"orders\"]",
        "inputs = [\"orders\"]\nparams = { strict = true }",
        &[
            "pipeline.toml:11:1: `operators.validate.params`: module",
            "init failed: invalid params: unknown field `strict`",
        ],
    ),
    (
        "unset variable",
        "{dir}/orders.jsonl",
        "${NO_SUCH_VARIABLE_FLUMEN}",
        &["pipeline.toml:6:9: environment variable `NO_SUCH_VARIABLE_FLUMEN` is not set"],
    ),
    (
        "wrong value type",
        "type = \"stdout\"",
        "type = 3",
        &["pipeline.toml:18:1: `sinks.dead.type`: invalid type"],
    ),
    (
        "unknown dead-letter sink",
        "dead_letter = \"dead\"",
        "dead_letter = \"graveyard\"",
        &["pipeline.toml:2:1: `pipeline.dead_letter`: no sink named `graveyard`"],
    ),
];

#[test]
fn each_bad_pipeline_names_file_line_and_key() {
    modules();
    for (what, from, to, expected) in CASES {
        assert!(GOOD.contains(from), "{what}: the case does not apply");
        let scenario = Scenario::new();
        let errors = scenario.validate_errors(&GOOD.replacen(from, to, 1));
        for fragment in *expected {
            assert!(
                errors.contains(fragment),
                "{what}: expected {fragment:?} in:\n{errors}"
            );
        }
        assert!(
            errors.contains("pipeline.toml:"),
            "{what}: no file named in:\n{errors}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    modules();
    let scenario = Scenario::new();
    let broken = GOOD
        .replacen(
            "type = \"file\"\npath = \"{dir}/orders",
            "type = \"file\"\nfolow = true\npath = \"{dir}/orders",
            1,
        )
        .replacen("validate.wasm", "missing.wasm", 1)
        .replacen("inputs = [\"validate\"]", "inputs = [\"nobody\"]", 1)
        .replacen("type = \"stdout\"", "type = \"printer\"", 1);
    let errors = scenario.validate_errors(&broken);
    let expected = [
        "pipeline.toml:6:1: `sources.orders.folow`: unknown key",
        "pipeline.toml:10:1: `operators.validate.module`: module",
        "pipeline.toml:16:1: `sinks.valid.inputs`: input `nobody`",
        "pipeline.toml:19:1: `sinks.dead.type`: unknown sink type \"printer\"",
    ];
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{errors}");
    for (line, fragment) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(fragment) || line.contains(fragment),
            "{fragment:?} vs {line:?}"
        );
    }
}

#[test]
fn run_refuses_a_bad_pipeline_with_a_non_zero_exit() {
    modules();
    let scenario = Scenario::new();
    let pipeline = scenario.pipeline(&GOOD.replacen("validate.wasm", "missing.wasm", 1));
    let output = scenario.flumen(&["run", pipeline.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("missing.wasm not found"));
}
