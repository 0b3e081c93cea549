//! The reload diff: what a new version of a pipeline changes in the running one, decided from the
//! two plans alone, before anything is instantiated — so a reload instantiates only the stages it
//! swaps or adds, and the executor applies exactly what was decided here.
//!
//! One identity rule per node kind:
//! - a **source** is kept when it reads the same input (the same file, compared as a file, or the
//!   same generated sequence): it keeps its place and takes the new settings in place;
//! - a **sink** is kept when it writes the same output (a rename never truncates its file);
//! - an **operator** is the one of the same name: kept when its module, settings and partitions
//!   are unchanged (its inputs may change), swapped otherwise.
//!
//! And one state rule ([`state_conflict`]) for every swap, which checkpoint recovery will share.

use crate::config::{OnStateChange, OperatorConfig};
use crate::connectors::SourceKind;
use crate::plan::{OperatorPlan, Plan};
use crate::window::WindowSpec;

/// What becomes of one source of the new plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStep {
    /// The running source `old` goes on, `retuned` when its settings changed.
    Keep { old: usize, retuned: bool },
    /// A new source is opened.
    Open,
}

/// What becomes of one sink of the new plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkStep {
    /// The running sink `old` goes on (renamed when its name changed).
    Keep { old: usize },
    /// A new sink is opened (created or truncated).
    Open,
}

/// What becomes of one operator of the new plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorStep {
    /// The running stage `old` goes on untouched, with its instances.
    Keep { old: usize },
    /// New instances replace those of the running stage `old`; its state is kept (spread over
    /// the new partitions by key) or reset.
    Swap { old: usize, state: StateStep },
    /// A new stage, with empty state.
    Add,
}

/// What a swap does with the running stage's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateStep {
    Keep,
    /// The state no longer fits and the stage asks for `on_state_change = "reset"`.
    Reset,
}

/// A stage whose state no longer fits its new version, which does not ask for a reset: the
/// reload is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub stage: String,
    pub why: String,
}

impl Conflict {
    /// The refusal, located at the stage's module in `config`.
    pub fn error(&self, config: &crate::config::PipelineConfig) -> crate::config::ConfigError {
        let Conflict { stage, why } = self;
        config.error(
            &format!("operators.{stage}.module"),
            format!("{why}; set on_state_change = \"reset\" to start `{stage}` with empty state"),
        )
    }
}

/// Everything a reload changes, per node of the new plan (in its order), and what it removes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReloadPlan {
    pub sources: Vec<SourceStep>,
    pub operators: Vec<OperatorStep>,
    pub sinks: Vec<SinkStep>,
    /// Indices in the old plan.
    pub removed_sources: Vec<usize>,
    pub removed_operators: Vec<usize>,
    pub removed_sinks: Vec<usize>,
    pub conflicts: Vec<Conflict>,
}

impl ReloadPlan {
    /// Whether operator `i` of the new plan needs new instances.
    pub fn needs_instances(&self, i: usize) -> bool {
        !matches!(self.operators.get(i), Some(OperatorStep::Keep { .. }))
    }
}

/// What `new` changes in the running `old`.
pub fn diff(old: &Plan, new: &Plan) -> ReloadPlan {
    let mut taken = vec![false; old.sources.len()];
    let sources = new
        .sources
        .iter()
        .map(|s| {
            let found = (0..old.sources.len()).find(|&at| {
                !taken[at] && SourceKind::same_input(&old.sources[at].config, &s.config)
            });
            match found {
                Some(at) => {
                    taken[at] = true;
                    let retuned = old.sources[at].config != s.config;
                    SourceStep::Keep { old: at, retuned }
                }
                None => SourceStep::Open,
            }
        })
        .collect();
    let removed_sources = unmatched(&taken);

    let mut taken = vec![false; old.sinks.len()];
    let sinks = new
        .sinks
        .iter()
        .map(|s| {
            let found = (0..old.sinks.len()).find(|&at| {
                let old = &old.sinks[at].config;
                !taken[at]
                    && old
                        .kind
                        .same_output(&old.name, &s.config.kind, &s.config.name)
            });
            match found {
                Some(at) => {
                    taken[at] = true;
                    SinkStep::Keep { old: at }
                }
                None => SinkStep::Open,
            }
        })
        .collect();
    let removed_sinks = unmatched(&taken);

    let mut taken = vec![false; old.operators.len()];
    let mut conflicts = Vec::new();
    let operators = new
        .operators
        .iter()
        .map(|op| {
            let Some(at) = old
                .operators
                .iter()
                .position(|o| o.config.name == op.config.name)
            else {
                return OperatorStep::Add;
            };
            taken[at] = true;
            let running = &old.operators[at];
            if unchanged(running, op) {
                return OperatorStep::Keep { old: at };
            }
            let state = state_step(&StateLayout::of(running), op).unwrap_or_else(|conflict| {
                conflicts.push(conflict);
                StateStep::Keep
            });
            OperatorStep::Swap { old: at, state }
        })
        .collect();
    let removed_operators = unmatched(&taken);
    ReloadPlan {
        sources,
        operators,
        sinks,
        removed_sources,
        removed_operators,
        removed_sinks,
        conflicts,
    }
}

fn unmatched(taken: &[bool]) -> Vec<usize> {
    (0..taken.len()).filter(|&i| !taken[i]).collect()
}

/// Whether a stage can go on as it runs: same module bytes, same settings (inputs aside), same
/// partitions, and its ports written as before (a new sink or consumer may need a port in
/// another encoding, or other keys extracted).
fn unchanged(old: &OperatorPlan, new: &OperatorPlan) -> bool {
    let settings = |c: &OperatorConfig| OperatorConfig {
        inputs: Vec::new(),
        ..c.clone()
    };
    let written = |op: &OperatorPlan| {
        op.guest_ports()
            .iter()
            .map(|p| p.spec())
            .collect::<Vec<_>>()
    };
    old.module_hash == new.module_hash
        && old.partitions == new.partitions
        && settings(&old.config) == settings(&new.config)
        && written(old) == written(new)
}

/// What a stage's state is shaped by: the type its module keeps, the key it is kept under, and
/// its windows. A checkpoint records it for every stage, so a restart is judged like a reload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateLayout {
    /// The type of the keyed state or accumulator the module keeps, if any.
    pub state_type: Option<String>,
    /// The field the state is keyed by.
    pub key_by: Option<String>,
    /// The stage's windows: `(kind, size or gap, slide)`, see [`StateLayout::window`].
    pub window: Option<(String, i64, i64)>,
    /// How long after firing a window still takes records.
    pub allowed_lateness_ms: i64,
}

impl StateLayout {
    /// The layout of the state of the stage `op` plans.
    pub fn of(op: &OperatorPlan) -> Self {
        StateLayout {
            state_type: op.describe.state_type.clone(),
            key_by: op.config.key_by.clone(),
            window: op.config.window.map(Self::window),
            allowed_lateness_ms: op.config.allowed_lateness_ms,
        }
    }

    /// A window spec as plain fields (what a checkpoint can hold and compare).
    pub fn window(spec: WindowSpec) -> (String, i64, i64) {
        match spec {
            WindowSpec::Tumbling { size_ms } => ("tumbling".into(), size_ms, 0),
            WindowSpec::Sliding { size_ms, slide_ms } => ("sliding".into(), size_ms, slide_ms),
            WindowSpec::Session { gap_ms } => ("session".into(), gap_ms, 0),
        }
    }
}

/// What becomes of state laid out as `old` when the stage `new` plans takes over (a reload's
/// swap, a restart from a checkpoint): kept if it fits, reset if it does not and the stage asks
/// for that, refused otherwise.
pub fn state_step(old: &StateLayout, new: &OperatorPlan) -> Result<StateStep, Conflict> {
    match state_conflict(old, &StateLayout::of(new)) {
        None => Ok(StateStep::Keep),
        Some(_) if new.config.on_state_change == OnStateChange::Reset => Ok(StateStep::Reset),
        Some(why) => Err(Conflict {
            stage: new.config.name.clone(),
            why,
        }),
    }
}

/// Why the state a stage laid out as `old` keeps cannot carry over to a stage laid out as `new`,
/// if it cannot. Keyed state fits while its type and its key do; windows while the window and
/// the allowed lateness do (lateness decides which windows are still kept). A stage without
/// windows ignores lateness.
pub fn state_conflict(old: &StateLayout, new: &StateLayout) -> Option<String> {
    if old.state_type != new.state_type {
        return Some(format!(
            "the new module keeps `{}` where the running one keeps `{}`",
            new.state_type.as_deref().unwrap_or("no state"),
            old.state_type.as_deref().unwrap_or("no state"),
        ));
    }
    if old.state_type.is_some() && old.key_by != new.key_by {
        return Some("the stage's `key_by` changed, so its state is keyed differently".into());
    }
    let windowed = old.window.is_some() || new.window.is_some();
    if old.window != new.window || (windowed && old.allowed_lateness_ms != new.allowed_lateness_ms)
    {
        return Some(
            "the stage's `window` or `allowed_lateness_ms` changed, so its windows no longer fit"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SinkConfig, SinkKind, SourceConfig, SourceKind, StageLimits};
    use crate::plan::{PortPlan, SinkPlan, SourcePlan};
    use crate::window::WindowSpec;
    use flumen_sdk::abi::{Describe, Encoding, OperatorKind};
    use std::time::Duration;

    fn port() -> PortPlan {
        PortPlan {
            name: "main".into(),
            type_name: "T".into(),
            shape: None,
            encoding: Encoding::Json,
            json: None,
            consumers: Vec::new(),
            key_fields: Vec::new(),
            ts_field: None,
            host_keys: None,
            parsed: None,
        }
    }

    fn file_source(name: &str, path: &str) -> SourcePlan {
        SourcePlan {
            config: SourceConfig {
                name: name.into(),
                kind: SourceKind::File {
                    path: path.into(),
                    follow: false,
                },
                batch_size: 1024,
                event_time: None,
                watermark_delay_ms: 0,
                max_record_bytes: 1 << 20,
                max_future_ms: None,
            },
            port: port(),
        }
    }

    fn file_sink(name: &str, path: &str) -> SinkPlan {
        SinkPlan {
            config: SinkConfig {
                name: name.into(),
                inputs: Vec::new(),
                kind: SinkKind::File { path: path.into() },
            },
        }
    }

    fn operator(name: &str, hash: &str, state: Option<&str>) -> OperatorPlan {
        OperatorPlan {
            config: OperatorConfig {
                name: name.into(),
                module: format!("{name}.wasm").into(),
                inputs: Vec::new(),
                params: serde_json::Value::Null,
                memory_limit_bytes: 1 << 20,
                timeout: Duration::from_secs(1),
                key_by: state.map(|_| "sku".into()),
                event_time: None,
                parallelism: None,
                state_ttl_ms: None,
                window: None,
                allowed_lateness_ms: 0,
                on_state_change: OnStateChange::Refuse,
                limits: StageLimits::default(),
            },
            describe: Describe {
                abi_version: flumen_sdk::abi::ABI_VERSION,
                kind: match state {
                    Some(_) => OperatorKind::Process,
                    None => OperatorKind::Map,
                },
                input_type: "T".into(),
                output_type: "T".into(),
                side_outputs: Vec::new(),
                state_type: state.map(String::from),
                input_shape: None,
                output_shape: None,
            },
            ports: vec![port()],
            partitions: 1,
            module_hash: hash.into(),
        }
    }

    fn plan(sources: Vec<SourcePlan>, operators: Vec<OperatorPlan>, sinks: Vec<SinkPlan>) -> Plan {
        Plan {
            sources,
            operators,
            sinks,
            dead_letter: None,
        }
    }

    /// The running pipeline of every case: one source, two operators, one sink.
    fn running() -> Plan {
        plan(
            vec![file_source("orders", "/data/orders.jsonl")],
            vec![
                operator("validate", "h1", None),
                operator("stock", "h2", Some("Stock")),
            ],
            vec![file_sink("out", "/out/valid.jsonl")],
        )
    }

    /// What a reload of `running()` as it is does: keep everything.
    fn unchanged() -> ReloadPlan {
        ReloadPlan {
            sources: vec![SourceStep::Keep {
                old: 0,
                retuned: false,
            }],
            operators: vec![OperatorStep::Keep { old: 0 }, OperatorStep::Keep { old: 1 }],
            sinks: vec![SinkStep::Keep { old: 0 }],
            ..Default::default()
        }
    }

    #[test]
    fn each_node_kind_follows_its_identity_rule() {
        type Edit = fn(&mut Plan);
        let cases: Vec<(&str, Edit, ReloadPlan)> = vec![
            ("nothing changed", |_| {}, unchanged()),
            (
                "a source setting changed: retuned in place",
                |p| {
                    p.sources[0].config.batch_size = 7;
                },
                ReloadPlan {
                    sources: vec![SourceStep::Keep {
                        old: 0,
                        retuned: true,
                    }],
                    ..unchanged()
                },
            ),
            (
                "a source renamed, same file: kept",
                |p| {
                    p.sources[0].config.name = "purchases".into();
                },
                ReloadPlan {
                    sources: vec![SourceStep::Keep {
                        old: 0,
                        retuned: true,
                    }],
                    ..unchanged()
                },
            ),
            (
                "another file: a new source, the old one removed",
                |p| {
                    *p = plan(
                        vec![file_source("orders", "/data/other.jsonl")],
                        p.operators.clone(),
                        p.sinks.clone(),
                    );
                },
                ReloadPlan {
                    sources: vec![SourceStep::Open],
                    removed_sources: vec![0],
                    ..unchanged()
                },
            ),
            (
                "a sink renamed: kept; a sink added: opened",
                |p| {
                    p.sinks[0].config.name = "valid".into();
                    p.sinks.push(file_sink("more", "/out/more.jsonl"));
                },
                ReloadPlan {
                    sinks: vec![SinkStep::Keep { old: 0 }, SinkStep::Open],
                    ..unchanged()
                },
            ),
            (
                "inputs rewired only: kept",
                |p| {
                    p.operators[1].config.inputs = vec![crate::config::InputRef {
                        stage: "validate".into(),
                        port: None,
                        location: None,
                        key: "operators.stock.inputs".into(),
                    }];
                },
                unchanged(),
            ),
            (
                "a port now read by a text sink, or keyed for a new reader: swapped, state kept",
                |p| {
                    p.operators[1].ports[0].encoding = Encoding::Bincode;
                    p.operators[0].ports[0].key_fields = vec!["sku".into()];
                },
                ReloadPlan {
                    operators: vec![
                        OperatorStep::Swap {
                            old: 0,
                            state: StateStep::Keep,
                        },
                        OperatorStep::Swap {
                            old: 1,
                            state: StateStep::Keep,
                        },
                    ],
                    ..unchanged()
                },
            ),
            (
                "a new module, same state type: swapped, state kept",
                |p| {
                    p.operators[1].module_hash = "h3".into();
                },
                ReloadPlan {
                    operators: vec![
                        OperatorStep::Keep { old: 0 },
                        OperatorStep::Swap {
                            old: 1,
                            state: StateStep::Keep,
                        },
                    ],
                    ..unchanged()
                },
            ),
            (
                "more partitions: swapped, state spread",
                |p| {
                    p.operators[1].partitions = 4;
                },
                ReloadPlan {
                    operators: vec![
                        OperatorStep::Keep { old: 0 },
                        OperatorStep::Swap {
                            old: 1,
                            state: StateStep::Keep,
                        },
                    ],
                    ..unchanged()
                },
            ),
            (
                "another state type: refused",
                |p| {
                    p.operators[1].module_hash = "h3".into();
                    p.operators[1].describe.state_type = Some("StockV2".into());
                },
                ReloadPlan {
                    operators: vec![
                        OperatorStep::Keep { old: 0 },
                        OperatorStep::Swap {
                            old: 1,
                            state: StateStep::Keep,
                        },
                    ],
                    conflicts: vec![Conflict {
                        stage: "stock".into(),
                        why: "the new module keeps `StockV2` where the running one keeps `Stock`"
                            .into(),
                    }],
                    ..unchanged()
                },
            ),
            (
                "another state type, reset asked: swapped, state reset",
                |p| {
                    p.operators[1].module_hash = "h3".into();
                    p.operators[1].describe.state_type = Some("StockV2".into());
                    p.operators[1].config.on_state_change = OnStateChange::Reset;
                },
                ReloadPlan {
                    operators: vec![
                        OperatorStep::Keep { old: 0 },
                        OperatorStep::Swap {
                            old: 1,
                            state: StateStep::Reset,
                        },
                    ],
                    ..unchanged()
                },
            ),
            (
                "an operator removed and one added",
                |p| {
                    p.operators.remove(0);
                    p.operators.push(operator("score", "h4", None));
                },
                ReloadPlan {
                    operators: vec![OperatorStep::Keep { old: 1 }, OperatorStep::Add],
                    removed_operators: vec![0],
                    ..unchanged()
                },
            ),
        ];
        for (case, edit, expected) in cases {
            let old = running();
            let mut new = running();
            edit(&mut new);
            let steps = diff(&old, &new);
            assert_eq!(steps, expected, "{case}");
            for i in 0..new.operators.len() {
                let keep = matches!(steps.operators[i], OperatorStep::Keep { .. });
                assert_eq!(steps.needs_instances(i), !keep, "{case}");
            }
        }
    }

    #[test]
    fn the_state_rule_reads_lateness_only_where_there_are_windows() {
        let layout =
            |state: Option<&str>, key: &str, window: Option<WindowSpec>, late: i64| StateLayout {
                state_type: state.map(str::to_string),
                key_by: Some(key.into()),
                window: window.map(StateLayout::window),
                allowed_lateness_ms: late,
            };
        let keyed = layout(Some("S"), "sku", None, 0);
        let later = layout(Some("S"), "sku", None, 500);
        assert_eq!(state_conflict(&keyed, &later), None);
        let tumbling = Some(WindowSpec::Tumbling { size_ms: 10 });
        let windowed = layout(Some("A"), "sku", tumbling, 0);
        let windowed_later = layout(Some("A"), "sku", tumbling, 500);
        assert!(
            state_conflict(&windowed, &windowed_later)
                .is_some_and(|why| why.contains("allowed_lateness_ms"))
        );
        let wider = layout(
            Some("A"),
            "sku",
            Some(WindowSpec::Tumbling { size_ms: 20 }),
            0,
        );
        assert!(state_conflict(&windowed, &wider).is_some());
        let rekeyed = layout(Some("S"), "user", None, 0);
        assert!(state_conflict(&keyed, &rekeyed).is_some());
        assert_eq!(
            state_conflict(
                &layout(None, "sku", None, 0),
                &layout(None, "user", None, 0)
            ),
            None,
            "stateless"
        );
        let other_type = layout(Some("T"), "sku", None, 0);
        assert!(state_conflict(&keyed, &other_type).is_some_and(|why| why.contains("keeps `T`")));
    }
}
