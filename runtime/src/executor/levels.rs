//! Running the stages of one level of the graph — stages none of which reads another — side by
//! side on the worker pool when that pays, then handing on what each emitted in stage order: the
//! same records reach the same consumers in the same order as when they run one after another.
//! (The reference pipeline's four consumers of `stock` are one level, half of its work.)

use super::{Pipeline, Queued};
use crate::dead_letter::DeadLetters;
use crate::plan::NodeRef;
use crate::stage::{Stage, in_parallel, parallel_threads};
use flumen_sdk::abi::Encoding;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What a level must save by running side by side (its stages' recent costs without the
/// largest) to be worth handing stages to another thread, which costs microseconds.
const PARALLEL_LEVEL_NS: f64 = 100_000.0;

/// A queued batch as a share takes it, borrowed from the queue.
pub(super) struct Batch<'a> {
    bytes: &'a [u8],
    key: Option<usize>,
    encoding: Encoding,
    origin: Option<usize>,
}

impl<'a> Batch<'a> {
    pub(super) fn of(queued: &'a Queued) -> Self {
        Batch {
            bytes: queued.batch.as_slice(),
            key: queued.key,
            encoding: queued.encoding,
            origin: queued.origin,
        }
    }
}

/// One stage's share of a level run side by side: the batches it takes (borrowed from its
/// queue), the watermark it moves to, and what it leaves for the executor to apply in order.
pub(super) struct Share<'a> {
    pub o: usize,
    pub stage: &'a mut Stage,
    pub batches: Vec<Batch<'a>>,
    pub target: Option<i64>,
    /// Which half of the round: 0 without moving watermarks, 1 with.
    pub half: usize,
    pub dead: DeadLetters,
    /// Per batch read straight from a source: the source, and the records that went to the
    /// dead letters.
    pub unreadable: Vec<(usize, Vec<u64>)>,
}

impl Share<'_> {
    pub(super) fn run(&mut self) {
        let before = self.stage.stats.busy;
        for batch in &self.batches {
            let started = Instant::now();
            let unreadable =
                self.stage
                    .accept(batch.bytes, batch.key, batch.encoding, &mut self.dead);
            self.stage.stats.busy += started.elapsed();
            if let Some(s) = batch.origin {
                self.unreadable.push((s, unreadable));
            }
        }
        if let Some(watermark) = self.target {
            let started = Instant::now();
            self.stage.advance(watermark, &mut self.dead);
            self.stage.stats.busy += started.elapsed();
        }
        learn(self.stage, self.half, self.stage.stats.busy - before);
    }

    fn cost(&self) -> f64 {
        self.stage.round_ns[self.half]
    }
}

/// Folds what a half round of work cost `stage` into its recent average.
fn learn(stage: &mut Stage, half: usize, cost: Duration) {
    let average = &mut stage.round_ns[half];
    *average = 0.8 * *average + 0.2 * cost.as_nanos() as f64;
}

impl Pipeline {
    /// The stages by level: a stage's level is one more than that of the deepest operator it
    /// reads (0 when it reads only sources), so no stage reads another of its own level. Stages
    /// are in topological order, and so is each level.
    pub(super) fn levels(&self) -> Vec<Vec<usize>> {
        let mut depth = vec![0; self.stages.len()];
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for o in 0..self.stages.len() {
            let deepest = self.upstream[o]
                .iter()
                .filter_map(|node| match *node {
                    NodeRef::Operator(u) => Some(depth[u] + 1),
                    NodeRef::Source(_) | NodeRef::Sink(_) => None,
                })
                .max()
                .unwrap_or(0);
            depth[o] = deepest;
            if levels.len() <= deepest {
                levels.resize_with(deepest + 1, Vec::new);
            }
            levels[deepest].push(o);
        }
        levels
    }

    /// The watermark stage `o` may move to: the minimum of its inputs'.
    pub(super) fn upstream_watermark(&self, o: usize) -> i64 {
        self.upstream[o]
            .iter()
            .map(|node| match *node {
                NodeRef::Source(s) => self.sources[s].watermark,
                NodeRef::Operator(u) => self.stages[u].watermark,
                NodeRef::Sink(_) => i64::MAX,
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Runs the stages of `level` over what is queued for them and, with `advance`, moves each
    /// to its inputs' watermark (firing what that completes), handing on what they emit; side by
    /// side when at least two have work and their recent costs say it pays.
    pub(super) fn run_level(&mut self, level: &[usize], advance: bool) -> anyhow::Result<()> {
        let targets: Vec<Option<i64>> = level
            .iter()
            .map(|&o| {
                let watermark = self.upstream_watermark(o);
                (advance && watermark > self.stages[o].watermark).then_some(watermark)
            })
            .collect();
        let half = usize::from(advance);
        let costs: Vec<f64> = level
            .iter()
            .zip(&targets)
            .filter(|&(&o, target)| !self.queues[o].is_empty() || target.is_some())
            .map(|(&o, _)| self.stages[o].round_ns[half])
            .collect();
        let saving = costs.iter().sum::<f64>() - costs.iter().copied().fold(0.0, f64::max);
        if costs.len() < 2 || saving < PARALLEL_LEVEL_NS {
            for (&o, target) in level.iter().zip(targets) {
                let before = self.stages[o].stats.busy;
                let worked = !self.queues[o].is_empty() || target.is_some();
                self.drain(o)?;
                if let Some(watermark) = target {
                    let started = Instant::now();
                    self.stages[o].advance(watermark, &mut self.dead);
                    self.stages[o].stats.busy += started.elapsed();
                    self.hand_on(o)?;
                }
                if worked {
                    let cost = self.stages[o].stats.busy - before;
                    learn(&mut self.stages[o], half, cost);
                }
            }
            return Ok(());
        }
        self.run_side_by_side(level, targets, half)
    }

    fn run_side_by_side(
        &mut self,
        level: &[usize],
        targets: Vec<Option<i64>>,
        half: usize,
    ) -> anyhow::Result<()> {
        let queues: Vec<VecDeque<Queued>> = level
            .iter()
            .map(|&o| std::mem::take(&mut self.queues[o]))
            .collect();
        // The time a batch waited in a queue is its producer's backpressure (a lower level's
        // stage, or a source).
        let now = Instant::now();
        for (producer, at) in queues.iter().flatten().filter_map(|q| q.produced) {
            let waited = now.saturating_duration_since(at);
            match producer {
                NodeRef::Source(s) => self.sources[s].stats.backpressured += waited,
                NodeRef::Operator(u) => self.stages[u].stats.backpressured += waited,
                NodeRef::Sink(_) => {}
            }
        }
        let stages = self
            .stages
            .iter_mut()
            .enumerate()
            .filter(|(o, _)| level.contains(o));
        let mut shares: Vec<Share<'_>> = stages
            .zip(&queues)
            .zip(targets)
            .map(|(((o, stage), queue), target)| Share {
                o,
                stage,
                batches: queue.iter().map(Batch::of).collect(),
                target,
                half,
                dead: DeadLetters::default(),
                unreadable: Vec::new(),
            })
            .collect();
        // As many groups as threads, the costliest stages first, each to the lightest group: a
        // task handed to the pool waits for a free worker, so one per stage would leave the
        // calling thread idle while the workers go through the rest.
        let mut groups: Vec<(f64, Vec<&mut Share<'_>>)> = Vec::new();
        groups.resize_with(parallel_threads().min(shares.len()), Default::default);
        let mut by_cost: Vec<&mut Share<'_>> = shares.iter_mut().collect();
        by_cost.sort_by(|a, b| b.cost().total_cmp(&a.cost()));
        for share in by_cost {
            if let Some(group) = groups.iter_mut().min_by(|a, b| a.0.total_cmp(&b.0)) {
                group.0 += share.cost();
                group.1.push(share);
            }
        }
        self.side_by_side += 1;
        in_parallel(groups.into_iter(), |(_, group)| {
            for share in group {
                share.run();
            }
        });
        let done: Vec<_> = shares
            .into_iter()
            .map(|share| (share.o, share.dead, share.unreadable))
            .collect();
        for (o, mut dead, unreadable) in done {
            self.dead.append(&mut dead);
            for (s, records) in unreadable {
                self.sources[s].unreadable.extend(records);
            }
            self.hand_on(o)?;
        }
        Ok(())
    }
}
