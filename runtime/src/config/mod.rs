//! The pipeline file: TOML text in, a checked [`PipelineConfig`] out, or every error at once, each
//! with file, line, column and the key it is about.
//!
//! Parsing is pure (text and an environment lookup in, a value out) so that reload can diff two
//! configurations without touching anything. `${VAR}` and `${VAR:-default}` are replaced before
//! parsing, line by line, so line numbers stay those of the file.
//!
//! - this file: the checked model and the entry points;
//! - `env`: `${VAR}` interpolation, aware of where in the TOML each one stands;
//! - `report`: errors located at their key, unknown keys, the options reader connectors use;
//! - `build`: from the raw TOML to the model (a source's or sink's own options are read by its
//!   connector: [`crate::connectors`]).

mod build;
mod env;
mod graph;
mod report;
#[cfg(test)]
mod tests;

pub use crate::connectors::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_RECORD_BYTES, SinkKind, SourceConfig, SourceKind,
};

use build::{RawFile, build};
use env::substitute_env;
use report::{Doc, Report, check_unknown_keys, collect_locations};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::DeTable;

/// Linear memory cap of an operator instance unless the stage says otherwise.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// The largest `params` table of a stage, as JSON.
pub const MAX_PARAMS_BYTES: usize = 1 << 20;
/// The largest pipeline file read.
pub const MAX_PIPELINE_BYTES: u64 = 4 << 20;

/// Deadline of one guest call unless the stage says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// A position in the pipeline file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column (in characters), from 1.
    pub column: usize,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The pipeline file.
    pub file: PathBuf,
    /// Where in it, when known.
    pub location: Option<Location>,
    /// The dotted key the problem is about (`operators.validate.inputs`), empty if none.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(at) = self.location {
            write!(f, ":{}:{}", at.line, at.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a pipeline file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One line for a failed reload: `<file>:<line>:<column>: <why>`, the first problem and how
    /// many more there are.
    pub fn first_line(&self) -> String {
        match self.0.split_first() {
            Some((first, [])) => first.to_string(),
            Some((first, rest)) => format!("{first} (and {} more problems)", rest.len()),
            None => "unknown problem".into(),
        }
    }

    /// One problem with `file` as a whole that is flumen's, not the file's (a caught panic).
    pub fn internal(file: &Path, message: String) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            location: None,
            key: String::new(),
            message: format!("internal error while loading it: {message}"),
        }])
    }
}

/// A checked pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// The pipeline's name (`[pipeline] name`, else the file's stem).
    pub name: String,
    /// The sink every stage's failed records go to.
    pub dead_letter: Option<String>,
    /// Where and how often the pipeline checkpoints (`[pipeline] checkpoint`).
    pub checkpoint: Option<CheckpointConfig>,
    /// Sources, in name order.
    pub sources: Vec<SourceConfig>,
    /// Operators, in name order.
    pub operators: Vec<OperatorConfig>,
    /// Sinks, in name order.
    pub sinks: Vec<SinkConfig>,
    /// Where each dotted key is written, for errors found after parsing.
    pub locations: BTreeMap<String, Location>,
}

impl PipelineConfig {
    /// An error about `key`, located where the file writes it (or its closest parent).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let mut probe = key;
        let location = loop {
            if let Some(at) = self.locations.get(probe) {
                break Some(*at);
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => break None,
            }
        };
        ConfigError {
            file: self.file.clone(),
            location,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Checkpoints of a pipeline: `[pipeline] checkpoint = { dir = "...", interval_ms = 1000 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The folder checkpoints are written to, relative to the working folder (like sinks').
    pub dir: PathBuf,
    /// How often one is taken while running.
    pub interval: Duration,
}

/// An operator stage, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// Its name, unique among the stages.
    pub name: String,
    /// The module file, resolved against the pipeline file's folder.
    pub module: PathBuf,
    /// What it reads.
    pub inputs: Vec<InputRef>,
    /// The `params` table, as JSON for the guest.
    pub params: serde_json::Value,
    /// The most memory its module may use (`memory_limit_mib`).
    pub memory_limit_bytes: u64,
    /// The longest one guest call may take (`timeout_ms`).
    pub timeout: Duration,
    /// The field whose value keys this stage's records (partitioning, state, windows).
    pub key_by: Option<String>,
    /// The field the producing stage takes each record's event time from.
    pub event_time: Option<String>,
    /// Partitions of this stage, if it overrides the pipeline's.
    pub parallelism: Option<usize>,
    /// Keyed state not written for this long (event time) may be dropped.
    pub state_ttl_ms: Option<i64>,
    /// The windows of a window stage (its module is an aggregate).
    pub window: Option<crate::window::WindowSpec>,
    /// How long after firing a window still takes records.
    pub allowed_lateness_ms: i64,
    /// On reload, what to do when the new module's state no longer fits the kept state.
    pub on_state_change: OnStateChange,
    /// What the host keeps for the stage's module, at most.
    pub limits: StageLimits,
}

/// Bounds on the host memory a stage's module can make the host spend: beyond them, the record
/// responsible goes to the dead letters and nothing else changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageLimits {
    /// Output bytes of one guest call.
    pub max_output_bytes: usize,
    /// Bytes of records one input record may lead to.
    pub max_record_output_bytes: usize,
    /// Bytes of keyed state and window accumulators (keys included) of the whole stage.
    pub max_state_bytes: usize,
    /// Bytes of one key's state or one window's accumulator.
    pub max_state_bytes_per_key: usize,
}

impl Default for StageLimits {
    fn default() -> Self {
        StageLimits {
            max_output_bytes: 64 << 20,
            max_record_output_bytes: 4 << 20,
            max_state_bytes: 1 << 30,
            max_state_bytes_per_key: 4 << 20,
        }
    }
}

/// `on_state_change`: whether a reload that changes a stage's state type (or its key or windows)
/// is refused, or drops the stage's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStateChange {
    /// Refuse the reload; the running pipeline stays as it is.
    #[default]
    Refuse,
    /// Start the new module with empty state.
    Reset,
}

/// A sink stage, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Its name, unique among the stages.
    pub name: String,
    /// Where it writes.
    pub kind: SinkKind,
    /// What it reads.
    pub inputs: Vec<InputRef>,
}

/// An entry of `inputs`: `stage` (its main output) or `stage.port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputRef {
    /// The stage read.
    pub stage: String,
    /// Its port (`None`: the main output).
    pub port: Option<String>,
    /// Where it is written, for later errors.
    pub location: Option<Location>,
    /// Its key path, for later errors.
    pub key: String,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            Some(port) => write!(f, "{}.{port}", self.stage),
            None => f.write_str(&self.stage),
        }
    }
}

/// Reads the pipeline file at `path` leniently (see [`parse_lenient`]), taking `${VAR}`s from the
/// process environment.
pub fn load(path: &Path) -> (Option<PipelineConfig>, Vec<ConfigError>) {
    let read = std::fs::File::open(path).and_then(|file| {
        use std::io::Read;
        let mut text = String::new();
        file.take(MAX_PIPELINE_BYTES + 1)
            .read_to_string(&mut text)?;
        if text.len() as u64 > MAX_PIPELINE_BYTES {
            return Err(std::io::Error::other(format!(
                "it is larger than {MAX_PIPELINE_BYTES} bytes"
            )));
        }
        Ok(text)
    });
    match read {
        Ok(text) => parse_lenient(path, &text, &|name| std::env::var(name).ok()),
        Err(e) => (
            None,
            vec![ConfigError {
                file: path.to_path_buf(),
                location: None,
                key: String::new(),
                message: format!("cannot read the pipeline file: {e}"),
            }],
        ),
    }
}

/// Reads the pipeline file at `path` (`${VAR}`s from the environment) as `T`, ignoring what `T`
/// does not name: another tool's section of the file, such as `flumen test`'s `[[tests]]`.
/// Errors name the file, line and key, like the pipeline's own.
pub fn load_section<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigErrors> {
    let mut report = Report {
        file: path.to_path_buf(),
        text: String::new(),
        errors: Vec::new(),
    };
    let text = match std::fs::read(path) {
        Ok(bytes) if bytes.len() as u64 <= MAX_PIPELINE_BYTES => {
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Ok(_) => {
            report.errors.push(ConfigError {
                file: path.to_path_buf(),
                location: None,
                key: String::new(),
                message: format!("it is larger than {MAX_PIPELINE_BYTES} bytes"),
            });
            return Err(ConfigErrors(report.errors));
        }
        Err(e) => {
            report.errors.push(ConfigError {
                file: path.to_path_buf(),
                location: None,
                key: String::new(),
                message: format!("cannot read the pipeline file: {e}"),
            });
            return Err(ConfigErrors(report.errors));
        }
    };
    report.text = substitute_env(&text, &|name| std::env::var(name).ok(), &mut report);
    if !report.errors.is_empty() {
        return Err(ConfigErrors(report.errors));
    }
    match toml::from_str(&report.text) {
        Ok(value) => Ok(value),
        Err(error) => {
            report.at_span(error.span(), error.message().to_string());
            Err(ConfigErrors(report.errors))
        }
    }
}

/// Checks pipeline `text` read from `file`, taking `${VAR}`s from `env`.
pub fn parse(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, ConfigErrors> {
    match parse_lenient(file, text, env) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Like [`parse`], but also returns the configuration when the file has problems that do not
/// prevent reading it (unknown keys, bad values), so that later checks can report theirs too.
pub fn parse_lenient(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<PipelineConfig>, Vec<ConfigError>) {
    let mut report = Report {
        file: file.to_path_buf(),
        text: String::new(),
        errors: Vec::new(),
    };
    report.text = substitute_env(text, env, &mut report);
    if !report.errors.is_empty() {
        return (None, report.errors);
    }
    let text = report.text.clone();
    let (table, syntax_errors) = DeTable::parse_recoverable(&text);
    // After the first syntax error the parser's recovery guesses; its later errors mostly echo it.
    if let Some(error) = syntax_errors.first() {
        report.at_span(error.span(), error.message().to_string());
        return (None, report.errors);
    }
    let table = table.into_inner();
    let doc = Doc { table: &table };
    check_unknown_keys(&doc, &mut report);
    let raw: RawFile = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(error) => {
            report.at_span(error.span(), error.message().to_string());
            return (None, report.errors);
        }
    };
    let mut config = build(file, raw, &doc, &mut report);
    collect_locations(&table, "", &report, &mut config.locations);
    report
        .errors
        .sort_by_key(|e| e.location.map(|l| (l.line, l.column)));
    (Some(config), report.errors)
}
