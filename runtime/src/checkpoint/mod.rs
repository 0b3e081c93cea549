//! Checkpoints: what one holds ([`Checkpoint`], this file) and how its bytes reach the disk and
//! come back ([`files`]).
//!
//! A checkpoint is taken between two rounds of the executor, when nothing is in flight: every
//! source's position and watermark progress, every stage's state with the module and parameters
//! that made it, every sink's committed length. Together they are a consistent cut: resuming
//! from it (sources seeked, state restored, sinks cut back to their committed lengths) replays
//! exactly the rounds after it, so the finished outputs equal an uninterrupted run's.

mod files;

pub use files::{
    CheckpointDir, FORMAT_VERSION, Found, JOURNALS, KEEP, Newest, Unreadable, journal_dir,
};

use crate::connectors::{Position, SinkPosition};
use crate::diff::StateLayout;
use crate::stage::StageSnapshot;
use crate::window::SplitWatermarks;
use serde::{Deserialize, Serialize};

/// Everything a pipeline needs to resume where a checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The pipeline's name: a checkpoint of another pipeline is refused.
    pub pipeline: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
    /// Every source, in the plan's order.
    pub sources: Vec<SourceEntry>,
    /// Every operator stage, in the plan's order.
    pub stages: Vec<StageEntry>,
    /// Every sink, in the plan's order.
    pub sinks: Vec<SinkEntry>,
}

/// A source at the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceEntry {
    /// Its name in the pipeline.
    pub name: String,
    /// What it reads, for people (a file's path).
    pub input: String,
    /// Where it was in its input.
    pub position: Position,
    /// Its watermark progress (largest event time seen, per split), if it has event times.
    pub tracker: Option<SplitWatermarks>,
    /// Its watermark.
    pub watermark: i64,
    /// The newest event time it had read (the far-future guard's reference).
    pub newest: Option<i64>,
    /// Whether it had ended.
    pub finished: bool,
}

/// An operator stage at the checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    /// Its name in the pipeline.
    pub name: String,
    /// The content hash of the module that made its state.
    pub module_hash: String,
    /// Its parameters then, as JSON.
    pub params: String,
    /// Its partitions then.
    pub partitions: usize,
    /// What its state is shaped by: judged against the restarted stage like a reload.
    pub layout: StateLayout,
    /// Its state, per partition.
    pub(crate) state: StageSnapshot,
}

impl StageEntry {
    /// Keys with state, windows and sessions held.
    pub fn entries(&self) -> usize {
        self.state.entries()
    }

    /// Bytes of state held (keys included).
    pub fn state_bytes(&self) -> usize {
        self.state.bytes()
    }

    /// The stage's watermark.
    pub fn watermark(&self) -> i64 {
        self.state.watermark
    }
}

/// A sink at the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkEntry {
    /// Its name in the pipeline.
    pub name: String,
    /// Where it writes, for matching and for people (a file's path).
    pub output: String,
    /// Where its output stood, durably, when the checkpoint was taken (a file's length).
    pub committed: Option<SinkPosition>,
}

impl Checkpoint {
    /// The checkpoint as bytes (bincode).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .unwrap_or_else(|e| unreachable!("a checkpoint always encodes: {e}"))
    }

    /// A checkpoint from its bytes. The bytes passed the checksum of their file, but are read
    /// as untrusted anyway: a length that lies makes decoding fail, not allocate (serde
    /// pre-allocates cautiously).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        // The decoder claims from its limit what each value takes in memory (a string or byte
        // string its length, before it is allocated; an integer 8 bytes however short its
        // encoding): a valid checkpoint claims less than 32× its length. With a limit of that
        // (rounded up to a power of 4), a length that lies fails instead of allocating.
        macro_rules! within {
            ($($bits:literal),*) => {
                match bytes.len().next_power_of_two().trailing_zeros() + 5 {
                    $(bits if bits <= $bits => decode_within::<{ 1usize << $bits }>(bytes),)*
                    _ => return Err("it is larger than 1 TiB".into()),
                }
            };
        }
        let decoded = within!(
            16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46
        );
        match decoded {
            Ok((checkpoint, read)) if read == bytes.len() => Ok(checkpoint),
            Ok((_, read)) => Err(format!(
                "{} bytes follow its content",
                bytes.len().saturating_sub(read)
            )),
            Err(e) => Err(format!("its content does not decode: {e}")),
        }
    }

    /// Whether every source had ended: the run it was taken of had finished.
    pub fn finished(&self) -> bool {
        self.sources.iter().all(|s| s.finished)
    }

    /// Keys with state, over every stage.
    pub fn entries(&self) -> usize {
        self.stages.iter().map(StageEntry::entries).sum()
    }

    /// Each source's position, for a log line: `orders at byte 1234`.
    pub fn positions(&self) -> String {
        let positions: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                let at = match &s.position {
                    Position::File { offset, .. } => format!("at byte {offset}"),
                    Position::Sequence { drawn } => format!("at item {drawn}"),
                    Position::Kafka { splits, .. } => format!("at {}", Position::offsets(splits)),
                };
                let ended = if s.finished { " (ended)" } else { "" };
                format!("{} {at}{ended}", s.name)
            })
            .collect();
        positions.join(", ")
    }

    /// How long ago it was taken, in milliseconds (0 if the clock went back).
    pub fn age_ms(&self) -> i64 {
        (now_ms() - self.taken_at_ms).max(0)
    }
}

/// Decodes a checkpoint with a decoder that claims at most `LIMIT` bytes.
fn decode_within<const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(Checkpoint, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard().with_limit::<LIMIT>())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::PartitionSnapshot;
    use crate::state::Blob;

    #[test]
    fn a_checkpoint_round_trips_and_garbage_does_not_decode() {
        let mut state = StageSnapshot {
            watermark: 42,
            last_sweep: 7,
            partitions: vec![PartitionSnapshot::default()],
        };
        state.partitions[0]
            .keyed
            .entries
            .insert(Blob::from(&b"sku"[..]), (Blob::from(&b"12"[..]), Some(99)));
        let checkpoint = Checkpoint {
            pipeline: "orders".into(),
            taken_at_ms: now_ms(),
            sources: vec![SourceEntry {
                name: "orders".into(),
                input: "in.jsonl".into(),
                position: Position::File {
                    offset: 10,
                    skipping: false,
                    device: 1,
                    inode: 2,
                    size: 20,
                    fingerprint: [3; 32],
                },
                tracker: Some(SplitWatermarks::new(5000)),
                watermark: 12,
                newest: Some(17),
                finished: false,
            }],
            stages: vec![StageEntry {
                name: "stock".into(),
                module_hash: "abc".into(),
                params: r#"{"initial_stock":5}"#.into(),
                partitions: 1,
                layout: StateLayout {
                    state_type: Some("Stock".into()),
                    key_by: Some("sku".into()),
                    window: None,
                    allowed_lateness_ms: 0,
                },
                state,
            }],
            sinks: vec![SinkEntry {
                name: "out".into(),
                output: "out.jsonl".into(),
                committed: Some(SinkPosition::Length(5)),
            }],
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), checkpoint);
        assert_eq!(checkpoint.entries(), 1);
        assert_eq!(checkpoint.stages[0].state_bytes(), 5);
        assert_eq!(checkpoint.positions(), "orders at byte 10");
        assert!(!checkpoint.finished());
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::decode(&longer).is_err());
        // A length that claims far more than there is fails, without allocating it.
        // Many tiny entries (each claims far more than its few bytes) still decode.
        let mut many = checkpoint.clone();
        many.stages[0].state.partitions[0].keyed.entries = (0..50_000u16)
            .map(|i| (Blob::from(&i.to_le_bytes()[..]), (Blob::default(), Some(1))))
            .collect();
        assert_eq!(Checkpoint::decode(&many.encode()), Ok(many));
        for claim in [u64::MAX, 1 << 40, 1 << 30] {
            let mut lying = vec![253];
            lying.extend_from_slice(&claim.to_le_bytes());
            lying.extend_from_slice(&bytes[1..]);
            assert!(Checkpoint::decode(&lying).is_err());
        }
    }
}
