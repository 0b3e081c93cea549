//! One operator stage at run time: its partitions (each an instance of the module with its share
//! of the keys), the host-owned keyed state and window accumulators of each partition, and what
//! the stage has emitted but not yet handed downstream.
//!
//! Per key, records are processed in arrival order: a key always hashes to the same partition,
//! and a partition processes its records in order. State changes returned by the guest are
//! applied only when the whole call succeeded; a failed call is retried in halves, so a
//! poison record changes nothing and loses nothing but itself.

use crate::config::{OnStateChange, OperatorConfig, StageLimits};
use crate::dead_letter::DeadLetters;
use crate::plan::OperatorPlan;
use crate::sandbox::{GuestFailure, OperatorInstance};
use crate::stats::{StageKind, StageStats};
use crate::window::{Bounds, SessionSet, WindowSpec};
use flumen_sdk::abi::{
    BatchReader, BatchWriter, Encoding, OperatorKind, OutputEntry, OutputReader, OutputWriter,
    RecordRef, SlotRefs, SlotWriter,
};
use rustc_hash::FxHashMap;
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::time::Instant;

/// The shortest step (expected, in nanoseconds) whose partitions run on worker threads.
const PARALLEL_STEP_NS: f64 = 300_000.0;

/// A key, a state value or an accumulator: inline up to 16 bytes (ids, skus, flags, counters,
/// sums), so most entries of a large state cost no allocation of their own.
type Bytes = SmallVec<[u8; 16]>;

/// A long-lived map keyed by data: seeded hashing (foldhash), fast and not predictable from
/// outside. Maps that live for one batch use FxHash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A fired window: its bounds, its key, its accumulator.
type Fired = (Bounds, Bytes, Bytes);

/// The state of one key of a `process` stage.
struct StateEntry {
    value: Bytes,
    /// Event time from which the entry may be dropped (time-to-live).
    expires: Option<i64>,
}

/// The accumulator of one window; `fired` once its result was emitted (it stays while allowed
/// lateness lasts).
#[derive(Clone)]
struct WindowAcc {
    acc: Bytes,
    fired: bool,
}

/// A session being worked on during one call: the stored accumulators it merges, and the new
/// records it takes.
#[derive(Default)]
struct SessionWork {
    accs: Vec<Bytes>,
    records: Vec<usize>,
    fired: bool,
}

/// The time-outs a failed batch may still spend on retries.
struct Timeouts {
    left: usize,
    spent: usize,
}

impl Timeouts {
    fn note(&mut self, failure: &GuestFailure) {
        if failure.is_timeout() {
            self.left = self.left.saturating_sub(1);
            self.spent += 1;
        }
    }
}

/// A call of an instance on a request (its parts), like [`OperatorInstance::process`].
type GuestCall = for<'a> fn(&'a mut OperatorInstance, &[&[u8]]) -> Result<&'a [u8], GuestFailure>;

/// Where the accumulator of a session's add slot starts from: the stored one (none yet), or the
/// target of a merge.
#[derive(Clone, Copy)]
enum Start<'a> {
    Stored(Option<&'a [u8]>),
    Merged(u32),
}

/// One partition: an instance and the state of its keys.
struct Partition {
    instance: OperatorInstance,
    state: Map<Bytes, StateEntry>,
    /// Tumbling and sliding windows, by end, then key.
    windows: BTreeMap<i64, Map<Bytes, WindowAcc>>,
    /// Session windows per key, and their firing order (end, key, start).
    sessions: Map<Bytes, SessionSet<WindowAcc>>,
    session_ends: BTreeSet<(i64, Bytes, i64)>,
    /// Sliding windows kept as panes: the end of the last window fired.
    panes_fired_until: Option<i64>,
    /// The batch and state slots of the next guest call, reused from call to call.
    batch: BatchWriter,
    slots: SlotWriter,
    /// What this partition emitted, counted and dead-lettered in the current step; the stage
    /// collects it after the step (partitions of a stage run on threads of their own).
    pending: Pending,
    counts: Counts,
    dead: DeadLetters,
    /// Bytes of keyed state (keys and values) this partition keeps.
    state_bytes: usize,
}

/// What a partition reads of its stage during a step.
struct Ctx<'a> {
    name: &'a str,
    watermark: i64,
    guest_ports: usize,
    behaviour: Behaviour,
    /// How the values of the step's records are encoded.
    encoding: Encoding,
    rules: Rules,
}

/// What a stage's module may do and must answer, fixed when the stage is built.
#[derive(Clone, Copy)]
struct Rules {
    kind: OperatorKind,
    limits: StageLimits,
    /// The most state bytes one partition may keep (the stage's limit split evenly).
    max_partition_state: usize,
}

/// Counts of a partition's step, added to the stage's statistics afterwards.
#[derive(Default)]
struct Counts {
    dead_letters: u64,
    /// Input records that led to at least one record.
    produced: u64,
    /// Input records that led to nothing (filtered out, or only changed state).
    filtered: u64,
    /// Input records added to windows.
    windowed: u64,
    /// Input records too late for every window.
    late: u64,
    /// Records emitted, per port.
    outputs: Vec<u64>,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Stateless,
    Keyed { ttl: Option<i64> },
    Window { spec: WindowSpec, lateness: i64 },
}

/// Records emitted by a partition in one step, with the position that orders them: the input
/// record they came from (so a key's records leave in the order they arrived, whatever the
/// partitioning) or a fired window's rank.
#[derive(Default)]
struct Pending {
    /// With one partition, what the stage emitted, per port, not yet handed downstream.
    outputs: Vec<OutputWriter>,
    /// With one partition, outputs are already in order and go straight to `outputs`.
    direct: bool,
    scratch: OutputWriter,
    order: Vec<(u64, u16, usize, usize)>,
    /// Positions of the input records that went to the dead letters.
    failed: Vec<u64>,
}

impl Pending {
    /// Appends a record entry for `port` at `position`, written by `write`.
    fn record(&mut self, port: u16, position: u64, write: impl FnOnce(&mut OutputWriter)) {
        if self.direct {
            write(&mut self.outputs[usize::from(port)]);
            return;
        }
        let start = self.scratch.as_bytes().len();
        write(&mut self.scratch);
        let end = self.scratch.as_bytes().len();
        self.order.push((position, port, start, end));
    }
}

/// One operator stage.
pub(crate) struct Stage {
    pub name: String,
    behaviour: Behaviour,
    partitions: Vec<Partition>,
    /// The stage's current watermark.
    pub watermark: i64,
    pub stats: StageStats,
    guest_ports: usize,
    last_sweep: i64,
    /// With several partitions: what the stage emitted, per port, merged in order from the
    /// partitions' pending records (`order` is the merge's buffer).
    outputs: Vec<OutputWriter>,
    order: Vec<(u64, usize, u16, usize, usize)>,
    /// Positions of the input records of the last step that went to the dead letters.
    failed: Vec<u64>,
    /// What a record has cost this stage, on average over recent sequential steps.
    ns_per_record: f64,
    /// What the stage was built from, to tell on reload whether it changed.
    config: OperatorConfig,
    module_hash: String,
    state_type: Option<String>,
    rules: Rules,
}

impl Stage {
    /// A stage running `instances` (one per partition) as `plan` says.
    pub fn new(plan: &OperatorPlan, instances: Vec<OperatorInstance>) -> Self {
        let module_hash = instances
            .first()
            .map(|i| i.module().hash.clone())
            .unwrap_or_default();
        let behaviour = match (plan.describe.kind, plan.config.window) {
            (OperatorKind::Aggregate, Some(spec)) => Behaviour::Window {
                spec,
                lateness: plan.config.allowed_lateness_ms,
            },
            (OperatorKind::Process, _) => Behaviour::Keyed {
                ttl: plan.config.state_ttl_ms,
            },
            _ => Behaviour::Stateless,
        };
        let ports: Vec<&str> = plan.ports.iter().map(|p| p.name.as_str()).collect();
        let writers = || plan.ports.iter().map(|_| OutputWriter::default()).collect();
        Stage {
            name: plan.config.name.clone(),
            behaviour,
            partitions: instances
                .into_iter()
                .map(|instance| Partition {
                    instance,
                    state: Map::default(),
                    windows: BTreeMap::new(),
                    sessions: Map::default(),
                    session_ends: BTreeSet::new(),
                    panes_fired_until: None,
                    batch: BatchWriter::new(Encoding::Bincode),
                    slots: SlotWriter::default(),
                    pending: Pending {
                        outputs: writers(),
                        direct: plan.partitions == 1,
                        ..Pending::default()
                    },
                    counts: Counts {
                        outputs: vec![0; ports.len()],
                        ..Counts::default()
                    },
                    dead: DeadLetters::default(),
                    state_bytes: 0,
                })
                .collect(),
            watermark: i64::MIN,
            stats: StageStats::new(&plan.config.name, StageKind::Operator, &ports),
            guest_ports: plan.guest_ports().len(),
            last_sweep: i64::MIN,
            outputs: writers(),
            order: Vec::new(),
            failed: Vec::new(),
            // Unknown at first: assume records are costly (the first steps of a keyed stage
            // run in parallel), and learn.
            ns_per_record: PARALLEL_STEP_NS,
            config: plan.config.clone(),
            module_hash: module_hash.to_string(),
            state_type: plan.describe.state_type.clone(),
            rules: Rules {
                kind: plan.describe.kind,
                limits: plan.config.limits,
                max_partition_state: plan.config.limits.max_state_bytes / plan.partitions.max(1),
            },
        }
    }

    /// Whether the stage `plan` describes is this one: same module bytes, same settings (its
    /// inputs may differ), same partitions.
    pub fn is_same_as(&self, plan: &OperatorPlan, module_hash: &str) -> bool {
        let mut old = self.config.clone();
        let mut new = plan.config.clone();
        old.inputs.clear();
        new.inputs.clear();
        old == new && self.module_hash == module_hash && self.partitions.len() == plan.partitions
    }

    /// Why this stage's state cannot carry over to the stage `plan` describes, if it cannot.
    pub fn state_conflict(&self, plan: &OperatorPlan) -> Option<String> {
        if plan.config.on_state_change == OnStateChange::Reset {
            return None;
        }
        if self.state_type != plan.describe.state_type {
            return Some(format!(
                "the new module keeps `{}` where the running one keeps `{}`",
                plan.describe.state_type.as_deref().unwrap_or("no state"),
                self.state_type.as_deref().unwrap_or("no state"),
            ));
        }
        if self.state_type.is_some() && self.config.key_by != plan.config.key_by {
            return Some("the stage's `key_by` changed, so its state is keyed differently".into());
        }
        if self.config.window != plan.config.window
            || (self.config.window.is_some()
                && self.config.allowed_lateness_ms != plan.config.allowed_lateness_ms)
        {
            return Some(
                "the stage's `window` or `allowed_lateness_ms` changed, so its windows no longer fit"
                    .into(),
            );
        }
        None
    }

    /// Takes over `old`'s keyed state, windows, watermark and counts (the state spread over this
    /// stage's partitions by key), unless the state no longer fits and the new stage asks for a
    /// reset. Returns whether the state was kept.
    pub fn adopt(&mut self, old: Stage) -> bool {
        self.watermark = old.watermark;
        self.last_sweep = old.last_sweep;
        self.stats.records_in = old.stats.records_in;
        self.stats.dead_letters = old.stats.dead_letters;
        for (new, (name, n)) in self.stats.outputs.iter_mut().zip(&old.stats.outputs) {
            if new.0 == *name {
                new.1 = *n;
            }
        }
        if self.config.on_state_change == OnStateChange::Reset && old.state_conflict_with(self) {
            return false;
        }
        let count = self.partitions.len();
        let home = |key: &[u8]| {
            if count == 1 {
                0
            } else {
                partition_of(key, count)
            }
        };
        // Windows fired from panes must not fire again, whichever partition their keys land in.
        let fired_until = old
            .partitions
            .iter()
            .filter_map(|p| p.panes_fired_until)
            .max();
        for partition in &mut self.partitions {
            partition.panes_fired_until = fired_until;
        }
        for partition in old.partitions {
            for (key, entry) in partition.state {
                self.partitions[home(&key)].state.insert(key, entry);
            }
            for (end, keyed) in partition.windows {
                for (key, acc) in keyed {
                    let target = &mut self.partitions[home(&key)].windows;
                    target.entry(end).or_default().insert(key, acc);
                }
            }
            for (key, set) in partition.sessions {
                let target = &mut self.partitions[home(&key)];
                for (bounds, _) in &set.sessions {
                    target
                        .session_ends
                        .insert((bounds.end, key.clone(), bounds.start));
                }
                target.sessions.insert(key, set);
            }
        }
        for partition in &mut self.partitions {
            partition.state_bytes = state_bytes(partition);
        }
        true
    }

    /// What the stage emitted, per port, not yet handed downstream (output-entry framing).
    pub fn outputs(&mut self) -> &mut [OutputWriter] {
        match self.partitions.as_mut_slice() {
            [only] => &mut only.pending.outputs,
            _ => &mut self.outputs,
        }
    }

    /// The hash of the module this stage runs.
    pub fn module_hash(&self) -> &str {
        &self.module_hash
    }

    /// Whether `new`'s state would not fit this stage's (what `state_conflict` checks, whatever
    /// `on_state_change` says).
    fn state_conflict_with(&self, new: &Stage) -> bool {
        self.state_type != new.state_type
            || (self.state_type.is_some() && self.config.key_by != new.config.key_by)
            || self.config.window != new.config.window
            || self.config.allowed_lateness_ms != new.config.allowed_lateness_ms
    }

    /// Takes a batch from upstream (output-entry framing, values in `encoding`), keyed by the
    /// port's key number `key`, and processes it partition by partition. Returns the indices of
    /// the batch's records that went to the dead letters.
    pub fn accept(
        &mut self,
        batch: &[u8],
        key: Option<usize>,
        encoding: Encoding,
        dead: &mut DeadLetters,
    ) -> Vec<u64> {
        let count = self.partitions.len();
        // Each partition's records, borrowed from the batch, and their positions in it.
        let mut records: Vec<Vec<RecordRef<'_>>> = vec![Vec::new(); count];
        let mut globals: Vec<Vec<u64>> = vec![Vec::new(); count];
        // A stateless stage without a key takes contiguous runs of the batch instead (below).
        let runs = matches!(self.behaviour, Behaviour::Stateless) && key.is_none() && count > 1;
        // A plain loop: this is the hottest one of a cheap stage, and iterator adapters over
        // `Result<OutputEntry>` showed up in its profile moving entries around.
        let mut reader = OutputReader::new(batch);
        let mut next = 0;
        while let Some(Ok(entry)) = reader.next() {
            let index = next;
            next += 1;
            let OutputEntry::Record {
                ts, keys, value, ..
            } = entry
            else {
                continue;
            };
            let k = key.and_then(|k| keys.get(k)).unwrap_or_default();
            let p = if count == 1 || runs {
                0
            } else {
                partition_of(k, count)
            };
            records[p].push(RecordRef {
                key: k,
                ts,
                slots: SlotRefs::default(),
                value,
            });
            globals[p].push(index);
        }
        if runs {
            let (all, positions) = (
                std::mem::take(&mut records[0]),
                std::mem::take(&mut globals[0]),
            );
            let run = all.len().div_ceil(count).max(1);
            for (p, (all, positions)) in all.chunks(run).zip(positions.chunks(run)).enumerate() {
                records[p] = all.to_vec();
                globals[p] = positions.to_vec();
            }
        }
        let total: usize = records.iter().map(Vec::len).sum();
        self.stats.records_in += total as u64;
        let ctx = Ctx {
            name: &self.name,
            watermark: self.watermark,
            guest_ports: self.guest_ports,
            behaviour: self.behaviour,
            encoding,
            rules: self.rules,
        };
        let busy = records.iter().filter(|r| !r.is_empty()).count();
        // Handing a partition to a worker thread costs some microseconds: worth it only when
        // the step is long enough, judged from what records of this stage have cost so far.
        let expected = total as f64 * self.ns_per_record;
        let work = self.partitions.iter_mut().zip(&records).zip(&globals);
        let started = Instant::now();
        let threads = if busy > 1 && expected >= PARALLEL_STEP_NS {
            in_parallel(work, |((partition, records), globals)| {
                partition.run(&ctx, records, globals)
            })
        } else {
            for ((partition, records), globals) in work {
                partition.run(&ctx, records, globals);
            }
            1
        };
        if total > 0 {
            // Time on every thread used, per record (parallel steps are assumed even).
            let ns = (started.elapsed().as_nanos() as f64) * threads as f64 / total as f64;
            self.ns_per_record = 0.8 * self.ns_per_record + 0.2 * ns;
        }
        self.collect(dead);
        std::mem::take(&mut self.failed)
    }

    /// Gathers what the partitions did in a step: counts, dead letters, failed positions, and
    /// (with several partitions) their records, merged in position order into the stage's ports.
    fn collect(&mut self, dead: &mut DeadLetters) {
        for partition in &mut self.partitions {
            let counts = &mut partition.counts;
            self.stats.dead_letters += std::mem::take(&mut counts.dead_letters);
            self.stats.produced += std::mem::take(&mut counts.produced);
            self.stats.filtered += std::mem::take(&mut counts.filtered);
            self.stats.windowed += std::mem::take(&mut counts.windowed);
            self.stats.late += std::mem::take(&mut counts.late);
            for (total, n) in self.stats.outputs.iter_mut().zip(&mut counts.outputs) {
                total.1 += std::mem::take(n);
            }
            dead.append(&mut partition.dead);
            self.failed.append(&mut partition.pending.failed);
        }
        if self.partitions.len() == 1 {
            return;
        }
        for (p, partition) in self.partitions.iter().enumerate() {
            let order = partition.pending.order.iter();
            self.order
                .extend(order.map(|&(at, port, start, end)| (at, p, port, start, end)));
        }
        // Stable: entries at one position (fired windows, late records) keep partition order.
        self.order.sort_by_key(|(position, ..)| *position);
        for &(_, p, port, start, end) in &self.order {
            let scratch = &self.partitions[p].pending.scratch;
            self.outputs[usize::from(port)].append_encoded(&scratch.as_bytes()[start..end]);
        }
        self.order.clear();
        for partition in &mut self.partitions {
            partition.pending.order.clear();
            partition.pending.scratch.clear();
        }
    }

    /// Advances the stage's watermark: fires the windows it completes, forgets expired state.
    pub fn advance(&mut self, watermark: i64, dead: &mut DeadLetters) {
        if watermark <= self.watermark {
            return;
        }
        self.watermark = watermark;
        match self.behaviour {
            Behaviour::Stateless => {}
            Behaviour::Keyed { ttl: Some(ttl) } => {
                if watermark.saturating_sub(self.last_sweep) >= ttl / 2 {
                    self.last_sweep = watermark;
                    for partition in &mut self.partitions {
                        let bytes = &mut partition.state_bytes;
                        partition.state.retain(|key, e| {
                            let keep = e.expires.is_none_or(|at| at > watermark);
                            if !keep {
                                *bytes = bytes.saturating_sub(key.len() + e.value.len());
                            }
                            keep
                        });
                    }
                }
            }
            Behaviour::Keyed { ttl: None } => {}
            Behaviour::Window { spec, lateness } => {
                // Fire in (end, key) order across partitions, so the order of results does not
                // depend on how keys are spread.
                let mut due: Vec<(Bounds, Bytes, Bytes, usize)> = Vec::new();
                for p in 0..self.partitions.len() {
                    let fired = match (pane_size(spec, lateness), spec) {
                        (Some(slide), WindowSpec::Sliding { size_ms, .. }) => {
                            match take_due_panes(&mut self.partitions[p], size_ms, slide, watermark)
                            {
                                Ok(fired) => fired,
                                Err(failure) => {
                                    self.stats.dead_letters += 1;
                                    let raw = format!("windows of partition {p} up to {watermark}");
                                    dead.push(
                                        &self.name,
                                        &format!("merge {}", failure.0),
                                        raw.as_bytes(),
                                    );
                                    Vec::new()
                                }
                            }
                        }
                        _ => take_due(&mut self.partitions[p], spec, watermark, lateness),
                    };
                    due.extend(fired.into_iter().map(|(b, k, a)| (b, k, a, p)));
                }
                due.sort_by(|a, b| (a.0.end, &a.1, a.0.start).cmp(&(b.0.end, &b.1, b.0.start)));
                let mut per_partition: Vec<Vec<Fired>> = vec![Vec::new(); self.partitions.len()];
                let mut ranks: Vec<Vec<u64>> = vec![Vec::new(); self.partitions.len()];
                for (rank, (bounds, key, acc, p)) in due.into_iter().enumerate() {
                    per_partition[p].push((bounds, key, acc));
                    ranks[p].push(rank as u64);
                }
                let ctx = Ctx {
                    name: &self.name,
                    watermark: self.watermark,
                    guest_ports: self.guest_ports,
                    behaviour: self.behaviour,
                    encoding: Encoding::Bincode,
                    rules: self.rules,
                };
                let work = self.partitions.iter_mut().zip(per_partition).zip(&ranks);
                if ranks.iter().filter(|r| !r.is_empty()).count() > 1 {
                    in_parallel(work, |((partition, windows), ranks)| {
                        partition.finish_ranked(&ctx, windows, ranks)
                    });
                } else {
                    for ((partition, windows), ranks) in work {
                        partition.finish_ranked(&ctx, windows, ranks);
                    }
                }
                self.collect(dead);
            }
        }
    }
}

impl Partition {
    /// Runs the partition over `records` (the positions of which in the stage's input are
    /// `globals`); if the call fails, in halves (see [`Partition::bisect`]).
    fn run(&mut self, ctx: &Ctx, records: &[RecordRef], globals: &[u64]) {
        if records.is_empty() {
            return;
        }
        if let Behaviour::Window { spec, .. } = ctx.behaviour
            && records.iter().any(|r| spec.fits(r.ts).is_err())
        {
            // Records whose windows cannot be represented are not windowed: dead letters.
            let (mut kept, mut kept_globals) = (Vec::new(), Vec::new());
            for (i, record) in records.iter().enumerate() {
                let global = globals.get(i).copied().unwrap_or(u64::MAX);
                match spec.fits(record.ts) {
                    Ok(()) => {
                        kept.push(*record);
                        kept_globals.push(global);
                    }
                    Err(e) => self.dead_letter(ctx, record, global, &e.to_string()),
                }
            }
            return self.run(ctx, &kept, &kept_globals);
        }
        if let Err(failure) = self.try_run(ctx, records, globals) {
            tracing::debug!(stage = %ctx.name, %failure, "batch failed; retrying it in halves");
            // Time-outs a batch may spend finding its poison records: two per level of halving,
            // and one for the whole batch.
            let levels = usize::BITS - records.len().leading_zeros();
            let mut timeouts = Timeouts {
                left: 2 * levels as usize + 1,
                spent: 0,
            };
            timeouts.note(&failure);
            self.bisect(ctx, records, globals, failure, &mut timeouts);
        }
    }

    /// After a call on `records` failed with `failure`: runs each half again, and so on, until
    /// the records that fail alone are found; they become dead letters. Order is kept (halves
    /// run left first) and a failed call changes nothing, so the outcome is that of a record by
    /// record retry — at the cost of about 2·k·log2(n) failed calls for k poison records among
    /// n, instead of n + 1 (what bounds a looping module to a few timeouts per batch).
    ///
    /// Time-outs are what make a retry slow (a trap is instant), so a batch spends at most
    /// 2·⌈log2(n + 1)⌉ + 1 of them — enough to find two looping records — and the records still
    /// undecided after that are dead letters without another call: a module that loops on
    /// every record costs a batch of 1024 at most 23 time-outs, not 2047.
    fn bisect(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        failure: GuestFailure,
        timeouts: &mut Timeouts,
    ) {
        let at = |i: usize| globals.get(i).copied().unwrap_or(u64::MAX);
        if let [record] = records {
            return self.dead_letter(ctx, record, at(0), &failure.0);
        }
        let middle = records.len() / 2;
        let (left, right) = records.split_at(middle);
        let (left_at, right_at) = globals.split_at(middle.min(globals.len()));
        for (half, half_at) in [(left, left_at), (right, right_at)] {
            if timeouts.left == 0 {
                let why = format!(
                    "not retried: the module exceeded its time limit on {} calls of this batch \
                     (timeout_ms)",
                    timeouts.spent
                );
                for (i, record) in half.iter().enumerate() {
                    let global = half_at.get(i).copied().unwrap_or(u64::MAX);
                    self.dead_letter(ctx, record, global, &why);
                }
                continue;
            }
            if let Err(failure) = self.try_run(ctx, half, half_at) {
                timeouts.note(&failure);
                self.bisect(ctx, half, half_at, failure, timeouts);
            }
        }
    }

    /// Counts what became of the inputs of a successful call (`flags` per input): those that
    /// led to records, and those that led to nothing — filtered out, except under a `map`,
    /// which must answer every record: there, a record left unanswered is a dead letter.
    fn account(&mut self, ctx: &Ctx, records: &[RecordRef], globals: &[u64], flags: &[u8]) {
        for (i, &flag) in flags.iter().enumerate() {
            match flag {
                0 if ctx.rules.kind == OperatorKind::Map => {
                    let global = globals.get(i).copied().unwrap_or(u64::MAX);
                    if let Some(record) = records.get(i) {
                        self.dead_letter(
                            ctx,
                            record,
                            global,
                            "module returned nothing for this record; a map emits one record \
                             per input (a protocol error)",
                        );
                    }
                }
                0 => self.counts.filtered += 1,
                f if f & FAILED == 0 => self.counts.produced += 1,
                _ => {}
            }
        }
    }

    /// Sends `record` (at position `global`) to the dead letters, rendered as JSON.
    fn dead_letter(&mut self, ctx: &Ctx, record: &RecordRef, global: u64, error: &str) {
        let raw = match ctx.encoding {
            Encoding::Json => record.value.to_vec(),
            Encoding::Bincode => {
                self.batch.clear(ctx.encoding);
                self.batch.push(record.key, record.ts, record.value);
                render_json(&mut self.instance, self.batch.as_bytes())
                    .unwrap_or_else(|| format!("<{} bytes>", record.value.len()).into_bytes())
            }
        };
        self.counts.dead_letters += 1;
        self.pending.failed.push(global);
        self.dead.push(ctx.name, error, &raw);
    }

    fn try_run(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
    ) -> Result<(), GuestFailure> {
        match ctx.behaviour {
            Behaviour::Stateless => {
                self.batch.clear(ctx.encoding);
                for record in records {
                    self.batch.push(record.key, record.ts, record.value);
                }
                let output = self.instance.process(&[self.batch.as_bytes()])?;
                let checked = check(output, Expect::of(ctx, ctx.guest_ports, 0, records.len()))?;
                apply_records(
                    output,
                    &checked,
                    &mut self.pending,
                    globals,
                    &mut self.counts,
                    &mut self.dead,
                    ctx.name,
                    |_, _| {},
                );
                self.account(ctx, records, globals, &checked.inputs);
                Ok(())
            }
            Behaviour::Keyed { ttl } => self.run_keyed(ctx, records, globals, ttl),
            Behaviour::Window { spec, lateness } if spec.is_merging() => {
                self.run_sessions(ctx, records, globals, spec, lateness)
            }
            Behaviour::Window { spec, lateness } => {
                self.run_windows(ctx, records, globals, spec, lateness)
            }
        }
    }

    fn run_keyed(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        ttl: Option<i64>,
    ) -> Result<(), GuestFailure> {
        let watermark = ctx.watermark;
        let slots = &mut self.slots;
        slots.clear();
        let mut slot_of: FxHashMap<&[u8], u32> =
            FxHashMap::with_capacity_and_hasher(records.len(), Default::default());
        let mut slot_keys: Vec<&[u8]> = Vec::new();
        let mut slot_ts: Vec<i64> = Vec::new();
        let rebuilt = &mut self.batch;
        rebuilt.clear(ctx.encoding);
        for record in records {
            let slot = *slot_of.entry(record.key).or_insert_with(|| {
                let stored = self
                    .state
                    .get(record.key)
                    .filter(|e| e.expires.is_none_or(|at| at > watermark))
                    .map(|e| e.value.as_slice());
                slot_keys.push(record.key);
                slot_ts.push(record.ts);
                slots.push(record.key, stored)
            });
            let latest = &mut slot_ts[slot as usize];
            *latest = (*latest).max(record.ts);
            rebuilt.push_with(record.key, record.ts, &[slot], |b| {
                b.extend_from_slice(record.value)
            });
        }
        let output = self
            .instance
            .process(&[rebuilt.as_bytes(), slots.as_bytes()])?;
        let checked = check(
            output,
            Expect::of(ctx, ctx.guest_ports, slots.len(), records.len()),
        )?;
        // The state the call leaves, measured before anything is applied.
        let mut bytes = self.state_bytes as i64;
        for &(slot, len) in &checked.states {
            let key = slot_keys[slot as usize];
            let old = self.state.get(key).map_or(0, |e| key.len() + e.value.len());
            let new = len.map_or(0, |len| key.len() + len);
            bytes += new as i64 - old as i64;
        }
        self.state_bytes = within_state_limit(ctx, bytes)?;
        let state = &mut self.state;
        apply_records(
            output,
            &checked,
            &mut self.pending,
            globals,
            &mut self.counts,
            &mut self.dead,
            ctx.name,
            |slot, value| {
                let key = slot_keys[slot as usize];
                let Some(value) = value else {
                    state.remove(key);
                    return;
                };
                let expires = ttl.map(|t| slot_ts[slot as usize].saturating_add(t));
                match state.get_mut(key) {
                    Some(entry) => {
                        entry.value.clear();
                        entry.value.extend_from_slice(value);
                        entry.expires = expires;
                    }
                    None => {
                        let value = Bytes::from_slice(value);
                        state.insert(Bytes::from_slice(key), StateEntry { value, expires });
                    }
                }
            },
        );
        self.account(ctx, records, globals, &checked.inputs);
        Ok(())
    }

    fn run_windows(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        spec: WindowSpec,
        lateness: i64,
    ) -> Result<(), GuestFailure> {
        let encoding = ctx.encoding;
        let watermark = ctx.watermark;
        let slots = &mut self.slots;
        slots.clear();
        let mut slot_of: FxHashMap<(i64, &[u8]), u32> =
            FxHashMap::with_capacity_and_hasher(records.len() * 2, Default::default());
        let mut slot_windows: Vec<(Bounds, &[u8])> = Vec::new();
        let rebuilt = &mut self.batch;
        rebuilt.clear(encoding);
        let mut late = BatchWriter::new(encoding);
        let mut bounds = Vec::new();
        let mut refs = Vec::new();
        let mut late_globals = Vec::new();
        let panes = pane_size(spec, lateness);
        for (i, record) in records.iter().enumerate() {
            match (panes, spec) {
                (Some(slide), WindowSpec::Sliding { size_ms, .. }) => {
                    // The record goes to its pane; it is late when the last window holding the
                    // pane has fired.
                    let start = record.ts - record.ts.rem_euclid(slide);
                    bounds.clear();
                    if start.saturating_add(size_ms - 1) > watermark {
                        bounds.push(Bounds {
                            start,
                            end: start + slide,
                        });
                    }
                }
                _ => spec.assign(record.ts, &mut bounds),
            }
            refs.clear();
            for window in bounds
                .iter()
                .filter(|w| panes.is_some() || !w.is_fired(watermark, lateness))
            {
                let slot = *slot_of.entry((window.end, record.key)).or_insert_with(|| {
                    let stored = self
                        .windows
                        .get(&window.end)
                        .and_then(|keyed| keyed.get(record.key))
                        .map(|w| w.acc.as_slice());
                    slot_windows.push((*window, record.key));
                    slots.push(record.key, stored)
                });
                refs.push(slot);
            }
            if refs.is_empty() {
                late.push(record.key, record.ts, record.value);
                late_globals.push(globals.get(i).copied().unwrap_or(u64::MAX));
            } else {
                rebuilt.push_with(record.key, record.ts, &refs, |b| {
                    b.extend_from_slice(record.value)
                });
            }
        }
        let mut refire = Vec::new();
        if !rebuilt.is_empty() {
            let output = self
                .instance
                .process(&[rebuilt.as_bytes(), slots.as_bytes()])?;
            let checked = check(output, Expect::of(ctx, 0, slots.len(), rebuilt.len()))?;
            // The accumulators the call leaves, measured before anything is applied.
            let mut bytes = self.state_bytes as i64;
            for &(slot, len) in &checked.states {
                // A cleared accumulator is left as it was (see the apply below).
                let Some(len) = len else { continue };
                let (window, key) = slot_windows[slot as usize];
                let old = self
                    .windows
                    .get(&window.end)
                    .and_then(|keyed| keyed.get(key))
                    .map_or(0, |w| key.len() + w.acc.len());
                bytes += (key.len() + len) as i64 - old as i64;
            }
            self.state_bytes = within_state_limit(ctx, bytes)?;
            self.counts.windowed +=
                checked.inputs.iter().filter(|f| *f & FAILED == 0).count() as u64;
            let windows = &mut self.windows;
            apply_records(
                output,
                &checked,
                &mut self.pending,
                globals,
                &mut self.counts,
                &mut self.dead,
                ctx.name,
                |slot, value| {
                    let (window, key) = slot_windows[slot as usize];
                    let Some(acc) = value else { return };
                    let keyed = windows.entry(window.end).or_default();
                    let entry = match keyed.get_mut(key) {
                        Some(entry) => entry,
                        None => keyed.entry(Bytes::from_slice(key)).or_insert(WindowAcc {
                            acc: Bytes::new(),
                            fired: false,
                        }),
                    };
                    entry.acc.clear();
                    entry.acc.extend_from_slice(acc);
                    if entry.fired {
                        refire.push((window, Bytes::from_slice(key), entry.acc.clone()));
                    }
                },
            );
        }
        self.emit_late(ctx, &late, &late_globals);
        self.finish(ctx, refire, u64::MAX);
        Ok(())
    }

    fn run_sessions(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        spec: WindowSpec,
        lateness: i64,
    ) -> Result<(), GuestFailure> {
        let encoding = ctx.encoding;
        let watermark = ctx.watermark;
        // Work on copies of the touched keys' sessions; the store changes only on success.
        let mut work: BTreeMap<&[u8], SessionSet<SessionWork>> = BTreeMap::new();
        let mut late = BatchWriter::new(encoding);
        let mut late_globals = Vec::new();
        let mut bounds = Vec::new();
        for (index, record) in records.iter().enumerate() {
            let sessions = work.entry(record.key).or_insert_with(|| SessionSet {
                sessions: self
                    .sessions
                    .get(record.key)
                    .map(|set| {
                        set.sessions
                            .iter()
                            .map(|(b, w)| {
                                (
                                    *b,
                                    SessionWork {
                                        accs: vec![w.acc.clone()],
                                        records: Vec::new(),
                                        fired: w.fired,
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            spec.assign(record.ts, &mut bounds);
            let window = bounds[0];
            let merged_would_be_late =
                !sessions.touches(&window) && window.is_fired(watermark, lateness);
            if merged_would_be_late {
                late.push(record.key, record.ts, record.value);
                late_globals.push(globals.get(index).copied().unwrap_or(u64::MAX));
                continue;
            }
            sessions.merge_in(window, |parts| {
                let mut merged = SessionWork::default();
                for part in parts {
                    merged.accs.extend(part.accs);
                    merged.records.extend(part.records);
                    merged.fired |= part.fired;
                }
                merged.records.push(index);
                merged
            });
        }

        // Merge the stored accumulators of sessions a record bridged, then add the records. The
        // add slots are the sessions that take records, numbered in `work` order.
        let mut merge_slots = SlotWriter::default();
        let mut merges = BatchWriter::new(encoding);
        let mut adds = BatchWriter::new(encoding);
        let mut starts: Vec<(&[u8], Start)> = Vec::new();
        for (key, sessions) in &work {
            for (window, session) in &sessions.sessions {
                if session.records.is_empty() {
                    continue;
                }
                let slot = starts.len() as u32;
                let start = if session.accs.len() >= 2 {
                    let target = merge_slots.push(key, None);
                    let sources = session
                        .accs
                        .iter()
                        .map(|acc| merge_slots.push(key, Some(acc)));
                    let refs: Vec<u32> = std::iter::once(target).chain(sources).collect();
                    merges.push_with(key, window.end - 1, &refs, |_| {});
                    Start::Merged(target)
                } else {
                    Start::Stored(session.accs.first().map(|acc| &acc[..]))
                };
                starts.push((key, start));
                for &index in &session.records {
                    let record = &records[index];
                    adds.push_with(key, record.ts, &[slot], |b| {
                        b.extend_from_slice(record.value)
                    });
                }
            }
        }
        let (merged, _) = self.accumulate(ctx, OperatorInstance::merge, &merges, &merge_slots)?;
        let asked = starts
            .iter()
            .filter(|(_, start)| matches!(start, Start::Merged(_)))
            .count();
        if merged.len() < asked {
            return Err(GuestFailure(
                "merge returned fewer accumulators than asked".into(),
            ));
        }
        // The add call starts from the stored or the merged accumulators.
        let mut add_slots = SlotWriter::default();
        for &(key, start) in &starts {
            let stored = match start {
                Start::Stored(acc) => acc,
                Start::Merged(target) => merged.get(&target).map(|acc| &acc[..]),
            };
            add_slots.push(key, stored);
        }
        let (mut new_accs, windowed) =
            self.accumulate(ctx, OperatorInstance::process, &adds, &add_slots)?;

        // The sessions the call leaves, measured before anything is applied.
        let mut bytes = self.state_bytes as i64;
        let mut slot = 0;
        for (key, sessions) in &work {
            if let Some(stored) = self.sessions.get(*key) {
                for (_, w) in &stored.sessions {
                    bytes -= (key.len() + w.acc.len()) as i64;
                }
            }
            for (_, session) in &sessions.sessions {
                let acc = if session.records.is_empty() {
                    session.accs.first()
                } else {
                    slot += 1;
                    new_accs.get(&(slot - 1))
                };
                bytes += acc.map_or(0, |acc| (key.len() + acc.len()) as i64);
            }
        }
        self.state_bytes = within_state_limit(ctx, bytes)?;
        self.counts.windowed += windowed;

        // Success: the working sessions become the stored ones.
        let mut refire = Vec::new();
        drop(starts);
        let mut slot = 0;
        for (key, sessions) in work {
            let key = Bytes::from_slice(key);
            let stored = self.sessions.entry(key.clone()).or_default();
            for (b, _) in &stored.sessions {
                self.session_ends.remove(&(b.end, key.clone(), b.start));
            }
            stored.sessions.clear();
            for (window, session) in sessions.sessions {
                let acc = if session.records.is_empty() {
                    session.accs.into_iter().next()
                } else {
                    slot += 1;
                    new_accs.remove(&(slot - 1))
                };
                let Some(acc) = acc else { continue };
                if session.fired && !session.records.is_empty() {
                    refire.push((window, key.clone(), acc.clone()));
                }
                self.session_ends
                    .insert((window.end, key.clone(), window.start));
                stored.sessions.push((
                    window,
                    WindowAcc {
                        acc,
                        fired: session.fired,
                    },
                ));
            }
        }
        self.emit_late(ctx, &late, &late_globals);
        self.finish(ctx, refire, u64::MAX);
        Ok(())
    }

    /// Runs an aggregate's `call` (add or merge) over `batch` and its `slots`, unless the batch
    /// is empty; the accumulators it returns, by slot, and how many records it took.
    fn accumulate(
        &mut self,
        ctx: &Ctx,
        call: GuestCall,
        batch: &BatchWriter,
        slots: &SlotWriter,
    ) -> Result<(FxHashMap<u32, Bytes>, u64), GuestFailure> {
        if batch.is_empty() {
            return Ok((FxHashMap::default(), 0));
        }
        let output = call(&mut self.instance, &[batch.as_bytes(), slots.as_bytes()])?;
        let expect = Expect::of(ctx, 0, slots.len(), batch.len());
        let (contents, checked) =
            new_slot_contents(output, expect, &mut self.counts, &mut self.dead, ctx.name)?;
        let taken = checked.inputs.iter().filter(|f| *f & FAILED == 0).count();
        Ok((contents, taken as u64))
    }

    /// Sends records too late for every window to the `late` port, rendered as JSON by the
    /// module: `{"stage": …, "record": …}`. A late record the module cannot render is a dead
    /// letter, never lost.
    fn emit_late(&mut self, ctx: &Ctx, late: &BatchWriter, globals: &[u64]) {
        if late.is_empty() {
            return;
        }
        let late_port = self.pending.outputs.len() - 1;
        let stage = serde_json::to_string(ctx.name).unwrap_or_default();
        let records: Vec<RecordRef> = match BatchReader::new(late.as_bytes()) {
            Ok(reader) => reader.flatten().collect(),
            Err(_) => Vec::new(),
        };
        // Each late record's JSON text, or why there is none.
        let mut json: Vec<Result<Vec<u8>, String>> = match ctx.encoding {
            Encoding::Json => records.iter().map(|r| Ok(r.value.to_vec())).collect(),
            Encoding::Bincode => {
                let unanswered = Err("module did not render this late record as JSON".into());
                let mut json = vec![unanswered; records.len()];
                match self.instance.to_json(late.as_bytes()) {
                    Ok(output) => {
                        for entry in OutputReader::new(output).flatten() {
                            let (index, rendered) = match entry {
                                OutputEntry::Record {
                                    input_index, value, ..
                                } => (input_index, Ok(value.to_vec())),
                                OutputEntry::Error {
                                    input_index,
                                    message,
                                    ..
                                } => (input_index, Err(message.to_string())),
                                OutputEntry::State { .. } => continue,
                            };
                            if let Some(slot) = json.get_mut(index as usize) {
                                *slot = rendered;
                            }
                        }
                    }
                    Err(failure) => {
                        json.fill(Err(format!("late, and cannot render it: {failure}")))
                    }
                }
                json
            }
        };
        for (i, (record, rendered)) in records.iter().zip(json.drain(..)).enumerate() {
            let position = globals.get(i).copied().unwrap_or(u64::MAX);
            let rendered = match rendered {
                Ok(rendered) => rendered,
                Err(why) => {
                    self.counts.dead_letters += 1;
                    self.pending.failed.push(position);
                    let raw = format!("<late record of {} bytes>", record.value.len());
                    self.dead.push(ctx.name, &why, raw.as_bytes());
                    continue;
                }
            };
            let mut line = Vec::with_capacity(rendered.len() + stage.len() + 24);
            line.extend_from_slice(b"{\"stage\":");
            line.extend_from_slice(stage.as_bytes());
            line.extend_from_slice(b",\"record\":");
            line.extend_from_slice(&rendered);
            line.push(b'}');
            self.pending.record(late_port as u16, position, |writer| {
                let entry = writer.record(late_port as u16, i as u32, record.ts, 0);
                let _ = entry.value(|b| {
                    b.extend_from_slice(&line);
                    Ok::<_, ()>(())
                });
            });
            self.counts.outputs[late_port] += 1;
            self.counts.late += 1;
        }
    }

    /// Emits the results of fired windows, all at one position.
    fn finish(&mut self, ctx: &Ctx, windows: Vec<Fired>, position: u64) {
        let ranks = vec![position; windows.len()];
        self.finish_ranked(ctx, windows, &ranks);
    }

    /// Emits the results of fired windows, the i-th at position `ranks[i]`.
    fn finish_ranked(&mut self, ctx: &Ctx, windows: Vec<Fired>, ranks: &[u64]) {
        if windows.is_empty() {
            return;
        }
        let mut request = BatchWriter::new(Encoding::Bincode);
        for (window, key, acc) in &windows {
            request.push_with(key, window.max_timestamp(), &[], |b| {
                b.extend_from_slice(&window.start.to_le_bytes());
                b.extend_from_slice(&window.end.to_le_bytes());
                b.extend_from_slice(acc);
            });
        }
        let outcome = self
            .instance
            .finish(&[request.as_bytes()])
            .and_then(|output| {
                let checked = check(output, Expect::of(ctx, ctx.guest_ports, 0, windows.len()))?;
                apply_records(
                    output,
                    &checked,
                    &mut self.pending,
                    ranks,
                    &mut self.counts,
                    &mut self.dead,
                    ctx.name,
                    |_, _| {},
                );
                Ok(())
            });
        if let Err(failure) = outcome {
            for (window, key, _) in &windows {
                self.counts.dead_letters += 1;
                let raw = format!(
                    "window [{}, {}) of key {:?}",
                    window.start,
                    window.end,
                    String::from_utf8_lossy(key)
                );
                self.dead
                    .push(ctx.name, &format!("finish {}", failure.0), raw.as_bytes());
            }
        }
    }
}

/// Runs `task` on each of `items`: the first on this thread, the others on the worker pool, and
/// returns when all are done, with how many threads could run them at once. The pool has one
/// thread fewer than the machine has cores, so the calling thread and the workers together use
/// every core without competing for one.
fn in_parallel<T: Send>(items: impl Iterator<Item = T>, task: impl Fn(T) + Sync) -> usize {
    static WORKERS: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let workers = WORKERS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores.saturating_sub(1).max(1))
            .thread_name(|i| format!("flumen-worker-{i}"))
            .build()
            .inspect_err(|e| tracing::warn!("no worker threads, partitions run in turn: {e}"))
            .ok()
    });
    let mut items = items;
    let Some(workers) = workers else {
        items.for_each(task);
        return 1;
    };
    let task = &task;
    workers.in_place_scope(|scope| {
        let first = items.next();
        for item in items {
            scope.spawn(move |_| task(item));
        }
        if let Some(first) = first {
            task(first);
        }
    });
    workers.current_num_threads() + 1
}

/// The pane size when sliding windows are kept as panes (one accumulator per slide, merged into
/// windows when they fire): each record is added once instead of `size / slide` times. Only
/// without allowed lateness, where a fired window never changes again.
fn pane_size(spec: WindowSpec, lateness: i64) -> Option<i64> {
    match spec {
        WindowSpec::Sliding { size_ms, slide_ms } if lateness == 0 && size_ms > slide_ms => {
            Some(slide_ms)
        }
        _ => None,
    }
}

/// Fires the sliding windows `watermark` completes from the panes of `partition`: each window's
/// panes are merged (one guest call for all of them); panes no window needs any more are dropped.
fn take_due_panes(
    partition: &mut Partition,
    size: i64,
    slide: i64,
    watermark: i64,
) -> Result<Vec<Fired>, GuestFailure> {
    let (Some(&min_end), Some(&max_end)) = (
        partition.windows.keys().next(),
        partition.windows.keys().next_back(),
    ) else {
        return Ok(Vec::new());
    };
    // Window ends are multiples of the slide; the watermark completes those up to `last`.
    let first = partition
        .panes_fired_until
        .map_or(min_end, |f| f.saturating_add(slide));
    let last = watermark
        .saturating_add(1)
        .min(max_end.saturating_add(size - slide));
    let Some(last) = last.checked_sub(last.rem_euclid(slide)) else {
        return Ok(Vec::new());
    };
    if last < first {
        return Ok(Vec::new());
    }
    // Only windows holding at least one pane: the work is proportional to the panes that exist,
    // never to the span of time between them.
    let mut ends = BTreeSet::new();
    for (&pane, _) in partition.windows.range(first.saturating_sub(size)..) {
        let mut end = pane.max(first);
        let until = pane.saturating_add(size - slide).min(last);
        while end <= until {
            ends.insert(end);
            let Some(next) = end.checked_add(slide) else {
                break;
            };
            end = next;
        }
    }
    let mut request = BatchWriter::new(Encoding::Bincode);
    let mut slots = SlotWriter::default();
    let mut windows: Vec<(Bounds, Bytes, u32)> = Vec::new();
    for end in ends {
        let mut per_key: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        let from = end.saturating_sub(size).saturating_add(slide);
        for (_, keyed) in partition.windows.range(from..=end) {
            for (key, pane) in keyed {
                per_key.entry(key).or_default().push(&pane.acc);
            }
        }
        for (key, accs) in per_key {
            let target = slots.push(key, None);
            let refs: Vec<u32> = std::iter::once(target)
                .chain(accs.iter().map(|acc| slots.push(key, Some(acc))))
                .collect();
            request.push_with(key, end - 1, &refs, |_| {});
            windows.push((
                Bounds {
                    start: end.saturating_sub(size),
                    end,
                },
                Bytes::from_slice(key),
                target,
            ));
        }
    }
    partition.panes_fired_until = Some(last);
    let keep_from = last.saturating_add(slide).saturating_sub(size);
    let kept = partition.windows.split_off(&keep_from.saturating_add(1));
    let gone = std::mem::replace(&mut partition.windows, kept);
    let bytes: usize = gone
        .values()
        .flat_map(|keyed| keyed.iter())
        .map(|(k, w)| k.len() + w.acc.len())
        .sum();
    partition.state_bytes = partition.state_bytes.saturating_sub(bytes);
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let output = partition
        .instance
        .merge(&[request.as_bytes(), slots.as_bytes()])?;
    let mut merged: FxHashMap<u32, Bytes> = FxHashMap::default();
    for entry in OutputReader::new(output) {
        match entry.map_err(|e| GuestFailure(format!("module returned a malformed output: {e}")))? {
            OutputEntry::State {
                slot,
                value: Some(acc),
            } => {
                merged.insert(slot, Bytes::from_slice(acc));
            }
            OutputEntry::Error { message, .. } => return Err(GuestFailure(message.to_string())),
            _ => {}
        }
    }
    Ok(windows
        .into_iter()
        .filter_map(|(bounds, key, slot)| Some((bounds, key, merged.remove(&slot)?)))
        .collect())
}

/// Takes the windows of `partition` that `watermark` fires (marking them fired) and drops those
/// whose lateness has passed; returns `(bounds, key, accumulator)` in firing order.
fn take_due(
    partition: &mut Partition,
    spec: WindowSpec,
    watermark: i64,
    lateness: i64,
) -> Vec<Fired> {
    let mut due = Vec::new();
    let last_end = watermark.saturating_add(1);
    if spec.is_merging() {
        // Every session whose last instant `end - 1` is at or before the watermark.
        let ends: Vec<(i64, Bytes, i64)> = partition
            .session_ends
            .range(..(last_end.saturating_add(1), Bytes::new(), i64::MIN))
            .cloned()
            .collect();
        for (end, key, start) in ends {
            let bounds = Bounds { start, end };
            let Some(set) = partition.sessions.get_mut(&key) else {
                continue;
            };
            let Some(at) = set.sessions.iter().position(|(b, _)| *b == bounds) else {
                continue;
            };
            let acc = &mut set.sessions[at].1;
            if !acc.fired {
                acc.fired = true;
                due.push((bounds, key.clone(), acc.acc.clone()));
            }
            if bounds.is_fired(watermark, lateness) {
                let (_, gone) = set.sessions.remove(at);
                partition.state_bytes = partition
                    .state_bytes
                    .saturating_sub(key.len() + gone.acc.len());
                partition.session_ends.remove(&(end, key.clone(), start));
                if set.sessions.is_empty() {
                    partition.sessions.remove(&key);
                }
            }
        }
    } else {
        let size = match spec {
            WindowSpec::Tumbling { size_ms } => size_ms,
            WindowSpec::Sliding { size_ms, .. } => size_ms,
            WindowSpec::Session { gap_ms } => gap_ms,
        };
        let ends: Vec<i64> = partition
            .windows
            .range(..last_end.saturating_add(1))
            .map(|(end, _)| *end)
            .collect();
        for end in ends {
            let bounds = Bounds {
                start: end.saturating_sub(size),
                end,
            };
            let purge = bounds.is_fired(watermark, lateness);
            let Some(keyed) = partition.windows.get_mut(&end) else {
                continue;
            };
            for (key, window) in keyed.iter_mut() {
                if !window.fired {
                    window.fired = true;
                    due.push((bounds, key.clone(), window.acc.clone()));
                }
            }
            if purge && let Some(gone) = partition.windows.remove(&end) {
                let bytes: usize = gone.iter().map(|(k, w)| k.len() + w.acc.len()).sum();
                partition.state_bytes = partition.state_bytes.saturating_sub(bytes);
            }
        }
    }
    due
}

/// `bytes` of state in a partition, if that is within the stage's limit.
fn within_state_limit(ctx: &Ctx, bytes: i64) -> Result<usize, GuestFailure> {
    if bytes > ctx.rules.max_partition_state as i64 {
        return Err(GuestFailure(format!(
            "the stage's state would grow past max_state_bytes ({} bytes)",
            ctx.rules.limits.max_state_bytes
        )));
    }
    Ok(bytes.max(0) as usize)
}

/// The bytes a partition's state takes: keyed state, window accumulators and sessions, keys
/// included.
fn state_bytes(partition: &Partition) -> usize {
    let keyed: usize = partition
        .state
        .iter()
        .map(|(key, e)| key.len() + e.value.len())
        .sum();
    let windows: usize = partition
        .windows
        .values()
        .flat_map(|keyed| keyed.iter())
        .map(|(key, w)| key.len() + w.acc.len())
        .sum();
    let sessions: usize = partition
        .sessions
        .iter()
        .flat_map(|(key, set)| {
            set.sessions
                .iter()
                .map(move |(_, w)| key.len() + w.acc.len())
        })
        .sum();
    keyed + windows + sessions
}

/// Where a key goes among `count` partitions: a fixed hash, the same on every run.
fn partition_of(key: &[u8], count: usize) -> usize {
    let hash = foldhash::fast::FixedState::with_seed(0x666c756d656e).hash_one(key);
    (hash % count as u64) as usize
}

/// The JSON rendering of the single record in `batch`, by the module that decodes its type.
pub(crate) fn render_json(instance: &mut OperatorInstance, batch: &[u8]) -> Option<Vec<u8>> {
    let output = instance.to_json(batch).ok()?;
    match OutputReader::new(output).next()? {
        Ok(OutputEntry::Record { value, .. }) => Some(value.to_vec()),
        _ => None,
    }
}

/// What a well-formed output holds.
struct Checked {
    /// The port of every entry, when all are records of one port.
    single_port: Option<u16>,
    records: u64,
    /// Per input record: [`EMITTED`] if it led to a record, [`FAILED`] if to an error entry.
    inputs: Vec<u8>,
    /// Each state entry's slot and the length of its new value (`None`: cleared), so the state
    /// limits are checked without reading the output again.
    states: Vec<(u32, Option<usize>)>,
}

const EMITTED: u8 = 1;
const FAILED: u8 = 2;

/// What a guest call's output may hold.
#[derive(Clone, Copy)]
struct Expect {
    /// Ports the module writes.
    ports: usize,
    /// State slots it was given.
    slots: usize,
    /// Input records (or windows) of the call.
    inputs: usize,
    /// The most bytes the whole output may take.
    max_bytes: usize,
    /// The most bytes of records one input record may lead to.
    max_record: usize,
    /// The most bytes one slot's new state may take.
    max_state: usize,
}

impl Expect {
    /// What a call of `ctx`'s stage on `inputs` records may return.
    fn of(ctx: &Ctx, ports: usize, slots: usize, inputs: usize) -> Self {
        let limits = ctx.rules.limits;
        Expect {
            ports,
            slots,
            inputs,
            max_bytes: limits.max_output_bytes,
            max_record: limits.max_record_output_bytes,
            max_state: limits.max_state_bytes_per_key,
        }
    }
}

/// Checks a guest's whole output before any of it is used: its size, framing, port and slot
/// numbers, input indices, and the size of each new state.
fn check(output: &[u8], expect: Expect) -> Result<Checked, GuestFailure> {
    if output.len() > expect.max_bytes {
        return Err(GuestFailure(format!(
            "module returned {} bytes for {} records, more than max_output_bytes ({})",
            output.len(),
            expect.inputs,
            expect.max_bytes
        )));
    }
    let mut checked = Checked {
        single_port: None,
        records: 0,
        inputs: vec![0; expect.inputs],
        states: Vec::new(),
    };
    let mut mixed = false;
    // Bytes of records per input, counted only when one input could be over its limit.
    let mut sizes = (output.len() > expect.max_record).then(|| vec![0usize; expect.inputs]);
    for entry in OutputReader::new(output) {
        let entry =
            entry.map_err(|e| GuestFailure(format!("module returned a malformed output: {e}")))?;
        if let (
            Some(sizes),
            OutputEntry::Record {
                input_index, value, ..
            },
        ) = (&mut sizes, &entry)
            && let Some(size) = sizes.get_mut(*input_index as usize)
        {
            *size += value.len();
            if *size > expect.max_record {
                return Err(GuestFailure(format!(
                    "module returned {size} bytes or more for one record, more than \
                     max_record_output_bytes ({})",
                    expect.max_record
                )));
            }
        }
        let (index, flag) = match entry {
            OutputEntry::Record {
                port, input_index, ..
            } => {
                if usize::from(port) >= expect.ports {
                    return Err(GuestFailure(format!(
                        "module wrote to port {port}, which it does not have"
                    )));
                }
                checked.records += 1;
                mixed |= checked.single_port.is_some_and(|p| p != port);
                checked.single_port = Some(port);
                (input_index, EMITTED)
            }
            OutputEntry::State { slot, value } => {
                if slot as usize >= expect.slots {
                    return Err(GuestFailure(format!(
                        "module wrote to state slot {slot}, which it was not given"
                    )));
                }
                if let Some(value) = value
                    && value.len() > expect.max_state
                {
                    return Err(GuestFailure(format!(
                        "module wrote a state of {} bytes for one key, more than \
                         max_state_bytes_per_key ({})",
                        value.len(),
                        expect.max_state
                    )));
                }
                checked.states.push((slot, value.map(<[u8]>::len)));
                mixed = true;
                continue;
            }
            OutputEntry::Error {
                input_index: u32::MAX,
                message,
                ..
            } => {
                return Err(GuestFailure(format!(
                    "module failed the whole batch: {message}"
                )));
            }
            OutputEntry::Error { input_index, .. } => {
                mixed = true;
                (input_index, FAILED)
            }
        };
        match checked.inputs.get_mut(index as usize) {
            Some(flags) => *flags |= flag,
            None => {
                return Err(GuestFailure(format!(
                    "module answered for input record {index} of a call with {} records",
                    expect.inputs
                )));
            }
        }
    }
    if mixed {
        checked.single_port = None;
    }
    Ok(checked)
}

/// The accumulators an aggregate's add or merge call returned, by slot (it emits no record;
/// its per-record errors go to the dead letters).
fn new_slot_contents(
    output: &[u8],
    expect: Expect,
    stats: &mut Counts,
    dead: &mut DeadLetters,
    stage: &str,
) -> Result<(FxHashMap<u32, Bytes>, Checked), GuestFailure> {
    let checked = check(output, expect)?;
    let mut contents = FxHashMap::default();
    let mut no_records = Pending::default();
    apply_records(
        output,
        &checked,
        &mut no_records,
        &[],
        stats,
        dead,
        stage,
        |slot, value| {
            if let Some(value) = value {
                contents.insert(slot, Bytes::from_slice(value));
            }
        },
    );
    Ok((contents, checked))
}

/// Applies a checked output: records to the pending outputs (at the position `positions` gives
/// their input record), errors to the dead letters, state entries through `on_state`.
#[allow(clippy::too_many_arguments)]
fn apply_records(
    output: &[u8],
    checked: &Checked,
    pending: &mut Pending,
    positions: &[u64],
    stats: &mut Counts,
    dead: &mut DeadLetters,
    stage: &str,
    mut on_state: impl FnMut(u32, Option<&[u8]>),
) {
    // Records of one port, already in order: the output is that port's next entries as it is.
    if let (true, Some(port)) = (pending.direct, checked.single_port) {
        pending.outputs[usize::from(port)].append_encoded(output);
        stats.outputs[usize::from(port)] += checked.records;
        return;
    }
    let mut reader = OutputReader::new(output);
    while let Some(Ok(entry)) = reader.next() {
        match entry {
            OutputEntry::Record {
                port,
                input_index,
                ts,
                keys,
                value,
            } => {
                let position = positions
                    .get(input_index as usize)
                    .copied()
                    .unwrap_or(u64::MAX);
                pending.record(port, position, |writer| {
                    let mut record = writer.record(port, input_index, ts, keys.len() as u8);
                    for k in 0..keys.len() {
                        record.key(|b| b.extend_from_slice(keys.get(k).unwrap_or_default()));
                    }
                    let _ = record.value(|b| {
                        b.extend_from_slice(value);
                        Ok::<_, ()>(())
                    });
                });
                stats.outputs[usize::from(port)] += 1;
            }
            OutputEntry::Error {
                input_index,
                message,
                raw,
            } => {
                stats.dead_letters += 1;
                if let Some(position) = positions.get(input_index as usize) {
                    pending.failed.push(*position);
                }
                dead.push(stage, message, raw);
            }
            OutputEntry::State { slot, value } => on_state(slot, value),
        }
    }
}
