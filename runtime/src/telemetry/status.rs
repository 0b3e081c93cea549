//! What the running pipeline shows of itself: each stage's counters and watermark and the last
//! reload's outcome. The executor writes it; the admin endpoint serves it.

use super::stats::StageStats;
use serde::Serialize;
use std::sync::{Arc, Mutex};

/// What `GET /status` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The pipeline file.
    pub pipeline: String,
    /// Every stage: sources, operators, sinks.
    pub stages: Vec<StageStatus>,
    /// The last reload, if any happened.
    pub last_reload: Option<ReloadOutcome>,
    /// Checkpoints, if the pipeline takes them.
    pub checkpoints: Option<super::stats::CheckpointStats>,
}

/// One stage in the status.
#[derive(Debug, Clone, Serialize)]
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
    /// The stage's watermark, once it has one.
    pub watermark: Option<i64>,
}

impl StageStatus {
    /// The status of a stage with counters `stats`, running module `module_hash` (operators),
    /// at `watermark` (none before the first).
    pub fn of(stats: &StageStats, module_hash: Option<String>, watermark: i64) -> Self {
        StageStatus {
            name: stats.name.clone(),
            kind: stats.kind.as_str(),
            module_hash,
            records_in: stats.records_in,
            outputs: stats.outputs.iter().cloned().collect(),
            dead_letters: stats.dead_letters,
            watermark: (watermark != i64::MIN).then_some(watermark),
        }
    }
}

/// The result of the last reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// Milliseconds since the Unix epoch.
    pub at: u128,
    /// Whether it was swapped in.
    pub ok: bool,
    /// What changed, or why nothing did.
    pub lines: Vec<String>,
}

impl ReloadOutcome {
    /// An outcome stamped now.
    pub fn now(ok: bool, lines: Vec<String>) -> Self {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        ReloadOutcome { at, ok, lines }
    }
}

/// Shared between the executor (which fills it) and the endpoint (which reads it).
pub type SharedStatus = Arc<Mutex<Status>>;
