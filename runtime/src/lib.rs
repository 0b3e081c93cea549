//! flumen: a stream runtime whose operators are Rust functions compiled to WebAssembly.
//!
//! The control plane is `load → validate → plan → build → run`: [`config`] parses and checks the
//! pipeline file, [`guest`] loads each module and asks it what it is, [`plan`] wires and
//! type-checks the graph, [`prepare`] initialises every operator, and [`executor`] runs it. See
//! ARCHITECTURE.md for the whole map.

#![warn(missing_docs)]

pub mod admin;
pub mod checkpoint;
pub mod config;
pub mod connectors;
mod dead_letter;
mod diff;
pub mod executor;
pub mod guest;
pub mod plan;
pub mod rebuild;
pub mod reload;
pub mod shape;
mod stage;
pub use stage::limit_threads;
mod state;
pub mod telemetry;
pub mod testcases;
pub mod toolchain;
pub mod window;

use config::{ConfigError, ConfigErrors, PipelineConfig};
use guest::{InstanceConfig, Limits, ModuleError, OperatorInstance, Sandbox};
use std::collections::BTreeMap;
use std::path::Path;

/// A pipeline whose every module is loaded, type-checked and initialised: what `flumen validate`
/// checks and what `flumen run` starts.
pub struct Prepared {
    /// The checked pipeline file.
    pub config: PipelineConfig,
    /// Its graph, wired and type-checked.
    pub plan: plan::Plan,
    /// Initialised instances of every operator (one per partition), in `plan.operators` order;
    /// none for an operator a reload keeps running (see [`prepare_reload`]).
    pub instances: Vec<Vec<OperatorInstance>>,
}

/// How to prepare a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Partitions of every keyed stage that does not set its own.
    pub parallelism: usize,
    /// How operators run.
    pub backend: BackendKind,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            parallelism: 1,
            backend: BackendKind::Wasm,
        }
    }
}

/// How operators run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// Sandboxed WebAssembly.
    #[default]
    Wasm,
    /// The same UDF crates built for the host: `dir/name.wasm` runs as `dir/native/libname.so`
    /// (`flumen build --native`). Unsandboxed: for measuring and debugging.
    Native,
}

/// Where the native form of the module at `wasm` is: `dir/native/lib<name>.so`.
pub fn native_module_path(wasm: &Path) -> std::path::PathBuf {
    let stem = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = wasm.parent().unwrap_or(Path::new("."));
    dir.join("native")
        .join(format!("lib{stem}{}", std::env::consts::DLL_SUFFIX))
}

/// How many instances the sandbox must hold at once for the pipeline at `path`: every partition
/// of every stage twice (a reload prepares its new set while the old one runs), and one more per
/// module (describing it). A file that does not load needs no more than the smallest pool.
pub fn instances_needed(path: &Path, options: Options) -> usize {
    let (Some(config), _) = config::load(path) else {
        return 0;
    };
    let partitions: usize = config
        .operators
        .iter()
        .map(|op| op.parallelism.unwrap_or(options.parallelism))
        .sum();
    partitions.saturating_mul(2) + config.operators.len() + 16
}

/// Loads the pipeline file at `path` and prepares it, reporting every problem at once.
pub fn prepare(path: &Path, sandbox: &Sandbox, options: Options) -> Result<Prepared, ConfigErrors> {
    match config::load(path) {
        (Some(config), errors) => prepare_config(config, errors, sandbox, options),
        (None, errors) => Err(ConfigErrors(errors)),
    }
}

/// Loads the new version of a pipeline at `path` to replace `running`, and prepares what the
/// reload changes: only the operators the [`diff`] swaps or adds get instances.
pub fn prepare_reload(
    path: &Path,
    sandbox: &Sandbox,
    options: Options,
    running: &plan::Plan,
) -> Result<Prepared, ConfigErrors> {
    match config::load(path) {
        (Some(config), errors) => prepare_against(config, errors, sandbox, options, Some(running)),
        (None, errors) => Err(ConfigErrors(errors)),
    }
}

/// Prepares a parsed pipeline: loads its modules, plans the graph, initialises every operator.
/// `errors` are the problems already found in its file, reported with any found here.
pub fn prepare_config(
    config: PipelineConfig,
    errors: Vec<ConfigError>,
    sandbox: &Sandbox,
    options: Options,
) -> Result<Prepared, ConfigErrors> {
    prepare_against(config, errors, sandbox, options, None)
}

/// Prepares a parsed pipeline; with `running`, instantiates only the operators a reload from it
/// swaps or adds.
fn prepare_against(
    config: PipelineConfig,
    mut errors: Vec<ConfigError>,
    sandbox: &Sandbox,
    options: Options,
    running: Option<&plan::Plan>,
) -> Result<Prepared, ConfigErrors> {
    let mut modules = BTreeMap::new();
    for op in &config.operators {
        let loaded = match options.backend {
            BackendKind::Wasm => sandbox.load(&op.module),
            BackendKind::Native => sandbox.load_native(&native_module_path(&op.module)),
        };
        match loaded {
            Ok(module) => {
                modules.insert(op.name.clone(), module);
            }
            Err(e) => {
                let message = match &e {
                    ModuleError::Read { path, source }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        format!(
                            "module {} not found; build the UDFs with `flumen build` (or `make`)",
                            path.display()
                        )
                    }
                    _ => e.to_string(),
                };
                errors.push(config.error(&format!("operators.{}.module", op.name), message));
            }
        }
    }
    let describes = modules
        .iter()
        .map(|(name, m)| (name.clone(), m.describe().clone()))
        .collect();
    let plan = match plan::plan(&config, &describes, options.parallelism) {
        Ok(mut plan) => {
            for op in &mut plan.operators {
                if let Some(module) = modules.get(&op.config.name) {
                    op.module_hash.clone_from(&module.hash);
                }
            }
            Some(plan)
        }
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            None
        }
    };
    let mut instances = Vec::new();
    if let Some(plan) = &plan {
        let steps = running.map(|running| diff::diff(running, plan));
        for (i, op) in plan.operators.iter().enumerate() {
            let Some(module) = modules.get(&op.config.name) else {
                continue;
            };
            if steps
                .as_ref()
                .is_some_and(|steps| !steps.needs_instances(i))
            {
                instances.push(Vec::new());
                continue;
            }
            let instance_config = InstanceConfig {
                stage: op.config.name.clone(),
                partition: 0,
                params: op.config.params.clone(),
                ports: op
                    .guest_ports()
                    .iter()
                    .map(crate::plan::PortPlan::spec)
                    .collect(),
                limits: Limits {
                    memory_bytes: op.config.memory_limit_bytes,
                    timeout: op.config.timeout,
                },
            };
            let started: Result<Vec<_>, _> = (0..op.partitions)
                .map(|partition| {
                    let config = InstanceConfig {
                        partition,
                        ..instance_config.clone()
                    };
                    OperatorInstance::new(module.clone(), config)
                })
                .collect();
            match started {
                Ok(partitions) => instances.push(partitions),
                Err(e) => {
                    let key = match e {
                        ModuleError::Init { .. } => "params",
                        _ => "module",
                    };
                    errors.push(config.error(
                        &format!("operators.{}.{key}", op.config.name),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    match plan {
        Some(plan) if errors.is_empty() => Ok(Prepared {
            config,
            plan,
            instances,
        }),
        _ => {
            errors.sort_by_key(|e| e.location.map(|l| (l.line, l.column)));
            errors.dedup();
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod layering {
    //! The runtime's modules import one another without cycles (ARCHITECTURE.md gives the
    //! order): found here by reading the `crate::module` paths of each top-level module's code.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Each top-level module and the top-level modules its code (not its comments) names.
    fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut pending = vec![src.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let relative = path.strip_prefix(src).unwrap();
                let top = relative.iter().next().unwrap().to_string_lossy();
                let top = top.trim_end_matches(".rs").to_string();
                if top == "lib" || top == "main" || top == "cli" {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap_or_default();
                let names = graph.entry(top.clone()).or_default();
                for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for (at, _) in line.match_indices("crate::") {
                        let name: String = line[at + 7..]
                            .chars()
                            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                            .collect();
                        if !name.is_empty() && name != top {
                            names.insert(name);
                        }
                    }
                }
            }
        }
        graph
    }

    /// The modules of the crate at `src` that are in an import cycle (or depend on one).
    fn in_cycles(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let graph = imports(src);
        assert!(graph.len() > 5, "{graph:?}");
        // Remove modules that import nothing left, until none can be: what stays is a cycle.
        let mut left = graph.clone();
        while let Some(leaf) = left
            .iter()
            .find(|(_, names)| names.iter().all(|n| !left.contains_key(n)))
            .map(|(name, _)| name.clone())
        {
            left.remove(&leaf);
        }
        left
    }

    #[test]
    fn modules_import_each_other_without_cycles() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        for src in [manifest.join("src"), manifest.join("../sdk/src")] {
            let left = in_cycles(&src);
            assert!(
                left.is_empty(),
                "{}: modules in an import cycle: {left:?}",
                src.display()
            );
        }
    }
}
