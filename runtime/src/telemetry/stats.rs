//! Per-stage counters and the summary printed at the end of a run.

use std::fmt;

/// What a stage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Where records enter.
    Source,
    /// A module run on records.
    Operator,
    /// Where records leave.
    Sink,
}

impl StageKind {
    /// `source`, `operator` or `sink`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Source => "source",
            StageKind::Operator => "operator",
            StageKind::Sink => "sink",
        }
    }
}

/// What one stage saw and produced. Every record is accounted for: an operator's
/// `records_in` = `produced + filtered + windowed + late + dead_letters - failed_windows` (see
/// [`StageStats::unaccounted`]); a source's `records_in` = main output + `dead_letters`; a sink's
/// `records_in` = lines written + `dead_letters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStats {
    /// The stage's name.
    pub name: String,
    /// What it is.
    pub kind: StageKind,
    /// Records read (a source), received (an operator) or written (a sink).
    pub records_in: u64,
    /// Records out of each port, main first.
    pub outputs: Vec<(String, u64)>,
    /// Records that went to the dead letters here.
    pub dead_letters: u64,
    /// Operators: input records that led to at least one output record.
    pub produced: u64,
    /// Operators: input records that led to no record (filtered out, or only changed state).
    pub filtered: u64,
    /// Window operators: input records added to windows.
    pub windowed: u64,
    /// Window operators: input records too late for every window (sent to `late`).
    pub late: u64,
    /// Window operators: fired windows whose result could not be made (each a dead letter, which
    /// is not an input record: its records were counted `windowed`).
    pub failed_windows: u64,
    /// Time spent in this stage (a source reading, an operator processing and firing, a sink
    /// writing).
    pub busy: std::time::Duration,
    /// Time the batches this stage produced waited in downstream stages' queues.
    pub backpressured: std::time::Duration,
}

impl StageStats {
    /// Records that came in and went nowhere that is counted (zero when all is well): what a
    /// test asserts after every run.
    pub fn unaccounted(&self) -> i128 {
        let accounted = match self.kind {
            StageKind::Operator => {
                i128::from(self.produced + self.filtered + self.windowed + self.late)
                    + i128::from(self.dead_letters)
                    - i128::from(self.failed_windows)
            }
            StageKind::Source => {
                i128::from(self.outputs.first().map_or(0, |(_, n)| *n) + self.dead_letters)
            }
            StageKind::Sink => i128::from(self.records_in),
        };
        i128::from(self.records_in) - accounted
    }

    /// Zero counts for stage `name` with output `ports` (main first).
    pub fn new(name: &str, kind: StageKind, ports: &[&str]) -> Self {
        StageStats {
            name: name.to_string(),
            kind,
            records_in: 0,
            outputs: ports.iter().map(|p| (p.to_string(), 0)).collect(),
            dead_letters: 0,
            produced: 0,
            filtered: 0,
            windowed: 0,
            late: 0,
            failed_windows: 0,
            busy: std::time::Duration::ZERO,
            backpressured: std::time::Duration::ZERO,
        }
    }
}

/// The counts of every stage at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every stage: sources, operators, sinks.
    pub stages: Vec<StageStats>,
    /// The run's checkpoints, if it takes them.
    pub checkpoints: Option<CheckpointStats>,
}

/// What a run's checkpoints did: how many were written or failed, the last one, and how long
/// each held the pipeline still (taking the snapshot; writing it happens alongside).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointStats {
    /// The checkpoint folder.
    pub dir: String,
    /// The checkpoint the run resumed from, if any.
    pub resumed_from: Option<u64>,
    /// Checkpoints written.
    pub written: u64,
    /// Checkpoints that could not be written.
    pub failed: u64,
    /// The id of the last one written.
    pub last_id: Option<u64>,
    /// Its size in bytes.
    pub last_bytes: u64,
    /// When it was taken (milliseconds since the Unix epoch).
    pub last_at_ms: Option<i64>,
    /// Why the last failed one failed, while no later one was written.
    pub last_error: Option<String>,
    /// How long taking each snapshot held the pipeline still.
    #[serde(skip)]
    pub pauses: Vec<std::time::Duration>,
    /// How long writing each one took, alongside the run (sinks synced, encoded, written,
    /// synced, renamed).
    #[serde(skip)]
    pub writes: Vec<std::time::Duration>,
}

impl CheckpointStats {
    /// The counts with only the last pause and write time (all of them grow with the run): what
    /// the status shows.
    pub fn without_times(&self) -> Self {
        let last = |times: &[std::time::Duration]| times.last().copied().into_iter().collect();
        CheckpointStats {
            dir: self.dir.clone(),
            last_error: self.last_error.clone(),
            pauses: last(&self.pauses),
            writes: last(&self.writes),
            ..*self
        }
    }

    /// The counts as JSON, with the pauses' and writes' percentiles in milliseconds.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        for (name, times) in [("pause_ms", &self.pauses), ("write_ms", &self.writes)] {
            value[name] = serde_json::json!({
                "p50": percentile_ms(times, 0.50),
                "p99": percentile_ms(times, 0.99),
                "max": percentile_ms(times, 1.0),
            });
        }
        value
    }
}

/// The `q` quantile of `times` in milliseconds (nearest rank), 0 if there are none.
fn percentile_ms(times: &[std::time::Duration], q: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort();
    let Some(last) = sorted.len().checked_sub(1) else {
        return 0.0;
    };
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[rank.min(last)].as_secs_f64() * 1e3
}

impl Summary {
    /// The summary as JSON, with the run's duration, its throughput (records read by the
    /// sources per second), each stage's busy time and the process's peak resident memory.
    pub fn to_json(&self, elapsed: std::time::Duration) -> serde_json::Value {
        let read: u64 = self
            .stages
            .iter()
            .filter(|s| s.kind == StageKind::Source)
            .map(|s| s.records_in)
            .sum();
        let stages: serde_json::Map<String, serde_json::Value> = self
            .stages
            .iter()
            .map(|s| {
                let outputs: serde_json::Map<String, serde_json::Value> = s
                    .outputs
                    .iter()
                    .map(|(p, n)| (p.clone(), (*n).into()))
                    .collect();
                (
                    s.name.clone(),
                    serde_json::json!({
                        "kind": match s.kind {
                            StageKind::Source => "source",
                            StageKind::Operator => "operator",
                            StageKind::Sink => "sink",
                        },
                        "records_in": s.records_in,
                        "outputs": outputs,
                        "dead_letters": s.dead_letters,
                        "produced": s.produced,
                        "filtered": s.filtered,
                        "windowed": s.windowed,
                        "late": s.late,
                        "failed_windows": s.failed_windows,
                        "busy_s": s.busy.as_secs_f64(),
                        "backpressured_s": s.backpressured.as_secs_f64(),
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "records": read,
            "seconds": elapsed.as_secs_f64(),
            "records_per_s": read as f64 / elapsed.as_secs_f64().max(1e-9),
            "peak_rss_bytes": peak_rss_bytes(),
            "stages": stages,
            "checkpoints": self.checkpoints.as_ref().map(CheckpointStats::to_json),
        })
    }
}

/// The process's peak resident set size (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(f, "{:<width$}  {:<8}  {:>10}  out", "stage", "kind", "in")?;
        for stage in &self.stages {
            let kind = match stage.kind {
                StageKind::Source => "source",
                StageKind::Operator => "operator",
                StageKind::Sink => "sink",
            };
            let mut out: Vec<String> = stage
                .outputs
                .iter()
                .map(|(port, n)| format!("{port}={n}"))
                .collect();
            match stage.kind {
                StageKind::Operator => {
                    out.push(format!("dead_letter={}", stage.dead_letters));
                    if stage.filtered > 0 {
                        out.push(format!("(filtered {})", stage.filtered));
                    }
                }
                _ if stage.dead_letters > 0 => {
                    out.push(format!("dead_letter={}", stage.dead_letters))
                }
                _ => {}
            }
            writeln!(
                f,
                "{:<width$}  {kind:<8}  {:>10}  {}",
                stage.name,
                stage.records_in,
                out.join(" ")
            )?;
        }
        if let Some(c) = &self.checkpoints {
            write!(f, "checkpoints: {} written to {}", c.written, c.dir)?;
            if let Some(id) = c.last_id {
                write!(f, " (last: {id}, {} bytes)", c.last_bytes)?;
            }
            if c.failed > 0 {
                write!(f, ", {} failed", c.failed)?;
            }
            writeln!(
                f,
                "; pause p50 {:.1} ms, p99 {:.1} ms",
                percentile_ms(&c.pauses, 0.5),
                percentile_ms(&c.pauses, 0.99)
            )?;
        }
        Ok(())
    }
}
