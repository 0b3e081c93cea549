//! Checkpoints of a running pipeline, and resuming from one.
//!
//! A checkpoint is taken between two rounds, when nothing is in flight (see [`crate::checkpoint`]):
//! sinks hand what they buffered to the OS and give their lengths, sources their positions,
//! stages a snapshot of their state. That is the whole pause. A thread of its own then encodes
//! the snapshot while another syncs the sinks' files, and writes it once both are done; one
//! write is in flight at a time, and a checkpoint that comes due meanwhile waits for the next
//! round after it.

use super::{Pipeline, SourceRuntime};
use crate::checkpoint::{Checkpoint, CheckpointDir, SinkEntry, SourceEntry, StageEntry, now_ms};
use crate::config::{SinkKind, SourceKind};
use crate::connectors::{Committed, SinkPosition, same_path};
use crate::diff::{StateLayout, StateStep, state_step};
use crate::stage::PartitionSnapshot;
use crate::state::keyed::{KeyedDelta, KeyedSnapshot};
use crate::telemetry::CheckpointStats;
use crate::window::SplitWatermarks;
use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The checkpoints of a running pipeline.
pub(super) struct Checkpointing {
    dir: CheckpointDir,
    interval: Duration,
    next_id: u64,
    last: Instant,
    writing: Option<JoinHandle<Outcome>>,
    /// Each stage's keyed state as of the last capture, by stage name: what the writer applies
    /// the next capture's changes to. With the writer while it writes.
    held: Option<Held>,
    /// Whether the next capture must be whole (the writer lost what it held).
    lost: bool,
    /// Whether one is wanted as soon as none is being written (after a hot swap).
    requested: bool,
    pub stats: CheckpointStats,
}

/// Keyed state the writer holds, by stage name.
pub(super) type Held = HashMap<String, KeyedSnapshot>;

/// What a write gives back: what the writer holds now, and whether it holds it whole.
struct Outcome {
    held: Held,
    whole: bool,
    result: Result<Written, Failed>,
}

/// A checkpoint written.
struct Written {
    id: u64,
    /// Its sources' positions, to tell the sources it is durable.
    positions: Vec<crate::connectors::Position>,
    taken_at_ms: i64,
    bytes: u64,
    took: Duration,
}

/// A checkpoint that could not be written, and why.
struct Failed {
    id: u64,
    why: String,
}

impl Checkpointing {
    /// Checkpoints into `dir` every `interval`, numbered on from those already there; `held`
    /// is the keyed state the stages were restored with (see [`crate::stage::Stage::track_from_here`]).
    pub fn new(dir: CheckpointDir, interval: Duration, held: Held) -> anyhow::Result<Self> {
        let next_id = dir.list()?.last().map_or(1, |f| f.id + 1);
        let stats = CheckpointStats {
            dir: dir.path().display().to_string(),
            ..CheckpointStats::default()
        };
        Ok(Checkpointing {
            dir,
            interval,
            next_id,
            last: Instant::now(),
            writing: None,
            held: Some(held),
            lost: false,
            requested: false,
            stats,
        })
    }

    /// Whether a checkpoint is due and none is being written.
    fn due(&self) -> bool {
        (self.requested || self.last.elapsed() >= self.interval) && self.writing.is_none()
    }

    /// Notes how the write in flight went, if it is over (or, with `wait`, once it is); gives
    /// the sources' positions of a checkpoint now durable.
    fn reap(&mut self, wait: bool) -> Option<Vec<crate::connectors::Position>> {
        let handle = self.writing.take_if(|h| wait || h.is_finished())?;
        let outcome = handle.join().unwrap_or_else(|_| Outcome {
            held: Held::new(),
            whole: false,
            result: Err(Failed {
                id: 0,
                why: "the checkpoint writer panicked".into(),
            }),
        });
        self.lost |= !outcome.whole;
        self.held = Some(outcome.held);
        match outcome.result {
            Ok(written) => {
                tracing::debug!(
                    id = written.id,
                    bytes = written.bytes,
                    "checkpoint written in {:.1} ms",
                    written.took.as_secs_f64() * 1e3
                );
                let stats = &mut self.stats;
                stats.written += 1;
                stats.last_id = Some(written.id);
                stats.last_bytes = written.bytes;
                stats.last_at_ms = Some(written.taken_at_ms);
                stats.last_error = None;
                stats.writes.push(written.took);
                Some(written.positions)
            }
            Err(Failed { id, why }) => {
                tracing::error!(
                    "checkpoint {id} could not be written: {why}; the previous checkpoint stays \
                     the one a restart resumes from; trying again in {} ms",
                    self.interval.as_millis()
                );
                self.stats.failed += 1;
                self.stats.last_error = Some(why);
                None
            }
        }
    }

    /// Writes `checkpoint` as the next one, alongside the run, once `committed` is durable;
    /// `deltas` are what changed in each stage's keyed state, for the stages whose keyed state
    /// the writer holds (`None`: the checkpoint holds it whole).
    fn write(
        &mut self,
        checkpoint: Checkpoint,
        deltas: Vec<Option<KeyedDelta>>,
        committed: Vec<Committed>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        let dir = self.dir.clone();
        let held = self.held.take().unwrap_or_default();
        let job = move || write(id, &dir, checkpoint, deltas, held, committed);
        match std::thread::Builder::new()
            .name("flumen-checkpoint".into())
            .spawn(job)
        {
            Ok(handle) => self.writing = Some(handle),
            Err(e) => {
                self.lost = true;
                self.held = Some(Held::new());
                self.stats.failed += 1;
                self.stats.last_error = Some(format!("cannot start the checkpoint writer: {e}"));
                tracing::error!("checkpoint {id} could not be written: cannot start a thread: {e}");
            }
        }
    }
}

/// The writer's work, on its own thread: brings each stage's keyed state up to date and encodes
/// the checkpoint while a second thread syncs the sinks' files, then writes it.
fn write(
    id: u64,
    dir: &CheckpointDir,
    checkpoint: Checkpoint,
    deltas: Vec<Option<KeyedDelta>>,
    held: Held,
    committed: Vec<Committed>,
) -> Outcome {
    let started = Instant::now();
    let failed = |why: String| Failed { id, why };
    // The two take the longer of their times, not the sum; both are done before the
    // checkpoint file is written.
    let (encoded, durable) = std::thread::scope(|scope| {
        let syncing = std::thread::Builder::new()
            .name("flumen-checkpoint-sync".into())
            .spawn_scoped(scope, move || make_durable(committed));
        let encoded = encode(checkpoint, deltas, held);
        let durable = match syncing {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|_| Err("the thread syncing the sinks panicked".into())),
            // This checkpoint fails like any write that fails; the next one tries again.
            Err(e) => Err(format!("cannot start the thread syncing the sinks: {e}")),
        };
        (encoded, durable)
    });
    let Encoded {
        checkpoint,
        bytes,
        held,
    } = encoded;
    let whole = bytes.is_some();
    let result = (|| {
        let Some(bytes) = bytes else {
            return Err(failed(
                "the writer lost the state it held; the next checkpoint takes it whole".into(),
            ));
        };
        durable.map_err(failed)?;
        dir.write(id, &bytes).map_err(|e| failed(e.to_string()))?;
        Ok(Written {
            id,
            positions: checkpoint
                .sources
                .iter()
                .map(|s| s.position.clone())
                .collect(),
            taken_at_ms: checkpoint.taken_at_ms,
            bytes: bytes.len() as u64,
            took: started.elapsed(),
        })
    })();
    Outcome {
        held,
        whole,
        result,
    }
}

/// Makes every sink's output up to the checkpoint durable.
fn make_durable(committed: Vec<Committed>) -> Result<(), String> {
    for mut sink in committed {
        sink.make_durable()
            .map_err(|e| format!("cannot make a sink's output durable: {e}"))?;
    }
    Ok(())
}

/// A checkpoint with its keyed state brought up to date, encoded.
struct Encoded {
    checkpoint: Checkpoint,
    /// Its bytes; `None` if the writer had lost the state a change log applies to (it then
    /// holds the state only in part, and the next checkpoint takes it whole).
    bytes: Option<Vec<u8>>,
    /// What the writer holds from now on.
    held: Held,
}

/// Brings each stage's keyed state up to date (a whole capture replaces what was held, changes
/// are applied to it) and encodes the checkpoint.
fn encode(mut checkpoint: Checkpoint, deltas: Vec<Option<KeyedDelta>>, mut held: Held) -> Encoded {
    let mut whole = true;
    for (entry, delta) in checkpoint.stages.iter_mut().zip(deltas) {
        let parts = &mut entry.state.partitions;
        let keyed = match delta {
            None => KeyedSnapshot::merge(parts.iter_mut().map(|p| std::mem::take(&mut p.keyed))),
            Some(delta) => {
                let mut base = held.remove(&entry.name).unwrap_or_else(|| {
                    whole = false;
                    KeyedSnapshot::default()
                });
                base.apply(delta);
                base
            }
        };
        match parts.first_mut() {
            Some(first) => first.keyed = keyed,
            None => parts.push(PartitionSnapshot {
                keyed,
                ..PartitionSnapshot::default()
            }),
        }
    }
    let bytes = whole.then(|| checkpoint.encode());
    // What the writer holds from now on: each stage's keyed state, taken back.
    let held: Held = checkpoint
        .stages
        .iter_mut()
        .map(|e| {
            let keyed = std::mem::take(&mut e.state.partitions[0].keyed);
            (e.name.clone(), keyed)
        })
        .collect();
    Encoded {
        checkpoint,
        bytes,
        held,
    }
}

impl Pipeline {
    /// Takes checkpoints into `dir` every `interval` while running, and one at the end.
    pub fn checkpoint_into(
        &mut self,
        dir: CheckpointDir,
        interval: Duration,
    ) -> anyhow::Result<()> {
        // The writer starts from the restored keyed state, or from none: every stage with no
        // keyed state yet hands over only its changes from the first checkpoint on.
        let mut held = std::mem::take(&mut self.restored);
        for (stage, op) in self.stages.iter_mut().zip(&self.plan.operators) {
            let name = &op.config.name;
            if !held.contains_key(name) && stage.keyed_len() == 0 {
                stage.track_from_here();
                held.insert(name.clone(), KeyedSnapshot::default());
            }
        }
        let mut checkpoints = Checkpointing::new(dir, interval, held)?;
        checkpoints.stats.resumed_from = self.resumed_from;
        self.checkpoints = Some(checkpoints);
        Ok(())
    }

    /// Between rounds: notes a finished write, and takes a checkpoint if one is due.
    pub(super) fn checkpoint_if_due(&mut self) -> anyhow::Result<()> {
        let Some(checkpoints) = &mut self.checkpoints else {
            return Ok(());
        };
        let durable = checkpoints.reap(false);
        let due = checkpoints.due();
        self.tell_sources(durable);
        if due {
            self.take_checkpoint()?;
        }
        Ok(())
    }

    /// Asks for a checkpoint as soon as none is being written: after a hot swap, so that a
    /// crash replays as little as possible of what the modules swapped out had made (a replay
    /// runs the modules of the pipeline file; see ARCHITECTURE.md, "Exactly once to Kafka").
    pub(super) fn checkpoint_soon(&mut self) {
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.requested = true;
        }
    }

    /// Tells each source that the checkpoint holding `positions` is durable.
    fn tell_sources(&mut self, positions: Option<Vec<crate::connectors::Position>>) {
        for (runtime, position) in self.sources.iter_mut().zip(positions.iter().flatten()) {
            runtime.source.checkpointed(position);
        }
    }

    /// Before the first record of a run that starts afresh with a sink delivering exactly
    /// once by replay: a checkpoint, written and durable, of where every source and sink
    /// starts — what a crash before the first periodic checkpoint resumes from.
    pub(super) fn first_checkpoint(&mut self) -> anyhow::Result<()> {
        if self.checkpoints.is_none()
            || self.resumed_from.is_some()
            || !self.plan.sinks.iter().any(|s| s.config.kind.needs_replay())
        {
            return Ok(());
        }
        self.take_checkpoint()?;
        let checkpoints = self.checkpoints.as_mut().expect("checked above");
        let durable = checkpoints.reap(true);
        if durable.is_none() {
            let why = checkpoints.stats.last_error.clone().unwrap_or_default();
            anyhow::bail!(
                "the first checkpoint, which exactly-once delivery to Kafka starts from, could                  not be written: {why}"
            );
        }
        self.tell_sources(durable);
        Ok(())
    }

    /// At the end of a run: waits for the write in flight, then takes the last checkpoint and
    /// waits for it too.
    pub(super) fn final_checkpoint(&mut self) -> anyhow::Result<()> {
        let Some(checkpoints) = &mut self.checkpoints else {
            return Ok(());
        };
        let durable = checkpoints.reap(true);
        self.tell_sources(durable);
        self.take_checkpoint()?;
        if let Some(checkpoints) = &mut self.checkpoints {
            let durable = checkpoints.reap(true);
            self.tell_sources(durable);
        }
        Ok(())
    }

    /// Snapshots the pipeline (the pause) and hands it to the writer.
    fn take_checkpoint(&mut self) -> anyhow::Result<()> {
        // Nothing in flight: the round behind, if any, is caught up first.
        self.settle()?;
        let started = Instant::now();
        if let Some(checkpoints) = &mut self.checkpoints
            && std::mem::take(&mut checkpoints.lost)
        {
            for stage in &mut self.stages {
                stage.untrack();
            }
        }
        let (checkpoint, deltas, committed) = self.capture()?;
        let pause = started.elapsed();
        let changes: usize = deltas.iter().flatten().map(KeyedDelta::len).sum();
        tracing::debug!(
            "checkpoint captured in {:.2} ms ({changes} keyed changes)",
            pause.as_secs_f64() * 1e3
        );
        if let Some(checkpoints) = &mut self.checkpoints {
            checkpoints.stats.pauses.push(pause);
            checkpoints.last = Instant::now();
            checkpoints.requested = false;
            checkpoints.write(checkpoint, deltas, committed);
        }
        Ok(())
    }

    /// What the pipeline holds now, between two rounds (keyed state whole, or as what changed:
    /// see [`crate::stage::Stage::capture`]); and what each sink must make durable before the checkpoint is
    /// written.
    fn capture(&mut self) -> anyhow::Result<Captured> {
        // The sources' journals first: a sink hands on what it buffered only once the reads
        // that led to it are durable.
        for runtime in &mut self.sources {
            runtime.source.sync()?;
        }
        let mut committed = Vec::with_capacity(self.sinks.len());
        let mut sinks = Vec::with_capacity(self.sinks.len());
        for (sink, plan) in self.sinks.iter_mut().zip(&self.plan.sinks) {
            let done = sink.commit()?;
            sinks.push(SinkEntry {
                name: plan.config.name.clone(),
                output: output_of(&plan.config.kind, &plan.config.name),
                committed: done.at.clone(),
            });
            committed.push(done);
        }
        let sources = self
            .sources
            .iter_mut()
            .zip(&self.plan.sources)
            .map(|(runtime, plan)| {
                Ok(SourceEntry {
                    name: plan.config.name.clone(),
                    input: input_of(&plan.config.kind),
                    position: runtime.source.position()?,
                    tracker: runtime.watermarks.clone(),
                    watermark: runtime.watermark,
                    newest: runtime.batch.newest,
                    finished: runtime.finished,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut deltas = Vec::with_capacity(self.stages.len());
        let stages = self
            .stages
            .iter_mut()
            .zip(&self.plan.operators)
            .map(|(stage, op)| {
                let (state, delta) = stage.capture();
                deltas.push(delta);
                StageEntry {
                    name: op.config.name.clone(),
                    module_hash: op.module_hash.clone(),
                    params: op.config.params.to_string(),
                    partitions: op.partitions,
                    layout: StateLayout::of(op),
                    state,
                }
            })
            .collect();
        let checkpoint = Checkpoint {
            pipeline: self.name.clone(),
            taken_at_ms: now_ms(),
            sources,
            stages,
            sinks,
        };
        Ok((checkpoint, deltas, committed))
    }

    /// How the run's checkpoints went, if it takes them.
    pub fn checkpoint_stats(&self) -> Option<&CheckpointStats> {
        self.checkpoints.as_ref().map(|c| &c.stats)
    }
}

/// A checkpoint as captured: its content, each stage's keyed changes (see [`crate::stage::Stage::capture`]),
/// and what each sink must make durable first.
type Captured = (Checkpoint, Vec<Option<KeyedDelta>>, Vec<Committed>);

/// What a source reads, for people and for matching.
fn input_of(kind: &SourceKind) -> String {
    match kind {
        SourceKind::File { path, .. } => path.display().to_string(),
        SourceKind::Generator { count, seed, .. } => {
            format!("generated orders ({count}, seed {seed})")
        }
        SourceKind::Bench { count, seed } => format!("bench orders ({count}, seed {seed})"),
        SourceKind::Nexmark { count, seed } => format!("nexmark events ({count}, seed {seed})"),
        SourceKind::Kafka(input) => {
            format!(
                "kafka topics {} on {}",
                input.topics.join(", "),
                input.brokers
            )
        }
    }
}

/// Where a sink writes, for people and for matching a sink of the checkpoint to one of the
/// pipeline.
fn output_of(kind: &SinkKind, name: &str) -> String {
    match kind {
        SinkKind::File { path } => path.display().to_string(),
        SinkKind::Stdout => "standard output".into(),
        SinkKind::Blackhole => format!("blackhole `{name}`"),
        SinkKind::Kafka(output) => format!("kafka topic {}", output.topic),
    }
}

/// What resuming from a checkpoint does to each node of the pipeline, decided before anything is
/// opened; refused whole if any node cannot resume.
pub(super) struct Resumption {
    /// Per source of the plan: its entry in the checkpoint, if it has one.
    pub sources: Vec<Option<usize>>,
    /// Per stage of the plan: its entry, and whether its state is kept.
    pub stages: Vec<Option<(usize, bool)>>,
    /// Per sink of the plan: where its output stood, if the checkpoint has that.
    pub sinks: Vec<Option<SinkPosition>>,
    /// What changed since the checkpoint, to log.
    pub notes: Vec<String>,
}

impl Resumption {
    /// Matches the checkpoint's nodes to `prepared`'s, judging each stage's state as a reload
    /// would; refuses a checkpoint of another pipeline or a state that no longer fits.
    pub fn plan(prepared: &crate::Prepared, checkpoint: &Checkpoint) -> Result<Self, Vec<String>> {
        let (config, plan) = (&prepared.config, &prepared.plan);
        if checkpoint.pipeline != config.name {
            return Err(vec![format!(
                "it is a checkpoint of the pipeline `{}`, not of `{}`",
                checkpoint.pipeline, config.name
            )]);
        }
        let mut notes = Vec::new();
        let mut errors = Vec::new();
        let sources = plan
            .sources
            .iter()
            .map(|s| {
                let found = checkpoint
                    .sources
                    .iter()
                    .position(|e| e.name == s.config.name);
                if found.is_none() {
                    notes.push(format!(
                        "source `{}` is new: read from its start",
                        s.config.name
                    ));
                }
                found
            })
            .collect();
        let stages = plan
            .operators
            .iter()
            .map(|op| {
                let name = &op.config.name;
                let Some(at) = checkpoint.stages.iter().position(|e| &e.name == name) else {
                    notes.push(format!(
                        "operator `{name}` is new: it starts with empty state"
                    ));
                    return None;
                };
                let entry = &checkpoint.stages[at];
                let keep = match state_step(&entry.layout, op) {
                    Ok(StateStep::Keep) => true,
                    Ok(StateStep::Reset) => {
                        notes.push(format!(
                            "operator `{name}` starts with empty state: its state no longer \
                             fits (on_state_change = \"reset\")"
                        ));
                        false
                    }
                    Err(conflict) => {
                        errors.push(conflict.error(config).to_string());
                        false
                    }
                };
                if keep && entry.module_hash != op.module_hash {
                    notes.push(format!(
                        "operator `{name}` runs another module than when the checkpoint was \
                         taken (module {}); its state is kept",
                        &op.module_hash[..op.module_hash.len().min(12)]
                    ));
                } else if keep
                    && serde_json::from_str::<serde_json::Value>(&entry.params)
                        .ok()
                        .as_ref()
                        != Some(&op.config.params)
                {
                    notes.push(format!(
                        "operator `{name}` has new params; its state is kept"
                    ));
                }
                Some((at, keep))
            })
            .collect();
        for gone in &checkpoint.stages {
            if !plan.operators.iter().any(|op| op.config.name == gone.name) {
                notes.push(format!(
                    "operator `{}` is no longer in the pipeline; its state is dropped",
                    gone.name
                ));
            }
        }
        let sinks = plan
            .sinks
            .iter()
            .map(|k| {
                let found = checkpoint.sinks.iter().find(|e| match &k.config.kind {
                    SinkKind::File { path } => {
                        e.committed.is_some() && same_path(&PathBuf::from(&e.output), path)
                    }
                    kind => e.output == output_of(kind, &k.config.name),
                });
                if found.is_none() {
                    notes.push(format!("sink `{}` is new", k.config.name));
                }
                found.and_then(|e| e.committed.clone())
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Resumption {
            sources,
            stages,
            sinks,
            notes,
        })
    }
}

/// Puts a source back where the checkpoint found it: its place in its input (refused if the
/// input is another one), its watermark progress, whether it had ended.
pub(super) fn resume_source(
    runtime: &mut SourceRuntime,
    entry: &SourceEntry,
    delay_ms: i64,
) -> anyhow::Result<()> {
    runtime
        .source
        .seek(&entry.position)
        .map_err(|e| anyhow::anyhow!("source `{}`: {e:#}", entry.name))?;
    runtime.watermarks = runtime
        .watermarks
        .take()
        .map(|_| SplitWatermarks::carried(entry.tracker.clone(), delay_ms));
    runtime.watermark = entry.watermark;
    runtime.batch.newest = entry.newest;
    runtime.finished = entry.finished;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            pipeline: "p".into(),
            taken_at_ms: 1,
            sources: Vec::new(),
            stages: Vec::new(),
            sinks: Vec::new(),
        }
    }

    /// A sink whose sync notes, in `log`, which checkpoints the folder held when it ran.
    fn sink(dir: &CheckpointDir, log: &Arc<Mutex<Vec<usize>>>, fails: bool) -> Committed {
        let (dir, log) = (dir.clone(), Arc::clone(log));
        Committed {
            at: None,
            durable: Some(Box::new(move || {
                log.lock().unwrap().push(dir.list()?.len());
                match fails {
                    true => Err(std::io::Error::other("disk gone")),
                    false => Ok(()),
                }
            })),
        }
    }

    #[test]
    fn a_checkpoint_is_written_after_every_sink_is_durable() {
        let folder = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open(folder.path()).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sinks = vec![sink(&dir, &log, false), sink(&dir, &log, false)];
        let outcome = write(7, &dir, checkpoint(), Vec::new(), Held::new(), sinks);
        assert_eq!(outcome.result.ok().map(|w| w.id), Some(7));
        assert!(outcome.whole);
        assert_eq!(*log.lock().unwrap(), [0, 0], "both synced before the file");
        let ids: Vec<u64> = dir.list().unwrap().iter().map(|f| f.id).collect();
        assert_eq!(ids, [7]);
    }

    #[test]
    fn a_sink_that_cannot_sync_fails_the_checkpoint_and_writes_nothing() {
        let folder = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::open(folder.path()).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sinks = vec![sink(&dir, &log, true)];
        let outcome = write(3, &dir, checkpoint(), Vec::new(), Held::new(), sinks);
        let why = outcome.result.err().map(|f| f.why).unwrap_or_default();
        assert!(
            why.contains("cannot make a sink's output durable: disk gone"),
            "{why}"
        );
        assert!(dir.list().unwrap().is_empty());
        // The state the writer holds is not lost with the checkpoint.
        assert!(outcome.whole);
    }
}
