//! From a checked configuration and what each module says of itself to an executable graph:
//! inputs resolved to ports, types checked along every edge, cycles refused, operators ordered so
//! that every operator comes after all of its inputs, and each port's encoding chosen (JSON where
//! a sink reads it, bincode between operators).
//!
//! Pure: no file, no engine. Every problem is reported at once, at the `inputs` entry it is about.

use crate::config::{ConfigError, ConfigErrors, PipelineConfig};
use flumen_sdk::abi::{Describe, Encoding, OperatorKind};
use std::collections::BTreeMap;

pub use crate::connectors::JSON_TEXT;

/// A stage of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeRef {
    /// Index in `Plan::sources`.
    Source(usize),
    /// Index in `Plan::operators`.
    Operator(usize),
    /// Index in `Plan::sinks`.
    Sink(usize),
}

/// One output of a stage and the stages that read it.
#[derive(Debug, Clone, PartialEq)]
pub struct PortPlan {
    /// `main`, a side output's name, or `late`.
    pub name: String,
    /// The type of its records.
    pub type_name: String,
    /// The shape of its records' type, where its module could trace it.
    pub shape: Option<flumen_sdk::abi::Shape>,
    /// How its records' values are written.
    pub encoding: Encoding,
    /// How the host writes a record's JSON for the text sinks reading it, from its bincode: set
    /// where the module vouched for its type's JSON ([`flumen_sdk::abi::Shape::json`]), so the
    /// port stays bincode instead of the module writing JSON.
    pub json: Option<std::sync::Arc<flumen_sdk::render::JsonShape>>,
    /// The stages reading it.
    pub consumers: Vec<Consumer>,
    /// The fields the producer extracts as keys, one per distinct `key_by` of its consumers.
    pub key_fields: Vec<String>,
    /// The field the producer takes event time from, if a consumer asks (`event_time`).
    pub ts_field: Option<String>,
    /// Where the host reads each of `key_fields` in a record's bincode, when it reads them all
    /// itself (the module vouched for the type, each key is at a fixed offset, no event time is
    /// asked for): the producer then writes no keys.
    pub host_keys: Option<Vec<flumen_sdk::render::KeyField>>,
    /// How a JSON source's lines are read into its readers' input type on the host, where
    /// every reader vouched for reading that type this way: the port is then
    /// [`Encoding::Parsed`].
    pub parsed: Option<std::sync::Arc<flumen_sdk::transcode::Transcoder>>,
}

impl PortPlan {
    /// How the producing module must write the port.
    pub fn spec(&self) -> flumen_sdk::abi::PortSpec {
        flumen_sdk::abi::PortSpec {
            encoding: self.encoding,
            key_fields: match self.host_keys {
                Some(_) => Vec::new(),
                None => self.key_fields.clone(),
            },
            ts_field: self.ts_field.clone(),
        }
    }
}

/// A stage reading a port, and which of the port's keys is its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The reading stage.
    pub node: NodeRef,
    /// Index into the port's `key_fields`; `None` for an unkeyed stage.
    pub key: Option<usize>,
}

/// The name of the port where a window stage sends records too late for every window.
pub const LATE_PORT: &str = "late";

/// The executable graph. `operators` is in topological order; [`NodeRef::Operator`] indexes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Sources, in the configuration's order.
    pub sources: Vec<SourcePlan>,
    /// Operators, each after every operator it reads.
    pub operators: Vec<OperatorPlan>,
    /// Sinks, in the configuration's order.
    pub sinks: Vec<SinkPlan>,
    /// The sink of every stage's failed records.
    pub dead_letter: Option<usize>,
}

/// A source and its one port.
#[derive(Debug, Clone, PartialEq)]
pub struct SourcePlan {
    /// The source as configured.
    pub config: crate::config::SourceConfig,
    /// What it emits.
    pub port: PortPlan,
}

/// An operator, its module's description, its ports and partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorPlan {
    /// The operator as configured.
    pub config: crate::config::OperatorConfig,
    /// What its module said of itself.
    pub describe: Describe,
    /// Main first, then the side outputs in [`Describe`] order, then (a window stage) `late`.
    pub ports: Vec<PortPlan>,
    /// How many partitions run this stage, each with its share of the keys.
    pub partitions: usize,
    /// The hash of its module's bytes (set once the module is loaded; a reload keeps a stage whose
    /// module and settings are unchanged).
    pub module_hash: String,
}

impl OperatorPlan {
    /// The ports the module itself writes (all but the host's `late`).
    pub fn guest_ports(&self) -> &[PortPlan] {
        let host = usize::from(self.config.window.is_some());
        &self.ports[..self.ports.len() - host]
    }
}

/// A sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkPlan {
    /// The sink as configured.
    pub config: crate::config::SinkConfig,
}

impl Plan {
    /// The name of a stage.
    pub fn name(&self, node: NodeRef) -> &str {
        match node {
            NodeRef::Source(i) => &self.sources[i].config.name,
            NodeRef::Operator(i) => &self.operators[i].config.name,
            NodeRef::Sink(i) => &self.sinks[i].config.name,
        }
    }
}

/// Plans `config`, given the description of every operator's module (by operator name). An
/// operator missing from `modules` failed to load: it is left out of type checks, so that its
/// load error and every other problem are reported together.
pub fn plan(
    config: &PipelineConfig,
    modules: &BTreeMap<String, Describe>,
    parallelism: usize,
) -> Result<Plan, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let order = topological_order(config, &mut errors);

    let position: BTreeMap<&str, NodeRef> = config
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), NodeRef::Source(i)))
        .chain(
            order
                .iter()
                .enumerate()
                .map(|(i, &op)| (config.operators[op].name.as_str(), NodeRef::Operator(i))),
        )
        .chain(
            config
                .sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), NodeRef::Sink(i))),
        )
        .collect();

    let mut sources: Vec<SourcePlan> = config
        .sources
        .iter()
        .map(|s| SourcePlan {
            config: s.clone(),
            port: PortPlan {
                name: "main".into(),
                type_name: s.kind.output().0.into(),
                shape: s.kind.shape(),
                encoding: s.kind.output().1,
                json: None,
                consumers: Vec::new(),
                key_fields: Vec::new(),
                ts_field: None,
                host_keys: None,
                parsed: None,
            },
        })
        .collect();
    let placeholder = Describe {
        abi_version: flumen_sdk::abi::ABI_VERSION,
        kind: flumen_sdk::abi::OperatorKind::Map,
        input_type: String::new(),
        output_type: String::new(),
        side_outputs: Vec::new(),
        state_type: None,
        input_shape: None,
        output_shape: None,
    };
    let mut operators: Vec<OperatorPlan> = order
        .iter()
        .map(|&op| {
            let config = config.operators[op].clone();
            let describe = modules
                .get(&config.name)
                .cloned()
                .unwrap_or(placeholder.clone());
            let port = |name: &str, type_name: &str, shape: &Option<_>| PortPlan {
                name: name.to_string(),
                type_name: type_name.to_string(),
                shape: shape.clone(),
                encoding: Encoding::Bincode,
                json: None,
                consumers: Vec::new(),
                key_fields: Vec::new(),
                ts_field: None,
                host_keys: None,
                parsed: None,
            };
            let late = config.window.is_some().then(|| PortPlan {
                encoding: Encoding::Json,
                ..port(LATE_PORT, JSON_TEXT, &None)
            });
            let ports =
                std::iter::once(port("main", &describe.output_type, &describe.output_shape))
                    .chain(
                        describe
                            .side_outputs
                            .iter()
                            .map(|s| port(&s.name, &s.type_name, &s.shape)),
                    )
                    .chain(late)
                    .collect();
            // A keyed stage spreads its keys; a stateless one spreads its records (like
            // Flink's rebalance); an unkeyed stateful one has one state, so one partition.
            let stateless = !matches!(
                describe.kind,
                OperatorKind::Process | OperatorKind::Aggregate
            );
            let partitions = match config.key_by {
                Some(_) => config.parallelism.unwrap_or(parallelism).max(1),
                None if stateless => config.parallelism.unwrap_or(parallelism).max(1),
                None => 1,
            };
            OperatorPlan {
                config,
                describe,
                ports,
                partitions,
                module_hash: String::new(),
            }
        })
        .collect();

    let consumers = (0..operators.len())
        .map(|i| (NodeRef::Operator(i), operators[i].config.inputs.clone()))
        .chain(
            config
                .sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (NodeRef::Sink(i), s.inputs.clone())),
        )
        .collect::<Vec<_>>();

    for (consumer, inputs) in consumers {
        for input in &inputs {
            let (key_by, event_time) = match consumer {
                NodeRef::Operator(o) => (
                    operators[o].config.key_by.clone(),
                    operators[o].config.event_time.clone(),
                ),
                _ => (None, None),
            };
            let error = |message: String| ConfigError {
                file: config.file.clone(),
                location: input.location,
                key: input.key.clone(),
                message,
            };
            let port = match position.get(input.stage.as_str()) {
                None => {
                    errors.push(error(format!(
                        "input `{input}`: no source or operator is named `{}`",
                        input.stage
                    )));
                    continue;
                }
                Some(NodeRef::Sink(_)) => {
                    errors.push(error(format!(
                        "input `{input}`: `{}` is a sink, which has no output",
                        input.stage
                    )));
                    continue;
                }
                Some(NodeRef::Source(s)) => match &input.port {
                    None => &mut sources[*s].port,
                    Some(port) => {
                        errors.push(error(format!(
                            "input `{input}`: a source has only its main output, not `{port}`"
                        )));
                        continue;
                    }
                },
                Some(NodeRef::Operator(o)) => {
                    let loaded = modules.contains_key(&operators[*o].config.name);
                    let wanted = input.port.as_deref().unwrap_or("main");
                    let ports = &mut operators[*o].ports;
                    let Some(found) = ports.iter().position(|p| p.name == wanted) else {
                        if loaded {
                            let known: Vec<_> = ports.iter().map(|p| p.name.as_str()).collect();
                            errors.push(error(format!(
                                "input `{input}`: `{}` has no output `{wanted}`; it has {}",
                                input.stage,
                                known.join(", ")
                            )));
                        }
                        continue;
                    };
                    &mut ports[found]
                }
            };
            let key = key_by.map(|field| {
                port.key_fields
                    .iter()
                    .position(|f| *f == field)
                    .unwrap_or_else(|| {
                        port.key_fields.push(field);
                        port.key_fields.len() - 1
                    })
            });
            if let Some(field) = event_time {
                match &port.ts_field {
                    Some(other) if *other != field => errors.push(error(format!(
                        "input `{input}`: event time is read from `{other}` by another stage; \
                         stages reading one output agree on `event_time`"
                    ))),
                    _ => port.ts_field = Some(field),
                }
            }
            port.consumers.push(Consumer {
                node: consumer,
                key,
            });
            let carried = port.type_name.clone();
            let carried_shape = port.shape.clone();
            if let NodeRef::Operator(o) = consumer {
                let expected = &operators[o].describe.input_type;
                let consumer_loaded = modules.contains_key(&operators[o].config.name);
                let name = &operators[o].config.name;
                // JSON is read by field name: only bincode edges need the same shape.
                let checked = consumer_loaded && carried != JSON_TEXT && !carried.is_empty();
                match (&carried_shape, &operators[o].describe.input_shape) {
                    (Some(written), Some(read)) if checked => {
                        if let Err(mismatch) = crate::shape::compare(written, read) {
                            errors.push(error(format!(
                                "input `{input}` carries `{carried}`, but `{name}` takes \
                                 `{expected}`, which does not read it: {mismatch} (written \
                                 `{}`, read `{}`); values travel between stages by position, \
                                 so fields must match in order, name and type",
                                crate::shape::render(written, 0, 1),
                                crate::shape::render(read, 0, 1),
                            )));
                        }
                    }
                    _ if checked && &carried != expected => {
                        errors.push(error(format!(
                            "input `{input}` carries `{carried}`, but `{name}` takes `{expected}`"
                        )));
                    }
                    _ => {}
                }
            }
        }
    }

    // A port read by a text sink is written as JSON: by the host from its bincode where the
    // module vouched for its type's JSON, else by its producer. A blackhole takes anything.
    // A vouched type's keys are read by the host where they sit at fixed offsets.
    for op in &mut operators {
        for port in &mut op.ports {
            let text_sink = port.consumers.iter().any(|c| match c.node {
                NodeRef::Sink(k) => config.sinks.get(k).is_some_and(|s| s.kind.writes_lines()),
                _ => false,
            });
            let vouched = port.shape.as_ref().filter(|shape| shape.json);
            let json = vouched
                .and_then(flumen_sdk::render::JsonShape::new)
                .map(std::sync::Arc::new);
            if text_sink && port.encoding == Encoding::Bincode {
                match &json {
                    Some(json) => port.json = Some(json.clone()),
                    None => port.encoding = Encoding::Json,
                }
            }
            // Keys the host can read at their offsets in the bincode are not written by the
            // module (it would serialize each value a second time to find them).
            if let Some(json) = json.filter(|_| port.encoding == Encoding::Bincode)
                && port.ts_field.is_none()
                && !port.key_fields.is_empty()
            {
                port.host_keys = port
                    .key_fields
                    .iter()
                    .map(|field| json.key_field(field))
                    .collect();
            }
        }
    }
    // A JSON source whose readers are all modules that vouched for reading one input type has
    // each line read into that type's bincode here, natively and once (the line's event time
    // is read in the same pass); a line the host declines reaches them as text.
    for source in &mut sources {
        let port = &mut source.port;
        if port.encoding != Encoding::Json {
            continue;
        }
        let mut shapes = port.consumers.iter().map(|c| match c.node {
            NodeRef::Operator(o) if modules.contains_key(&operators[o].config.name) => operators[o]
                .describe
                .input_shape
                .as_ref()
                .filter(|shape| shape.json),
            _ => None,
        });
        let Some(Some(first)) = shapes.next() else {
            continue;
        };
        if !shapes.all(|shape| shape.is_some_and(|shape| shape.nodes == first.nodes)) {
            continue;
        }
        let reader = flumen_sdk::render::JsonShape::new(first)
            .as_ref()
            .and_then(flumen_sdk::transcode::Transcoder::new);
        if let Some(reader) = reader {
            port.encoding = Encoding::Parsed;
            port.parsed = Some(std::sync::Arc::new(reader));
        }
    }
    for op in &operators {
        let name = &op.config.name;
        let key = |k: &str| format!("operators.{name}.{k}");
        if !modules.contains_key(name) {
            continue;
        }
        let aggregate = op.describe.kind == OperatorKind::Aggregate;
        if aggregate && op.config.window.is_none() {
            errors.push(config.error(
                &key("module"),
                format!("`{name}` is an aggregate: give the stage a `window`"),
            ));
        }
        if !aggregate && op.config.window.is_some() {
            errors.push(config.error(
                &key("window"),
                format!(
                    "`{name}` is a {} operator; only an aggregate module runs in windows",
                    op.describe.kind.name()
                ),
            ));
        }
        let stateful = matches!(
            op.describe.kind,
            OperatorKind::Process | OperatorKind::Aggregate
        );
        if op.config.parallelism.is_some_and(|p| p > 1) && op.config.key_by.is_none() && stateful {
            errors.push(config.error(
                &key("parallelism"),
                "a stateful stage runs in partitions only when keyed (`key_by`)",
            ));
        }
        if op.describe.kind == OperatorKind::Process && op.config.key_by.is_none() {
            errors.push(config.error(
                &key("module"),
                format!(
                    "`{name}` is a process operator, whose state is per key: give the stage a \
                     `key_by`"
                ),
            ));
        }
        if op.config.state_ttl_ms.is_some() && op.describe.kind != OperatorKind::Process {
            errors.push(config.error(
                &key("state_ttl_ms"),
                "only a process operator keeps keyed state",
            ));
        }
    }

    let dead_letter = config
        .dead_letter
        .as_ref()
        .and_then(|name| config.sinks.iter().position(|s| &s.name == name));

    if errors.is_empty() {
        Ok(Plan {
            sources,
            operators,
            sinks: config
                .sinks
                .iter()
                .map(|s| SinkPlan { config: s.clone() })
                .collect(),
            dead_letter,
        })
    } else {
        errors.sort_by_key(|e| e.location.map(|l| (l.line, l.column)));
        errors.dedup();
        Err(ConfigErrors(errors))
    }
}

/// Operator indices such that every operator comes after the operators it reads; operators on a
/// cycle are reported and left out.
fn topological_order(config: &PipelineConfig, errors: &mut Vec<ConfigError>) -> Vec<usize> {
    let index: BTreeMap<&str, usize> = config
        .operators
        .iter()
        .enumerate()
        .map(|(i, o)| (o.name.as_str(), i))
        .collect();
    // downstream[u] lists v once per input of v that reads u.
    let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); config.operators.len()];
    let mut pending: Vec<usize> = vec![0; config.operators.len()];
    for (v, op) in config.operators.iter().enumerate() {
        for input in &op.inputs {
            if let Some(&u) = index.get(input.stage.as_str()) {
                downstream[u].push(v);
                pending[v] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..pending.len())
        .rev()
        .filter(|&op| pending[op] == 0)
        .collect();
    let mut order = Vec::new();
    while let Some(op) = ready.pop() {
        order.push(op);
        for &next in &downstream[op] {
            pending[next] -= 1;
            if pending[next] == 0 {
                ready.push(next);
            }
        }
    }
    let cyclic: Vec<&str> = (0..config.operators.len())
        .filter(|op| pending[*op] > 0)
        .map(|op| config.operators[op].name.as_str())
        .collect();
    for name in &cyclic {
        errors.push(config.error(
            &format!("operators.{name}.inputs"),
            format!(
                "operators {} form a cycle; a pipeline is a directed acyclic graph",
                cyclic.join(", ")
            ),
        ));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use flumen_sdk::abi::{ABI_VERSION, SideOutput};
    use std::path::Path;

    fn describe(input: &str, output: &str, sides: &[(&str, &str)]) -> Describe {
        Describe {
            abi_version: ABI_VERSION,
            kind: OperatorKind::Map,
            input_type: input.into(),
            output_type: output.into(),
            side_outputs: sides
                .iter()
                .map(|(n, t)| SideOutput {
                    name: n.to_string(),
                    type_name: t.to_string(),
                    shape: None,
                })
                .collect(),
            state_type: None,
            input_shape: None,
            output_shape: None,
        }
    }

    fn pipeline(body: &str) -> PipelineConfig {
        let text = format!("[sources.src]\ntype = \"file\"\npath = \"x\"\n{body}");
        config::parse(Path::new("p.toml"), &text, &|_| None).unwrap()
    }

    fn modules(entries: &[(&str, Describe)]) -> BTreeMap<String, Describe> {
        entries
            .iter()
            .map(|(n, d)| (n.to_string(), d.clone()))
            .collect()
    }

    #[test]
    fn operators_are_ordered_after_their_inputs_and_ports_pick_encodings() {
        let config = pipeline(
            "[operators.b]\nmodule = \"b.wasm\"\ninputs = [\"a\"]\n\
             [operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\n\
             [sinks.out]\ntype = \"stdout\"\ninputs = [\"b\", \"a.bad\"]\n",
        );
        // `b` vouches for its output's JSON: the host writes it, the port stays bincode.
        let score = |json| Describe {
            output_shape: flumen_sdk::shape::of::<(i64, bool)>()
                .map(|shape| flumen_sdk::abi::Shape { json, ..shape }),
            ..describe("Valid", "Score", &[])
        };
        let planned = |b: Describe| {
            plan(
                &config,
                &modules(&[
                    ("a", describe("Order", "Valid", &[("bad", "Reject")])),
                    ("b", b),
                ]),
                1,
            )
            .unwrap()
        };
        let b = &planned(score(true)).operators[1].ports[0];
        assert_eq!((b.encoding, b.json.is_some()), (Encoding::Bincode, true));
        let b = &planned(score(false)).operators[1].ports[0];
        assert_eq!((b.encoding, b.json.is_some()), (Encoding::Json, false));
        let plan = planned(describe("Valid", "Score", &[]));
        let names: Vec<_> = plan
            .operators
            .iter()
            .map(|o| o.config.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let a = &plan.operators[0];
        let nodes = |p: &PortPlan| p.consumers.iter().map(|c| c.node).collect::<Vec<_>>();
        assert_eq!(nodes(&a.ports[0]), vec![NodeRef::Operator(1)]);
        assert_eq!(a.ports[0].encoding, Encoding::Bincode);
        assert_eq!(nodes(&a.ports[1]), vec![NodeRef::Sink(0)]);
        assert_eq!(a.ports[1].encoding, Encoding::Json);
        assert!(a.ports[1].json.is_none());
        assert_eq!(nodes(&plan.sources[0].port), vec![NodeRef::Operator(0)]);
    }

    #[test]
    fn a_json_source_is_read_on_the_host_only_for_readers_that_all_vouched_for_one_type() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Order {
            id: i64,
            sku: String,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Other {
            id: i64,
        }
        let reading = |json, shape: Option<flumen_sdk::abi::Shape>| Describe {
            input_shape: shape.map(|shape| flumen_sdk::abi::Shape { json, ..shape }),
            ..describe("Order", "Valid", &[])
        };
        let order = flumen_sdk::shape::of::<Order>();
        let other = flumen_sdk::shape::of::<Other>();
        let source = |body: &str, a: Describe, b: Describe| {
            let config = pipeline(&format!(
                "[operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\n\
                 [operators.b]\nmodule = \"b.wasm\"\ninputs = [\"src\"]\n{body}"
            ));
            let port = plan(&config, &modules(&[("a", a), ("b", b)]), 1)
                .unwrap()
                .sources
                .remove(0)
                .port;
            (port.encoding, port.parsed.is_some())
        };
        let parsed = (Encoding::Parsed, true);
        let json = (Encoding::Json, false);
        let vouched = || reading(true, order.clone());
        assert_eq!(source("", vouched(), vouched()), parsed);
        assert_eq!(source("", vouched(), reading(false, order.clone())), json);
        assert_eq!(source("", vouched(), reading(true, other.clone())), json);
        assert_eq!(source("", vouched(), reading(true, None)), json);
        let sink = "[sinks.raw]\ntype = \"stdout\"\ninputs = [\"src\"]\n";
        assert_eq!(
            source(sink, vouched(), vouched()),
            json,
            "a sink takes the lines"
        );
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            order: Other,
        }
        let nested = || reading(true, flumen_sdk::shape::of::<Nested>());
        assert_eq!(
            source("", nested(), nested()),
            json,
            "only flat types are read"
        );
    }

    #[test]
    fn a_process_stage_needs_a_key() {
        let config = pipeline("[operators.count]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\n");
        let process = Describe {
            kind: OperatorKind::Process,
            state_type: Some("u64".into()),
            ..describe("T", "T", &[])
        };
        let errors = plan(&config, &modules(&[("count", process)]), 1).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(
            errors.0[0].message.contains("give the stage a `key_by`"),
            "{errors}"
        );
        assert_eq!(errors.0[0].key, "operators.count.module");
    }

    #[test]
    fn only_a_stateful_stage_needs_a_key_to_run_in_partitions() {
        let config = pipeline(
            "[operators.spread]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\nparallelism = 2\n\
             [operators.global]\nmodule = \"b.wasm\"\ninputs = [\"spread\"]\nparallelism = 2\n\
             window = { type = \"tumbling\", size_ms = 1000 }\n",
        );
        let stateful = Describe {
            kind: OperatorKind::Aggregate,
            state_type: Some("u64".into()),
            ..describe("T", "T", &[])
        };
        let errors = plan(
            &config,
            &modules(&[("spread", describe("T", "T", &[])), ("global", stateful)]),
            1,
        )
        .unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert!(errors.0[0].message.contains("only when keyed"), "{errors}");
        assert!(
            errors.to_string().contains("operators.global.parallelism"),
            "{errors}"
        );
    }

    #[test]
    fn every_graph_error_is_reported_at_its_input() {
        let config = pipeline(
            "[operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\", \"nope\"]\n\
             [operators.b]\nmodule = \"b.wasm\"\ninputs = [\"a.missing\"]\n\
             [operators.c]\nmodule = \"c.wasm\"\ninputs = [\"a\"]\n\
             [sinks.out]\ntype = \"stdout\"\ninputs = [\"src.side\"]\n\
             [sinks.out2]\ntype = \"stdout\"\ninputs = [\"out\"]\n",
        );
        let errors = plan(
            &config,
            &modules(&[
                ("a", describe("Order", "Valid", &[])),
                ("b", describe("Valid", "X", &[])),
                ("c", describe("Other", "X", &[])),
            ]),
            1,
        )
        .unwrap_err();
        let text: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(text[0].starts_with("p.toml:6:1: `operators.a.inputs`: input `nope`: no source"));
        assert!(text[1].contains(
            "`operators.b.inputs`: input `a.missing`: `a` has no output `missing`; it has main"
        ));
        assert!(text[2].contains("input `a` carries `Valid`, but `c` takes `Other`"));
        assert!(
            text[3].contains(
                "`sinks.out.inputs`: input `src.side`: a source has only its main output"
            )
        );
        assert!(text[4].contains("input `out`: `out` is a sink"));
    }

    #[test]
    fn cycles_are_refused_naming_their_operators() {
        let config = pipeline(
            "[operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\", \"b\"]\n\
             [operators.b]\nmodule = \"b.wasm\"\ninputs = [\"a\"]\n",
        );
        let d = describe("T", "T", &[]);
        let errors = plan(&config, &modules(&[("a", d.clone()), ("b", d)]), 1).unwrap_err();
        assert!(
            errors
                .0
                .iter()
                .all(|e| e.message.contains("operators a, b form a cycle"))
        );
        assert_eq!(errors.0.len(), 2);
    }

    #[test]
    fn unloaded_modules_skip_type_checks_only() {
        let config = pipeline(
            "[operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\n\
             [sinks.out]\ntype = \"stdout\"\ninputs = [\"a.whatever\", \"ghost\"]\n",
        );
        let errors = plan(&config, &BTreeMap::new(), 1).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert!(errors.0[0].message.contains("`ghost`"));
    }
}

#[cfg(test)]
mod keyed_tests {
    use super::*;
    use crate::config;
    use flumen_sdk::abi::ABI_VERSION;
    use std::path::Path;

    #[test]
    fn consumers_get_key_indices_and_window_stages_a_late_port() {
        let text = "[sources.src]\ntype = \"file\"\npath = \"x\"\n\
            [operators.a]\nmodule = \"a.wasm\"\ninputs = [\"src\"]\n\
            [operators.by_user]\nmodule = \"b.wasm\"\ninputs = [\"a\"]\nkey_by = \"user_id\"\n\
            [operators.by_sku]\nmodule = \"c.wasm\"\ninputs = [\"a\"]\nkey_by = \"sku\"\nparallelism = 3\n\
            window = { type = \"tumbling\", size_ms = 1000 }\n\
            [operators.again]\nmodule = \"b.wasm\"\ninputs = [\"a\"]\nkey_by = \"user_id\"\n\
            [operators.global]\nmodule = \"b.wasm\"\ninputs = [\"a\"]\n\
            window = { type = \"tumbling\", size_ms = 1000 }\n";
        let config = config::parse(Path::new("p.toml"), text, &|_| None).unwrap();
        let d = |kind| Describe {
            abi_version: ABI_VERSION,
            kind,
            input_type: "T".into(),
            output_type: "T".into(),
            side_outputs: Vec::new(),
            state_type: None,
            input_shape: None,
            output_shape: None,
        };
        let modules: BTreeMap<String, Describe> = [
            ("a", d(OperatorKind::Map)),
            ("by_user", d(OperatorKind::Process)),
            ("by_sku", d(OperatorKind::Aggregate)),
            ("again", d(OperatorKind::Process)),
            ("global", d(OperatorKind::Aggregate)),
        ]
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
        let plan = plan(&config, &modules, 2).unwrap();
        let a = plan
            .operators
            .iter()
            .find(|o| o.config.name == "a")
            .unwrap();
        let mut fields = a.ports[0].key_fields.clone();
        fields.sort();
        assert_eq!(fields, vec!["sku".to_string(), "user_id".to_string()]);
        for consumer in &a.ports[0].consumers {
            let NodeRef::Operator(o) = consumer.node else {
                panic!("not an operator")
            };
            let Some(key) = consumer.key else {
                assert!(plan.operators[o].config.key_by.is_none());
                continue;
            };
            let field = &a.ports[0].key_fields[key];
            assert_eq!(Some(field), plan.operators[o].config.key_by.as_ref());
        }
        let by_sku = plan
            .operators
            .iter()
            .find(|o| o.config.name == "by_sku")
            .unwrap();
        assert_eq!(by_sku.partitions, 3);
        assert_eq!(by_sku.ports.last().unwrap().name, LATE_PORT);
        assert_eq!(by_sku.guest_ports().len(), 1);
        let by_user = plan
            .operators
            .iter()
            .find(|o| o.config.name == "by_user")
            .unwrap();
        assert_eq!(by_user.partitions, 2);
        // A stateless stage spreads its records; an unkeyed stateful one keeps one state.
        assert_eq!(a.partitions, 2);
        let global = plan
            .operators
            .iter()
            .find(|o| o.config.name == "global")
            .unwrap();
        assert_eq!(global.partitions, 1);
        // Not vouched for: the module writes the keys.
        assert_eq!(a.ports[0].host_keys, None);
        assert_eq!(a.ports[0].spec().key_fields, a.ports[0].key_fields);

        // Vouched for, `user_id` at a fixed offset and `sku` after it: the host reads both,
        // and the module is asked for none.
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Valid {
            user_id: i64,
            sku: String,
            after: i64,
        }
        let shape = flumen_sdk::shape::of::<Valid>().map(|shape| flumen_sdk::abi::Shape {
            json: true,
            ..shape
        });
        let vouched = |modules: &BTreeMap<String, Describe>| {
            let mut modules = modules.clone();
            modules.get_mut("a").unwrap().output_shape = shape.clone();
            modules
        };
        let port_of_a = |plan: &Plan| {
            let a = plan.operators.iter().find(|o| o.config.name == "a");
            a.unwrap().ports[0].clone()
        };
        let plan = super::plan(&config, &vouched(&modules), 2).unwrap();
        let port = &port_of_a(&plan);
        let json = flumen_sdk::render::JsonShape::new(shape.as_ref().unwrap()).unwrap();
        let expected: Vec<_> = port
            .key_fields
            .iter()
            .map(|f| json.key_field(f).unwrap())
            .collect();
        assert_eq!(port.host_keys.as_ref(), Some(&expected));
        assert!(port.spec().key_fields.is_empty());
        // A key after a string has no fixed offset: the module writes them all.
        let text = text.replace("key_by = \"sku\"", "key_by = \"after\"");
        let config = config::parse(Path::new("p.toml"), &text, &|_| None).unwrap();
        let plan = super::plan(&config, &vouched(&modules), 2).unwrap();
        let port = &port_of_a(&plan);
        assert_eq!(port.host_keys, None);
        assert_eq!(port.spec().key_fields.len(), 2);
    }
}
