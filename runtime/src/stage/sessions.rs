//! The step of a session window stage: records are grouped into sessions per key, sessions a
//! record bridges are merged (the guest merges their accumulators), then the records are added.
//! The store changes only when every call succeeded.

use super::Ctx;
use super::output::FAILED;
use super::partition::{Partition, within_state_limit};
use crate::guest::{Call, GuestFailure};
use crate::state::{Bytes, FiredAcc, WindowAcc};
use crate::window::{SessionSet, WindowSpec};
use flumen_sdk::abi::{BatchWriter, RecordRef};
use rustc_hash::FxHashMap;
use smallvec::{SmallVec, smallvec};
use std::collections::BTreeMap;

/// A session being worked on during one call: the stored accumulators it merges, and the new
/// records it takes (most sessions of a batch: one stored accumulator or none, one record).
#[derive(Default)]
struct SessionWork {
    accs: SmallVec<[Bytes; 1]>,
    records: SmallVec<[usize; 2]>,
    fired: bool,
}

/// Where the accumulator of a session's add slot starts from: the stored one (none yet), or the
/// target of a merge.
#[derive(Clone, Copy)]
enum Start<'a> {
    Stored(Option<&'a [u8]>),
    Merged(u32),
}

impl Partition {
    pub(super) fn run_sessions(
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
                                        accs: smallvec![Bytes::from_slice(&w.acc)],
                                        records: SmallVec::new(),
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
                // Most records extend one session: it is taken as it is.
                let mut parts = parts.into_iter();
                let mut merged = parts.next().unwrap_or_default();
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
        // add slots are the sessions that take records, numbered in `work` order. Both calls
        // are written in the partition's writers, reused from call to call.
        self.batch.clear(encoding);
        self.slots.clear();
        let mut starts: Vec<(&[u8], Start)> = Vec::new();
        let mut refs: Vec<u32> = Vec::new();
        for (key, sessions) in &work {
            for (window, session) in &sessions.sessions {
                if session.records.is_empty() {
                    continue;
                }
                let start = if session.accs.len() >= 2 {
                    let target = self.slots.push(key, None);
                    refs.clear();
                    refs.push(target);
                    for acc in &session.accs {
                        refs.push(self.slots.push(key, Some(acc)));
                    }
                    self.batch.push_with(key, window.end - 1, &refs, |_| {});
                    Start::Merged(target)
                } else {
                    Start::Stored(session.accs.first().map(|acc| &acc[..]))
                };
                starts.push((key, start));
            }
        }
        let (merged, _) = self.accumulate(ctx, Call::Merge)?;
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
        self.batch.clear(encoding);
        self.slots.clear();
        for &(key, start) in &starts {
            let stored = match start {
                Start::Stored(acc) => acc,
                Start::Merged(target) => merged.get(&target).map(|acc| &acc[..]),
            };
            self.slots.push(key, stored);
        }
        let mut slot = 0;
        for (key, sessions) in &work {
            for (_, session) in &sessions.sessions {
                if session.records.is_empty() {
                    continue;
                }
                for &index in &session.records {
                    let record = &records[index];
                    self.batch.push_with(key, record.ts, &[slot], |b| {
                        b.extend_from_slice(record.value)
                    });
                }
                slot += 1;
            }
        }
        let (mut new_accs, windowed) = self.accumulate(ctx, Call::Process)?;

        // The sessions the call leaves, measured before anything is applied.
        let mut bytes = self.state_bytes() as i64;
        let mut slot = 0;
        for (key, sessions) in &work {
            bytes -= self.sessions.footprint(key) as i64;
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
        within_state_limit(ctx, bytes)?;
        self.out.counts.windowed += windowed;

        // Success: the working sessions become the stored ones.
        let mut refire = Vec::new();
        drop(starts);
        let mut slot = 0;
        for (key, sessions) in work {
            let mut stored = Vec::with_capacity(sessions.sessions.len());
            for (window, session) in sessions.sessions {
                let acc = if session.records.is_empty() {
                    session.accs.into_iter().next()
                } else {
                    slot += 1;
                    new_accs.remove(&(slot - 1))
                };
                let Some(acc) = acc else { continue };
                if session.fired && !session.records.is_empty() {
                    let last = session.records.iter().map(|&i| globals.get(i).copied());
                    let position = last.max().flatten().unwrap_or(u64::MAX);
                    refire.push((
                        (
                            window,
                            Bytes::from_slice(key),
                            FiredAcc::Whole(Bytes::from_slice(&acc)),
                        ),
                        position,
                    ));
                }
                stored.push((window, WindowAcc::new(acc, session.fired)));
            }
            self.sessions.replace(key, stored);
        }
        self.emit_late(ctx, &late, &late_globals);
        self.refire(ctx, refire);
        Ok(())
    }

    /// Runs an aggregate's `call` (add or merge) over the partition's batch and slots, unless
    /// the batch is empty; the accumulators it returns, by slot, and how many records it took.
    fn accumulate(
        &mut self,
        ctx: &Ctx,
        call: Call,
    ) -> Result<(FxHashMap<u32, Bytes>, u64), GuestFailure> {
        if self.batch.is_empty() {
            return Ok((FxHashMap::default(), 0));
        }
        let output = self
            .guest
            .call(call, &[self.batch.as_bytes(), self.slots.as_bytes()])?;
        let expect = ctx.expect(0, self.slots.len(), self.batch.len());
        let (contents, checked) = self.out.slot_contents(ctx.name, output, expect)?;
        let taken = checked.inputs.iter().filter(|f| *f & FAILED == 0).count();
        Ok((contents, taken as u64))
    }
}
