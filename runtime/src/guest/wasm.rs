//! One live instance of a module: [`Runner`] — a Wasm instance under its memory cap and call
//! deadline, or the native library of the same UDF crate — and what a failed Wasm call tells.
//!
//! A guest is untrusted: every pointer and length it returns is checked against its memory, and a
//! trap (a panic, an out-of-memory, a deadline) is reported as a [`GuestFailure`] for the caller
//! to recover from, never as a crash.

use super::Export;
use super::failure::{GuestFailure, TIMEOUT, panic_failure};
use super::native::NativeGuest;
use super::sandbox::{Backend, Limits, LoadedModule, ModuleError, Purpose};
use flumen_sdk::abi;
use std::time::Duration;
use wasmtime::{Caller, Engine, InstancePre, Memory, ResourceLimiter, Store, Trap, TypedFunc};

/// How often the engine's epoch advances; call deadlines are counted in these ticks.
pub(super) const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Longest panic message kept from a guest.
const MAX_PANIC_MESSAGE: usize = 4096;
/// Longest log line kept from a guest; the rest is cut.
pub const MAX_LOG_LINE: usize = 4096;
/// Log lines an instance may write per second, on average.
pub const LOG_LINES_PER_SECOND: f64 = 50.0;
/// Log lines an instance may write at once (the bucket's size).
pub const LOG_BURST: f64 = 200.0;

/// The host state of one store.
pub(super) struct GuestState {
    /// Whether the instance only describes its module (under [`DESCRIBE_LIMITS`]).
    describing: bool,
    memory_limit: usize,
    memory_limit_hit: bool,
    panic_message: Option<String>,
    log: GuestLog,
}

/// Who an instance's log lines are from, and how many it may still write (a token bucket).
struct GuestLog {
    stage: std::sync::Arc<str>,
    partition: usize,
    tokens: f64,
    refilled: std::time::Instant,
    /// Lines refused by the rate limit since the last one written.
    dropped: u64,
}

impl GuestLog {
    fn new(purpose: &Purpose) -> Self {
        let (stage, partition) = match purpose {
            Purpose::Describe => ("(describe)".into(), 0),
            Purpose::Operator { stage, partition } => (stage.clone(), *partition),
        };
        GuestLog {
            stage,
            partition,
            tokens: LOG_BURST,
            refilled: std::time::Instant::now(),
            dropped: 0,
        }
    }

    /// Whether a line may be written now.
    fn allow(&mut self) -> bool {
        let now = std::time::Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * LOG_LINES_PER_SECOND;
        self.tokens = (self.tokens + earned).min(LOG_BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            if self.dropped == 0 {
                tracing::warn!(
                    target: "udf",
                    stage = &*self.stage,
                    partition = self.partition,
                    "log rate limit reached ({LOG_LINES_PER_SECOND} lines a second): dropping lines"
                );
            }
            self.dropped += 1;
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// `flumen.log(level, ptr, len)`: a line from the UDF (`flumen_sdk::log::info!` …) into flumen's
/// log, naming the stage and partition; at most [`LOG_LINES_PER_SECOND`] lines a second
/// ([`LOG_BURST`] at once) and [`MAX_LOG_LINE`] bytes each. Its time counts against the call's
/// deadline like the guest's own.
pub(super) fn host_log(mut caller: Caller<'_, GuestState>, level: u32, ptr: u32, len: u32) {
    if !caller.data_mut().log.allow() {
        return;
    }
    let Some(line) = guest_text(&mut caller, ptr, len, MAX_LOG_LINE) else {
        return;
    };
    let log = &mut caller.data_mut().log;
    let dropped = std::mem::take(&mut log.dropped);
    let (stage, partition) = (&*log.stage, log.partition);
    if dropped > 0 {
        tracing::warn!(target: "udf", stage, partition, "{dropped} lines dropped by the log rate limit");
    }
    match abi::LogLevel::from_u32(level) {
        abi::LogLevel::Error => tracing::error!(target: "udf", stage, partition, "{line}"),
        abi::LogLevel::Warn => tracing::warn!(target: "udf", stage, partition, "{line}"),
        abi::LogLevel::Info => tracing::info!(target: "udf", stage, partition, "{line}"),
        abi::LogLevel::Debug => tracing::debug!(target: "udf", stage, partition, "{line}"),
    }
}

impl ResourceLimiter for GuestState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_limit;
        self.memory_limit_hit |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// `flumen.panic(ptr, len)`: keeps the guest's panic message for the failure report.
pub(super) fn host_panic(mut caller: Caller<'_, GuestState>, ptr: u32, len: u32) {
    let message = guest_text(&mut caller, ptr, len, MAX_PANIC_MESSAGE);
    caller.data_mut().panic_message = message;
}

/// At most `max` bytes of the guest's memory at `ptr..ptr + len`, as text (lossy); `None` if
/// they are not all inside its memory.
fn guest_text(
    caller: &mut Caller<'_, GuestState>,
    ptr: u32,
    len: u32,
    max: usize,
) -> Option<String> {
    let memory = caller
        .get_export(abi::exports::MEMORY)
        .and_then(|e| e.into_memory())?;
    let start = ptr as usize;
    let end = start.saturating_add((len as usize).min(max));
    let bytes = memory.data(&*caller).get(start..end)?;
    Some(String::from_utf8_lossy(bytes).into_owned())
}

/// One live instance: a Wasm instance, or a native runner.
pub(super) enum Runner {
    Wasm(Box<WasmGuest>),
    Native(NativeGuest),
}

impl Runner {
    pub(super) fn instantiate(
        module: &LoadedModule,
        limits: Limits,
        purpose: Purpose,
    ) -> Result<Self, ModuleError> {
        match &module.backend {
            Backend::Wasm { pre, engine } => {
                WasmGuest::instantiate(module, pre, engine, limits, purpose)
                    .map(|g| Runner::Wasm(Box::new(g)))
            }
            Backend::Native(library) => Ok(Runner::Native(NativeGuest::new(library.clone()))),
        }
    }

    pub(super) fn call(&mut self, call: Export, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        match self {
            Runner::Wasm(guest) => guest.call(call, request),
            Runner::Native(guest) => {
                let code = match call {
                    Export::Describe => abi::native::DESCRIBE,
                    Export::Init => abi::native::INIT,
                    Export::Process => abi::native::PROCESS,
                    Export::Merge => abi::native::MERGE,
                    Export::Finish => abi::native::FINISH,
                    Export::ToJson => abi::native::TO_JSON,
                };
                guest.call(code, request)
            }
        }
    }
}

/// One live Wasm instance and its typed exports.
pub(super) struct WasmGuest {
    store: Store<GuestState>,
    memory: Memory,
    describe: TypedFunc<(), u64>,
    input: TypedFunc<u32, u32>,
    init: TypedFunc<u32, u64>,
    process: TypedFunc<u32, u64>,
    to_json: TypedFunc<u32, u64>,
    merge: Option<TypedFunc<u32, u64>>,
    finish: Option<TypedFunc<u32, u64>>,
    deadline_ticks: u64,
    limits: Limits,
}

impl WasmGuest {
    fn instantiate(
        module: &LoadedModule,
        pre: &InstancePre<GuestState>,
        engine: &Engine,
        limits: Limits,
        purpose: Purpose,
    ) -> Result<Self, ModuleError> {
        let state = GuestState {
            describing: purpose == Purpose::Describe,
            memory_limit: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            memory_limit_hit: false,
            panic_message: None,
            log: GuestLog::new(&purpose),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| state);
        store.epoch_deadline_trap();
        let deadline_ticks = (limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(deadline_ticks);
        let instance = pre.instantiate(&mut store).map_err(|e| {
            let message = format!("{e:#}");
            if message.contains("maximum concurrent") {
                // Not the module's fault: the pool is full.
                return ModuleError::Capacity(message);
            }
            module.guest_error(format!(
                "cannot instantiate it: {}",
                failure(&store, &e, limits)
            ))
        })?;
        let missing = |export: &str, signature: &str| ModuleError::MissingExport {
            path: module.path.clone(),
            export: format!("`{export}` {signature}"),
        };
        let memory = instance
            .get_memory(&mut store, abi::exports::MEMORY)
            .ok_or_else(|| missing(abi::exports::MEMORY, "(a memory)"))?;
        macro_rules! typed {
            ($name:expr, $params:ty, $results:ty, $sig:expr) => {
                instance
                    .get_typed_func::<$params, $results>(&mut store, $name)
                    .map_err(|_| missing($name, $sig))?
            };
        }
        Ok(WasmGuest {
            describe: typed!(abi::exports::DESCRIBE, (), u64, "as () -> i64"),
            input: typed!(abi::exports::INPUT, u32, u32, "as (i32) -> i32"),
            init: typed!(abi::exports::INIT, u32, u64, "as (i32) -> i64"),
            process: typed!(abi::exports::PROCESS, u32, u64, "as (i32) -> i64"),
            to_json: typed!(abi::exports::TO_JSON, u32, u64, "as (i32) -> i64"),
            merge: instance
                .get_typed_func(&mut store, abi::exports::MERGE)
                .ok(),
            finish: instance
                .get_typed_func(&mut store, abi::exports::FINISH)
                .ok(),
            store,
            memory,
            deadline_ticks,
            limits,
        })
    }

    /// Writes `request` (the concatenation of its parts) into the guest's input buffer, makes
    /// `call`, and returns the guest's reply, bounds-checked against its memory.
    fn call(&mut self, call: Export, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        let state = self.store.data_mut();
        state.panic_message = None;
        state.memory_limit_hit = false;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let packed = match call {
            Export::Describe => self.describe.call(&mut self.store, ()),
            _ => {
                let total: usize = request.iter().map(|part| part.len()).sum();
                let len = u32::try_from(total)
                    .map_err(|_| GuestFailure("request larger than 4 GiB".into()))?;
                let ptr = self
                    .input
                    .call(&mut self.store, len)
                    .map_err(|e| GuestFailure(failure(&self.store, &e, self.limits)))?;
                let start = ptr as usize;
                let target = self
                    .memory
                    .data_mut(&mut self.store)
                    .get_mut(start..start + total)
                    .ok_or_else(|| {
                        GuestFailure("guest input buffer is out of its memory".into())
                    })?;
                let mut at = 0;
                for part in request {
                    target[at..at + part.len()].copy_from_slice(part);
                    at += part.len();
                }
                let missing = |name: &str| GuestFailure(format!("module does not export `{name}`"));
                let func = match call {
                    Export::Init => &self.init,
                    Export::Process => &self.process,
                    Export::Merge => self
                        .merge
                        .as_ref()
                        .ok_or_else(|| missing(abi::exports::MERGE))?,
                    Export::Finish => self
                        .finish
                        .as_ref()
                        .ok_or_else(|| missing(abi::exports::FINISH))?,
                    Export::ToJson | Export::Describe => &self.to_json,
                };
                func.call(&mut self.store, len)
            }
        };
        let packed = packed.map_err(|e| GuestFailure(failure(&self.store, &e, self.limits)))?;
        let (ptr, len) = abi::unpack(packed);
        let start = ptr as usize;
        self.memory
            .data(&self.store)
            .get(start..start.saturating_add(len as usize))
            .ok_or_else(|| {
                GuestFailure(format!(
                    "guest returned a buffer ({ptr:#x}, {len} bytes) outside its memory"
                ))
            })
    }
}

/// What a failed call tells the user: the guest's panic message, the limit it hit, or the trap.
fn failure(store: &Store<GuestState>, error: &wasmtime::Error, limits: Limits) -> String {
    let state = store.data();
    if let Some(message) = &state.panic_message {
        return panic_failure(message);
    }
    // Describe runs under the runtime's own limits, every other call under the stage's.
    let describing = state.describing;
    if state.memory_limit_hit {
        return match describing {
            true => format!(
                "exceeded the {} MiB of memory a module has to describe itself",
                limits.memory_bytes >> 20
            ),
            false => format!(
                "exceeded its memory limit of {} MiB (memory_limit_mib)",
                limits.memory_bytes >> 20
            ),
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return match describing {
            true => format!(
                "exceeded the {} ms a module has to describe itself",
                limits.timeout.as_millis()
            ),
            false => format!(
                "{TIMEOUT}{} ms per call (timeout_ms)",
                limits.timeout.as_millis()
            ),
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => format!("trapped: {trap}"),
        None => format!("failed: {error}"),
    }
}
