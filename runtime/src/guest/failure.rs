//! How a guest call fails: [`GuestFailure`], the message a dead letter carries, shared by the
//! Wasm sandbox and the native backend.

/// A guest call that did not complete: what to tell the dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFailure(pub String);

/// How a time-out failure starts (see [`GuestFailure::is_timeout`]).
pub(crate) const TIMEOUT: &str = "exceeded its time limit of ";

impl GuestFailure {
    /// Whether the call ran out of time (rather than trapping, which is instant).
    pub fn is_timeout(&self) -> bool {
        self.0.starts_with(TIMEOUT)
    }
}

impl std::fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GuestFailure {}

/// A guest's panic message as a failure: `panicked at …` once, whether or not the guest's own
/// message already starts so (Rust's panic messages do).
pub(crate) fn panic_failure(message: &str) -> String {
    let message = message.strip_prefix("panicked at ").unwrap_or(message);
    format!("panicked at {message}")
}
