//! From the raw TOML to the checked model: every value checked, every problem reported at its key.

use super::report::{Doc, Report, TableOptions};
use super::*;
use crate::connectors::{self, Options};
use serde::Deserialize;

/// The keys every source takes; its type takes more (see [`connectors::source_options`]).
pub(super) const SOURCE_COMMON: &[&str] = &[
    "type",
    "batch_size",
    "event_time",
    "watermark_delay_ms",
    "max_record_bytes",
    "max_future_ms",
];

/// The keys every sink takes; its type takes more (see [`connectors::sink_options`]).
pub(super) const SINK_COMMON: &[&str] = &["type", "format", "inputs"];

/// The file as written. Sources and sinks stay tables: their options depend on their type and
/// are read through [`TableOptions`].
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawFile {
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    sources: BTreeMap<String, toml::Table>,
    #[serde(default)]
    operators: BTreeMap<String, RawOperator>,
    #[serde(default)]
    sinks: BTreeMap<String, toml::Table>,
    /// Test cases, read by `flumen test` (see [`crate::config::load_section`]).
    #[serde(default)]
    #[allow(dead_code)]
    tests: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawPipeline {
    name: Option<String>,
    dead_letter: Option<String>,
    checkpoint: Option<RawCheckpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheckpoint {
    dir: String,
    interval_ms: Option<i64>,
}

/// Checkpoints every second unless the file says otherwise.
const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 1000;
/// At most a day between checkpoints.
const MAX_CHECKPOINT_INTERVAL_MS: u64 = 86_400_000;

#[derive(Debug, Deserialize)]
pub(super) struct RawOperator {
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

pub(super) fn build(
    file: &Path,
    raw: RawFile,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> PipelineConfig {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let sections: [(&str, Vec<&String>); 3] = [
        ("sources", raw.sources.keys().collect::<Vec<_>>()),
        ("operators", raw.operators.keys().collect()),
        ("sinks", raw.sinks.keys().collect()),
    ];
    for (section, stage_names) in &sections {
        for name in stage_names {
            if let Some(other) = names.insert(name.as_str(), section) {
                report.at(
                    doc,
                    &[section, name.as_str()],
                    format!(
                        "the name `{name}` is already used in [{other}]; stage names are unique"
                    ),
                );
            }
            if name.is_empty() || name.contains('.') {
                report.at(
                    doc,
                    &[section, name.as_str()],
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
        if let Some(path) = sink.kind.file()
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

    let checkpoint = raw.pipeline.checkpoint.as_ref().map(|c| {
        if c.dir.trim().is_empty() {
            report.at(
                doc,
                &["pipeline", "checkpoint", "dir"],
                "the checkpoint folder is a path, not empty",
            );
        }
        CheckpointConfig {
            dir: PathBuf::from(&c.dir),
            interval: Duration::from_millis(positive(
                c.interval_ms,
                DEFAULT_CHECKPOINT_INTERVAL_MS,
                MAX_CHECKPOINT_INTERVAL_MS,
                doc,
                report,
                &["pipeline", "checkpoint", "interval_ms"],
            )),
        }
    });

    if checkpoint.is_none() {
        for sink in sinks.iter().filter(|s| s.kind.needs_replay()) {
            report.at(
                doc,
                &["sinks", &sink.name, "type"],
                "a kafka sink delivers exactly once by replaying from checkpoints: add \
                 `checkpoint = { dir = \"...\" }` under [pipeline], or set \
                 `delivery = \"at_least_once\"`",
            );
        }
    }

    PipelineConfig {
        file: file.to_path_buf(),
        checkpoint,
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
    table: &toml::Table,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Option<SourceConfig> {
    let mut options = TableOptions {
        table,
        section: "sources",
        name,
        doc,
        report,
    };
    let batch_size = options.positive("batch_size", DEFAULT_BATCH_SIZE as u64, 1 << 20) as usize;
    let event_time = options.string("event_time");
    let delay = options.integer("watermark_delay_ms");
    if delay.is_some() && event_time.is_none() {
        options.problem(
            "watermark_delay_ms",
            "watermarks need `event_time`, the field holding each record's time".into(),
        );
    }
    let watermark_delay_ms = match delay {
        Some(delay) if delay < 0 => {
            options.problem("watermark_delay_ms", "a delay cannot be negative".into());
            0
        }
        Some(delay) => delay,
        None => 0,
    };
    let max_record_bytes =
        options.positive("max_record_bytes", DEFAULT_MAX_RECORD_BYTES as u64, 1 << 30) as usize;
    let max_future_ms = match options.integer("max_future_ms") {
        Some(ms) if ms < 0 => {
            options.problem("max_future_ms", "a limit cannot be negative".into());
            None
        }
        Some(_) if event_time.is_none() => {
            options.problem(
                "max_future_ms",
                "`max_future_ms` needs `event_time`, the field holding each record's time".into(),
            );
            None
        }
        other => other,
    };
    let kind = options.required_string("type")?;
    let kind = connectors::source_kind(&kind, &mut options)?;
    Some(SourceConfig {
        name: name.to_string(),
        kind,
        batch_size,
        event_time,
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
    table: &toml::Table,
    doc: &Doc<'_, '_>,
    report: &mut Report,
) -> Option<SinkConfig> {
    let mut options = TableOptions {
        table,
        section: "sinks",
        name,
        doc,
        report,
    };
    let inputs: Vec<String> = options.get("inputs").unwrap_or_default();
    let inputs = build_inputs("sinks", name, &inputs, doc, options.report);
    let kind = options.required_string("type")?;
    let kind = connectors::sink_kind(&kind, &mut options)?;
    Some(SinkConfig {
        name: name.to_string(),
        kind,
        inputs,
    })
}
