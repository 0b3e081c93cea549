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
/// `records_in` = `produced + filtered + windowed + late + dead_letters` (see
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
    /// Time spent in this stage (operators: processing and firing).
    pub busy: std::time::Duration,
}

impl StageStats {
    /// Records that came in and went nowhere that is counted (zero when all is well): what a
    /// test asserts after every run.
    pub fn unaccounted(&self) -> i128 {
        let accounted = match self.kind {
            StageKind::Operator => {
                self.produced + self.filtered + self.windowed + self.late + self.dead_letters
            }
            StageKind::Source => self.outputs.first().map_or(0, |(_, n)| *n) + self.dead_letters,
            StageKind::Sink => self.records_in,
        };
        i128::from(self.records_in) - i128::from(accounted)
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
            busy: std::time::Duration::ZERO,
        }
    }
}

/// The counts of every stage at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Every stage: sources, operators, sinks.
    pub stages: Vec<StageStats>,
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
                        "busy_s": s.busy.as_secs_f64(),
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
        Ok(())
    }
}
