//! Dead letters: records a stage could not take, as the dead-letter sink writes them —
//! `{"stage": …, "error": …, "raw": …}`. Stages and sources fill them; the executor hands them to
//! the dead-letter sink (or the log when there is none).

/// A record a stage failed on, as the dead-letter sink writes it.
#[derive(serde::Serialize)]
struct DeadLetter<'a> {
    stage: &'a str,
    error: &'a str,
    raw: std::borrow::Cow<'a, str>,
}

/// Dead letters waiting to be written: JSON objects `{"stage", "error", "raw"}`.
#[derive(Default)]
pub(crate) struct DeadLetters {
    pub(crate) lines: Vec<Vec<u8>>,
}

impl DeadLetters {
    /// Moves `other`'s letters to the end of these.
    pub(crate) fn append(&mut self, other: &mut DeadLetters) {
        self.lines.append(&mut other.lines);
    }

    pub(crate) fn push(&mut self, stage: &str, error: &str, raw: &[u8]) {
        let letter = DeadLetter {
            stage,
            error,
            raw: String::from_utf8_lossy(raw),
        };
        // Serializing plain strings cannot fail.
        self.lines
            .push(serde_json::to_vec(&letter).unwrap_or_default());
    }
}
