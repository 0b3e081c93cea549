//! The `validate` stage of the reference pipeline against the spec, on generated data plus a
//! line for every reject reason and every kind of malformed input. The expected outputs come from
//! an oracle written here from the spec alone.

use crate::orders_pipeline::reject_reason;
use crate::support::{
    Scenario, assert_same_set, flumen, modules, read_jsonl, sorted, text, workspace,
};
use serde_json::{Map, Value, json};

/// What the spec says becomes of one input line.
enum Expected {
    Skipped,
    Malformed,
    Rejected(Value),
    Valid(Value),
}

const INTEGER_FIELDS: [&str; 5] = ["order_id", "user_id", "qty", "price_cents", "ts"];
const STRING_FIELDS: [&str; 2] = ["sku", "country"];

fn oracle(line: &str) -> Expected {
    if line.trim().is_empty() {
        return Expected::Skipped;
    }
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return Expected::Malformed;
    };
    let int = |name: &str| {
        fields
            .get(name)
            .and_then(|v| if v.is_i64() { v.as_i64() } else { None })
    };
    let string = |name: &str| fields.get(name).and_then(Value::as_str);
    if INTEGER_FIELDS.iter().any(|f| int(f).is_none())
        || STRING_FIELDS.iter().any(|f| string(f).is_none())
    {
        return Expected::Malformed;
    }
    let (qty, price) = (int("qty").unwrap(), int("price_cents").unwrap());
    let reason = reject_reason(
        qty,
        price,
        string("sku").unwrap(),
        string("country").unwrap(),
    );
    let order_id = int("order_id").unwrap();
    match reason {
        Some(reason) => Expected::Rejected(json!({"order_id": order_id, "reason": reason})),
        None => {
            let mut valid = Map::new();
            for f in INTEGER_FIELDS.iter().chain(&STRING_FIELDS) {
                valid.insert(f.to_string(), fields[*f].clone());
            }
            valid.insert("amount_cents".into(), json!(qty * price));
            Expected::Valid(Value::Object(valid))
        }
    }
}

/// One line for each reject reason and each kind of malformed line the spec names.
const EDGE_CASES: &str = r#"{"order_id": 900001, "user_id": 1, "sku": "SKU-0001", "qty": 0, "price_cents": 100, "country": "FR", "ts": 1700000000000}
{"order_id": 900002, "user_id": 1, "sku": "SKU-0001", "qty": -3, "price_cents": 100, "country": "FR", "ts": 1700000000000}
{"order_id": 900003, "user_id": 1, "sku": "SKU-0001", "qty": 101, "price_cents": 100, "country": "FR", "ts": 1700000000000}
{"order_id": 900004, "user_id": 1, "sku": "SKU-0001", "qty": 100, "price_cents": 0, "country": "FR", "ts": 1700000000000}
{"order_id": 900005, "user_id": 1, "sku": "SKU-0001", "qty": 1, "price_cents": 10000001, "country": "FR", "ts": 1700000000000}
{"order_id": 900006, "user_id": 1, "sku": "SKU-001", "qty": 1, "price_cents": 10000000, "country": "FR", "ts": 1700000000000}
{"order_id": 900007, "user_id": 1, "sku": "SKU-0001x", "qty": 1, "price_cents": 1, "country": "FR", "ts": 1700000000000}
{"order_id": 900008, "user_id": 1, "sku": "SKU-0001", "qty": 1, "price_cents": 1, "country": "Fr", "ts": 1700000000000}
{"order_id": 900009, "user_id": 1, "sku": "SKU-0001", "qty": 1, "price_cents": 1, "country": "FRA", "ts": 1700000000000}
{"order_id": 900010, "user_id": 1, "sku": "bad", "qty": 0, "price_cents": 0, "country": "x", "ts": 1700000000000}
{"order_id": 900011, "user_id": 1, "sku": "SKU-9999", "qty": 100, "price_cents": 10000000, "country": "ZZ", "ts": -5, "extra": {"nested": [1, 2]}}
{"order_id": 900012, "user_id": 1, "sku": "SKU-0001", "qty": "2", "price_cents": 1, "country": "FR", "ts": 1700000000000}
{"order_id": 900013, "user_id": 1, "sku": "SKU-0001", "qty": 2.5, "price_cents": 1, "country": "FR", "ts": 1700000000000}
{"order_id": 900014, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR"}
{"order_id": 900015, "user_id": 1, "sku": 17, "qty": 2, "price_cents": 1, "country": "FR", "ts": 1}
{"order_id": 900016, "user_id": null, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR", "ts": 1}
{"order_id": 900017, "user_id": 1, "sku": "SKU-0001", "qty": true, "price_cents": 1, "country": "FR", "ts": 1}
[900018, 1, "SKU-0001", 2, 1, "FR", 1]
"just a string"
12345
null
{}
not json
{"order_id": 900019, "user_id": 1,
   
{"order_id": 900020, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR", "ts": 1} trailing
{"order_id": 900021, "user_id": 1, "sku": "SKU-0001", "qty": 2.0, "price_cents": 1, "country": "FR", "ts": 1}
{"order_id": 900022, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR", "ts": 1}
{"ts":5,"country":"DE","price_cents":9,"qty":1,"sku":"SKU-0003","user_id":-9223372036854775808,"order_id":9223372036854775807}
 {	"order_id" :900025 , "user_id": 1, "sku": "SKU-\u003000\u00301", "note": "a\/b", "qty": 2, "price_cents": 1, "country": "F\u0052", "ts": 1 }
{"order_id": 900026, "user_id": 1, "sku": "SKU-0001", "q\u0074y": 2, "price_cents": 1, "country": "FR", "ts": 1}
{"order_id": 900027, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "\u00c9\ud83d\ude00", "ts": 1}
{"order_id": 900028, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR", "ts": -0}
{"order_id": 900029, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1, "country": "FR", "ts": 9223372036854775808}
{"order_id": 900030, "user_id": 1, "sku": "SKU-0001", "qty": 2, "price_cents": 1e2, "country": "FR", "ts": 1}
{"order_id": 900031, "user_id": 1, "sku": "SKU-\ud800", "qty": 2, "price_cents": 1, "country": "FR", "ts": 1}
"#;

#[test]
fn validate_matches_the_spec_on_generated_and_edge_case_orders() {
    modules();
    let scenario = Scenario::new();
    let generated = scenario.path("generated.jsonl");
    let status = flumen()
        .args(["gen", "orders", "--count", "6000", "--seed", "11", "--out"])
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success());
    let mut input = std::fs::read_to_string(&generated).unwrap();
    input.push_str(EDGE_CASES);
    input.push_str("{\"order_id\": 900023, \"user_id\": 1, \"sku\": \"SKU-0002\", \"qty\": 3, \"price_cents\": 7, \"country\": \"DE\", \"ts\": 2}\r\n");
    input.push_str("{\"order_id\": 900024, \"user_id\": 1, \"sku\": \"SKU-0002\", \"qty\": 3, \"price_cents\": 7, \"country\": \"DE\", \"ts\": 3}");
    scenario.write("orders.jsonl", &input);
    let out = scenario.path("out");
    let output = scenario.run(&validate_only(
        "type = \"file\"\npath = \"{dir}/orders.jsonl\"",
        "out",
    ));

    let (mut rejected, mut malformed, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    for line in input.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match oracle(line) {
            Expected::Skipped => {}
            Expected::Malformed => malformed.push(Value::String(line.to_string())),
            Expected::Rejected(r) => rejected.push(r),
            Expected::Valid(v) => valid.push(v),
        }
    }
    for reason in ["bad_qty", "bad_price", "bad_sku", "bad_country"] {
        assert!(
            rejected.iter().any(|r| r["reason"] == reason),
            "no {reason} in the test data"
        );
    }
    assert!(
        malformed.len() > 30,
        "too few malformed lines: {}",
        malformed.len()
    );

    let dead = read_jsonl(&out.join("dead.jsonl"));
    assert!(
        dead.iter()
            .all(|d| d["stage"] == "validate" && d["error"].is_string())
    );
    let dead_raw: Vec<Value> = dead.iter().map(|d| d["raw"].clone()).collect();
    assert_same_set("dead letters", dead_raw, malformed);
    assert_same_set(
        "rejected",
        read_jsonl(&out.join("rejected.jsonl")),
        rejected,
    );
    assert_same_set("valid", read_jsonl(&out.join("valid.jsonl")), valid);

    let summary = text(&output.stderr);
    let validate_line = summary.lines().find(|l| l.starts_with("validate")).unwrap();
    assert!(validate_line.contains("operator"), "{summary}");
}

/// A pipeline of `validate` alone, reading `source`, writing to `{dir}/out/`.
fn validate_only(source: &str, out: &str) -> String {
    format!(
        r#"
[pipeline]
dead_letter = "dead"
[sources.orders]
{source}
[operators.validate]
module = "{{modules}}/validate.wasm"
inputs = ["orders"]
[sinks.valid]
type = "file"
path = "{{dir}}/{out}/valid.jsonl"
inputs = ["validate"]
[sinks.rejected]
type = "file"
path = "{{dir}}/{out}/rejected.jsonl"
inputs = ["validate.rejected"]
[sinks.dead]
type = "file"
path = "{{dir}}/{out}/dead.jsonl"
"#
    )
}

/// A generator source gives the same records as `flumen gen` writes, and results do not depend
/// on the batch size.
#[test]
fn generator_source_and_batch_size_do_not_change_results() {
    let scenario = Scenario::new();
    let generated = scenario.path("gen.jsonl");
    let status = flumen()
        .args(["gen", "orders", "--count", "3000", "--seed", "5", "--out"])
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success());
    scenario.run(&validate_only(
        &format!(
            "type = \"file\"\npath = \"{}\"\nbatch_size = 7",
            generated.display()
        ),
        "a",
    ));
    scenario.run(&validate_only(
        "type = \"generator\"\ncount = 3000\nseed = 5",
        "b",
    ));
    for file in ["valid.jsonl", "rejected.jsonl", "dead.jsonl"] {
        let a = scenario.jsonl(&format!("a/{file}"));
        assert!(!a.is_empty(), "{file} is empty");
        assert_eq!(
            sorted(a),
            sorted(scenario.jsonl(&format!("b/{file}"))),
            "{file}"
        );
    }
}

#[test]
fn the_demo_pipeline_validates_from_the_repository_root() {
    modules();
    let output = flumen()
        .args(["validate", "pipelines/orders.toml"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("ok"));
    assert!(workspace().join("pipelines/sample/orders.jsonl").exists());
}
