//! Stages against fake guests: keyed state, each window kind, lateness, the ordered merge over
//! several partitions, retries after a failed call, accounting and reload adoption — the logic
//! the end-to-end tests cover through real modules, here in milliseconds and without Wasm.
//!
//! Every expectation is computed by a plain model of what the stage should do (counting per key,
//! summing per window), never copied from a run.

use super::{KeyAt, Stage};
use crate::config::{OnStateChange, OperatorConfig, StageLimits};
use crate::dead_letter::DeadLetters;
use crate::guest::fake::{FakeGuest, Request};
use crate::guest::{Call, Guest, GuestFailure};
use crate::plan::{OperatorPlan, PortPlan};
use crate::window::WindowSpec;
use flumen_sdk::abi::{Describe, Encoding, OperatorKind, OutputEntry, OutputReader, OutputWriter};
use std::collections::BTreeMap;
use std::time::Duration;

/// What a fake module does on a call.
type Behaviour = fn(Call, &Request, &mut OutputWriter) -> Result<(), GuestFailure>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn number(bytes: Option<&[u8]>) -> i64 {
    bytes.map_or(0, |b| text(b).parse().unwrap_or(0))
}

/// A record out of a fake: its value, for input `index`.
fn emit(out: &mut OutputWriter, index: usize, ts: i64, value: &str) {
    let entry = out.record(0, index as u32, ts, 0);
    let _ = entry.value(|b| {
        b.extend_from_slice(value.as_bytes());
        Ok::<_, ()>(())
    });
}

fn set_state(out: &mut OutputWriter, slot: u32, value: Option<String>) {
    let write = value.map(|v| {
        move |b: &mut Vec<u8>| {
            b.extend_from_slice(v.as_bytes());
            Ok::<_, ()>(())
        }
    });
    let _ = out.state(slot, write);
}

/// Fails the whole call when any record is `poison`: what a trap does.
fn refuse_poison(request: &Request) -> Result<(), GuestFailure> {
    match request.records.iter().any(|r| r.value == b"poison") {
        true => Err(GuestFailure("trapped: unreachable".into())),
        false => Ok(()),
    }
}

/// A `map` doubling numbers, trapping on `poison`, answering nothing for `skip`.
fn doubler(call: Call, request: &Request, out: &mut OutputWriter) -> Result<(), GuestFailure> {
    refuse_poison(request)?;
    for (i, r) in request.records.iter().enumerate() {
        match call {
            Call::ToJson => emit(out, i, r.ts, &format!("\"{}\"", text(&r.value))),
            _ if r.value == b"skip" => {}
            _ if r.value == b"bad" => out.error(i as u32, "not a number", &r.value),
            _ => emit(out, i, r.ts, &(number(Some(&r.value)) * 2).to_string()),
        }
    }
    Ok(())
}

/// A `process` counting records per key: emits `key:count`, keeps the count as its state.
fn counter(call: Call, request: &Request, out: &mut OutputWriter) -> Result<(), GuestFailure> {
    refuse_poison(request)?;
    if call == Call::ToJson {
        return doubler(call, request, out);
    }
    let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
    for (i, r) in request.records.iter().enumerate() {
        let slot = r.slots[0];
        let stored = request.slots[slot as usize].value.as_deref();
        let count = counts.entry(slot).or_insert_with(|| number(stored));
        *count += 1;
        emit(out, i, r.ts, &format!("{}:{count}", text(&r.key)));
    }
    for (slot, count) in counts {
        set_state(out, slot, Some(count.to_string()));
    }
    Ok(())
}

/// An aggregate summing numbers: add, merge, and finish (a window's accumulator, or its panes)
/// as `key@start..end=sum`.
fn summer(call: Call, request: &Request, out: &mut OutputWriter) -> Result<(), GuestFailure> {
    refuse_poison(request)?;
    let stored = |slot: u32| number(request.slots[slot as usize].value.as_deref());
    match call {
        Call::Process => {
            let mut sums: BTreeMap<u32, i64> = BTreeMap::new();
            for r in &request.records {
                for &slot in &r.slots {
                    *sums.entry(slot).or_insert_with(|| stored(slot)) += number(Some(&r.value));
                }
            }
            for (slot, sum) in sums {
                set_state(out, slot, Some(sum.to_string()));
            }
        }
        Call::Merge => {
            for r in &request.records {
                let sum = r.slots[1..].iter().map(|&s| stored(s)).sum::<i64>();
                set_state(out, r.slots[0], Some(sum.to_string()));
            }
        }
        Call::Finish => {
            for (i, r) in request.records.iter().enumerate() {
                let start = i64::from_le_bytes(r.value[0..8].try_into().unwrap_or_default());
                let end = i64::from_le_bytes(r.value[8..16].try_into().unwrap_or_default());
                // A window kept as panes names them, after its bounds a non-zero token and the
                // end of each, in order, within the window.
                let panes: Vec<(u64, i64)> = r.value[16..]
                    .chunks_exact(16)
                    .map(|p| {
                        let word = |at: usize| p[at..at + 8].try_into().unwrap_or_default();
                        (u64::from_le_bytes(word(0)), i64::from_le_bytes(word(8)))
                    })
                    .collect();
                let in_order = panes.windows(2).all(|w| w[0].1 < w[1].1)
                    && panes.iter().all(|&(token, pane_end)| {
                        token != 0 && start < pane_end && pane_end <= end
                    });
                let sum = if r.slots.is_empty() {
                    number(Some(&r.value[16..]))
                } else if r.value.len() != 16 + 16 * r.slots.len() || !in_order {
                    return Err(GuestFailure("panes without their tokens and ends".into()));
                } else {
                    r.slots.iter().map(|&s| stored(s)).sum()
                };
                emit(
                    out,
                    i,
                    r.ts,
                    &format!("{}@{start}..{end}={sum}", text(&r.key)),
                );
            }
        }
        Call::ToJson => doubler(call, request, out)?,
    }
    Ok(())
}

struct Setup {
    kind: OperatorKind,
    behaviour: Behaviour,
    partitions: usize,
    window: Option<WindowSpec>,
    lateness: i64,
    ttl: Option<i64>,
    limits: StageLimits,
}

impl Setup {
    fn new(kind: OperatorKind, behaviour: Behaviour) -> Self {
        Setup {
            kind,
            behaviour,
            partitions: 1,
            window: None,
            lateness: 0,
            ttl: None,
            limits: StageLimits::default(),
        }
    }

    /// The same stage kind and window as `other`'s.
    fn window_of(self, other: &Setup) -> Self {
        Setup {
            window: other.window,
            lateness: other.lateness,
            ttl: other.ttl,
            ..self
        }
    }

    fn partitions(self, partitions: usize) -> Self {
        Setup { partitions, ..self }
    }

    fn window(self, window: WindowSpec, lateness: i64) -> Self {
        Setup {
            window: Some(window),
            lateness,
            ..self
        }
    }

    fn plan(&self) -> OperatorPlan {
        let stateful = matches!(self.kind, OperatorKind::Process | OperatorKind::Aggregate);
        let port = |name: &str| PortPlan {
            name: name.into(),
            type_name: "T".into(),
            shape: None,
            encoding: Encoding::Json,
            json: None,
            consumers: Vec::new(),
            key_fields: Vec::new(),
            ts_field: None,
            host_keys: None,
            parsed: None,
        };
        let mut ports = vec![port("main")];
        if self.window.is_some() {
            ports.push(port("late"));
        }
        OperatorPlan {
            config: OperatorConfig {
                name: "stage".into(),
                module: "fake.wasm".into(),
                inputs: Vec::new(),
                params: serde_json::Value::Null,
                memory_limit_bytes: 1 << 20,
                timeout: Duration::from_secs(1),
                key_by: stateful.then(|| "key".into()),
                event_time: None,
                parallelism: Some(self.partitions),
                state_ttl_ms: self.ttl,
                window: self.window,
                allowed_lateness_ms: self.lateness,
                on_state_change: OnStateChange::Refuse,
                limits: self.limits,
            },
            describe: Describe {
                abi_version: flumen_sdk::abi::ABI_VERSION,
                kind: self.kind,
                input_type: "T".into(),
                output_type: "T".into(),
                side_outputs: Vec::new(),
                state_type: stateful.then(|| "S".into()),
                input_shape: None,
                output_shape: None,
            },
            ports,
            partitions: self.partitions,
            module_hash: "fake".into(),
        }
    }

    fn build(&self) -> Stage {
        let guests = (0..self.partitions)
            .map(|_| Box::new(FakeGuest::new("fake", self.behaviour)) as Box<dyn Guest>)
            .collect();
        Stage::new(&self.plan(), guests)
    }
}

/// A batch from upstream: `(key, ts, value)` records, keyed by their first key.
fn batch(records: &[(&str, i64, &str)]) -> Vec<u8> {
    let mut out = OutputWriter::default();
    for (i, (key, ts, value)) in records.iter().enumerate() {
        let mut entry = out.record(0, i as u32, *ts, 1);
        entry.key(|b| b.extend_from_slice(key.as_bytes()));
        let _ = entry.value(|b| {
            b.extend_from_slice(value.as_bytes());
            Ok::<_, ()>(())
        });
    }
    out.take()
}

/// What the stage emitted on `port` since last asked, as text.
fn drain(stage: &mut Stage, port: usize) -> Vec<String> {
    let bytes = stage.outputs()[port].take();
    OutputReader::new(&bytes)
        .map(|entry| match entry {
            Ok(OutputEntry::Record { value, .. }) => text(value),
            other => panic!("not a record: {other:?}"),
        })
        .collect()
}

/// A batch of `(key, ts, value)` records, then the watermark after it, if any.
type Step<'a> = (&'a [(&'a str, i64, &'a str)], Option<i64>);

/// Runs `batches` through `stage` (each followed by a watermark, if given); returns what it
/// emitted on its main port, and the dead letters' lines.
fn run(stage: &mut Stage, batches: &[Step]) -> (Vec<String>, Vec<String>) {
    let mut dead = DeadLetters::default();
    let mut out = Vec::new();
    for (records, watermark) in batches {
        stage.accept(
            &batch(records),
            Some(KeyAt::Entry(0)),
            Encoding::Json,
            &mut dead,
        );
        out.extend(drain(stage, 0));
        if let Some(watermark) = watermark {
            stage.advance(*watermark, &mut dead);
            out.extend(drain(stage, 0));
        }
    }
    let dead = dead.lines.iter().map(|l| text(l)).collect();
    (out, dead)
}

fn assert_accounted(stage: &Stage) {
    assert_eq!(stage.stats.unaccounted(), 0, "{:?}", stage.stats);
}

#[test]
fn a_stateless_stage_maps_filters_and_dead_letters_in_order() {
    for partitions in [1, 3] {
        let mut stage = Setup::new(OperatorKind::FilterMap, doubler)
            .partitions(partitions)
            .build();
        let values = ["1", "skip", "2", "bad", "3", "skip", "4"];
        let records: Vec<_> = values.iter().map(|v| ("", 0, *v)).collect();
        let (out, dead) = run(&mut stage, &[(&records, None)]);
        let expected: Vec<String> = values
            .iter()
            .filter_map(|v| v.parse::<i64>().ok())
            .map(|n| (n * 2).to_string())
            .collect();
        assert_eq!(out, expected, "{partitions} partitions");
        assert_eq!(dead.len(), 1);
        assert!(dead[0].contains("not a number"), "{}", dead[0]);
        assert_eq!(stage.stats.filtered, 2);
        assert_accounted(&stage);
    }
}

#[test]
fn a_map_answering_nothing_for_a_record_dead_letters_it() {
    let mut stage = Setup::new(OperatorKind::Map, doubler).build();
    let (out, dead) = run(&mut stage, &[(&[("", 0, "1"), ("", 0, "skip")], None)]);
    assert_eq!(out, ["2"]);
    assert!(
        dead[0].contains("a map emits one record per input"),
        "{dead:?}"
    );
    assert_accounted(&stage);
}

/// `key:count` for each record, in order: what a counter per key emits.
fn counted(keys: &[&str]) -> Vec<String> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    keys.iter()
        .map(|k| {
            let n = counts.entry(k).or_default();
            *n += 1;
            format!("{k}:{n}")
        })
        .collect()
}

#[test]
fn keyed_state_counts_per_key_in_arrival_order_whatever_the_partitions() {
    let keys: Vec<String> = (0..60).map(|i| format!("sku-{}", i * 7 % 11)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for partitions in [1, 2, 5] {
        let mut stage = Setup::new(OperatorKind::Process, counter)
            .partitions(partitions)
            .build();
        let (first, second) = keys.split_at(25);
        let a: Vec<_> = first.iter().map(|k| (*k, 0, "x")).collect();
        let b: Vec<_> = second.iter().map(|k| (*k, 0, "x")).collect();
        let (out, dead) = run(&mut stage, &[(&a, None), (&b, None)]);
        assert!(dead.is_empty());
        assert_eq!(out, counted(&keys), "{partitions} partitions");
        assert_accounted(&stage);
    }
}

#[test]
fn a_poison_record_is_found_alone_and_changes_no_state() {
    let mut values = vec!["x"; 40];
    values[13] = "poison";
    values[31] = "poison";
    let keys: Vec<String> = (0..40).map(|i| format!("k{}", i % 3)).collect();
    let records: Vec<(&str, i64, &str)> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (k.as_str(), 0, *v))
        .collect();
    let mut stage = Setup::new(OperatorKind::Process, counter).build();
    let (out, dead) = run(&mut stage, &[(&records, None)]);
    let good: Vec<&str> = records
        .iter()
        .filter(|r| r.2 != "poison")
        .map(|r| r.0)
        .collect();
    assert_eq!(
        out,
        counted(&good),
        "retries keep order and count each record once"
    );
    assert_eq!(dead.len(), 2);
    assert!(
        dead.iter().all(|d| d.contains("trapped: unreachable")),
        "{dead:?}"
    );
    assert_accounted(&stage);
}

#[test]
fn a_stage_adopting_another_redistributes_its_state_over_new_partitions() {
    let keys: Vec<String> = (0..30).map(|i| format!("user-{}", i % 9)).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let records: Vec<_> = keys.iter().map(|k| (*k, 0, "x")).collect();
    let mut old = Setup::new(OperatorKind::Process, counter)
        .partitions(2)
        .build();
    let (first, _) = run(&mut old, &[(&records[..12], None)]);
    let mut new = Setup::new(OperatorKind::Process, counter)
        .partitions(3)
        .build();
    new.adopt(old, true);
    let (second, _) = run(&mut new, &[(&records[12..], None)]);
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_eq!(all, counted(&keys));
}

/// `key@start..end=sum` of every tumbling window of `size` over `records`, in (end, key) order.
fn tumbling_sums(records: &[(&str, i64, &str)], size: i64) -> Vec<String> {
    let mut sums: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    for (key, ts, value) in records {
        let start = ts - ts.rem_euclid(size);
        *sums.entry((start + size, key)).or_default() += value.parse::<i64>().unwrap_or(0);
    }
    sums.into_iter()
        .map(|((end, key), sum)| format!("{key}@{}..{end}={sum}", end - size))
        .collect()
}

#[test]
fn tumbling_windows_fire_in_end_then_key_order_across_partitions() {
    let records: Vec<(String, i64, String)> = (0..80)
        .map(|i| (format!("k{}", i % 5), i * 37 % 400, (i % 9).to_string()))
        .collect();
    let records: Vec<(&str, i64, &str)> = records
        .iter()
        .map(|(k, t, v)| (k.as_str(), *t, v.as_str()))
        .collect();
    let spec = WindowSpec::Tumbling { size_ms: 100 };
    for partitions in [1, 3] {
        let mut stage = Setup::new(OperatorKind::Aggregate, summer)
            .partitions(partitions)
            .window(spec, 0)
            .build();
        let (out, dead) = run(&mut stage, &[(&records, Some(i64::MAX))]);
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(out, tumbling_sums(&records, 100), "{partitions} partitions");
        assert_accounted(&stage);
    }
}

#[test]
fn sliding_windows_from_panes_equal_every_window_summed_whole() {
    let records: Vec<(String, i64, String)> = (0..60)
        .map(|i| (format!("k{}", i % 4), i * 53 % 700, (i % 7 + 1).to_string()))
        .collect();
    let records: Vec<(&str, i64, &str)> = records
        .iter()
        .map(|(k, t, v)| (k.as_str(), *t, v.as_str()))
        .collect();
    let (size, slide) = (300, 100);
    // The model: every window [start, start + size) with start a multiple of the slide.
    let mut sums: BTreeMap<(i64, &str), i64> = BTreeMap::new();
    for (key, ts, value) in &records {
        let last = ts - ts.rem_euclid(slide);
        let mut start = last;
        while start > ts - size {
            *sums.entry((start + size, key)).or_default() += value.parse::<i64>().unwrap_or(0);
            start -= slide;
        }
    }
    let expected: Vec<String> = sums
        .into_iter()
        .map(|((end, key), sum)| format!("{key}@{}..{end}={sum}", end - size))
        .collect();
    let spec = WindowSpec::Sliding {
        size_ms: size,
        slide_ms: slide,
    };
    // In two halves with a watermark between, so panes fire in two rounds.
    let (first, second) = records.split_at(30);
    let mut stage = Setup::new(OperatorKind::Aggregate, summer)
        .partitions(2)
        .window(spec, 0)
        .build();
    let mut sorted_first = first.to_vec();
    sorted_first.sort_by_key(|r| r.1);
    let watermark = -1; // nothing fires yet: records of the second half may be anywhere
    let (out, dead) = run(
        &mut stage,
        &[(&sorted_first, Some(watermark)), (second, Some(i64::MAX))],
    );
    assert!(dead.is_empty(), "{dead:?}");
    assert_eq!(out, expected);
    assert_accounted(&stage);
}

/// [`summer`], refusing a merge or finish call of more than `WINDOWS_PER_CALL` windows.
fn bounded_summer(
    call: Call,
    request: &Request,
    out: &mut OutputWriter,
) -> Result<(), GuestFailure> {
    let most = super::partition::WINDOWS_PER_CALL;
    if matches!(call, Call::Merge | Call::Finish) && request.records.len() > most {
        return Err(GuestFailure(format!(
            "{} windows in one call",
            request.records.len()
        )));
    }
    summer(call, request, out)
}

#[test]
fn windows_fired_at_once_are_merged_and_finished_in_bounded_calls() {
    // 3,000 keys' sliding windows (three each) all fire at the end of the input.
    let records: Vec<(String, i64, String)> = (0..3000)
        .map(|i| (format!("k{i:04}"), 250, "1".to_string()))
        .collect();
    let records: Vec<(&str, i64, &str)> = records
        .iter()
        .map(|(k, t, v)| (k.as_str(), *t, v.as_str()))
        .collect();
    let spec = WindowSpec::Sliding {
        size_ms: 300,
        slide_ms: 100,
    };
    let mut stage = Setup::new(OperatorKind::Aggregate, bounded_summer)
        .window(spec, 0)
        .build();
    let (out, dead) = run(&mut stage, &[(&records, Some(i64::MAX))]);
    assert!(dead.is_empty(), "{:?}", &dead[..dead.len().min(3)]);
    let expected: Vec<String> = [300, 400, 500]
        .iter()
        .flat_map(|end| (0..3000).map(move |i| format!("k{i:04}@{}..{end}=1", end - 300)))
        .collect();
    assert_eq!(out, expected);
    assert_accounted(&stage);
}

#[test]
fn late_records_go_to_late_or_update_a_fired_window_within_lateness() {
    let spec = WindowSpec::Tumbling { size_ms: 10 };
    // Without lateness: a record for a fired window is late.
    let mut stage = Setup::new(OperatorKind::Aggregate, summer)
        .window(spec, 0)
        .build();
    let mut dead = DeadLetters::default();
    stage.accept(
        &batch(&[("a", 3, "5")]),
        Some(KeyAt::Entry(0)),
        Encoding::Json,
        &mut dead,
    );
    stage.advance(10, &mut dead);
    assert_eq!(drain(&mut stage, 0), ["a@0..10=5"]);
    stage.accept(
        &batch(&[("a", 4, "6")]),
        Some(KeyAt::Entry(0)),
        Encoding::Json,
        &mut dead,
    );
    assert_eq!(drain(&mut stage, 1), [r#"{"stage":"stage","record":6}"#]);
    assert_eq!(stage.stats.late, 1);
    assert_accounted(&stage);

    // With lateness 5: the window fires again, updated, until the watermark passes 10 + 5.
    let mut stage = Setup::new(OperatorKind::Aggregate, summer)
        .window(spec, 5)
        .build();
    stage.accept(
        &batch(&[("a", 3, "5")]),
        Some(KeyAt::Entry(0)),
        Encoding::Json,
        &mut dead,
    );
    stage.advance(10, &mut dead);
    assert_eq!(drain(&mut stage, 0), ["a@0..10=5"]);
    stage.accept(
        &batch(&[("a", 4, "6")]),
        Some(KeyAt::Entry(0)),
        Encoding::Json,
        &mut dead,
    );
    assert_eq!(drain(&mut stage, 0), ["a@0..10=11"]);
    stage.advance(15, &mut dead);
    stage.accept(
        &batch(&[("a", 4, "7")]),
        Some(KeyAt::Entry(0)),
        Encoding::Json,
        &mut dead,
    );
    assert!(drain(&mut stage, 0).is_empty());
    assert_eq!(drain(&mut stage, 1).len(), 1, "past lateness: late");
    assert!(dead.lines.is_empty());
    assert_accounted(&stage);
}

#[test]
fn sessions_merge_when_a_record_bridges_them() {
    let spec = WindowSpec::Session { gap_ms: 10 };
    for partitions in [1, 2] {
        let mut stage = Setup::new(OperatorKind::Aggregate, summer)
            .partitions(partitions)
            .window(spec, 0)
            .build();
        let (out, dead) = run(
            &mut stage,
            &[
                (&[("a", 0, "1"), ("a", 20, "2"), ("b", 5, "10")], Some(-1)),
                // Bridges a's two sessions: [0, 10) and [20, 30) become [0, 30).
                (&[("a", 10, "4"), ("b", 40, "20")], Some(i64::MAX)),
            ],
        );
        assert!(dead.is_empty(), "{dead:?}");
        assert_eq!(
            out,
            ["b@5..15=10", "a@0..30=7", "b@40..50=20"],
            "{partitions} partitions"
        );
        assert_accounted(&stage);
    }
}

#[test]
fn state_past_its_limit_dead_letters_the_record_that_would_grow_it() {
    let mut setup = Setup::new(OperatorKind::Process, counter);
    setup.limits.max_state_bytes = 20;
    let mut stage = setup.build();
    // Each key takes its name plus one digit of count: 5 + 1 bytes.
    let (out, dead) = run(
        &mut stage,
        &[(
            &[
                ("key-1", 0, "x"),
                ("key-2", 0, "x"),
                ("key-3", 0, "x"),
                ("key-4", 0, "x"),
            ],
            None,
        )],
    );
    assert_eq!(out, ["key-1:1", "key-2:1", "key-3:1"]);
    assert_eq!(dead.len(), 1);
    assert!(dead[0].contains("max_state_bytes"), "{dead:?}");
    assert_accounted(&stage);
}

#[test]
fn keyed_state_expires_after_its_time_to_live() {
    let mut setup = Setup::new(OperatorKind::Process, counter);
    setup.ttl = Some(100);
    let mut stage = setup.build();
    let (out, _) = run(
        &mut stage,
        &[
            (&[("a", 0, "x"), ("a", 50, "x")], Some(120)),
            // Written at 50, so alive until 150; then gone.
            (&[("a", 140, "x")], Some(300)),
            (&[("a", 310, "x")], None),
        ],
    );
    assert_eq!(out, ["a:1", "a:2", "a:3", "a:1"]);
}

/// Records of `keys` keys over a span of event time, as `(key, ts, value)`.
fn spread_records(count: i64) -> Vec<(String, i64, String)> {
    (0..count)
        .map(|i| (format!("k{}", i % 7), i * 29 % 900, (i % 5 + 1).to_string()))
        .collect()
}

#[test]
fn a_stage_restored_from_its_snapshot_goes_on_as_if_never_stopped() {
    let records = spread_records(90);
    let records: Vec<(&str, i64, &str)> = records
        .iter()
        .map(|(k, t, v)| (k.as_str(), *t, v.as_str()))
        .collect();
    let (first, second) = records.split_at(45);
    let setups: Vec<(&str, Setup)> = vec![
        ("keyed", Setup::new(OperatorKind::Process, counter)),
        (
            "tumbling",
            Setup::new(OperatorKind::Aggregate, summer)
                .window(WindowSpec::Tumbling { size_ms: 100 }, 50),
        ),
        (
            "sliding panes",
            Setup::new(OperatorKind::Aggregate, summer).window(
                WindowSpec::Sliding {
                    size_ms: 300,
                    slide_ms: 100,
                },
                0,
            ),
        ),
        (
            "sessions",
            Setup::new(OperatorKind::Aggregate, summer)
                .window(WindowSpec::Session { gap_ms: 40 }, 0),
        ),
    ];
    for (kind, setup) in setups {
        // Uninterrupted, on one partition.
        let mut whole = setup.build();
        let steps = [(first, Some(300)), (second, Some(i64::MAX))];
        let (expected, _) = run(&mut whole, &steps);
        for (before, after) in [(1, 3), (3, 2), (2, 1)] {
            let mut stopped = Setup {
                partitions: before,
                ..Setup::new(setup.kind, setup.behaviour).window_of(&setup)
            }
            .build();
            let (mut out, _) = run(&mut stopped, &[(first, Some(300))]);
            let snapshot = stopped.snapshot();
            // Through bytes, as a checkpoint keeps it.
            let bytes = bincode::serde::encode_to_vec(&snapshot, flumen_sdk::abi::BINCODE).unwrap();
            let (read, _): (super::StageSnapshot, _) =
                bincode::serde::decode_from_slice(&bytes, flumen_sdk::abi::BINCODE).unwrap();
            assert_eq!(read, snapshot, "{kind}");
            let mut resumed = Setup {
                partitions: after,
                ..Setup::new(setup.kind, setup.behaviour).window_of(&setup)
            }
            .build();
            resumed.restore(read, true);
            // Restoring keeps every entry: a snapshot of the restored stage holds the same ones.
            let entries = |s: &super::StageSnapshot| {
                let mut keyed: Vec<_> = s
                    .partitions
                    .iter()
                    .flat_map(|p| p.keyed.entries.clone())
                    .collect();
                let mut windows: Vec<_> = s
                    .partitions
                    .iter()
                    .flat_map(|p| p.windows.windows.clone())
                    .collect();
                let mut sessions: Vec<_> = s
                    .partitions
                    .iter()
                    .flat_map(|p| p.sessions.sessions.clone())
                    .collect();
                keyed.sort();
                windows.sort();
                sessions.sort();
                (keyed, windows, sessions)
            };
            assert_eq!(entries(&resumed.snapshot()), entries(&snapshot), "{kind}");
            let (rest, _) = run(&mut resumed, &[(second, Some(i64::MAX))]);
            out.extend(rest);
            assert_eq!(out, expected, "{kind}: {before} partitions, then {after}");
        }
    }
}

#[test]
fn a_pane_window_finish_reply_past_the_limits_dead_letters_its_windows_and_nothing_else() {
    /// `summer`, whose finish of a window made of panes writes a result far past the limit.
    fn hoarder(call: Call, request: &Request, out: &mut OutputWriter) -> Result<(), GuestFailure> {
        match call {
            Call::Finish if request.records.iter().any(|r| !r.slots.is_empty()) => {
                for (i, r) in request.records.iter().enumerate() {
                    emit(out, i, r.ts, &"9".repeat(1000));
                }
                Ok(())
            }
            _ => summer(call, request, out),
        }
    }
    let mut setup = Setup::new(OperatorKind::Aggregate, hoarder).window(
        WindowSpec::Sliding {
            size_ms: 300,
            slide_ms: 100,
        },
        0,
    );
    setup.limits.max_record_output_bytes = 100;
    let mut stage = setup.build();
    let (out, dead) = run(
        &mut stage,
        &[(&[("a", 10, "1"), ("b", 20, "2")], Some(i64::MAX))],
    );
    assert!(out.is_empty(), "{out:?}");
    // Each key's three windows holding the pane [0, 100).
    assert_eq!(dead.len(), 6, "one letter per window: {dead:?}");
    assert!(
        dead.iter().all(|d| d.contains("max_record_output_bytes")),
        "{dead:?}"
    );
    assert_eq!(stage.stats.failed_windows, 6);
    assert_accounted(&stage);
}

#[test]
fn beside_a_task_holding_the_workers_tasks_in_parallel_run_on_the_calling_thread() {
    use super::{beside, in_parallel, parallel_threads};
    let here = std::thread::current().id();
    let (elsewhere, (threads, ran_on)) = beside(
        || std::thread::current().id(),
        || {
            let ran_on = std::sync::Mutex::new(Vec::new());
            let threads = in_parallel(0..4, |_| {
                ran_on.lock().unwrap().push(std::thread::current().id())
            });
            (threads, ran_on.into_inner().unwrap())
        },
    );
    assert_eq!(threads, 1);
    assert_eq!(ran_on, vec![here; 4]);
    // Afterwards the workers are free again (where the machine has any).
    let workers = elsewhere != here;
    assert_eq!(parallel_threads() > 1, workers);
}
