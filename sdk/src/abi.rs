//! The host ↔ guest ABI, in one place for both sides.
//!
//! A flumen module is a core WebAssembly module (no WASI, no component model). The host talks to
//! it through a handful of exports, always one call per **batch** of records, and offers it the
//! imports named in [`imports`] and nothing else. Control messages ([`Describe`], [`InitRequest`])
//! are bincode; record batches use the small fixed-width framing defined here, so that either side
//! can walk a batch without allocating and the host can bounds-check every length a guest returns.
//!
//! Calling convention: the host asks for an input buffer of `len` bytes with
//! [`exports::INPUT`] (`(len: i32) -> ptr: i32`), writes the request there, then calls
//! [`exports::INIT`], [`exports::PROCESS`] or [`exports::TO_JSON`] with `len`. Every call that
//! returns data returns an `i64` packing `ptr << 32 | len` of a buffer owned by the guest, valid
//! until the next call.
//!
//! Input batch framing (little-endian, fixed width):
//! `encoding: u8, count: u32, records_len: u32` (the bytes of the records that follow, so the
//! slot section is found without walking them), then per record
//! `key_len: u32, key, ts: i64, slot_count: u16, slot: u32 *, value_len: u32, value` (a value
//! in the batch's [`Encoding`]), then, optionally, the **state slots** the records refer to:
//! `slot_count: u32`, then per slot `id_len: u32, id, present: u8, value_len: u32, value`.
//! A slot is host-owned state lent to the guest for one call: the keyed state of a record's key
//! (a `process` operator: one slot per record), or the accumulators of the windows a record
//! belongs to (an `aggregate`).
//!
//! Output framing: a sequence of entries, each starting with a tag byte:
//! - [`TAG_RECORD`]: `port: u16, input_index: u32, ts: i64, key_count: u8, (len: u32, key)*,
//!   value_len: u32, value` — `input_index` is the input record it came from, so that the host can
//!   keep arrival order when it merges the outputs of several partitions
//! - [`TAG_ERROR`]: `input_index: u32, message_len: u32, message, raw_len: u32, raw`
//! - [`TAG_STATE`]: `slot: u32, present: u8, value_len: u32, value` — the new content of a slot
//!   (absent: cleared); the host applies it only if the whole call succeeded.
//!
//! where `raw` is the failed input rendered as text (the input itself when it was JSON).

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of anything in this module.
pub const ABI_VERSION: u32 = 8;

/// The names of the functions a flumen module exports.
pub mod exports {
    /// `() -> i64`: a bincode [`Describe`](super::Describe).
    pub const DESCRIBE: &str = "flumen_describe";
    /// `(len: i32) -> i32`: a buffer of at least `len` bytes for the next request.
    pub const INPUT: &str = "flumen_input";
    /// `(len: i32) -> i64`: takes a bincode [`InitRequest`](super::InitRequest), returns a
    /// bincode `Result<(), String>`.
    pub const INIT: &str = "flumen_init";
    /// `(len: i32) -> i64`: takes an input batch, returns output entries. For an aggregate:
    /// adds each record to the accumulator in each slot it names.
    pub const PROCESS: &str = "flumen_process";
    /// `(len: i32) -> i64`, aggregates only: for each record, merges the accumulators of its
    /// slots `1..` into its slot 0 (session windows merging).
    pub const MERGE: &str = "flumen_merge";
    /// `(len: i32) -> i64`, aggregates only: each record is a fired window (key: the window's
    /// key; value: `start: i64, end: i64`, then the accumulator); returns the results on port 0.
    /// A sliding window kept as panes names its panes' slots instead, in order, and its value
    /// holds a `token: u64` and the pane's `end: i64` per slot after the bounds: its
    /// accumulator is the merge of those slots, later ones merged into earlier ones, nested by
    /// the panes' positions alone (the SDK: a suffix of a block of the window's size, then a
    /// prefix of the next). A token names one value of one pane for the life of the process, so
    /// a module may keep the panes it decoded, and merges of runs of them, by token (token 0
    /// names nothing).
    pub const FINISH: &str = "flumen_finish";
    /// `(len: i32) -> i64`: takes an input batch, returns each record re-encoded as JSON on port 0
    /// (or an error entry), without running the operator.
    pub const TO_JSON: &str = "flumen_to_json";
    /// The module's linear memory.
    pub const MEMORY: &str = "memory";
}

/// The native form of a module (the same UDF crate built for the host, loaded as a shared
/// library): the limit Wasm is measured against, and a way to debug a UDF natively. Exports
/// `flumen_native_new() -> *mut c_void` (a runner), `flumen_native_free(runner)`, and
/// `flumen_native_call(runner, call, ptr, len, out_ptr, out_len) -> i32` with `call` one of the
/// codes below and the request/reply as in the Wasm calls; it returns [`native::OK`], or
/// [`native::PANICKED`] with the panic message as the reply.
pub mod native {
    /// `describe`.
    pub const DESCRIBE: u32 = 0;
    /// `init`.
    pub const INIT: u32 = 1;
    /// `process`.
    pub const PROCESS: u32 = 2;
    /// `merge` (aggregates).
    pub const MERGE: u32 = 3;
    /// `finish` (aggregates).
    pub const FINISH: u32 = 4;
    /// `to_json`.
    pub const TO_JSON: u32 = 5;
    /// The call completed.
    pub const OK: i32 = 0;
    /// The UDF panicked; the reply is the message.
    pub const PANICKED: i32 = 1;
}

/// What the host offers a module: module name [`imports::MODULE`], these functions only.
pub mod imports {
    /// The import module name of every host function.
    pub const MODULE: &str = "flumen";
    /// `(ptr: i32, len: i32)`: the UTF-8 message of a panic about to trap.
    pub const PANIC: &str = "panic";
    /// `(level: i32, ptr: i32, len: i32)`: a UTF-8 log line at [`super::LogLevel`] `level`.
    pub const LOG: &str = "log";
    /// Every function the host provides, for the loader's import check.
    pub const ALL: &[&str] = &[PANIC, LOG];
}

/// How important a UDF's log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Worth knowing.
    Info = 3,
    /// Detail, shown with `FLUMEN_LOG=debug`.
    Debug = 4,
}

impl LogLevel {
    /// The level numbered `n` (what crosses the boundary); an unknown number is `Debug`.
    pub fn from_u32(n: u32) -> Self {
        match n {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            _ => LogLevel::Debug,
        }
    }
}

/// The bincode configuration of everything that crosses the boundary: fixed-width integers are
/// several times cheaper to encode and decode than varints.
pub const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
> = bincode::config::standard().with_fixed_int_encoding();

/// The largest control reply (`describe`, `init`) a host accepts, in bytes. Lengths claimed
/// inside it are checked against this before anything is allocated.
pub const MAX_CONTROL_REPLY: usize = 1 << 20;

/// The most side outputs a module may declare.
pub const MAX_SIDE_OUTPUTS: usize = 64;

/// The longest type or port name a module may declare, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Decodes a control message (`describe`'s or `init`'s reply, an init request) from untrusted
/// bytes: at most [`MAX_CONTROL_REPLY`] of them, every claimed length checked against that limit
/// before anything is allocated, and nothing left over.
pub fn decode_control<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_CONTROL_REPLY {
        return Err(format!(
            "{} bytes, more than the {MAX_CONTROL_REPLY} a control reply may have",
            bytes.len()
        ));
    }
    let config = BINCODE.with_limit::<MAX_CONTROL_REPLY>();
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config).map_err(|e| match e {
            bincode::error::DecodeError::LimitExceeded => {
                "a length in it is larger than the whole reply".to_string()
            }
            e => e.to_string(),
        })?;
    if used != bytes.len() {
        return Err(format!("{} bytes left over", bytes.len() - used));
    }
    Ok(value)
}

/// What kind of operator a module implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorKind {
    /// One output per input.
    Map,
    /// The input, or nothing.
    Filter,
    /// One output or none per input.
    FilterMap,
    /// Any number of outputs per input.
    FlatMap,
    /// Any number of outputs per input, with keyed state.
    Process,
    /// A window aggregate: create / add / merge / finish.
    Aggregate,
}

impl OperatorKind {
    /// The name used in TOML and the attribute macros.
    pub fn name(self) -> &'static str {
        match self {
            OperatorKind::Map => "map",
            OperatorKind::Filter => "filter",
            OperatorKind::FilterMap => "filter_map",
            OperatorKind::FlatMap => "flat_map",
            OperatorKind::Process => "process",
            OperatorKind::Aggregate => "aggregate",
        }
    }
}

/// A module's self-description, returned by [`exports::DESCRIBE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Describe {
    /// Must equal the host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// The operator kind.
    pub kind: OperatorKind,
    /// The type the operator consumes.
    pub input_type: String,
    /// The type on its main output.
    pub output_type: String,
    /// Named side outputs; port `i + 1` is `side_outputs[i]`, port 0 is the main output.
    pub side_outputs: Vec<SideOutput>,
    /// The type of its keyed state (a `process`) or accumulator (an `aggregate`).
    pub state_type: Option<String>,
    /// The shape of the input type, if the SDK could trace it.
    pub input_shape: Option<Shape>,
    /// The shape of the main output's type, if the SDK could trace it.
    pub output_shape: Option<Shape>,
}

/// A named side output and its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideOutput {
    /// The port name, as in `inputs = ["validate.rejected"]`.
    pub name: String,
    /// The type of its records.
    pub type_name: String,
    /// Its shape, if the SDK could trace it.
    pub shape: Option<Shape>,
}

/// The shape of a type as its values travel in bincode between stages: what the host compares
/// along an edge, since bincode is positional and two types with the same name but fields in
/// another order would swap values silently. A flat list of nodes, the root first, children by
/// index (so decoding it never recurses, and recursive types are cycles).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// The nodes; the root is the first.
    pub nodes: Vec<ShapeNode>,
    /// Of an output type: whether the type's JSON is what [`crate::render::JsonShape`] writes
    /// from a value's bincode by these nodes, as the SDK checked on sample values
    /// ([`crate::render::vouch`]); a port of such a type that a sink reads travels in bincode,
    /// and the host writes the JSON. Of an input type: whether serde_json reads the type as
    /// [`crate::transcode::Transcoder`] reads its JSON into bincode, as the SDK checked
    /// ([`crate::transcode::vouch_reading`]); the module then takes [`Encoding::Parsed`]
    /// batches.
    pub json: bool,
}

/// One node of a [`Shape`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeNode {
    /// What the node is.
    pub kind: ShapeKind,
    /// A container's type name (structs, enums), a variant's name, or an opaque type's name.
    pub name: String,
    /// Child nodes: a struct's fields and an enum's variants by name, others by position.
    pub children: Vec<(String, u32)>,
}

/// What a [`ShapeNode`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShapeKind {
    /// `()`.
    Unit,
    /// `bool`.
    Bool,
    /// `i8`.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `i128`.
    I128,
    /// `u8`.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// `u128`.
    U128,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
    /// `char`.
    Char,
    /// A string.
    Str,
    /// A byte string.
    Bytes,
    /// `Option<child>`.
    Option,
    /// A sequence of its child.
    Seq,
    /// A map from its first child to its second.
    Map,
    /// A tuple of its children.
    Tuple,
    /// An array of this many of its child.
    Array(u64),
    /// A struct without fields.
    UnitStruct,
    /// A struct with one unnamed field.
    NewType,
    /// A struct with unnamed fields (its children).
    TupleStruct,
    /// A struct with named fields (its children, in order).
    Struct,
    /// An enum (its children are its variants, in index order).
    Enum,
    /// An enum variant without fields.
    UnitVariant,
    /// An enum variant with one unnamed field.
    NewTypeVariant,
    /// An enum variant with unnamed fields.
    TupleVariant,
    /// An enum variant with named fields.
    StructVariant,
    /// A type the SDK could not trace (self-describing serde features such as untagged enums or
    /// `serde_json::Value`): compared by name.
    Opaque,
}

/// How the values of a batch or an output port are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Encoding {
    /// bincode with [`BINCODE`]: between operators.
    Bincode = 0,
    /// One JSON document per value: from sources, to sinks.
    Json = 1,
    /// JSON read by the host (input batches only, to a module whose input shape is vouched
    /// for reading): each value is `bincode_len: u32`, then, unless it is `u32::MAX`, that many
    /// bytes of the value in bincode by the input type's shape, then the JSON text. A value the
    /// host could not read has only the text, which the module decodes itself.
    Parsed = 2,
}

/// The parts of a value in a [`Encoding::Parsed`] batch: its bincode, if the host read it, and
/// its JSON text; `None` if the value is shorter than its length says.
pub fn parsed_parts(value: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let (len, rest) = value.split_first_chunk::<4>()?;
    match u32::from_le_bytes(*len) {
        u32::MAX => Some((None, rest)),
        len => {
            let (bincode, text) = rest.split_at_checked(len as usize)?;
            Some((Some(bincode), text))
        }
    }
}

/// The JSON text of a value in `encoding`, where it has one (not in bincode). A
/// [`Encoding::Parsed`] value shorter than its length says is taken as text whole.
pub fn json_text(encoding: Encoding, value: &[u8]) -> Option<&[u8]> {
    match encoding {
        Encoding::Json => Some(value),
        Encoding::Parsed => Some(parsed_parts(value).map_or(value, |(_, text)| text)),
        Encoding::Bincode => None,
    }
}

/// Appends a [`Encoding::Parsed`] value to `buf`: `bincode` (what the host read, if any), then
/// `text`.
pub fn put_parsed(buf: &mut Vec<u8>, bincode: Option<&[u8]>, text: &[u8]) {
    match bincode.filter(|b| b.len() < u32::MAX as usize) {
        Some(bincode) => {
            buf.extend_from_slice(&(bincode.len() as u32).to_le_bytes());
            buf.extend_from_slice(bincode);
        }
        None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    buf.extend_from_slice(text);
}

impl Encoding {
    fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Encoding::Bincode),
            1 => Some(Encoding::Json),
            2 => Some(Encoding::Parsed),
            _ => None,
        }
    }
}

/// How an output port must be written: its encoding, and which fields of each value fill the
/// record's keys and event time for the stages that consume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// The encoding its consumers need.
    pub encoding: Encoding,
    /// Top-level fields to extract as keys, in this order.
    pub key_fields: Vec<String>,
    /// A top-level integer field to use as event time; `None` keeps the input's.
    pub ts_field: Option<String>,
}

impl Default for PortSpec {
    fn default() -> Self {
        PortSpec {
            encoding: Encoding::Bincode,
            key_fields: Vec::new(),
            ts_field: None,
        }
    }
}

/// Sent to [`exports::INIT`] before any batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    /// The stage's name in the pipeline, for messages.
    pub stage: String,
    /// The stage's `params` table, as JSON.
    pub params_json: String,
    /// One entry per port: main first, then the side outputs in [`Describe`] order.
    pub ports: Vec<PortSpec>,
}

/// The tag of a record entry in an output buffer.
pub const TAG_RECORD: u8 = 0;
/// The tag of an error entry in an output buffer.
pub const TAG_ERROR: u8 = 1;
/// The tag of a state entry in an output buffer.
pub const TAG_STATE: u8 = 2;

/// A framing error: a buffer that is shorter than its lengths say, or holds an unknown tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub &'static str);

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed batch: {}", self.0)
    }
}

impl std::error::Error for FrameError {}

/// A bounds-checked reader over a byte slice.
#[derive(Debug, Clone)]
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, FrameError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }

    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], FrameError> {
        let len = self.u32(what)? as usize;
        self.take(len, what)
    }
}

/// One record of an input batch, borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's key for the consuming stage (empty when unkeyed).
    pub key: &'a [u8],
    /// Event time, milliseconds since the Unix epoch.
    pub ts: i64,
    /// The state slots the record refers to.
    pub slots: SlotRefs<'a>,
    /// The encoded value.
    pub value: &'a [u8],
}

/// The slot numbers of a record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotRefs<'a> {
    bytes: &'a [u8],
}

impl SlotRefs<'_> {
    /// How many slots.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Slot number `i`.
    pub fn get(&self, i: usize) -> Option<u32> {
        let bytes = self.bytes.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Every slot number, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// One state slot of an input batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRef<'a> {
    /// What the slot holds the state of (a key, a window), for the guest's information.
    pub id: &'a [u8],
    /// The slot's content; `None` when there is no state yet.
    pub value: Option<&'a [u8]>,
}

/// Writes an input batch. Reuse one writer with [`BatchWriter::clear`] to avoid allocating.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    /// An empty batch of values in `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        let mut writer = BatchWriter {
            buf: Vec::new(),
            count: 0,
        };
        writer.clear(encoding);
        writer
    }

    /// Empties the batch, keeping its allocation.
    pub fn clear(&mut self, encoding: Encoding) {
        self.buf.clear();
        self.buf.push(encoding as u8);
        self.buf.extend_from_slice(&[0; 8]);
        self.count = 0;
    }

    /// Appends a record.
    pub fn push(&mut self, key: &[u8], ts: i64, value: &[u8]) {
        self.push_with(key, ts, &[], |buf| buf.extend_from_slice(value));
    }

    /// Appends a record referring to `slots`, whose value `write_value` appends to the buffer it
    /// is given.
    pub fn push_with(
        &mut self,
        key: &[u8],
        ts: i64,
        slots: &[u32],
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        put_bytes(&mut self.buf, key);
        self.buf.extend_from_slice(&ts.to_le_bytes());
        let slot_count = u16::try_from(slots.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&slot_count.to_le_bytes());
        for slot in &slots[..slot_count as usize] {
            self.buf.extend_from_slice(&slot.to_le_bytes());
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        write_value(&mut self.buf);
        patch_len(&mut self.buf, at);
        self.count += 1;
        self.buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        let records_len = u32::try_from(self.buf.len() - BATCH_HEADER).unwrap_or(u32::MAX);
        self.buf[5..9].copy_from_slice(&records_len.to_le_bytes());
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded batch.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Writes the state-slot section that follows a batch's records. Reuse one writer with
/// [`SlotWriter::clear`].
#[derive(Debug, Clone)]
pub struct SlotWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for SlotWriter {
    fn default() -> Self {
        let mut writer = SlotWriter {
            buf: Vec::new(),
            count: 0,
        };
        writer.clear();
        writer
    }
}

impl SlotWriter {
    /// Empties the section, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.count = 0;
    }

    /// Appends a slot and returns its number.
    pub fn push(&mut self, id: &[u8], value: Option<&[u8]>) -> u32 {
        put_bytes(&mut self.buf, id);
        self.buf.push(u8::from(value.is_some()));
        put_bytes(&mut self.buf, value.unwrap_or_default());
        self.count += 1;
        self.buf[0..4].copy_from_slice(&self.count.to_le_bytes());
        self.count - 1
    }

    /// How many slots.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded section, to send right after a batch's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&bytes[..len as usize]);
}

/// Writes the length of everything after the 4-byte slot at `at` into that slot.
fn patch_len(buf: &mut [u8], at: usize) {
    let len = u32::try_from(buf.len() - at - 4).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The bytes before a batch's first record: encoding, count, records' length.
const BATCH_HEADER: usize = 9;

/// Reads an input batch written by [`BatchWriter`].
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    encoding: Encoding,
    remaining: u32,
    /// The records not read yet.
    cursor: Cursor<'a>,
    /// What follows the records: the slot section, if any.
    after: &'a [u8],
}

impl<'a> BatchReader<'a> {
    /// Reads the batch header.
    pub fn new(buf: &'a [u8]) -> Result<Self, FrameError> {
        let mut cursor = Cursor { buf };
        let encoding =
            Encoding::from_u8(cursor.u8("batch header")?).ok_or(FrameError("unknown encoding"))?;
        let remaining = cursor.u32("batch header")?;
        let records_len = cursor.u32("batch header")? as usize;
        let records = cursor.take(records_len, "batch records")?;
        Ok(BatchReader {
            encoding,
            remaining,
            cursor: Cursor { buf: records },
            after: cursor.buf,
        })
    }

    /// The encoding of every value in the batch.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// How many records are left to read.
    pub fn remaining(&self) -> usize {
        self.remaining as usize
    }

    /// The state slots that follow the records (none if the batch has no slot section).
    pub fn slots(&self) -> Result<Vec<SlotRef<'a>>, FrameError> {
        let mut cursor = Cursor { buf: self.after };
        if cursor.buf.is_empty() {
            return Ok(Vec::new());
        }
        let count = cursor.u32("slot count")?;
        let mut slots = Vec::with_capacity((count as usize).min(cursor.buf.len() / 9));
        for _ in 0..count {
            let id = cursor.bytes("slot id")?;
            let present = cursor.u8("slot presence")? != 0;
            let value = cursor.bytes("slot value")?;
            slots.push(SlotRef {
                id,
                value: present.then_some(value),
            });
        }
        Ok(slots)
    }
}

impl<'a> Iterator for BatchReader<'a> {
    type Item = Result<RecordRef<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let record = (|| {
            let key = self.cursor.bytes("record key")?;
            let ts = self.cursor.i64("record ts")?;
            let slot_count = self.cursor.u16("record slots")? as usize;
            let slots = SlotRefs {
                bytes: self.cursor.take(slot_count * 4, "record slots")?,
            };
            let value = self.cursor.bytes("record value")?;
            Ok(RecordRef {
                key,
                ts,
                slots,
                value,
            })
        })();
        if record.is_err() {
            self.remaining = 0;
        }
        Some(record)
    }
}

/// Writes output entries. Reuse one writer with [`OutputWriter::clear`] to avoid allocating.
#[derive(Debug, Clone, Default)]
pub struct OutputWriter {
    buf: Vec<u8>,
}

/// A position in an [`OutputWriter`] to roll back to.
#[derive(Debug, Clone, Copy)]
pub struct Mark(usize);

impl OutputWriter {
    /// Empties the buffer, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// The current position, to [`OutputWriter::rollback`] to if a record fails half-way.
    pub fn mark(&self) -> Mark {
        Mark(self.buf.len())
    }

    /// Drops everything written since `mark`.
    pub fn rollback(&mut self, mark: Mark) {
        self.buf.truncate(mark.0);
    }

    /// Starts a record entry; append keys with [`RecordEntry::key`], then finish it with
    /// [`RecordEntry::value`].
    pub fn record(
        &mut self,
        port: u16,
        input_index: u32,
        ts: i64,
        key_count: u8,
    ) -> RecordEntry<'_> {
        self.buf.push(TAG_RECORD);
        self.buf.extend_from_slice(&port.to_le_bytes());
        self.buf.extend_from_slice(&input_index.to_le_bytes());
        self.buf.extend_from_slice(&ts.to_le_bytes());
        self.buf.push(key_count);
        RecordEntry { buf: &mut self.buf }
    }

    /// Takes the encoded entries out, leaving the writer empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Appends entries already encoded by another writer.
    pub fn append_encoded(&mut self, entries: &[u8]) {
        self.buf.extend_from_slice(entries);
    }

    /// Appends an error entry for input record `input_index`.
    pub fn error(&mut self, input_index: u32, message: &str, raw: &[u8]) {
        self.buf.push(TAG_ERROR);
        self.buf.extend_from_slice(&input_index.to_le_bytes());
        put_bytes(&mut self.buf, message.as_bytes());
        put_bytes(&mut self.buf, raw);
    }

    /// Appends a state entry: slot `slot` now holds what `write_value` appends (or nothing).
    pub fn state<E>(
        &mut self,
        slot: u32,
        write_value: Option<impl FnOnce(&mut Vec<u8>) -> Result<(), E>>,
    ) -> Result<(), E> {
        self.buf.push(TAG_STATE);
        self.buf.extend_from_slice(&slot.to_le_bytes());
        self.buf.push(u8::from(write_value.is_some()));
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        if let Some(write_value) = write_value {
            write_value(&mut self.buf)?;
        }
        patch_len(&mut self.buf, at);
        Ok(())
    }

    /// The encoded entries.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// A record entry being written.
#[derive(Debug)]
pub struct RecordEntry<'a> {
    buf: &'a mut Vec<u8>,
}

impl RecordEntry<'_> {
    /// Appends a key whose bytes `write_key` appends to the buffer it is given.
    pub fn key(&mut self, write_key: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        write_key(self.buf);
        patch_len(self.buf, at);
    }

    /// Writes the value through `write_value` and completes the entry.
    pub fn value<E>(
        self,
        write_value: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        write_value(self.buf)?;
        patch_len(self.buf, at);
        Ok(())
    }
}

/// One entry of an output buffer, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEntry<'a> {
    /// A record emitted on `port`.
    Record {
        /// Port index: 0 is main, `i + 1` is side output `i`.
        port: u16,
        /// The input record it came from.
        input_index: u32,
        /// Event time.
        ts: i64,
        /// The keys asked for by the port's [`PortSpec::key_fields`], in order.
        keys: Keys<'a>,
        /// The encoded value.
        value: &'a [u8],
    },
    /// State slot `slot` now holds `value` (`None`: cleared).
    State {
        /// The slot number in the input batch.
        slot: u32,
        /// Its new content.
        value: Option<&'a [u8]>,
    },
    /// Input record `input_index` failed.
    Error {
        /// Index of the failed record in the input batch.
        input_index: u32,
        /// What went wrong.
        message: &'a str,
        /// The failed input as text.
        raw: &'a [u8],
    },
}

/// The keys of a record entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys<'a> {
    count: u8,
    buf: &'a [u8],
}

impl<'a> Keys<'a> {
    /// Key number `index`, if the entry has one.
    pub fn get(&self, index: usize) -> Option<&'a [u8]> {
        let mut cursor = Cursor { buf: self.buf };
        for _ in 0..index.min(self.count as usize) {
            cursor.bytes("key").ok()?;
        }
        if index >= self.count as usize {
            return None;
        }
        cursor.bytes("key").ok()
    }

    /// How many keys the entry has.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the entry has no key.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Reads the entries of an output buffer; every length is checked against the buffer.
#[derive(Debug, Clone)]
pub struct OutputReader<'a> {
    cursor: Cursor<'a>,
}

impl<'a> OutputReader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        OutputReader {
            cursor: Cursor { buf },
        }
    }

    fn entry(&mut self) -> Result<OutputEntry<'a>, FrameError> {
        match self.cursor.u8("entry tag")? {
            TAG_RECORD => {
                // The fixed part in one bounds check: port, input index, ts, key count.
                let head = self
                    .cursor
                    .array::<15>("record header (port, index, ts, key count)")?;
                let port = u16::from_le_bytes([head[0], head[1]]);
                let input_index = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
                let ts = i64::from_le_bytes([
                    head[6], head[7], head[8], head[9], head[10], head[11], head[12], head[13],
                ]);
                let count = head[14];
                let start = self.cursor.buf;
                for _ in 0..count {
                    self.cursor.bytes("record key")?;
                }
                let keys_len = start.len() - self.cursor.buf.len();
                let keys = Keys {
                    count,
                    buf: &start[..keys_len],
                };
                let value = self.cursor.bytes("record value")?;
                Ok(OutputEntry::Record {
                    port,
                    input_index,
                    ts,
                    keys,
                    value,
                })
            }
            TAG_ERROR => {
                let input_index = self.cursor.u32("error index")?;
                let message = std::str::from_utf8(self.cursor.bytes("error message")?)
                    .map_err(|_| FrameError("error message is not UTF-8"))?;
                let raw = self.cursor.bytes("error raw")?;
                Ok(OutputEntry::Error {
                    input_index,
                    message,
                    raw,
                })
            }
            TAG_STATE => {
                let slot = self.cursor.u32("state slot")?;
                let present = self.cursor.u8("state presence")? != 0;
                let value = self.cursor.bytes("state value")?;
                Ok(OutputEntry::State {
                    slot,
                    value: present.then_some(value),
                })
            }
            _ => Err(FrameError("unknown entry tag")),
        }
    }
}

impl<'a> Iterator for OutputReader<'a> {
    type Item = Result<OutputEntry<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cursor.buf.is_empty() {
            return None;
        }
        let entry = self.entry();
        if entry.is_err() {
            self.cursor.buf = &[];
        }
        Some(entry)
    }
}

/// Packs a guest buffer into the `i64` returned by the exports.
pub fn pack(ptr: u32, len: u32) -> u64 {
    (u64::from(ptr) << 32) | u64::from(len)
}

/// Splits what [`pack`] packed.
pub fn unpack(packed: u64) -> (u32, u32) {
    ((packed >> 32) as u32, packed as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_records_in_order() {
        let mut writer = BatchWriter::new(Encoding::Json);
        writer.push(b"k1", -5, b"{\"a\":1}");
        writer.push(b"", i64::MAX, b"");
        let reader = BatchReader::new(writer.as_bytes()).unwrap();
        assert_eq!(reader.encoding(), Encoding::Json);
        assert_eq!(reader.remaining(), 2);
        let records: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].key, records[0].ts, records[0].value),
            (&b"k1"[..], -5, &b"{\"a\":1}"[..])
        );
        assert_eq!(
            (records[1].key, records[1].ts, records[1].value),
            (&b""[..], i64::MAX, &b""[..])
        );
        assert!(records[0].slots.is_empty());
    }

    #[test]
    fn batches_carry_slot_references_and_a_slot_section() {
        let mut writer = BatchWriter::new(Encoding::Bincode);
        writer.push_with(b"a", 1, &[1, 0], |b| b.push(7));
        writer.push(b"b", 2, b"x");
        let mut slots = SlotWriter::default();
        assert_eq!(slots.push(b"key-a", Some(b"state")), 0);
        assert_eq!(slots.push(b"window", None), 1);
        let mut bytes = writer.as_bytes().to_vec();
        bytes.extend_from_slice(slots.as_bytes());
        let reader = BatchReader::new(&bytes).unwrap();
        let section = reader.slots().unwrap();
        assert_eq!(
            section,
            vec![
                SlotRef {
                    id: b"key-a",
                    value: Some(b"state")
                },
                SlotRef {
                    id: b"window",
                    value: None
                },
            ]
        );
        let records: Vec<_> = reader.map(Result::unwrap).collect();
        assert_eq!(records[0].slots.iter().collect::<Vec<_>>(), vec![1, 0]);
        assert_eq!(records[0].value, &[7]);
        assert_eq!(records[1].value, b"x");
        assert!(
            BatchReader::new(writer.as_bytes())
                .unwrap()
                .slots()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn truncated_batch_is_an_error_not_a_panic() {
        let mut writer = BatchWriter::new(Encoding::Bincode);
        writer.push(b"key", 1, b"value");
        let bytes = writer.as_bytes();
        for cut in 0..bytes.len() {
            let outcome: Result<Vec<_>, _> =
                BatchReader::new(&bytes[..cut]).and_then(|reader| reader.collect());
            assert!(outcome.is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn records_never_run_into_the_slot_section() {
        let mut writer = BatchWriter::new(Encoding::Bincode);
        writer.push(b"key", 1, b"value");
        let mut slots = SlotWriter::default();
        slots.push(b"key", Some(b"state"));
        let mut bytes = writer.as_bytes().to_vec();
        bytes.extend_from_slice(slots.as_bytes());
        // A header that cuts the records short: their last bytes are not read from the slots.
        let short = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) - 1;
        bytes[5..9].copy_from_slice(&short.to_le_bytes());
        let reader = BatchReader::new(&bytes).unwrap();
        let records: Result<Vec<_>, _> = reader.collect();
        assert!(records.is_err());
    }

    #[test]
    fn output_entries_round_trip_and_roll_back() {
        let mut writer = OutputWriter::default();
        let mut entry = writer.record(2, 0, 7, 2);
        entry.key(|b| b.extend_from_slice(b"a"));
        entry.key(|b| b.extend_from_slice(b"bc"));
        entry
            .value(|b| {
                b.extend_from_slice(b"v");
                Ok::<_, ()>(())
            })
            .unwrap();
        let mark = writer.mark();
        writer
            .record(0, 1, 1, 0)
            .value(|b| {
                b.push(1);
                Ok::<_, ()>(())
            })
            .unwrap();
        writer.rollback(mark);
        writer.error(3, "bad", b"raw");
        writer
            .state(
                4,
                Some(|b: &mut Vec<u8>| {
                    b.push(9);
                    Ok::<_, ()>(())
                }),
            )
            .unwrap();
        writer
            .state(5, None::<fn(&mut Vec<u8>) -> Result<(), ()>>)
            .unwrap();
        let entries: Vec<_> = OutputReader::new(writer.as_bytes())
            .map(Result::unwrap)
            .collect();
        assert_eq!(entries.len(), 4);
        assert_eq!(
            entries[2],
            OutputEntry::State {
                slot: 4,
                value: Some(&[9][..])
            }
        );
        assert_eq!(
            entries[3],
            OutputEntry::State {
                slot: 5,
                value: None
            }
        );
        match &entries[0] {
            OutputEntry::Record {
                port,
                ts,
                keys,
                value,
                ..
            } => {
                assert_eq!((*port, *ts, *value), (2, 7, &b"v"[..]));
                assert_eq!(keys.get(0), Some(&b"a"[..]));
                assert_eq!(keys.get(1), Some(&b"bc"[..]));
                assert_eq!(keys.get(2), None);
            }
            other => panic!("expected a record, got {other:?}"),
        }
        assert_eq!(
            entries[1],
            OutputEntry::Error {
                input_index: 3,
                message: "bad",
                raw: b"raw"
            }
        );
    }

    #[test]
    fn garbage_output_is_an_error_not_a_panic() {
        let garbage = [0u8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3, 255, 255, 255, 255];
        let entries: Vec<_> = OutputReader::new(&garbage).collect();
        assert!(entries.last().unwrap().is_err());
        assert!(OutputReader::new(&[9]).next().unwrap().is_err());
    }

    #[test]
    fn pack_round_trips() {
        assert_eq!(unpack(pack(0xdead_beef, 17)), (0xdead_beef, 17));
    }
}
