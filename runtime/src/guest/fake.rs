//! A guest whose replies a test writes in Rust: the seam that lets the stages' logic (keyed
//! state, windows, sessions, retries, the ordered merge) be tested without the Wasm toolchain.

use super::{Call, Guest, GuestFailure};
use flumen_sdk::abi::{BatchReader, OutputWriter};

/// One record of a request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub key: Vec<u8>,
    pub ts: i64,
    /// The state slots it refers to.
    pub slots: Vec<u32>,
    pub value: Vec<u8>,
}

/// One state slot of a request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub id: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// A decoded request: its records and slots.
#[derive(Debug, Clone, Default)]
pub(crate) struct Request {
    pub records: Vec<Record>,
    pub slots: Vec<Slot>,
}

/// What a fake answers a call with: it writes its reply's entries, or fails the call.
pub(crate) type Handler =
    Box<dyn FnMut(Call, &Request, &mut OutputWriter) -> Result<(), GuestFailure> + Send>;

/// A guest answering every call through one handler, and keeping a log of the calls it got.
pub(crate) struct FakeGuest {
    hash: String,
    handler: Handler,
    reply: OutputWriter,
    /// Every call made, with its request.
    pub calls: std::sync::Arc<std::sync::Mutex<Vec<(Call, Request)>>>,
}

impl FakeGuest {
    /// A fake of the module with hash `hash`, answering with `handler`.
    pub fn new(
        hash: &str,
        handler: impl FnMut(Call, &Request, &mut OutputWriter) -> Result<(), GuestFailure>
        + Send
        + 'static,
    ) -> Self {
        FakeGuest {
            hash: hash.to_string(),
            handler: Box::new(handler),
            reply: OutputWriter::default(),
            calls: Default::default(),
        }
    }
}

/// Decodes a request made of `parts` (a batch, then any slot section).
pub(crate) fn decode(parts: &[&[u8]]) -> Result<Request, GuestFailure> {
    let bytes = parts.concat();
    let bad = |e: flumen_sdk::abi::FrameError| GuestFailure(format!("bad request: {e}"));
    let reader = BatchReader::new(&bytes).map_err(bad)?;
    let slots = reader
        .slots()
        .map_err(bad)?
        .into_iter()
        .map(|s| Slot {
            id: s.id.to_vec(),
            value: s.value.map(<[u8]>::to_vec),
        })
        .collect();
    let records = reader
        .map(|r| {
            r.map(|r| Record {
                key: r.key.to_vec(),
                ts: r.ts,
                slots: r.slots.iter().collect(),
                value: r.value.to_vec(),
            })
        })
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    Ok(Request { records, slots })
}

impl Guest for FakeGuest {
    fn module_hash(&self) -> &str {
        &self.hash
    }

    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        let request = decode(request)?;
        self.reply.clear();
        let outcome = (self.handler)(call, &request, &mut self.reply);
        if let Ok(mut calls) = self.calls.lock() {
            calls.push((call, request));
        }
        outcome.map(|()| self.reply.as_bytes())
    }
}
