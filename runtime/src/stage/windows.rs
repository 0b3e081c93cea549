//! The step of a tumbling or sliding window stage: each record is added to the accumulator of
//! every window it belongs to (or, for sliding windows kept as panes, of its one pane), and the
//! windows a watermark completes fire.

use super::Ctx;
use super::output::{FAILED, check};
use super::partition::{Partition, within_state_limit};
use crate::guest::GuestFailure;
use crate::state::windows::WindowStore;
use crate::state::{Bytes, Fired, FiredAcc, Pane};
use crate::window::{Bounds, WindowSpec};
use flumen_sdk::abi::{BatchWriter, RecordRef};
use rustc_hash::FxHashMap;
use std::collections::BTreeSet;

impl Partition {
    pub(super) fn run_windows(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        spec: WindowSpec,
        lateness: i64,
    ) -> Result<(), GuestFailure> {
        let held = self.state_bytes() as i64;
        let encoding = ctx.encoding;
        let watermark = ctx.watermark;
        let slots = &mut self.slots;
        slots.clear();
        let mut slot_of: FxHashMap<(i64, &[u8]), u32> =
            FxHashMap::with_capacity_and_hasher(records.len() * 2, Default::default());
        let mut slot_windows: Vec<(Bounds, &[u8])> = Vec::with_capacity(records.len());
        // The position of the last record each slot takes: where a window it updates after it
        // fired is emitted again.
        let mut slot_last: Vec<u64> = Vec::with_capacity(records.len());
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
                    let stored = self.windows.acc(window.end, record.key);
                    slot_windows.push((*window, record.key));
                    slot_last.push(0);
                    slots.push(record.key, stored)
                });
                refs.push(slot);
                slot_last[slot as usize] = globals.get(i).copied().unwrap_or(u64::MAX);
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
                .guest
                .process(&[rebuilt.as_bytes(), slots.as_bytes()])?;
            let checked = check(output, ctx.expect(0, slots.len(), rebuilt.len()))?;
            // The accumulators the call leaves, measured before anything is applied.
            let mut bytes = held;
            for &(slot, len) in &checked.states {
                // A cleared accumulator is left as it was (see the apply below).
                let Some(len) = len else { continue };
                let (window, key) = slot_windows[slot as usize];
                let old = self.windows.footprint(window.end, key);
                bytes += (key.len() + len) as i64 - old as i64;
            }
            within_state_limit(ctx, bytes)?;
            self.out.counts.windowed +=
                checked.inputs.iter().filter(|f| *f & FAILED == 0).count() as u64;
            let windows = &mut self.windows;
            self.out
                .apply(ctx.name, output, &checked, globals, |slot, value| {
                    let (window, key) = slot_windows[slot as usize];
                    // A cleared accumulator is left as it was.
                    let Some(acc) = value else { return };
                    if windows.set(window.end, key, acc) {
                        let fired = (
                            window,
                            Bytes::from_slice(key),
                            FiredAcc::Whole(Bytes::from_slice(acc)),
                        );
                        refire.push((fired, slot_last[slot as usize]));
                    }
                });
        }
        self.emit_late(ctx, &late, &late_globals);
        self.refire(ctx, refire);
        Ok(())
    }

    /// Fires the sliding windows `watermark` completes from the panes of this partition, each
    /// with its panes' accumulators in order (the module merges them as it finishes the window);
    /// panes no window needs any more are dropped.
    pub(super) fn fire_panes(&mut self, size: i64, slide: i64, watermark: i64) -> Vec<Fired> {
        let store = &mut self.windows;
        let Some((min_end, max_end)) = store.span() else {
            return Vec::new();
        };
        // Window ends are multiples of the slide; the watermark completes those up to `last`.
        let first = store
            .panes_fired_until
            .map_or(min_end, |f| f.saturating_add(slide));
        let last = watermark
            .saturating_add(1)
            .min(max_end.saturating_add(size - slide));
        let Some(last) = last.checked_sub(last.rem_euclid(slide)) else {
            return Vec::new();
        };
        if last < first {
            return Vec::new();
        }
        // Only windows holding at least one pane: the work is proportional to the panes that exist,
        // never to the span of time between them.
        let mut ends = BTreeSet::new();
        for (&pane, _) in store.range(first.saturating_sub(size)..) {
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
        let fired = window_panes(store, ends, (size, slide));
        store.panes_fired_until = Some(last);
        let keep_from = last.saturating_add(slide).saturating_sub(size);
        store.drop_through(keep_from);
        fired
    }
}

/// The windows ending at `ends` (of `size`, every `slide`), each with the accumulators of its
/// panes in `panes`, in order, with their tokens and ends. In no particular order: the caller
/// sorts fired windows by end, then key.
fn window_panes(panes: &WindowStore, ends: BTreeSet<i64>, (size, slide): (i64, i64)) -> Vec<Fired> {
    let mut fired = Vec::new();
    let mut per_key: FxHashMap<&[u8], Vec<Pane>> = FxHashMap::default();
    for end in ends {
        let from = end.saturating_sub(size).saturating_add(slide);
        for (&pane_end, keyed) in panes.range(from..=end) {
            for (key, pane) in keyed {
                per_key.entry(key).or_default().push((
                    pane.token,
                    pane_end,
                    Bytes::from_slice(&pane.acc),
                ));
            }
        }
        let bounds = Bounds {
            start: end.saturating_sub(size),
            end,
        };
        fired.extend(
            per_key
                .drain()
                .map(|(key, accs)| (bounds, Bytes::from_slice(key), FiredAcc::Panes(accs))),
        );
    }
    fired
}

/// The pane size when sliding windows are kept as panes (one accumulator per slide, merged into
/// windows when they fire): each record is added once instead of `size / slide` times. Only
/// without allowed lateness, where a fired window never changes again.
pub(super) fn pane_size(spec: WindowSpec, lateness: i64) -> Option<i64> {
    match spec {
        WindowSpec::Sliding { size_ms, slide_ms } if lateness == 0 && size_ms > slide_ms => {
            Some(slide_ms)
        }
        _ => None,
    }
}
