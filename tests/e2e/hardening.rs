//! Attacks and accidents that must cost exactly what they touch: extreme event times, hostile
//! module replies, a module whose types do not fit its edge, a map that answers nothing, forged
//! output lines, and hostile requests to the admin endpoint. Each one: no crash, no hang,
//! nothing lost or repeated, and a message that says what was wrong.

use crate::orders_pipeline::run_with_summary;
use crate::sandbox::pipeline_with;
use crate::support::{
    Live, Scenario, assert_accounted, modules, read_jsonl, text, wait_until, workspace,
};
use flumen_sdk::abi::{ABI_VERSION, BINCODE, Describe, OperatorKind, SideOutput};
use serde_json::Value;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A module whose `describe` answers `describe` (raw bytes) and whose `init` answers `init`
/// (raw bytes), in a memory of `pages` pages; `process` answers nothing.
fn raw_module(describe: &[u8], init: &[u8], pages: u32) -> String {
    let data = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("\\{b:02x}")).collect() };
    let (describe_at, init_at) = (1024u64, 8192u64);
    format!(
        r#"(module
  (memory (export "memory") {pages})
  (data (i32.const {describe_at}) "{}")
  (data (i32.const {init_at}) "{}")
  (func (export "flumen_describe") (result i64) (i64.const {}))
  (func (export "flumen_input") (param i32) (result i32) (i32.const 16384))
  (func (export "flumen_init") (param i32) (result i64) (i64.const {}))
  (func (export "flumen_process") (param i32) (result i64) (i64.const 0))
  (func (export "flumen_to_json") (param i32) (result i64) (i64.const 0)))"#,
        data(describe),
        data(init),
        (describe_at << 32) | describe.len() as u64,
        (init_at << 32) | init.len() as u64,
    )
}

fn describe_of(kind: OperatorKind, input: &str, output: &str) -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind,
        input_type: input.into(),
        output_type: output.into(),
        side_outputs: Vec::new(),
        state_type: None,
        input_shape: None,
        output_shape: None,
    }
}

fn encode(describe: &Describe) -> Vec<u8> {
    bincode::serde::encode_to_vec(describe, BINCODE).unwrap()
}

/// `Ok(())` as `init` answers it.
const INIT_OK: [u8; 4] = [0, 0, 0, 0];

#[test]
fn hostile_describe_and_init_replies_are_refused_naming_the_module() {
    let scenario = Scenario::new();
    // A string claiming 2^63 or 2^45 bytes, where a host decoding blindly panics or aborts.
    let huge_name = |len: u64| {
        let mut bytes = ABI_VERSION.to_le_bytes().to_vec();
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes
    };
    let many_sides = Describe {
        side_outputs: (0..100)
            .map(|i| SideOutput {
                name: format!("s{i}"),
                type_name: "T".into(),
                shape: None,
            })
            .collect(),
        ..describe_of(OperatorKind::Map, "T", "T")
    };
    let good = encode(&describe_of(OperatorKind::Map, "T", "T"));
    let mut huge_error = 1u32.to_le_bytes().to_vec();
    huge_error.extend_from_slice(&(1u64 << 63).to_le_bytes());
    let cases: [(&str, String, &str); 6] = [
        (
            "name63.wasm",
            raw_module(&huge_name(1 << 63), &INIT_OK, 1),
            "describe returned garbage: a length in it is larger than the whole reply",
        ),
        (
            "name45.wasm",
            raw_module(&huge_name(1 << 45), &INIT_OK, 1),
            "describe returned garbage",
        ),
        (
            "sides.wasm",
            raw_module(&encode(&many_sides), &INIT_OK, 1),
            "declares 100 side outputs, more than the 64 allowed",
        ),
        (
            "init63.wasm",
            raw_module(&good, &huge_error, 1),
            "init returned garbage: a length in it is larger than the whole reply",
        ),
        (
            "bigreply.wasm",
            // A reply of 2 MiB: larger than any control reply may be.
            raw_module(&good, &vec![0; 2 << 20], 48),
            "more than the 1048576 a control reply may have",
        ),
        (
            "leftover.wasm",
            raw_module(&good, &[0, 0, 0, 0, 7, 7], 1),
            "init returned garbage: 2 bytes left over",
        ),
    ];
    for (name, wat, expected) in cases {
        let path = scenario.write(name, wat::parse_str(&wat).unwrap());
        let errors = scenario.validate_errors(&pipeline_with(&path.display().to_string()));
        assert!(errors.contains(name), "{name}: {errors}");
        assert!(
            errors.contains(expected),
            "{name}: expected {expected:?} in {errors}"
        );
    }
}

/// A hostile module saved over a running stage's module: the reload fails with one line, the
/// pipeline goes on, and the reloader still takes the next good version.
#[test]
fn a_hostile_module_saved_live_fails_its_reload_and_the_reloader_goes_on() {
    let scenario = Scenario::new();
    let module = scenario.path("probe.wasm");
    std::fs::copy(modules().join("misbehave.wasm"), &module).unwrap();
    let probes = scenario.path("probes.jsonl");
    std::fs::write(&probes, "{\"id\": 1, \"action\": \"ok\"}\n").unwrap();
    let toml = scenario.pipeline(&pipeline_with(&module.display().to_string()).replace(
        "path = \"{dir}/probes.jsonl\"",
        "path = \"{dir}/probes.jsonl\"\nfollow = true",
    ));
    let live = Live::start(
        &[toml.to_str().unwrap(), "--watch"],
        &[],
        scenario.path("stderr.log"),
    );
    let out = scenario.path("out.jsonl");
    wait_until(
        "the first probe",
        || crate::support::line_count(&out) == 1,
        || live.log(),
    );
    let hostile = raw_module(
        &{
            let mut bytes = ABI_VERSION.to_le_bytes().to_vec();
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&(1u64 << 63).to_le_bytes());
            bytes
        },
        &INIT_OK,
        1,
    );
    std::fs::write(&module, wat::parse_str(&hostile).unwrap()).unwrap();
    live.wait_for_log("reload failed:", 1);
    assert!(
        live.log().contains("describe returned garbage"),
        "{}",
        live.log()
    );
    crate::support::append(&probes, "{\"id\": 2, \"action\": \"ok\"}\n");
    wait_until(
        "the second probe",
        || crate::support::line_count(&out) == 2,
        || live.log(),
    );
    // The reloader is alive: the good module back is a reload that succeeds.
    std::fs::copy(modules().join("misbehave.wasm"), &module).unwrap();
    live.wait_for_log("reloaded:", 1);
    crate::support::append(&probes, "{\"id\": 3, \"action\": \"ok\"}\n");
    wait_until(
        "the third probe",
        || crate::support::line_count(&out) == 3,
        || live.log(),
    );
    assert!(live.terminate().success());
}

/// Orders at the edges of time: the first one 10^15 ms before the epoch, then the sample, then
/// orders at 10^15 and 10^18 ms and at the ends of i64. The run ends promptly; records whose
/// windows cannot be represented are dead letters saying so; every record is accounted for.
#[test]
fn extreme_event_times_cost_only_their_records() {
    modules();
    let scenario = Scenario::new();
    let order = |id: i64, ts: i128| {
        format!(
            "{{\"order_id\": {id}, \"user_id\": 7, \"sku\": \"SKU-0500\", \"qty\": 1, \"price_cents\": 100, \"country\": \"FR\", \"ts\": {ts}}}\n"
        )
    };
    let sample =
        std::fs::read_to_string(workspace().join("pipelines/sample/orders.jsonl")).unwrap();
    let mut input = order(900_001, -1_000_000_000_000_000);
    input.push_str(&sample);
    for (id, ts) in [
        (900_002, 1_000_000_000_000_000),
        (900_003, 1_000_000_000_000_000_000),
        (900_004, i64::MAX as i128),
        (900_005, i64::MIN as i128),
    ] {
        input.push_str(&order(id, ts));
    }
    let orders = scenario.write("orders.jsonl", &input);
    let out = scenario.path("out");
    let started = Instant::now();
    let summary = run_with_summary(&orders, &out, &[], Duration::from_secs(120));
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_accounted(&summary);
    let dead = read_jsonl(&out.join("dead_letter.jsonl"));
    let out_of_range: Vec<&Value> = dead
        .iter()
        .filter(|d| {
            d["error"]
                .as_str()
                .is_some_and(|e| e.contains("out of range"))
        })
        .collect();
    assert!(
        out_of_range
            .iter()
            .any(|d| d["raw"].as_str().is_some_and(|r| r.contains("900004"))),
        "{dead:#?}"
    );
    // The windows of the 10^18 order exist and fired at the end.
    let sales = read_jsonl(&out.join("sales_per_sku.jsonl"));
    assert!(
        sales.iter().any(|s| s["window_start"]
            .as_i64()
            .is_some_and(|w| w > 999_999_999_999_999_999 - 60_000)),
        "{sales:?}"
    );
}

/// A module whose input struct lists the fields of what it reads in another order passes
/// nothing: `flumen validate` refuses it, naming the stage and the field. The same fields under
/// another type name are fine.
#[test]
fn a_module_with_reordered_fields_is_refused_by_validate() {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct ValidOrder {
        order_id: i64,
        user_id: i64,
        sku: String,
        qty: i64,
        price_cents: i64,
        country: String,
        ts: i64,
        amount_cents: i64,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Reordered {
        user_id: i64,
        order_id: i64,
        sku: String,
        qty: i64,
        price_cents: i64,
        country: String,
        ts: i64,
        amount_cents: i64,
    }
    let scenario = Scenario::new();
    let module = |name: &str, input_type: &str, shape| {
        let describe = Describe {
            input_shape: shape,
            ..describe_of(OperatorKind::Map, input_type, "Out")
        };
        let wat = raw_module(&encode(&describe), &INIT_OK, 1);
        scenario
            .write(name, wat::parse_str(&wat).unwrap())
            .display()
            .to_string()
    };
    let pipeline = |module: &str| {
        format!(
            r#"
[sources.orders]
type = "file"
path = "{{dir}}/orders.jsonl"
[operators.validate]
module = "{}/validate.wasm"
inputs = ["orders"]
[operators.probe]
module = "{module}"
inputs = ["validate"]
"#,
            modules().display()
        )
    };
    let reordered = module(
        "reordered.wasm",
        "ValidOrder",
        flumen_sdk::shape::of::<Reordered>(),
    );
    let errors = scenario.validate_errors(&pipeline(&reordered));
    assert!(errors.contains("`operators.probe.inputs`"), "{errors}");
    assert!(errors.contains("`probe` takes `ValidOrder`"), "{errors}");
    assert!(
        errors.contains(
            "at `.order_id` it is written as `field 1 `order_id`` but read as `field 1 `user_id``"
        ),
        "{errors}"
    );
    // Same shape, another name: accepted.
    let renamed = module(
        "renamed.wasm",
        "MyOrder",
        flumen_sdk::shape::of::<ValidOrder>(),
    );
    let pipeline_file = scenario.pipeline(&pipeline(&renamed));
    let output = scenario.flumen(&["validate", pipeline_file.to_str().unwrap()], &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// A `map` whose replies hold nothing: every record is a dead letter saying why (none is lost
/// silently), and the summary still adds up.
#[test]
fn a_map_that_answers_nothing_sends_every_record_to_the_dead_letters() {
    let scenario = Scenario::new();
    let good = encode(&describe_of(OperatorKind::Map, "Value", "Value"));
    let module = scenario.write(
        "silent.wasm",
        wat::parse_str(raw_module(&good, &INIT_OK, 1)).unwrap(),
    );
    let lines: String = (0..50).map(|i| format!("{{\"n\": {i}}}\n")).collect();
    scenario.write("probes.jsonl", &lines);
    let pipeline = scenario.pipeline(&pipeline_with(&module.display().to_string()));
    scenario.run_accounted(&pipeline);
    let dead = scenario.jsonl("dead.jsonl");
    assert_eq!(dead.len(), 50);
    assert!(dead.iter().all(|d| {
        d["error"]
            .as_str()
            .unwrap()
            .contains("a map emits one record")
    }));
}

/// A module whose `process` answers, whatever its input, a record on port 0 for input `i` with
/// value `values[i]` (output-entry framing: tag, port, index, ts, keys, value).
fn replying_module(describe: &Describe, values: &[&[u8]]) -> String {
    let entry = |index: u32, value: &[u8]| {
        let mut e = vec![flumen_sdk::abi::TAG_RECORD];
        e.extend_from_slice(&0u16.to_le_bytes());
        e.extend_from_slice(&index.to_le_bytes());
        e.extend_from_slice(&0i64.to_le_bytes());
        e.push(0);
        e.extend_from_slice(&(value.len() as u32).to_le_bytes());
        e.extend_from_slice(value);
        e
    };
    let reply: Vec<u8> = (0u32..)
        .zip(values)
        .flat_map(|(i, value)| entry(i, value))
        .collect();
    let data: String = reply.iter().map(|b| format!("\\{b:02x}")).collect();
    raw_module(&encode(describe), &INIT_OK, 1).replace(
        "(func (export \"flumen_process\") (param i32) (result i64) (i64.const 0))",
        &format!(
            "(data (i32.const 12288) \"{data}\")\n  (func (export \"flumen_process\") (param i32) (result i64) (i64.const {}))",
            (12288u64 << 32) | reply.len() as u64
        ),
    )
}

/// Runs `values.len()` probes through a module answering `values`, with `more` added to the
/// pipeline; returns the sink's text and each dead letter's stage and error.
fn run_replies(
    describe: &Describe,
    values: &[&[u8]],
    more: &str,
) -> (String, Vec<(String, String)>) {
    let scenario = Scenario::new();
    let wat = replying_module(describe, values);
    let module = scenario.write("forger.wasm", wat::parse_str(&wat).unwrap());
    let probes: String = (0..values.len())
        .map(|n| format!("{{\"n\": {n}}}\n"))
        .collect();
    scenario.write("probes.jsonl", &probes);
    let more = more.replace("{scenario}", &scenario.path("").display().to_string());
    let toml = pipeline_with(&module.display().to_string()) + &more;
    let pipeline = scenario.pipeline(&toml);
    scenario.run_accounted(&pipeline);
    let out = std::fs::read_to_string(scenario.path("out.jsonl")).unwrap();
    let dead = scenario.jsonl("dead.jsonl");
    let errors = dead
        .iter()
        .map(|d| {
            let field = |name: &str| d[name].as_str().unwrap().to_string();
            (field("stage"), field("error"))
        })
        .collect();
    (out, errors)
}

/// A module that writes a value with a line break, or bytes that are not JSON, for a JSON Lines
/// sink: the sink gets only valid single lines; the rest are dead letters.
#[test]
fn a_module_cannot_forge_lines_in_a_json_sink() {
    let (out, dead) = run_replies(
        &describe_of(OperatorKind::Map, "Value", "Value"),
        &[b"{\"a\":1}\n{\"forged\":true}", b"\xff", b"{\"fine\":true}"],
        "",
    );
    assert_eq!(out, "{\"fine\":true}\n");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead.iter().all(|(_, e)| e.contains("not one line of JSON")),
        "{dead:?}"
    );
}

/// A shape node of `kind` named `name` with `children` (name, node index).
fn node(
    kind: flumen_sdk::abi::ShapeKind,
    name: &str,
    children: &[(&str, u32)],
) -> flumen_sdk::abi::ShapeNode {
    flumen_sdk::abi::ShapeNode {
        kind,
        name: name.into(),
        children: children.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
    }
}

/// A module that vouches for its output type's JSON hands the sink bincode, and the host writes
/// the JSON from the type's shape: a value that does not read as the shape says (cut short, a
/// string that is not UTF-8, bytes left over, a bad bool) is a dead letter naming the type, and
/// nothing it writes can forge a line.
#[test]
fn a_module_vouching_for_its_json_gets_only_what_its_shape_reads_written() {
    use flumen_sdk::abi::{Shape, ShapeKind};
    let shape = Shape {
        nodes: vec![
            node(ShapeKind::Struct, "Out", &[("a", 1), ("s", 2), ("ok", 3)]),
            node(ShapeKind::I64, "", &[]),
            node(ShapeKind::Str, "", &[]),
            node(ShapeKind::Bool, "", &[]),
        ],
        json: true,
    };
    let describe = Describe {
        output_shape: Some(shape),
        ..describe_of(OperatorKind::Map, "Value", "Out")
    };
    let value = |a: i64, s: &[u8], ok: u8| {
        let mut v = a.to_le_bytes().to_vec();
        v.extend_from_slice(&(s.len() as u64).to_le_bytes());
        v.extend_from_slice(s);
        v.push(ok);
        v
    };
    let good = value(-5, b"line\nbreak \"quoted\"", 1);
    let cut = &good[..good.len() - 1];
    let not_utf8 = value(1, b"\xff", 0);
    let bad_bool = value(1, b"x", 2);
    let left_over = [value(2, b"", 0), vec![0]].concat();
    // A stage keyed by `a` reads each key at its offset in the bincode (the module writes no
    // keys): a value too short to hold it is a dead letter there.
    let keyed = Describe {
        input_shape: describe.output_shape.clone(),
        ..describe_of(OperatorKind::Filter, "Out", "Out")
    };
    let scenario = Scenario::new();
    let filter = scenario.write(
        "keyed.wasm",
        wat::parse_str(raw_module(&encode(&keyed), &INIT_OK, 1)).unwrap(),
    );
    let more = format!(
        "[operators.keyed]\nmodule = \"{}\"\ninputs = [\"probe\"]\nkey_by = \"a\"\n\
         [sinks.kept]\ntype = \"file\"\npath = \"{{dir}}/kept.jsonl\"\ninputs = [\"keyed\"]\n",
        filter.display()
    );
    let (out, dead) = run_replies(
        &describe,
        &[&good, cut, &not_utf8, &bad_bool, &left_over, &[1, 2, 3]],
        &more,
    );
    assert_eq!(
        out,
        "{\"a\":-5,\"s\":\"line\\nbreak \\\"quoted\\\"\",\"ok\":true}\n"
    );
    let (at_sink, at_keyed): (Vec<_>, Vec<_>) =
        dead.iter().partition(|(stage, _)| stage == "probe");
    assert_eq!(at_sink.len(), 5, "{dead:?}");
    for ((_, error), why) in at_sink.iter().zip([
        "ends early",
        "not UTF-8",
        "neither 0 nor 1",
        "left over",
        "ends early",
    ]) {
        assert!(
            error.contains("does not read as `Out`") && error.contains(why),
            "{error}"
        );
    }
    assert_eq!(at_keyed.len(), 1, "{dead:?}");
    assert_eq!(at_keyed[0].0, "keyed");
    assert!(at_keyed[0].1.contains("its key does not read"), "{dead:?}");
}

/// The admin endpoint against a hostile client: a huge declared body is refused without being
/// read, a hundred idle connections hold no thread and are dropped, and the endpoint answers
/// all along; off loopback it needs a token, and with one it checks it.
#[test]
fn the_admin_endpoint_bounds_what_a_client_can_hold() {
    modules();
    let scenario = Scenario::new();
    scenario.write("probes.jsonl", "{\"id\": 1, \"action\": \"ok\"}\n");
    let toml = scenario.pipeline(
        &pipeline_with(&modules().join("misbehave.wasm").display().to_string()).replace(
            "path = \"{dir}/probes.jsonl\"",
            "path = \"{dir}/probes.jsonl\"\nfollow = true",
        ),
    );
    let toml = toml.to_str().unwrap();

    let refused = scenario.flumen(&["run", toml, "--admin", "0.0.0.0:0"], &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("without a token"),
        "{}",
        text(&refused.stderr)
    );

    let address = crate::support::free_loopback_address();
    let live = Live::start(
        &[toml, "--admin", &address],
        &[("FLUMEN_ADMIN_TOKEN", "s3cret".as_ref())],
        scenario.path("stderr.log"),
    );
    live.wait_for_log("admin endpoint", 1);
    let request = |head: &str| -> String {
        // A connection past the endpoint's cap is closed at once: then the answer is empty.
        let Ok(mut stream) = std::net::TcpStream::connect(&address) else {
            return String::new();
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if write!(stream, "{head}\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
            return String::new();
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    };
    let auth = "Authorization: Bearer s3cret";
    assert!(request("GET /status HTTP/1.1").starts_with("HTTP/1.1 401"));
    assert!(
        request("GET /status HTTP/1.1\r\nAuthorization: Bearer wrong").starts_with("HTTP/1.1 401")
    );
    assert!(request(&format!("GET /status HTTP/1.1\r\n{auth}")).starts_with("HTTP/1.1 200"));
    let huge = request(&format!(
        "POST /reload HTTP/1.1\r\n{auth}\r\nContent-Length: 1000000000000"
    ));
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");

    let idle: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(&address).ok())
        .collect();
    let threads =
        || std::fs::read_dir(format!("/proc/{}/task", live.pid())).map_or(0, |d| d.count());
    assert!(
        threads() < 40,
        "{} threads with idle connections open",
        threads()
    );
    // Idle connections are dropped after the header timeout; the endpoint then answers.
    wait_until(
        "the endpoint to answer again",
        || request(&format!("GET /status HTTP/1.1\r\n{auth}")).starts_with("HTTP/1.1 200"),
        || live.log(),
    );
    drop(idle);
    assert!(live.terminate().success());
}

/// A module that vouches for reading its input type the host's way gets a JSON source's lines
/// read into bincode (`Encoding::Parsed`), and one that does not gets them as text. When it
/// fails on them, each dead letter's `raw` is the line as it came, read by the host or not.
#[test]
fn lines_read_on_the_host_go_only_to_modules_that_vouched_and_dead_letter_as_they_came() {
    use flumen_sdk::abi::{Shape, ShapeKind};
    let lines = [
        r#"{"n": 1, "s": "a\"b\u00e9"}"#,
        r#"{"s": "", "n": -2}"#,
        r#"{"n": 3, "s": "x", "extra": 0}"#,
        r#"{"n": 4.0, "s": "x"}"#,
    ];
    for json in [true, false] {
        let describe = Describe {
            input_shape: Some(Shape {
                nodes: vec![
                    node(ShapeKind::Struct, "In", &[("n", 1), ("s", 2)]),
                    node(ShapeKind::I64, "", &[]),
                    node(ShapeKind::Str, "", &[]),
                ],
                json,
            }),
            ..describe_of(OperatorKind::Filter, "In", "In")
        };
        // It traps on a batch read by the host (encoding 2) and keeps nothing of any other.
        let wat = raw_module(&encode(&describe), &INIT_OK, 1).replace(
            "(func (export \"flumen_process\") (param i32) (result i64) (i64.const 0))",
            "(func (export \"flumen_process\") (param i32) (result i64)
               (if (i32.eq (i32.load8_u (i32.const 16384)) (i32.const 2)) (then unreachable))
               (i64.const 0))",
        );
        let scenario = Scenario::new();
        let module = scenario.write("reader.wasm", wat::parse_str(&wat).unwrap());
        scenario.write("probes.jsonl", lines.join("\n") + "\n");
        let toml = pipeline_with(&module.display().to_string());
        scenario.run_accounted(&scenario.pipeline(&toml));
        let dead = scenario.jsonl("dead.jsonl");
        if json {
            let raw: Vec<&str> = dead.iter().map(|d| d["raw"].as_str().unwrap()).collect();
            assert_eq!(raw, lines, "each line fails alone, as it came");
            assert!(dead.iter().all(|d| d["stage"] == "probe"), "{dead:?}");
        } else {
            assert!(
                dead.is_empty(),
                "a module that did not vouch reads text: {dead:?}"
            );
        }
    }
}
