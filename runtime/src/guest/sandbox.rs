//! The sandbox: one wasmtime [`Engine`] with the pooling allocator and epoch interruption, and the
//! loader that refuses a module importing anything but flumen's own functions, checks it and asks
//! it what it is ([`LoadedModule`]).

use super::Export;
use super::failure::GuestFailure;
use super::native::NativeLibrary;
use super::wasm::{EPOCH_TICK, GuestState, Runner, host_log, host_panic};
use flumen_sdk::abi::{self, ABI_VERSION, Describe, imports};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::{
    Config, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig,
};

/// The smallest instance pool: room for small pipelines and a reload's second set.
pub const MIN_POOL: usize = 256;
/// The largest instance pool (each slot reserves 4 GiB of address space, not memory); a pipeline
/// needing more instances allocates them one by one.
pub const MAX_POOL: usize = 8192;
/// The largest module loaded: flumen's modules are a few hundred KiB, and compiling one takes
/// time in proportion to its size.
pub const MAX_MODULE_BYTES: usize = 16 << 20;

/// Why a module cannot be used.
#[derive(Debug, thiserror::Error)]
#[expect(
    missing_docs,
    reason = "each variant is documented by its message, which names its fields"
)]
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
            .map_err(engine_error)?
            .func_wrap(imports::MODULE, imports::LOG, host_log)
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
    /// Where it was loaded from.
    pub path: PathBuf,
    /// A hash of the module's bytes.
    pub hash: String,
    pub(super) backend: Backend,
    describe: Option<Describe>,
}

/// How a module runs.
pub(super) enum Backend {
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
        let mut guest = Runner::instantiate(self, DESCRIBE_LIMITS, Purpose::Describe)?;
        let reply = guest
            .call(Export::Describe, &[])
            .map_err(|GuestFailure(message)| self.guest_error(format!("describe: {message}")))?;
        let describe = abi::decode_control::<Describe>(reply)
            .map_err(|e| self.guest_error(format!("describe returned garbage: {e}")))?;
        Ok(describe)
    }

    pub(super) fn guest_error(&self, message: String) -> ModuleError {
        ModuleError::Guest {
            path: self.path.clone(),
            message,
        }
    }
}

/// The limits a module describes itself under (not configurable: no stage is known yet).
pub(super) const DESCRIBE_LIMITS: Limits = Limits {
    memory_bytes: 64 << 20,
    timeout: Duration::from_secs(5),
};

/// What an instance is for: its limits' names in messages differ, and an operator's log lines
/// name its stage and partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Only to describe its module, under [`DESCRIBE_LIMITS`].
    Describe,
    /// To run partition `partition` of stage `stage`, under the stage's limits.
    Operator {
        /// The stage's name.
        stage: Arc<str>,
        /// The partition's index.
        partition: usize,
    },
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most memory the instance may grow to.
    pub memory_bytes: u64,
    /// The longest one call may take.
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::super::failure::panic_failure;
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
