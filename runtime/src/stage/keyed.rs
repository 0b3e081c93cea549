//! The step of a `process` stage: each key's state goes to the guest in a slot, and comes back
//! changed only if the whole call succeeds.

use super::Ctx;
use super::output::check;
use super::partition::{Partition, within_state_limit};
use crate::guest::GuestFailure;
use flumen_sdk::abi::RecordRef;
use rustc_hash::FxHashMap;

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
        // Per slot: its key, the key's hash in the store and the bytes it takes there now, and
        // the latest event time of its records.
        let mut slot_keys: Vec<(&[u8], u64, usize)> = Vec::with_capacity(records.len());
        let mut slot_ts: Vec<i64> = Vec::with_capacity(records.len());
        let rebuilt = &mut self.batch;
        rebuilt.clear(ctx.encoding);
        for record in records {
            let slot = *slot_of.entry(record.key).or_insert_with(|| {
                let hash = self.keyed.hash(record.key);
                let found = self.keyed.find(record.key, hash, watermark);
                slot_keys.push((record.key, hash, found.footprint));
                slot_ts.push(record.ts);
                slots.push(record.key, found.live)
            });
            let latest = &mut slot_ts[slot as usize];
            *latest = (*latest).max(record.ts);
            rebuilt.push_with(record.key, record.ts, &[slot], |b| {
                b.extend_from_slice(record.value)
            });
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
            let (key, _, old) = slot_keys[slot as usize];
            let new = len.map_or(0, |len| key.len() + len);
            bytes += new as i64 - old as i64;
        }
        within_state_limit(ctx, bytes)?;
        let state = &mut self.keyed;
        self.out
            .apply(ctx.name, output, &checked, globals, |slot, value| {
                let (key, hash, _) = slot_keys[slot as usize];
                match value {
                    None => state.remove_hashed(key, hash),
                    Some(value) => {
                        let expires = ttl.map(|t| slot_ts[slot as usize].saturating_add(t));
                        state.put_hashed(key, hash, value, expires);
                    }
                }
            });
        self.account(ctx, records, globals, &checked.inputs);
        Ok(())
    }
}
