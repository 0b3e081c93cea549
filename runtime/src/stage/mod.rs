//! One operator stage at run time: its partitions (each a guest with its share of the keys and
//! their host-owned state), what the stage has emitted but not yet handed downstream, and its
//! watermark.
//!
//! Per key, records are processed in arrival order: a key always hashes to the same partition,
//! and a partition processes its records in order. State changes returned by the guest are
//! applied only when the whole call succeeded; a failed call is retried in halves, so a
//! poison record changes nothing and loses nothing but itself.
//!
//! - this file: routing a batch to partitions, the worker pool, the ordered merge of the
//!   partitions' outputs, watermarks and firing, reload adoption;
//! - `partition`: one partition's step — retries, accounting, late records, window results;
//! - `keyed`, `windows`, `sessions`: the step of each kind of stateful stage;
//! - `output`: checking a guest's reply and applying it.

mod keyed;
mod output;
mod partition;
mod sessions;
#[cfg(test)]
mod tests;
mod windows;

use crate::config::StageLimits;
use crate::dead_letter::DeadLetters;
use crate::guest::Guest;
use crate::plan::OperatorPlan;
use crate::state::keyed::{KeyedDelta, KeyedSnapshot, KeyedStore};
use crate::state::sessions::{SessionSnapshot, SessionStore};
use crate::state::windows::{WindowSnapshot, WindowStore};
use crate::state::{Bytes, Fired, FiredAcc, Store, partition_of};
use crate::telemetry::{GuestHealth, StageKind, StageStats};
use crate::window::{Bounds, WindowSpec};
use flumen_sdk::abi::{
    Encoding, OperatorKind, OutputEntry, OutputReader, OutputWriter, RecordRef, SlotRefs,
};
use partition::Partition;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The shortest step (expected, in nanoseconds) whose partitions run on worker threads.
const PARALLEL_STEP_NS: f64 = 300_000.0;

/// A stage's state as a checkpoint keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StageSnapshot {
    /// The stage's watermark.
    pub watermark: i64,
    /// When keyed state was last swept of expired entries.
    pub last_sweep: i64,
    /// Each partition's stores, as they were partitioned when taken.
    pub partitions: Vec<PartitionSnapshot>,
}

impl StageSnapshot {
    /// Keys with keyed state, windows (or panes) and sessions held, over every partition.
    pub fn entries(&self) -> usize {
        self.partitions.iter().map(PartitionSnapshot::entries).sum()
    }

    /// Bytes of keys, values and accumulators held, over every partition.
    pub fn bytes(&self) -> usize {
        self.partitions.iter().map(PartitionSnapshot::bytes).sum()
    }
}

/// One partition's stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PartitionSnapshot {
    pub keyed: KeyedSnapshot,
    pub windows: WindowSnapshot,
    pub sessions: SessionSnapshot,
}

impl PartitionSnapshot {
    fn entries(&self) -> usize {
        self.keyed.entries.len() + self.windows.windows.len() + self.sessions.sessions.len()
    }

    fn bytes(&self) -> usize {
        let keyed = self
            .keyed
            .entries
            .iter()
            .map(|(k, (v, _))| k.len() + v.len());
        let windows = self
            .windows
            .windows
            .iter()
            .map(|w| w.key.len() + w.acc.len());
        let sessions = self
            .sessions
            .sessions
            .iter()
            .map(|s| s.key.len() + s.acc.len());
        keyed.chain(windows).chain(sessions).sum()
    }
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

impl Ctx<'_> {
    /// What a call of this stage with `ports` ports and `slots` state slots on `inputs` records
    /// may return.
    fn expect(&self, ports: usize, slots: usize, inputs: usize) -> output::Expect {
        output::Expect::of(self.rules.limits, ports, slots, inputs)
    }
}

/// What a stage's module may do and must answer, fixed when the stage is built.
#[derive(Clone, Copy)]
struct Rules {
    kind: OperatorKind,
    limits: StageLimits,
    /// The most state bytes one partition may keep (the stage's limit split evenly).
    max_partition_state: usize,
}

#[derive(Clone, Copy)]
enum Behaviour {
    Stateless,
    Keyed { ttl: Option<i64> },
    Window { spec: WindowSpec, lateness: i64 },
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
    /// How many records the last batch held.
    last_batch: usize,
    /// How many bytes the keys read from the last batch's values took.
    last_texts: usize,
    /// What a record has cost this stage, on average over recent sequential steps.
    ns_per_record: f64,
    /// What this stage's share of each half of an executor round has cost, on average over
    /// recent rounds with work: `[0]` its queued batches, `[1]` those and moving its watermark
    /// (firing windows). The executor balances the stages of a level over threads by it; the
    /// two differ by several times for a window stage.
    pub round_ns: [f64; 2],
    /// What this stage has cost an executor round, all its work together (both halves, or a
    /// round behind): where the executor cuts the stages that run a round behind the others
    /// (`executor/lag.rs`).
    pub round_cost: RoundCost,
    /// The hash of the module it runs.
    module_hash: String,
    rules: Rules,
    /// What the guests of the versions this stage replaced went through.
    health_base: GuestHealth,
    /// Records each partition received (its share of `stats.records_in`: skew shows here).
    partition_records: Vec<u64>,
}

/// Where a stage finds each record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAt {
    /// Among the keys the producer wrote with the record, at this index.
    Entry(usize),
    /// In the record's value, read by the host.
    Field(flumen_sdk::render::KeyField),
}

impl Stage {
    /// A stage running `guests` (one per partition) as `plan` says.
    pub fn new(plan: &OperatorPlan, guests: Vec<Box<dyn Guest>>) -> Self {
        let module_hash = guests
            .first()
            .map(|g| g.module_hash().to_string())
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
            partitions: guests
                .into_iter()
                .map(|guest| Partition::new(guest, writers(), plan.partitions == 1))
                .collect(),
            watermark: i64::MIN,
            stats: StageStats::new(&plan.config.name, StageKind::Operator, &ports),
            guest_ports: plan.guest_ports().len(),
            last_sweep: i64::MIN,
            outputs: writers(),
            order: Vec::new(),
            failed: Vec::new(),
            last_batch: 0,
            last_texts: 0,
            // Unknown at first: assume records are costly (the first steps of a keyed stage
            // run in parallel), and learn.
            ns_per_record: PARALLEL_STEP_NS,
            round_ns: [0.0; 2],
            round_cost: RoundCost::default(),
            module_hash,
            health_base: GuestHealth::default(),
            partition_records: vec![0; plan.partitions.max(1)],
            rules: Rules {
                kind: plan.describe.kind,
                limits: plan.config.limits,
                max_partition_state: plan.config.limits.max_state_bytes / plan.partitions.max(1),
            },
        }
    }

    /// Takes over `old`'s watermark and counts, and, if `keep_state`, its keyed state, windows
    /// and sessions, spread over this stage's partitions by key (what to keep is the reload diff's
    /// decision: [`crate::diff::state_conflict`]).
    pub fn adopt(&mut self, old: Stage, keep_state: bool) {
        self.watermark = old.watermark;
        self.last_sweep = old.last_sweep;
        self.health_base = old.guest_health();
        // Partitions are the same ones while their number stays (keys hash alike).
        if old.partition_records.len() == self.partition_records.len() {
            self.partition_records.clone_from(&old.partition_records);
        }
        // Every count goes on (a port the new version dropped takes its count with it).
        let mut outputs = std::mem::take(&mut self.stats.outputs);
        for (port, n) in &mut outputs {
            if let Some((_, old_n)) = old.stats.outputs.iter().find(|(p, _)| p == port) {
                *n = *old_n;
            }
        }
        self.stats = StageStats {
            name: std::mem::take(&mut self.stats.name),
            outputs,
            ..old.stats.clone()
        };
        if !keep_state {
            return;
        }
        // The state moves over whole, its logged changes with it (`redistribute`): what the
        // checkpoint writer holds of it still holds.
        let (mut keyed, mut windows, mut sessions) = (Vec::new(), Vec::new(), Vec::new());
        for partition in old.partitions {
            keyed.push(partition.keyed);
            windows.push(partition.windows);
            sessions.push(partition.sessions);
        }
        self.install(keyed, windows, sessions);
    }

    /// Spreads the stores of some partitions (another stage's, or a checkpoint's) over this
    /// stage's partitions by key.
    fn install(
        &mut self,
        keyed: Vec<KeyedStore>,
        windows: Vec<WindowStore>,
        sessions: Vec<SessionStore>,
    ) {
        let keyed = KeyedStore::redistribute(keyed, self.partitions.len());
        self.place(keyed, windows, sessions);
    }

    /// Gives each partition its keyed store (`keyed` holds one per partition, each key in its
    /// home already) and spreads `windows` and `sessions` over the partitions by key.
    fn place(
        &mut self,
        keyed: Vec<KeyedStore>,
        windows: Vec<WindowStore>,
        sessions: Vec<SessionStore>,
    ) {
        let count = self.partitions.len();
        let windows = WindowStore::redistribute(windows, count);
        let sessions = SessionStore::redistribute(sessions, count);
        for (partition, ((keyed, windows), sessions)) in self
            .partitions
            .iter_mut()
            .zip(keyed.into_iter().zip(windows).zip(sessions))
        {
            partition.keyed = keyed;
            partition.windows = windows;
            partition.sessions = sessions;
        }
    }

    /// The stage's state as a checkpoint keeps it: its watermark and each partition's stores.
    pub fn snapshot(&self) -> StageSnapshot {
        self.snapshot_with(Store::snapshot)
    }

    /// The stage's snapshot, with each partition's keyed state as `keyed` gives it.
    fn snapshot_with(&self, keyed: impl Fn(&KeyedStore) -> KeyedSnapshot) -> StageSnapshot {
        StageSnapshot {
            watermark: self.watermark,
            last_sweep: self.last_sweep,
            partitions: self
                .partitions
                .iter()
                .map(|p| PartitionSnapshot {
                    keyed: keyed(&p.keyed),
                    windows: p.windows.snapshot(),
                    sessions: p.sessions.snapshot(),
                })
                .collect(),
        }
    }

    /// Takes the watermark of `snapshot` (of this stage, with any number of partitions) and, if
    /// `keep_state`, its state, spread over this stage's partitions by key (what to keep is
    /// decided as for a reload: [`crate::diff::state_conflict`]). Returns the keyed state it
    /// took (what a checkpoint writer starts from).
    pub fn restore(&mut self, snapshot: StageSnapshot, keep_state: bool) -> Option<KeyedSnapshot> {
        self.watermark = snapshot.watermark;
        self.last_sweep = snapshot.last_sweep;
        if !keep_state {
            return None;
        }
        let count = self.partitions.len();
        let mut keyed: Vec<KeyedStore> = (0..count).map(|_| KeyedStore::default()).collect();
        let (mut windows, mut sessions, mut taken) = (Vec::new(), Vec::new(), Vec::new());
        for partition in snapshot.partitions {
            KeyedStore::restore_into(&mut keyed, &partition.keyed);
            taken.push(partition.keyed);
            windows.push(WindowStore::restore(partition.windows));
            sessions.push(SessionStore::restore(partition.sessions));
        }
        self.place(keyed, windows, sessions);
        Some(KeyedSnapshot::merge(taken))
    }

    /// The stage's state for a checkpoint. Keyed state comes whole when its stores do not log
    /// their changes (the first time, whenever something replaced them, or after
    /// [`Stage::untrack`]), with `None`; otherwise as what changed since the last capture,
    /// `Some(delta)`, the snapshot's keyed parts left empty: the checkpoint writer holds the
    /// rest. Windows and sessions come whole.
    pub fn capture(&mut self) -> (StageSnapshot, Option<KeyedDelta>) {
        if !self.partitions.iter().all(|p| p.keyed.is_tracking()) {
            self.track_from_here();
            return (self.snapshot(), None);
        }
        let delta = KeyedDelta {
            parts: self
                .partitions
                .iter_mut()
                .map(|p| p.keyed.take_changes())
                .collect(),
        };
        (
            self.snapshot_with(|_| KeyedSnapshot::default()),
            Some(delta),
        )
    }

    /// Logs keyed changes from now on: the checkpoint writer holds the state as it is now (a
    /// whole capture, or the checkpoint it was restored from).
    pub fn track_from_here(&mut self) {
        for partition in &mut self.partitions {
            partition.keyed.track();
        }
    }

    /// Keys with keyed state, over every partition.
    pub fn keyed_len(&self) -> usize {
        self.partitions.iter().map(|p| p.keyed.len()).sum()
    }

    /// Makes the next capture whole (the writer lost what it held).
    pub fn untrack(&mut self) {
        for partition in &mut self.partitions {
            partition.keyed.untrack();
        }
    }

    /// Keys with state, windows and sessions held, over every partition.
    pub fn entries(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.keyed.len() + p.windows.len() + p.sessions.len())
            .sum()
    }

    /// What its guests went through, over every version of the stage.
    pub fn guest_health(&self) -> GuestHealth {
        self.partitions
            .iter()
            .fold(self.health_base, |sum, p| sum + p.guest.health())
    }

    /// Records each partition received (since the partition count last changed).
    pub fn partition_records(&self) -> &[u64] {
        &self.partition_records
    }

    /// Keys with state, windows and sessions held, and their bytes, per partition.
    pub fn state_by_partition(&self) -> (Vec<u64>, Vec<u64>) {
        self.partitions
            .iter()
            .map(|p| {
                let entries = p.keyed.len() + p.windows.len() + p.sessions.len();
                (entries as u64, p.state_bytes() as u64)
            })
            .unzip()
    }

    /// What the stage emitted, per port, not yet handed downstream (output-entry framing).
    pub fn outputs(&mut self) -> &mut [OutputWriter] {
        match self.partitions.as_mut_slice() {
            [only] => &mut only.out.pending.outputs,
            _ => &mut self.outputs,
        }
    }

    /// The hash of the module this stage runs.
    pub fn module_hash(&self) -> &str {
        &self.module_hash
    }

    /// Takes a batch from upstream (output-entry framing, values in `encoding`), keyed by `key`,
    /// and processes it partition by partition. Returns the indices of the batch's records that
    /// went to the dead letters.
    pub fn accept(
        &mut self,
        batch: &[u8],
        key: Option<KeyAt>,
        encoding: Encoding,
        dead: &mut DeadLetters,
    ) -> Vec<u64> {
        // Keys read from the values by the host, held here for the records that borrow them:
        // each record's span of `texts`, or why it has none.
        // Sized for the last batch's, as below.
        let mut texts = Vec::with_capacity(self.last_texts);
        let mut spans = Vec::with_capacity(self.last_batch);
        if let Some(KeyAt::Field(field)) = key {
            for entry in OutputReader::new(batch).flatten() {
                if let OutputEntry::Record { value, .. } = entry {
                    let start = texts.len();
                    spans.push(field.text(value, &mut texts).map(|()| start..texts.len()));
                }
            }
            self.last_texts = texts.len();
        }
        let mut spans = spans.into_iter();
        let count = self.partitions.len();
        // Each partition's records, borrowed from the batch, and their positions in it; sized
        // for the last batch's share (batches tend to be alike), so they are not regrown.
        let room = self.last_batch / count + 1;
        let mut records: Vec<Vec<RecordRef<'_>>> =
            (0..count).map(|_| Vec::with_capacity(room)).collect();
        let mut globals: Vec<Vec<u64>> = (0..count).map(|_| Vec::with_capacity(room)).collect();
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
            let k = match key {
                Some(KeyAt::Entry(k)) => keys.get(k).unwrap_or_default(),
                Some(KeyAt::Field(_)) => match spans.next() {
                    Some(Ok(span)) => &texts[span],
                    Some(Err(error)) => {
                        self.stats.records_in += 1;
                        self.stats.dead_letters += 1;
                        self.failed.push(index);
                        let why = format!("its key does not read as its type says: {error}");
                        dead.push(&self.name, &why, &value[..value.len().min(1024)]);
                        continue;
                    }
                    None => &[],
                },
                None => &[],
            };
            let p = if runs { 0 } else { partition_of(k, count) };
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
        self.last_batch = total;
        for (counted, records) in self.partition_records.iter_mut().zip(&records) {
            *counted += records.len() as u64;
        }
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
            let counts = &mut partition.out.counts;
            self.stats.dead_letters += std::mem::take(&mut counts.dead_letters);
            self.stats.produced += std::mem::take(&mut counts.produced);
            self.stats.filtered += std::mem::take(&mut counts.filtered);
            self.stats.windowed += std::mem::take(&mut counts.windowed);
            self.stats.late += std::mem::take(&mut counts.late);
            self.stats.failed_windows += std::mem::take(&mut counts.failed_windows);
            for (total, n) in self.stats.outputs.iter_mut().zip(&mut counts.outputs) {
                total.1 += std::mem::take(n);
            }
            dead.append(&mut partition.out.dead);
            self.failed.append(&mut partition.out.pending.failed);
        }
        if self.partitions.len() == 1 {
            return;
        }
        for (p, partition) in self.partitions.iter().enumerate() {
            let order = partition.out.pending.order.iter();
            self.order
                .extend(order.map(|&(at, port, start, end)| (at, p, port, start, end)));
        }
        // Stable: entries at one position (fired windows, late records) keep partition order.
        self.order.sort_by_key(|(position, ..)| *position);
        for &(_, p, port, start, end) in &self.order {
            let scratch = &self.partitions[p].out.pending.scratch;
            self.outputs[usize::from(port)].append_encoded(&scratch.as_bytes()[start..end]);
        }
        self.order.clear();
        for partition in &mut self.partitions {
            partition.out.pending.order.clear();
            partition.out.pending.scratch.clear();
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
                        partition.keyed.expire(watermark);
                    }
                }
            }
            Behaviour::Keyed { ttl: None } => {}
            Behaviour::Window { spec, lateness } => {
                // Fire in (end, key) order across partitions, so the order of results does not
                // depend on how keys are spread.
                let mut due: Vec<(Bounds, Bytes, FiredAcc, usize)> = Vec::new();
                for p in 0..self.partitions.len() {
                    let fired = match (windows::pane_size(spec, lateness), spec) {
                        (Some(slide), WindowSpec::Sliding { size_ms, .. }) => {
                            self.partitions[p].fire_panes(size_ms, slide, watermark)
                        }
                        (_, WindowSpec::Session { .. }) => {
                            self.partitions[p].sessions.fire(watermark, lateness)
                        }
                        (
                            _,
                            WindowSpec::Tumbling { size_ms } | WindowSpec::Sliding { size_ms, .. },
                        ) => self.partitions[p]
                            .windows
                            .fire(size_ms, watermark, lateness),
                    };
                    due.extend(fired.into_iter().map(|(b, k, a)| (b, k, a, p)));
                }
                // No two are equal (a key's windows are in one partition), so an unstable sort
                // gives the one order.
                due.sort_unstable_by(|a, b| {
                    (a.0.end, &a.1, a.0.start).cmp(&(b.0.end, &b.1, b.0.start))
                });
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

/// What something (a stage, the sources, a sink) has lately cost an executor round: the recent
/// average of the busy time it spent from one round to the next.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RoundCost {
    /// The busy time it had spent in all when it last learned.
    seen: Duration,
    /// The average, in nanoseconds.
    pub ns: f64,
}

impl RoundCost {
    /// Learns from `busy`, the busy time spent in all by now: what the round just over added.
    pub fn learn(&mut self, busy: Duration) {
        let spent = busy.saturating_sub(self.seen);
        self.seen = busy;
        self.ns = 0.8 * self.ns + 0.2 * spent.as_nanos() as f64;
    }
}

/// Runs `task` on each of `items`: the first on this thread, the others on the worker pool, and
/// returns when all are done, with how many threads could run them at once. The pool has one
/// thread fewer than the machine has cores, so the calling thread and the workers together use
/// every core without competing for one.
pub(crate) fn in_parallel<T: Send>(
    items: impl Iterator<Item = T>,
    task: impl Fn(T) + Sync,
) -> usize {
    let mut items = items;
    let Some(workers) = workers().filter(|_| !POOL_TAKEN.get()) else {
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

/// Runs `task` on the worker pool while `here` runs on this thread, and returns both results
/// (one after the other on this thread when there is no pool).
pub(crate) fn beside<T: Send, R>(
    task: impl FnOnce() -> T + Send,
    here: impl FnOnce() -> R,
) -> (T, R) {
    let Some(workers) = workers() else {
        let done = task();
        return (done, here());
    };
    let mut done = None;
    let result = workers.in_place_scope(|scope| {
        scope.spawn(|_| done = Some(task()));
        // The workers are busy with `task`: what `here` would hand them waits for it, so it
        // runs on this thread.
        let taken = POOL_TAKEN.replace(true);
        let result = here();
        POOL_TAKEN.set(taken);
        result
    });
    // The scope returns once the spawned task has run, and it always sets `done`.
    let done = done.unwrap_or_else(|| unreachable!("a scoped task that did not run"));
    (done, result)
}

/// How many threads [`in_parallel`] runs tasks on at once: the calling one and the workers.
pub(crate) fn parallel_threads() -> usize {
    match POOL_TAKEN.get() {
        true => 1,
        false => workers().map_or(1, |w| w.current_num_threads() + 1),
    }
}

thread_local! {
    /// Whether this thread runs beside a task that holds the workers ([`beside`]): then
    /// [`in_parallel`] runs its tasks here, in turn, rather than queue them behind that one.
    static POOL_TAKEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How many threads a run may use, if set before the pool was made (see [`limit_threads`]).
static THREADS: OnceLock<usize> = OnceLock::new();

/// Limits the threads a run uses to `threads` (the executor's and `threads - 1` workers); `1`
/// runs every stage and partition in turn on the executor's thread. Only before the first step
/// that would use the pool; the default is one thread per core.
pub fn limit_threads(threads: usize) -> Result<(), String> {
    if threads == 0 {
        return Err("a run needs at least one thread".into());
    }
    THREADS
        .set(threads)
        .map_err(|_| "the number of threads is already set".to_string())
}

/// The worker pool, made on first use (none with one thread, or if the system refuses threads).
fn workers() -> Option<&'static rayon::ThreadPool> {
    static WORKERS: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    let workers = WORKERS.get_or_init(|| {
        let cores = THREADS
            .get()
            .copied()
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if cores <= 1 {
            return None;
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(cores - 1)
            .thread_name(|i| format!("flumen-worker-{i}"))
            .build()
            .inspect_err(|e| tracing::warn!("no worker threads, partitions run in turn: {e}"))
            .ok()
    });
    workers.as_ref()
}
