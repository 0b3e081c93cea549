//! `flumen test`: test cases declared in the pipeline file (`[[tests]]`, as Vector has them),
//! each run in-process through the real executor and modules. A case puts records into sources
//! or stages, optionally stops the watermark at a given time (so only the windows it completes
//! fire), and compares what named outputs — sinks, or any stage's port — received with what it
//! expects, as multisets (order across keys is the executor's business, not the test's).
//!
//! ```toml
//! [[tests]]
//! name = "a big order passes, a small one goes to the side"
//! watermark = 1_700_000_060_000          # optional; default: the end of time (every window fires)
//!
//! [[tests.inputs]]
//! into = "orders"                         # a source, or an operator (its inputs replaced)
//! records = [{ order_id = 1, qty = 3, price_cents = 500 }]
//! lines = ['{"order_id": 2, "qty": 1, "price_cents": 5}']   # raw lines, taken as read
//!
//! [[tests.outputs]]
//! from = "big_orders"                     # a sink, an operator (its main port) or `op.port`
//! records = [{ order_id = 1, qty = 3, price_cents = 500 }]
//! ```
//!
//! Every sink becomes a file in a scratch folder, sources read the case's lines from files, and
//! checkpoints are off: a test never touches the pipeline's real inputs and outputs.

use crate::config::{ConfigErrors, InputRef, PipelineConfig, SinkConfig};
use crate::connectors::{SinkKind, SourceConfig, SourceKind};
use crate::executor::Pipeline;
use crate::guest::Sandbox;
use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// The `[[tests]]` of a pipeline file.
#[derive(Debug, Default, Deserialize)]
pub struct TestFile {
    /// The cases, in file order.
    #[serde(default)]
    pub tests: Vec<TestCase>,
}

/// One `[[tests]]` case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What it checks, for the report.
    pub name: String,
    /// Where its records go in.
    pub inputs: Vec<TestInput>,
    /// What it expects to come out.
    #[serde(default)]
    pub outputs: Vec<TestOutput>,
    /// The watermark once the inputs are read (event time, ms); none: +∞, every window fires.
    pub watermark: Option<i64>,
}

/// Records into a source or an operator.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// A source's name, or an operator's (whose inputs the test replaces).
    pub into: String,
    /// Records, as TOML tables (written as JSON objects).
    #[serde(default)]
    pub records: Vec<toml::Value>,
    /// Lines, taken as read (malformed ones included).
    #[serde(default)]
    pub lines: Vec<String>,
}

/// What an output should hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestOutput {
    /// A sink's name, an operator's (its main port) or `operator.port`.
    pub from: String,
    /// Exactly these records, in any order (none: nothing).
    #[serde(default)]
    pub records: Vec<toml::Value>,
}

/// How one case went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The case's name.
    pub name: String,
    /// Per output that differs: what was expected and not produced (`-`), produced and not
    /// expected (`+`). Empty: passed.
    pub differences: Vec<String>,
}

impl Outcome {
    /// Whether every output held what the case expects.
    pub fn passed(&self) -> bool {
        self.differences.is_empty()
    }
}

/// The cases of the pipeline at `path`; an error names the file, line and key.
pub fn read(path: &Path) -> Result<Vec<TestCase>, ConfigErrors> {
    crate::config::load_section::<TestFile>(path).map(|file| file.tests)
}

/// Runs `case` on the pipeline at `path` (checked and prepared afresh for each case, so cases
/// do not share state).
pub fn run(path: &Path, case: &TestCase, sandbox: &Sandbox) -> anyhow::Result<Outcome> {
    let scratch = tempfile::Builder::new().prefix("flumen-test-").tempdir()?;
    run_in(path, case, sandbox, scratch.path())
}

fn run_in(
    path: &Path,
    case: &TestCase,
    sandbox: &Sandbox,
    scratch: &Path,
) -> anyhow::Result<Outcome> {
    let config = match crate::config::load(path) {
        (Some(config), errors) if errors.is_empty() => config,
        (_, errors) => anyhow::bail!("{}", ConfigErrors(errors)),
    };
    let (config, captured) = rewire(config, case, scratch)?;
    let prepared = crate::prepare_config(config, Vec::new(), sandbox, crate::Options::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pipeline = Pipeline::build(prepared)?;
    if let Some(watermark) = case.watermark {
        pipeline.end_at_watermark(watermark);
    }
    pipeline.run(&AtomicBool::new(false), None)?;
    let mut differences = Vec::new();
    for (output, file) in case.outputs.iter().zip(&captured) {
        let got: Vec<Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.to_string())))
            .collect();
        let expected = output
            .records
            .iter()
            .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
            .collect();
        if let Some(diff) = diff(&output.from, expected, got) {
            differences.push(diff);
        }
    }
    Ok(Outcome {
        name: case.name.clone(),
        differences,
    })
}

/// The pipeline the case runs: sources reading the case's lines, operators named by an input
/// reading them instead of their inputs, every sink a file in `scratch`, a file sink for each
/// output named that is not a sink, no checkpoints. Returns it and each output's file.
fn rewire(
    mut config: PipelineConfig,
    case: &TestCase,
    scratch: &Path,
) -> anyhow::Result<(PipelineConfig, Vec<PathBuf>)> {
    config.checkpoint = None;
    let mut lines: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for input in &case.inputs {
        let known = config.sources.iter().any(|s| s.name == input.into)
            || config.operators.iter().any(|o| o.name == input.into);
        if !known {
            anyhow::bail!(
                "test `{}`: input into `{}`, which is neither a source nor an operator",
                case.name,
                input.into
            );
        }
        let entry = lines.entry(&input.into).or_default();
        for record in &input.records {
            entry.push(serde_json::to_string(record)?);
        }
        entry.extend(input.lines.iter().cloned());
    }
    // An input straight into an operator reads like the pipeline's first source (event time,
    // watermark delay, batch size): a checked pipeline has at least one.
    let template = config
        .sources
        .first()
        .cloned()
        .context("the pipeline has no source")?;
    let write = |name: &str, lines: &[String]| -> anyhow::Result<PathBuf> {
        let file = scratch.join(format!("in-{name}.jsonl"));
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&file, text)?;
        Ok(file)
    };
    for source in &mut config.sources {
        let file = write(
            &source.name,
            lines.get(source.name.as_str()).map_or(&[], |l| l),
        )?;
        source.kind = SourceKind::File {
            path: file,
            follow: false,
        };
    }
    for op in &mut config.operators {
        let Some(records) = lines.get(op.name.as_str()) else {
            continue;
        };
        let name = format!("test-input-{}", op.name);
        let file = write(&name, records)?;
        let source = SourceConfig {
            name: name.clone(),
            kind: SourceKind::File {
                path: file,
                follow: false,
            },
            ..template.clone()
        };
        op.inputs = vec![input_ref(&name, None)];
        config.sources.push(source);
    }
    let sink_file = |name: &str| scratch.join(format!("sink-{name}.jsonl"));
    for sink in &mut config.sinks {
        sink.kind = SinkKind::File {
            path: sink_file(&sink.name),
        };
    }
    let mut captured = Vec::new();
    for (i, output) in case.outputs.iter().enumerate() {
        if config.sinks.iter().any(|s| s.name == output.from) {
            captured.push(sink_file(&output.from));
            continue;
        }
        let (stage, port) = match output.from.split_once('.') {
            Some((stage, port)) => (stage, Some(port.to_string())),
            None => (output.from.as_str(), None),
        };
        let known = config.operators.iter().any(|o| o.name == stage)
            || config.sources.iter().any(|s| s.name == stage);
        if !known {
            anyhow::bail!(
                "test `{}`: output from `{}`, which is neither a sink nor a stage",
                case.name,
                output.from
            );
        }
        let path = scratch.join(format!("out-{i}.jsonl"));
        config.sinks.push(SinkConfig {
            name: format!("test-output-{i}"),
            kind: SinkKind::File { path: path.clone() },
            inputs: vec![input_ref(stage, port)],
        });
        captured.push(path);
    }
    Ok((config, captured))
}

fn input_ref(stage: &str, port: Option<String>) -> InputRef {
    InputRef {
        stage: stage.to_string(),
        port,
        location: None,
        key: "tests".into(),
    }
}

/// What differs between `expected` and `got` as multisets: `-` lines expected and missing, `+`
/// lines produced and not expected.
fn diff(output: &str, expected: Vec<Value>, got: Vec<Value>) -> Option<String> {
    let count = |values: &[Value]| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for v in values {
            *counts.entry(v.to_string()).or_default() += 1;
        }
        counts
    };
    let (want, have) = (count(&expected), count(&got));
    let mut lines = Vec::new();
    for (value, n) in &want {
        let missing = n.saturating_sub(have.get(value).copied().unwrap_or(0));
        lines.extend(std::iter::repeat_n(format!("  - {value}"), missing));
    }
    for (value, n) in &have {
        let extra = n.saturating_sub(want.get(value).copied().unwrap_or(0));
        lines.extend(std::iter::repeat_n(format!("  + {value}"), extra));
    }
    (!lines.is_empty()).then(|| {
        format!(
            "output `{output}`: expected {} records, got {} (- expected and missing, + \
             produced and not expected)\n{}",
            expected.len(),
            got.len(),
            lines.join("\n")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_says_what_is_missing_and_what_is_extra() {
        assert_eq!(
            diff("o", vec![json!(1), json!(2)], vec![json!(2), json!(1)]),
            None
        );
        let d = diff("o", vec![json!(1), json!(1)], vec![json!(1), json!(3)]).unwrap();
        assert!(d.contains("expected 2 records, got 2"), "{d}");
        assert!(d.contains("  - 1") && d.contains("  + 3"), "{d}");
    }
}
