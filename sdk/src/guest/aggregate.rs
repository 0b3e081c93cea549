//! [`AggregateRunner`]: drives one [`Aggregate`] through the ABI (add, merge, finish).

use super::*;

/// Drives one [`Aggregate`] through the ABI.
pub struct AggregateRunner<A: Aggregate> {
    aggregate: Option<A>,
    buffers: Buffers,
    input_is_struct: bool,
    accs: Vec<Option<A::Acc>>,
}

impl<A: Aggregate> Default for AggregateRunner<A> {
    fn default() -> Self {
        AggregateRunner {
            aggregate: None,
            buffers: Buffers::new(),
            input_is_struct: codec::is_struct::<A::Input<'static>>(),
            accs: Vec::new(),
        }
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
            accs[slot] = Some(match slots[slot].value {
                Some(bytes) => codec::decode(Encoding::Bincode, bytes, false)
                    .map_err(|e| format!("cannot decode the stored accumulator: {e}"))?,
                None => aggregate.create(),
            });
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
            // Neighbours first, then their results, level by level: each accumulator takes part
            // in log2(n) merges instead of up to n, which matters where merging costs the size
            // of both sides (a sorted list of skus). The order of the panes is kept, and the
            // result lands in the first slot, the window's.
            let mut width = 1;
            while width < refs.len() {
                for pair in refs.chunks(2 * width) {
                    if let (Some(&left), Some(&right)) = (pair.first(), pair.get(width))
                        && let Some(other) = accs[right].take()
                        && let Some(acc) = accs[left].as_mut()
                    {
                        aggregate.merge(acc, other);
                    }
                }
                width *= 2;
            }
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
        let Buffers {
            ports,
            input,
            output,
            extracted,
            ..
        } = &mut self.buffers;
        output.clear();
        let Some(Ok(batch)) = input.get(..len).map(BatchReader::new) else {
            output.error(u32::MAX, "malformed finish request", b"");
            return output.as_bytes();
        };
        for (index, record) in batch.enumerate() {
            let Ok(record) = record else { break };
            let window = |value: &[u8]| -> Option<(Window, A::Acc)> {
                let start = i64::from_le_bytes(value.get(0..8)?.try_into().ok()?);
                let end = i64::from_le_bytes(value.get(8..16)?.try_into().ok()?);
                let acc = codec::decode(Encoding::Bincode, value.get(16..)?, false).ok()?;
                Some((Window { start, end }, acc))
            };
            let Some((bounds, acc)) = window(record.value) else {
                output.error(index as u32, "cannot decode a fired window", b"");
                continue;
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
        output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`].
    fn to_json(&mut self, len: usize) -> &[u8] {
        let Buffers { input, output, .. } = &mut self.buffers;
        render_json::<A::Input<'_>>(input, output, len)
    }
}
