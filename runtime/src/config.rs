//! The pipeline file: TOML text in, a checked [`PipelineConfig`] out, or every error at once, each
//! with file, line, column and the key it is about.
//!
//! Parsing is pure (text and an environment lookup in, a value out) so that reload can diff two
//! configurations without touching anything. `${VAR}` and `${VAR:-default}` are replaced before
//! parsing, line by line, so line numbers stay those of the file.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Records per batch unless a source says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Linear memory cap of an operator instance unless the stage says otherwise.
pub const DEFAULT_MEMORY_LIMIT_MIB: u64 = 64;
/// The longest record a source takes unless it says otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// The largest `params` table of a stage, as JSON.
pub const MAX_PARAMS_BYTES: usize = 1 << 20;
/// The largest pipeline file read.
pub const MAX_PIPELINE_BYTES: u64 = 4 << 20;

/// Deadline of one guest call unless the stage says otherwise.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;

/// A position in the pipeline file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub location: Option<Location>,
    /// The dotted key the problem is about (`operators.validate.inputs`), empty if none.
    pub key: String,
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
    pub name: String,
    /// The sink every stage's failed records go to.
    pub dead_letter: Option<String>,
    pub sources: Vec<SourceConfig>,
    pub operators: Vec<OperatorConfig>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    pub name: String,
    pub kind: SourceKind,
    pub batch_size: usize,
    /// The top-level integer field that holds each record's event time.
    pub event_time: Option<String>,
    /// Bounded out-of-orderness: the watermark trails the largest event time by this much.
    pub watermark_delay_ms: i64,
    /// The longest record (a file's line) taken; a longer one is a dead letter.
    pub max_record_bytes: usize,
    /// A record whose event time is further than this ahead of the newest seen so far is a dead
    /// letter (off when `None`).
    pub max_future_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// JSON Lines from a file.
    File { path: PathBuf, follow: bool },
    /// Seeded generated orders, the same as `flumen gen orders`.
    Generator { count: u64, seed: u64 },
    /// The benchmark's orders, made in memory (no JSON): typed `BenchOrder` records.
    Bench { count: u64, seed: u64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    pub name: String,
    /// The module file, resolved against the pipeline file's folder.
    pub module: PathBuf,
    pub inputs: Vec<InputRef>,
    /// The `params` table, as JSON for the guest.
    pub params: serde_json::Value,
    pub memory_limit_bytes: u64,
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

#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub inputs: Vec<InputRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON Lines to a file (its folder is created).
    File { path: PathBuf },
    /// JSON Lines to standard output.
    Stdout,
    /// Counts records and drops them (benchmarks).
    Blackhole,
}

/// An entry of `inputs`: `stage` (its main output) or `stage.port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputRef {
    pub stage: String,
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

#[derive(Debug, Default, Deserialize)]
struct RawFile {
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    operators: BTreeMap<String, RawOperator>,
    #[serde(default)]
    sinks: BTreeMap<String, RawSink>,
}

#[derive(Debug, Default, Deserialize)]
struct RawPipeline {
    name: Option<String>,
    dead_letter: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawSource {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    format: Option<String>,
    follow: Option<bool>,
    batch_size: Option<i64>,
    count: Option<i64>,
    seed: Option<i64>,
    event_time: Option<String>,
    watermark_delay_ms: Option<i64>,
    max_record_bytes: Option<i64>,
    max_future_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawOperator {
    module: String,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    params: toml::Table,
    memory_limit_mib: Option<i64>,
    timeout_ms: Option<i64>,
    key_by: Option<String>,
    event_time: Option<String>,
    parallelism: Option<i64>,
    state_ttl_ms: Option<i64>,
    window: Option<crate::window::WindowSpec>,
    allowed_lateness_ms: Option<i64>,
    on_state_change: Option<String>,
    max_output_bytes: Option<i64>,
    max_record_output_bytes: Option<i64>,
    max_state_bytes: Option<i64>,
    max_state_bytes_per_key: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct RawSink {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
    format: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
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

struct Report {
    file: PathBuf,
    text: String,
    errors: Vec<ConfigError>,
}

impl Report {
    fn location(&self, offset: usize) -> Location {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location { line, column }
    }

    /// An error at a byte span of the text, reported where its key is written when the span
    /// falls inside a key's value (a broken array is best found from its key's line).
    fn at_span(&mut self, span: Option<std::ops::Range<usize>>, message: String) {
        let (table, _) = DeTable::parse_recoverable(&self.text);
        let found = span
            .as_ref()
            .and_then(|s| key_at(table.get_ref(), s.start, ""));
        let location = match (&found, span) {
            (Some((_, key_start)), _) => Some(self.location(*key_start)),
            (None, Some(span)) => Some(self.location(span.start)),
            (None, None) => None,
        };
        self.errors.push(ConfigError {
            file: self.file.clone(),
            location,
            key: found.map(|(key, _)| key).unwrap_or_default(),
            message: message.trim().to_string(),
        });
    }

    fn at(&mut self, doc: &Doc<'_, '_>, key: &[&str], message: impl Into<String>) {
        let location = doc.span(key).map(|s| self.location(s.start));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            location,
            key: key.join("."),
            message: message.into(),
        });
    }
}

/// The spanned document, to find where a key is written.
struct Doc<'t, 'i> {
    table: &'t DeTable<'i>,
}

impl Doc<'_, '_> {
    fn get(&self, path: &[&str]) -> Option<&Spanned<DeValue<'_>>> {
        let (first, rest) = path.split_first()?;
        let mut value = self.table.get(*first)?;
        for key in rest {
            match value.get_ref() {
                DeValue::Table(table) => value = table.get(*key)?,
                _ => return None,
            }
        }
        Some(value)
    }

    /// The span of the key at `path` (its value's if the key is not found, its parent's if the
    /// value is missing).
    fn span(&self, path: &[&str]) -> Option<std::ops::Range<usize>> {
        for len in (1..=path.len()).rev() {
            let prefix = &path[..len];
            let (last, parent) = prefix.split_last()?;
            let table = if parent.is_empty() {
                Some(self.table)
            } else {
                match self.get(parent).map(|v| v.get_ref()) {
                    Some(DeValue::Table(t)) => Some(t),
                    _ => None,
                }
            };
            if let Some((key, _)) = table.and_then(|t| t.get_key_value(*last)) {
                return Some(key.span());
            }
        }
        None
    }
}

/// The dotted path of the innermost key whose key or value covers `offset`, and where that key
/// starts.
fn key_at(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<(String, usize)> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        let (k, v) = (key.span(), value.span());
        if let DeValue::Table(inner) = value.get_ref()
            && let Some(found) = key_at(inner, offset, &path)
        {
            return Some(found);
        }
        if k.contains(&offset) || (v.start <= offset && offset <= v.end) {
            return Some((path, k.start));
        }
    }
    None
}

fn collect_locations(
    table: &DeTable<'_>,
    prefix: &str,
    report: &Report,
    into: &mut BTreeMap<String, Location>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        if let DeValue::Table(inner) = value.get_ref() {
            collect_locations(inner, &path, report, into);
        }
        into.insert(path, report.location(key.span().start));
    }
}

/// Where a `${VAR}` stands in TOML text, which decides how its value is pasted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    /// Outside any string: the value must be one whole TOML scalar (a number, a boolean…).
    Bare,
    /// Inside a basic string (`"…"`, or `"""…"""` when multi-line): the value is escaped.
    Basic { multiline: bool },
    /// Inside a literal string (`'…'`, or three quotes when multi-line): the value must not
    /// close it.
    Literal { multiline: bool },
    /// In a comment: pasted as it is (it means nothing there).
    Comment,
}

impl Context {
    /// The context after the template text `text`, starting in `self`.
    fn after(mut self, text: &str) -> Context {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let rest = &bytes[i..];
            match self {
                Context::Comment => return self,
                Context::Bare => match rest[0] {
                    b'#' => self = Context::Comment,
                    b'"' if rest.starts_with(b"\"\"\"") => {
                        self = Context::Basic { multiline: true };
                        i += 2;
                    }
                    b'"' => self = Context::Basic { multiline: false },
                    b'\'' if rest.starts_with(b"'''") => {
                        self = Context::Literal { multiline: true };
                        i += 2;
                    }
                    b'\'' => self = Context::Literal { multiline: false },
                    _ => {}
                },
                Context::Basic { multiline } => match rest[0] {
                    b'\\' => i += 1,
                    b'"' if multiline && rest.starts_with(b"\"\"\"") => {
                        self = Context::Bare;
                        i += 2;
                    }
                    b'"' if !multiline => self = Context::Bare,
                    _ => {}
                },
                Context::Literal { multiline } => match rest[0] {
                    b'\'' if multiline && rest.starts_with(b"'''") => {
                        self = Context::Bare;
                        i += 2;
                    }
                    b'\'' if !multiline => self = Context::Bare,
                    _ => {}
                },
            }
            i += 1;
        }
        self
    }

    /// At the end of a line: single-line strings and comments end there.
    fn at_line_end(self) -> Context {
        match self {
            Context::Basic { multiline: true } | Context::Literal { multiline: true } => self,
            _ => Context::Bare,
        }
    }

    /// `value` as it must be pasted here, or why it cannot be: interpolation only ever
    /// produces a value, never a key, a comment or the end of a string.
    fn paste(self, value: &str) -> Result<String, String> {
        match self {
            Context::Comment => Ok(value
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect()),
            Context::Basic { .. } => {
                let mut escaped = String::with_capacity(value.len());
                for c in value.chars() {
                    match c {
                        '"' => escaped.push_str("\\\""),
                        '\\' => escaped.push_str("\\\\"),
                        c if c.is_control() => escaped.push_str(&format!("\\u{:04X}", c as u32)),
                        c => escaped.push(c),
                    }
                }
                Ok(escaped)
            }
            Context::Literal { multiline } => {
                // A literal string holds no escapes: a quote would end it, and TOML allows no
                // control character in it but a tab (and, multi-line, line breaks).
                let control = |c: char| c.is_control() && c != '\t' && (!multiline || c != '\n');
                let closes = match multiline {
                    true => value.contains("'''"),
                    false => value.contains('\''),
                } || value.chars().any(control);
                match closes {
                    true => Err(
                        "would end the literal string it is in (it holds a quote or a \
                                 control character); write it inside \"…\" there"
                            .into(),
                    ),
                    false => Ok(value.to_string()),
                }
            }
            Context::Bare => {
                let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"));
                let scalar = parsed
                    .ok()
                    .filter(|t| t.len() == 1)
                    .and_then(|t| t.get("v").cloned());
                match scalar {
                    Some(v) if !v.is_table() && !v.is_array() && !value.contains(['#', '\n']) => {
                        Ok(value.to_string())
                    }
                    _ => Err(format!(
                        "holds {value:?}, which is not one TOML value; outside quotes a \
                         variable must hold a number, a boolean or a date, or be written \
                         inside \"…\""
                    )),
                }
            }
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` from `env`; `$$` is a literal `$`. A value is pasted
/// as a value only: escaped inside a `"…"` string, refused where it would end a `'…'` string,
/// and outside quotes only if it is one whole TOML scalar.
fn substitute_env(text: &str, env: &dyn Fn(&str) -> Option<String>, report: &mut Report) -> String {
    let mut out = String::with_capacity(text.len());
    let mut context = Context::Bare;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            context = context.after(&rest[..at]);
            let column = line.len() - rest.len() + at + 1;
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                continue;
            };
            let location = Some(Location {
                line: index + 1,
                column,
            });
            let Some(end) = body.find('}') else {
                report.errors.push(ConfigError {
                    file: report.file.clone(),
                    location,
                    key: String::new(),
                    message: "`${` without its closing `}`".into(),
                });
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let value = env(name).filter(|v| default.is_none() || !v.is_empty());
            let problem = match value.as_deref().or(default) {
                Some(value) => match context.paste(value) {
                    Ok(pasted) => {
                        out.push_str(&pasted);
                        None
                    }
                    Err(why) => Some(format!("environment variable `{name}` {why}")),
                },
                None => Some(format!(
                    "environment variable `{name}` is not set; set it or write `${{{name}:-default}}`"
                )),
            };
            if let Some(message) = problem {
                report.errors.push(ConfigError {
                    file: report.file.clone(),
                    location,
                    key: String::new(),
                    message,
                });
            }
            rest = &body[end + 1..];
        }
        context = context.after(rest).at_line_end();
        out.push_str(rest);
    }
    out
}

/// The field names serde expects for `T`, found with a deserializer that only records them.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Fields(&'static [&'static str]);

    impl fmt::Display for Fields {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }

    impl std::error::Error for Fields {}

    impl de::Error for Fields {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Fields(&[])
        }
    }

    struct Probe;

    impl<'de> de::Deserializer<'de> for Probe {
        type Error = Fields;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    match T::deserialize(Probe) {
        Err(Fields(fields)) => fields,
        Ok(_) => &[],
    }
}

fn check_unknown_keys(doc: &Doc<'_, '_>, report: &mut Report) {
    let top = fields_of::<RawFile>();
    let sections: [(&str, &[&str]); 3] = [
        ("sources", fields_of::<RawSource>()),
        ("operators", fields_of::<RawOperator>()),
        ("sinks", fields_of::<RawSink>()),
    ];
    for (key, value) in doc.table {
        let key = key.get_ref().as_ref();
        if !top.contains(&key) {
            report.at(
                doc,
                &[key],
                format!("unknown section; expected one of {}", top.join(", ")),
            );
            continue;
        }
        let DeValue::Table(table) = value.get_ref() else {
            continue;
        };
        if key == "pipeline" {
            unknown_in(doc, report, &[key], table, fields_of::<RawPipeline>());
            continue;
        }
        let Some((_, known)) = sections.iter().find(|(name, _)| *name == key) else {
            continue;
        };
        for (stage, body) in table {
            if let DeValue::Table(body) = body.get_ref() {
                unknown_in(doc, report, &[key, stage.get_ref()], body, known);
            }
        }
    }
}

fn unknown_in(
    doc: &Doc<'_, '_>,
    report: &mut Report,
    path: &[&str],
    table: &DeTable<'_>,
    known: &[&str],
) {
    for key in table.keys() {
        let key = key.get_ref().as_ref();
        if !known.contains(&key) {
            let mut full = path.to_vec();
            full.push(key);
            report.at(
                doc,
                &full,
                format!("unknown key; expected one of {}", known.join(", ")),
            );
        }
    }
}

fn build(file: &Path, raw: RawFile, doc: &Doc<'_, '_>, report: &mut Report) -> PipelineConfig {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let sections = [
        ("sources", raw.sources.keys().collect::<Vec<_>>()),
        ("operators", raw.operators.keys().collect()),
        ("sinks", raw.sinks.keys().collect()),
    ];
    for (section, stage_names) in &sections {
        for name in stage_names {
            if let Some(other) = names.insert(name.as_str(), section) {
                report.at(
                    doc,
                    &[section, name],
                    format!(
                        "the name `{name}` is already used in [{other}]; stage names are unique"
                    ),
                );
            }
            if name.is_empty() || name.contains('.') {
                report.at(
                    doc,
                    &[section, name],
                    "a stage name is not empty and has no `.`",
                );
            }
        }
    }

    let sources = raw
        .sources
        .iter()
        .filter_map(|(name, s)| build_source(name, s, doc, report))
        .collect();
    let operators = raw
        .operators
        .iter()
        .filter_map(|(name, o)| build_operator(base, name, o, doc, report))
        .collect();
    let sinks: Vec<SinkConfig> = raw
        .sinks
        .iter()
        .filter_map(|(name, s)| build_sink(name, s, doc, report))
        .collect();
    let mut written: BTreeMap<&Path, &str> = BTreeMap::new();
    for sink in &sinks {
        if let SinkKind::File { path } = &sink.kind
            && let Some(other) = written.insert(path, &sink.name)
        {
            report.at(
                doc,
                &["sinks", &sink.name, "path"],
                format!(
                    "sink `{other}` writes {} already; each file sink needs a file of its own",
                    path.display()
                ),
            );
        }
    }

    if let Some(dead_letter) = &raw.pipeline.dead_letter
        && !raw.sinks.contains_key(dead_letter)
    {
        report.at(
            doc,
            &["pipeline", "dead_letter"],
            format!("no sink named `{dead_letter}`; declare it under [sinks.{dead_letter}]"),
        );
    }
    if raw.sources.is_empty() {
        report.at(doc, &["sources"], "a pipeline needs at least one source");
    }

    PipelineConfig {
        file: file.to_path_buf(),
        name: raw.pipeline.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .map_or("pipeline".into(), |s| s.to_string_lossy().into_owned())
        }),
        dead_letter: raw.pipeline.dead_letter.clone(),
        locations: BTreeMap::new(),
        sources,
        operators,
        sinks,
    }
}

fn positive(
    value: Option<i64>,
    default: u64,
    max: u64,
    doc: &Doc<'_, '_>,
    report: &mut Report,
    key: &[&str],
) -> u64 {
    match value {
        None => default,
        Some(v) if v >= 1 && (v as u64) <= max => v as u64,
        Some(v) => {
            report.at(
                doc,
                key,
                format!("{v} is out of range; expected 1 to {max}"),
            );
            default
        }
    }
}

fn build_source(
    name: &str,
    raw: &RawSource,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Option<SourceConfig> {
    let key = |k: &'static str| ["sources", name, k];
    let batch_size = positive(
        raw.batch_size,
        DEFAULT_BATCH_SIZE as u64,
        1 << 20,
        doc,
        report,
        &key("batch_size"),
    ) as usize;
    let not_for = |report: &mut Report, field: &'static str, present: bool, kind: &str| {
        if present {
            report.at(
                doc,
                &key(field),
                format!("`{field}` is not an option of a {kind} source"),
            );
        }
    };
    let kind = match raw.kind.as_str() {
        "file" => {
            if let Some(format) = &raw.format
                && format != "jsonl"
            {
                report.at(
                    doc,
                    &key("format"),
                    "the only format is \"jsonl\" (JSON Lines)",
                );
            }
            not_for(report, "count", raw.count.is_some(), "file");
            not_for(report, "seed", raw.seed.is_some(), "file");
            let Some(path) = &raw.path else {
                report.at(doc, &key("type"), "a file source needs `path`");
                return None;
            };
            SourceKind::File {
                path: PathBuf::from(path),
                follow: raw.follow.unwrap_or(false),
            }
        }
        "generator" | "bench" => {
            not_for(report, "path", raw.path.is_some(), "generator");
            not_for(report, "follow", raw.follow.is_some(), "generator");
            let count = positive(raw.count, 1000, u64::MAX >> 1, doc, report, &key("count"));
            let seed = raw.seed.unwrap_or(0) as u64;
            if raw.kind == "bench" {
                SourceKind::Bench { count, seed }
            } else {
                SourceKind::Generator { count, seed }
            }
        }
        other => {
            report.at(
                doc,
                &key("type"),
                format!(
                    "unknown source type \"{other}\"; expected \"file\", \"generator\" or \"bench\""
                ),
            );
            return None;
        }
    };
    let watermark_delay_ms = match raw.watermark_delay_ms {
        Some(delay) if delay < 0 => {
            report.at(
                doc,
                &key("watermark_delay_ms"),
                "a delay cannot be negative",
            );
            0
        }
        Some(delay) => delay,
        None => 0,
    };
    if raw.watermark_delay_ms.is_some() && raw.event_time.is_none() {
        report.at(
            doc,
            &key("watermark_delay_ms"),
            "watermarks need `event_time`, the field holding each record's time",
        );
    }
    let max_record_bytes = positive(
        raw.max_record_bytes,
        DEFAULT_MAX_RECORD_BYTES as u64,
        1 << 30,
        doc,
        report,
        &key("max_record_bytes"),
    ) as usize;
    let max_future_ms = match raw.max_future_ms {
        Some(ms) if ms < 0 => {
            report.at(doc, &key("max_future_ms"), "a limit cannot be negative");
            None
        }
        Some(_) if raw.event_time.is_none() => {
            report.at(
                doc,
                &key("max_future_ms"),
                "`max_future_ms` needs `event_time`, the field holding each record's time",
            );
            None
        }
        other => other,
    };
    Some(SourceConfig {
        name: name.to_string(),
        kind,
        batch_size,
        event_time: raw.event_time.clone(),
        watermark_delay_ms,
        max_record_bytes,
        max_future_ms,
    })
}

fn build_inputs(
    section: &str,
    name: &str,
    inputs: &[String],
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Vec<InputRef> {
    let path = [section, name, "inputs"];
    let location = doc.span(&path).map(|s| report.location(s.start));
    inputs
        .iter()
        .map(|input| {
            let (stage, port) = match input.split_once('.') {
                Some((stage, port)) => (stage.to_string(), Some(port.to_string())),
                None => (input.clone(), None),
            };
            InputRef {
                stage,
                port,
                location,
                key: path.join("."),
            }
        })
        .collect()
}

fn build_operator(
    base: &Path,
    name: &str,
    raw: &RawOperator,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Option<OperatorConfig> {
    let key = |k| ["operators", name, k];
    let memory_mib = positive(
        raw.memory_limit_mib,
        DEFAULT_MEMORY_LIMIT_MIB,
        4096,
        doc,
        report,
        &key("memory_limit_mib"),
    );
    let timeout_ms = positive(
        raw.timeout_ms,
        DEFAULT_TIMEOUT_MS,
        3_600_000,
        doc,
        report,
        &key("timeout_ms"),
    );
    if raw.inputs.is_empty() {
        report.at(doc, &key("inputs"), "an operator needs at least one input");
    }
    let params = match serde_json::to_value(&raw.params) {
        Ok(params) if params.to_string().len() > MAX_PARAMS_BYTES => {
            report.at(
                doc,
                &key("params"),
                format!("params take more than {MAX_PARAMS_BYTES} bytes as JSON; pass large data in a file the module reads at build time, or as records"),
            );
            serde_json::Value::Null
        }
        Ok(params) => params,
        Err(e) => {
            report.at(
                doc,
                &key("params"),
                format!("cannot pass these params on: {e}"),
            );
            serde_json::Value::Null
        }
    };
    let parallelism = raw
        .parallelism
        .map(|_| positive(raw.parallelism, 1, 256, doc, report, &key("parallelism")) as usize);
    if let Some(ttl) = raw.state_ttl_ms
        && ttl < 1
    {
        report.at(doc, &key("state_ttl_ms"), "a time-to-live is at least 1 ms");
    }
    if let Some(window) = &raw.window
        && let Err(message) = window.check()
    {
        report.at(doc, &key("window"), message);
    }
    let allowed_lateness_ms = raw.allowed_lateness_ms.unwrap_or(0);
    if allowed_lateness_ms < 0 {
        report.at(
            doc,
            &key("allowed_lateness_ms"),
            "lateness cannot be negative",
        );
    }
    if raw.allowed_lateness_ms.is_some() && raw.window.is_none() {
        report.at(
            doc,
            &key("allowed_lateness_ms"),
            "only a window stage has lateness",
        );
    }
    let defaults = StageLimits::default();
    let mut bytes = |value: Option<i64>, default: usize, field: &'static str| {
        positive(value, default as u64, 1 << 40, doc, report, &key(field)) as usize
    };
    let limits = StageLimits {
        max_output_bytes: bytes(
            raw.max_output_bytes,
            defaults.max_output_bytes,
            "max_output_bytes",
        ),
        max_record_output_bytes: bytes(
            raw.max_record_output_bytes,
            defaults.max_record_output_bytes,
            "max_record_output_bytes",
        ),
        max_state_bytes: bytes(
            raw.max_state_bytes,
            defaults.max_state_bytes,
            "max_state_bytes",
        ),
        max_state_bytes_per_key: bytes(
            raw.max_state_bytes_per_key,
            defaults.max_state_bytes_per_key,
            "max_state_bytes_per_key",
        ),
    };
    Some(OperatorConfig {
        limits,
        name: name.to_string(),
        module: base.join(&raw.module),
        inputs: build_inputs("operators", name, &raw.inputs, doc, report),
        params,
        memory_limit_bytes: memory_mib << 20,
        timeout: Duration::from_millis(timeout_ms),
        key_by: raw.key_by.clone(),
        event_time: raw.event_time.clone(),
        parallelism,
        state_ttl_ms: raw.state_ttl_ms,
        window: raw.window,
        allowed_lateness_ms: allowed_lateness_ms.max(0),
        on_state_change: match raw.on_state_change.as_deref() {
            None | Some("refuse") => OnStateChange::Refuse,
            Some("reset") => OnStateChange::Reset,
            Some(other) => {
                report.at(
                    doc,
                    &key("on_state_change"),
                    format!("unknown value \"{other}\"; expected \"refuse\" or \"reset\""),
                );
                OnStateChange::Refuse
            }
        },
    })
}

fn build_sink(
    name: &str,
    raw: &RawSink,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Option<SinkConfig> {
    let key = |k| ["sinks", name, k];
    if let Some(format) = &raw.format
        && format != "jsonl"
    {
        report.at(
            doc,
            &key("format"),
            "the only format is \"jsonl\" (JSON Lines)",
        );
    }
    let kind = match raw.kind.as_str() {
        "file" => {
            let Some(path) = &raw.path else {
                report.at(doc, &key("type"), "a file sink needs `path`");
                return None;
            };
            SinkKind::File {
                path: PathBuf::from(path),
            }
        }
        "stdout" => SinkKind::Stdout,
        "blackhole" => SinkKind::Blackhole,
        other => {
            report.at(
                doc,
                &key("type"),
                format!(
                    "unknown sink type \"{other}\"; expected \"file\", \"stdout\" or \"blackhole\""
                ),
            );
            return None;
        }
    };
    Some(SinkConfig {
        name: name.to_string(),
        kind,
        inputs: build_inputs("sinks", name, &raw.inputs, doc, report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<PipelineConfig, ConfigErrors> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(Path::new("p/orders.toml"), text, &|k| vars.get(k).cloned())
    }

    const GOOD: &str = r#"
[pipeline]
dead_letter = "dead"

[sources.orders]
type = "file"
path = "${ORDERS:-in.jsonl}"
follow = ${FOLLOW:-false}

[operators.validate]
module = "../target/flumen/validate.wasm"
inputs = ["orders"]
params = { limit = 3, names = ["a"] }

[sinks.rejected]
type = "file"
path = "${OUT_DIR:-out}/rejected.jsonl"
inputs = ["validate.rejected"]

[sinks.dead]
type = "stdout"
"#;

    #[test]
    fn a_good_file_with_defaults_and_environment() {
        let config = parse_with(GOOD, &[("OUT_DIR", "/tmp/o"), ("FOLLOW", "true")]).unwrap();
        assert_eq!(config.name, "orders");
        assert_eq!(config.dead_letter.as_deref(), Some("dead"));
        assert_eq!(
            config.sources[0].kind,
            SourceKind::File {
                path: "in.jsonl".into(),
                follow: true
            }
        );
        assert_eq!(config.sources[0].batch_size, DEFAULT_BATCH_SIZE);
        let op = &config.operators[0];
        assert_eq!(op.module, Path::new("p/../target/flumen/validate.wasm"));
        assert_eq!(op.params, serde_json::json!({"limit": 3, "names": ["a"]}));
        assert_eq!(op.memory_limit_bytes, 64 << 20);
        assert_eq!(op.timeout, Duration::from_secs(1));
        let rejected = config.sinks.iter().find(|s| s.name == "rejected").unwrap();
        assert_eq!(
            rejected.kind,
            SinkKind::File {
                path: "/tmp/o/rejected.jsonl".into()
            }
        );
        assert_eq!(rejected.inputs[0].to_string(), "validate.rejected");
        assert_eq!(rejected.inputs[0].port.as_deref(), Some("rejected"));
    }

    fn errors(text: &str) -> Vec<String> {
        parse_with(text, &[])
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn oversized_params_and_pipeline_files_are_refused() {
        let big = "x".repeat(MAX_PARAMS_BYTES + 1);
        let text = format!(
            "[sources.s]\ntype = \"file\"\npath = \"x\"\n[operators.o]\nmodule = \"m.wasm\"\n\
             inputs = [\"s\"]\nparams = {{ blob = \"{big}\" }}\n"
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("`operators.o.params`"), "{}", errors[0]);
        assert!(
            errors[0].contains("more than 1048576 bytes"),
            "{}",
            errors[0]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.toml");
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut file, &vec![b'#'; MAX_PIPELINE_BYTES as usize + 10])
            .unwrap();
        let (config, errors) = load(&path);
        assert!(config.is_none());
        assert!(
            errors[0].to_string().contains("larger than"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn every_unknown_key_is_reported_with_its_line() {
        let text = GOOD
            .replace("follow =", "folow = 1\nfollow =")
            .replace("params =", "param = 2\nparams =");
        let errors = errors(&text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].starts_with("p/orders.toml:8:1: `sources.orders.folow`: unknown key"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("p/orders.toml:14:1: `operators.validate.param`: unknown key"),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_key() {
        let errors = errors(&GOOD.replace("inputs = [\"orders\"]", "inputs = [\"orders\""));
        assert!(
            errors[0].starts_with("p/orders.toml:12:1: `operators.validate.inputs`: missing comma"),
            "{errors:?}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let errors = errors(&GOOD.replace("inputs = [\"orders\"]", "inputs = \"orders\""));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("p/orders.toml:12:1: `operators.validate.inputs`: invalid type"),
            "{errors:?}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported() {
        let text = GOOD
            .replace("type = \"stdout\"", "type = \"printer\"")
            .replace("dead_letter = \"dead\"", "dead_letter = \"nowhere\"")
            .replace(
                "[operators.validate]",
                "[operators.validate]\ntimeout_ms = 0",
            );
        let errors = errors(&text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("`pipeline.dead_letter`: no sink named `nowhere`"));
        assert!(errors[1].contains("`operators.validate.timeout_ms`: 0 is out of range"));
        assert!(errors[2].contains("`sinks.dead.type`: unknown sink type \"printer\""));
    }

    #[test]
    fn unset_variables_without_default_are_errors() {
        let errors = errors("[sources.a]\ntype = \"file\"\npath = \"${NOPE}\"\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("p/orders.toml:3:9: environment variable `NOPE` is not set"));
    }

    #[test]
    fn substitution_handles_escapes_and_empty_values() {
        let mut report = Report {
            file: "f".into(),
            text: String::new(),
            errors: Vec::new(),
        };
        let env = |k: &str| (k == "EMPTY").then(String::new);
        let out = substitute_env("a = \"$$ ${EMPTY:-d} ${EMPTY} $x\"\n", &env, &mut report);
        assert_eq!(out, "a = \"$ d  $x\"\n");
        assert!(report.errors.is_empty());
    }

    proptest::proptest! {
        /// Whatever a variable holds, inside a basic string it reads back as itself; inside a
        /// literal string or bare, it is that value or refused — never another key.
        #[test]
        fn any_value_reads_back_as_itself_or_is_refused(value in ".*") {
            let env = |_: &str| Some(value.clone());
            for (template, quoted) in [("a = \"${V}\"\n", true), ("a = '${V}'\n", false), ("a = ${V}\n", false)] {
                let mut report = Report {
                    file: "f".into(),
                    text: String::new(),
                    errors: Vec::new(),
                };
                let out = substitute_env(template, &env, &mut report);
                if quoted {
                    proptest::prop_assert!(report.errors.is_empty());
                }
                if !report.errors.is_empty() {
                    continue;
                }
                let table: toml::Table = toml::from_str(&out)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{out:?}: {e}")))?;
                proptest::prop_assert_eq!(table.len(), 1, "{:?}", out);
                if template.contains('"') || template.contains('\'') {
                    proptest::prop_assert_eq!(table["a"].as_str(), Some(value.as_str()));
                }
            }
        }
    }

    #[test]
    fn a_variable_can_only_ever_become_a_value() {
        let vars = [
            ("QUOTE", "x\" # y"),
            ("INJECT", "1\nother = 2"),
            ("COMMENT", "5 # rest"),
            ("NUMBER", "512"),
            ("TICK", "it's"),
        ];
        let env = |k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        };
        let mut report = Report {
            file: "f".into(),
            text: String::new(),
            errors: Vec::new(),
        };
        let text = "a = \"${QUOTE}\"\nb = \"${INJECT}\"\nc = ${NUMBER}\n# ${INJECT}\n";
        let out = substitute_env(text, &env, &mut report);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let table: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(table["a"].as_str(), Some("x\" # y"));
        assert_eq!(table["b"].as_str(), Some("1\nother = 2"));
        assert_eq!(table["c"].as_integer(), Some(512));
        assert_eq!(table.len(), 3, "{out}");
        for bad in [
            "c = ${COMMENT}\n",
            "c = ${INJECT}\n",
            "c = '${TICK}'\n",
            "c = ${QUOTE}\n",
        ] {
            let mut report = Report {
                file: "f".into(),
                text: String::new(),
                errors: Vec::new(),
            };
            substitute_env(bad, &env, &mut report);
            assert_eq!(report.errors.len(), 1, "{bad}");
            let column = bad.find('$').map(|at| at + 1);
            assert_eq!(report.errors[0].location.map(|l| l.column), column, "{bad}");
        }
    }

    #[test]
    fn stage_names_are_unique_across_sections() {
        let errors = errors(
            &GOOD
                .replace("[sinks.dead]", "[sinks.orders]")
                .replace("\"dead\"", "\"orders\""),
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("the name `orders` is already used")),
            "{errors:?}"
        );
    }
}
