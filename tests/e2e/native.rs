//! The native backend: the same UDF crates built for the host and run through the same runtime
//! path give the same outputs as their Wasm modules, and a panic is still caught.

use crate::orders_pipeline::{SINKS, input, sink};
use crate::support::{Scenario, assert_same_set, flumen, native_modules, text};
use serde_json::json;

#[test]
fn native_modules_give_the_same_outputs_as_wasm() {
    native_modules();
    let scenario = Scenario::new();
    let orders = scenario.write("orders.jsonl", input(&scenario, "6000", "13"));
    for backend in ["wasm", "native"] {
        let output = flumen()
            .args(["run", "pipelines/orders.toml", "--backend", backend])
            .env("ORDERS", &orders)
            .env("OUT_DIR", scenario.path(backend))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{backend}: {}",
            text(&output.stderr)
        );
    }
    for name in SINKS {
        let wasm = sink(&scenario.path("wasm"), name);
        assert!(!wasm.is_empty() || name == "late", "{name} is empty");
        assert_same_set(name, sink(&scenario.path("native"), name), wasm);
    }
}

#[test]
fn a_native_panic_is_a_dead_letter() {
    native_modules();
    let scenario = Scenario::new();
    let lines = [
        json!({"id": 1, "action": "ok"}),
        json!({"id": 2, "action": "panic"}),
    ];
    let text_lines: Vec<String> = lines.iter().map(ToString::to_string).collect();
    scenario.write("probes.jsonl", text_lines.join("\n"));
    let pipeline = scenario.pipeline(
        r#"
[pipeline]
dead_letter = "dead"
[sources.probes]
type = "file"
path = "{dir}/probes.jsonl"
[operators.probe]
module = "{modules}/misbehave.wasm"
inputs = ["probes"]
[sinks.out]
type = "file"
path = "{dir}/out.jsonl"
inputs = ["probe"]
[sinks.dead]
type = "file"
path = "{dir}/dead.jsonl"
"#,
    );
    let output = scenario.flumen(
        &["run", pipeline.to_str().unwrap(), "--backend", "native"],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        scenario.jsonl("out.jsonl"),
        vec![json!({"id": 1, "action": "ok"})]
    );
    let dead = scenario.jsonl("dead.jsonl");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("probe 2 asked to panic"),
        "{dead:?}"
    );
}
