//! Helpers for a UDF's unit tests, which run natively with plain `cargo test`.
//!
//! [`Harness`] drives an operator exactly as the runtime would (parameters from JSON, side
//! outputs, errors); [`Collected`] gives an [`Outputs`] to call a UDF function directly.
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

use crate::operator::{Operator, Outputs, Target};
use serde::Serialize;
use serde_json::Value;

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

    pub(crate) fn push<T: Serialize + ?Sized>(
        &mut self,
        port: usize,
        value: &T,
    ) -> Result<(), String> {
        let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
        match port.checked_sub(1) {
            None => self.main.push(value),
            Some(side) => {
                let name = self.side_names.get(side).cloned().unwrap_or_default();
                self.sides.push((name, value));
            }
        }
        Ok(())
    }
}

/// Runs an operator natively, one record at a time, as the runtime would, keeping its keyed
/// state per key.
pub struct Harness<Op: Operator> {
    op: Op,
    side_names: Vec<String>,
    states: std::collections::BTreeMap<String, Op::State>,
}

impl<Op: Operator> Harness<Op> {
    /// Builds the operator from `params`, the stage's `params` table as JSON (decoded as the
    /// runtime decodes them: an unknown key is an error).
    pub fn new(params: Value) -> Result<Self, String> {
        let params: Op::Params = crate::guest::decode_params(&params.to_string())?;
        Ok(Harness {
            op: Op::new(params)?,
            side_names: Op::side_outputs().into_iter().map(|s| s.name).collect(),
            states: Default::default(),
        })
    }

    /// Processes one unkeyed record; an `Err` is what would go to the dead letters.
    pub fn run(&mut self, input: Op::Input) -> Result<Collected, String> {
        self.run_keyed("", input, 0)
    }

    /// Processes one record of key `key` (its key field's text) with event time `ts`. On `Err`
    /// the key's state is left as it was, as the runtime does.
    pub fn run_keyed(&mut self, key: &str, input: Op::Input, ts: i64) -> Result<Collected, String> {
        let names: Vec<&str> = self.side_names.iter().map(String::as_str).collect();
        let mut collected = Collected::default();
        let state = self.states.entry(key.to_string()).or_default();
        let before = state.clone();
        let mut out = collected.outputs(&names);
        out.ts = ts;
        out.key = key.as_bytes();
        let result = self.op.process(input, state, &mut out);
        if let Some(failure) = result.err().or(out.failure) {
            *state = before;
            return Err(failure);
        }
        Ok(collected)
    }

    /// The state of `key`, as the runtime would store it.
    pub fn state(&self, key: &str) -> Option<&Op::State> {
        self.states.get(key)
    }
}
