//! A seeded generator of order events for demos, tests and benchmarks: the same seed gives the
//! same lines on every machine. Besides valid orders it produces, at low rates, every kind of
//! business reject, malformed lines of every kind the spec names, duplicates (an upstream
//! re-send of an earlier line), out-of-order and far-late event times, extra fields and blank
//! lines.

use super::{Options, Position, Pull, Source, SourceBatch, SourceConfig, SourceKind};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::collections::VecDeque;

/// Event time of the first order: 2023-11-14T22:13:20Z.
pub const START_TS: i64 = 1_700_000_000_000;

const COUNTRIES: [&str; 8] = ["US", "FR", "DE", "GB", "JP", "BR", "IN", "CA"];
const USERS: i64 = 5_000;

/// An endless stream of JSON Lines order events.
pub struct OrderGenerator {
    rng: Pcg64Mcg,
    next_id: i64,
    clock: i64,
    recent: VecDeque<String>,
}

impl OrderGenerator {
    /// The generator of seed `seed`.
    pub fn new(seed: u64) -> Self {
        OrderGenerator {
            rng: Pcg64Mcg::seed_from_u64(seed),
            next_id: 1,
            clock: START_TS,
            recent: VecDeque::with_capacity(64),
        }
    }

    fn field_values(&mut self) -> Vec<(&'static str, String)> {
        let rng = &mut self.rng;
        let order_id = self.next_id;
        self.next_id += 1;
        self.clock += rng.random_range(0..400);
        let mut ts = self.clock + rng.random_range(-3000..=3000);
        if rng.random_ratio(3, 1000) {
            ts -= rng.random_range(600_000..1_800_000);
        }
        let sku = if rng.random_ratio(1, 100) {
            [
                "SKU-12",
                "sku-0001",
                "SKU-00001",
                "SKU-12a4",
                "",
                "SKU_0001",
            ][rng.random_range(0..6)]
            .to_string()
        } else if rng.random_ratio(1, 8) {
            format!("SKU-{:04}", rng.random_range(1..=3))
        } else {
            format!("SKU-{:04}", rng.random_range(4..=2_000))
        };
        let qty: i64 = if rng.random_ratio(2, 100) {
            [0, -3, 101, 1000, -1][rng.random_range(0..5)]
        } else if rng.random_ratio(1, 20) {
            rng.random_range(10..=100)
        } else {
            rng.random_range(1..=6)
        };
        let price: i64 = if rng.random_ratio(1, 100) {
            [0, -5, 10_000_001, 99_999_999][rng.random_range(0..4)]
        } else {
            rng.random_range(100..=60_000)
        };
        let country = if rng.random_ratio(1, 100) {
            ["fr", "FRA", "F1", "", "É"][rng.random_range(0..5)].to_string()
        } else {
            COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_string()
        };
        let user = rng.random_range(1..=USERS);
        vec![
            ("order_id", order_id.to_string()),
            ("user_id", user.to_string()),
            ("sku", json_string(&sku)),
            ("qty", qty.to_string()),
            ("price_cents", price.to_string()),
            ("country", json_string(&country)),
            ("ts", ts.to_string()),
        ]
    }

    fn malformed(&mut self) -> String {
        let mut fields = self.field_values();
        let rng = &mut self.rng;
        match rng.random_range(0..12) {
            0 => "not json at all".into(),
            1 => r#"{"order_id": 1, "qty": "#.into(),
            2 => "[1, 2, 3]".into(),
            3 => "42".into(),
            4 => r#""an order""#.into(),
            5 => "null".into(),
            6 => {
                fields.remove(rng.random_range(0..fields.len()));
                object(&fields)
            }
            7 => {
                fields[3].1 = format!("\"{}\"", rng.random_range(1..=5));
                object(&fields)
            }
            8 => {
                fields[3].1 = "2.5".into();
                object(&fields)
            }
            9 => {
                fields[4].1 = "null".into();
                object(&fields)
            }
            10 => {
                fields[6].1 = format!("\"{}\"", fields[6].1);
                object(&fields)
            }
            _ => {
                fields[5].1 = "33".into();
                object(&fields)
            }
        }
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn object(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

impl Iterator for OrderGenerator {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let roll = self.rng.random_range(0..1000);
        let line = match roll {
            0..=11 => self.malformed(),
            12..=15 => String::new(),
            16..=45 if !self.recent.is_empty() => {
                let pick = self.rng.random_range(0..self.recent.len());
                self.recent[pick].clone()
            }
            _ => {
                let mut fields = self.field_values();
                if self.rng.random_ratio(2, 100) {
                    fields.push(("coupon", json_string("WELCOME10")));
                }
                if self.rng.random_ratio(1, 10) {
                    let a = self.rng.random_range(0..fields.len());
                    let b = self.rng.random_range(0..fields.len());
                    fields.swap(a, b);
                }
                let line = object(&fields);
                if self.recent.len() == 64 {
                    self.recent.pop_front();
                }
                self.recent.push_back(line.clone());
                line
            }
        };
        Some(line)
    }
}

/// The benchmark's orders (the peer jobs Flink ran): `order_id` sequential, `user_id` uniform in
/// 1..=1,000,000, `sku` uniform in 1..=10,000, `qty` uniform in 0..=10, `price_cents` uniform in
/// 0..=100,000, and event time advancing 1 ms every 1,000 orders.
pub struct BenchGenerator {
    rng: Pcg64Mcg,
    next_id: i64,
}

/// The fields of a bench order, in this order (also their order in its bincode encoding).
pub const BENCH_FIELDS: [&str; 6] = ["order_id", "user_id", "sku", "qty", "price_cents", "ts"];

impl BenchGenerator {
    /// The generator of seed `seed`.
    pub fn new(seed: u64) -> Self {
        BenchGenerator {
            rng: Pcg64Mcg::seed_from_u64(seed),
            next_id: 0,
        }
    }

    /// The next order's fields, as [`BENCH_FIELDS`] names them.
    pub fn next_order(&mut self) -> [i64; 6] {
        let id = self.next_id;
        self.next_id += 1;
        [
            id,
            self.rng.random_range(1..=1_000_000),
            self.rng.random_range(1..=10_000),
            self.rng.random_range(0..=10),
            self.rng.random_range(0..=100_000),
            START_TS + id / 1000,
        ]
    }

    /// The value of field `name` of `order`.
    pub fn field(order: &[i64; 6], name: &str) -> Option<i64> {
        BENCH_FIELDS
            .iter()
            .position(|f| *f == name)
            .map(|i| order[i])
    }
}

/// The type name of the bench source's records: six `i64`s, `order_id, user_id, sku, qty,
/// price_cents, ts`, in bincode.
pub const BENCH_ORDER: &str = "BenchOrder";

/// The options of a generator (or bench) source, besides those of every source.
pub(super) const SOURCE_OPTIONS: &[&str] = &["count", "seed", "rate"];

/// The options of a source of typed events made in memory (`nexmark`).
pub(super) const TYPED_OPTIONS: &[&str] = &["count", "seed"];

/// The type name of the `nexmark` source's records: `nexmark_model::Event`, in bincode.
pub const NEXMARK_EVENT: &str = "Event";

/// A `nexmark` source's kind, from its options.
pub(super) fn nexmark_kind(options: &mut dyn Options) -> Option<SourceKind> {
    let (count, seed) = count_and_seed(options);
    Some(SourceKind::Nexmark { count, seed })
}

/// A source of `count` Nexmark events from `seed`.
pub(super) fn open_nexmark(count: u64, seed: u64, config: &SourceConfig) -> Box<dyn Source> {
    TypedSource::open(
        nexmark_model::generator::Generator::new(seed),
        count,
        config,
    )
}

/// The options every generated sequence has: how many, and the seed.
fn count_and_seed(options: &mut dyn Options) -> (u64, u64) {
    let count = options.positive("count", 1000, u64::MAX >> 1);
    let seed = options.integer("seed").unwrap_or(0) as u64;
    (count, seed)
}

/// A generator source's kind (`bench` when `typed`), from its options.
pub(super) fn source_kind(options: &mut dyn Options, typed: bool) -> Option<SourceKind> {
    let (count, seed) = count_and_seed(options);
    let rate = options
        .integer("rate")
        .map(|_| options.positive("rate", 1, 100_000_000));
    Some(match typed {
        true => SourceKind::Bench { count, seed },
        false => SourceKind::Generator { count, seed, rate },
    })
}

/// A source of `count` generated orders from `seed`, at most `rate` a second if given.
pub(super) fn open(
    count: u64,
    seed: u64,
    rate: Option<u64>,
    config: &SourceConfig,
) -> Box<dyn Source> {
    Box::new(GeneratorSource {
        lines: OrderGenerator::new(seed).take(count as usize),
        count,
        batch_size: config.batch_size,
        drawn: 0,
        pace: Pace::new(rate),
    })
}

/// A source of `count` typed orders (bincode `BenchOrder`s) from `seed`.
pub(super) fn open_typed(count: u64, seed: u64, config: &SourceConfig) -> Box<dyn Source> {
    TypedSource::open(BenchGenerator::new(seed), count, config)
}

/// Generated orders, as `flumen gen orders` writes them.
struct GeneratorSource<I> {
    lines: I,
    /// Lines in all.
    count: u64,
    batch_size: usize,
    /// Lines drawn from `lines` (blank ones included).
    drawn: u64,
    /// How fast lines may be drawn, if held back.
    pace: Option<Pace>,
}

/// At most `rate` lines a second, counted from the first read (`since`: when, and the lines
/// drawn then).
struct Pace {
    rate: u64,
    since: Option<(std::time::Instant, u64)>,
}

impl Pace {
    fn new(rate: Option<u64>) -> Option<Pace> {
        rate.map(|rate| Pace { rate, since: None })
    }

    /// How many lines may be drawn now, `drawn` having been drawn so far.
    fn room(&mut self, drawn: u64) -> u64 {
        let (at, from) = *self.since.get_or_insert((std::time::Instant::now(), drawn));
        let due = (at.elapsed().as_secs_f64() * self.rate as f64) as u64;
        (from + due).saturating_sub(drawn)
    }
}

impl<I: Iterator<Item = String>> Source for GeneratorSource<I> {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        let mut room = self.batch_size;
        if let Some(pace) = &mut self.pace {
            room = room.min(usize::try_from(pace.room(self.drawn)).unwrap_or(usize::MAX));
            if room == 0 {
                return Ok(Pull::Idle);
            }
        }
        while out.len() < room {
            let Some(line) = self.lines.next() else { break };
            self.drawn += 1;
            if !line.trim().is_empty() {
                out.push_json(line.as_bytes());
            }
        }
        Ok(pulled(out))
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
        if let SourceKind::Generator { rate, .. } = config.kind {
            self.pace = Pace::new(rate);
        }
    }

    fn position(&mut self) -> std::io::Result<Position> {
        Ok(Position::Sequence { drawn: self.drawn })
    }

    fn lag(&mut self) -> Option<crate::telemetry::Lag> {
        Some(crate::telemetry::Lag {
            behind: self.count.saturating_sub(self.drawn),
            unit: "records",
        })
    }

    fn seek(&mut self, position: &Position) -> anyhow::Result<()> {
        let drawn = sequence_to_resume(position, self.drawn)?;
        for _ in 0..drawn {
            self.lines.next();
        }
        self.drawn = drawn;
        Ok(())
    }
}

/// What a generated sequence's call gave: nothing only at its end.
fn pulled(out: &SourceBatch) -> Pull {
    match out.is_empty() {
        true => Pull::Finished,
        false => Pull::Batch,
    }
}

/// How many items a sequence at `position` has drawn, if a fresh one (`drawn` 0) can resume
/// there.
fn sequence_to_resume(position: &Position, drawn: u64) -> anyhow::Result<u64> {
    let &Position::Sequence { drawn: wanted } = position else {
        anyhow::bail!("a generated sequence cannot resume at a file's position");
    };
    anyhow::ensure!(drawn == 0, "a sequence resumes only before it is read");
    Ok(wanted)
}

/// Records made in memory already typed (bincode), one after another: the bench's orders,
/// Nexmark's events.
trait TypedRecords: 'static {
    /// Makes the next record, its value encoded into `value`, and pushes it to `out`.
    fn push_next(&mut self, value: &mut Vec<u8>, out: &mut SourceBatch);
    /// Makes `n` records and drops them.
    fn skip(&mut self, n: u64);
}

impl TypedRecords for BenchGenerator {
    fn push_next(&mut self, value: &mut Vec<u8>, out: &mut SourceBatch) {
        let order = self.next_order();
        for field in order {
            value.extend_from_slice(&field.to_le_bytes());
        }
        out.push_typed(|name| BenchGenerator::field(&order, name), order[5], value);
    }

    fn skip(&mut self, n: u64) {
        for _ in 0..n {
            self.next_order();
        }
    }
}

impl TypedRecords for nexmark_model::generator::Generator {
    fn push_next(&mut self, value: &mut Vec<u8>, out: &mut SourceBatch) {
        let drawn = self.next_into(value);
        out.push_typed(|name| drawn.field(name), drawn.ts, value);
    }

    fn skip(&mut self, n: u64) {
        nexmark_model::generator::Generator::skip(self, n);
    }
}

/// A source of `count` typed records.
struct TypedSource<G> {
    records: G,
    /// Records in all, and made so far.
    count: u64,
    drawn: u64,
    batch_size: usize,
    value: Vec<u8>,
}

impl<G: TypedRecords> TypedSource<G> {
    fn open(records: G, count: u64, config: &SourceConfig) -> Box<dyn Source> {
        Box::new(TypedSource {
            records,
            count,
            drawn: 0,
            batch_size: config.batch_size,
            value: Vec::with_capacity(256),
        })
    }
}

impl<G: TypedRecords> Source for TypedSource<G> {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        while out.len() < self.batch_size && self.drawn < self.count {
            self.value.clear();
            self.records.push_next(&mut self.value, out);
            self.drawn += 1;
        }
        Ok(pulled(out))
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
    }

    fn position(&mut self) -> std::io::Result<Position> {
        Ok(Position::Sequence { drawn: self.drawn })
    }

    fn lag(&mut self) -> Option<crate::telemetry::Lag> {
        Some(crate::telemetry::Lag {
            behind: self.count - self.drawn,
            unit: "records",
        })
    }

    fn seek(&mut self, position: &Position) -> anyhow::Result<()> {
        let drawn = sequence_to_resume(position, self.drawn)?.min(self.count);
        self.records.skip(drawn);
        self.drawn = drawn;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value a source gives, batch after batch, until it ends.
    fn drain(source: &mut dyn Source) -> Vec<Vec<u8>> {
        use flumen_sdk::abi::{OutputEntry, OutputReader};
        let mut values = Vec::new();
        let mut batch = SourceBatch::new(Vec::new(), None);
        loop {
            batch.clear();
            if source.next_batch(&mut batch).unwrap() == Pull::Finished {
                return values;
            }
            for entry in OutputReader::new(batch.out.as_bytes()) {
                if let Ok(OutputEntry::Record { value, .. }) = entry {
                    values.push(value.to_vec());
                }
            }
        }
    }

    #[test]
    fn a_generated_sequence_resumes_where_it_was() {
        let config = SourceConfig {
            name: "g".into(),
            kind: SourceKind::Generator {
                count: 60,
                seed: 3,
                rate: None,
            },
            batch_size: 7,
            event_time: None,
            watermark_delay_ms: 0,
            max_record_bytes: 1 << 20,
            max_future_ms: None,
        };
        let open = |kind: &str, config: &SourceConfig| match kind {
            "bench" => open_typed(60, 3, config),
            "nexmark" => open_nexmark(60, 3, config),
            _ => open(60, 3, None, config),
        };
        for typed in ["generator", "bench", "nexmark"] {
            let all = drain(open(typed, &config).as_mut());
            let mut first = open(typed, &config);
            let mut batch = SourceBatch::new(Vec::new(), None);
            let mut read = 0;
            for _ in 0..2 {
                batch.clear();
                first.next_batch(&mut batch).unwrap();
                read += batch.len();
            }
            let at = first.position().unwrap();
            let mut again = open(typed, &config);
            again.seek(&at).unwrap();
            let rest = drain(again.as_mut());
            assert_eq!(read + rest.len(), all.len(), "typed: {typed}");
            assert_eq!(rest, all[all.len() - rest.len()..], "typed: {typed}");
            assert!(again.seek(&at).is_err(), "only before reading");
        }
    }

    #[test]
    fn a_rate_holds_the_generator_back() {
        let config = SourceConfig {
            name: "g".into(),
            kind: SourceKind::Generator {
                count: 1000,
                seed: 3,
                rate: Some(100),
            },
            batch_size: 1000,
            event_time: None,
            watermark_delay_ms: 0,
            max_record_bytes: 1 << 20,
            max_future_ms: None,
        };
        let mut source = open(1000, 3, Some(100), &config);
        let mut batch = SourceBatch::new(Vec::new(), None);
        let started = std::time::Instant::now();
        let mut read = 0;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            batch.clear();
            source.next_batch(&mut batch).unwrap();
            read += batch.len();
        }
        // 100 a second for 0.2 s: about 20, never the thousand available.
        assert!(
            read <= 25 + (started.elapsed().as_secs_f64() * 100.0) as usize,
            "{read}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_lines() {
        let a: Vec<_> = OrderGenerator::new(7).take(500).collect();
        let b: Vec<_> = OrderGenerator::new(7).take(500).collect();
        let c: Vec<_> = OrderGenerator::new(8).take(500).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn lines_are_mostly_valid_json_objects_with_some_of_everything_else() {
        let lines: Vec<_> = OrderGenerator::new(1).take(20_000).collect();
        let objects = lines
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object()))
            .count();
        let blank = lines.iter().filter(|l| l.is_empty()).count();
        let mut sorted = lines.clone();
        sorted.retain(|l| !l.is_empty());
        let total = sorted.len();
        sorted.sort();
        sorted.dedup();
        assert!(objects > 19_000, "{objects}");
        assert!(blank > 20, "{blank}");
        assert!(
            total - sorted.len() > 300,
            "duplicates: {}",
            total - sorted.len()
        );
    }
}
