//! `GET /metrics`: the [`Status`] in the Prometheus text format, encoded by `prometheus-client`
//! at each scrape from the snapshot the executor publishes (nothing is counted twice: every
//! counter here is one the end-of-run summary prints).
//!
//! Every metric is defined once, in [`METRICS`]: its name, help, type and where its value comes
//! from. Names follow Prometheus' conventions (`flumen_` prefix, base units, counters end in
//! `_total`, added by the encoder).

use super::status::{Lag, StageStatus, Status, known};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// One metric: its name (without `flumen_` and, for counters, `_total`), help, and samples.
pub struct Metric {
    /// The name after `flumen_`.
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Counter (only goes up while the process lives) or gauge.
    pub kind: MetricType,
    /// Its samples: label pairs and value.
    pub samples: fn(&Status, &mut Vec<Sample>),
}

/// One sample: its labels and value.
pub struct Sample {
    /// Label pairs.
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: Value,
}

/// A sample's value: a count, or a measure (seconds, a time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A whole number.
    Count(u64),
    /// A real number.
    Real(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Count(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Real(x)
    }
}

fn stage_sample(stage: &StageStatus, value: impl Into<Value>) -> Sample {
    Sample {
        labels: vec![("stage", stage.name.clone()), ("kind", stage.kind.into())],
        value: value.into(),
    }
}

/// Per stage that `filter` takes, its `value`.
fn per_stage(
    status: &Status,
    out: &mut Vec<Sample>,
    filter: fn(&StageStatus) -> bool,
    value: fn(&StageStatus) -> Value,
) {
    for stage in status.stages.iter().filter(|s| filter(s)) {
        out.push(stage_sample(stage, value(stage)));
    }
}

fn any(_: &StageStatus) -> bool {
    true
}

fn operators(stage: &StageStatus) -> bool {
    stage.kind == "operator"
}

/// Per stage and partition, one value each.
fn per_partition(status: &Status, out: &mut Vec<Sample>, of: fn(&StageStatus) -> &[u64]) {
    for stage in status.stages.iter().filter(|s| operators(s)) {
        for (p, value) in of(stage).iter().enumerate() {
            out.push(Sample {
                labels: vec![("stage", stage.name.clone()), ("partition", p.to_string())],
                value: (*value).into(),
            });
        }
    }
}

fn lag_in(status: &Status, out: &mut Vec<Sample>, unit: &str) {
    for stage in &status.stages {
        if let Some(Lag { behind, unit: u }) = stage.lag
            && u == unit
        {
            out.push(Sample {
                labels: vec![("source", stage.name.clone())],
                value: behind.into(),
            });
        }
    }
}

/// The newest event time any source has read.
fn newest_event_time(status: &Status) -> Option<i64> {
    status
        .stages
        .iter()
        .filter_map(|s| s.newest_event_time)
        .max()
}

fn single(out: &mut Vec<Sample>, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        out.push(Sample {
            labels: Vec::new(),
            value: value.into(),
        });
    }
}

/// Every metric `GET /metrics` serves.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "info",
        help: "The pipeline this process runs (value 1)",
        kind: MetricType::Gauge,
        samples: |status, out| {
            out.push(Sample {
                labels: vec![("pipeline", status.pipeline.clone())],
                value: 1.into(),
            })
        },
    },
    Metric {
        name: "start_time_seconds",
        help: "When the run started, in seconds since the Unix epoch",
        kind: MetricType::Gauge,
        samples: |status, out| single(out, Some(status.started_at_ms as f64 / 1e3)),
    },
    Metric {
        name: "stage_records_in",
        help: "Records read (source), received (operator) or written (sink)",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, any, |s| s.records_in.into()),
    },
    Metric {
        name: "stage_records_out",
        help: "Records out of each port of a source or operator",
        kind: MetricType::Counter,
        samples: |status, out| {
            for stage in status.stages.iter().filter(|s| s.kind != "sink") {
                for (port, n) in &stage.outputs {
                    out.push(Sample {
                        labels: vec![("stage", stage.name.clone()), ("port", port.clone())],
                        value: (*n).into(),
                    });
                }
            }
        },
    },
    Metric {
        name: "stage_dead_letters",
        help: "Records sent to the dead letters by the stage",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, any, |s| s.dead_letters.into()),
    },
    Metric {
        name: "stage_filtered",
        help: "Operator inputs that led to no output record",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.filtered.into()),
    },
    Metric {
        name: "stage_windowed",
        help: "Window operator inputs added to windows",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.windowed.into()),
    },
    Metric {
        name: "stage_late_records",
        help: "Window operator inputs too late for every window (sent to the `late` port)",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.late.into()),
    },
    Metric {
        name: "stage_failed_windows",
        help: "Fired windows whose result could not be made (dead letters that are not inputs)",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.failed_windows.into()),
    },
    Metric {
        name: "stage_busy_seconds",
        help: "Time the stage spent working: reading, processing and firing, or writing",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, any, |s| s.busy_seconds.into()),
    },
    Metric {
        name: "stage_backpressured_seconds",
        help: "Time the stage's output batches waited for downstream stages to take them",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, any, |s| s.backpressured_seconds.into()),
    },
    Metric {
        name: "stage_watermark_seconds",
        help: "The stage's event-time watermark, in seconds since the Unix epoch",
        kind: MetricType::Gauge,
        samples: |status, out| {
            for stage in status.stages.iter().filter(|s| s.kind != "sink") {
                if let Some(w) = stage.watermark {
                    out.push(stage_sample(stage, w as f64 / 1e3));
                }
            }
        },
    },
    Metric {
        name: "stage_watermark_lag_seconds",
        help: "How far the stage's watermark trails the newest event time read",
        kind: MetricType::Gauge,
        samples: |status, out| {
            let Some(newest) = newest_event_time(status) else {
                return;
            };
            for stage in status.stages.iter().filter(|s| s.kind != "sink") {
                if let Some(w) = stage.watermark.and_then(known) {
                    let lag = newest.saturating_sub(w).max(0);
                    out.push(stage_sample(stage, lag as f64 / 1e3));
                }
            }
        },
    },
    Metric {
        name: "stage_partition_records_in",
        help: "Records an operator partition received (key skew); restarts when a reload changes the partition count",
        kind: MetricType::Counter,
        samples: |status, out| per_partition(status, out, |s| &s.partition_records),
    },
    Metric {
        name: "stage_state_keys",
        help: "Keys with state, open windows and sessions an operator partition holds",
        kind: MetricType::Gauge,
        samples: |status, out| per_partition(status, out, |s| &s.state_keys),
    },
    Metric {
        name: "stage_state_bytes",
        help: "Bytes of keyed state, window accumulators and sessions an operator partition holds",
        kind: MetricType::Gauge,
        samples: |status, out| per_partition(status, out, |s| &s.state_bytes),
    },
    Metric {
        name: "stage_guest_failures",
        help: "Guest calls that failed: traps (panics, out of memory, bad accesses) and time-outs",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.guest.failures.into()),
    },
    Metric {
        name: "stage_guest_timeouts",
        help: "Guest calls stopped at their deadline (timeout_ms)",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.guest.timeouts.into()),
    },
    Metric {
        name: "stage_instance_rebuilds",
        help: "Guest instances rebuilt from their module after a failed call",
        kind: MetricType::Counter,
        samples: |status, out| per_stage(status, out, operators, |s| s.guest.rebuilds.into()),
    },
    Metric {
        name: "source_lag_bytes",
        help: "Bytes of a file source's input not read yet",
        kind: MetricType::Gauge,
        samples: |status, out| lag_in(status, out, "bytes"),
    },
    Metric {
        name: "source_lag_offsets",
        help: "Records of a Kafka source's partitions not read yet (high watermark - position)",
        kind: MetricType::Gauge,
        samples: |status, out| lag_in(status, out, "offsets"),
    },
    Metric {
        name: "source_lag_records",
        help: "Records a generator source has still to make",
        kind: MetricType::Gauge,
        samples: |status, out| lag_in(status, out, "records"),
    },
    Metric {
        name: "reloads",
        help: "Reloads, by outcome: ok (swapped in) or failed (the running version kept)",
        kind: MetricType::Counter,
        samples: |status, out| {
            for (outcome, n) in [("ok", status.reloads.ok), ("failed", status.reloads.failed)] {
                out.push(Sample {
                    labels: vec![("outcome", outcome.into())],
                    value: n.into(),
                });
            }
        },
    },
    Metric {
        name: "reload_last_pause_seconds",
        help: "How long the last reload swapped in held the pipeline still",
        kind: MetricType::Gauge,
        samples: |status, out| single(out, status.reloads.last_pause_ms.map(|ms| ms / 1e3)),
    },
    Metric {
        name: "checkpoints",
        help: "Checkpoints, by outcome: written or failed",
        kind: MetricType::Counter,
        samples: |status, out| {
            if let Some(c) = &status.checkpoints {
                for (outcome, n) in [("written", c.written), ("failed", c.failed)] {
                    out.push(Sample {
                        labels: vec![("outcome", outcome.into())],
                        value: n.into(),
                    });
                }
            }
        },
    },
    Metric {
        name: "checkpoint_last_bytes",
        help: "Size of the last checkpoint written",
        kind: MetricType::Gauge,
        samples: |status, out| {
            let c = status.checkpoints.as_ref();
            single(out, c.filter(|c| c.written > 0).map(|c| c.last_bytes))
        },
    },
    Metric {
        name: "checkpoint_last_pause_seconds",
        help: "How long taking the last checkpoint's snapshot held the pipeline still",
        kind: MetricType::Gauge,
        samples: |status, out| {
            let c = status.checkpoints.as_ref();
            single(
                out,
                c.and_then(|c| c.pauses.last()).map(|d| d.as_secs_f64()),
            )
        },
    },
    Metric {
        name: "checkpoint_last_write_seconds",
        help: "How long writing the last checkpoint took (alongside the run)",
        kind: MetricType::Gauge,
        samples: |status, out| {
            let c = status.checkpoints.as_ref();
            single(
                out,
                c.and_then(|c| c.writes.last()).map(|d| d.as_secs_f64()),
            )
        },
    },
    Metric {
        name: "checkpoint_last_time_seconds",
        help: "When the last checkpoint was taken, in seconds since the Unix epoch",
        kind: MetricType::Gauge,
        samples: |status, out| {
            let c = status.checkpoints.as_ref();
            single(out, c.and_then(|c| c.last_at_ms).map(|ms| ms as f64 / 1e3))
        },
    },
];

/// A `prometheus-client` collector over a snapshot of the status.
#[derive(Debug)]
struct Snapshot(Status);

impl prometheus_client::collector::Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut samples = Vec::new();
        for metric in METRICS {
            samples.clear();
            (metric.samples)(&self.0, &mut samples);
            let mut family =
                encoder.encode_descriptor(metric.name, metric.help, None, metric.kind)?;
            for sample in &samples {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                let encoder = family.encode_family(&labels)?;
                match (metric.kind, sample.value) {
                    (MetricType::Counter, Value::Count(n)) => {
                        ConstCounter::new(n).encode(encoder)?
                    }
                    (MetricType::Counter, Value::Real(x)) => {
                        ConstCounter::new(x).encode(encoder)?
                    }
                    (_, Value::Count(n)) => ConstGauge::new(n).encode(encoder)?,
                    (_, Value::Real(x)) => ConstGauge::new(x).encode(encoder)?,
                }
            }
        }
        Ok(())
    }
}

/// The status in the Prometheus text format (version 0.0.4).
pub fn render(status: &Status) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("flumen");
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{StageKind, StageStats};

    #[test]
    fn every_metric_is_defined_once_and_rendered() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric name is defined twice");
        let mut stats = StageStats::new("score", StageKind::Operator, &["main", "late"]);
        stats.records_in = 7;
        stats.outputs[1].1 = 2;
        let mut stage = StageStatus::of(&stats, 60_000);
        stage.state_keys = vec![3, 4];
        stage.partition_records = vec![5, 2];
        let status = Status {
            stages: vec![stage],
            ..Status::default()
        };
        let text = render(&status);
        for metric in METRICS {
            assert!(
                text.contains(&format!("# HELP flumen_{}", metric.name)),
                "{}",
                metric.name
            );
        }
        assert!(
            text.contains("flumen_stage_records_in_total{stage=\"score\",kind=\"operator\"} 7\n")
        );
        assert!(text.contains("flumen_stage_records_out_total{stage=\"score\",port=\"late\"} 2\n"));
        assert!(text.contains("flumen_stage_state_keys{stage=\"score\",partition=\"1\"} 4\n"));
        assert!(text.contains(
            "flumen_stage_partition_records_in_total{stage=\"score\",partition=\"0\"} 5\n"
        ));
        assert!(
            text.contains(
                "flumen_stage_watermark_seconds{stage=\"score\",kind=\"operator\"} 60.0\n"
            )
        );
    }
}
