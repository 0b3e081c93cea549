//! What the running pipeline shows of itself: its graph, each stage's counters, times, watermark,
//! state and guest health, the reload history and the checkpoints. The executor writes it between
//! rounds; the admin endpoint serves it as JSON (`GET /status`), as Prometheus metrics
//! (`GET /metrics`, see [`super::metrics`]) and as the web view's data.

use super::stats::{CheckpointStats, StageStats};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many reloads the history keeps.
pub const RELOAD_HISTORY: usize = 32;

/// What `GET /status` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The pipeline file.
    pub pipeline: String,
    /// When the run started (milliseconds since the Unix epoch).
    pub started_at_ms: u128,
    /// Whether the run has ended (its sources finished or it was stopped); the endpoint may stay
    /// up after (`--keep-serving`).
    pub finished: bool,
    /// The pipeline's graph as it runs now.
    pub graph: Graph,
    /// Every stage: sources, operators, sinks.
    pub stages: Vec<StageStatus>,
    /// The last reload, if any happened.
    pub last_reload: Option<ReloadOutcome>,
    /// Every reload so far, counted, and the latest ones.
    pub reloads: Reloads,
    /// Checkpoints, if the pipeline takes them.
    pub checkpoints: Option<CheckpointStats>,
}

/// The pipeline as a graph: sources, operators and sinks, and what feeds what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Graph {
    /// Every node, sources first, then operators in topological order, then sinks.
    pub nodes: Vec<GraphNode>,
    /// Every connection.
    pub edges: Vec<GraphEdge>,
    /// The sink dead letters go to, if any (every stage feeds it).
    pub dead_letter: Option<String>,
}

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphNode {
    /// Its name.
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub kind: &'static str,
    /// What it is: a source's or sink's type (`file`, `kafka`, …), an operator's module file
    /// name.
    pub detail: String,
}

/// `from`'s `port` feeds `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GraphEdge {
    /// The producing node.
    pub from: String,
    /// Its port: `main`, or a side output's name.
    pub port: String,
    /// The consuming node.
    pub to: String,
}

/// One stage in the status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageStatus {
    /// The stage's name.
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub kind: &'static str,
    /// The hash of the module an operator runs.
    pub module_hash: Option<String>,
    /// Records read, received or written.
    pub records_in: u64,
    /// Records out, per port.
    pub outputs: std::collections::BTreeMap<String, u64>,
    /// Records sent to the dead letters here.
    pub dead_letters: u64,
    /// Operators: inputs that led to no record.
    pub filtered: u64,
    /// Window operators: inputs added to windows.
    pub windowed: u64,
    /// Window operators: inputs too late for every window.
    pub late: u64,
    /// Window operators: fired windows whose result could not be made (dead letters that are
    /// not input records).
    pub failed_windows: u64,
    /// Seconds spent working (a source reading, an operator processing and firing, a sink
    /// writing).
    pub busy_seconds: f64,
    /// Seconds the batches it produced waited for downstream stages to take them.
    pub backpressured_seconds: f64,
    /// The stage's watermark, once it has one.
    pub watermark: Option<i64>,
    /// The newest event time read by the sources feeding it (sources: read by it).
    pub newest_event_time: Option<i64>,
    /// Records each partition received (operators; since the partition count last changed).
    pub partition_records: Vec<u64>,
    /// Keys with state, windows and sessions held, per partition.
    pub state_keys: Vec<u64>,
    /// Bytes of state held, per partition.
    pub state_bytes: Vec<u64>,
    /// Failed guest calls (traps, time-outs), time-outs and instances rebuilt after a failure.
    pub guest: GuestHealth,
    /// Sources: how far behind the end of their input they are.
    pub lag: Option<Lag>,
}

/// How far a source is behind the end of its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lag {
    /// How much is left to read.
    pub behind: u64,
    /// In what: `bytes` (a file), `offsets` (Kafka) or `records` (a generator).
    pub unit: &'static str,
}

/// What an operator's guests went through: counted over every instance the stage ever ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuestHealth {
    /// Calls that failed: traps (panics, out of memory, bad memory access) and time-outs.
    pub failures: u64,
    /// Of those, the calls that ran out of time (`timeout_ms`).
    pub timeouts: u64,
    /// Instances rebuilt from their module after a failed call.
    pub rebuilds: u64,
}

impl std::ops::Add for GuestHealth {
    type Output = GuestHealth;
    fn add(self, other: GuestHealth) -> GuestHealth {
        GuestHealth {
            failures: self.failures + other.failures,
            timeouts: self.timeouts + other.timeouts,
            rebuilds: self.rebuilds + other.rebuilds,
        }
    }
}

impl StageStatus {
    /// The status of a stage with counters `stats` at `watermark` (`i64::MIN` before the first).
    pub fn of(stats: &StageStats, watermark: i64) -> Self {
        StageStatus {
            name: stats.name.clone(),
            kind: stats.kind.as_str(),
            records_in: stats.records_in,
            outputs: stats.outputs.iter().cloned().collect(),
            dead_letters: stats.dead_letters,
            filtered: stats.filtered,
            windowed: stats.windowed,
            late: stats.late,
            failed_windows: stats.failed_windows,
            busy_seconds: stats.busy.as_secs_f64(),
            backpressured_seconds: stats.backpressured.as_secs_f64(),
            watermark: known(watermark),
            ..StageStatus::default()
        }
    }
}

/// `None` for the "no time yet" and "end of time" marks.
pub fn known(time: i64) -> Option<i64> {
    (time != i64::MIN && time != i64::MAX).then_some(time)
}

/// The outcome of one reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// Milliseconds since the Unix epoch.
    pub at: u128,
    /// Whether it was swapped in.
    pub ok: bool,
    /// What changed, or why nothing did.
    pub lines: Vec<String>,
    /// How long swapping it in held the pipeline still, in milliseconds (swapped in only).
    pub pause_ms: Option<f64>,
}

impl ReloadOutcome {
    /// An outcome stamped now.
    pub fn now(ok: bool, lines: Vec<String>, pause: Option<std::time::Duration>) -> Self {
        ReloadOutcome {
            at: now_ms(),
            ok,
            lines,
            pause_ms: pause.map(|p| p.as_secs_f64() * 1e3),
        }
    }
}

/// Reloads so far: counted, and the latest [`RELOAD_HISTORY`] kept, newest last.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reloads {
    /// Reloads swapped in.
    pub ok: u64,
    /// Reloads refused (the running version kept).
    pub failed: u64,
    /// The pause of the last reload swapped in, in milliseconds.
    pub last_pause_ms: Option<f64>,
    /// The latest outcomes, oldest first.
    pub history: VecDeque<ReloadOutcome>,
}

impl Reloads {
    /// Counts `outcome` and keeps it.
    pub fn record(&mut self, outcome: ReloadOutcome) {
        match outcome.ok {
            true => {
                self.ok += 1;
                self.last_pause_ms = outcome.pause_ms.or(self.last_pause_ms);
            }
            false => self.failed += 1,
        }
        if self.history.len() == RELOAD_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(outcome);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Shared between the executor (which fills it) and the endpoint (which reads it).
pub type SharedStatus = Arc<Mutex<Status>>;
