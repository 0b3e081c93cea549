//! Per-stage counters and the summary printed at the end of a run.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    Source,
    Operator,
    Sink,
}

/// What one stage saw and produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStats {
    pub name: String,
    pub kind: StageKind,
    /// Records read (a source), received (an operator) or written (a sink).
    pub records_in: u64,
    /// Records out of each port, main first.
    pub outputs: Vec<(String, u64)>,
    /// Records that went to the dead letters here.
    pub dead_letters: u64,
}

impl StageStats {
    pub fn new(name: &str, kind: StageKind, ports: &[&str]) -> Self {
        StageStats {
            name: name.to_string(),
            kind,
            records_in: 0,
            outputs: ports.iter().map(|p| (p.to_string(), 0)).collect(),
            dead_letters: 0,
        }
    }
}

/// The counts of every stage at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub stages: Vec<StageStats>,
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
            if stage.kind == StageKind::Operator {
                out.push(format!("dead_letter={}", stage.dead_letters));
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
