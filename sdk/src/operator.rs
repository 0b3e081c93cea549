//! The [`Operator`] trait every attribute macro implements, and [`Outputs`], the handle through
//! which an operator writes side outputs.

use crate::abi::{OperatorKind, OutputWriter, PortSpec, SideOutput};
use crate::fields::{self, Extracted, FieldRequest};
use crate::state::KeyedState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An operator as the runtime drives it. The attribute macros ([`map`](crate::map),
/// [`filter`](crate::filter), [`filter_map`](crate::filter_map), [`flat_map`](crate::flat_map))
/// implement it for a struct named after the function (`validate` → `ValidateOperator`); writing
/// it by hand is possible but rarely needed.
///
/// ```
/// use flumen_sdk::{Operator, Outputs, abi::{OperatorKind, SideOutput}, state::NoState};
///
/// struct Double;
///
/// impl Operator for Double {
///     type Input<'a> = i64;
///     type Output = i64;
///     type Params = flumen_sdk::NoParams;
///     type State = NoState;
///     const KIND: OperatorKind = OperatorKind::Map;
///
///     fn side_outputs() -> Vec<SideOutput> {
///         Vec::new()
///     }
///     fn new(_: Self::Params) -> Result<Self, String> {
///         Ok(Double)
///     }
///     fn process(
///         &mut self,
///         input: i64,
///         _: &mut NoState,
///         out: &mut Outputs<'_>,
///     ) -> Result<(), String> {
///         out.emit_main(&(input * 2));
///         Ok(())
///     }
/// }
/// ```
pub trait Operator: Sized + 'static {
    /// What the operator consumes. It may borrow from the record's bytes, which live for the
    /// call: `Order<'a>` with `Cow<'a, str>` fields (`#[serde(borrow)]`) reads its strings in
    /// place instead of allocating them. The host compares `Input<'static>` with what producers
    /// write.
    type Input<'a>: Deserialize<'a> + Serialize;
    /// What its main output carries: the `'static` form of the type, if it borrows (the macros
    /// name it so; the values emitted may borrow from the input).
    type Output: Serialize;
    /// Its parameters, decoded from the stage's TOML `params` table.
    type Params: DeserializeOwned;
    /// Its keyed state ([`NoState`](crate::state::NoState) for a stateless operator).
    type State: KeyedState;
    /// Its kind, reported to the host.
    const KIND: OperatorKind;

    /// Its side outputs, in port order.
    fn side_outputs() -> Vec<SideOutput>;

    /// The shape of [`Self::Output`], which the host compares with what consumers take; `None`
    /// (the default) compares type names only. The macros fill it in wherever the output type
    /// is `Deserialize` too.
    fn output_shape() -> Option<crate::abi::Shape> {
        None
    }

    /// Builds the operator from its parameters.
    fn new(params: Self::Params) -> Result<Self, String>;

    /// Processes one record with its key's state. An `Err` sends the record to the dead letters
    /// and drops whatever it emitted and whatever it changed in the state.
    fn process(
        &mut self,
        input: Self::Input<'_>,
        state: &mut Self::State,
        out: &mut Outputs<'_>,
    ) -> Result<(), String>;
}

/// The parameters of an operator that takes none: any key in its `params` table is an error.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// A port as the guest writes it.
#[derive(Debug, Clone)]
pub(crate) struct Port {
    pub name: String,
    pub spec: PortSpec,
}

/// Where an operator's outputs go: the ABI buffer, or a test's collection.
pub(crate) enum Target<'a> {
    Abi {
        writer: &'a mut OutputWriter,
        ports: &'a [Port],
        extracted: &'a mut Extracted,
    },
    Collect(&'a mut dyn Collector),
}

/// Where a test collects what an operator emits, as JSON values (`testing::Collected`).
pub(crate) trait Collector {
    /// The index among the side outputs of the one named `name`.
    fn side_index(&self, name: &str) -> Option<usize>;
    /// Takes `value`, emitted on `port` (0: main, `i + 1`: side output `i`).
    fn push(&mut self, port: usize, value: serde_json::Value);
}

/// The outputs of the record being processed: the main output (which the macros fill from the
/// function's return value) and the named side outputs declared in the attribute.
///
/// ```
/// # use flumen_sdk::{Outputs, testing::Collected};
/// # let mut collected = Collected::default();
/// # let mut out: Outputs<'_> = collected.outputs(&["rejected"]);
/// out.side("rejected", serde_json::json!({"order_id": 7, "reason": "bad_qty"}));
/// # drop(out);
/// # assert_eq!(collected.side("rejected").len(), 1);
/// ```
pub struct Outputs<'a> {
    pub(crate) target: Target<'a>,
    pub(crate) ts: i64,
    pub(crate) key: &'a [u8],
    pub(crate) index: u32,
    pub(crate) failure: Option<String>,
}

impl Outputs<'_> {
    /// The event time of the record being processed (milliseconds since the Unix epoch).
    pub fn ts(&self) -> i64 {
        self.ts
    }

    /// The key of the record being processed, as text (empty for an unkeyed stage).
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key).unwrap_or_default()
    }

    /// Emits `value` on the side output `name`, which must be declared in the operator's
    /// attribute (`#[filter_map(side(rejected = Reject))]`). An undeclared name, or a value that
    /// cannot be encoded, fails the record.
    pub fn side<T: Serialize>(&mut self, name: &str, value: T) {
        let port = match &self.target {
            Target::Abi { ports, .. } => ports.iter().skip(1).position(|p| p.name == name),
            Target::Collect(collected) => collected.side_index(name),
        };
        match port {
            Some(index) => self.emit(index + 1, &value),
            None => self.fail(format!("no side output named `{name}` is declared")),
        }
    }

    /// Emits `value` on the main output. The attribute macros call this with the function's
    /// result; a hand-written [`Operator`] calls it directly.
    pub fn emit_main<T: Serialize>(&mut self, value: &T) {
        self.emit(0, value);
    }

    fn fail(&mut self, message: String) {
        self.failure.get_or_insert(message);
    }

    fn emit<T: Serialize + ?Sized>(&mut self, port: usize, value: &T) {
        let outcome = match &mut self.target {
            Target::Abi {
                writer,
                ports,
                extracted,
            } => write_record(
                writer,
                &ports[port],
                port,
                self.index,
                self.ts,
                value,
                extracted,
            ),
            Target::Collect(collected) => serde_json::to_value(value)
                .map(|value| collected.push(port, value))
                .map_err(|e| e.to_string()),
        };
        if let Err(message) = outcome {
            self.fail(message);
        }
    }
}

pub(crate) fn write_record<T: Serialize + ?Sized>(
    writer: &mut OutputWriter,
    port: &Port,
    index: usize,
    input_index: u32,
    input_ts: i64,
    value: &T,
    extracted: &mut Extracted,
) -> Result<(), String> {
    let spec = &port.spec;
    let mut ts = input_ts;
    let wants_fields = !spec.key_fields.is_empty() || spec.ts_field.is_some();
    if wants_fields {
        let request = FieldRequest {
            key_fields: &spec.key_fields,
            ts_field: spec.ts_field.as_deref(),
        };
        fields::extract(value, &request, extracted)
            .map_err(|e| format!("output `{}`: {e}", port.name))?;
        ts = extracted.ts.unwrap_or(input_ts);
    }
    let key_count = u8::try_from(spec.key_fields.len()).map_err(|_| "too many key fields")?;
    let mut entry = writer.record(index as u16, input_index, ts, key_count);
    if wants_fields {
        for key in &extracted.keys {
            entry.key(|buf| buf.extend_from_slice(key));
        }
    }
    entry.value(|buf| crate::codec::encode_into(spec.encoding, value, buf))
}
