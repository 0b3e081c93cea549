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
struct Batch<'a> {
    bytes: &'a [u8],
    key: Option<crate::stage::KeyAt>,
    encoding: Encoding,
    origin: Option<usize>,
}

/// One stage's work in a half round: the batches it takes (borrowed from its queue), then the
/// watermark it moves to; and what it leaves for the executor to apply in stage order.
pub(super) struct Share<'a> {
    stage: &'a mut Stage,
    batches: Vec<Batch<'a>>,
    target: Option<i64>,
    /// Which half of the round: 0 without moving watermarks, 1 with.
    half: usize,
    pub dead: DeadLetters,
    /// Per batch read straight from a source: the source, and the records that went to the
    /// dead letters.
    unreadable: Vec<(usize, Vec<u64>)>,
}

impl<'a> Share<'a> {
    pub(super) fn new(
        stage: &'a mut Stage,
        queue: &'a VecDeque<Queued>,
        target: Option<i64>,
        half: usize,
    ) -> Self {
        let batches = queue
            .iter()
            .map(|queued| Batch {
                bytes: queued.batch.as_slice(),
                key: queued.key,
                encoding: queued.encoding,
                origin: queued.origin,
            })
            .collect();
        Share {
            stage,
            batches,
            target,
            half,
            dead: DeadLetters::default(),
            unreadable: Vec::new(),
        }
    }

    /// Takes the batches, then moves the watermark, and learns what that cost; nothing (not
    /// even a cost of zero) when there is no work.
    pub(super) fn run(&mut self) {
        if self.batches.is_empty() && self.target.is_none() {
            return;
        }
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

/// Runs `shares` on as many groups as there are threads, the costliest first, each to the
/// lightest group: a task handed to the pool waits for a free worker, so one per stage would
/// leave the calling thread idle while the workers go through the rest.
fn run_side_by_side(shares: &mut [Share<'_>]) {
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
    in_parallel(groups.into_iter(), |(_, group)| {
        for share in group {
            share.run();
        }
    });
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
    /// to its inputs' watermark (firing what that completes); side by side when at least two
    /// have work and their recent costs say it pays. Then hands on what each emitted, in stage
    /// order.
    pub(super) fn run_level(&mut self, level: &[usize], advance: bool) -> anyhow::Result<()> {
        let half = usize::from(advance);
        // The stages with work: each one's queue, and the watermark it moves to.
        let mut work: Vec<(usize, VecDeque<Queued>, Option<i64>)> = Vec::new();
        for &o in level {
            let watermark = self.upstream_watermark(o);
            let target = (advance && watermark > self.stages[o].watermark).then_some(watermark);
            if target.is_some() || !self.queues[o].is_empty() {
                work.push((o, std::mem::take(&mut self.queues[o]), target));
            }
        }
        let now = Instant::now();
        for (_, queue, _) in &work {
            for queued in queue {
                self.count_wait(queued, now);
            }
        }
        let stages = (self.stages.iter_mut().enumerate())
            .filter(|(o, _)| work.iter().any(|(w, ..)| w == o))
            .map(|(_, stage)| stage);
        let mut shares: Vec<Share<'_>> = stages
            .zip(&work)
            .map(|(stage, (_, queue, target))| Share::new(stage, queue, *target, half))
            .collect();
        let costs = shares.iter().map(Share::cost);
        let saving = costs.clone().sum::<f64>() - costs.fold(0.0, f64::max);
        if shares.len() > 1 && saving >= PARALLEL_LEVEL_NS {
            self.side_by_side += 1;
            run_side_by_side(&mut shares);
        } else {
            shares.iter_mut().for_each(Share::run);
        }
        let done: Vec<_> = shares.into_iter().map(|s| (s.dead, s.unreadable)).collect();
        for ((o, ..), (mut dead, unreadable)) in work.iter().zip(done) {
            self.dead.append(&mut dead);
            for (s, records) in unreadable {
                self.sources[s].unreadable.extend(records);
            }
            self.hand_on(*o)?;
        }
        Ok(())
    }
}
