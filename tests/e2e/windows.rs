//! Window rules beyond the reference pipeline: allowed lateness with late firings, and the
//! watermark moving once per source batch.

use crate::support::{Scenario, assert_same_set, modules};
use serde_json::json;

fn order(id: i64, ts: i64) -> String {
    json!({"order_id": id, "user_id": 1, "sku": "SKU-0001", "qty": 1, "price_cents": 10,
        "country": "FR", "ts": ts, "amount_cents": 10})
    .to_string()
}

#[test]
fn allowed_lateness_refires_windows_until_it_runs_out() {
    modules();
    let scenario = Scenario::new();
    let lines: Vec<String> = [(1, 500), (2, 1500), (3, 600), (4, 4000), (5, 700)]
        .iter()
        .map(|&(id, ts)| order(id, ts))
        .collect();
    scenario.write("orders.jsonl", lines.join("\n"));
    scenario.run(
        r#"
[sources.orders]
type = "file"
path = "{dir}/orders.jsonl"
batch_size = 1
event_time = "ts"
[operators.sales]
module = "{modules}/sales_per_sku.wasm"
inputs = ["orders"]
key_by = "sku"
window = { type = "tumbling", size_ms = 1000 }
allowed_lateness_ms = 2000
[sinks.results]
type = "file"
path = "{dir}/sales.jsonl"
inputs = ["sales"]
[sinks.late]
type = "file"
path = "{dir}/late.jsonl"
inputs = ["sales.late"]
"#,
    );
    let window = |start: i64, orders: i64| {
        json!({"sku": "SKU-0001", "window_start": start, "window_end": start + 1000,
            "orders": orders, "units": orders, "revenue_cents": 10 * orders})
    };
    // [0, 1000) fires at watermark 1500, fires again with the record at 600 (within lateness),
    // and is gone by watermark 4000, when the record at 700 is late.
    assert_same_set(
        "sales",
        scenario.jsonl("sales.jsonl"),
        vec![window(0, 1), window(0, 2), window(1000, 1), window(4000, 1)],
    );
    let late = scenario.jsonl("late.jsonl");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["stage"], "sales");
    assert_eq!(late[0]["record"]["order_id"], 5);
}

#[test]
fn the_watermark_moves_once_per_source_batch() {
    modules();
    let scenario = Scenario::new();
    // One batch: the record at 100 arrives after one at 10_000 but in the same batch, so the
    // watermark has not passed its window yet; in the next batch the record at 200 is late.
    let lines = [order(1, 10_000), order(2, 100), order(3, 200)];
    scenario.write("orders.jsonl", lines.join("\n"));
    scenario.run(
        r#"
[sources.orders]
type = "file"
path = "{dir}/orders.jsonl"
batch_size = 2
event_time = "ts"
watermark_delay_ms = 5000
[operators.sales]
module = "{modules}/sales_per_sku.wasm"
inputs = ["orders"]
key_by = "sku"
window = { type = "tumbling", size_ms = 1000 }
[sinks.results]
type = "file"
path = "{dir}/sales.jsonl"
inputs = ["sales"]
[sinks.late]
type = "file"
path = "{dir}/late.jsonl"
inputs = ["sales.late"]
"#,
    );
    let starts: Vec<i64> = scenario
        .jsonl("sales.jsonl")
        .iter()
        .map(|w| w["window_start"].as_i64().unwrap())
        .collect();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts.contains(&0) && starts.contains(&10_000));
    let late = scenario.jsonl("late.jsonl");
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["record"]["order_id"], 3);
}

#[test]
fn a_malformed_line_does_not_move_event_time() {
    modules();
    let scenario = Scenario::new();
    // The second line is not an order (qty is a string) but its ts is far ahead: were it
    // counted, the watermark would pass the third record's window and make it late.
    let malformed = order(2, 9_000_000).replace("\"qty\":1", "\"qty\":\"1\"");
    assert!(malformed.contains("\"qty\":\"1\""));
    let lines = [order(1, 1000), malformed, order(3, 1500)];
    scenario.write("orders.jsonl", lines.join("\n"));
    scenario.run(
        r#"
[pipeline]
dead_letter = "dead"
[sources.orders]
type = "file"
path = "{dir}/orders.jsonl"
batch_size = 1
event_time = "ts"
[operators.sales]
module = "{modules}/sales_per_sku.wasm"
inputs = ["orders"]
key_by = "sku"
window = { type = "tumbling", size_ms = 1000 }
[sinks.results]
type = "file"
path = "{dir}/sales.jsonl"
inputs = ["sales"]
[sinks.late]
type = "file"
path = "{dir}/late.jsonl"
inputs = ["sales.late"]
[sinks.dead]
type = "file"
path = "{dir}/dead.jsonl"
"#,
    );
    assert_eq!(scenario.jsonl("dead.jsonl").len(), 1);
    assert!(scenario.jsonl("late.jsonl").is_empty());
    let windows = scenario.jsonl("sales.jsonl");
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0]["orders"], 2);
}
