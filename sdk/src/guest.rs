//! The guest side of the ABI: [`Runner`] turns the host's requests into [`Operator`] calls, and
//! [`export!`](crate::export) wires a runner to the module's exports. The runner is plain Rust, so
//! the same code runs inside Wasm and natively.

use crate::abi::{self, ABI_VERSION, BatchReader, Describe, Encoding, InitRequest, OutputWriter};
use crate::fields::Extracted;
use crate::operator::{self, Operator, Outputs, Port, Target};
use std::marker::PhantomData;

/// Drives one operator through the ABI: owns its request and reply buffers, which are reused
/// from batch to batch.
pub struct Runner<Op: Operator> {
    op: Option<Op>,
    ports: Vec<Port>,
    input: Vec<u8>,
    output: OutputWriter,
    reply: Vec<u8>,
    extracted: Extracted,
    input_is_struct: bool,
    _op: PhantomData<Op>,
}

impl<Op: Operator> Default for Runner<Op> {
    fn default() -> Self {
        Runner {
            op: None,
            ports: Vec::new(),
            input: Vec::new(),
            output: OutputWriter::default(),
            reply: Vec::new(),
            extracted: Extracted::default(),
            input_is_struct: operator::is_struct::<Op::Input>(),
            _op: PhantomData,
        }
    }
}

/// The description of `Op` that [`abi::exports::DESCRIBE`] returns.
pub fn describe<Op: Operator>() -> Describe {
    Describe {
        abi_version: ABI_VERSION,
        kind: Op::KIND,
        input_type: crate::type_name::<Op::Input>(),
        output_type: crate::type_name::<Op::Output>(),
        side_outputs: Op::side_outputs(),
    }
}

impl<Op: Operator> Runner<Op> {
    /// A buffer of `len` bytes for the next request.
    pub fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.input.resize(len, 0);
        &mut self.input
    }

    /// Answers [`abi::exports::DESCRIBE`].
    pub fn describe(&mut self) -> &[u8] {
        self.reply.clear();
        // Encoding a `Describe` into a `Vec` cannot fail.
        let _ =
            bincode::serde::encode_into_std_write(describe::<Op>(), &mut self.reply, abi::BINCODE);
        &self.reply
    }

    /// Answers [`abi::exports::INIT`] for the request in the first `len` input bytes.
    pub fn init(&mut self, len: usize) -> &[u8] {
        let outcome = self.try_init(len);
        self.reply.clear();
        let _ = bincode::serde::encode_into_std_write(outcome, &mut self.reply, abi::BINCODE);
        &self.reply
    }

    fn try_init(&mut self, len: usize) -> Result<(), String> {
        let request = self
            .input
            .get(..len)
            .ok_or("init request past the input buffer")?;
        let (request, _): (InitRequest, _) =
            bincode::serde::decode_from_slice(request, abi::BINCODE)
                .map_err(|e| format!("cannot decode the init request: {e}"))?;
        let sides = Op::side_outputs();
        if request.ports.len() != sides.len() + 1 {
            return Err(format!(
                "the host wired {} ports, the operator has {}",
                request.ports.len(),
                sides.len() + 1
            ));
        }
        let names = std::iter::once("main".to_string()).chain(sides.into_iter().map(|s| s.name));
        self.ports = names
            .zip(request.ports)
            .map(|(name, spec)| Port { name, spec })
            .collect();
        let params: Op::Params = serde_json::from_str(&request.params_json)
            .map_err(|e| format!("invalid params: {e}"))?;
        self.op = Some(Op::new(params)?);
        Ok(())
    }

    /// Answers [`abi::exports::PROCESS`] for the batch in the first `len` input bytes.
    pub fn process(&mut self, len: usize) -> &[u8] {
        self.output.clear();
        let Some(op) = self.op.as_mut() else {
            self.output
                .error(u32::MAX, "process called before init", b"");
            return self.output.as_bytes();
        };
        let batch = match self.input.get(..len).map(BatchReader::new) {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                self.output.error(u32::MAX, &e.to_string(), b"");
                return self.output.as_bytes();
            }
            None => {
                self.output
                    .error(u32::MAX, "batch past the input buffer", b"");
                return self.output.as_bytes();
            }
        };
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let index = index as u32;
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    self.output.error(index, &e.to_string(), b"");
                    break;
                }
            };
            let input: Op::Input =
                match operator::decode(encoding, record.value, self.input_is_struct) {
                    Ok(input) => input,
                    Err(e) => {
                        let message =
                            format!("cannot decode {}: {e}", crate::type_name::<Op::Input>());
                        let raw = raw_text::<Op>(encoding, record.value, self.input_is_struct);
                        self.output.error(index, &message, &raw);
                        continue;
                    }
                };
            let mark = self.output.mark();
            let mut out = Outputs {
                target: Target::Abi {
                    writer: &mut self.output,
                    ports: &self.ports,
                    extracted: &mut self.extracted,
                },
                ts: record.ts,
                failure: None,
            };
            let result = op.process(input, &mut out);
            if let Some(message) = result.err().or(out.failure) {
                self.output.rollback(mark);
                let raw = raw_text::<Op>(encoding, record.value, self.input_is_struct);
                self.output.error(index, &message, &raw);
            }
        }
        self.output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`]: each input record re-encoded as JSON on port 0.
    pub fn to_json(&mut self, len: usize) -> &[u8] {
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
            match operator::decode::<Op::Input>(encoding, record.value, self.input_is_struct) {
                Ok(value) => {
                    let entry = self.output.record(0, record.ts, 0);
                    let _ = entry.value(|buf| operator::encode_into(Encoding::Json, &value, buf));
                }
                Err(e) => self.output.error(index as u32, &e, record.value),
            }
        }
        self.output.as_bytes()
    }
}

/// The failed input as text for a dead letter: JSON input as it came, bincode input decoded and
/// rendered as JSON.
fn raw_text<Op: Operator>(encoding: Encoding, value: &[u8], is_struct: bool) -> Vec<u8> {
    match encoding {
        Encoding::Json => value.to_vec(),
        Encoding::Bincode => operator::decode::<Op::Input>(encoding, value, is_struct)
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

/// Exports an [`Operator`] as a flumen module: defines the functions of [`abi::exports`] when
/// compiling for `wasm32`, and nothing natively. The attribute macros call it; a hand-written
/// operator calls it once per crate.
///
/// ```
/// # use flumen_sdk::{Operator, Outputs, abi::{OperatorKind, SideOutput}};
/// # struct Identity;
/// # impl Operator for Identity {
/// #     type Input = i64; type Output = i64; type Params = flumen_sdk::NoParams;
/// #     const KIND: OperatorKind = OperatorKind::Map;
/// #     fn side_outputs() -> Vec<SideOutput> { Vec::new() }
/// #     fn new(_: Self::Params) -> Result<Self, String> { Ok(Identity) }
/// #     fn process(&mut self, i: i64, out: &mut Outputs<'_>) -> Result<(), String> {
/// #         out.emit_main(&i); Ok(())
/// #     }
/// # }
/// flumen_sdk::export!(Identity);
/// ```
#[macro_export]
macro_rules! export {
    ($op:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __flumen_exports {
            use super::*;
            use ::std::cell::RefCell;

            ::std::thread_local! {
                static RUNNER: RefCell<$crate::guest::Runner<$op>> = RefCell::default();
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
            pub extern "C" fn flumen_to_json(len: u32) -> u64 {
                RUNNER.with_borrow_mut(|r| reply(r.to_json(len as usize)))
            }
        }
    };
}
