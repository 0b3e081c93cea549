//! [`Runner`]: drives one [`Operator`] through the ABI.

use super::*;

/// Drives one [`Operator`] through the ABI.
pub struct Runner<Op: Operator> {
    op: Option<Op>,
    buffers: Buffers,
    input_is_struct: bool,
    states: Vec<Option<Op::State>>,
}

impl<Op: Operator> Default for Runner<Op> {
    fn default() -> Self {
        Runner {
            op: None,
            buffers: Buffers::new(),
            input_is_struct: codec::is_struct::<Op::Input<'static>>(),
            states: Vec::new(),
        }
    }
}

impl<Op: Operator> GuestRunner for Runner<Op> {
    /// A buffer of `len` bytes for the next request.
    fn input_buffer(&mut self, len: usize) -> &mut [u8] {
        self.buffers.input_buffer(len)
    }

    /// Answers [`abi::exports::DESCRIBE`].
    fn describe(&mut self) -> &[u8] {
        self.buffers.encode_reply(describe::<Op>())
    }

    /// Answers [`abi::exports::INIT`] for the request in the first `len` input bytes.
    fn init(&mut self, len: usize) -> &[u8] {
        let sides = Op::side_outputs().into_iter().map(|s| s.name).collect();
        let outcome = self.buffers.init(len, sides).and_then(|params| {
            let params: Op::Params = decode_params(&params)?;
            self.op = Some(Op::new(params)?);
            Ok(())
        });
        self.buffers.encode_reply(outcome)
    }

    /// Answers [`abi::exports::PROCESS`] for the batch in the first `len` input bytes.
    fn process(&mut self, len: usize) -> &[u8] {
        let Some(op) = self.op.as_mut() else {
            return refuse(&mut self.buffers.output, "process called before init");
        };
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
        self.states.clear();
        self.states.resize_with(slots.len(), || None);
        let encoding = batch.encoding();
        for (index, record) in batch.enumerate() {
            let index = index as u32;
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    output.error(index, &e.to_string(), b"");
                    break;
                }
            };
            let raw = |is_struct| raw_text::<Op::Input<'_>>(encoding, record.value, is_struct);
            let input: Op::Input<'_> =
                match codec::decode(encoding, record.value, self.input_is_struct) {
                    Ok(input) => input,
                    Err(e) => {
                        let message = format!(
                            "cannot decode {}: {e}",
                            crate::type_name::<Op::Input<'static>>()
                        );
                        output.error(index, &message, &raw(self.input_is_struct));
                        continue;
                    }
                };
            let mut no_state = Op::State::default();
            let slot = record.slots.get(0).map(|s| s as usize);
            let slot = slot.filter(|&slot| slot < slots.len());
            let state = match slot {
                Some(slot) => {
                    if self.states[slot].is_none() {
                        match Op::State::load(slots[slot].value) {
                            Ok(state) => self.states[slot] = Some(state),
                            Err(e) => {
                                output.error(index, &e, &raw(self.input_is_struct));
                                continue;
                            }
                        }
                    }
                    self.states[slot].get_or_insert_with(Default::default)
                }
                None => &mut no_state,
            };
            // A failed record leaves its key's state as it was: copied first once a record of
            // this batch may have changed it (it is dirty); until then it is what its slot's
            // bytes say, read again on a failure (so a state is not copied for every record).
            let before = state.is_dirty().then(|| state.clone());
            let mark = output.mark();
            let mut out = Outputs {
                target: Target::Abi {
                    writer: output,
                    ports,
                    extracted,
                },
                ts: record.ts,
                key: record.key,
                index,
                failure: None,
            };
            let result = op.process(input, state, &mut out);
            if let Some(message) = result.err().or(out.failure) {
                *state = match (before, slot) {
                    (Some(before), _) => before,
                    // It loaded from these bytes above, so it loads again.
                    (None, Some(slot)) => Op::State::load(slots[slot].value).unwrap_or_default(),
                    (None, None) => Op::State::default(),
                };
                output.rollback(mark);
                output.error(index, &message, &raw(self.input_is_struct));
            }
        }
        // One buffer for every state saved, reused.
        let mut bytes = Vec::new();
        for (slot, state) in self.states.iter().enumerate() {
            let Some(state) = state.as_ref().filter(|s| s.is_dirty()) else {
                continue;
            };
            bytes.clear();
            match state.save(&mut bytes) {
                Ok(present) => {
                    let _ = output.state(
                        slot as u32,
                        present.then_some(|buf: &mut Vec<u8>| {
                            buf.extend_from_slice(&bytes);
                            Ok::<_, ()>(())
                        }),
                    );
                }
                Err(e) => output.error(u32::MAX, &format!("cannot save state: {e}"), b""),
            }
        }
        output.as_bytes()
    }

    /// Answers [`abi::exports::TO_JSON`]: each input record re-encoded as JSON on port 0.
    fn to_json(&mut self, len: usize) -> &[u8] {
        let Buffers { input, output, .. } = &mut self.buffers;
        render_json::<Op::Input<'_>>(input, output, len)
    }

    fn merge(&mut self, _: usize) -> &[u8] {
        refuse(&mut self.buffers.output, "this module is not an aggregate")
    }

    fn finish(&mut self, _: usize) -> &[u8] {
        refuse(&mut self.buffers.output, "this module is not an aggregate")
    }

    fn refuse(&mut self, why: &str) -> &[u8] {
        refuse(&mut self.buffers.output, why)
    }
}
