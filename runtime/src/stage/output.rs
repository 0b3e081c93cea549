//! What a partition's guest calls leave: every reply checked whole before any of it is used
//! ([`check`]), then applied by the partition's [`Emitter`] — records to the pending outputs at
//! the position that orders them, errors to the dead letters, state entries to the stores.

use crate::config::StageLimits;
use crate::dead_letter::DeadLetters;
use crate::guest::GuestFailure;
use crate::state::Bytes;
use flumen_sdk::abi::{OutputEntry, OutputReader, OutputWriter};
use rustc_hash::FxHashMap;

/// Counts of a partition's step, added to the stage's statistics afterwards.
#[derive(Default)]
pub(super) struct Counts {
    pub dead_letters: u64,
    /// Input records that led to at least one record.
    pub produced: u64,
    /// Input records that led to nothing (filtered out, or only changed state).
    pub filtered: u64,
    /// Input records added to windows.
    pub windowed: u64,
    /// Input records too late for every window.
    pub late: u64,
    /// Fired windows whose result could not be made: dead letters that are not input records.
    pub failed_windows: u64,
    /// Records emitted, per port.
    pub outputs: Vec<u64>,
}

/// Records emitted by a partition in one step, with the position that orders them: the input
/// record they came from (so a key's records leave in the order they arrived, whatever the
/// partitioning) or a fired window's rank.
#[derive(Default)]
pub(super) struct Pending {
    /// With one partition, what the stage emitted, per port, not yet handed downstream.
    pub outputs: Vec<OutputWriter>,
    /// With one partition, outputs are already in order and go straight to `outputs`.
    pub direct: bool,
    pub scratch: OutputWriter,
    pub order: Vec<(u64, u16, usize, usize)>,
    /// Positions of the input records that went to the dead letters.
    pub failed: Vec<u64>,
}

impl Pending {
    /// Appends a record entry for `port` at `position`, written by `write`.
    pub fn record(&mut self, port: u16, position: u64, write: impl FnOnce(&mut OutputWriter)) {
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

/// What a well-formed output holds.
pub(super) struct Checked {
    /// The port of every entry, when all are records of one port.
    pub single_port: Option<u16>,
    pub records: u64,
    /// Per input record: [`EMITTED`] if it led to a record, [`FAILED`] if to an error entry.
    pub inputs: Vec<u8>,
    /// Each state entry's slot and the length of its new value (`None`: cleared), so the state
    /// limits are checked without reading the output again.
    pub states: Vec<(u32, Option<usize>)>,
}

pub(super) const EMITTED: u8 = 1;
pub(super) const FAILED: u8 = 2;

/// What a guest call's output may hold.
#[derive(Clone, Copy)]
pub(super) struct Expect {
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
    /// What a call on `inputs` records, with `ports` ports and `slots` state slots, may return
    /// under `limits`.
    pub fn of(limits: StageLimits, ports: usize, slots: usize, inputs: usize) -> Self {
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
pub(super) fn check(output: &[u8], expect: Expect) -> Result<Checked, GuestFailure> {
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

/// Where a partition's calls leave what they produced: records pending for downstream, the
/// step's counts, and dead letters.
pub(super) struct Emitter {
    pub pending: Pending,
    pub counts: Counts,
    pub dead: DeadLetters,
}

impl Emitter {
    /// Sends a record to the dead letters for `error`: counted, and its position (if it has one
    /// in the step's input) noted as failed.
    pub fn dead_letter(&mut self, stage: &str, position: Option<u64>, error: &str, raw: &[u8]) {
        self.counts.dead_letters += 1;
        if let Some(position) = position {
            self.pending.failed.push(position);
        }
        self.dead.push(stage, error, raw);
    }

    /// Applies a checked output of `stage`: records to the pending outputs (at the position
    /// `positions` gives their input record), errors to the dead letters, state entries through
    /// `on_state`.
    pub fn apply(
        &mut self,
        stage: &str,
        output: &[u8],
        checked: &Checked,
        positions: &[u64],
        mut on_state: impl FnMut(u32, Option<&[u8]>),
    ) {
        let pending = &mut self.pending;
        // Records of one port, already in order: the output is that port's next entries as it is.
        if let (true, Some(port)) = (pending.direct, checked.single_port) {
            pending.outputs[usize::from(port)].append_encoded(output);
            self.counts.outputs[usize::from(port)] += checked.records;
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
                    self.counts.outputs[usize::from(port)] += 1;
                }
                OutputEntry::Error {
                    input_index,
                    message,
                    raw,
                } => {
                    self.counts.dead_letters += 1;
                    if let Some(position) = positions.get(input_index as usize) {
                        pending.failed.push(*position);
                    }
                    self.dead.push(stage, message, raw);
                }
                OutputEntry::State { slot, value } => on_state(slot, value),
            }
        }
    }

    /// The accumulators an aggregate's add or merge call returned, by slot, checked against
    /// `expect` (it emits no record; its per-record errors go to the dead letters).
    pub fn slot_contents(
        &mut self,
        stage: &str,
        output: &[u8],
        expect: Expect,
    ) -> Result<(FxHashMap<u32, Bytes>, Checked), GuestFailure> {
        let checked = check(output, Expect { ports: 0, ..expect })?;
        let mut contents = FxHashMap::default();
        self.apply(stage, output, &checked, &[], |slot, value| {
            if let Some(value) = value {
                contents.insert(slot, Bytes::from_slice(value));
            }
        });
        Ok((contents, checked))
    }
}
