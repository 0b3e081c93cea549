//! The last level one round behind: when the deepest level's stages feed only sinks (the
//! reference pipeline's four readers of `stock`), each round runs their work of the round before
//! on a worker thread while the earlier levels take the new batch on this one. Each of those
//! stages still takes the same batches, in the same order, and moves to the same watermarks
//! after them, so it emits the same records in the same order; only when its lines reach its
//! sinks moves, by a round — so a sink also fed by an earlier level (the dead letters) may get
//! their lines interleaved otherwise, and a pipeline with a sink that delivers exactly once by
//! replay does not lag. Before a checkpoint, a reload and the end of the run, the round behind
//! is caught up (`settle`), so nothing is in flight where the executor must hold still.

use super::levels::Share;
use super::{Pipeline, Queued};
use crate::dead_letter::DeadLetters;
use crate::plan::NodeRef;
use crate::stage::{Stage, beside, parallel_threads};
use std::collections::VecDeque;
use std::time::Instant;

/// The work the last level left for the next round: from which stage on the stages lag, and
/// each one's batches and the watermark to move to after them.
pub(super) struct Behind {
    from: usize,
    work: Vec<(VecDeque<Queued>, Option<i64>)>,
}

/// What the last level's stages must cost a round, together, for running them beside the
/// other levels to be worth a handover to another thread.
const LAG_MIN_NS: f64 = 100_000.0;

impl Pipeline {
    /// Where the stages that may run a round behind start: the deepest level, if it is more
    /// than the only one, is the tail of the stages, reads only operators, feeds only sinks, no
    /// sink replays, the earlier stages run as one partition each, and it has a thread to run
    /// on and has lately cost enough to be worth it.
    pub(super) fn lag_from(&self, levels: &[Vec<usize>]) -> Option<usize> {
        let [_, .., last] = levels else { return None };
        let from = *last.first()?;
        let tail = last.iter().copied().eq(from..self.stages.len());
        let reads_operators = last
            .iter()
            .all(|&o| (self.upstream[o].iter()).all(|n| matches!(n, NodeRef::Operator(_))));
        let feeds_sinks = last.iter().all(|&o| {
            let ports = &self.plan.operators[o].ports;
            (ports.iter().flat_map(|p| &p.consumers)).all(|c| matches!(c.node, NodeRef::Sink(_)))
        });
        // A sink fed by this level and by an earlier one (the dead letters) gets their lines
        // interleaved by a round, and where depends on when checkpoints settle the lag: a sink
        // that delivers exactly once by replaying (and skipping what it wrote) needs the same
        // order on every run.
        let replays = self.plan.sinks.iter().any(|s| s.config.kind.needs_replay());
        let cost: f64 = last.iter().map(|&o| self.stages[o].round_ns[1]).sum();
        // Partitions of the earlier stages want the workers too: with them, a lagging level
        // holds the pool and the partitions wait (measured: slower than not lagging).
        let single = (0..from).all(|o| self.stages[o].partition_records().len() == 1);
        let worth = parallel_threads() > 1 && single && cost >= LAG_MIN_NS;
        (tail && reads_operators && feeds_sinks && !replays && worth).then_some(from)
    }

    /// One round with the last level (stages `from..`) a round behind: its work of the last
    /// round on a worker thread beside the other levels' work of this one; then what it emitted
    /// is handed on, and this round's work is put aside for the next.
    pub(super) fn pump_behind(&mut self, levels: &[Vec<usize>], from: usize) -> anyhow::Result<()> {
        if self.behind.as_ref().is_some_and(|b| b.from != from) {
            self.settle()?;
        }
        let behind = self.behind.take();
        self.rounds_behind += u64::from(behind.is_some());
        self.catch_up(from, behind, Some(&levels[..levels.len() - 1]))?;
        let work = (from..self.stages.len())
            .map(|o| {
                let watermark = self.upstream_watermark(o);
                let target = (watermark > self.stages[o].watermark).then_some(watermark);
                (std::mem::take(&mut self.queues[o]), target)
            })
            .collect();
        self.behind = Some(Behind { from, work });
        Ok(())
    }

    /// Catches up the round behind, if any, on this thread, and hands on what it emitted.
    pub(super) fn settle(&mut self) -> anyhow::Result<()> {
        match self.behind.take() {
            Some(behind) => self.catch_up(behind.from, Some(behind), None),
            None => Ok(()),
        }
    }

    /// Runs `behind` on the stages `from..` — on a worker beside the `earlier` levels' work of
    /// this round, if any — then hands on what those stages emitted, in stage order.
    fn catch_up(
        &mut self,
        from: usize,
        behind: Option<Behind>,
        earlier: Option<&[Vec<usize>]>,
    ) -> anyhow::Result<()> {
        let now = Instant::now();
        for (queue, _) in behind.iter().flat_map(|b| &b.work) {
            for queued in queue {
                self.count_wait(queued, now);
            }
        }
        let mut back = self.stages.split_off(from);
        let mut dead = DeadLetters::default();
        let run = |back: &mut [Stage], dead: &mut DeadLetters| {
            for (stage, (queue, target)) in back.iter_mut().zip(behind.iter().flat_map(|b| &b.work))
            {
                let mut share = Share::new(stage, queue, *target, 1);
                share.run();
                dead.append(&mut share.dead);
            }
        };
        let earlier = match earlier {
            Some(levels) => beside(|| run(&mut back, &mut dead), || self.pump_levels(levels)).1,
            None => {
                run(&mut back, &mut dead);
                Ok(())
            }
        };
        self.stages.append(&mut back);
        earlier?;
        self.dead.append(&mut dead);
        for o in from..self.stages.len() {
            self.hand_on(o)?;
        }
        Ok(())
    }
}
