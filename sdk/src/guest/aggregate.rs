//! [`AggregateRunner`]: drives one [`Aggregate`] through the ABI (add, merge, finish).

use super::*;
use std::collections::HashMap;

/// Drives one [`Aggregate`] through the ABI.
pub struct AggregateRunner<A: Aggregate> {
    aggregate: Option<A>,
    buffers: Buffers,
    input_is_struct: bool,
    accs: Vec<Option<A::Acc>>,
    panes: PaneCache<A::Acc>,
}

impl<A: Aggregate> Default for AggregateRunner<A> {
    fn default() -> Self {
        AggregateRunner {
            aggregate: None,
            buffers: Buffers::new(),
            input_is_struct: codec::is_struct::<A::Input<'static>>(),
            accs: Vec::new(),
            panes: PaneCache::default(),
        }
    }
}

/// The panes of sliding windows decoded by the last `finish` call, by the token the host gave
/// each pane's stored accumulator (a token names one value: a pane that changes gets a new one).
/// Consecutive windows share all their panes but one, so each pane is decoded once instead of
/// once per window it belongs to. Only the panes the last call used are kept: at most one call's
/// worth, dropped with the instance (a swap, a trap), and never needed for correctness — a pane
/// not found is decoded from the bytes the host sends every time.
struct PaneCache<Acc> {
    decoded: HashMap<u64, (Acc, u64)>,
    call: u64,
}

impl<Acc> Default for PaneCache<Acc> {
    fn default() -> Self {
        PaneCache {
            decoded: HashMap::new(),
            call: 0,
        }
    }
}

impl<Acc: Clone> PaneCache<Acc> {
    /// The pane `token` names, made by `decode` unless an earlier call did. Token 0 names
    /// nothing: decoded and not kept.
    fn get(
        &mut self,
        token: u64,
        decode: impl FnOnce() -> Result<Acc, String>,
    ) -> Result<Acc, String> {
        if let Some((acc, used)) = self.decoded.get_mut(&token) {
            *used = self.call;
            return Ok(acc.clone());
        }
        let acc = decode()?;
        if token != 0 {
            self.decoded.insert(token, (acc.clone(), self.call));
        }
        Ok(acc)
    }

    /// Forgets the panes the call that just ended did not use, and starts the next.
    fn end_call(&mut self) {
        let call = self.call;
        self.decoded.retain(|_, (_, used)| *used == call);
        self.call += 1;
    }
}

/// The merge of `accs` in order: neighbours first, then their results, level by level, so each
/// accumulator takes part in log2(n) merges instead of up to n (which matters where merging
/// costs the size of both sides, a sorted list of skus); a later one is always merged into an
/// earlier one. `None` for no accumulator.
fn merge_in_order<A: Aggregate>(aggregate: &A, mut accs: Vec<A::Acc>) -> Option<A::Acc> {
    while accs.len() > 1 {
        let mut merged = Vec::with_capacity(accs.len().div_ceil(2));
        let mut level = accs.into_iter();
        while let Some(mut left) = level.next() {
            if let Some(right) = level.next() {
                aggregate.merge(&mut left, right);
            }
            merged.push(left);
        }
        accs = merged;
    }
    accs.pop()
}

/// The accumulator a slot holds: decoded from its bytes, or a new one when it has none.
fn stored_acc<A: Aggregate>(aggregate: &A, bytes: Option<&[u8]>) -> Result<A::Acc, String> {
    match bytes {
        Some(bytes) => codec::decode(Encoding::Bincode, bytes, false)
            .map_err(|e| format!("cannot decode the stored accumulator: {e}")),
        None => Ok(aggregate.create()),
    }
}

impl<A: Aggregate> AggregateRunner<A> {
    fn load(
        aggregate: &A,
        accs: &mut [Option<A::Acc>],
        slots: &[SlotRef<'_>],
        slot: usize,
    ) -> Result<(), String> {
        if accs[slot].is_none() {
            accs[slot] = Some(stored_acc(aggregate, slots[slot].value)?);
        }
        Ok(())
    }

    fn save_accs(output: &mut OutputWriter, accs: &[Option<A::Acc>]) {
        for (slot, acc) in accs.iter().enumerate() {
            if let Some(acc) = acc {
                let written = output.state(
                    slot as u32,
                    Some(|buf: &mut Vec<u8>| codec::encode_into(Encoding::Bincode, acc, buf)),
                );
                if let Err(e) = written {
                    output.error(u32::MAX, &format!("cannot save an accumulator: {e}"), b"");
                }
            }
        }
    }
}

impl<A: Aggregate> GuestRunner for AggregateRunner<A> {
    fn refuse(&mut self, why: &str) -> &[u8] {
        refuse(&mut self.buffers.output, why)
    }

    /// A buffer of `len` bytes for the next request.
    fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.buffers.input_buffer(len)
    }

    /// Answers [`abi::exports::DESCRIBE`].
    fn describe(&mut self) -> &[u8] {
        self.buffers.encode_reply(describe_aggregate::<A>())
    }

    /// Answers [`abi::exports::INIT`].
    fn init(&mut self, len: usize) -> &[u8] {
        let outcome = self.buffers.init(len, Vec::new()).and_then(|params| {
            let params: A::Params = decode_params(&params)?;
            self.aggregate = Some(A::new(params)?);
            Ok(())
        });
        self.buffers.encode_reply(outcome)
    }

    /// Answers [`abi::exports::PROCESS`]: adds each record to the accumulators of its slots.
    fn process(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "process called before init");
        };
        let is_struct = self.input_is_struct;
        let accs = &mut self.accs;
        let Buffers { input, output, .. } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        let mut errors = Vec::new();
        accs.clear();
        accs.resize_with(slots.len(), || None);
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let input: A::Input<'_> = match codec::decode(encoding, record.value, is_struct) {
                Ok(input) => input,
                Err(e) => {
                    let message = format!(
                        "cannot decode {}: {e}",
                        crate::type_name::<A::Input<'static>>()
                    );
                    errors.push((
                        index as u32,
                        message,
                        raw_text::<A::Input<'_>>(encoding, record.value, is_struct),
                    ));
                    continue;
                }
            };
            for slot in record
                .slots
                .iter()
                .map(|s| s as usize)
                .filter(|s| *s < slots.len())
            {
                if let Err(e) = Self::load(aggregate, accs, &slots, slot) {
                    errors.push((index as u32, e, Vec::new()));
                    continue;
                }
                if let Some(acc) = accs[slot].as_mut() {
                    aggregate.add(acc, &input);
                }
            }
        }
        for (index, message, raw) in errors {
            output.error(index, &message, &raw);
        }
        Self::save_accs(output, accs);
        output.as_bytes()
    }

    /// Answers [`abi::exports::MERGE`]: merges each record's slots `1..` into its slot 0.
    fn merge(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "merge called before init");
        };
        let accs = &mut self.accs;
        let Buffers { input, output, .. } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        accs.clear();
        accs.resize_with(slots.len(), || None);
        let mut errors = Vec::new();
        let mut refs: Vec<usize> = Vec::new();
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            refs.clear();
            refs.extend(
                record
                    .slots
                    .iter()
                    .map(|s| s as usize)
                    .filter(|s| *s < slots.len()),
            );
            if refs.is_empty() {
                continue;
            }
            let loaded = refs
                .iter()
                .try_for_each(|&slot| Self::load(aggregate, accs, &slots, slot));
            if let Err(e) = loaded {
                // Nothing of a failed window goes back.
                for &slot in &refs {
                    accs[slot] = None;
                }
                errors.push((index as u32, e));
                continue;
            }
            // The result lands in the first slot, the window's.
            let parts = refs.iter().filter_map(|&slot| accs[slot].take()).collect();
            accs[refs[0]] = merge_in_order(aggregate, parts);
        }
        for (index, message) in errors {
            output.error(index, &message, b"");
        }
        // What is left is each merged window's accumulator (its panes' slots were taken).
        Self::save_accs(output, accs);
        output.as_bytes()
    }

    /// Answers [`abi::exports::FINISH`]: the result of each fired window.
    fn finish(&mut self, len: usize) -> &[u8] {
        let Some(aggregate) = self.aggregate.as_ref() else {
            return refuse(&mut self.buffers.output, "finish called before init");
        };
        let panes = &mut self.panes;
        let Buffers {
            ports,
            input,
            output,
            extracted,
            ..
        } = &mut self.buffers;
        let Some((batch, slots)) = read_batch(input, len, output) else {
            return output.as_bytes();
        };
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let (bounds, acc) = match fired_window(aggregate, panes, &record, &slots) {
                Ok(fired) => fired,
                Err(e) => {
                    output.error(index as u32, &e, b"");
                    continue;
                }
            };
            let key = std::str::from_utf8(record.key).unwrap_or_default();
            if let Some(result) = aggregate.finish(key, bounds, acc) {
                let Some(port) = ports.first() else { break };
                if let Err(e) = crate::operator::write_record(
                    output,
                    port,
                    0,
                    index as u32,
                    record.ts,
                    &result,
                    extracted,
                ) {
                    output.error(index as u32, &e, b"");
                }
            }
        }
        panes.end_call();
        output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`].
    fn to_json(&mut self, len: usize) -> &[u8] {
        let Buffers { input, output, .. } = &mut self.buffers;
        render_json::<A::Input<'_>>(input, output, len)
    }
}

/// A fired window of a `finish` request: its bounds, then either its accumulator, or (a sliding
/// window kept as panes) a token per slot the record names, the window's accumulator being the
/// merge of those slots in order.
fn fired_window<A: Aggregate>(
    aggregate: &A,
    panes: &mut PaneCache<A::Acc>,
    record: &abi::RecordRef<'_>,
    slots: &[SlotRef<'_>],
) -> Result<(Window, A::Acc), String> {
    let bound = |at: usize| {
        let bytes = record.value.get(at..at + 8)?;
        Some(i64::from_le_bytes(bytes.try_into().ok()?))
    };
    let (Some(start), Some(end)) = (bound(0), bound(8)) else {
        return Err("cannot decode a fired window".into());
    };
    let window = Window { start, end };
    let rest = &record.value[16..];
    if record.slots.is_empty() {
        let acc = codec::decode(Encoding::Bincode, rest, false)
            .map_err(|e| format!("cannot decode a fired window: {e}"))?;
        return Ok((window, acc));
    }
    if rest.len() != 8 * record.slots.len() {
        return Err("a fired window's panes and their tokens do not match".into());
    }
    let mut accs = Vec::with_capacity(record.slots.len());
    for (slot, token) in record.slots.iter().zip(rest.chunks_exact(8)) {
        let slot = slots
            .get(slot as usize)
            .ok_or("a fired window names a slot that does not exist")?;
        let token = u64::from_le_bytes(token.try_into().unwrap_or_default());
        accs.push(panes.get(token, || stored_acc(aggregate, slot.value))?);
    }
    let acc = merge_in_order(aggregate, accs).unwrap_or_else(|| aggregate.create());
    Ok((window, acc))
}
