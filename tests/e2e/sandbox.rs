//! The sandbox: bad modules are refused at load with a message naming the module and what is
//! wrong; a record that makes its UDF fail, panic, loop or hoard memory goes to the dead letters
//! while every other record comes through.

use crate::support::{Scenario, modules, sorted};
use flumen_sdk::abi::{ABI_VERSION, BINCODE, Describe, OperatorKind};
use serde_json::{Value, json};

/// A pipeline reading `probes.jsonl` through the module at `module` into `out.jsonl`, with
/// dead letters in `dead.jsonl`.
pub(crate) fn pipeline_with(module: &str) -> String {
    format!(
        r#"
[pipeline]
dead_letter = "dead"
[sources.probes]
type = "file"
path = "{{dir}}/probes.jsonl"
[operators.probe]
module = "{module}"
inputs = ["probes"]
timeout_ms = 300
memory_limit_mib = 16
params = {{ stamp = "passed" }}
[sinks.out]
type = "file"
path = "{{dir}}/out.jsonl"
inputs = ["probe"]
[sinks.dead]
type = "file"
path = "{{dir}}/dead.jsonl"
"#
    )
}

/// A module in the WebAssembly text format, written to the scenario's folder.
fn wat_module(scenario: &Scenario, name: &str, wat: &str) -> String {
    let bytes = wat::parse_str(wat).unwrap();
    scenario.write(name, bytes).display().to_string()
}

/// A module exporting all of flumen's ABI whose `describe` returns `describe` and whose `init`
/// runs `init_body` (WebAssembly text leaving an i64).
pub(crate) fn fake_module(describe: &Describe, imports: &str, init_body: &str) -> String {
    let bytes = bincode::serde::encode_to_vec(describe, BINCODE).unwrap();
    let data: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (data (i32.const 1024) "{data}")
  (func (export "flumen_describe") (result i64) (i64.const {packed}))
  (func (export "flumen_input") (param i32) (result i32) (i32.const 4096))
  (func (export "flumen_init") (param i32) (result i64) {init_body})
  (func (export "flumen_process") (param i32) (result i64) (i64.const 0))
  (func (export "flumen_to_json") (param i32) (result i64) (i64.const 0)))"#,
        packed = (1024u64 << 32) | bytes.len() as u64,
    )
}

fn describe(abi_version: u32) -> Describe {
    Describe {
        abi_version,
        kind: OperatorKind::Map,
        input_type: "Probe".into(),
        output_type: "Probe".into(),
        side_outputs: Vec::new(),
        state_type: None,
        input_shape: None,
        output_shape: None,
    }
}

#[test]
fn bad_modules_are_refused_at_load_naming_module_and_fault() {
    modules();
    let scenario = Scenario::new();
    let not_wasm = scenario.write("not_wasm.wasm", "hello, I am not WebAssembly");
    let abi_error =
        format!("old_abi.wasm: speaks flumen ABI version 999, this runtime speaks {ABI_VERSION}");
    let cases = [
        (
            not_wasm.display().to_string(),
            vec!["not_wasm.wasm: not a valid WebAssembly module"],
        ),
        (
            wat_module(
                &scenario,
                "wasi.wasm",
                &fake_module(
                    &describe(ABI_VERSION),
                    r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
                    "(i64.const 0)",
                ),
            ),
            vec![
                "wasi.wasm: imports `wasi_snapshot_preview1.fd_write`, which flumen does not provide",
            ],
        ),
        (
            wat_module(
                &scenario,
                "env.wasm",
                &fake_module(
                    &describe(ABI_VERSION),
                    r#"(import "flumen" "open_socket" (func))"#,
                    "(i64.const 0)",
                ),
            ),
            vec!["env.wasm: imports `flumen.open_socket`"],
        ),
        (
            wat_module(
                &scenario,
                "old_abi.wasm",
                &fake_module(&describe(999), "", "(i64.const 0)"),
            ),
            vec![abi_error.as_str()],
        ),
        (
            wat_module(
                &scenario,
                "bare.wasm",
                r#"(module (memory (export "memory") 1))"#,
            ),
            vec!["bare.wasm: does not export `flumen_describe`"],
        ),
        (
            wat_module(
                &scenario,
                "trap.wasm",
                r#"(module (memory (export "memory") 1)
                   (func (export "flumen_describe") (result i64) unreachable)
                   (func (export "flumen_input") (param i32) (result i32) (i32.const 0))
                   (func (export "flumen_init") (param i32) (result i64) (i64.const 0))
                   (func (export "flumen_process") (param i32) (result i64) (i64.const 0))
                   (func (export "flumen_to_json") (param i32) (result i64) (i64.const 0)))"#,
            ),
            vec!["trap.wasm: describe: trapped"],
        ),
        (
            wat_module(
                &scenario,
                "wild.wasm",
                r#"(module (memory (export "memory") 1)
                   (func (export "flumen_describe") (result i64) (i64.const 0x7fff000000000010))
                   (func (export "flumen_input") (param i32) (result i32) (i32.const 0))
                   (func (export "flumen_init") (param i32) (result i64) (i64.const 0))
                   (func (export "flumen_process") (param i32) (result i64) (i64.const 0))
                   (func (export "flumen_to_json") (param i32) (result i64) (i64.const 0)))"#,
            ),
            vec![
                "wild.wasm: describe: guest returned a buffer",
                "outside its memory",
            ],
        ),
    ];
    for (module, expected) in cases {
        let errors = scenario.validate_errors(&pipeline_with(&module));
        for fragment in expected {
            assert!(
                errors.contains(fragment),
                "expected {fragment:?} in:\n{errors}"
            );
        }
        assert!(errors.contains("`operators.probe.module`"), "{errors}");
    }
}

#[test]
fn a_poison_record_goes_to_the_dead_letters_and_the_rest_comes_through() {
    let scenario = Scenario::new();
    let actions = [
        "ok", "error", "ok", "panic", "ok", "loop", "ok", "alloc", "ok", "ok",
    ];
    let mut lines: Vec<String> = actions
        .iter()
        .enumerate()
        .map(|(id, action)| json!({"id": id, "action": action}).to_string())
        .collect();
    lines.push("{\"id\": \"eleven\", \"action\": \"ok\"}".into());
    lines.push(json!({"id": 12, "action": "ok"}).to_string());
    scenario.write("probes.jsonl", lines.join("\n"));
    scenario.run(&pipeline_with(&format!(
        "{}/misbehave.wasm",
        modules().display()
    )));

    let passed: Vec<Value> = actions
        .iter()
        .enumerate()
        .filter(|(_, a)| **a == "ok")
        .map(|(id, _)| json!({"id": id, "action": "passed"}))
        .chain([json!({"id": 12, "action": "passed"})])
        .collect();
    assert_eq!(sorted(scenario.jsonl("out.jsonl")), sorted(passed));

    let dead = scenario.jsonl("dead.jsonl");
    let error_of = |id: usize| -> String {
        let raw = &lines[id];
        let letter = dead
            .iter()
            .find(|d| d["raw"] == *raw)
            .unwrap_or_else(|| panic!("no dead letter for {raw} in {dead:#?}"));
        assert_eq!(letter["stage"], "probe");
        letter["error"].as_str().unwrap().to_string()
    };
    assert_eq!(dead.len(), 5, "{dead:#?}");
    assert!(error_of(1).contains("refused probe 1"));
    assert!(error_of(3).contains("probe 3 asked to panic"));
    assert_eq!(
        error_of(3).matches("panicked at").count(),
        1,
        "{}",
        error_of(3)
    );
    assert!(error_of(5).contains("exceeded its time limit of 300 ms"));
    assert!(error_of(7).contains("exceeded its memory limit of 16 MiB"));
    assert!(error_of(10).contains("cannot decode Probe"));
}

/// What a module makes the host keep is bounded per stage: an output too large for its record,
/// a key's state too large, a stage's state past its total. The record responsible is a dead
/// letter, the rest comes through, and the summary adds up.
#[test]
fn host_memory_spent_for_a_module_is_bounded() {
    let scenario = Scenario::new();
    let lines: Vec<String> = ["ok", "flood", "ok"]
        .iter()
        .enumerate()
        .map(|(id, action)| json!({"id": id, "action": action}).to_string())
        .collect();
    scenario.write("probes.jsonl", lines.join("\n"));
    let toml = pipeline_with(&format!("{}/misbehave.wasm", modules().display())).replace(
        "memory_limit_mib = 16",
        "memory_limit_mib = 16\nmax_record_output_bytes = 50000",
    );
    scenario.run(&toml);
    assert_eq!(scenario.jsonl("out.jsonl").len(), 2);
    let dead = scenario.jsonl("dead.jsonl");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(
        dead[0]["error"]
            .as_str()
            .unwrap()
            .contains("max_record_output_bytes")
    );

    // Per call: three floods of 100 000 bytes pass a 250 000-byte call limit once the batch is
    // halved; under a 50 000-byte one, each flood alone is too much and is a dead letter.
    let floods: Vec<String> = (0..3)
        .map(|id| json!({"id": id, "action": "flood"}).to_string())
        .collect();
    scenario.write("probes.jsonl", floods.join("\n"));
    for (limit, passed) in [(250_000, 3), (50_000, 0)] {
        scenario.run(
            &pipeline_with(&format!("{}/misbehave.wasm", modules().display())).replace(
                "memory_limit_mib = 16",
                &format!("memory_limit_mib = 16\nmax_output_bytes = {limit}"),
            ),
        );
        assert_eq!(scenario.jsonl("out.jsonl").len(), passed, "limit {limit}");
        let dead = scenario.jsonl("dead.jsonl");
        assert_eq!(dead.len(), 3 - passed, "limit {limit}");
        assert!(
            dead.iter()
                .all(|d| d["error"].as_str().unwrap().contains("max_output_bytes"))
        );
    }

    // dedupe keeps one small entry per order id: a stage limit of 200 bytes holds a few
    // dozen ids; the orders past it are dead letters and leave the state as it was.
    let orders: String = (0..200)
        .map(|id| {
            format!(
                "{{\"order_id\": {id}, \"user_id\": 1, \"sku\": \"SKU-0500\", \"qty\": 1, \"price_cents\": 100, \"country\": \"FR\", \"ts\": {}}}\n",
                1_700_000_000_000i64 + id
            )
        })
        .collect();
    scenario.write("orders.jsonl", &orders);
    let pipeline = scenario.pipeline(&format!(
        r#"
[pipeline]
dead_letter = "dead"
[sources.orders]
type = "file"
path = "{{dir}}/orders.jsonl"
[operators.validate]
module = "{modules}/validate.wasm"
inputs = ["orders"]
[operators.dedupe]
module = "{modules}/dedupe.wasm"
inputs = ["validate"]
key_by = "order_id"
max_state_bytes = 200
[sinks.passed]
type = "file"
path = "{{dir}}/passed.jsonl"
inputs = ["dedupe"]
[sinks.dead]
type = "file"
path = "{{dir}}/dead.jsonl"
"#,
        modules = modules().display()
    ));
    scenario.run_accounted(&pipeline);
    let passed = scenario.jsonl("passed.jsonl").len();
    let dead = scenario.jsonl("dead.jsonl");
    assert!(passed > 10 && passed < 200, "{passed} passed");
    assert_eq!(passed + dead.len(), 200);
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("max_state_bytes")),
        "{dead:#?}"
    );

    // Window accumulators count too: one sku per order, a stage limit of 300 bytes.
    let orders = orders.replace("\"sku\": \"SKU-0500\"", "\"sku\": \"SKU-0{id}\"");
    let orders: String = orders
        .lines()
        .enumerate()
        .map(|(id, line)| format!("{}\n", line.replace("{id}", &format!("{:03}", id))))
        .collect();
    scenario.write("orders.jsonl", &orders);
    let windowed = std::fs::read_to_string(&pipeline).unwrap().replace(
        "[operators.dedupe]\nmodule = \"",
        "[operators.sales]\nmodule = \"",
    );
    let windowed = windowed
        .replace(&format!("{}/dedupe.wasm", modules().display()), &format!("{}/sales_per_sku.wasm", modules().display()))
        .replace("key_by = \"order_id\"\nmax_state_bytes = 200", "key_by = \"sku\"\nmax_state_bytes = 300\nwindow = { type = \"tumbling\", size_ms = 60000 }")
        .replace("inputs = [\"dedupe\"]", "inputs = [\"sales\"]");
    std::fs::write(&pipeline, windowed).unwrap();
    scenario.run_accounted(&pipeline);
    let sales = scenario.jsonl("passed.jsonl").len();
    let dead = scenario.jsonl("dead.jsonl");
    assert!(sales > 3 && sales < 200, "{sales} windows");
    assert_eq!(sales + dead.len(), 200);
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("max_state_bytes"))
    );
}

/// A module that loops on every record costs a batch a bounded number of time-outs: the batch
/// is retried in halves until two levels' worth of time-outs are spent, then the records still
/// undecided are dead letters without another call. Every record is accounted for.
#[test]
fn a_module_looping_on_every_record_costs_a_bounded_number_of_timeouts() {
    let scenario = Scenario::new();
    let lines: Vec<String> = (0..8)
        .map(|id| json!({"id": id, "action": "loop"}).to_string())
        .collect();
    scenario.write("probes.jsonl", lines.join("\n"));
    scenario.run(&pipeline_with(&format!(
        "{}/misbehave.wasm",
        modules().display()
    )));
    assert!(scenario.jsonl("out.jsonl").is_empty());
    let dead = scenario.jsonl("dead.jsonl");
    assert_eq!(dead.len(), 8, "{dead:#?}");
    let error = |d: &Value| d["error"].as_str().unwrap().to_string();
    let timed_out = dead
        .iter()
        .filter(|d| error(d).starts_with("exceeded its time limit of 300 ms"))
        .count();
    let skipped = dead
        .iter()
        .filter(|d| {
            error(d).starts_with("not retried: the module exceeded its time limit on 9 calls")
        })
        .count();
    // 8 records: 2·4 + 1 = 9 time-outs (the batch, halves, quarters, four records alone), and
    // the last four records are not called again.
    assert_eq!((timed_out, skipped), (4, 4), "{dead:#?}");
}

/// A misspelt parameter is refused at load, even by a UDF whose parameter type would silently
/// ignore it (no `deny_unknown_fields`): it must not keep its default unnoticed.
#[test]
fn unknown_params_keys_are_refused_whatever_the_udf_says() {
    let scenario = Scenario::new();
    let toml = pipeline_with(&format!("{}/misbehave.wasm", modules().display())).replace(
        "params = { stamp = \"passed\" }",
        "params = { stamp = \"passed\", stmap = 1 }",
    );
    let errors = scenario.validate_errors(&toml);
    assert!(errors.contains("`operators.probe.params`"), "{errors}");
    assert!(errors.contains("unknown params key `stmap`"), "{errors}");
}

/// `flumen_sdk::log::info!` in a module reaches flumen's log with the stage and partition; a
/// module writing a thousand lines at once gets the burst and a warning, not a thousand lines.
#[test]
fn a_udf_logs_into_flumens_log_within_a_rate_limit() {
    let scenario = Scenario::new();
    let lines: Vec<String> = ["log", "log_flood", "ok"]
        .iter()
        .enumerate()
        .map(|(id, action)| json!({"id": id, "action": action}).to_string())
        .collect();
    scenario.write("probes.jsonl", lines.join("\n"));
    let pipeline = scenario.pipeline(&pipeline_with(&format!(
        "{}/misbehave.wasm",
        modules().display()
    )));
    let out = crate::support::flumen()
        .arg("run")
        .arg(&pipeline)
        .env("FLUMEN_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let hello = log
        .lines()
        .find(|l| l.contains("probe 0 says hello"))
        .unwrap_or_else(|| panic!("no UDF line in\n{log}"));
    assert!(
        hello.contains("INFO")
            && hello.contains("stage=\"probe\"")
            && hello.contains("partition=0"),
        "{hello}"
    );
    let flood = log.matches("probe 1 line ").count();
    assert!((100..=250).contains(&flood), "{flood} flood lines kept");
    assert_eq!(log.matches("log rate limit reached").count(), 1, "{log}");
    // Every probe came through.
    assert_eq!(scenario.jsonl("out.jsonl").len(), 3);
}
