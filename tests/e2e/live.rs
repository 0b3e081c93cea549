//! A live pipeline: a followed file, hot reloads under load, SIGTERM. Every input record must
//! produce its outputs exactly once, keyed state must survive swaps, and no bad file may stop the
//! pipeline.

use crate::orders_pipeline::{input, oracle, sink};
use crate::support::{
    Live, Scenario, append, assert_same_set, line_count, modules, wait_until, workspace,
};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The non-window sinks, exact whatever the batching of a live source.
const EXACT_SINKS: [&str; 5] = [
    "rejected",
    "dead_letter",
    "out_of_stock",
    "alerts",
    "scores",
];

/// A copy of the reference pipeline in the scenario's folder, with absolute module paths.
pub(crate) fn pipeline_copy() -> String {
    let text = std::fs::read_to_string(workspace().join("pipelines/orders.toml")).unwrap();
    let modules = modules().display().to_string();
    text.replace("../target/flumen", &modules)
}

pub(crate) fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// Splits the input lines into three parts at line boundaries.
fn thirds(input: &str) -> [String; 3] {
    let lines: Vec<&str> = input.lines().collect();
    let cut = |a: usize, b: usize| {
        lines[a..b]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    };
    let n = lines.len();
    [cut(0, n / 3), cut(n / 3, 2 * n / 3), cut(2 * n / 3, n)]
}

fn accepted(part: &str) -> usize {
    oracle(part)["scores"].len()
}

/// A copy of the reference pipeline running live (`--watch`, following its input), and where
/// things are.
struct Following {
    live: Live,
    /// Three parts of the generated input; the first is in the followed file.
    parts: [String; 3],
    orders: PathBuf,
    toml: PathBuf,
    /// The pipeline file as first written.
    original: String,
    out: PathBuf,
    scores: PathBuf,
}

/// Starts the reference pipeline on the first third of `count` orders generated with `seed` and
/// returns once that third's scores are out.
fn follow_reference(scenario: &Scenario, count: &str, seed: &str) -> Following {
    let parts = thirds(&input(scenario, count, seed));
    let orders = scenario.path("orders.jsonl");
    std::fs::write(&orders, &parts[0]).unwrap();
    let toml = scenario.path("pipeline.toml");
    let original = pipeline_copy();
    std::fs::write(&toml, &original).unwrap();
    let out = scenario.path("out");
    let live = Live::start(
        &[toml.to_str().unwrap(), "--watch"],
        &[
            ("FOLLOW", "true".as_ref()),
            ("ORDERS", orders.as_os_str()),
            ("OUT_DIR", out.as_os_str()),
        ],
        scenario.path("stderr.log"),
    );
    let scores = out.join("scores.jsonl");
    wait_until(
        "the first part",
        || line_count(&scores) >= accepted(&parts[0]),
        || live.log(),
    );
    Following {
        live,
        parts,
        orders,
        toml,
        original,
        out,
        scores,
    }
}

#[test]
fn a_live_pipeline_reloads_under_load_and_loses_nothing() {
    modules();
    let scenario = Scenario::new();
    let Following {
        live,
        parts: [first, second, third],
        orders,
        toml,
        original,
        out,
        scores,
    } = follow_reference(&scenario, "9000", "17");

    // A burst of bad edits: a truncated file, a module deleted then restored, a module whose init
    // traps. Each one fails to load and the running pipeline goes on.
    write_atomically(
        &toml,
        &format!("{}\n[operators.broken", &original[..original.len() / 2]),
    );
    live.wait_for_log("reload failed:", 1);
    assert!(
        live.log()
            .contains(&format!("reload failed: {}:", toml.display())),
        "{}",
        live.log()
    );
    let dedupe_copy = scenario.path("dedupe.wasm");
    std::fs::copy(modules().join("dedupe.wasm"), &dedupe_copy).unwrap();
    let with_copy = original.replace(
        &format!("{}/dedupe.wasm", modules().display()),
        &dedupe_copy.display().to_string(),
    );
    std::fs::remove_file(&dedupe_copy).unwrap();
    write_atomically(&toml, &with_copy);
    live.wait_for_log("reload failed:", 2);
    let trap = scenario.path("trap.wasm");
    std::fs::write(&trap, wat::parse_str(trap_in_init()).unwrap()).unwrap();
    write_atomically(
        &toml,
        &with_copy.replace(
            &dedupe_copy.display().to_string(),
            &trap.display().to_string(),
        ),
    );
    live.wait_for_log("reload failed:", 3);
    assert!(live.log().contains("init failed"), "{}", live.log());
    // Keyed differently, dedupe's state would no longer fit: refused.
    write_atomically(
        &toml,
        &original.replace("key_by = \"order_id\"", "key_by = \"user_id\""),
    );
    live.wait_for_log("reload failed:", 4);
    assert!(live.log().contains("`key_by` changed"), "{}", live.log());

    // The module comes back (a copy: the stage changes, its state must not): swapped, state kept.
    append(&orders, &second);
    std::fs::copy(modules().join("dedupe.wasm"), &dedupe_copy).unwrap();
    write_atomically(&toml, &with_copy);
    live.wait_for_log("swapped operator `dedupe`", 1);
    let first_two = format!("{first}{second}");
    wait_until(
        "the second part",
        || line_count(&scores) >= accepted(&first_two),
        || live.log(),
    );

    // A parameter change: orders after it are flagged at the new threshold.
    write_atomically(
        &toml,
        &with_copy.replace("flag_threshold = 50", "flag_threshold = 30"),
    );
    live.wait_for_log("swapped operator `score`", 1);
    // Duplicates of orders seen before both swaps, which dedupe's carried state must reject.
    let replays: String = first
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["order_id"].as_i64().is_some_and(|id| id <= 30))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let third = format!("{replays}{third}");
    append(&orders, &third);
    let everything = format!("{first_two}{third}");
    wait_until(
        "the third part",
        || line_count(&scores) >= accepted(&everything),
        || live.log(),
    );

    let status = live.terminate();
    assert!(status.success(), "exit status {status}");
    let mut expected = oracle(&everything);
    let before_change: std::collections::HashSet<i64> = oracle(&first_two)["scores"]
        .iter()
        .map(|s| s["order_id"].as_i64().unwrap())
        .collect();
    for score in expected.get_mut("scores").unwrap() {
        if !before_change.contains(&score["order_id"].as_i64().unwrap()) {
            score["flagged"] = Value::Bool(score["score"].as_i64().unwrap() >= 30);
        }
    }
    assert!(
        expected["rejected"]
            .iter()
            .any(|r| r["reason"] == "duplicate")
    );
    for name in EXACT_SINKS {
        assert_same_set(name, sink(&out, name), expected[name].clone());
    }
}

#[test]
fn sigterm_drains_what_was_read_and_exits_zero() {
    modules();
    let scenario = Scenario::new();
    let all = input(&scenario, "3000", "8");
    let orders = scenario.path("orders.jsonl");
    std::fs::write(&orders, "").unwrap();
    let toml = scenario.path("pipeline.toml");
    std::fs::write(&toml, pipeline_copy()).unwrap();
    let out = scenario.path("out");
    let live = Live::start(
        &[toml.to_str().unwrap()],
        &[
            ("FOLLOW", "true".as_ref()),
            ("ORDERS", orders.as_os_str()),
            ("OUT_DIR", out.as_os_str()),
        ],
        scenario.path("stderr.log"),
    );
    // Written in pieces, the last line without its line break yet.
    let (head, tail) = all.split_at(all.len() / 2);
    append(&orders, head);
    let complete = &all[..all.rfind('\n').unwrap() + 1];
    let last = &all[complete.len()..];
    append(&orders, &tail[..tail.len() - last.len()]);
    wait_until(
        "all records",
        || line_count(&out.join("scores.jsonl")) >= oracle(complete)["scores"].len(),
        || live.log(),
    );
    // Sinks are flushed while running, not only at the end.
    assert!(line_count(&out.join("rejected.jsonl")) > 0);
    let status = live.terminate();
    assert!(status.success(), "exit status {status}");
    let expected = oracle(complete);
    for name in EXACT_SINKS {
        assert_same_set(name, sink(&out, name), expected[name].clone());
    }
    // Windows the watermark had not reached when the run stopped are not emitted.
    assert!(sink(&out, "sales_per_sku").len() < expected["sales_per_sku"].len());
}

/// A module that describes itself as `dedupe` does but traps in `init`.
fn trap_in_init() -> String {
    let describe = flumen_sdk::abi::Describe {
        abi_version: flumen_sdk::abi::ABI_VERSION,
        kind: flumen_sdk::abi::OperatorKind::Process,
        input_type: "ValidOrder".into(),
        output_type: "ValidOrder".into(),
        side_outputs: vec![flumen_sdk::abi::SideOutput {
            name: "rejected".into(),
            type_name: "Reject".into(),
            shape: None,
        }],
        state_type: Some("ValueState<bool>".into()),
        input_shape: None,
        output_shape: None,
    };
    crate::sandbox::fake_module(&describe, "", "unreachable")
}

/// `GET /status` and `POST /reload` on the admin endpoint, over plain HTTP on loopback.
#[test]
fn the_admin_endpoint_reports_and_reloads() {
    modules();
    let scenario = Scenario::new();
    let orders = scenario.path("orders.jsonl");
    std::fs::write(&orders, input(&scenario, "500", "3")).unwrap();
    let toml = scenario.path("pipeline.toml");
    std::fs::write(&toml, pipeline_copy()).unwrap();
    let address = crate::support::free_loopback_address();
    let out = scenario.path("out");
    let live = Live::start(
        &[toml.to_str().unwrap(), "--admin", &address],
        &[
            ("FOLLOW", "true".as_ref()),
            ("ORDERS", orders.as_os_str()),
            ("OUT_DIR", out.as_os_str()),
        ],
        scenario.path("stderr.log"),
    );
    let request = |method: &str, path: &str| -> String {
        let (head, body) = crate::support::http(&address, method, path);
        format!("{head}\r\n\r\n{body}")
    };
    live.wait_for_log("admin endpoint", 1);
    wait_until(
        "all records",
        || {
            let status = request("GET", "/status");
            status.contains("\"name\": \"score\"")
                && status.contains("\"records_in\": ")
                && line_count(&out.join("scores.jsonl")) > 0
        },
        || live.log(),
    );
    let status = request("GET", "/status");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let body: Value =
        serde_json::from_str(&status[status.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let score = body["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "score")
        .unwrap();
    assert_eq!(score["module_hash"].as_str().unwrap().len(), 64);
    let reload = request("POST", "/reload");
    assert!(reload.starts_with("HTTP/1.1 202"), "{reload}");
    live.wait_for_log("reloaded: nothing changed", 1);
    assert!(request("GET", "/status").contains("\"ok\": true"));
    assert!(request("GET", "/nope").starts_with("HTTP/1.1 404"));
    assert!(live.terminate().success());
}

/// A stage and a sink added by a reload are wired in (they see what arrives after), then removed
/// again, while the rest of the pipeline goes on untouched.
#[test]
fn stages_and_sinks_are_added_and_removed_live() {
    modules();
    let scenario = Scenario::new();
    let Following {
        live,
        parts: [first, second, third],
        orders,
        toml,
        original,
        out,
        scores,
    } = follow_reference(&scenario, "1200", "6");
    let extra = format!(
        "{original}\n[operators.score_copy]\nmodule = \"{}/score.wasm\"\ninputs = [\"stock\"]\n\
         key_by = \"user_id\"\nparams = {{ flag_threshold = 10 }}\n\n[sinks.copies]\ntype = \"file\"\n\
         path = \"{}\"\ninputs = [\"score_copy\"]\n",
        modules().display(),
        out.join("copies.jsonl").display()
    );
    write_atomically(&toml, &extra);
    live.wait_for_log("added operator `score_copy`", 1);
    append(&orders, &second);
    let first_two = format!("{first}{second}");
    wait_until(
        "the second part",
        || line_count(&scores) >= accepted(&first_two),
        || live.log(),
    );
    write_atomically(&toml, &original);
    live.wait_for_log("removed operator `score_copy`", 1);
    append(&orders, &third);
    let everything = format!("{first_two}{third}");
    ends_exact(live, &out, &scores, &everything);
    // The copy saw exactly the orders accepted while it was wired in: the second part's.
    let copies = line_count(&out.join("copies.jsonl"));
    assert_eq!(copies, accepted(&first_two) - accepted(&first));
}

/// Waits until every order of `everything` is scored, stops the pipeline, and checks that each
/// non-window sink holds exactly what the spec says for `everything`: nothing lost or repeated.
fn ends_exact(live: Live, out: &Path, scores: &Path, everything: &str) {
    wait_until(
        "the last part",
        || line_count(scores) >= accepted(everything),
        || live.log(),
    );
    assert!(live.terminate().success());
    let expected = oracle(everything);
    for name in EXACT_SINKS {
        assert_same_set(name, sink(out, name), expected[name].clone());
    }
}

/// A reload that changes only a source's settings keeps its place in the file, and a sink renamed
/// but writing the same file keeps it open: under appends, no record is read twice, none is lost,
/// no output is truncated.
#[test]
fn a_source_setting_reload_under_appends_neither_repeats_nor_loses() {
    modules();
    let scenario = Scenario::new();
    let Following {
        live,
        parts: [first, second, third],
        orders,
        toml,
        original,
        out,
        scores,
    } = follow_reference(&scenario, "6000", "29");
    let retuned = original.replace(
        "watermark_delay_ms = 5000",
        "watermark_delay_ms = 5000\nbatch_size = 7\nmax_record_bytes = 65536",
    );
    write_atomically(&toml, &retuned);
    live.wait_for_log("reloaded:", 1);
    append(&orders, &second);
    let first_two = format!("{first}{second}");
    wait_until(
        "the second part",
        || line_count(&scores) >= accepted(&first_two),
        || live.log(),
    );
    write_atomically(
        &toml,
        &retuned.replace("[sinks.scores]", "[sinks.risk_scores]"),
    );
    live.wait_for_log("reloaded:", 2);
    append(&orders, &third);
    ends_exact(live, &out, &scores, &format!("{first_two}{third}"));
}

/// The instance pool is sized from the pipeline and `--parallelism`: at 43 partitions per stage
/// (over 300 instances) the reference pipeline starts, and a reload, which prepares a second set
/// while the first runs, swaps a stage.
#[test]
fn the_instance_pool_has_room_for_high_parallelism_and_a_reload() {
    modules();
    let scenario = Scenario::new();
    let orders = scenario.path("orders.jsonl");
    std::fs::write(&orders, input(&scenario, "300", "5")).unwrap();
    let toml = scenario.path("pipeline.toml");
    let original = pipeline_copy();
    std::fs::write(&toml, &original).unwrap();
    let out = scenario.path("out");
    let live = Live::start(
        &[toml.to_str().unwrap(), "--watch"],
        &[
            ("FOLLOW", "true".as_ref()),
            ("ORDERS", orders.as_os_str()),
            ("OUT_DIR", out.as_os_str()),
            ("FLUMEN_PARALLELISM", "43".as_ref()),
        ],
        scenario.path("stderr.log"),
    );
    let scores = out.join("scores.jsonl");
    wait_until("the scores", || line_count(&scores) > 0, || live.log());
    write_atomically(
        &toml,
        &original.replace("flag_threshold = 50", "flag_threshold = 30"),
    );
    live.wait_for_log("swapped operator `score`", 1);
    assert!(!live.log().contains("no room"), "{}", live.log());
    assert!(live.terminate().success());
}
