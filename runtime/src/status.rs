//! What the running pipeline shows of itself: each stage's counters and watermark and the last
//! reload's outcome. The executor and the reloader write it; the admin endpoint serves it.

use serde::Serialize;
use std::sync::{Arc, Mutex};

/// What `GET /status` answers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub pipeline: String,
    pub stages: Vec<StageStatus>,
    pub last_reload: Option<ReloadOutcome>,
}

/// One stage in the status.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub name: String,
    pub kind: &'static str,
    pub module_hash: Option<String>,
    pub records_in: u64,
    pub outputs: std::collections::BTreeMap<String, u64>,
    pub dead_letters: u64,
    pub watermark: Option<i64>,
}

/// The result of the last reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadOutcome {
    /// Milliseconds since the Unix epoch.
    pub at: u128,
    pub ok: bool,
    /// What changed, or why nothing did.
    pub lines: Vec<String>,
}

impl ReloadOutcome {
    pub fn now(ok: bool, lines: Vec<String>) -> Self {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        ReloadOutcome { at, ok, lines }
    }
}

/// Shared between the executor (which fills it), the reloader and the endpoint.
pub type SharedStatus = Arc<Mutex<Status>>;
