//! The last levels one round behind: the stages from some level on (in the reference pipeline
//! `stock` and its four readers) run the work of the round before on a worker thread, and write
//! the sinks only they feed, while this thread reads the next batch and runs the earlier levels
//! over it. Where the cut falls is learned, round by round, from what each stage, the sources
//! and each sink have lately cost: the level that best balances the two threads (moving it
//! catches the round behind up first).
//!
//! Each lagging stage still takes the same records, in the same order, and moves to the same
//! watermarks after them, so it emits the same records in the same order; only when its lines
//! reach its sinks moves, by a round. For that to hold, a lagging stage reads either only
//! stages that do not lag (their batches of a round are put aside in the order they came) or
//! one port of exactly one that does (whose records it takes after that stage's run): without
//! lag, a stage reading two would take their records interleaved half round by half round. A
//! sink fed by stages on both sides of the cut would get their lines interleaved by a round,
//! where the cut falls deciding how: no cut is taken there, but for the dead letters (whose
//! lines come from every stage); and a pipeline with a sink that delivers exactly once by
//! replay does not lag, as that needs the same order on every run.
//!
//! Before a checkpoint, a reload and the end of the run, the round behind is caught up
//! (`settle`), so nothing is in flight where the executor must hold still.

use super::levels::Share;
use super::{Pipeline, Queued, key_at, write_sink};
use crate::connectors::{Committed, Sink};
use crate::dead_letter::DeadLetters;
use crate::plan::NodeRef;
use crate::stage::{Stage, beside, parallel_threads};
use crate::telemetry::{StageKind, StageStats};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// The work the lagging stages left for the next round: from which stage on they lag, and per
/// stage the batches put aside for it and the watermark to move to after them (for a stage
/// reading a lagging one, that one's watermark once it has run).
pub(super) struct Behind {
    from: usize,
    work: Vec<(VecDeque<Queued>, Option<i64>)>,
}

/// What the lagging stages must cost a round, together, for running them beside the other
/// levels to be worth a handover to another thread.
const LAG_MIN_NS: f64 = 100_000.0;

/// How much better (as a share of the round) another cut must balance the threads than the
/// one in use for the executor to move the cut, which catches the round behind up.
const RECUT_GAIN: f64 = 0.05;

impl Pipeline {
    /// Where the stages that run a round behind start, if any: the first stage of a level
    /// whose stages and every deeper level's are the tail of the stages, each reading operators
    /// only (either only earlier ones, or one port of exactly one lagging one); no sink but the
    /// dead letters is fed by stages on both sides; no sink replays, there is a thread to run
    /// on, and what lags has lately cost enough to be worth it. Of those cuts, the one that best
    /// balances the two threads. (Meanwhile the earlier stages run their partitions in turn:
    /// the lagging ones hold the workers, see [`beside`].)
    pub(super) fn lag_from(&self, levels: &[Vec<usize>]) -> Option<usize> {
        // The dead letters' lines are interleaved by a round, and where depends on when
        // checkpoints settle the lag: a sink that delivers exactly once by replaying (and
        // skipping what it wrote) needs the same order on every run.
        let replays = self.plan.sinks.iter().any(|s| s.config.kind.needs_replay());
        if replays || parallel_threads() < 2 {
            return None;
        }
        let count = self.stages.len();
        let costs: Vec<f64> = self.stages.iter().map(|s| s.round_cost.ns).collect();
        // Reading the sources runs beside the lagging stages, with the earlier ones.
        let total = self.reading_cost.ns + costs.iter().sum::<f64>();
        // Each cut that may lag, with the longer of the two threads' rounds.
        let mut cuts: Vec<(usize, f64)> = Vec::new();
        for level in 1..levels.len() {
            let Some(from) = levels[level..].iter().flatten().copied().min() else {
                continue;
            };
            let lagging = levels[level..].iter().map(Vec::len).sum::<usize>();
            let tail = lagging == count - from;
            let reads = (from..count).all(|o| match self.upstream[o][..] {
                [NodeRef::Operator(u)] if u >= from => self.ports_between(u, o) == 1,
                ref inputs => {
                    (inputs.iter()).all(|n| matches!(n, NodeRef::Operator(u) if *u < from))
                }
            });
            let fed = self.sinks_fed(from);
            let apart = (fed.iter().enumerate())
                .all(|(k, f)| f != &[true, true] || self.plan.dead_letter == Some(k));
            let stages: f64 = costs[from..].iter().sum();
            // The sinks only lagging stages feed are written on their thread too.
            let sinks: f64 = (fed.into_iter().zip(&self.sink_costs).enumerate())
                .filter(|&(k, (fed, _))| self.written_behind(k, fed))
                .map(|(_, (_, cost))| cost.ns)
                .sum();
            let behind = stages + sinks;
            if tail && reads && apart && stages >= LAG_MIN_NS {
                cuts.push((from, behind.max(total - stages)));
            }
        }
        let best = cuts.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))?;
        // Moving the cut costs a round without lag: keep the one in use unless another
        // balances clearly better.
        let current = self.behind.as_ref().map(|b| b.from);
        match cuts.iter().find(|(from, _)| Some(*from) == current) {
            Some(&(from, span)) if span - best.1 <= RECUT_GAIN * total => Some(from),
            _ => Some(best.0),
        }
    }

    /// Through how many of its ports operator `u` feeds operator `o`.
    fn ports_between(&self, u: usize, o: usize) -> usize {
        let ports = &self.plan.operators[u].ports;
        (ports.iter())
            .filter(|port| {
                port.consumers
                    .iter()
                    .any(|c| c.node == NodeRef::Operator(o))
            })
            .count()
    }

    /// Whether sink `k`, fed as `fed` says ([`Pipeline::sinks_fed`]), is written on the lagging
    /// stages' thread: only they feed it, and it is not the dead letters' (fed by every stage).
    fn written_behind(&self, k: usize, fed: [bool; 2]) -> bool {
        fed == [false, true] && self.plan.dead_letter != Some(k)
    }

    /// Per sink, whether stages before `from` (or sources) feed it, and whether stages from
    /// `from` on do.
    fn sinks_fed(&self, from: usize) -> Vec<[bool; 2]> {
        let mut fed = vec![[false; 2]; self.plan.sinks.len()];
        let sources = self.plan.sources.iter().map(|s| (false, &s.port));
        let operators = (self.plan.operators.iter().enumerate())
            .flat_map(|(o, op)| op.ports.iter().map(move |port| (o >= from, port)));
        for (lagging, port) in sources.chain(operators) {
            for consumer in &port.consumers {
                if let NodeRef::Sink(k) = consumer.node {
                    fed[k][usize::from(lagging)] = true;
                }
            }
        }
        fed
    }

    /// One round with the stages `from..` a round behind: their work of the last round on a
    /// worker thread beside this round's read of source `read` (if any) and the other levels'
    /// work; then what they emitted is handed on, and this round's work is put aside for the
    /// next. Whether the read made progress.
    pub(super) fn pump_behind(
        &mut self,
        levels: &[Vec<usize>],
        from: usize,
        read: Option<usize>,
    ) -> anyhow::Result<bool> {
        if self.behind.as_ref().is_some_and(|b| b.from != from) {
            self.settle()?;
        }
        let behind = self.behind.take();
        self.rounds_behind += u64::from(behind.is_some());
        let earlier: Vec<Vec<usize>> = levels
            .iter()
            .map(|level| level.iter().copied().filter(|&o| o < from).collect())
            .filter(|level: &Vec<usize>| !level.is_empty())
            .collect();
        let progressed = self.catch_up(from, behind, Some((&earlier, read)))?;
        // (A stage reading a lagging one moves, instead, to where that one is once it has run.)
        let work = (from..self.stages.len())
            .map(|o| {
                let watermark = self.upstream_watermark(o);
                let target = (watermark > self.stages[o].watermark).then_some(watermark);
                (std::mem::take(&mut self.queues[o]), target)
            })
            .collect();
        self.behind = Some(Behind { from, work });
        Ok(progressed)
    }

    /// Catches up the round behind, if any, on this thread, and hands on what it emitted.
    pub(super) fn settle(&mut self) -> anyhow::Result<()> {
        match self.behind.take() {
            Some(behind) => self.catch_up(behind.from, Some(behind), None).map(drop),
            None => Ok(()),
        }
    }

    /// Runs `behind` on the stages `from..` — on a worker beside this round's read of a source
    /// and the `earlier` levels' work, if any — then hands what those stages emitted to their
    /// sinks, in the order they emitted it (each lagging reader of a lagging stage took it as it
    /// came). Whether the read made progress.
    fn catch_up(
        &mut self,
        from: usize,
        behind: Option<Behind>,
        earlier: Option<(&[Vec<usize>], Option<usize>)>,
    ) -> anyhow::Result<bool> {
        let now = Instant::now();
        for (queue, _) in behind.iter().flat_map(|b| &b.work) {
            for queued in queue {
                self.count_wait(queued, now);
            }
        }
        let reads: Vec<Option<usize>> = (from..self.stages.len())
            .map(|o| match self.upstream[o][..] {
                [NodeRef::Operator(u)] => u.checked_sub(from),
                _ => None,
            })
            .collect();
        let plan = Arc::clone(&self.plan);
        // The sinks written on the lagging stages' thread are parked here meanwhile.
        let mut parked: Vec<(usize, Box<dyn Sink>, StageStats)> = Vec::new();
        for (k, fed) in self.sinks_fed(from).into_iter().enumerate() {
            if self.written_behind(k, fed) {
                let sink = std::mem::replace(&mut self.sinks[k], Box::new(Parked));
                let stats = StageStats::new("", StageKind::Sink, &[]);
                parked.push((k, sink, std::mem::replace(&mut self.sink_stats[k], stats)));
            }
        }
        let mut back = self.stages.split_off(from);
        let mut dead = DeadLetters::default();
        // What lagging stages emitted for sinks that others feed too, to write on this thread.
        let mut emitted: Vec<(usize, usize, usize, Arc<Vec<u8>>)> = Vec::new();
        let plan = &plan;
        let run = |back: &mut [Stage]| -> anyhow::Result<()> {
            let Some(behind) = behind else { return Ok(()) };
            let mut work = behind.work;
            for i in 0..back.len() {
                let (queue, put_aside) = &mut work[i];
                let target = match reads[i] {
                    Some(u) => {
                        let watermark = back[u].watermark;
                        (watermark > back[i].watermark).then_some(watermark)
                    }
                    None => *put_aside,
                };
                let mut share = Share::new(&mut back[i], queue, target, 1);
                share.run();
                dead.append(&mut share.dead);
                let o = from + i;
                let outputs = back[i].outputs();
                let ports = outputs.iter_mut().zip(&plan.operators[o].ports);
                for (p, (writer, port)) in ports.enumerate() {
                    if writer.as_bytes().is_empty() {
                        continue;
                    }
                    let batch = Arc::new(writer.take());
                    for consumer in &port.consumers {
                        let k = match consumer.node {
                            NodeRef::Operator(t) => {
                                work[t - from].0.push_back(Queued {
                                    batch: batch.clone(),
                                    key: key_at(port, consumer.key),
                                    encoding: port.encoding,
                                    origin: None,
                                    produced: None,
                                });
                                continue;
                            }
                            NodeRef::Sink(k) => k,
                            NodeRef::Source(_) => continue,
                        };
                        match parked.iter_mut().find(|(held, ..)| *held == k) {
                            Some((_, sink, stats)) => {
                                let (sink, port) = (&mut **sink, (NodeRef::Operator(o), p));
                                write_sink(plan, port, k, &batch, sink, stats, &mut dead)?;
                            }
                            None => emitted.push((o, p, k, batch.clone())),
                        }
                    }
                }
            }
            Ok(())
        };
        let (lagging, earlier): (anyhow::Result<()>, anyhow::Result<bool>) = match earlier {
            Some((levels, read)) => {
                let here = || {
                    let progressed = self.read(read)?;
                    self.pump_levels(levels)?;
                    Ok(progressed)
                };
                beside(|| run(&mut back), here)
            }
            None => (run(&mut back), Ok(false)),
        };
        self.stages.append(&mut back);
        for (k, sink, stats) in parked {
            self.sinks[k] = sink;
            self.sink_stats[k] = stats;
        }
        lagging?;
        let progressed = earlier?;
        self.dead.append(&mut dead);
        for (o, p, k, batch) in emitted {
            let (sink, stats) = (&mut *self.sinks[k], &mut self.sink_stats[k]);
            write_sink(
                plan,
                (NodeRef::Operator(o), p),
                k,
                &batch,
                sink,
                stats,
                &mut self.dead,
            )?;
        }
        self.write_dead_letters()?;
        Ok(progressed)
    }
}

/// A sink's place while the lagging stages' thread writes it: never written.
struct Parked;

impl Sink for Parked {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(
            "a sink written while the lagging stages hold it",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> std::io::Result<Committed> {
        Err(std::io::Error::other(
            "a sink committed while the lagging stages hold it",
        ))
    }
}
