//! Runs a prepared pipeline: sources fill batches; each batch crosses the whole graph (operators
//! in topological order, outputs handed to their consumers) before the next is read; then each
//! source's watermark moves and flows through the stages, every stage taking the minimum of its
//! inputs and firing what that completes before passing it on.
//!
//! A reload is swapped in between rounds (`apply.rs`).
//!
//! Failure never stops the run: see [`crate::stage`] for how a failed call is retried and how a
//! record becomes a dead letter.

mod apply;
mod checkpoint;
mod lag;
mod levels;

use crate::Prepared;
use crate::checkpoint::Checkpoint;
use crate::config::{SourceConfig, SourceKind};
use crate::connectors::{FLUSH_INTERVAL, Pull, Sink, Source, SourceBatch, is_json_line};
use crate::dead_letter::DeadLetters;
use crate::guest::{Guest, OperatorInstance};
use crate::plan::{Consumer, NodeRef, Plan, PortPlan};
use crate::reload::{Reloads, Version};
use crate::stage::{KeyAt, RoundCost, Stage};
use crate::telemetry::{CheckpointStats, StageKind, StageStats, Summary};
use crate::telemetry::{ReloadOutcome, SharedStatus, StageStatus};
use crate::window::{SplitMark, SplitWatermarks};
use flumen_sdk::abi::{Encoding, OutputEntry, OutputReader};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long to wait before polling sources again when none has anything.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// A batch waiting for a stage: output-entry framing, which key of its entries is the stage's,
/// and how its values are encoded.
struct Queued {
    batch: Arc<Vec<u8>>,
    key: Option<KeyAt>,
    encoding: Encoding,
    /// The source this batch comes straight from, if any.
    origin: Option<usize>,
    /// The stage that produced it, and when: the time it waits is that stage's backpressure
    /// (counted on the copy queued for its first consumer only).
    produced: Option<(NodeRef, Instant)>,
}

struct SourceRuntime {
    source: Box<dyn Source>,
    finished: bool,
    watermarks: Option<SplitWatermarks>,
    watermark: i64,
    stats: StageStats,
    /// Event times of the batch just read, by record index, not yet counted, and its split.
    unobserved: Vec<(u64, i64)>,
    unobserved_split: u32,
    /// What the source said of its splits with its last read, not yet noted.
    marks: Vec<SplitMark>,
    /// Records of that batch a stage could not read (malformed): they do not move time.
    unreadable: std::collections::HashSet<u64>,
    batch: SourceBatch,
}

/// A pipeline ready to run.
pub struct Pipeline {
    /// Shared with the lagging stages' thread (`lag.rs`).
    plan: Arc<Plan>,
    sources: Vec<SourceRuntime>,
    stages: Vec<Stage>,
    queues: Vec<VecDeque<Queued>>,
    /// The stages each operator reads, for the minimum of their watermarks.
    upstream: Vec<Vec<NodeRef>>,
    sinks: Vec<Box<dyn Sink>>,
    sink_stats: Vec<StageStats>,
    dead: DeadLetters,
    status: Option<SharedStatus>,
    swap_pauses: Vec<Duration>,
    /// The pipeline's name (checkpoints name it).
    name: String,
    /// Its checkpoints, if it takes them.
    checkpoints: Option<checkpoint::Checkpointing>,
    /// The checkpoint it resumed from, if any.
    resumed_from: Option<u64>,
    /// The keyed state stages were restored with, by stage name: what the checkpoint writer
    /// starts from.
    restored: checkpoint::Held,
    /// The checkpoint folder, where sources journal their reads.
    checkpoint_dir: Option<std::path::PathBuf>,
    /// The pipeline's graph, for the status.
    graph: crate::telemetry::Graph,
    /// The watermark a source moves to when it ends: +∞ (every window fires), or a test's.
    end_watermark: i64,
    /// How many half rounds ran the stages of a level side by side (`levels.rs`).
    side_by_side: u64,
    /// The last level's work put aside for the next round, when it runs a round behind
    /// (`lag.rs`).
    behind: Option<lag::Behind>,
    /// How many rounds ran the last levels' work a round behind, beside the others.
    rounds_behind: u64,
    /// What reading the sources has lately cost a round: work that stays on the executor's
    /// thread (`lag.rs`).
    reading_cost: RoundCost,
    /// What writing each sink has lately cost a round (`lag.rs`).
    sink_costs: Vec<RoundCost>,
}

/// What [`Pipeline::resume`] restored.
#[derive(Debug, Clone, Default)]
pub struct Resumed {
    /// Keys with state, windows and sessions restored.
    pub entries: usize,
    /// What changed since the checkpoint (new or removed nodes, other modules), to log.
    pub notes: Vec<String>,
}

impl Pipeline {
    /// How long each reload so far held the pipeline still.
    pub fn swap_pauses(&self) -> &[Duration] {
        &self.swap_pauses
    }

    /// Keeps `status` (the admin endpoint's) up to date while running.
    pub fn report_to(&mut self, status: SharedStatus) {
        self.status = Some(status);
        self.publish_status();
    }

    fn publish_status(&mut self) {
        let Some(shared) = &self.status else { return };
        let mut stages = Vec::new();
        for s in &mut self.sources {
            let mut status = StageStatus::of(&s.stats, s.watermark);
            status.newest_event_time = s.batch.newest;
            status.lag = s.source.lag();
            stages.push(status);
        }
        // What each operator's sources have read last, for its watermark's lag.
        for (o, s) in self.stages.iter().enumerate() {
            let mut status = StageStatus::of(&s.stats, s.watermark);
            status.module_hash = Some(s.module_hash().to_string());
            (status.state_keys, status.state_bytes) = s.state_by_partition();
            status.partition_records = s.partition_records().to_vec();
            status.guest = s.guest_health();
            status.newest_event_time = self
                .upstream_sources(o)
                .filter_map(|i| self.sources[i].batch.newest)
                .max();
            stages.push(status);
        }
        stages.extend(self.sink_stats.iter().map(|s| StageStatus::of(s, i64::MIN)));
        let checkpoints = self.checkpoint_stats().map(CheckpointStats::without_times);
        if let Ok(mut status) = shared.lock() {
            status.stages = stages;
            status.checkpoints = checkpoints;
            if status.graph != self.graph {
                status.graph = self.graph.clone();
            }
        }
    }

    /// The sources operator `o` reads, directly or through other stages.
    fn upstream_sources(&self, o: usize) -> impl Iterator<Item = usize> + '_ {
        let mut seen = vec![false; self.sources.len()];
        let mut stack = vec![o];
        let mut visited = vec![false; self.stages.len()];
        while let Some(at) = stack.pop() {
            if std::mem::replace(&mut visited[at], true) {
                continue;
            }
            for node in &self.upstream[at] {
                match *node {
                    NodeRef::Source(s) => seen[s] = true,
                    NodeRef::Operator(u) => stack.push(u),
                    NodeRef::Sink(_) => {}
                }
            }
        }
        seen.into_iter()
            .enumerate()
            .filter_map(|(s, read)| read.then_some(s))
    }

    fn record_reload(&self, outcome: ReloadOutcome) {
        if let Some(shared) = &self.status
            && let Ok(mut status) = shared.lock()
        {
            status.last_reload = Some(outcome.clone());
            status.reloads.record(outcome);
        }
    }

    /// Tells the status the run has ended.
    fn publish_end(&mut self) {
        self.publish_status();
        if let Some(shared) = &self.status
            && let Ok(mut status) = shared.lock()
        {
            status.finished = true;
        }
    }

    /// Opens every source and sink of a prepared pipeline.
    pub fn build(prepared: Prepared) -> anyhow::Result<Pipeline> {
        Self::assemble(prepared, None, None)
    }

    /// Opens a prepared pipeline to go on from `checkpoint` (number `id`): sources seeked to
    /// their positions, stages given their state (kept or reset by the rules of a reload), file
    /// sinks cut back to their committed lengths. A checkpoint of another pipeline or input, or a
    /// state that no longer fits, is refused before any file is touched.
    pub fn resume(
        prepared: Prepared,
        checkpoint: Checkpoint,
        id: u64,
    ) -> anyhow::Result<(Pipeline, Resumed)> {
        let resumption = checkpoint::Resumption::plan(&prepared, &checkpoint)
            .map_err(|errors| anyhow::anyhow!(errors.join("\n")))?;
        let notes = resumption.notes.clone();
        let pipeline = Self::assemble(prepared, Some((resumption, checkpoint)), Some(id))?;
        let entries = pipeline.stages.iter().map(Stage::entries).sum();
        Ok((pipeline, Resumed { entries, notes }))
    }

    fn assemble(
        prepared: Prepared,
        resume: Option<(checkpoint::Resumption, Checkpoint)>,
        resumed_from: Option<u64>,
    ) -> anyhow::Result<Pipeline> {
        let Prepared {
            config,
            plan,
            instances,
        } = prepared;
        let mut stages: Vec<Stage> = instances
            .into_iter()
            .zip(&plan.operators)
            .map(|(instances, op)| Stage::new(op, boxed(instances)))
            .collect();
        let upstream = upstream_of(&plan);
        let graph = config.graph();
        let checkpoint_dir = config.checkpoint.as_ref().map(|c| c.dir.clone());
        let mut sources = plan
            .sources
            .iter()
            .map(|s| {
                let journal = checkpoint_dir
                    .as_ref()
                    .map(|dir| crate::checkpoint::journal_dir(dir, &s.config.name));
                Ok(new_source_runtime(
                    &s.config,
                    &s.port,
                    SourceKind::open(&s.config, journal)?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut committed = vec![None; plan.sinks.len()];
        let mut restored = checkpoint::Held::new();
        if let Some((resumption, mut checkpoint)) = resume {
            // Sources first: an input that is not the checkpoint's refuses it before any sink
            // is cut back.
            for ((runtime, plan), at) in sources
                .iter_mut()
                .zip(&plan.sources)
                .zip(&resumption.sources)
            {
                if let Some(at) = *at {
                    let delay = plan.config.watermark_delay_ms;
                    checkpoint::resume_source(runtime, &checkpoint.sources[at], delay)?;
                }
            }
            let restoring = stages
                .iter_mut()
                .zip(&resumption.stages)
                .zip(&plan.operators);
            for ((stage, at), op) in restoring {
                if let Some((at, keep)) = *at {
                    let state = std::mem::take(&mut checkpoint.stages[at].state);
                    // What the checkpoint writer starts from: the restored keyed state.
                    if let Some(keyed) = stage.restore(state, keep) {
                        stage.track_from_here();
                        restored.insert(op.config.name.clone(), keyed);
                    }
                }
            }
            committed = resumption.sinks;
        }
        let sinks = plan
            .sinks
            .iter()
            .zip(committed)
            .map(|(s, committed)| s.config.kind.resume(committed))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Pipeline {
            queues: stages.iter().map(|_| VecDeque::new()).collect(),
            sink_stats: plan
                .sinks
                .iter()
                .map(|s| StageStats::new(&s.config.name, StageKind::Sink, &[]))
                .collect(),
            plan: Arc::new(plan),
            sources,
            stages,
            upstream,
            sinks,
            dead: DeadLetters::default(),
            status: None,
            swap_pauses: Vec::new(),
            name: config.name,
            checkpoints: None,
            resumed_from,
            restored,
            checkpoint_dir,
            graph,
            end_watermark: i64::MAX,
            side_by_side: 0,
            behind: None,
            rounds_behind: 0,
            reading_cost: RoundCost::default(),
            sink_costs: Vec::new(),
        })
    }

    /// Makes an ended source's watermark `watermark` instead of +∞: only the windows that
    /// watermark completes fire at the end (what `flumen test` checks).
    pub fn end_at_watermark(&mut self, watermark: i64) {
        self.end_watermark = watermark;
    }

    /// Whether every source has ended: running would do nothing more (a bounded run resumed
    /// from its last checkpoint).
    pub fn is_finished(&self) -> bool {
        self.sources.iter().all(|s| s.finished)
    }

    /// Runs until every source is finished — then the watermark becomes +∞ and every window
    /// fires — or until `stop` is set — then what was read is drained and windows that have not
    /// fired are not emitted (a checkpoint keeps them, to fire after a restart). Flushes every
    /// sink, takes a last checkpoint if the pipeline takes them, and returns the per-stage
    /// counts.
    /// Between batches it swaps in every new version `reloads` delivers.
    pub fn run(&mut self, stop: &AtomicBool, reloads: Option<&Reloads>) -> anyhow::Result<Summary> {
        self.first_checkpoint()?;
        let mut last_flush = Instant::now();
        loop {
            while let Some(version) = reloads.and_then(|r| r.versions.try_recv().ok()) {
                let next = match version {
                    Version::Ready(next) => *next,
                    Version::Failed(line) => {
                        tracing::error!("reload failed: {line}");
                        self.record_reload(ReloadOutcome::now(false, vec![line], None));
                        self.publish_status();
                        continue;
                    }
                };
                self.settle()?;
                let applied = self.apply(next);
                if let Some(reloads) = reloads {
                    // The reloader diffs its next version against what runs: tell it.
                    let _ = reloads.outcomes.send(applied.is_ok());
                }
                match applied {
                    Ok(changes) => {
                        self.checkpoint_soon();
                        if changes.is_empty() {
                            tracing::info!("reloaded: nothing changed");
                        }
                        for change in &changes {
                            tracing::info!("reloaded: {change}");
                        }
                        let pause = self.swap_pauses.last().copied();
                        self.record_reload(ReloadOutcome::now(true, changes, pause));
                    }
                    Err(errors) => {
                        let line = errors.first_line();
                        tracing::error!("reload failed: {line}");
                        self.record_reload(ReloadOutcome::now(false, vec![line], None));
                    }
                }
                self.publish_status();
            }
            let stopping = stop.load(Ordering::Relaxed);
            let mut progressed = false;
            for s in 0..self.sources.len() {
                if self.sources[s].finished || stopping {
                    continue;
                }
                progressed |= self.pump(Some(s))?;
            }
            if last_flush.elapsed() >= FLUSH_INTERVAL {
                self.flush()?;
                self.publish_status();
                last_flush = Instant::now();
            }
            // Between two rounds nothing is in flight: the place for a consistent checkpoint.
            self.checkpoint_if_due()?;
            if stopping || self.is_finished() {
                break;
            }
            if !progressed {
                std::thread::sleep(IDLE_WAIT);
            }
        }
        self.pump(None)?;
        self.settle()?;
        tracing::debug!(
            "{} half rounds ran stages of one level side by side, {} rounds ran the last levels \
             a round behind",
            self.side_by_side,
            self.rounds_behind
        );
        self.flush()?;
        self.final_checkpoint()?;
        for sink in &mut self.sinks {
            sink.finish()?;
        }
        self.publish_end();
        let stages = self
            .sources
            .iter()
            .map(|s| s.stats.clone())
            .chain(self.stages.iter().map(|s| s.stats.clone()))
            .chain(self.sink_stats.iter().cloned())
            .collect();
        Ok(Summary {
            stages,
            checkpoints: self.checkpoint_stats().cloned(),
        })
    }

    /// Reads the next batch of source `s` and hands it on; whether that made progress.
    fn read_source(&mut self, s: usize) -> anyhow::Result<bool> {
        let runtime = &mut self.sources[s];
        runtime.batch.clear();
        let reading = Instant::now();
        let pulled = runtime.source.next_batch(&mut runtime.batch)?;
        runtime.stats.busy += reading.elapsed();
        runtime.marks.append(&mut runtime.batch.marks);
        match pulled {
            Pull::Batch => {
                self.emit_source_batch(s)?;
                Ok(true)
            }
            Pull::Idle => Ok(false),
            Pull::Busy => Ok(true),
            Pull::Finished => {
                let source = &mut self.sources[s];
                source.finished = true;
                source.watermark = source.watermark.max(self.end_watermark);
                Ok(true)
            }
        }
    }

    /// Hands the source batch just read to the consumers of source `s` and moves its watermark.
    fn emit_source_batch(&mut self, s: usize) -> anyhow::Result<()> {
        let runtime = &mut self.sources[s];
        let count = runtime.batch.len() as u64;
        let refused = runtime.batch.rejected.len() as u64;
        runtime.stats.records_in += count + refused;
        runtime.stats.outputs[0].1 += count;
        runtime.stats.dead_letters += refused;
        for (why, raw) in runtime.batch.rejected.drain(..) {
            self.dead.push(&runtime.stats.name, &why, &raw);
        }
        runtime.unobserved.extend_from_slice(&runtime.batch.times);
        runtime.unobserved_split = runtime.batch.split;
        if count == 0 {
            return self.write_dead_letters();
        }
        let batch = Arc::new(runtime.batch.out.take());
        self.deliver((NodeRef::Source(s), 0), batch, Some(s))
    }

    /// Moves each source's watermark by the event times of the batch it just read, leaving out
    /// records no stage could read: a malformed line is not an order, so it does not move time.
    fn observe_source_times(&mut self) {
        for source in &mut self.sources {
            let unobserved = std::mem::take(&mut source.unobserved);
            let unreadable = std::mem::take(&mut source.unreadable);
            let marks = std::mem::take(&mut source.marks);
            let Some(tracker) = source.watermarks.as_mut() else {
                continue;
            };
            for mark in marks {
                tracker.mark(mark);
            }
            for (index, ts) in unobserved {
                if !unreadable.contains(&index) {
                    tracker.observe(source.unobserved_split, ts);
                }
            }
            if !source.finished
                && let Some(watermark) = tracker.watermark()
            {
                source.watermark = source.watermark.max(watermark);
            }
        }
    }

    /// Hands the batch of port `from` (see [`port_of`]) to every consumer of the port.
    fn deliver(
        &mut self,
        from: (NodeRef, usize),
        batch: Arc<Vec<u8>>,
        origin: Option<usize>,
    ) -> anyhow::Result<()> {
        let Pipeline {
            plan,
            queues,
            sinks,
            sink_stats,
            dead,
            ..
        } = self;
        let Some((port, _)) = port_of(plan, from) else {
            return Ok(());
        };
        let mut producing = Some(from.0);
        let now = Instant::now();
        for &Consumer { node, key } in &port.consumers {
            match node {
                NodeRef::Operator(o) => queues[o].push_back(Queued {
                    batch: batch.clone(),
                    key: key_at(port, key),
                    encoding: port.encoding,
                    origin,
                    produced: producing.take().map(|producer| (producer, now)),
                }),
                NodeRef::Sink(k) => {
                    let (sink, stats) = (&mut *sinks[k], &mut sink_stats[k]);
                    write_sink(plan, from, k, &batch, sink, stats, dead)?;
                }
                NodeRef::Source(_) => {}
            }
        }
        Ok(())
    }

    /// A round: reads the next batch of source `read`, if any, then runs every stage, level by
    /// level in topological order (see `levels.rs`), over what is queued for it; then moves
    /// each stage's watermark to the minimum of its inputs', handing downstream what each step
    /// emits. The last levels may run a round behind the others, beside the read and them
    /// (`lag.rs`). Whether the read made progress.
    fn pump(&mut self, read: Option<usize>) -> anyhow::Result<bool> {
        self.learn_round();
        let levels = self.levels();
        match self.lag_from(&levels) {
            Some(from) => self.pump_behind(&levels, from, read),
            None => {
                let progressed = self.read(read)?;
                self.settle()?;
                self.pump_levels(&levels)?;
                Ok(progressed)
            }
        }
    }

    /// Reads the next batch of source `read`, if any (see [`Pipeline::read_source`]).
    fn read(&mut self, read: Option<usize>) -> anyhow::Result<bool> {
        match read {
            Some(s) => self.read_source(s),
            None => Ok(false),
        }
    }

    /// Runs `levels` over what is queued for them, then moves their watermarks.
    fn pump_levels(&mut self, levels: &[Vec<usize>]) -> anyhow::Result<()> {
        for level in levels {
            self.run_level(level, false)?;
        }
        self.observe_source_times();
        for level in levels {
            self.run_level(level, true)?;
        }
        Ok(())
    }

    /// Learns what the round just over cost each stage and each sink, and the sources
    /// together.
    fn learn_round(&mut self) {
        for stage in &mut self.stages {
            stage.round_cost.learn(stage.stats.busy);
        }
        (self.reading_cost).learn(self.sources.iter().map(|s| s.stats.busy).sum());
        // A reload may change the sinks: what was learned of others is forgotten.
        self.sink_costs
            .resize(self.sinks.len(), RoundCost::default());
        for (cost, stats) in self.sink_costs.iter_mut().zip(&self.sink_stats) {
            cost.learn(stats.busy);
        }
    }

    /// Counts the time `queued` waited, until `now`, as its producer's backpressure.
    fn count_wait(&mut self, queued: &Queued, now: Instant) {
        let Some((producer, at)) = queued.produced else {
            return;
        };
        let waited = now.saturating_duration_since(at);
        match producer {
            NodeRef::Source(s) => self.sources[s].stats.backpressured += waited,
            NodeRef::Operator(u) => self.stages[u].stats.backpressured += waited,
            NodeRef::Sink(_) => {}
        }
    }

    /// Hands what stage `o` emitted to its consumers, and its dead letters to the sink.
    fn hand_on(&mut self, o: usize) -> anyhow::Result<()> {
        for port in 0..self.stages[o].outputs().len() {
            let writer = &mut self.stages[o].outputs()[port];
            if writer.as_bytes().is_empty() {
                continue;
            }
            let batch = Arc::new(writer.take());
            self.deliver((NodeRef::Operator(o), port), batch, None)?;
        }
        self.write_dead_letters()
    }

    fn write_dead_letters(&mut self) -> anyhow::Result<()> {
        if self.dead.lines.is_empty() {
            return Ok(());
        }
        match self.plan.dead_letter {
            Some(k) => {
                self.sink_stats[k].records_in += self.dead.lines.len() as u64;
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

    /// Hands what the sinks buffered to their destinations — after the sources' journals are
    /// durable, so nothing leaves that a replay could not regenerate.
    fn flush(&mut self) -> anyhow::Result<()> {
        for source in &mut self.sources {
            source.source.sync()?;
        }
        for sink in &mut self.sinks {
            sink.flush()?;
        }
        Ok(())
    }
}

fn new_source_runtime(
    config: &SourceConfig,
    port: &PortPlan,
    source: Box<dyn Source>,
) -> SourceRuntime {
    SourceRuntime {
        source,
        finished: false,
        watermarks: config
            .event_time
            .as_ref()
            .map(|_| SplitWatermarks::new(config.watermark_delay_ms)),
        watermark: i64::MIN,
        stats: StageStats::new(&config.name, StageKind::Source, &["main"]),
        unobserved: Vec::new(),
        unobserved_split: 0,
        marks: Vec::new(),
        unreadable: std::collections::HashSet::new(),
        batch: SourceBatch::new(port.key_fields.clone(), config.event_time.clone())
            .with_max_future(config.max_future_ms)
            .with_reader(port.parsed.clone()),
    }
}

/// Where a consumer of `port` whose key is the producer's key `key` finds it in each record.
fn key_at(port: &PortPlan, key: Option<usize>) -> Option<KeyAt> {
    key.map(|k| match &port.host_keys {
        Some(fields) => KeyAt::Field(fields[k]),
        None => KeyAt::Entry(k),
    })
}

/// The port `from` names in `plan` — the main port of source `s` (`NodeRef::Source(s), 0`) or
/// port `p` of operator `o` (`NodeRef::Operator(o), p`) — and its producer's name.
fn port_of(plan: &Plan, from: (NodeRef, usize)) -> Option<(&PortPlan, &str)> {
    match from {
        (NodeRef::Source(s), _) => Some((&plan.sources[s].port, &plan.sources[s].config.name)),
        (NodeRef::Operator(o), p) => {
            Some((&plan.operators[o].ports[p], &plan.operators[o].config.name))
        }
        (NodeRef::Sink(_), _) => None,
    }
}

/// Writes the records of `batch`, from port `from` (see [`port_of`]), to `sink` (sink `k` of
/// `plan`, counted in `stats`); what it cannot take goes to `dead`.
fn write_sink(
    plan: &Plan,
    from: (NodeRef, usize),
    k: usize,
    batch: &[u8],
    sink: &mut dyn Sink,
    stats: &mut StageStats,
    dead: &mut DeadLetters,
) -> anyhow::Result<()> {
    let Some((port, producer)) = port_of(plan, from) else {
        return Ok(());
    };
    let writing = Instant::now();
    // A JSON Lines sink takes only what is one line of JSON: whatever a module hands over, it
    // cannot forge lines or write what is not JSON. A port in bincode has its JSON written
    // here, from its type's shape.
    let lines = plan.sinks[k].config.kind.writes_lines();
    let render = port.json.as_deref().filter(|_| lines);
    let check = lines && port.encoding == Encoding::Json;
    let name = &plan.sinks[k].config.name;
    let mut line = Vec::new();
    for entry in OutputReader::new(batch) {
        if let OutputEntry::Record { value, .. } = entry? {
            stats.records_in += 1;
            let written = match render {
                Some(json) => {
                    line.clear();
                    json.render(value, &mut line)
                        .map(|()| line.as_slice())
                        .map_err(|error| {
                            format!(
                                "wrote a value for sink `{name}` that does not read as `{}`: \
                                 {error}",
                                port.type_name
                            )
                        })
                }
                None if check && !is_json_line(value) => Err(format!(
                    "wrote a value for sink `{name}` that is not one line of JSON"
                )),
                None => Ok(value),
            };
            match written {
                Ok(text) => sink.write(text)?,
                Err(why) => {
                    stats.dead_letters += 1;
                    let raw = &value[..value.len().min(1024)];
                    dead.push(producer, &why, raw);
                }
            }
        }
    }
    stats.busy += writing.elapsed();
    Ok(())
}

/// For each operator, the stages it reads.
fn upstream_of(plan: &Plan) -> Vec<Vec<NodeRef>> {
    let mut upstream = vec![Vec::new(); plan.operators.len()];
    let ports = plan
        .sources
        .iter()
        .enumerate()
        .map(|(s, source)| (NodeRef::Source(s), &source.port))
        .chain(plan.operators.iter().enumerate().flat_map(|(o, op)| {
            op.ports
                .iter()
                .map(move |port| (NodeRef::Operator(o), port))
        }));
    for (from, port) in ports {
        for consumer in &port.consumers {
            if let NodeRef::Operator(o) = consumer.node
                && !upstream[o].contains(&from)
            {
                upstream[o].push(from);
            }
        }
    }
    upstream
}

/// Instances as the guests of a stage.
fn boxed(instances: Vec<OperatorInstance>) -> Vec<Box<dyn Guest>> {
    instances
        .into_iter()
        .map(|i| Box::new(i) as Box<dyn Guest>)
        .collect()
}
