//! One partition of a stage: a guest, the state of the keys that hash to it, and what its step
//! produced. A failed call is retried in halves until the records that fail alone are found.

use super::output::{Emitter, FAILED, Pending, check};
use super::{Behaviour, Ctx};
use crate::guest::{Guest, GuestFailure};
use crate::state::keyed::KeyedStore;
use crate::state::sessions::SessionStore;
use crate::state::windows::WindowStore;
use crate::state::{Fired, FiredAcc, Store};
use flumen_sdk::abi::{
    BatchReader, BatchWriter, Encoding, OperatorKind, OutputEntry, OutputReader, OutputWriter,
    RecordRef, SlotWriter,
};

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

/// One partition: a guest and the state of its keys.
pub(super) struct Partition {
    pub guest: Box<dyn Guest>,
    /// Keyed state (`process` stages).
    pub keyed: KeyedStore,
    /// Tumbling and sliding windows, or panes.
    pub windows: WindowStore,
    /// Session windows.
    pub sessions: SessionStore,
    /// The batch and state slots of the next guest call, reused from call to call.
    pub batch: BatchWriter,
    pub slots: SlotWriter,
    /// What this partition emitted, counted and dead-lettered in the current step; the stage
    /// collects it after the step (partitions of a stage run on threads of their own).
    pub out: Emitter,
}

impl Partition {
    /// A partition running `guest`, emitting to `outputs` (one writer per port); `direct` when it
    /// is its stage's only partition (its outputs are then in order as they come).
    pub fn new(guest: Box<dyn Guest>, outputs: Vec<OutputWriter>, direct: bool) -> Self {
        let ports = outputs.len();
        Partition {
            guest,
            keyed: KeyedStore::default(),
            windows: WindowStore::default(),
            sessions: SessionStore::default(),
            batch: BatchWriter::new(Encoding::Bincode),
            slots: SlotWriter::default(),
            out: Emitter {
                pending: Pending {
                    outputs,
                    direct,
                    ..Pending::default()
                },
                counts: super::output::Counts {
                    outputs: vec![0; ports],
                    ..Default::default()
                },
                dead: Default::default(),
            },
        }
    }

    /// The bytes of state this partition keeps: keyed state, windows and sessions, keys included.
    pub fn state_bytes(&self) -> usize {
        self.keyed.bytes() + self.windows.bytes() + self.sessions.bytes()
    }

    /// Runs the partition over `records` (the positions of which in the stage's input are
    /// `globals`); if the call fails, in halves (see [`Partition::bisect`]).
    pub(super) fn run(&mut self, ctx: &Ctx, records: &[RecordRef], globals: &[u64]) {
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
    pub(super) fn account(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        flags: &[u8],
    ) {
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
                0 => self.out.counts.filtered += 1,
                f if f & FAILED == 0 => self.out.counts.produced += 1,
                _ => {}
            }
        }
    }

    /// Sends `record` (at position `global`) to the dead letters, rendered as JSON.
    fn dead_letter(&mut self, ctx: &Ctx, record: &RecordRef, global: u64, error: &str) {
        let raw = match flumen_sdk::abi::json_text(ctx.encoding, record.value) {
            Some(text) => text.to_vec(),
            None => {
                self.batch.clear(ctx.encoding);
                self.batch.push(record.key, record.ts, record.value);
                render_json(self.guest.as_mut(), self.batch.as_bytes())
                    .unwrap_or_else(|| format!("<{} bytes>", record.value.len()).into_bytes())
            }
        };
        self.out.dead_letter(ctx.name, Some(global), error, &raw);
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
                let output = self.guest.process(&[self.batch.as_bytes()])?;
                let checked = check(output, ctx.expect(ctx.guest_ports, 0, records.len()))?;
                self.out
                    .apply(ctx.name, output, &checked, globals, |_, _| {});
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

    /// Sends records too late for every window to the `late` port, rendered as JSON by the
    /// module: `{"stage": …, "record": …}`. A late record the module cannot render is a dead
    /// letter, never lost.
    pub(super) fn emit_late(&mut self, ctx: &Ctx, late: &BatchWriter, globals: &[u64]) {
        if late.is_empty() {
            return;
        }
        let late_port = self.out.pending.outputs.len() - 1;
        let stage = serde_json::to_string(ctx.name).unwrap_or_default();
        let records: Vec<RecordRef> = match BatchReader::new(late.as_bytes()) {
            Ok(reader) => reader.flatten().collect(),
            Err(_) => Vec::new(),
        };
        // Each late record's JSON text, or why there is none.
        let texts: Option<Vec<_>> = records
            .iter()
            .map(|r| flumen_sdk::abi::json_text(ctx.encoding, r.value))
            .collect();
        let mut json: Vec<Result<Vec<u8>, String>> = match texts {
            Some(texts) => texts.into_iter().map(|t| Ok(t.to_vec())).collect(),
            None => {
                let unanswered = Err("module did not render this late record as JSON".into());
                let mut json = vec![unanswered; records.len()];
                match self.guest.to_json(late.as_bytes()) {
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
                    let raw = format!("<late record of {} bytes>", record.value.len());
                    self.out
                        .dead_letter(ctx.name, Some(position), &why, raw.as_bytes());
                    continue;
                }
            };
            let mut line = Vec::with_capacity(rendered.len() + stage.len() + 24);
            line.extend_from_slice(b"{\"stage\":");
            line.extend_from_slice(stage.as_bytes());
            line.extend_from_slice(b",\"record\":");
            line.extend_from_slice(&rendered);
            line.push(b'}');
            self.out
                .pending
                .record(late_port as u16, position, |writer| {
                    let entry = writer.record(late_port as u16, i as u32, record.ts, 0);
                    let _ = entry.value(|b| {
                        b.extend_from_slice(&line);
                        Ok::<_, ()>(())
                    });
                });
            self.out.counts.outputs[late_port] += 1;
            self.out.counts.late += 1;
        }
    }

    /// Emits again the results of fired windows that records of this step updated (within
    /// allowed lateness), each at the position of the last record that updated it: in input
    /// order, so the order does not depend on how keys are spread over partitions.
    pub(super) fn refire(&mut self, ctx: &Ctx, mut windows: Vec<(Fired, u64)>) {
        windows.sort_by_key(|(_, position)| *position);
        let (windows, ranks): (Vec<Fired>, Vec<u64>) = windows.into_iter().unzip();
        self.finish_ranked(ctx, windows, &ranks);
    }

    /// Emits the results of fired windows, the i-th at position `ranks[i]`, in calls of at most
    /// [`WINDOWS_PER_CALL`] windows.
    pub(super) fn finish_ranked(&mut self, ctx: &Ctx, windows: Vec<Fired>, ranks: &[u64]) {
        for (windows, ranks) in windows
            .chunks(WINDOWS_PER_CALL)
            .zip(ranks.chunks(WINDOWS_PER_CALL))
        {
            self.finish_call(ctx, windows, ranks);
        }
    }

    fn finish_call(&mut self, ctx: &Ctx, windows: &[Fired], ranks: &[u64]) {
        let dead_before = self.out.counts.dead_letters;
        let failed_before = self.out.pending.failed.len();
        // The partition's writers, reused from call to call.
        let (request, slots) = (&mut self.batch, &mut self.slots);
        request.clear(Encoding::Bincode);
        slots.clear();
        let mut refs: Vec<u32> = Vec::new();
        for (window, key, acc) in windows {
            refs.clear();
            if let FiredAcc::Panes(panes) = acc {
                refs.extend(panes.iter().map(|(_, _, pane)| slots.push(key, Some(pane))));
            }
            request.push_with(key, window.max_timestamp(), &refs, |b| {
                b.extend_from_slice(&window.start.to_le_bytes());
                b.extend_from_slice(&window.end.to_le_bytes());
                match acc {
                    FiredAcc::Whole(acc) => b.extend_from_slice(acc),
                    FiredAcc::Panes(panes) => {
                        for (token, end, _) in panes {
                            b.extend_from_slice(&token.to_le_bytes());
                            b.extend_from_slice(&end.to_le_bytes());
                        }
                    }
                }
            });
        }
        let outcome = self
            .guest
            .finish(&[self.batch.as_bytes(), self.slots.as_bytes()])
            .and_then(|output| {
                let checked = check(output, ctx.expect(ctx.guest_ports, 0, windows.len()))?;
                self.out.apply(ctx.name, output, &checked, ranks, |_, _| {});
                Ok(())
            });
        if let Err(failure) = outcome {
            for (window, key, _) in windows {
                let raw = format!(
                    "window [{}, {}) of key {:?}",
                    window.start,
                    window.end,
                    String::from_utf8_lossy(key)
                );
                let why = format!("finish {}", failure.0);
                self.out.dead_letter(ctx.name, None, &why, raw.as_bytes());
            }
        }
        // A window's result is not an input record: its dead letters are counted apart, and
        // mark no input record failed (the positions here are the windows' ranks).
        self.out.pending.failed.truncate(failed_before);
        self.out.counts.failed_windows += self.out.counts.dead_letters - dead_before;
    }
}

/// The most windows merged or finished in one guest call: however many windows a watermark
/// completes (all of them at the end of the input), one call's work and time stay bounded.
pub(super) const WINDOWS_PER_CALL: usize = 1024;

/// Whether a partition keeping `bytes` of state would be within its stage's limit.
pub(super) fn within_state_limit(ctx: &Ctx, bytes: i64) -> Result<(), GuestFailure> {
    if bytes > ctx.rules.max_partition_state as i64 {
        return Err(GuestFailure(format!(
            "the stage's state would grow past max_state_bytes ({} bytes)",
            ctx.rules.limits.max_state_bytes
        )));
    }
    Ok(())
}

/// The JSON rendering of the single record in `batch`, by the module that decodes its type.
pub(crate) fn render_json(guest: &mut dyn Guest, batch: &[u8]) -> Option<Vec<u8>> {
    let output = guest.to_json(batch).ok()?;
    match OutputReader::new(output).next()? {
        Ok(OutputEntry::Record { value, .. }) => Some(value.to_vec()),
        _ => None,
    }
}
