//! The guest side of the ABI: [`Runner`] turns the host's requests into [`Operator`] calls, and
//! [`export!`](crate::export) wires a runner to the module's exports. The runner is plain Rust, so
//! the same code runs inside Wasm and natively.

use crate::abi::{
    self, ABI_VERSION, BatchReader, Describe, Encoding, InitRequest, OperatorKind, OutputWriter,
    SlotRef,
};
use crate::aggregate::{Aggregate, Window};
use crate::fields::Extracted;
use crate::operator::{self, Operator, Outputs, Port, Target};
use crate::state::KeyedState;
use serde::de::DeserializeOwned;

/// The description of `Op` that [`abi::exports::DESCRIBE`] returns.
pub fn describe<Op: Operator>() -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind: Op::KIND,
        input_type: crate::type_name::<Op::Input>(),
        output_type: crate::type_name::<Op::Output>(),
        side_outputs: Op::side_outputs(),
        state_type: (Op::KIND == OperatorKind::Process).then(<Op::State as KeyedState>::type_name),
        input_shape: crate::shape::of::<Op::Input>(),
        output_shape: Op::output_shape(),
    }
}

/// The description of aggregate `A`.
pub fn describe_aggregate<A: Aggregate>() -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind: OperatorKind::Aggregate,
        input_type: crate::type_name::<A::Input>(),
        output_type: crate::type_name::<A::Output>(),
        side_outputs: Vec::new(),
        state_type: Some(crate::type_name::<A::Acc>()),
        input_shape: crate::shape::of::<A::Input>(),
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

    fn render_json<T: DeserializeOwned + serde::Serialize>(&mut self, len: usize) -> &[u8] {
        let is_struct = operator::is_struct::<T>();
        self.output.clear();
        let batch = match self.input.get(..len).map(BatchReader::new) {
            Some(Ok(batch)) => batch,
            _ => {
                self.output.error(u32::MAX, "malformed batch", b"");
                return self.output.as_bytes();
            }
        };
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            match operator::decode::<T>(encoding, record.value, is_struct) {
                Ok(value) => {
                    let entry = self.output.record(0, index as u32, record.ts, 0);
                    let _ = entry.value(|buf| operator::encode_into(Encoding::Json, &value, buf));
                }
                Err(e) => self.output.error(index as u32, &e, record.value),
            }
        }
        self.output.as_bytes()
    }
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

/// Drives one [`Operator`] through the ABI.
pub struct Runner<Op: Operator> {
    op: Option<Op>,
    buffers: Buffers,
    input_is_struct: bool,
    states: Vec<Option<Op::State>>,
}

impl<Op: Operator> Default for Runner<Op> {
    fn default() -> Self {
        Runner {
            op: None,
            buffers: Buffers::new(),
            input_is_struct: operator::is_struct::<Op::Input>(),
            states: Vec::new(),
        }
    }
}

impl<Op: Operator> GuestRunner for Runner<Op> {
    /// A buffer of `len` bytes for the next request.
    fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.buffers.input_buffer(len)
    }

    /// Answers [`abi::exports::DESCRIBE`].
    fn describe(&mut self) -> &[u8] {
        self.buffers.encode_reply(describe::<Op>())
    }

    /// Answers [`abi::exports::INIT`] for the request in the first `len` input bytes.
    fn init(&mut self, len: usize) -> &[u8] {
        let sides = Op::side_outputs().into_iter().map(|s| s.name).collect();
        let outcome = self.buffers.init(len, sides).and_then(|params| {
            let params: Op::Params = decode_params(&params)?;
            self.op = Some(Op::new(params)?);
            Ok(())
        });
        self.buffers.encode_reply(outcome)
    }

    /// Answers [`abi::exports::PROCESS`] for the batch in the first `len` input bytes.
    fn process(&mut self, len: usize) -> &[u8] {
        let Some(op) = self.op.as_mut() else {
            return refuse(&mut self.buffers.output, "process called before init");
        };
        let Buffers {
            ports,
            input,
            output,
            extracted,
            ..
        } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        self.states.clear();
        self.states.resize_with(slots.len(), || None);
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let index = index as u32;
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    output.error(index, &e.to_string(), b"");
                    break;
                }
            };
            let raw = |is_struct| raw_text::<Op::Input>(encoding, record.value, is_struct);
            let input: Op::Input =
                match operator::decode(encoding, record.value, self.input_is_struct) {
                    Ok(input) => input,
                    Err(e) => {
                        let message =
                            format!("cannot decode {}: {e}", crate::type_name::<Op::Input>());
                        output.error(index, &message, &raw(self.input_is_struct));
                        continue;
                    }
                };
            let mut no_state = Op::State::default();
            let state = match record.slots.get(0).map(|s| s as usize) {
                Some(slot) if slot < slots.len() => {
                    if self.states[slot].is_none() {
                        match Op::State::load(slots[slot].value) {
                            Ok(state) => self.states[slot] = Some(state),
                            Err(e) => {
                                output.error(index, &e, &raw(self.input_is_struct));
                                continue;
                            }
                        }
                    }
                    self.states[slot].get_or_insert_with(Default::default)
                }
                _ => &mut no_state,
            };
            let before = state.clone();
            let mark = output.mark();
            let mut out = Outputs {
                target: Target::Abi {
                    writer: output,
                    ports,
                    extracted,
                },
                ts: record.ts,
                key: record.key,
                index,
                failure: None,
            };
            let result = op.process(input, state, &mut out);
            if let Some(message) = result.err().or(out.failure) {
                *state = before;
                output.rollback(mark);
                output.error(index, &message, &raw(self.input_is_struct));
            }
        }
        for (slot, state) in self.states.iter().enumerate() {
            let Some(state) = state.as_ref().filter(|s| s.is_dirty()) else {
                continue;
            };
            let mut bytes = Vec::new();
            match state.save(&mut bytes) {
                Ok(present) => {
                    let _ = output.state(
                        slot as u32,
                        present.then_some(|buf: &mut Vec<u8>| {
                            buf.extend_from_slice(&bytes);
                            Ok::<_, ()>(())
                        }),
                    );
                }
                Err(e) => output.error(u32::MAX, &format!("cannot save state: {e}"), b""),
            }
        }
        output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`]: each input record re-encoded as JSON on port 0.
    fn to_json(&mut self, len: usize) -> &[u8] {
        self.buffers.render_json::<Op::Input>(len)
    }

    fn merge(&mut self, _: usize) -> &[u8] {
        refuse(&mut self.buffers.output, "this module is not an aggregate")
    }

    fn finish(&mut self, _: usize) -> &[u8] {
        refuse(&mut self.buffers.output, "this module is not an aggregate")
    }

    fn refuse(&mut self, why: &str) -> &[u8] {
        refuse(&mut self.buffers.output, why)
    }
}

/// An answer failing the whole call with `why`.
fn refuse<'a>(output: &'a mut OutputWriter, why: &str) -> &'a [u8] {
    output.clear();
    output.error(u32::MAX, why, b"");
    output.as_bytes()
}

/// Drives one [`Aggregate`] through the ABI.
pub struct AggregateRunner<A: Aggregate> {
    aggregate: Option<A>,
    buffers: Buffers,
    input_is_struct: bool,
    accs: Vec<Option<A::Acc>>,
}

impl<A: Aggregate> Default for AggregateRunner<A> {
    fn default() -> Self {
        AggregateRunner {
            aggregate: None,
            buffers: Buffers::new(),
            input_is_struct: operator::is_struct::<A::Input>(),
            accs: Vec::new(),
        }
    }
}

impl<A: Aggregate> AggregateRunner<A> {
    fn load(
        aggregate: &A,
        accs: &mut [Option<A::Acc>],
        slots: &[SlotRef<'_>],
        slot: usize,
    ) -> Result<(), String> {
        if accs[slot].is_none() {
            accs[slot] = Some(match slots[slot].value {
                Some(bytes) => operator::decode(Encoding::Bincode, bytes, false)
                    .map_err(|e| format!("cannot decode the stored accumulator: {e}"))?,
                None => aggregate.create(),
            });
        }
        Ok(())
    }

    fn save_accs(output: &mut OutputWriter, accs: &[Option<A::Acc>]) {
        for (slot, acc) in accs.iter().enumerate() {
            if let Some(acc) = acc {
                let written = output.state(
                    slot as u32,
                    Some(|buf: &mut Vec<u8>| operator::encode_into(Encoding::Bincode, acc, buf)),
                );
                if let Err(e) = written {
                    output.error(u32::MAX, &format!("cannot save an accumulator: {e}"), b"");
                }
            }
        }
    }
}

impl<A: Aggregate> GuestRunner for AggregateRunner<A> {
    fn refuse(&mut self, why: &str) -> &[u8] {
        refuse(&mut self.buffers.output, why)
    }

    /// A buffer of `len` bytes for the next request.
    fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.buffers.input_buffer(len)
    }

    /// Answers [`abi::exports::DESCRIBE`].
    fn describe(&mut self) -> &[u8] {
        self.buffers.encode_reply(describe_aggregate::<A>())
    }

    /// Answers [`abi::exports::INIT`].
    fn init(&mut self, len: usize) -> &[u8] {
        let outcome = self.buffers.init(len, Vec::new()).and_then(|params| {
            let params: A::Params = decode_params(&params)?;
            self.aggregate = Some(A::new(params)?);
            Ok(())
        });
        self.buffers.encode_reply(outcome)
    }

    /// Answers [`abi::exports::PROCESS`]: adds each record to the accumulators of its slots.
    fn process(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "process called before init");
        };
        let is_struct = self.input_is_struct;
        let accs = &mut self.accs;
        let Buffers { input, output, .. } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        let mut errors = Vec::new();
        accs.clear();
        accs.resize_with(slots.len(), || None);
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let input: A::Input = match operator::decode(encoding, record.value, is_struct) {
                Ok(input) => input,
                Err(e) => {
                    let message = format!("cannot decode {}: {e}", crate::type_name::<A::Input>());
                    errors.push((
                        index as u32,
                        message,
                        raw_text::<A::Input>(encoding, record.value, is_struct),
                    ));
                    continue;
                }
            };
            for slot in record
                .slots
                .iter()
                .map(|s| s as usize)
                .filter(|s| *s < slots.len())
            {
                if let Err(e) = Self::load(aggregate, accs, &slots, slot) {
                    errors.push((index as u32, e, Vec::new()));
                    continue;
                }
                if let Some(acc) = accs[slot].as_mut() {
                    aggregate.add(acc, &input);
                }
            }
        }
        for (index, message, raw) in errors {
            output.error(index, &message, &raw);
        }
        Self::save_accs(output, accs);
        output.as_bytes()
    }

    /// Answers [`abi::exports::MERGE`]: merges each record's slots `1..` into its slot 0.
    fn merge(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "merge called before init");
        };
        let accs = &mut self.accs;
        let Buffers { input, output, .. } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        accs.clear();
        accs.resize_with(slots.len(), || None);
        let mut merged = Vec::new();
        let mut errors = Vec::new();
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let refs: Vec<usize> = record
                .slots
                .iter()
                .map(|s| s as usize)
                .filter(|s| *s < slots.len())
                .collect();
            let Some((&target, sources)) = refs.split_first() else {
                continue;
            };
            let mut outcome = Self::load(aggregate, accs, &slots, target);
            for &source in sources {
                outcome = outcome.and_then(|()| Self::load(aggregate, accs, &slots, source));
                if let (Ok(()), Some(other)) = (&outcome, accs[source].take())
                    && let Some(acc) = accs[target].as_mut()
                {
                    aggregate.merge(acc, other);
                }
            }
            match outcome {
                Ok(()) => merged.push(target),
                Err(e) => errors.push((index as u32, e)),
            }
        }
        for (index, message) in errors {
            output.error(index, &message, b"");
        }
        let kept: Vec<Option<A::Acc>> = accs
            .iter_mut()
            .enumerate()
            .map(|(slot, acc)| {
                if merged.contains(&slot) {
                    acc.take()
                } else {
                    None
                }
            })
            .collect();
        Self::save_accs(output, &kept);
        output.as_bytes()
    }

    /// Answers [`abi::exports::FINISH`]: the result of each fired window.
    fn finish(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "finish called before init");
        };
        let Buffers {
            ports,
            input,
            output,
            extracted,
            ..
        } = &mut self.buffers;
        output.clear();
        let Some(Ok(batch)) = input.get(..len).map(BatchReader::new) else {
            output.error(u32::MAX, "malformed finish request", b"");
            return output.as_bytes();
        };
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let window = |value: &[u8]| -> Option<(Window, A::Acc)> {
                let start = i64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
                let end = i64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
                let acc = operator::decode(Encoding::Bincode, value.get(16..)?, false).ok()?;
                Some((Window { start, end }, acc))
            };
            let Some((bounds, acc)) = window(record.value) else {
                output.error(index as u32, "cannot decode a fired window", b"");
                continue;
            };
            let key = std::str::from_utf8(record.key).unwrap_or_default();
            if let Some(result) = aggregate.finish(key, bounds, acc) {
                let Some(port) = ports.first() else { break };
                if let Err(e) = operator::write_record(
                    output,
                    port,
                    0,
                    index as u32,
                    record.ts,
                    &result,
                    extracted,
                ) {
                    output.error(index as u32, &e, b"");
                }
            }
        }
        output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`].
    fn to_json(&mut self, len: usize) -> &[u8] {
        self.buffers.render_json::<A::Input>(len)
    }
}

/// The failed input as text for a dead letter: JSON input as it came, bincode input decoded and
/// rendered as JSON.
fn raw_text<T: DeserializeOwned + serde::Serialize>(
    encoding: Encoding,
    value: &[u8],
    is_struct: bool,
) -> Vec<u8> {
    match encoding {
        Encoding::Json => value.to_vec(),
        Encoding::Bincode => operator::decode::<T>(encoding, value, is_struct)
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
pub mod native {
    use super::GuestRunner;
    use std::ffi::c_void;

    thread_local! {
        static PANIC_MESSAGE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }

    /// A new runner, boxed, as an opaque pointer.
    pub fn new<R: GuestRunner>() -> *mut c_void {
        Box::into_raw(Box::new(R::default())).cast()
    }

    /// Frees a runner made by [`new`].
    ///
    /// # Safety
    /// `runner` comes from `new::<R>()` and is not used again.
    pub unsafe fn free<R: GuestRunner>(runner: *mut c_void) {
        if !runner.is_null() {
            // SAFETY: the caller passes a pointer from `Box::into_raw` of an `R`, once.
            drop(unsafe { Box::from_raw(runner.cast::<R>()) });
        }
    }

    /// Makes one call; a panic is caught and its message returned as the reply.
    ///
    /// # Safety
    /// `runner` comes from `new::<R>()`; `ptr`/`len` describe readable bytes; `out_ptr` and
    /// `out_len` are writable. The reply stays valid until the next call on this runner.
    pub unsafe fn call<R: GuestRunner>(
        runner: *mut c_void,
        call: u32,
        ptr: *const u8,
        len: usize,
        out_ptr: *mut *const u8,
        out_len: *mut usize,
    ) -> i32 {
        // SAFETY: as the caller promises, `runner` is a live `R` used by this thread only, and
        // `ptr`/`len` are readable.
        let (runner, request) = unsafe {
            (
                &mut *runner.cast::<R>(),
                std::slice::from_raw_parts(ptr, len),
            )
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let reply = runner.native_call(call, request);
            (reply.as_ptr(), reply.len())
        }));
        let (code, (reply_ptr, reply_len)) = match outcome {
            Ok(reply) => (crate::abi::native::OK, reply),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into());
                let reply = PANIC_MESSAGE.with_borrow_mut(|m| {
                    *m = message;
                    (m.as_ptr(), m.len())
                });
                (crate::abi::native::PANICKED, reply)
            }
        };
        // SAFETY: the caller passes writable pointers.
        unsafe {
            *out_ptr = reply_ptr;
            *out_len = reply_len;
        }
        code
    }
}

/// Defines the native exports of a module (see [`abi::native`]) for runner type `$runner`.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_native {
    ($runner:ty) => {
        // Not in a module of their own: a module could not name items local to a function
        // (as in doc tests).
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub extern "C" fn flumen_native_new() -> *mut ::std::ffi::c_void {
            $crate::guest::native::new::<$runner>()
        }

        /// # Safety
        /// See `flumen_sdk::guest::native::free`.
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn flumen_native_free(runner: *mut ::std::ffi::c_void) {
            // SAFETY: forwarded from the caller.
            unsafe { $crate::guest::native::free::<$runner>(runner) }
        }

        /// # Safety
        /// See `flumen_sdk::guest::native::call`.
        #[cfg(not(target_arch = "wasm32"))]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn flumen_native_call(
            runner: *mut ::std::ffi::c_void,
            call: u32,
            ptr: *const u8,
            len: usize,
            out_ptr: *mut *const u8,
            out_len: *mut usize,
        ) -> i32 {
            // SAFETY: forwarded from the caller.
            unsafe {
                $crate::guest::native::call::<$runner>(runner, call, ptr, len, out_ptr, out_len)
            }
        }
    };
}

/// Exports an [`Operator`] as a flumen module: defines the functions of [`abi::exports`] when
/// compiling for `wasm32`, and nothing natively. The attribute macros call it; a hand-written
/// operator calls it once per crate.
///
/// ```
/// # use flumen_sdk::{Operator, Outputs, abi::{OperatorKind, SideOutput}};
/// # struct Identity;
/// # impl Operator for Identity {
/// #     type Input = i64; type Output = i64; type Params = flumen_sdk::NoParams;
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

/// Exports an [`Aggregate`] as a flumen module; [`aggregate`](crate::aggregate) calls it.
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
        type Input = i64;
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

    struct Sum;

    impl crate::aggregate::Aggregate for Sum {
        type Input = i64;
        type Acc = i64;
        type Output = i64;
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
        fn finish(&self, _: &str, _: crate::aggregate::Window, acc: i64) -> Option<i64> {
            Some(acc)
        }
    }

    #[test]
    fn aggregate_calls_before_init_are_refused() {
        let mut runner = AggregateRunner::<Sum>::default();
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
