//! The guest side of the ABI: [`Runner`] turns the host's requests into [`Operator`] calls, and
//! [`export!`](crate::export) wires a runner to the module's exports. The runner is plain Rust, so
//! the same code runs inside Wasm and natively.

use crate::abi::{
    self, ABI_VERSION, BatchReader, Describe, Encoding, InitRequest, OperatorKind, OutputWriter,
    SlotRef,
};
use crate::aggregate::{Aggregate, Window};
use crate::codec;
use crate::fields::Extracted;
use crate::operator::{Operator, Outputs, Port, Target};
use crate::state::KeyedState;
use serde::Deserialize;
use serde::de::DeserializeOwned;

mod aggregate;
mod runner;

pub use aggregate::AggregateRunner;
pub use runner::Runner;

/// The description of `Op` that [`abi::exports::DESCRIBE`] returns.
pub fn describe<Op: Operator>() -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind: Op::KIND,
        input_type: crate::type_name::<Op::Input<'static>>(),
        output_type: crate::type_name::<Op::Output>(),
        side_outputs: Op::side_outputs(),
        state_type: (Op::KIND == OperatorKind::Process).then(<Op::State as KeyedState>::type_name),
        input_shape: reading::<Op::Input<'static>>(),
        output_shape: Op::output_shape(),
    }
}

/// The traced shape of an input type, marked [`abi::Shape::json`] where serde_json reads it as
/// the host's [`crate::transcode::Transcoder`] does.
fn reading<T: serde::Serialize + Deserialize<'static>>() -> Option<abi::Shape> {
    crate::shape::of::<T>().map(|mut shape| {
        shape.json = crate::transcode::vouch_reading::<T>(&shape);
        shape
    })
}

/// The description of aggregate `A`.
pub fn describe_aggregate<A: Aggregate>() -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind: OperatorKind::Aggregate,
        input_type: crate::type_name::<A::Input<'static>>(),
        output_type: crate::type_name::<A::Output>(),
        side_outputs: Vec::new(),
        state_type: Some(crate::type_name::<A::Acc>()),
        input_shape: reading::<A::Input<'static>>(),
        output_shape: A::output_shape(),
    }
}

/// What every runner keeps: its request and reply buffers, reused from call to call, and the
/// ports the host wired.
struct Buffers {
    ports: Vec<Port>,
    input: Vec<u8>,
    output: OutputWriter,
    reply: Vec<u8>,
    extracted: Extracted,
}

impl Buffers {
    fn new() -> Self {
        Buffers {
            ports: Vec::new(),
            input: Vec::new(),
            output: OutputWriter::default(),
            reply: Vec::new(),
            extracted: Extracted::default(),
        }
    }

    fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.input.resize(len, 0);
        &mut self.input
    }

    fn encode_reply<T: serde::Serialize>(&mut self, value: T) -> &[u8] {
        self.reply.clear();
        // Encoding plain data into a `Vec` cannot fail.
        let _ = bincode::serde::encode_into_std_write(value, &mut self.reply, abi::BINCODE);
        &self.reply
    }

    /// Decodes an init request, wires the ports, and returns the params as JSON.
    fn init(&mut self, len: usize, side_names: Vec<String>) -> Result<String, String> {
        let request = self
            .input
            .get(..len)
            .ok_or("init request past the input buffer")?;
        let (request, _): (InitRequest, _) =
            bincode::serde::decode_from_slice(request, abi::BINCODE)
                .map_err(|e| format!("cannot decode the init request: {e}"))?;
        if request.ports.len() != side_names.len() + 1 {
            return Err(format!(
                "the host wired {} ports, the operator has {}",
                request.ports.len(),
                side_names.len() + 1
            ));
        }
        let names = std::iter::once("main".to_string()).chain(side_names);
        self.ports = names
            .zip(request.ports)
            .map(|(name, spec)| Port { name, spec })
            .collect();
        Ok(request.params_json)
    }
}

/// Answers [`abi::exports::TO_JSON`] for the batch in the first `len` bytes of `input`: each
/// record decoded as `T` and written as JSON on port 0.
fn render_json<'i, 'o, T: Deserialize<'i> + serde::Serialize>(
    input: &'i [u8],
    output: &'o mut OutputWriter,
    len: usize,
) -> &'o [u8] {
    let is_struct = codec::is_struct::<T>();
    output.clear();
    let batch = match input.get(..len).map(BatchReader::new) {
        Some(Ok(batch)) => batch,
        _ => {
            output.error(u32::MAX, "malformed batch", b"");
            return output.as_bytes();
        }
    };
    let encoding = batch.encoding();
    for (index, record) in batch.enumerate() {
        let Ok(record) = record else { break };
        match codec::decode::<T>(encoding, record.value, is_struct) {
            Ok(value) => {
                let entry = output.record(0, index as u32, record.ts, 0);
                let _ = entry.value(|buf| codec::encode_into(Encoding::Json, &value, buf));
            }
            Err(e) => output.error(index as u32, &e, record.value),
        }
    }
    output.as_bytes()
}

/// Decodes a stage's `params` into the UDF's type. A key the type does not read is an error,
/// whatever the type's serde attributes say: a misspelt parameter must not silently keep its
/// default.
pub(crate) fn decode_params<P: DeserializeOwned>(json: &str) -> Result<P, String> {
    let mut unknown = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let params =
        serde_ignored::deserialize(&mut deserializer, |path| unknown.push(path.to_string()))
            .map_err(|e| format!("invalid params: {e}"))?;
    match unknown.as_slice() {
        [] => Ok(params),
        [one] => Err(format!("unknown params key `{one}`")),
        more => Err(format!("unknown params keys `{}`", more.join("`, `"))),
    }
}

/// The batch in the first `len` bytes of `input`, and its slots, with `output` cleared for the
/// answer; a framing error is written there as an error entry and gives `None`.
fn read_batch<'a>(
    input: &'a [u8],
    len: usize,
    output: &mut OutputWriter,
) -> Option<(BatchReader<'a>, Vec<SlotRef<'a>>)> {
    output.clear();
    let parsed = input
        .get(..len)
        .ok_or(abi::FrameError("batch past the input buffer"))
        .and_then(|bytes| {
            let batch = BatchReader::new(bytes)?;
            let slots = batch.slots()?;
            Ok((batch, slots))
        });
    match parsed {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            output.error(u32::MAX, &e.to_string(), b"");
            None
        }
    }
}

/// An answer failing the whole call with `why`.
fn refuse<'a>(output: &'a mut OutputWriter, why: &str) -> &'a [u8] {
    output.clear();
    output.error(u32::MAX, why, b"");
    output.as_bytes()
}

/// The failed input as text for a dead letter: JSON input as it came, bincode input decoded and
/// rendered as JSON.
fn raw_text<'i, T: Deserialize<'i> + serde::Serialize>(
    encoding: Encoding,
    value: &'i [u8],
    is_struct: bool,
) -> Vec<u8> {
    match abi::json_text(encoding, value) {
        Some(text) => text.to_vec(),
        None => codec::decode::<T>(encoding, value, is_struct)
            .ok()
            .and_then(|v| serde_json::to_vec(&v).ok())
            .unwrap_or_else(|| format!("<{} undecodable bytes>", value.len()).into_bytes()),
    }
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "flumen")]
    unsafe extern "C" {
        #[link_name = "panic"]
        fn host_panic(ptr: *const u8, len: usize);
    }

    /// Hands every panic's message to the host just before the panic traps, so that the dead
    /// letter says what the UDF said.
    pub fn install_panic_hook() {
        std::panic::set_hook(Box::new(|info| {
            let message = info.to_string();
            // SAFETY: the pointer and length describe `message`, alive for the whole call; the
            // host copies the bytes before returning.
            unsafe { host_panic(message.as_ptr(), message.len()) }
        }));
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub use host::install_panic_hook;

/// What a module's exports drive: [`Runner`] for an operator, [`AggregateRunner`] for an
/// aggregate. Each call reads its request from the first `len` bytes of the input buffer.
#[doc(hidden)]
pub trait GuestRunner: Default + 'static {
    fn input_buffer(&mut self, len: usize) -> &mut [u8];
    fn describe(&mut self) -> &[u8];
    fn init(&mut self, len: usize) -> &[u8];
    fn process(&mut self, len: usize) -> &[u8];
    fn merge(&mut self, len: usize) -> &[u8];
    fn finish(&mut self, len: usize) -> &[u8];
    fn to_json(&mut self, len: usize) -> &[u8];
    /// Fails a call it cannot answer, saying why.
    fn refuse(&mut self, why: &str) -> &[u8];

    /// The native form of a call: by code (see [`abi::native`]), on a request.
    fn native_call(&mut self, call: u32, request: &[u8]) -> &[u8] {
        use crate::abi::native;
        if call == native::DESCRIBE {
            return self.describe();
        }
        self.input_buffer(request.len()).copy_from_slice(request);
        let len = request.len();
        match call {
            native::INIT => self.init(len),
            native::PROCESS => self.process(len),
            native::MERGE => self.merge(len),
            native::FINISH => self.finish(len),
            native::TO_JSON => self.to_json(len),
            other => self.refuse(&format!("unknown call code {other}")),
        }
    }
}

/// The machinery of the native exports; see [`abi::native`].
#[doc(hidden)]
pub mod native;

/// Exports an [`Operator`] as a flumen module: defines the functions of [`abi::exports`] when
/// compiling for `wasm32`, and nothing natively. The attribute macros call it; a hand-written
/// operator calls it once per crate.
///
/// ```
/// # use flumen_sdk::{Operator, Outputs, abi::{OperatorKind, SideOutput}};
/// # struct Identity;
/// # impl Operator for Identity {
/// #     type Input<'a> = i64; type Output = i64; type Params = flumen_sdk::NoParams;
/// #     type State = flumen_sdk::state::NoState;
/// #     const KIND: OperatorKind = OperatorKind::Map;
/// #     fn side_outputs() -> Vec<SideOutput> { Vec::new() }
/// #     fn new(_: Self::Params) -> Result<Self, String> { Ok(Identity) }
/// #     fn process(&mut self, i: i64, _: &mut flumen_sdk::state::NoState, out: &mut Outputs<'_>) -> Result<(), String> {
/// #         out.emit_main(&i); Ok(())
/// #     }
/// # }
/// flumen_sdk::export!(Identity);
/// ```
#[macro_export]
macro_rules! export {
    ($op:ty) => {
        $crate::__export_runner!($crate::guest::Runner<$op>);
    };
}

/// Exports an [`Aggregate`] as a flumen module; [`aggregate`](macro@crate::aggregate) calls it.
#[macro_export]
macro_rules! export_aggregate {
    ($agg:ty) => {
        $crate::__export_runner!($crate::guest::AggregateRunner<$agg>);
    };
}

/// The exports of a module driving `$runner` (a [`GuestRunner`]): the Wasm ones on `wasm32`,
/// the native ones elsewhere.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_runner {
    ($runner:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __flumen_exports {
            use super::*;
            use $crate::guest::GuestRunner as _;

            ::std::thread_local! {
                static RUNNER: ::std::cell::RefCell<$runner> = ::std::cell::RefCell::default();
            }

            fn reply(bytes: &[u8]) -> u64 {
                $crate::abi::pack(bytes.as_ptr() as u32, bytes.len() as u32)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_describe() -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.describe()))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_input(len: u32) -> u32 {
                RUNNER.with_borrow_mut(|r| r.input_buffer(len as usize).as_mut_ptr() as u32)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_init(len: u32) -> u64 {
                $crate::guest::install_panic_hook();
                RUNNER.with_borrow_mut(|r| reply(r.init(len as usize)))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_process(len: u32) -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.process(len as usize)))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_merge(len: u32) -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.merge(len as usize)))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_finish(len: u32) -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.finish(len as usize)))
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn flumen_to_json(len: u32) -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.to_json(len as usize)))
            }
        }
        $crate::__export_native!($runner);
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{OutputReader, native};
    use crate::state::NoState;

    struct Double;

    impl Operator for Double {
        type Input<'a> = i64;
        type Output = i64;
        type Params = crate::NoParams;
        type State = NoState;
        const KIND: OperatorKind = OperatorKind::Map;

        fn side_outputs() -> Vec<abi::SideOutput> {
            Vec::new()
        }
        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Double)
        }
        fn process(
            &mut self,
            i: i64,
            _: &mut NoState,
            out: &mut Outputs<'_>,
        ) -> Result<(), String> {
            out.emit_main(&(i * 2));
            Ok(())
        }
    }

    fn whole_call_error(reply: &[u8]) -> String {
        match OutputReader::new(reply).next() {
            Some(Ok(abi::OutputEntry::Error {
                input_index: u32::MAX,
                message,
                ..
            })) => message.to_string(),
            other => panic!("not a whole-call error: {other:?}"),
        }
    }

    #[test]
    fn unknown_calls_and_calls_before_init_are_refused() {
        let mut runner = Runner::<Double>::default();
        assert_eq!(
            whole_call_error(runner.native_call(99, &[])),
            "unknown call code 99"
        );
        assert_eq!(
            whole_call_error(runner.native_call(native::MERGE, &[])),
            "this module is not an aggregate"
        );
        assert!(whole_call_error(runner.native_call(native::PROCESS, &[])).contains("before init"));
    }

    /// Borrows its text from the record: `name` as a `Cow` (owned only when JSON escapes it),
    /// `tag` as a plain `&str` (so an escaped JSON `tag` cannot decode).
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        name: std::borrow::Cow<'a, str>,
        tag: &'a str,
    }

    struct Borrows;

    impl Operator for Borrows {
        type Input<'a> = Named<'a>;
        type Output = (String, bool, String);
        type Params = crate::NoParams;
        type State = NoState;
        const KIND: OperatorKind = OperatorKind::Map;

        fn side_outputs() -> Vec<abi::SideOutput> {
            Vec::new()
        }
        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Borrows)
        }
        fn process(
            &mut self,
            input: Named<'_>,
            _: &mut NoState,
            out: &mut Outputs<'_>,
        ) -> Result<(), String> {
            let borrowed = matches!(input.name, std::borrow::Cow::Borrowed(_));
            out.emit_main(&(&input.name, borrowed, input.tag));
            Ok(())
        }
    }

    /// Initialises `runner` without parameters and with one JSON output port.
    fn init(runner: &mut impl GuestRunner) {
        let init = InitRequest {
            stage: "test".into(),
            params_json: "{}".into(),
            ports: vec![abi::PortSpec {
                encoding: Encoding::Json,
                key_fields: Vec::new(),
                ts_field: None,
            }],
        };
        let init = bincode::serde::encode_to_vec(&init, abi::BINCODE).unwrap();
        abi::decode_control::<Result<(), String>>(runner.native_call(native::INIT, &init))
            .unwrap()
            .unwrap();
    }

    /// An operator's runner initialised by [`init`], then given `records` in `encoding`: what
    /// it emitted (as JSON values) and the messages of what it refused, by input index.
    fn run_batch<Op: Operator>(
        encoding: Encoding,
        records: &[Vec<u8>],
    ) -> (Vec<serde_json::Value>, Vec<(u32, String)>) {
        let mut runner = Runner::<Op>::default();
        init(&mut runner);
        let mut batch = abi::BatchWriter::new(encoding);
        for record in records {
            batch.push(b"", 0, record);
        }
        let slots = abi::SlotWriter::default();
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let (mut emitted, mut refused) = (Vec::new(), Vec::new());
        for entry in OutputReader::new(runner.native_call(native::PROCESS, &request)) {
            match entry.unwrap() {
                abi::OutputEntry::Record { value, .. } => {
                    emitted.push(serde_json::from_slice(value).unwrap())
                }
                abi::OutputEntry::Error {
                    input_index,
                    message,
                    ..
                } => refused.push((input_index, message.to_string())),
                abi::OutputEntry::State { .. } => panic!("a stateless operator saved state"),
            }
        }
        (emitted, refused)
    }

    #[test]
    fn inputs_borrow_their_text_from_the_record() {
        use serde_json::json;
        let json = |text: &str| text.as_bytes().to_vec();
        let (emitted, refused) = run_batch::<Borrows>(
            Encoding::Json,
            &[
                json(r#"{"name":"SKU-0001","tag":"a"}"#),
                // An escaped string cannot point into the record: the `Cow` owns its text...
                json(r#"{"name":"\u0053KU-0002","tag":"b"}"#),
                // ...and a plain `&str` cannot hold it: the record is refused, not the batch.
                json(r#"{"name":"SKU-0003","tag":"\u0063"}"#),
                json(r#"{"name":"SKU-0004","tag":"d"}"#),
            ],
        );
        assert_eq!(
            emitted,
            [
                json!(["SKU-0001", true, "a"]),
                json!(["SKU-0002", false, "b"]),
                json!(["SKU-0004", true, "d"]),
            ]
        );
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, 2);
        assert!(
            refused[0].1.contains("cannot decode Named"),
            "{}",
            refused[0].1
        );

        // Bincode strings are never escaped: every field points into the batch.
        let records: Vec<Vec<u8>> = [("SKU-0005", "e"), ("é", "")]
            .iter()
            .map(|(name, tag)| {
                let named = Named {
                    name: (*name).into(),
                    tag,
                };
                bincode::serde::encode_to_vec(&named, abi::BINCODE).unwrap()
            })
            .collect();
        let (emitted, refused) = run_batch::<Borrows>(Encoding::Bincode, &records);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(
            emitted,
            [json!(["SKU-0005", true, "e"]), json!(["é", true, ""])]
        );
    }

    /// Appends each input to its key's list, then fails the inputs that are negative: a
    /// failure after changing the state.
    struct Appends;

    impl Operator for Appends {
        type Input<'a> = i64;
        type Output = Vec<i64>;
        type Params = crate::NoParams;
        type State = crate::state::ValueState<Vec<i64>>;
        const KIND: OperatorKind = OperatorKind::Process;

        fn side_outputs() -> Vec<abi::SideOutput> {
            Vec::new()
        }
        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Appends)
        }
        fn process(
            &mut self,
            i: i64,
            seen: &mut Self::State,
            out: &mut Outputs<'_>,
        ) -> Result<(), String> {
            let seen = seen.get_or_insert_with(Vec::new);
            seen.push(i);
            if i < 0 {
                return Err(format!("{i} is negative"));
            }
            out.emit_main(&*seen);
            Ok(())
        }
    }

    #[test]
    fn a_failed_record_leaves_its_keys_state_as_the_records_before_it_left_it() {
        use serde_json::json;
        let mut runner = Runner::<Appends>::default();
        init(&mut runner);
        let stored = bincode::serde::encode_to_vec(vec![7i64], abi::BINCODE).unwrap();
        let mut slots = abi::SlotWriter::default();
        let (a, b, c) = (
            slots.push(b"a", Some(&stored)),
            slots.push(b"b", Some(&stored)),
            slots.push(b"c", None),
        );
        let mut batch = abi::BatchWriter::new(Encoding::Json);
        // `a` fails first (its state is still its slot's bytes), then changes and fails again;
        // `b` fails only after a change; `c`, with no state yet, only fails.
        for (slot, value) in [(a, -1), (a, 1), (b, 2), (a, -2), (b, -3), (a, 3), (c, -4)] {
            batch.push_with(b"", 0, &[slot], |v| {
                v.extend_from_slice(value.to_string().as_bytes())
            });
        }
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let (mut emitted, mut refused, mut states) = (Vec::new(), Vec::new(), Vec::new());
        for entry in OutputReader::new(runner.native_call(native::PROCESS, &request)) {
            match entry.unwrap() {
                abi::OutputEntry::Record { value, .. } => {
                    emitted.push(serde_json::from_slice::<serde_json::Value>(value).unwrap())
                }
                abi::OutputEntry::Error { input_index, .. } => refused.push(input_index),
                abi::OutputEntry::State { slot, value } => {
                    let value = value.map(|v| {
                        bincode::serde::decode_from_slice::<Vec<i64>, _>(v, abi::BINCODE)
                            .unwrap()
                            .0
                    });
                    states.push((slot, value));
                }
            }
        }
        assert_eq!(
            emitted,
            [json!([7, 1]), json!([7, 2]), json!([7, 1, 3])],
            "each failure's push was undone"
        );
        assert_eq!(refused, [0, 3, 4, 6]);
        assert_eq!(
            states,
            [(a, Some(vec![7, 1, 3])), (b, Some(vec![7, 2]))],
            "`c` stayed without state"
        );
    }

    #[test]
    fn a_borrowing_input_is_described_by_its_static_form() {
        let described = describe::<Borrows>();
        assert_eq!(described.input_type, "Named");
        let shape = described.input_shape.expect("Named<'static> is traced");
        let fields: Vec<&str> = shape.nodes[0]
            .children
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(fields, ["name", "tag"]);
        // What a producer of owned strings writes: the same bincode, so the same shape.
        #[derive(serde::Deserialize)]
        #[serde(rename = "Named")]
        #[allow(dead_code)]
        struct Owned {
            name: String,
            tag: String,
        }
        assert_eq!(Some(shape), crate::shape::of::<Owned>());
    }

    /// Keeps what it merged, in order: its merge is associative but not commutative.
    struct Concat;

    impl crate::aggregate::Aggregate for Concat {
        type Input<'a> = u32;
        type Acc = Vec<u32>;
        type Output = Vec<u32>;
        type Params = crate::NoParams;

        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Concat)
        }
        fn create(&self) -> Vec<u32> {
            Vec::new()
        }
        fn add(&self, acc: &mut Vec<u32>, input: &u32) {
            acc.push(*input);
        }
        fn merge(&self, acc: &mut Vec<u32>, other: Vec<u32>) {
            acc.extend(other);
        }
        fn finish(&self, _: &str, _: crate::aggregate::Window, acc: Vec<u32>) -> Option<Vec<u32>> {
            Some(acc)
        }
    }

    #[test]
    fn a_windows_panes_merge_in_order_into_its_first_slot() {
        for panes in 1..=9u32 {
            let mut runner = AggregateRunner::<Concat>::default();
            init(&mut runner);
            let mut slots = abi::SlotWriter::default();
            let refs: Vec<u32> = (0..panes)
                .map(|pane| {
                    let acc =
                        bincode::serde::encode_to_vec(vec![pane * 10, pane * 10 + 1], abi::BINCODE);
                    slots.push(b"", Some(&acc.unwrap()))
                })
                .collect();
            // A second window whose last pane does not decode: nothing of it comes back.
            let broken: Vec<u32> = vec![
                slots.push(b"", Some(&[7])),
                slots.push(b"", Some(&[0xff; 3])),
            ];
            let mut batch = abi::BatchWriter::new(Encoding::Bincode);
            batch.push_with(b"", 0, &refs, |_| {});
            batch.push_with(b"", 0, &broken, |_| {});
            let request = [batch.as_bytes(), slots.as_bytes()].concat();
            let mut states = Vec::new();
            let mut errors = Vec::new();
            for entry in OutputReader::new(runner.native_call(native::MERGE, &request)) {
                match entry.unwrap() {
                    abi::OutputEntry::State { slot, value, .. } => {
                        let value = value.expect("a merged window keeps its accumulator");
                        let (acc, _): (Vec<u32>, _) =
                            bincode::serde::decode_from_slice(value, abi::BINCODE).unwrap();
                        states.push((slot, acc));
                    }
                    abi::OutputEntry::Error { input_index, .. } => errors.push(input_index),
                    abi::OutputEntry::Record { .. } => panic!("merge emitted a record"),
                }
            }
            let expected: Vec<u32> = (0..panes).flat_map(|p| [p * 10, p * 10 + 1]).collect();
            assert_eq!(states, [(refs[0], expected)], "{panes} panes");
            assert_eq!(errors, [1]);
        }
    }

    /// A pane of a fired window: its token and its accumulator, if any.
    type Pane = (u64, Option<Vec<u32>>);

    /// A pane of a fired window at its place: its token, its end, its accumulator if any.
    type PaneAt<Acc> = (u64, i64, Option<Acc>);

    /// A fired window kept as panes: its start, its panes.
    type PaneWindow<Acc> = (i64, Vec<PaneAt<Acc>>);

    /// A `finish` request of windows `[0, 10)` kept as panes, the i-th pane ending at `i + 1`.
    fn finish_panes(
        runner: &mut AggregateRunner<Concat>,
        windows: &[&[Pane]],
    ) -> Vec<Result<Vec<u32>, String>> {
        let windows: Vec<PaneWindow<Vec<u32>>> = windows
            .iter()
            .map(|panes| {
                let ends = 1..;
                let panes = panes
                    .iter()
                    .zip(ends)
                    .map(|((t, acc), end)| (*t, end, acc.clone()));
                (0, panes.collect())
            })
            .collect();
        finish_windows(runner, 10, &windows)
    }

    /// A `finish` request of windows kept as panes, each `(start, panes)` of `size`, each pane
    /// `(token, end, accumulator)`: each window names its panes' slots, and after its bounds a
    /// token and an end per pane. Returns each window's result, or its error.
    fn finish_windows<A>(
        runner: &mut AggregateRunner<A>,
        size: i64,
        windows: &[PaneWindow<A::Acc>],
    ) -> Vec<Result<A::Output, String>>
    where
        A: crate::aggregate::Aggregate,
        A::Output: serde::de::DeserializeOwned + Clone,
    {
        let mut slots = abi::SlotWriter::default();
        let mut batch = abi::BatchWriter::new(Encoding::Bincode);
        for (start, panes) in windows {
            let refs: Vec<u32> = panes
                .iter()
                .map(|(_, _, acc)| {
                    let acc = acc
                        .as_ref()
                        .map(|acc| bincode::serde::encode_to_vec(acc, abi::BINCODE).unwrap());
                    slots.push(b"", acc.as_deref())
                })
                .collect();
            batch.push_with(b"", 9, &refs, |b| {
                b.extend_from_slice(&start.to_le_bytes());
                b.extend_from_slice(&(start + size).to_le_bytes());
                for (token, end, _) in panes.iter() {
                    b.extend_from_slice(&token.to_le_bytes());
                    b.extend_from_slice(&end.to_le_bytes());
                }
            });
        }
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let mut results: Vec<Option<Result<A::Output, String>>> = vec![None; windows.len()];
        for entry in OutputReader::new(runner.native_call(native::FINISH, &request)) {
            match entry.unwrap() {
                abi::OutputEntry::Record {
                    input_index, value, ..
                } => {
                    let acc = serde_json::from_slice(value).unwrap();
                    results[input_index as usize] = Some(Ok(acc));
                }
                abi::OutputEntry::Error {
                    input_index,
                    message,
                    ..
                } => results[input_index as usize] = Some(Err(message.to_string())),
                abi::OutputEntry::State { .. } => panic!("finish returned state"),
            }
        }
        results.into_iter().map(Option::unwrap).collect()
    }

    #[test]
    fn a_window_of_panes_finishes_as_their_merge_in_order() {
        let mut runner = AggregateRunner::<Concat>::default();
        init(&mut runner);
        for count in 1..=9u32 {
            let panes: Vec<Pane> = (0..count)
                .map(|p| (0, Some(vec![p * 10, p * 10 + 1])))
                .collect();
            let expected: Vec<u32> = (0..count).flat_map(|p| [p * 10, p * 10 + 1]).collect();
            assert_eq!(finish_panes(&mut runner, &[&panes]), [Ok(expected)]);
        }
        // A pane without an accumulator is an empty one; a pane that does not decode fails its
        // window alone; tokens must match the panes.
        let empty = [(0, None), (0, Some(vec![5]))];
        let broken = [(0, Some(vec![1]))];
        let results = finish_panes(&mut runner, &[&empty, &broken]);
        assert_eq!(results[0], Ok(vec![5]));
        let mut slots = abi::SlotWriter::default();
        slots.push(b"", Some(&[0xff; 3]));
        let mut batch = abi::BatchWriter::new(Encoding::Bincode);
        batch.push_with(b"", 9, &[0], |b| b.extend_from_slice(&[0; 32]));
        batch.push_with(b"", 9, &[0], |b| b.extend_from_slice(&[0; 24]));
        let request = [batch.as_bytes(), slots.as_bytes()].concat();
        let errors: Vec<String> = OutputReader::new(runner.native_call(native::FINISH, &request))
            .filter_map(|entry| match entry.unwrap() {
                abi::OutputEntry::Error { message, .. } => Some(message.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("cannot decode the stored accumulator"));
        assert_eq!(
            errors[1],
            "a fired window's panes and their tokens do not match"
        );
    }

    #[test]
    fn a_pane_is_decoded_once_while_consecutive_calls_use_it() {
        let mut runner = AggregateRunner::<Concat>::default();
        init(&mut runner);
        let first = [(1, Some(vec![1])), (2, Some(vec![2]))];
        assert_eq!(finish_panes(&mut runner, &[&first]), [Ok(vec![1, 2])]);
        // Token 2 names the value decoded by the last call: the bytes sent now are not read. A
        // token the guest has not seen is decoded.
        let second = [(2, Some(vec![99])), (3, Some(vec![3]))];
        assert_eq!(finish_panes(&mut runner, &[&second]), [Ok(vec![2, 3])]);
        // Token 1 was not used by the last call: forgotten, decoded again from its bytes.
        let third = [(1, Some(vec![7])), (3, Some(vec![99]))];
        assert_eq!(finish_panes(&mut runner, &[&third]), [Ok(vec![7, 3])]);
        // Token 0 is never kept.
        let fourth = [(0, Some(vec![4]))];
        assert_eq!(finish_panes(&mut runner, &[&fourth]), [Ok(vec![4])]);
        let fifth = [(0, Some(vec![5]))];
        assert_eq!(finish_panes(&mut runner, &[&fifth]), [Ok(vec![5])]);
    }

    /// How many merges [`Nested`] made.
    static MERGES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Writes down how it merged, so a result shows the order and nesting of its merges.
    struct Nested;

    impl crate::aggregate::Aggregate for Nested {
        type Input<'a> = u32;
        type Acc = String;
        type Output = String;
        type Params = crate::NoParams;

        fn new(_: Self::Params) -> Result<Self, String> {
            Ok(Nested)
        }
        fn create(&self) -> String {
            String::new()
        }
        fn add(&self, acc: &mut String, input: &u32) {
            acc.push_str(&input.to_string());
        }
        fn merge(&self, acc: &mut String, other: String) {
            MERGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *acc = format!("({acc} {other})");
        }
        fn finish(&self, _: &str, _: crate::aggregate::Window, acc: String) -> Option<String> {
            Some(acc)
        }
    }

    #[test]
    fn a_sliding_window_merges_by_the_positions_of_its_panes_alone() {
        // Windows of 10 sliding by 1 over panes 0..40 (pane p ends at p + 1; panes 13 and 27
        // hold nothing and are not sent), the window starting at s holding panes s..s + 10.
        let pane = |p: i64| (p as u64 + 1, p + 1, Some(p.to_string()));
        let window = |s: i64| {
            (
                s,
                (s..s + 10)
                    .filter(|p| ![13, 27].contains(p))
                    .map(pane)
                    .collect(),
            )
        };
        let windows: Vec<_> = (0..31).map(window).collect();
        // Blocks of 10 from 0: the panes before the window's first boundary nested from the
        // right, then those after it from the left, the two merged.
        let expected: Vec<Result<String, String>> = (0..31)
            .map(|s: i64| {
                let boundary = (s as u64).div_ceil(10) as i64 * 10;
                let present = |p: &i64| ![13, 27].contains(p);
                let before = (s..boundary).filter(present).map(|p| p.to_string());
                let before = before
                    .rev()
                    .reduce(|later, earlier| format!("({earlier} {later})"));
                let after = (boundary..s + 10).filter(present).map(|p| p.to_string());
                let after = after.reduce(|earlier, later| format!("({earlier} {later})"));
                Ok(match (before, after) {
                    (Some(b), Some(a)) => format!("({b} {a})"),
                    (b, a) => b.or(a).unwrap_or_default(),
                })
            })
            .collect();
        // One window a call, as a watermark fires them: each result as expected, with about
        // three merges a window (not one per pane).
        let mut runner = AggregateRunner::<Nested>::default();
        init(&mut runner);
        let before = MERGES.load(std::sync::atomic::Ordering::Relaxed);
        let one_by_one: Vec<_> = windows
            .iter()
            .flat_map(|w| finish_windows(&mut runner, 10, std::slice::from_ref(w)))
            .collect();
        let merges = MERGES.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(one_by_one, expected);
        assert!(
            merges <= 3 * windows.len(),
            "{merges} merges for {} windows",
            windows.len()
        );
        // All in one call, every window with a fresh instance, or tokens that name nothing (no
        // run kept): the same results.
        let mut runner = AggregateRunner::<Nested>::default();
        init(&mut runner);
        assert_eq!(finish_windows(&mut runner, 10, &windows), expected);
        for (w, expected) in windows.iter().zip(&expected) {
            let mut runner = AggregateRunner::<Nested>::default();
            init(&mut runner);
            assert_eq!(
                &finish_windows(&mut runner, 10, std::slice::from_ref(w))[0],
                expected
            );
        }
        let untokened: Vec<_> = windows
            .iter()
            .map(|(s, panes)| {
                (
                    *s,
                    panes.iter().map(|(_, e, a)| (0, *e, a.clone())).collect(),
                )
            })
            .collect();
        assert_eq!(finish_windows(&mut runner, 10, &untokened), expected);
    }

    #[test]
    fn aggregate_calls_before_init_are_refused() {
        let mut runner = AggregateRunner::<Concat>::default();
        for (call, name) in [
            (native::PROCESS, "process"),
            (native::MERGE, "merge"),
            (native::FINISH, "finish"),
        ] {
            assert_eq!(
                whole_call_error(runner.native_call(call, &[])),
                format!("{name} called before init")
            );
        }
    }
}
