//! [`AggregateRunner`]: drives one [`Aggregate`] through the ABI (add, merge, finish).

use super::*;
use std::collections::{HashMap, HashSet};

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

/// The panes of sliding windows, and merges of runs of them, kept between `finish` calls by the
/// tokens the host gave each pane's stored accumulator (a token names one value: a pane that
/// changes gets a new one). Consecutive windows share all their panes but one, so each pane is
/// decoded once, and a window is the merge of two runs that earlier windows mostly built (see
/// [`fired_window`]). What a call's windows no longer hold is dropped at its end: at most the
/// runs of one call's panes are kept, dropped with the instance (a swap, a trap), and never
/// needed for correctness — a window's result depends only on its panes and their positions.
struct PaneCache<Acc> {
    kept: HashMap<(Run, Vec<u64>), Acc>,
    /// The tokens of the panes of this call's windows.
    seen: HashSet<u64>,
}

/// What a kept accumulator is, with the tokens of its panes in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Run {
    /// One pane.
    Pane,
    /// Panes that end a block: each merged with the merge of those after it.
    Suffix,
    /// Panes that start a block: the merge of those before each, merged with it.
    Prefix,
}

impl<Acc> Default for PaneCache<Acc> {
    fn default() -> Self {
        PaneCache {
            kept: HashMap::new(),
            seen: HashSet::new(),
        }
    }
}

/// One pane of a fired window: its token, its end, its slot's bytes.
struct PaneRef<'a> {
    token: u64,
    end: i64,
    bytes: Option<&'a [u8]>,
}

impl<Acc: Clone> PaneCache<Acc> {
    /// The accumulator of `pane`, decoded unless an earlier window did. Token 0 names nothing:
    /// decoded and not kept.
    fn pane<A: Aggregate<Acc = Acc>>(
        &mut self,
        aggregate: &A,
        pane: &PaneRef<'_>,
    ) -> Result<Acc, String> {
        let key = (Run::Pane, vec![pane.token]);
        if let Some(acc) = self.kept.get(&key) {
            return Ok(acc.clone());
        }
        let acc = stored_acc(aggregate, pane.bytes)?;
        if pane.token != 0 {
            self.kept.insert(key, acc.clone());
        }
        Ok(acc)
    }

    /// The merge of `panes` as `run` builds it, `None` for no pane. Each shorter run it is built
    /// from is kept for the windows after (token 0 in a run: not kept).
    fn run<A: Aggregate<Acc = Acc>>(
        &mut self,
        aggregate: &A,
        run: Run,
        panes: &[PaneRef<'_>],
    ) -> Result<Option<Acc>, String> {
        // In the order the run is built: a suffix from its last pane back, a prefix from its
        // first on. A run is kept under its tokens in that order.
        let order: Vec<&PaneRef<'_>> = match run {
            Run::Suffix => panes.iter().rev().collect(),
            _ => panes.iter().collect(),
        };
        let tokens: Vec<u64> = order.iter().map(|pane| pane.token).collect();
        self.seen.extend(&tokens);
        let keep = !tokens.contains(&0);
        let whole = order.len();
        // A whole suffix serves one window only (the next one starts a pane later), a whole
        // prefix also the next window's prefix: the one is taken, the other kept.
        let keep_whole = run == Run::Prefix;
        // The longest part of it already made.
        let (mut made, mut len) = (None, whole);
        while keep && made.is_none() && len > 1 {
            let key = (run, tokens[..len].to_vec());
            made = match len == whole && !keep_whole {
                true => self.kept.remove(&key),
                false => self.kept.get(&key).cloned(),
            };
            if made.is_none() {
                len -= 1;
            }
        }
        let mut acc = match (made, order.first()) {
            (Some(acc), _) => acc,
            (None, None) => return Ok(None),
            (None, Some(first)) => {
                len = 1;
                self.pane(aggregate, first)?
            }
        };
        for pane in &order[len..] {
            let next = self.pane(aggregate, pane)?;
            acc = match run {
                // An earlier pane takes in what follows it.
                Run::Suffix => {
                    let mut earlier = next;
                    aggregate.merge(&mut earlier, acc);
                    earlier
                }
                _ => {
                    aggregate.merge(&mut acc, next);
                    acc
                }
            };
            len += 1;
            if keep && (keep_whole || len < whole) {
                self.kept.insert((run, tokens[..len].to_vec()), acc.clone());
            }
        }
        Ok(Some(acc))
    }

    /// Forgets what holds a pane that no window of the call that just ended held (the windows
    /// after it slid past that pane), and starts the next call.
    fn end_call(&mut self) {
        let seen = &self.seen;
        self.kept
            .retain(|(_, tokens), _| tokens.iter().all(|token| seen.contains(token)));
        self.seen.clear();
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
/// window kept as panes) a token and an end per slot the record names, the window's accumulator
/// being the merge of those slots in order.
///
/// The merge follows the panes' positions only, never what the cache holds, so a window's result
/// is the same in any run (an aggregate's merge may round, as floating point does): time is cut
/// into blocks as long as the window, aligned on multiples of its size, and a window is the merge
/// of its panes in the block it starts in (a suffix of that block, each pane merged with the
/// merge of those after it) with those in the next block (a prefix, the merge of those before
/// each merged with it). A window holds at most one block boundary, and the windows sliding over
/// a block share its suffixes and prefixes: about three merges a window instead of one per pane.
/// A later pane is always merged into an earlier one.
fn fired_window<A: Aggregate>(
    aggregate: &A,
    panes: &mut PaneCache<A::Acc>,
    record: &abi::RecordRef<'_>,
    slots: &[SlotRef<'_>],
) -> Result<(Window, A::Acc), String> {
    let word = |at: usize| -> Option<[u8; 8]> { record.value.get(at..at + 8)?.try_into().ok() };
    let (Some(start), Some(end)) = (word(0), word(8)) else {
        return Err("cannot decode a fired window".into());
    };
    let window = Window {
        start: i64::from_le_bytes(start),
        end: i64::from_le_bytes(end),
    };
    let rest = &record.value[16..];
    if record.slots.is_empty() {
        let acc = codec::decode(Encoding::Bincode, rest, false)
            .map_err(|e| format!("cannot decode a fired window: {e}"))?;
        return Ok((window, acc));
    }
    if rest.len() != 16 * record.slots.len() {
        return Err("a fired window's panes and their tokens do not match".into());
    }
    let mut refs = Vec::with_capacity(record.slots.len());
    for (at, slot) in record.slots.iter().enumerate() {
        let slot = slots
            .get(slot as usize)
            .ok_or("a fired window names a slot that does not exist")?;
        let (Some(token), Some(end)) = (word(16 + 16 * at), word(24 + 16 * at)) else {
            return Err("cannot decode a fired window".into());
        };
        refs.push(PaneRef {
            token: u64::from_le_bytes(token),
            end: i64::from_le_bytes(end),
            bytes: slot.value,
        });
    }
    // The first block boundary at or after the window's start (none where that overflows: all
    // panes are then one prefix).
    let size = window.end.saturating_sub(window.start);
    let boundary = (size > 0)
        .then(|| {
            window
                .start
                .checked_add((size - window.start.rem_euclid(size)) % size)
        })
        .flatten();
    let split = refs
        .iter()
        .position(|pane| boundary.is_none_or(|boundary| pane.end > boundary))
        .unwrap_or(refs.len());
    let before = panes.run(aggregate, Run::Suffix, &refs[..split])?;
    let after = panes.run(aggregate, Run::Prefix, &refs[split..])?;
    let acc = match (before, after) {
        (Some(mut before), Some(after)) => {
            aggregate.merge(&mut before, after);
            before
        }
        (Some(acc), None) | (None, Some(acc)) => acc,
        (None, None) => aggregate.create(),
    };
    Ok((window, acc))
}
