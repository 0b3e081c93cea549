//! Swapping a new version of the pipeline in, between rounds, exactly as the reload diff
//! decides.

use super::{Pipeline, SourceRuntime, boxed, new_source_runtime, upstream_of};
use crate::Prepared;
use crate::config::{ConfigErrors, SourceKind};
use crate::connectors::{Sink, SourceBatch};
use crate::diff::{OperatorStep, SinkStep, SourceStep, StateStep, diff};
use crate::plan::SourcePlan;
use crate::stage::Stage;
use crate::telemetry::{StageKind, StageStats};
use crate::window::SplitWatermarks;
use std::collections::VecDeque;
use std::time::Instant;

impl Pipeline {
    /// Swaps in a newly prepared version of the pipeline, at a batch boundary, as the reload
    /// [`diff`] decides: what did not change keeps running untouched (sources keep their place in
    /// their inputs, sinks their open files, stages their instances); a changed stage gets its
    /// new instances with the old stage's keyed state, windows and watermark; added and removed
    /// stages, sources and sinks are wired in and out. If anything cannot be done — a state that
    /// no longer fits, a sink that cannot be opened — nothing changes and the reason is returned.
    pub fn apply(&mut self, new: Prepared) -> Result<Vec<String>, ConfigErrors> {
        let started = Instant::now();
        let Prepared {
            config,
            plan,
            instances,
        } = new;
        let steps = diff(&self.plan, &plan);
        let mut errors = Vec::new();
        for conflict in &steps.conflicts {
            errors.push(conflict.error(&config));
        }
        for (i, op) in plan.operators.iter().enumerate() {
            if steps.needs_instances(i) && instances.get(i).is_none_or(Vec::is_empty) {
                errors.push(config.error(
                    &format!("operators.{}.module", op.config.name),
                    "this version was prepared against another running version; save the file \
                     again to reload it",
                ));
            }
        }
        // Open what is new before touching anything, so a failure leaves the pipeline as it is.
        let mut opened_sources = Vec::new();
        for (source, step) in plan.sources.iter().zip(&steps.sources) {
            opened_sources.push(match step {
                SourceStep::Open => match SourceKind::open(
                    &source.config,
                    self.checkpoint_dir
                        .as_ref()
                        .map(|dir| crate::checkpoint::journal_dir(dir, &source.config.name)),
                ) {
                    Ok(opened) => Some(new_source_runtime(&source.config, &source.port, opened)),
                    Err(e) => {
                        let at = format!("sources.{}", source.config.name);
                        errors.push(config.error(&at, format!("{e:#}")));
                        None
                    }
                },
                SourceStep::Keep { .. } => None,
            });
        }
        let mut opened_sinks = Vec::new();
        for (sink, step) in plan.sinks.iter().zip(&steps.sinks) {
            opened_sinks.push(match step {
                SinkStep::Open => match sink.config.kind.open() {
                    Ok(opened) => Some(opened),
                    Err(e) => {
                        let at = format!("sinks.{}", sink.config.name);
                        errors.push(config.error(&at, format!("{e:#}")));
                        None
                    }
                },
                SinkStep::Keep { .. } => None,
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }

        // Commit.
        let mut log = Vec::new();
        self.flush().ok();
        let gone = |what: &str, name: &str| format!("{what} `{name}` was taken twice by the diff");
        let mut old_sources: Vec<Option<SourceRuntime>> = std::mem::take(&mut self.sources)
            .into_iter()
            .map(Some)
            .collect();
        for ((step, source), opened) in steps.sources.iter().zip(&plan.sources).zip(opened_sources)
        {
            let name = &source.config.name;
            let runtime = match *step {
                SourceStep::Keep { old, retuned } => {
                    let mut kept = old_sources[old]
                        .take()
                        .unwrap_or_else(|| unreachable!("{}", gone("source", name)));
                    // Same input: its place is kept, its settings are the new ones, and its
                    // consumers may key it differently now.
                    if retuned {
                        log.push(format!(
                            "retuned source `{name}`, keeping its place in its input"
                        ));
                    }
                    retune(&mut kept, source);
                    kept
                }
                SourceStep::Open => {
                    log.push(format!("added source `{name}`"));
                    opened.unwrap_or_else(|| unreachable!("source `{name}` was opened above"))
                }
            };
            self.sources.push(runtime);
        }
        for &at in &steps.removed_sources {
            log.push(format!(
                "removed source `{}`",
                self.plan.sources[at].config.name
            ));
        }
        let mut old_sinks: Vec<Option<(Box<dyn Sink>, StageStats)>> =
            std::mem::take(&mut self.sinks)
                .into_iter()
                .zip(std::mem::take(&mut self.sink_stats))
                .map(Some)
                .collect();
        for ((step, sink), opened) in steps.sinks.iter().zip(&plan.sinks).zip(opened_sinks) {
            let name = &sink.config.name;
            let (sink, stats) = match *step {
                SinkStep::Keep { old } => {
                    let (sink, mut stats) = old_sinks[old]
                        .take()
                        .unwrap_or_else(|| unreachable!("{}", gone("sink", name)));
                    if stats.name != *name {
                        log.push(format!(
                            "renamed sink `{}` to `{name}`, writing on to the same output",
                            stats.name
                        ));
                    }
                    stats.name.clone_from(name);
                    (sink, stats)
                }
                SinkStep::Open => {
                    log.push(format!("added sink `{name}`"));
                    let opened =
                        opened.unwrap_or_else(|| unreachable!("sink `{name}` was opened above"));
                    (opened, StageStats::new(name, StageKind::Sink, &[]))
                }
            };
            self.sinks.push(sink);
            self.sink_stats.push(stats);
        }
        for &at in &steps.removed_sinks {
            if let Some((sink, _)) = &mut old_sinks[at] {
                sink.flush().ok();
            }
            log.push(format!(
                "removed sink `{}`",
                self.plan.sinks[at].config.name
            ));
        }

        let mut old_stages: Vec<Option<Stage>> = std::mem::take(&mut self.stages)
            .into_iter()
            .map(Some)
            .collect();
        let mut swapped = Vec::new();
        let instances = instances
            .into_iter()
            .chain(std::iter::repeat_with(Vec::new));
        for ((op, step), partitions) in plan.operators.iter().zip(&steps.operators).zip(instances) {
            let name = &op.config.name;
            let mut take = |old: usize| {
                old_stages[old]
                    .take()
                    .unwrap_or_else(|| unreachable!("{}", gone("operator", name)))
            };
            let stage = match *step {
                OperatorStep::Keep { old } => take(old),
                OperatorStep::Swap { old, state } => {
                    let mut stage = Stage::new(op, boxed(partitions));
                    let keep = state == StateStep::Keep;
                    stage.adopt(take(old), keep);
                    let hash = &op.module_hash;
                    swapped.push(format!(
                        "swapped operator `{name}` (module {}, state {})",
                        &hash[..hash.len().min(12)],
                        if keep { "kept" } else { "reset" }
                    ));
                    stage
                }
                OperatorStep::Add => {
                    log.push(format!("added operator `{name}`"));
                    Stage::new(op, boxed(partitions))
                }
            };
            self.stages.push(stage);
        }
        for &at in &steps.removed_operators {
            log.push(format!(
                "removed operator `{}`",
                self.plan.operators[at].config.name
            ));
        }
        self.upstream = upstream_of(&plan);
        self.queues = self.stages.iter().map(|_| VecDeque::new()).collect();
        self.plan = std::sync::Arc::new(plan);
        self.graph = config.graph();
        let pause = started.elapsed();
        self.swap_pauses.push(pause);
        log.extend(
            swapped
                .into_iter()
                .map(|line| format!("{line}, paused {:.2} ms", pause.as_secs_f64() * 1e3)),
        );
        Ok(log)
    }
}

/// Gives a kept source the settings of its new version (`plan`), keeping its place in its input
/// and its watermark progress.
fn retune(kept: &mut SourceRuntime, plan: &SourcePlan) {
    kept.source.retune(&plan.config);
    let earlier = kept.watermarks.take();
    kept.watermarks = plan
        .config
        .event_time
        .as_ref()
        .map(|_| SplitWatermarks::carried(earlier, plan.config.watermark_delay_ms));
    kept.stats.name.clone_from(&plan.config.name);
    let newest = kept.batch.newest;
    kept.batch = SourceBatch::new(plan.port.key_fields.clone(), plan.config.event_time.clone())
        .with_max_future(plan.config.max_future_ms)
        .with_reader(plan.port.parsed.clone());
    kept.batch.newest = newest;
}
