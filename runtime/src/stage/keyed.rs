//! The step of a `process` stage: each key's state goes to the guest in a slot, and comes back
//! changed only if the whole call succeeds.

use super::Ctx;
use super::output::check;
use super::partition::{Partition, within_state_limit};
use crate::guest::GuestFailure;
use crate::state::keyed::Found;
use flumen_sdk::abi::RecordRef;
use rustc_hash::FxHashMap;

/// The key of a state slot of one call.
struct SlotKey<'a> {
    key: &'a [u8],
    /// The key's hash in the keyed store.
    hash: u64,
    /// The bytes the key takes in the store now.
    footprint: usize,
    /// The latest event time of the call's records with this key (its time-to-live counts
    /// from there).
    latest: i64,
}

impl Partition {
    pub(super) fn run_keyed(
        &mut self,
        ctx: &Ctx,
        records: &[RecordRef],
        globals: &[u64],
        ttl: Option<i64>,
    ) -> Result<(), GuestFailure> {
        let held = self.state_bytes() as i64;
        let watermark = ctx.watermark;
        let slots = &mut self.slots;
        slots.clear();
        let mut slot_of: FxHashMap<&[u8], u32> =
            FxHashMap::with_capacity_and_hasher(records.len(), Default::default());
        let mut slot_keys: Vec<SlotKey> = Vec::with_capacity(records.len());
        let rebuilt = &mut self.batch;
        rebuilt.clear(ctx.encoding);
        for record in records {
            let slot = *slot_of.entry(record.key).or_insert_with(|| {
                slot_keys.push(SlotKey {
                    key: record.key,
                    hash: self.keyed.hash(record.key),
                    footprint: 0,
                    latest: record.ts,
                });
                slot_keys.len() as u32 - 1
            });
            let latest = &mut slot_keys[slot as usize].latest;
            *latest = (*latest).max(record.ts);
            rebuilt.push_with(record.key, record.ts, &[slot], |b| {
                b.extend_from_slice(record.value)
            });
        }
        // Every key's probe of a table that may hold millions (a cache miss or two each), in a
        // loop of its own: no probe waits on another's work, so the processor overlaps their
        // misses (PERFORMANCE.md, tenth pass).
        let state = &self.keyed;
        let found: Vec<Found> = slot_keys
            .iter()
            .map(|slot| state.find(slot.key, slot.hash, watermark))
            .collect();
        for (slot, found) in slot_keys.iter_mut().zip(found) {
            slot.footprint = found.footprint;
            slots.push(slot.key, found.live);
        }
        let output = self
            .guest
            .process(&[rebuilt.as_bytes(), slots.as_bytes()])?;
        let checked = check(
            output,
            ctx.expect(ctx.guest_ports, slots.len(), records.len()),
        )?;
        // The state the call leaves, measured before anything is applied.
        let mut bytes = held;
        for &(slot, len) in &checked.states {
            let slot = &slot_keys[slot as usize];
            let new = len.map_or(0, |len| slot.key.len() + len);
            bytes += new as i64 - slot.footprint as i64;
        }
        within_state_limit(ctx, bytes)?;
        let state = &mut self.keyed;
        self.out
            .apply(ctx.name, output, &checked, globals, |slot, value| {
                let slot = &slot_keys[slot as usize];
                match value {
                    None => state.remove_hashed(slot.key, slot.hash),
                    Some(value) => {
                        let expires = ttl.map(|t| slot.latest.saturating_add(t));
                        state.put_hashed(slot.key, slot.hash, value, expires);
                    }
                }
            });
        self.account(ctx, records, globals, &checked.inputs);
        Ok(())
    }
}
