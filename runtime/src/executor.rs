//! Runs a [`Plan`]: sources fill batches, operators (in topological order) process every batch
//! queued for them, outputs are split by port and queued for their consumers, sinks write.
//! One round per source batch, so a batch crosses the whole graph before the next is read.
//!
//! Failure never stops the run: a record an operator fails on, or cannot decode, becomes a dead
//! letter; a batch whose call traps (panic, memory limit, deadline) or returns garbage is retried
//! record by record on a fresh instance, so only the poison record is lost to the dead letters.

use crate::Prepared;
use crate::plan::{NodeRef, Plan};
use crate::sandbox::{GuestFailure, OperatorInstance};
use crate::sink::{self, FLUSH_INTERVAL, Sink};
use crate::source::{self, Pull, Source};
use crate::stats::{StageKind, StageStats, Summary};
use flumen_sdk::abi::{BatchReader, BatchWriter, Encoding, OutputEntry, OutputReader};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long to wait before polling sources again when none has anything.
const IDLE_WAIT: Duration = Duration::from_millis(20);

type Batch = Rc<Vec<u8>>;

struct OperatorRuntime {
    instance: OperatorInstance,
    queue: VecDeque<Batch>,
    outputs: Vec<BatchWriter>,
}

/// Dead letters waiting to be written: JSON objects `{"stage", "error", "raw"}`.
#[derive(Default)]
struct DeadLetters {
    lines: Vec<Vec<u8>>,
}

/// A record a stage failed on, as the dead-letter sink writes it.
#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    stage: &'a str,
    error: &'a str,
    raw: std::borrow::Cow<'a, str>,
}

impl DeadLetters {
    fn push(&mut self, stage: &str, error: &str, raw: &[u8]) {
        let letter = DeadLetter {
            stage,
            error,
            raw: String::from_utf8_lossy(raw),
        };
        // Serializing plain strings cannot fail.
        self.lines
            .push(serde_json::to_vec(&letter).unwrap_or_default());
    }
}

/// A pipeline ready to run.
pub struct Pipeline {
    plan: Plan,
    sources: Vec<Box<dyn Source>>,
    finished: Vec<bool>,
    operators: Vec<OperatorRuntime>,
    sinks: Vec<Box<dyn Sink>>,
    stats: Vec<StageStats>,
    dead: DeadLetters,
    source_batch: BatchWriter,
}

/// The index of a stage's statistics: sources, then operators, then sinks.
fn stat_index(plan: &Plan, node: NodeRef) -> usize {
    match node {
        NodeRef::Source(i) => i,
        NodeRef::Operator(i) => plan.sources.len() + i,
        NodeRef::Sink(i) => plan.sources.len() + plan.operators.len() + i,
    }
}

impl Pipeline {
    /// Opens every source and sink of a prepared pipeline.
    pub fn build(prepared: Prepared) -> anyhow::Result<Pipeline> {
        let Prepared {
            plan, instances, ..
        } = prepared;
        let operators: Vec<OperatorRuntime> = instances
            .into_iter()
            .zip(&plan.operators)
            .map(|(instance, op)| OperatorRuntime {
                instance,
                queue: VecDeque::new(),
                outputs: op
                    .ports
                    .iter()
                    .map(|p| BatchWriter::new(p.encoding))
                    .collect(),
            })
            .collect();
        let sources = plan
            .sources
            .iter()
            .map(|s| source::open(&s.config))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sinks = plan
            .sinks
            .iter()
            .map(|s| sink::open(&s.config))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stats = plan
            .sources
            .iter()
            .map(|s| StageStats::new(&s.config.name, StageKind::Source, &["main"]))
            .chain(plan.operators.iter().map(|o| {
                let ports: Vec<&str> = o.ports.iter().map(|p| p.name.as_str()).collect();
                StageStats::new(&o.config.name, StageKind::Operator, &ports)
            }))
            .chain(
                plan.sinks
                    .iter()
                    .map(|s| StageStats::new(&s.config.name, StageKind::Sink, &[])),
            )
            .collect();
        Ok(Pipeline {
            finished: vec![false; plan.sources.len()],
            plan,
            sources,
            operators,
            sinks,
            stats,
            dead: DeadLetters::default(),
            source_batch: BatchWriter::new(Encoding::Json),
        })
    }

    /// Runs until every source is finished or `stop` is set, then drains what was read, flushes
    /// every sink, and returns the per-stage counts.
    pub fn run(&mut self, stop: &AtomicBool) -> anyhow::Result<Summary> {
        let mut last_flush = Instant::now();
        while !self.finished.iter().all(|f| *f) && !stop.load(Ordering::Relaxed) {
            let mut progressed = false;
            for s in 0..self.sources.len() {
                if self.finished[s] {
                    continue;
                }
                self.source_batch.clear(Encoding::Json);
                match self.sources[s].next_batch(&mut self.source_batch)? {
                    Pull::Batch => {
                        progressed = true;
                        let batch = Rc::new(self.source_batch.as_bytes().to_vec());
                        let count = self.source_batch.len() as u64;
                        let stats = &mut self.stats[stat_index(&self.plan, NodeRef::Source(s))];
                        stats.records_in += count;
                        stats.outputs[0].1 += count;
                        let consumers = self.plan.sources[s].port.consumers.clone();
                        self.deliver(&consumers, &batch)?;
                        self.run_operators()?;
                    }
                    Pull::Idle => {}
                    Pull::Finished => self.finished[s] = true,
                }
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush()?;
                last_flush = Instant::now();
            }
            if !progressed && !self.finished.iter().all(|f| *f) {
                std::thread::sleep(IDLE_WAIT);
            }
        }
        self.run_operators()?;
        self.flush()?;
        Ok(Summary {
            stages: self.stats.clone(),
        })
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }

    fn deliver(&mut self, consumers: &[NodeRef], batch: &Batch) -> anyhow::Result<()> {
        for &consumer in consumers {
            match consumer {
                NodeRef::Operator(o) => self.operators[o].queue.push_back(batch.clone()),
                NodeRef::Sink(k) => {
                    let mut written = 0;
                    for record in BatchReader::new(batch)? {
                        self.sinks[k].write(record?.value)?;
                        written += 1;
                    }
                    self.stats[stat_index(&self.plan, consumer)].records_in += written;
                }
                NodeRef::Source(_) => {}
            }
        }
        Ok(())
    }

    fn run_operators(&mut self) -> anyhow::Result<()> {
        for o in 0..self.operators.len() {
            while let Some(batch) = self.operators[o].queue.pop_front() {
                self.process(o, &batch);
                self.write_dead_letters()?;
                for port in 0..self.operators[o].outputs.len() {
                    let writer = &mut self.operators[o].outputs[port];
                    if writer.is_empty() {
                        continue;
                    }
                    let out = Rc::new(writer.as_bytes().to_vec());
                    writer.clear(self.plan.operators[o].ports[port].encoding);
                    let consumers = self.plan.operators[o].ports[port].consumers.clone();
                    self.deliver(&consumers, &out)?;
                }
            }
        }
        Ok(())
    }

    fn write_dead_letters(&mut self) -> anyhow::Result<()> {
        if self.dead.lines.is_empty() {
            return Ok(());
        }
        match self.plan.dead_letter {
            Some(k) => {
                let index = stat_index(&self.plan, NodeRef::Sink(k));
                self.stats[index].records_in += self.dead.lines.len() as u64;
                for line in self.dead.lines.drain(..) {
                    self.sinks[k].write(&line)?;
                }
            }
            None => {
                for line in self.dead.lines.drain(..) {
                    tracing::warn!(
                        "dead letter (no dead_letter sink configured): {}",
                        String::from_utf8_lossy(&line)
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs operator `o` over `batch`; on a failed call, record by record.
    fn process(&mut self, o: usize, batch: &[u8]) {
        let stage = &self.plan.operators[o].config.name;
        let stats = &mut self.stats[self.plan.sources.len() + o];
        let op = &mut self.operators[o];
        let Ok(reader) = BatchReader::new(batch) else {
            return;
        };
        stats.records_in += reader.remaining() as u64;
        let failure = match op.instance.process(batch) {
            Ok(output) => match absorb(output, &mut op.outputs, &mut self.dead, stage, stats) {
                Ok(()) => return,
                Err(e) => GuestFailure(e),
            },
            Err(failure) => failure,
        };
        tracing::debug!(stage, %failure, "batch failed; retrying record by record");
        let encoding = reader.encoding();
        let mut single = BatchWriter::new(encoding);
        for record in reader {
            let Ok(record) = record else { break };
            single.clear(encoding);
            single.push(record.key, record.ts, record.value);
            let failure = match op.instance.process(single.as_bytes()) {
                Ok(output) => match absorb(output, &mut op.outputs, &mut self.dead, stage, stats) {
                    Ok(()) => continue,
                    Err(e) => GuestFailure(e),
                },
                Err(failure) => failure,
            };
            let raw = match encoding {
                Encoding::Json => record.value.to_vec(),
                Encoding::Bincode => render_json(&mut op.instance, single.as_bytes())
                    .unwrap_or_else(|| format!("<{} bytes>", record.value.len()).into_bytes()),
            };
            stats.dead_letters += 1;
            self.dead.push(stage, &failure.0, &raw);
        }
    }
}

/// The JSON rendering of the single record in `batch`, by the module that decodes its type.
fn render_json(instance: &mut OperatorInstance, batch: &[u8]) -> Option<Vec<u8>> {
    let output = instance.to_json(batch).ok()?;
    match OutputReader::new(output).next()? {
        Ok(OutputEntry::Record { value, .. }) => Some(value.to_vec()),
        _ => None,
    }
}

/// Checks a guest's whole output, then appends its records to their ports' batches and its
/// errors to the dead letters. Nothing is taken from an output that does not check.
fn absorb(
    output: &[u8],
    ports: &mut [BatchWriter],
    dead: &mut DeadLetters,
    stage: &str,
    stats: &mut StageStats,
) -> Result<(), String> {
    for entry in OutputReader::new(output) {
        match entry {
            Err(e) => return Err(format!("module returned a malformed output: {e}")),
            Ok(OutputEntry::Record { port, .. }) if usize::from(port) >= ports.len() => {
                return Err(format!(
                    "module wrote to port {port}, which it does not have"
                ));
            }
            Ok(_) => {}
        }
    }
    for entry in OutputReader::new(output).flatten() {
        match entry {
            OutputEntry::Record {
                port,
                ts,
                keys,
                value,
            } => {
                let port = usize::from(port);
                ports[port].push(keys.get(0).unwrap_or_default(), ts, value);
                stats.outputs[port].1 += 1;
            }
            OutputEntry::Error { message, raw, .. } => {
                stats.dead_letters += 1;
                dead.push(stage, message, raw);
            }
        }
    }
    Ok(())
}
