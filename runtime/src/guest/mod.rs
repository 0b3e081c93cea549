//! Guests: what runs an operator's code. A stage talks to its partitions' guests only through the
//! [`Guest`] trait — one call with a request in the batch ABI, one reply of output entries — so
//! the same stage code runs a sandboxed Wasm instance, the native library of the same UDF crate,
//! or, in unit tests, a fake written in Rust.
//!
//! - `sandbox`: the wasmtime engine and the module loader (checks imports, size, `describe`).
//! - `wasm`: one live instance (Wasm or native) and what a failed call tells.
//! - `instance`: [`OperatorInstance`], an initialised instance that rebuilds itself after a
//!   failed call — the [`Guest`] stages run.
//! - `native`: the native backend (shared libraries, no sandbox), for measuring and debugging.
//! - `fake` (tests only): a guest whose replies a test writes in Rust.

mod failure;
#[cfg(test)]
pub(crate) mod fake;
mod instance;
mod native;
mod sandbox;
mod wasm;

pub use failure::GuestFailure;
pub use instance::{InstanceConfig, OperatorInstance};
pub use sandbox::{
    Limits, LoadedModule, MAX_MODULE_BYTES, MAX_POOL, MIN_POOL, ModuleError, Sandbox,
    check_describe,
};

/// An operator call a stage makes (see `flumen_sdk::abi::exports` for each one's request and
/// reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Runs the operator over a batch (and its state slots); for an aggregate, adds records to
    /// their accumulators.
    Process,
    /// Aggregates only: merges accumulators.
    Merge,
    /// Aggregates only: the results of fired windows.
    Finish,
    /// Renders a batch as JSON, without running the operator.
    ToJson,
}

/// Which export of a module a call runs: the operator calls, and the two control calls made
/// before any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Export {
    Describe,
    Init,
    Process,
    Merge,
    Finish,
    ToJson,
}

/// What runs one partition of an operator. A failed call changes nothing the host keeps (state
/// comes back only in a successful reply), and the guest must be usable again for the next call.
pub trait Guest: Send {
    /// The hash of the module's bytes: tells module versions apart.
    fn module_hash(&self) -> &str;

    /// Makes `call` with `request` (the concatenation of its parts: a batch, then any state
    /// slots) and returns the reply, borrowed until the next call.
    fn call(&mut self, call: Call, request: &[&[u8]]) -> Result<&[u8], GuestFailure>;

    /// What this guest went through so far: failed calls, time-outs, rebuilds.
    fn health(&self) -> crate::telemetry::GuestHealth {
        crate::telemetry::GuestHealth::default()
    }

    /// [`Call::Process`].
    fn process(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Process, request)
    }

    /// [`Call::Merge`].
    fn merge(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Merge, request)
    }

    /// [`Call::Finish`].
    fn finish(&mut self, request: &[&[u8]]) -> Result<&[u8], GuestFailure> {
        self.call(Call::Finish, request)
    }

    /// [`Call::ToJson`] of one batch.
    fn to_json(&mut self, batch: &[u8]) -> Result<&[u8], GuestFailure> {
        self.call(Call::ToJson, &[batch])
    }
}
