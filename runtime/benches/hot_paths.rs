//! Micro-benchmarks of the hot paths (criterion): a guest call per batch size, bincode and JSON
//! encoding, window assignment, keyed-state decoding, and reading fields from a JSON line.
//! Run: `make udfs && cargo bench -p flumen --bench hot_paths`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flumen::connectors::SourceBatch;
use flumen::guest::{Guest, InstanceConfig, Limits, OperatorInstance, Sandbox};
use flumen::window::{Bounds, WindowSpec};
use flumen_sdk::abi::{BINCODE, BatchWriter, Encoding, PortSpec, put_parsed};
use flumen_sdk::render::JsonShape;
use flumen_sdk::state::{KeyedState, ValueState};
use flumen_sdk::transcode::{Scratch, Transcoder};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

const LINE: &[u8] = br#"{"order_id": 123456, "user_id": 4242, "sku": "SKU-0042", "qty": 3, "price_cents": 1999, "country": "FR", "ts": 1700000123456}"#;

#[derive(Serialize, Deserialize, Clone)]
struct Order {
    order_id: i64,
    user_id: i64,
    sku: String,
    qty: i64,
    price_cents: i64,
    country: String,
    ts: i64,
}

fn order() -> Order {
    serde_json::from_slice(LINE).expect("a valid order")
}

/// `validate` over batches of JSON orders: the cost of one guest call, per record.
fn guest_call(c: &mut Criterion) {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/flumen/validate.wasm");
    if !module.exists() {
        eprintln!("skipping guest_call: build the modules first (make udfs)");
        return;
    }
    let sandbox = Sandbox::new().expect("engine");
    let loaded = sandbox.load(&module).expect("validate.wasm loads");
    let shape = loaded.describe().input_shape.clone();
    let config = InstanceConfig {
        partition: 0,
        stage: "validate".into(),
        params: serde_json::json!({}),
        ports: vec![PortSpec::default(), PortSpec::default()],
        limits: Limits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(1),
        },
    };
    let mut instance = OperatorInstance::new(loaded, config).expect("init");
    let mut group = c.benchmark_group("guest_call_validate");
    for size in [1usize, 64, 1024] {
        let mut batch = BatchWriter::new(Encoding::Json);
        for _ in 0..size {
            batch.push(b"", 0, LINE);
        }
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &batch, |b, batch| {
            b.iter(|| black_box(instance.process(&[batch.as_bytes()]).map(<[u8]>::len)))
        });
    }
    group.finish();

    // The same orders read into bincode on the host first, as a source does for a module that
    // vouched for reading its input type: `validate` from JSON, both sides, per record.
    let reader = shape
        .filter(|shape| shape.json)
        .and_then(|shape| JsonShape::new(&shape))
        .and_then(|json| Transcoder::new(&json))
        .expect("validate's input type is read on the host");
    let text = std::str::from_utf8(LINE).expect("UTF-8");
    let mut group = c.benchmark_group("validate_from_json_read_on_host");
    let (mut scratch, mut bincode) = (Scratch::default(), Vec::new());
    let mut batch = BatchWriter::new(Encoding::Parsed);
    for size in [64usize, 1024] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| {
                batch.clear(Encoding::Parsed);
                for _ in 0..size {
                    bincode.clear();
                    let read = reader.transcode(black_box(text), &mut scratch, &mut bincode);
                    batch.push_with(b"", 0, &[], |buf| {
                        put_parsed(buf, read.then_some(&bincode[..]), LINE)
                    });
                }
                black_box(instance.process(&[batch.as_bytes()]).map(<[u8]>::len))
            })
        });
    }
    group.finish();
}

fn encoding(c: &mut Criterion) {
    let order = order();
    let bincoded = bincode::serde::encode_to_vec(&order, BINCODE).expect("encodes");
    let mut group = c.benchmark_group("encoding");
    group.throughput(Throughput::Elements(1));
    group.bench_function("bincode_encode", |b| {
        let mut buf = Vec::with_capacity(128);
        b.iter(|| {
            buf.clear();
            bincode::serde::encode_into_std_write(black_box(&order), &mut buf, BINCODE)
        })
    });
    group.bench_function("bincode_decode", |b| {
        b.iter(|| bincode::serde::decode_from_slice::<Order, _>(black_box(&bincoded), BINCODE))
    });
    group.bench_function("json_write", |b| {
        let mut buf = Vec::with_capacity(256);
        b.iter(|| {
            buf.clear();
            serde_json::to_writer(&mut buf, black_box(&order))
        })
    });
    group.bench_function("json_parse", |b| {
        b.iter(|| serde_json::from_slice::<Order>(black_box(LINE)))
    });
    group.finish();
}

fn windows(c: &mut Criterion) {
    let mut group = c.benchmark_group("window_assign");
    let mut out: Vec<Bounds> = Vec::with_capacity(16);
    for (name, spec) in [
        ("tumbling_1m", WindowSpec::Tumbling { size_ms: 60_000 }),
        (
            "sliding_10m_1m",
            WindowSpec::Sliding {
                size_ms: 600_000,
                slide_ms: 60_000,
            },
        ),
    ] {
        group.bench_function(name, |b| {
            let mut ts = 1_700_000_000_000i64;
            b.iter(|| {
                ts += 217;
                spec.assign(black_box(ts), &mut out);
                out.len()
            })
        });
    }
    group.finish();
}

fn state(c: &mut Criterion) {
    let mut state = ValueState::<(String, Vec<i64>)>::default();
    state.set(("FR".into(), (0..16).collect()));
    let mut bytes = Vec::new();
    state.save(&mut bytes).expect("saves");
    let mut group = c.benchmark_group("keyed_state");
    group.bench_function("load", |b| {
        b.iter(|| ValueState::<(String, Vec<i64>)>::load(Some(black_box(&bytes))))
    });
    group.bench_function("save", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            out.clear();
            state.save(&mut out)
        })
    });
    group.finish();
}

fn json_fields(c: &mut Criterion) {
    let mut batch = SourceBatch::new(vec!["sku".into()], Some("ts".into()));
    c.bench_function("source_json_fields", |b| {
        b.iter(|| {
            if batch.len() >= 1024 {
                batch.clear();
            }
            batch.push_json(black_box(LINE));
        })
    });
}

criterion_group!(benches, guest_call, encoding, windows, state, json_fields);
criterion_main!(benches);
