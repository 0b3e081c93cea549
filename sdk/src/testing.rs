//! Helpers for a UDF's unit tests, which run natively with plain `cargo test`.
//!
//! [`Harness`] drives an operator through the code its module runs — the runner behind the
//! module's exports, over the batch ABI (parameters from JSON, side outputs, errors, keyed state
//! kept as the runtime keeps it); [`Collected`] gives an [`Outputs`] to call a UDF function
//! directly.
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
    pub fn run(&mut self, input: Op::Input) -> Result<Collected, String> {
        self.run_keyed("", input, 0)
    }

    /// Processes one record of key `key` (its key field's text) with event time `ts`. On `Err`
    /// the key's state is left as it was, as the runtime does.
    pub fn run_keyed(&mut self, key: &str, input: Op::Input, ts: i64) -> Result<Collected, String> {
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
