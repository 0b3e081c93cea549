//! Helpers for a UDF's unit tests, which run natively with plain `cargo test`.
//!
//! [`Harness`] drives an operator through the code its module runs — the runner behind the
//! module's exports, over the batch ABI (parameters from JSON, side outputs, errors, keyed state
//! kept as the runtime keeps it); [`AggregateHarness`] does the same for a window aggregate,
//! with its windows (records and watermarks in, fired windows out); [`Collected`] gives an
//! [`Outputs`] to call a UDF function directly.
//!
//! ```
//! use flumen_sdk::testing::Harness;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { qty: i64 }
//!
//! #[derive(Deserialize)]
//! struct Limits { max_qty: i64 }
//!
//! #[flumen_sdk::filter(side(too_big = Order))]
//! fn small(order: &Order, limits: &Limits, out: &mut flumen_sdk::Outputs) -> bool {
//!     if order.qty > limits.max_qty {
//!         out.side("too_big", order);
//!     }
//!     order.qty <= limits.max_qty
//! }
//!
//! let mut harness = Harness::<SmallOperator>::new(serde_json::json!({"max_qty": 5})).unwrap();
//! let emitted = harness.run(Order { qty: 9 }).unwrap();
//! assert!(emitted.main.is_empty());
//! assert_eq!(emitted.side("too_big"), vec![serde_json::json!({"qty": 9})]);
//! ```

use crate::abi::{
    self, BatchWriter, Encoding, InitRequest, OutputEntry, OutputReader, PortSpec, SlotWriter,
};
use crate::guest::{GuestRunner, Runner};
use crate::operator::{Collector, Operator, Outputs, Target};
use crate::state::KeyedState;
use serde_json::Value;
use std::collections::BTreeMap;

/// What an operator emitted for the records it was given, as JSON values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Collected {
    /// Values on the main output, in order.
    pub main: Vec<Value>,
    /// Values on side outputs, in order, with the side output's name.
    pub sides: Vec<(String, Value)>,
    pub(crate) side_names: Vec<String>,
}

impl Collected {
    /// An [`Outputs`] collecting into `self`, with the given side outputs declared.
    pub fn outputs(&mut self, side_names: &[&str]) -> Outputs<'_> {
        self.side_names = side_names.iter().map(|s| s.to_string()).collect();
        Outputs {
            target: Target::Collect(self),
            ts: 0,
            key: b"",
            index: 0,
            failure: None,
        }
    }

    /// The values emitted on side output `name`, in order.
    pub fn side(&self, name: &str) -> Vec<Value> {
        self.sides
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

impl Collector for Collected {
    fn side_index(&self, name: &str) -> Option<usize> {
        self.side_names.iter().position(|p| p == name)
    }

    fn push(&mut self, port: usize, value: Value) {
        match port.checked_sub(1) {
            None => self.main.push(value),
            Some(side) => {
                let name = self.side_names.get(side).cloned().unwrap_or_default();
                self.sides.push((name, value));
            }
        }
    }
}

/// Runs an operator natively, one record at a time, through the same runner and batch ABI its
/// module runs under (parameters decoded by `init`, records and state slots encoded as the runtime
/// encodes them, replies checked entry by entry), keeping each key's state as the runtime keeps
/// it: the bytes the module returned, changed only by a call that succeeded.
///
/// ```
/// use flumen_sdk::state::ValueState;
/// use flumen_sdk::testing::Harness;
///
/// /// Counts each key's records, emitting the running count.
/// #[flumen_sdk::process]
/// fn count(_order: serde_json::Value, seen: &mut ValueState<i64>) -> i64 {
///     let n = seen.get().copied().unwrap_or(0) + 1;
///     seen.set(n);
///     n
/// }
///
/// let mut h = Harness::<CountOperator>::new(serde_json::json!({})).unwrap();
/// h.run_keyed("a", serde_json::json!({}), 0).unwrap();
/// let out = h.run_keyed("a", serde_json::json!({}), 0).unwrap();
/// assert_eq!(out.main, vec![serde_json::json!(2)]);
/// assert_eq!(h.state("a").and_then(|s| s.get()), Some(&2));
/// assert!(h.state("b").is_none());
/// ```
pub struct Harness<Op: Operator> {
    runner: Runner<Op>,
    side_names: Vec<String>,
    /// Each key's state as the runtime stores it.
    stored: BTreeMap<String, Vec<u8>>,
    /// The same, decoded, for [`Harness::state`].
    states: BTreeMap<String, Op::State>,
}

impl<Op: Operator> Harness<Op> {
    /// Builds the operator from `params`, the stage's `params` table as JSON (decoded as the
    /// runtime decodes them: an unknown key is an error).
    pub fn new(params: Value) -> Result<Self, String> {
        let side_names: Vec<String> = Op::side_outputs().into_iter().map(|s| s.name).collect();
        // Every port as JSON, as a port read by a sink is: what the tests compare.
        let ports = (0..=side_names.len())
            .map(|_| PortSpec {
                encoding: Encoding::Json,
                key_fields: Vec::new(),
                ts_field: None,
            })
            .collect();
        let request = InitRequest {
            stage: "harness".into(),
            params_json: params.to_string(),
            ports,
        };
        let request = bincode::serde::encode_to_vec(&request, abi::BINCODE)
            .map_err(|e| format!("cannot encode init: {e}"))?;
        let mut runner = Runner::<Op>::default();
        let reply = runner.native_call(abi::native::INIT, &request);
        abi::decode_control::<Result<(), String>>(reply)??;
        Ok(Harness {
            runner,
            side_names,
            stored: BTreeMap::new(),
            states: BTreeMap::new(),
        })
    }

    /// Processes one unkeyed record; an `Err` is what would go to the dead letters.
    pub fn run(&mut self, input: Op::Input<'_>) -> Result<Collected, String> {
        self.run_keyed("", input, 0)
    }

    /// Processes one record of key `key` (its key field's text) with event time `ts`. On `Err`
    /// the key's state is left as it was, as the runtime does.
    pub fn run_keyed(
        &mut self,
        key: &str,
        input: Op::Input<'_>,
        ts: i64,
    ) -> Result<Collected, String> {
        let value = serde_json::to_vec(&input).map_err(|e| format!("cannot encode input: {e}"))?;
        let mut batch = BatchWriter::new(Encoding::Json);
        let mut slots = SlotWriter::default();
        let slot = slots.push(key.as_bytes(), self.stored.get(key).map(Vec::as_slice));
        batch.push_with(key.as_bytes(), ts, &[slot], |b| b.extend_from_slice(&value));
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let reply = self.runner.native_call(abi::native::PROCESS, &request);
        let mut collected = Collected {
            side_names: self.side_names.clone(),
            ..Collected::default()
        };
        let mut new_state = None;
        for entry in OutputReader::new(reply) {
            match entry.map_err(|e| format!("malformed reply: {e}"))? {
                OutputEntry::Record { port, value, .. } => {
                    let value: Value = serde_json::from_slice(value)
                        .map_err(|e| format!("the module wrote a record that is not JSON: {e}"))?;
                    collected.push(usize::from(port), value);
                }
                OutputEntry::Error { message, .. } => return Err(message.to_string()),
                OutputEntry::State { value, .. } => new_state = Some(value.map(<[u8]>::to_vec)),
            }
        }
        match new_state {
            Some(Some(bytes)) => {
                self.states
                    .insert(key.to_string(), Op::State::load(Some(&bytes))?);
                self.stored.insert(key.to_string(), bytes);
            }
            Some(None) => {
                self.states.remove(key);
                self.stored.remove(key);
            }
            None => {}
        }
        Ok(collected)
    }

    /// The state of `key`, as the runtime stores it (`None` if the key has none).
    pub fn state(&self, key: &str) -> Option<&Op::State> {
        self.states.get(key)
    }
}

/// The window a harnessed aggregate runs under: what the stage's `window` table says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `{ type = "tumbling", size_ms = … }`: back-to-back windows.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// `{ type = "sliding", size_ms = …, slide_ms = … }`: windows of `size_ms` every `slide_ms`.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Time between two windows' starts.
        slide_ms: i64,
    },
    /// `{ type = "session", gap_ms = … }`: a key's records closer than `gap_ms` to each other.
    Session {
        /// The longest quiet time within a session.
        gap_ms: i64,
    },
}

impl WindowKind {
    /// The windows a record at `ts` belongs to (a session: its own, before merging).
    fn assign(self, ts: i64) -> Vec<crate::aggregate::Window> {
        use crate::aggregate::Window;
        match self {
            WindowKind::Tumbling { size_ms } => {
                let start = ts - ts.rem_euclid(size_ms);
                vec![Window {
                    start,
                    end: start + size_ms,
                }]
            }
            WindowKind::Sliding { size_ms, slide_ms } => {
                let mut start = ts - ts.rem_euclid(slide_ms);
                let mut windows = Vec::new();
                while start > ts - size_ms {
                    windows.push(Window {
                        start,
                        end: start + size_ms,
                    });
                    start -= slide_ms;
                }
                windows.reverse();
                windows
            }
            WindowKind::Session { gap_ms } => vec![Window {
                start: ts,
                end: ts + gap_ms,
            }],
        }
    }
}

/// Runs a window aggregate natively through the runner its module runs (`process` adds records
/// to accumulators, `merge` joins sessions, `finish` renders fired windows, all over the batch
/// ABI), with the windows kept as the runtime keeps them: records go in with their key and event
/// time, watermarks move, fired windows come out — by Flink's rules (half-open, epoch-aligned
/// windows; a window fires when the watermark reaches `end − 1`; a record whose every window has
/// fired is late).
///
/// ```
/// use flumen_sdk::aggregate::{Aggregate, Window};
/// use flumen_sdk::testing::{AggregateHarness, WindowKind};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Sale { pub qty: i64 }
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Units { pub sku: String, pub start: i64, pub units: i64 }
///
/// pub struct UnitsPerSku;
///
/// #[flumen_sdk::aggregate]
/// impl Aggregate for UnitsPerSku {
///     type Input<'a> = Sale;
///     type Acc = i64;
///     type Output = Units;
///     type Params = flumen_sdk::NoParams;
///     fn new(_: Self::Params) -> Result<Self, String> { Ok(UnitsPerSku) }
///     fn create(&self) -> i64 { 0 }
///     fn add(&self, acc: &mut i64, sale: &Sale) { *acc += sale.qty }
///     fn merge(&self, acc: &mut i64, other: i64) { *acc += other }
///     fn finish(&self, sku: &str, window: Window, units: i64) -> Option<Units> {
///         Some(Units { sku: sku.into(), start: window.start, units })
///     }
/// }
///
/// let window = WindowKind::Tumbling { size_ms: 1000 };
/// let mut h = AggregateHarness::<UnitsPerSku>::new(serde_json::json!({}), window).unwrap();
/// h.add("a", Sale { qty: 2 }, 100).unwrap();
/// h.add("a", Sale { qty: 3 }, 999).unwrap();
/// h.add("a", Sale { qty: 1 }, 1000).unwrap();
/// assert!(h.advance(998).unwrap().is_empty());
/// let fired = h.advance(999).unwrap();
/// assert_eq!(fired, vec![serde_json::json!({"sku": "a", "start": 0, "units": 5})]);
/// h.add("a", Sale { qty: 7 }, 10).unwrap(); // its window has fired: late
/// assert_eq!(h.late().len(), 1);
/// ```
pub struct AggregateHarness<A: crate::aggregate::Aggregate> {
    runner: crate::guest::AggregateRunner<A>,
    window: WindowKind,
    watermark: i64,
    /// Each key's open windows and their accumulators, as the runtime stores them.
    open: BTreeMap<String, Vec<(crate::aggregate::Window, Vec<u8>)>>,
    late: Vec<Value>,
}

impl<A: crate::aggregate::Aggregate> AggregateHarness<A> {
    /// Builds the aggregate from `params` (the stage's `params` table as JSON) to run under
    /// `window`.
    pub fn new(params: Value, window: WindowKind) -> Result<Self, String> {
        let request = InitRequest {
            stage: "harness".into(),
            params_json: params.to_string(),
            ports: vec![PortSpec {
                encoding: Encoding::Json,
                key_fields: Vec::new(),
                ts_field: None,
            }],
        };
        let request = bincode::serde::encode_to_vec(&request, abi::BINCODE)
            .map_err(|e| format!("cannot encode init: {e}"))?;
        let mut runner = crate::guest::AggregateRunner::<A>::default();
        let reply = runner.native_call(abi::native::INIT, &request);
        abi::decode_control::<Result<(), String>>(reply)??;
        Ok(AggregateHarness {
            runner,
            window,
            watermark: i64::MIN,
            open: BTreeMap::new(),
            late: Vec::new(),
        })
    }

    /// Adds a record of key `key` at event time `ts` to its windows (a session also merges with
    /// the sessions it touches). A record whose windows have all fired is late: kept in
    /// [`AggregateHarness::late`], as the stage sends it to `late`. An `Err` is what would go to
    /// the dead letters; the windows are then as they were.
    pub fn add(&mut self, key: &str, input: A::Input<'_>, ts: i64) -> Result<(), String> {
        let value = serde_json::to_vec(&input).map_err(|e| format!("cannot encode input: {e}"))?;
        let mut windows: Vec<_> = self.window.assign(ts);
        windows.retain(|w| w.end - 1 > self.watermark);
        if windows.is_empty() {
            let record = serde_json::from_slice(&value).unwrap_or(Value::Null);
            self.late.push(record);
            return Ok(());
        }
        let open = self.open.get(key).cloned().unwrap_or_default();
        let mut kept: Vec<_> = open.clone();
        if let WindowKind::Session { .. } = self.window {
            // The new session joins every session it overlaps, merged into one.
            let mut merged = windows[0];
            let (touching, rest): (Vec<_>, Vec<_>) = kept
                .into_iter()
                .partition(|(w, _)| w.start < merged.end && merged.start < w.end);
            kept = rest;
            for (w, _) in &touching {
                merged.start = merged.start.min(w.start);
                merged.end = merged.end.max(w.end);
            }
            let acc = match touching.len() {
                0 => None,
                1 => Some(touching[0].1.clone()),
                _ => Some(self.merge(key, touching.iter().map(|(_, acc)| acc.as_slice()))?),
            };
            kept.push((merged, acc.unwrap_or_default()));
            windows = vec![merged];
        }
        // One slot per window: its accumulator as stored (none yet: created by the module).
        let mut slots = SlotWriter::default();
        let refs: Vec<u32> = windows
            .iter()
            .map(|w| {
                let stored = kept.iter().find(|(k, _)| k == w).map(|(_, acc)| acc);
                slots.push(
                    key.as_bytes(),
                    stored.filter(|a| !a.is_empty()).map(Vec::as_slice),
                )
            })
            .collect();
        let mut batch = BatchWriter::new(Encoding::Json);
        batch.push_with(key.as_bytes(), ts, &refs, |b| b.extend_from_slice(&value));
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let reply = self.runner.native_call(abi::native::PROCESS, &request);
        for entry in OutputReader::new(reply) {
            match entry.map_err(|e| format!("malformed reply: {e}"))? {
                OutputEntry::Error { message, .. } => return Err(message.to_string()),
                OutputEntry::State { slot, value, .. } => {
                    let window = windows[slot as usize];
                    let acc = value.map(<[u8]>::to_vec).unwrap_or_default();
                    match kept.iter_mut().find(|(w, _)| *w == window) {
                        Some(entry) => entry.1 = acc,
                        None => kept.push((window, acc)),
                    }
                }
                OutputEntry::Record { .. } => return Err("process emitted a record".into()),
            }
        }
        self.open.insert(key.to_string(), kept);
        Ok(())
    }

    /// Merges accumulators of `key` into one (the module's `merge`), as the stored bytes.
    fn merge<'a>(
        &mut self,
        key: &str,
        accs: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Vec<u8>, String> {
        let mut slots = SlotWriter::default();
        let target = slots.push(key.as_bytes(), None);
        let refs: Vec<u32> = std::iter::once(target)
            .chain(accs.map(|acc| slots.push(key.as_bytes(), Some(acc))))
            .collect();
        let mut batch = BatchWriter::new(Encoding::Bincode);
        batch.push_with(key.as_bytes(), 0, &refs, |_| {});
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let reply = self.runner.native_call(abi::native::MERGE, &request);
        let mut merged = None;
        for entry in OutputReader::new(reply) {
            match entry.map_err(|e| format!("malformed reply: {e}"))? {
                OutputEntry::Error { message, .. } => return Err(message.to_string()),
                OutputEntry::State { slot, value, .. } if slot == target => {
                    merged = value.map(<[u8]>::to_vec)
                }
                _ => {}
            }
        }
        merged.ok_or_else(|| "merge returned no accumulator".to_string())
    }

    /// Moves the watermark to `watermark` and returns what the windows it completes emit (the
    /// module's `finish`), by window end, then key; they are then forgotten.
    pub fn advance(&mut self, watermark: i64) -> Result<Vec<Value>, String> {
        self.watermark = self.watermark.max(watermark);
        let mut fired = Vec::new();
        for (key, windows) in &mut self.open {
            windows.retain(|(w, acc)| {
                let done = w.end - 1 <= watermark;
                if done {
                    fired.push((*w, key.clone(), acc.clone()));
                }
                !done
            });
        }
        self.open.retain(|_, windows| !windows.is_empty());
        fired.sort_by(|a, b| (a.0.end, a.0.start, &a.1).cmp(&(b.0.end, b.0.start, &b.1)));
        if fired.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = BatchWriter::new(Encoding::Bincode);
        for (window, key, acc) in &fired {
            batch.push_with(key.as_bytes(), window.end - 1, &[], |b| {
                b.extend_from_slice(&window.start.to_le_bytes());
                b.extend_from_slice(&window.end.to_le_bytes());
                b.extend_from_slice(acc);
            });
        }
        let reply = self
            .runner
            .native_call(abi::native::FINISH, batch.as_bytes());
        let mut out = Vec::new();
        for entry in OutputReader::new(reply) {
            match entry.map_err(|e| format!("malformed reply: {e}"))? {
                OutputEntry::Record { value, .. } => out.push(
                    serde_json::from_slice(value)
                        .map_err(|e| format!("the module wrote a record that is not JSON: {e}"))?,
                ),
                OutputEntry::Error { message, .. } => return Err(message.to_string()),
                OutputEntry::State { .. } => {}
            }
        }
        Ok(out)
    }

    /// Records that came too late for every window they belong to, in order.
    pub fn late(&self) -> &[Value] {
        &self.late
    }

    /// Windows not fired yet, per key: `(start, end)`.
    pub fn open_windows(&self) -> Vec<(String, i64, i64)> {
        self.open
            .iter()
            .flat_map(|(key, windows)| {
                windows
                    .iter()
                    .map(move |(w, _)| (key.clone(), w.start, w.end))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Aggregate, Window};
    use serde_json::json;

    /// Sums its inputs; finishes as `[key, start, end, sum]`.
    struct Sum;

    impl Aggregate for Sum {
        type Input<'a> = i64;
        type Acc = i64;
        type Output = (String, i64, i64, i64);
        type Params = crate::NoParams;

        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Sum)
        }
        fn create(&self) -> i64 {
            0
        }
        fn add(&self, acc: &mut i64, input: &i64) {
            *acc += input;
        }
        fn merge(&self, acc: &mut i64, other: i64) {
            *acc += other;
        }
        fn finish(&self, key: &str, w: Window, acc: i64) -> Option<Self::Output> {
            Some((key.to_string(), w.start, w.end, acc))
        }
    }

    fn harness(window: WindowKind) -> AggregateHarness<Sum> {
        AggregateHarness::<Sum>::new(json!({}), window).unwrap()
    }

    #[test]
    fn sliding_windows_each_get_the_record() {
        let mut h = harness(WindowKind::Sliding {
            size_ms: 30,
            slide_ms: 10,
        });
        h.add("k", 1, 25).unwrap();
        h.add("k", 10, 31).unwrap();
        // 25 is in [0,30), [10,40), [20,50); 31 in [10,40), [20,50), [30,60).
        assert_eq!(h.advance(29).unwrap(), vec![json!(["k", 0, 30, 1])]);
        assert_eq!(
            h.advance(59).unwrap(),
            vec![
                json!(["k", 10, 40, 11]),
                json!(["k", 20, 50, 11]),
                json!(["k", 30, 60, 10])
            ]
        );
        assert!(h.open_windows().is_empty());
    }

    #[test]
    fn sessions_merge_through_the_modules_merge() {
        let mut h = harness(WindowKind::Session { gap_ms: 10 });
        h.add("a", 1, 0).unwrap();
        h.add("a", 2, 15).unwrap();
        h.add("b", 100, 5).unwrap();
        assert_eq!(h.open_windows().len(), 3);
        // 8 bridges [0,10) and [15,25): one session [0,25) of 1 + 2 + 4.
        h.add("a", 4, 8).unwrap();
        assert_eq!(
            h.open_windows(),
            vec![("a".into(), 0, 25), ("b".into(), 5, 15)]
        );
        assert_eq!(h.advance(20).unwrap(), vec![json!(["b", 5, 15, 100])]);
        assert_eq!(h.advance(i64::MAX).unwrap(), vec![json!(["a", 0, 25, 7])]);
        // Everything has fired: a record at 3 is late.
        h.add("a", 1, 3).unwrap();
        assert_eq!(h.late(), &[json!(1)]);
    }
}
