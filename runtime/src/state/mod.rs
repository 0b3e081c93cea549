//! The state a stage keeps on the host, per partition: keyed state with its time-to-live
//! ([`keyed`]), window accumulators and panes ([`windows`]), session windows ([`sessions`]).
//!
//! The guest never holds state between calls: a call gets the slots it needs and returns their
//! new contents, applied here only when the whole call succeeded. Each store can therefore be
//! taken apart and put back together at any batch boundary: `snapshot` and `restore` (for
//! checkpoints), and `redistribute` — every entry moved to the partition its key hashes to among a
//! new number of partitions (a reload that changes a stage's parallelism, a restart with another
//! `FLUMEN_PARALLELISM`). Each store counts the bytes it holds (keys included), which the stage
//! holds against `max_state_bytes`.

pub(crate) mod keyed;
pub(crate) mod sessions;
pub(crate) mod windows;

use crate::window::Bounds;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// A key, a state value or an accumulator: inline up to 16 bytes (ids, skus, flags, counters,
/// sums), so most entries of a large state cost no allocation of their own.
pub(crate) type Bytes = SmallVec<[u8; 16]>;

/// Bytes as a checkpoint holds them: written as a length and the raw bytes, read back in one
/// piece (inline up to 16 bytes, like [`Bytes`]) rather than byte by byte.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Blob(pub Bytes);

impl std::ops::Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Blob {
    fn from(bytes: &[u8]) -> Self {
        Blob(Bytes::from_slice(bytes))
    }
}

impl serde::Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob::from(bytes))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(Bytes::from_vec(bytes)))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// A long-lived map keyed by data: seeded hashing (foldhash), fast and not predictable from
/// outside. Maps that live for one batch use FxHash.
pub(crate) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A fired window: its bounds, its key, what its result is made from.
pub(crate) type Fired = (Bounds, Bytes, FiredAcc);

/// A pane of a fired sliding window: its accumulator's token, its end, its accumulator.
pub(crate) type Pane = (u64, i64, Bytes);

/// What a fired window's result is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FiredAcc {
    /// Its accumulator.
    Whole(Bytes),
    /// A sliding window kept as panes: its panes' accumulators in order, each with its token
    /// ([`WindowAcc::token`]) and its end, merged by the module as it finishes the window.
    Panes(Vec<Pane>),
}

/// The accumulator of one window; `fired` once its result was emitted (it stays while allowed
/// lateness lasts).
#[derive(Debug, Clone)]
pub(crate) struct WindowAcc {
    pub acc: Bytes,
    pub fired: bool,
    /// Names this value of `acc`, uniquely in the process (a new value gets a new token): a module
    /// keeps the panes it decoded by token, so a pane shared by consecutive windows is decoded
    /// once. Not part of the content: two accumulators with the same bytes are equal.
    pub token: u64,
}

impl WindowAcc {
    pub fn new(acc: Bytes, fired: bool) -> WindowAcc {
        WindowAcc {
            acc,
            fired,
            token: next_token(),
        }
    }
}

impl PartialEq for WindowAcc {
    fn eq(&self, other: &Self) -> bool {
        self.acc == other.acc && self.fired == other.fired
    }
}

impl Eq for WindowAcc {}

/// A token never handed out before in this process (never 0, which names nothing).
pub(crate) fn next_token() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Where a key goes among `count` partitions: a fixed hash, the same on every run (one partition
/// takes every key).
pub(crate) fn partition_of(key: &[u8], count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let hash = foldhash::fast::FixedState::with_seed(0x666c756d656e).hash_one(key);
    (hash % count as u64) as usize
}

/// What every store of a partition can do.
pub(crate) trait Store: Default + Sized {
    /// The store's content, in a form that does not depend on partitioning, to be written to
    /// disk.
    type Snapshot;

    /// The store's content.
    fn snapshot(&self) -> Self::Snapshot;

    /// A store holding what `snapshot` held.
    fn restore(snapshot: Self::Snapshot) -> Self;

    /// Bytes held (keys included).
    fn bytes(&self) -> usize;

    /// The entries of `parts` (the stores of every partition of a stage) spread over `count`
    /// partitions by [`partition_of`] their key.
    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_takes_every_key_and_the_hash_is_fixed() {
        assert_eq!(partition_of(b"anything", 1), 0);
        assert_eq!(partition_of(b"anything", 0), 0);
        // Fixed across runs and builds: state written by one run is found by the next.
        let spread: Vec<usize> = (0..8)
            .map(|i| partition_of(format!("sku-{i}").as_bytes(), 4))
            .collect();
        let again: Vec<usize> = (0..8)
            .map(|i| partition_of(format!("sku-{i}").as_bytes(), 4))
            .collect();
        assert_eq!(spread, again);
        assert!(spread.iter().all(|&p| p < 4));
        assert!(spread.iter().any(|&p| p != spread[0]), "{spread:?}");
    }
}
