//! The sandbox: one wasmtime [`Engine`] with the pooling allocator and epoch interruption, the
//! loader that refuses a module importing anything but flumen's own functions, and
//! [`OperatorInstance`], one running instance of a module with its memory cap and call deadline.
//!
//! A guest is untrusted: every pointer and length it returns is checked against its memory, and a
//! trap (a panic, an out-of-memory, a deadline) is reported as a [`GuestFailure`] for the caller
//! to recover from, never as a crash.

pub use crate::failure::GuestFailure;
use crate::failure::{TIMEOUT, panic_failure};
use crate::native::{NativeGuest, NativeLibrary};
use flumen_sdk::abi::{self, ABI_VERSION, Describe, InitRequest, PortSpec, imports};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{
    Caller, Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    Module, PoolingAllocationConfig, ResourceLimiter, Store, Trap, TypedFunc,
};

/// How often the engine's epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// The smallest instance pool: room for small pipelines and a reload's second set.
pub const MIN_POOL: usize = 256;
/// The largest instance pool (each slot reserves 4 GiB of address space, not memory); a pipeline
/// needing more instances allocates them one by one.
pub const MAX_POOL: usize = 8192;
/// The largest module loaded: flumen's modules are a few hundred KiB, and compiling one takes
/// time in proportion to its size.
pub const MAX_MODULE_BYTES: usize = 16 << 20;
/// Longest panic message kept from a guest.
const MAX_PANIC_MESSAGE: usize = 4096;

/// Why a module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("module {path}: not a valid WebAssembly module: {message}")]
    Compile { path: PathBuf, message: String },
    #[error(
        "module {path}: imports `{import}`, which flumen does not provide; a flumen module may \
         import only flumen's own functions ({allowed}): build it with flumen-sdk for \
         wasm32-unknown-unknown, without WASI"
    )]
    ForbiddenImport {
        path: PathBuf,
        import: String,
        allowed: String,
    },
    #[error("module {path}: does not export {export}; is it built with flumen-sdk?")]
    MissingExport { path: PathBuf, export: String },
    #[error(
        "module {path}: speaks flumen ABI version {found}, this runtime speaks {expected}; \
         rebuild it against this flumen-sdk"
    )]
    AbiVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("module {path}: {message}")]
    Guest { path: PathBuf, message: String },
    #[error("module {path}: init failed: {message}")]
    Init { path: PathBuf, message: String },
    #[error(
        "module {path}: {size} bytes, more than the {MAX_MODULE_BYTES} a module may have \
         (compiling a module takes time in proportion to its size)"
    )]
    TooLarge { path: PathBuf, size: usize },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    #[error(
        "no room for another instance in the sandbox ({0}); flumen sizes its instance pool at \
         start from the pipeline's stages and partitions, so restart it to run this many"
    )]
    Capacity(String),
}

/// The host state of one store.
struct GuestState {
    /// Whether the instance only describes its module (under [`DESCRIBE_LIMITS`]).
    describing: bool,
    memory_limit: usize,
    memory_limit_hit: bool,
    panic_message: Option<String>,
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

/// The shared engine and linker. Dropping it stops its epoch thread.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<GuestState>,
    stop: Arc<AtomicBool>,
    /// How many instances can live at once.
    capacity: usize,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// How many instances can live at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sets up the engine for at most [`MIN_POOL`] instances at once; see [`Self::with_capacity`].
    pub fn new() -> Result<Self, ModuleError> {
        Self::with_capacity(MIN_POOL)
    }

    /// Sets up the engine: a pool of instances for `instances` at once (at least [`MIN_POOL`];
    /// past [`MAX_POOL`], instances are allocated one by one instead), epoch interruption, a
    /// compiled-module cache on disk keyed by content hash (wasmtime's own, in the user's cache
    /// folder).
    pub fn with_capacity(instances: usize) -> Result<Self, ModuleError> {
        let engine_error = |e: wasmtime::Error| ModuleError::Engine(format!("{e:#}"));
        let capacity = instances.max(MIN_POOL);
        let mut pool = PoolingAllocationConfig::new();
        let slots = u32::try_from(capacity.min(MAX_POOL)).unwrap_or(u32::MAX);
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memory_size(4 << 30);
        let strategy = if capacity <= MAX_POOL {
            InstanceAllocationStrategy::Pooling(pool)
        } else {
            InstanceAllocationStrategy::OnDemand
        };
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(strategy)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        if std::env::var_os("FLUMEN_PERFMAP").is_some() {
            // `/tmp/perf-PID.map`: lets `perf report` name the functions of guest code.
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if std::env::var_os("FLUMEN_NO_CACHE").is_none() {
            match wasmtime::Cache::new(wasmtime::CacheConfig::new()) {
                Ok(cache) => {
                    config.cache(Some(cache));
                }
                Err(e) => tracing::warn!("compiled-module cache disabled: {e:#}"),
            }
        }
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(e) => {
                // The pool reserves its address space up front (about a TiB of it); where that
                // is refused (under valgrind, for instance), instances get memory one by one.
                tracing::warn!("no instance pool ({e:#}); allocating instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).map_err(engine_error)?
            }
        };
        let mut linker = Linker::new(&engine);
        linker
            .func_wrap(imports::MODULE, imports::PANIC, host_panic)
            .map_err(engine_error)?;

        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, stopped) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("flumen-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|e| ModuleError::Engine(e.to_string()))?;
        Ok(Sandbox {
            engine,
            linker,
            stop,
            capacity,
        })
    }

    /// Loads, checks and describes the module at `path`.
    pub fn load(&self, path: &Path) -> Result<Arc<LoadedModule>, ModuleError> {
        let bytes = read_module(path)?;
        self.load_bytes(path, &bytes)
    }

    /// Loads, checks and describes a module from its bytes; `path` names it in messages.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<LoadedModule>, ModuleError> {
        let path = path.to_path_buf();
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(ModuleError::TooLarge {
                path,
                size: bytes.len(),
            });
        }
        let module =
            Module::from_binary(&self.engine, bytes).map_err(|e| ModuleError::Compile {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        for import in module.imports() {
            let allowed = import.module() == imports::MODULE
                && imports::ALL.contains(&import.name())
                && matches!(import.ty(), ExternType::Func(_));
            if !allowed {
                return Err(ModuleError::ForbiddenImport {
                    path,
                    import: format!("{}.{}", import.module(), import.name()),
                    allowed: imports::ALL
                        .iter()
                        .map(|name| format!("{}.{name}", imports::MODULE))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Compile {
                path: path.clone(),
                message: format!("{e:#}"),
            })?;
        let loaded = LoadedModule {
            path,
            backend: Backend::Wasm {
                pre,
                engine: self.engine.clone(),
            },
            hash: content_hash(bytes),
            describe: None,
        };
        loaded.described()
    }

    /// Loads the native form of a module (a shared library built from the same UDF crate).
    pub fn load_native(&self, path: &Path) -> Result<Arc<LoadedModule>, ModuleError> {
        let bytes = std::fs::read(path).map_err(|source| ModuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let library = NativeLibrary::load(path).map_err(|message| ModuleError::Compile {
            path: path.to_path_buf(),
            message,
        })?;
        let loaded = LoadedModule {
            path: path.to_path_buf(),
            backend: Backend::Native(library),
            hash: content_hash(&bytes),
            describe: None,
        };
        loaded.described()
    }
}

impl LoadedModule {
    /// Asks the module what it is and checks the answer.
    fn described(mut self) -> Result<Arc<LoadedModule>, ModuleError> {
        let loaded = &mut self;
        let describe = loaded.describe_now()?;
        if describe.abi_version != ABI_VERSION {
            return Err(ModuleError::AbiVersion {
                path: self.path,
                found: describe.abi_version,
                expected: ABI_VERSION,
            });
        }
        if let Err(why) = check_describe(&describe) {
            return Err(self.guest_error(format!("describe: {why}")));
        }
        if let Backend::Wasm { pre, .. } = &loaded.backend
            && describe.kind == abi::OperatorKind::Aggregate
        {
            for export in [abi::exports::MERGE, abi::exports::FINISH] {
                if pre.module().get_export(export).is_none() {
                    return Err(ModuleError::MissingExport {
                        path: self.path,
                        export: format!("`{export}`, which an aggregate needs"),
                    });
                }
            }
        }
        self.describe = Some(describe);
        Ok(Arc::new(self))
    }
}

/// Checks what a module says of itself against the limits on ports, names and type shapes.
pub fn check_describe(describe: &Describe) -> Result<(), String> {
    if describe.side_outputs.len() > abi::MAX_SIDE_OUTPUTS {
        return Err(format!(
            "declares {} side outputs, more than the {} allowed",
            describe.side_outputs.len(),
            abi::MAX_SIDE_OUTPUTS
        ));
    }
    let names = [&describe.input_type, &describe.output_type]
        .into_iter()
        .chain(describe.state_type.as_ref())
        .chain(
            describe
                .side_outputs
                .iter()
                .flat_map(|side| [&side.name, &side.type_name]),
        );
    for name in names {
        if name.len() > abi::MAX_NAME_BYTES {
            return Err(format!(
                "declares a name of {} bytes, more than the {} allowed",
                name.len(),
                abi::MAX_NAME_BYTES
            ));
        }
    }
    let shapes = [&describe.input_shape, &describe.output_shape]
        .into_iter()
        .chain(describe.side_outputs.iter().map(|side| &side.shape))
        .flatten();
    for shape in shapes {
        crate::shape::check(shape)?;
    }
    let mut seen = std::collections::HashSet::new();
    for side in &describe.side_outputs {
        let valid = !side.name.is_empty()
            && side
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid || side.name == "main" || !seen.insert(side.name.as_str()) {
            return Err(format!(
                "declares a side output named {:?}: side outputs need distinct names of \
                 letters, digits, `_` and `-`, other than `main`",
                side.name
            ));
        }
    }
    Ok(())
}

/// Reads a module file, refusing one larger than [`MAX_MODULE_BYTES`] before reading it all.
fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    use std::io::Read;
    let read_error = |source| ModuleError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_MODULE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_MODULE_BYTES {
        let size = std::fs::metadata(path).map_or(bytes.len(), |m| m.len() as usize);
        return Err(ModuleError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    Ok(bytes)
}

/// `flumen.panic(ptr, len)`: keeps the guest's panic message for the failure report.
fn host_panic(mut caller: Caller<'_, GuestState>, ptr: u32, len: u32) {
    let Some(memory) = caller
        .get_export(abi::exports::MEMORY)
        .and_then(|e| e.into_memory())
    else {
        return;
    };
    let start = ptr as usize;
    let end = start.saturating_add((len as usize).min(MAX_PANIC_MESSAGE));
    let message = memory
        .data(&caller)
        .get(start..end)
        .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
    caller.data_mut().panic_message = message;
}

/// The SHA-256 of a module's bytes, in hex: tells module versions apart.
fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compiled, checked module, ready to instantiate any number of times.
pub struct LoadedModule {
    pub path: PathBuf,
    /// A hash of the module's bytes.
    pub hash: String,
    backend: Backend,
    describe: Option<Describe>,
}

/// How a module runs.
enum Backend {
    /// Sandboxed in wasmtime.
    Wasm {
        pre: InstancePre<GuestState>,
        engine: Engine,
    },
    /// Natively, as a shared library (see [`crate::native`]).
    Native(Arc<NativeLibrary>),
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("path", &self.path)
            .field("hash", &self.hash)
            .finish()
    }
}

impl LoadedModule {
    /// What the module said of itself.
    pub fn describe(&self) -> &Describe {
        // Set by `Sandbox::load_bytes` before the module is handed out.
        self.describe
            .as_ref()
            .unwrap_or_else(|| unreachable!("a loaded module is always described"))
    }

    fn describe_now(&self) -> Result<Describe, ModuleError> {
        let mut guest = Guest::instantiate(self, DESCRIBE_LIMITS, Purpose::Describe)?;
        let reply = guest
            .call(Call::Describe, &[])
            .map_err(|GuestFailure(message)| self.guest_error(format!("describe: {message}")))?;
        let describe = abi::decode_control::<Describe>(reply)
            .map_err(|e| self.guest_error(format!("describe returned garbage: {e}")))?;
        Ok(describe)
    }

    fn guest_error(&self, message: String) -> ModuleError {
        ModuleError::Guest {
            path: self.path.clone(),
            message,
        }
    }
}

/// The limits a module describes itself under (not configurable: no stage is known yet).
const DESCRIBE_LIMITS: Limits = Limits {
    memory_bytes: 64 << 20,
    timeout: Duration::from_secs(5),
};

/// What an instance is for: its limits' names in messages differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Only to describe its module, under [`DESCRIBE_LIMITS`].
    Describe,
    /// To run a stage, under the stage's limits.
    Operator,
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub timeout: Duration,
}

#[derive(Clone, Copy)]
enum Call {
    Describe,
    Init,
    Process,
    Merge,
    Finish,
    ToJson,
}

/// One live instance: a Wasm instance, or a native runner.
enum Guest {
    Wasm(Box<WasmGuest>),
    Native(NativeGuest),
}

impl Guest {
    fn instantiate(
        module: &LoadedModule,
        limits: Limits,
        purpose: Purpose,
    ) -> Result<Self, ModuleError> {
        match &module.backend {
            Backend::Wasm { pre, engine } => {
                WasmGuest::instantiate(module, pre, engine, limits, purpose)
                    .map(|g| Guest::Wasm(Box::new(g)))
            }
            Backend::Native(library) => Ok(Guest::Native(NativeGuest::new(library.clone()))),
        }
    }

    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        match self {
            Guest::Wasm(guest) => guest.call(call, request),
            Guest::Native(guest) => {
                let code = match call {
                    Call::Describe => abi::native::DESCRIBE,
                    Call::Init => abi::native::INIT,
                    Call::Process => abi::native::PROCESS,
                    Call::Merge => abi::native::MERGE,
                    Call::Finish => abi::native::FINISH,
                    Call::ToJson => abi::native::TO_JSON,
                };
                guest.call(code, request)
            }
        }
    }
}

/// One live Wasm instance and its typed exports.
struct WasmGuest {
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
    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        let state = self.store.data_mut();
        state.panic_message = None;
        state.memory_limit_hit = false;
        self.store.set_epoch_deadline(self.deadline_ticks);
        let packed = match call {
            Call::Describe => self.describe.call(&mut self.store, ()),
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
                    Call::Init => &self.init,
                    Call::Process => &self.process,
                    Call::Merge => self
                        .merge
                        .as_ref()
                        .ok_or_else(|| missing(abi::exports::MERGE))?,
                    Call::Finish => self
                        .finish
                        .as_ref()
                        .ok_or_else(|| missing(abi::exports::FINISH))?,
                    Call::ToJson | Call::Describe => &self.to_json,
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

/// How an operator instance is set up.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub stage: String,
    pub params: serde_json::Value,
    pub ports: Vec<PortSpec>,
    pub limits: Limits,
}

/// An initialised operator instance. After a failed call it rebuilds itself from its module, so
/// the next call finds a fresh instance.
pub struct OperatorInstance {
    module: Arc<LoadedModule>,
    config: InstanceConfig,
    guest: Guest,
    broken: bool,
}

impl OperatorInstance {
    /// Instantiates `module` and initialises it with `config`.
    pub fn new(module: Arc<LoadedModule>, config: InstanceConfig) -> Result<Self, ModuleError> {
        let guest = Self::start(&module, &config)?;
        Ok(OperatorInstance {
            module,
            config,
            guest,
            broken: false,
        })
    }

    fn start(module: &LoadedModule, config: &InstanceConfig) -> Result<Guest, ModuleError> {
        let mut guest = Guest::instantiate(module, config.limits, Purpose::Operator)?;
        let request = InitRequest {
            stage: config.stage.clone(),
            params_json: config.params.to_string(),
            ports: config.ports.clone(),
        };
        let request = bincode::serde::encode_to_vec(&request, abi::BINCODE)
            .map_err(|e| module.guest_error(format!("cannot encode init: {e}")))?;
        let init_error = |message| ModuleError::Init {
            path: module.path.clone(),
            message,
        };
        let reply = guest
            .call(Call::Init, &[&request])
            .map_err(|GuestFailure(message)| init_error(message))?;
        let outcome = abi::decode_control::<Result<(), String>>(reply)
            .map_err(|e| init_error(format!("init returned garbage: {e}")))?;
        outcome.map_err(init_error)?;
        Ok(guest)
    }

    /// The module this instance runs.
    pub fn module(&self) -> &Arc<LoadedModule> {
        &self.module
    }

    fn ensure_fresh(&mut self) -> Result<(), GuestFailure> {
        if self.broken {
            self.guest = Self::start(&self.module, &self.config)
                .map_err(|e| GuestFailure(format!("cannot restart the instance: {e}")))?;
            self.broken = false;
        }
        Ok(())
    }

    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.ensure_fresh()?;
        match self.guest.call(call, request) {
            Ok(reply) => Ok(reply),
            Err(failure) => {
                // A failed call leaves the instance in an unknown state: rebuild it next time.
                self.broken = true;
                Err(failure)
            }
        }
    }

    /// Runs the operator over an input batch (its parts: records, then any state slots) and
    /// returns its output entries. For an aggregate: adds the records to their accumulators.
    pub fn process(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Process, request)
    }

    /// Aggregates only: merges accumulators (see [`abi::exports::MERGE`]).
    pub fn merge(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Merge, request)
    }

    /// Aggregates only: the results of fired windows (see [`abi::exports::FINISH`]).
    pub fn finish(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Finish, request)
    }

    /// Renders an input batch as JSON, without running the operator.
    pub fn to_json(&mut self, batch: &[u8]) -> Result<&[u8], GuestFailure> {
        self.call(Call::ToJson, &[batch])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_past_the_size_limit_is_refused_before_it_is_compiled() {
        let sandbox = Sandbox::new().unwrap();
        let error = sandbox
            .load_bytes(Path::new("big.wasm"), &vec![0; MAX_MODULE_BYTES + 1])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("module big.wasm: 16777217 bytes, more than"),
            "{error}"
        );
    }

    #[test]
    fn describe_replies_past_the_limits_are_refused() {
        let mut describe = Describe {
            abi_version: ABI_VERSION,
            kind: abi::OperatorKind::Map,
            input_type: "T".into(),
            output_type: "T".into(),
            side_outputs: Vec::new(),
            state_type: None,
            input_shape: None,
            output_shape: None,
        };
        assert_eq!(check_describe(&describe), Ok(()));
        describe.input_type = "T".repeat(abi::MAX_NAME_BYTES + 1);
        assert!(
            check_describe(&describe)
                .unwrap_err()
                .contains("a name of 1025 bytes")
        );
        describe.input_type = "T".into();
        describe.side_outputs = ["late", "late"]
            .iter()
            .map(|name| abi::SideOutput {
                name: name.to_string(),
                type_name: "T".into(),
                shape: None,
            })
            .collect();
        assert!(
            check_describe(&describe)
                .unwrap_err()
                .contains("distinct names")
        );
    }

    #[test]
    fn a_guest_panic_message_says_panicked_at_once() {
        assert_eq!(
            panic_failure("panicked at src/lib.rs:3:5:\nboom"),
            "panicked at src/lib.rs:3:5:\nboom"
        );
        assert_eq!(panic_failure("boom"), "panicked at boom");
    }
}
