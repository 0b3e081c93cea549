//! The whole reference pipeline against the spec (`shared/spec/orders-pipeline.md`): generated
//! orders with duplicates, out-of-order and far-late events, every reject and malformed kind,
//! and session edges exactly one gap apart, checked sink by sink against an oracle written here
//! from the spec alone; and the same output sets whatever the parallelism.

use crate::support::{
    Scenario, assert_accounted, assert_same_set, flumen, modules, read_jsonl, workspace,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BATCH: usize = 1024;
const DELAY: i64 = 5_000;
const GAP: i64 = 1_800_000;
pub(crate) const SINKS: [&str; 9] = [
    "rejected",
    "dead_letter",
    "out_of_stock",
    "alerts",
    "scores",
    "sales_per_sku",
    "trending",
    "sessions",
    "late",
];

#[derive(Clone)]
struct Order {
    order_id: i64,
    user_id: i64,
    sku: String,
    qty: i64,
    price_cents: i64,
    country: String,
    ts: i64,
}

impl Order {
    fn valid_json(&self) -> Value {
        json!({
            "order_id": self.order_id, "user_id": self.user_id, "sku": self.sku, "qty": self.qty,
            "price_cents": self.price_cents, "country": self.country, "ts": self.ts,
            "amount_cents": self.qty * self.price_cents,
        })
    }
    fn amount(&self) -> i64 {
        self.qty * self.price_cents
    }
}

/// The order in a line, or `None` if the line is malformed.
fn parse(line: &str) -> Option<Order> {
    let Ok(Value::Object(f)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let int = |k: &str| f.get(k).filter(|v| v.is_i64()).and_then(Value::as_i64);
    let string = |k: &str| f.get(k).and_then(Value::as_str).map(String::from);
    Some(Order {
        order_id: int("order_id")?,
        user_id: int("user_id")?,
        sku: string("sku")?,
        qty: int("qty")?,
        price_cents: int("price_cents")?,
        country: string("country")?,
        ts: int("ts")?,
    })
}

/// Why the spec rejects an order with these fields, if it does (the first failing check).
pub(crate) fn reject_reason(
    qty: i64,
    price_cents: i64,
    sku: &str,
    country: &str,
) -> Option<&'static str> {
    let digits = sku.as_bytes();
    let sku_ok =
        digits.len() == 8 && sku.starts_with("SKU-") && digits[4..].iter().all(u8::is_ascii_digit);
    let country_ok = country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase());
    if !(1..=100).contains(&qty) {
        Some("bad_qty")
    } else if !(1..=10_000_000).contains(&price_cents) {
        Some("bad_price")
    } else if !sku_ok {
        Some("bad_sku")
    } else if !country_ok {
        Some("bad_country")
    } else {
        None
    }
}

#[derive(Default)]
struct Session {
    start: i64,
    end: i64,
    orders: i64,
    revenue: i64,
}

/// Every sink of the pipeline, computed from the spec.
pub(crate) fn oracle(input: &str) -> BTreeMap<&'static str, Vec<Value>> {
    let mut out: BTreeMap<&'static str, Vec<Value>> =
        SINKS.iter().map(|s| (*s, Vec::new())).collect();
    let lines: Vec<&str> = input
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut seen = HashSet::new();
    let mut stock: HashMap<String, i64> = HashMap::new();
    let initial = |sku: &str| match sku {
        "SKU-0001" => 40,
        "SKU-0002" => 25,
        "SKU-0003" => 5,
        _ => 1000,
    };
    let mut users: HashMap<i64, (String, Vec<i64>)> = HashMap::new();
    let mut tumbling: BTreeMap<(String, i64), (i64, i64, i64)> = BTreeMap::new();
    let mut sliding: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
    let mut sessions: HashMap<i64, Vec<Session>> = HashMap::new();
    let mut max_ts: Option<i64> = None;
    let mut watermark = i64::MIN;

    let fire_sessions = |sessions: &mut HashMap<i64, Vec<Session>>,
                         w: i64,
                         out: &mut BTreeMap<&str, Vec<Value>>| {
        for (user, list) in sessions.iter_mut() {
            list.retain(|s| {
                if s.end - 1 <= w {
                    out.get_mut("sessions")
                        .unwrap()
                        .push(json!({"user_id": user, "window_start": s.start,
                        "window_end": s.end, "orders": s.orders, "revenue_cents": s.revenue}));
                    false
                } else {
                    true
                }
            });
        }
    };
    let fire = |w: i64,
                tumbling: &mut BTreeMap<(String, i64), (i64, i64, i64)>,
                sliding: &mut BTreeMap<i64, BTreeMap<String, i64>>,
                out: &mut BTreeMap<&str, Vec<Value>>| {
        tumbling.retain(|(sku, start), (n, units, revenue)| {
            if start + 60_000 - 1 <= w {
                out.get_mut("sales_per_sku").unwrap().push(json!({"sku": sku, "window_start": start,
                    "window_end": start + 60_000, "orders": n, "units": units, "revenue_cents": revenue}));
                false
            } else {
                true
            }
        });
        sliding.retain(|start, units| {
            if start + 600_000 - 1 <= w {
                let mut ranked: Vec<(&String, &i64)> = units.iter().collect();
                ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let top: Vec<Value> = ranked
                    .iter()
                    .take(3)
                    .map(|(s, u)| json!({"sku": s, "units": u}))
                    .collect();
                out.get_mut("trending")
                    .unwrap()
                    .push(json!({"window_start": start,
                    "window_end": start + 600_000, "top": top}));
                false
            } else {
                true
            }
        });
    };

    for batch in lines.chunks(BATCH) {
        for line in batch {
            let Some(order) = parse(line) else {
                out.get_mut("dead_letter")
                    .unwrap()
                    .push(Value::String(line.to_string()));
                continue;
            };
            max_ts = Some(max_ts.map_or(order.ts, |m: i64| m.max(order.ts)));
            if let Some(reason) =
                reject_reason(order.qty, order.price_cents, &order.sku, &order.country)
            {
                out.get_mut("rejected")
                    .unwrap()
                    .push(json!({"order_id": order.order_id, "reason": reason}));
                continue;
            }
            if !seen.insert(order.order_id) {
                out.get_mut("rejected")
                    .unwrap()
                    .push(json!({"order_id": order.order_id, "reason": "duplicate"}));
                continue;
            }
            let remaining = stock
                .entry(order.sku.clone())
                .or_insert_with(|| initial(&order.sku));
            if order.qty > *remaining {
                out.get_mut("out_of_stock")
                    .unwrap()
                    .push(json!({"order_id": order.order_id,
                    "sku": order.sku, "qty": order.qty, "remaining": *remaining}));
                continue;
            }
            let before = *remaining;
            *remaining -= order.qty;
            if before >= 20 && *remaining < 20 {
                out.get_mut("alerts")
                    .unwrap()
                    .push(json!({"sku": order.sku, "remaining": *remaining, "ts": order.ts}));
            }
            // score
            let (first_country, history) = users
                .entry(order.user_id)
                .or_insert_with(|| (order.country.clone(), Vec::new()));
            let recent = history
                .iter()
                .filter(|&&t| order.ts - 600_000 <= t && t <= order.ts)
                .count();
            let mut score = 0;
            if order.amount() > 50_000 {
                score += 40;
            }
            if recent >= 3 {
                score += 30;
            }
            if order.country != *first_country {
                score += 20;
            }
            if order.qty >= 10 {
                score += 10;
            }
            history.push(order.ts);
            out.get_mut("scores")
                .unwrap()
                .push(json!({"order_id": order.order_id,
                "user_id": order.user_id, "score": score, "flagged": score >= 50}));
            // windows
            let late = |stage: &str| json!({"stage": stage, "record": order.valid_json()});
            let start = order.ts - order.ts.rem_euclid(60_000);
            if start + 60_000 - 1 <= watermark {
                out.get_mut("late").unwrap().push(late("sales_per_sku"));
            } else {
                let t = tumbling.entry((order.sku.clone(), start)).or_default();
                *t = (t.0 + 1, t.1 + order.qty, t.2 + order.amount());
            }
            let last = order.ts - order.ts.rem_euclid(60_000);
            let mut added = false;
            for k in 0..10 {
                let s = last - k * 60_000;
                if s + 600_000 - 1 > watermark {
                    *sliding
                        .entry(s)
                        .or_default()
                        .entry(order.sku.clone())
                        .or_default() += order.qty;
                    added = true;
                }
            }
            if !added {
                out.get_mut("late").unwrap().push(late("trending"));
            }
            let list = sessions.entry(order.user_id).or_default();
            let (mut start, mut end) = (order.ts, order.ts + GAP);
            let touching: Vec<usize> = (0..list.len())
                .filter(|&i| list[i].start <= end && start <= list[i].end)
                .collect();
            if touching.is_empty() && end - 1 <= watermark {
                out.get_mut("late").unwrap().push(late("sessions"));
            } else {
                let (mut orders, mut revenue) = (1, order.amount());
                // Merging can reach sessions the record did not touch at first.
                while let Some(i) =
                    (0..list.len()).find(|&i| list[i].start <= end && start <= list[i].end)
                {
                    let s = list.remove(i);
                    start = start.min(s.start);
                    end = end.max(s.end);
                    orders += s.orders;
                    revenue += s.revenue;
                }
                list.push(Session {
                    start,
                    end,
                    orders,
                    revenue,
                });
            }
        }
        if let Some(max) = max_ts {
            watermark = watermark.max(max - DELAY);
        }
        fire(watermark, &mut tumbling, &mut sliding, &mut out);
        fire_sessions(&mut sessions, watermark, &mut out);
    }
    fire(i64::MAX, &mut tumbling, &mut sliding, &mut out);
    fire_sessions(&mut sessions, i64::MAX, &mut out);
    out
}

fn run_pipeline(orders: &Path, out: &Path, env: &[(&str, &str)]) {
    let summary = run_with_summary(orders, out, env, Duration::from_secs(600));
    assert_accounted(&summary);
}

/// Runs the reference pipeline on `orders` into `out` with `env` (say `FLUMEN_PARALLELISM`),
/// failing if it takes longer than `limit`; returns its `--summary-json`. Its standard error
/// is kept beside `out` (`.stderr.log`).
pub(crate) fn run_with_summary(
    orders: &Path,
    out: &Path,
    env: &[(&str, &str)],
    limit: Duration,
) -> Value {
    run_file(Path::new("pipelines/orders.toml"), orders, out, env, limit)
}

/// [`run_with_summary`] for the pipeline file `pipeline`.
fn run_file(
    pipeline: &Path,
    orders: &Path,
    out: &Path,
    env: &[(&str, &str)],
    limit: Duration,
) -> Value {
    let summary = out.with_extension("summary.json");
    let stderr = out.with_extension("stderr.log");
    let mut child = flumen()
        .arg("run")
        .arg(pipeline)
        .arg("--summary-json")
        .arg(&summary)
        .env("ORDERS", orders)
        .env("OUT_DIR", out)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "the run took longer than {limit:?}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap()
}

pub(crate) fn sink(out: &Path, name: &str) -> Vec<Value> {
    let values = read_jsonl(&out.join(format!("{name}.jsonl")));
    if name == "dead_letter" {
        return values.into_iter().map(|d| d["raw"].clone()).collect();
    }
    values
}

/// Generated orders, plus one user's sessions exactly one gap apart (merged) and one gap and
/// a millisecond apart (not merged), at the very end so they make nothing else late.
/// A scenario with the modules built and `count` orders generated with `seed` in its
/// `orders.jsonl`: the scenario, the orders' text, and the file.
pub(crate) fn with_orders(count: &str, seed: &str) -> (Scenario, String, PathBuf) {
    modules();
    let scenario = Scenario::new();
    let input = input(&scenario, count, seed);
    let orders = scenario.write("orders.jsonl", &input);
    (scenario, input, orders)
}

pub(crate) fn input(scenario: &Scenario, count: &str, seed: &str) -> String {
    let generated = scenario.path("generated.jsonl");
    let status = flumen()
        .args(["gen", "orders", "--count", count, "--seed", seed, "--out"])
        .arg(&generated)
        .status()
        .unwrap();
    assert!(status.success());
    let mut input = std::fs::read_to_string(&generated).unwrap();
    let base = 1_800_000_000_000i64;
    for (i, ts) in [
        base,
        base + GAP,
        base + 2 * GAP + 1,
        base + 2 * GAP + 1 + GAP,
    ]
    .iter()
    .enumerate()
    {
        input.push_str(&format!(
            "{{\"order_id\": {}, \"user_id\": 999999, \"sku\": \"SKU-9000\", \"qty\": 1, \"price_cents\": 100, \"country\": \"FR\", \"ts\": {ts}}}\n",
            800_000 + i
        ));
    }
    input
}

#[test]
fn every_sink_matches_the_spec() {
    let (scenario, input, orders) = with_orders("20000", "21");
    let out = scenario.path("out");
    run_pipeline(&orders, &out, &[]);
    let expected = oracle(&input);
    for name in SINKS {
        assert_same_set(name, sink(&out, name), expected[name].clone());
    }
    for (name, at_least) in [
        ("late", 5),
        ("rejected", 100),
        ("out_of_stock", 10),
        ("alerts", 2),
        ("sessions", 100),
    ] {
        assert!(
            expected[name].len() >= at_least,
            "the test data has too few {name}: {}",
            expected[name].len()
        );
    }
    let edge = |start: i64| {
        expected["sessions"]
            .iter()
            .any(|s| s["user_id"] == 999_999 && s["window_start"] == start)
    };
    assert!(edge(1_800_000_000_000) && edge(1_800_000_000_000 + 2 * GAP + 1));
    assert_eq!(
        expected["sessions"]
            .iter()
            .filter(|s| s["user_id"] == 999_999)
            .count(),
        2
    );
}

/// Partitions run on worker threads and their outputs are merged by input position, so every
/// sink gets the same lines in the same order whatever the parallelism (dead letters: the same
/// set; each partition's go out together).
#[test]
fn output_does_not_depend_on_parallelism() {
    let (scenario, _, orders) = with_orders("8000", "4");
    run_pipeline(&orders, &scenario.path("p1"), &[]);
    run_pipeline(
        &orders,
        &scenario.path("p4"),
        &[("FLUMEN_PARALLELISM", "4")],
    );
    for name in SINKS {
        let (p4, p1) = (
            sink(&scenario.path("p4"), name),
            sink(&scenario.path("p1"), name),
        );
        if name == "dead_letter" {
            assert_same_set(name, p4, p1);
        } else {
            assert!(
                p4 == p1,
                "{name}: parallelism 4 changed the lines or their order"
            );
        }
    }
}

/// With two threads the last levels run a round behind, beside the earlier ones (in the
/// reference pipeline `stock` and its four readers, with the sinks only they feed); where no cut
/// can be taken, stages of one level run side by side instead (here `stock` and a second `stock`
/// reading `dedupe`, then the four readers of `stock`, in a pipeline whose `late` sink takes
/// `dedupe`'s rejects too, so that every cut would feed a sink from both sides of it). Either
/// way every sink — dead letters included — gets the lines one thread writes, in the same order.
#[test]
fn stages_a_round_behind_or_side_by_side_write_what_one_thread_writes() {
    let (scenario, _, orders) = with_orders("20000", "6");
    let reference = std::fs::read_to_string(workspace().join("pipelines/orders.toml")).unwrap();
    let modules = workspace().join("target/flumen").display().to_string();
    let reference = reference.replace("../target/flumen", &modules);
    let late = r#"inputs = ["sales_per_sku.late", "trending.late", "sessions.late"]"#;
    assert!(reference.contains(late));
    let uncut = format!(
        r#"{}
[operators.stock_again]
module = "{modules}/stock.wasm"
inputs = ["dedupe"]
key_by = "sku"
params = {{ initial_stock = 1000, low_stock_threshold = 20 }}
"#,
        reference.replace(late, &late.replace("]", r#", "dedupe.rejected"]"#))
    );
    let limit = Duration::from_secs(600);
    // Half rounds run side by side and rounds run behind, from the executor's log.
    let counts = |stderr: &str| -> (u64, u64) {
        // "… N half rounds ran stages of one level side by side, M rounds ran the last levels …"
        let line = stderr
            .lines()
            .find(|line| line.contains("rounds ran the last levels a round behind"))
            .unwrap_or_else(|| panic!("no counts of rounds run beside others: {stderr}"));
        let number = |word: Option<&str>| word.and_then(|w| w.parse().ok()).unwrap_or(0);
        let side_by_side = line
            .split_once(" half rounds")
            .and_then(|(head, _)| head.split_whitespace().last());
        let behind = line
            .split_once("side by side, ")
            .and_then(|(_, tail)| tail.split_whitespace().next());
        (number(side_by_side), number(behind))
    };
    for (name, text) in [("cut", reference.clone()), ("uncut", uncut)] {
        let pipeline = scenario.write(&format!("{name}.toml"), &text);
        let (one, two) = (
            scenario.path(&format!("{name}-t1")),
            scenario.path(&format!("{name}-t2")),
        );
        assert_accounted(&run_file(
            &pipeline,
            &orders,
            &one,
            &[("FLUMEN_THREADS", "1")],
            limit,
        ));
        let env = [
            ("FLUMEN_THREADS", "2"),
            ("FLUMEN_LOG", "warn,flumen::executor=debug"),
        ];
        assert_accounted(&run_file(&pipeline, &orders, &two, &env, limit));
        let stderr = std::fs::read_to_string(two.with_extension("stderr.log")).unwrap();
        let (side_by_side, behind) = counts(&stderr);
        match name {
            "cut" => assert!(
                behind > 0,
                "{name}: {side_by_side} side by side, {behind} behind"
            ),
            _ => assert!(
                side_by_side > 0 && behind == 0,
                "{name}: {side_by_side} side by side, {behind} behind"
            ),
        }
        for sink_name in SINKS {
            assert!(
                sink(&two, sink_name) == sink(&one, sink_name),
                "{name}: {sink_name}: two threads changed the lines or their order"
            );
        }
    }
}
