//! Keyed state of a `process` stage: one value per key, each with the event time from which it
//! may be dropped (time-to-live).
//!
//! Once a checkpointing pipeline asks ([`KeyedStore::track`]), the store also keeps a log of
//! what changed since the last checkpoint took it ([`KeyedStore::take_changes`]): one entry per
//! key changed (updated in place when the key changes again) or removed, one per sweep of
//! expired entries (not one per key it dropped). Taking it is a move,
//! so a checkpoint costs the executor nearly nothing however large the state; the checkpoint
//! writer, which holds the rest, applies it.

use super::{Blob, Bytes, Map, Store, partition_of};
use hashbrown::{HashTable, hash_table};
use serde::{Deserialize, Serialize};
use std::hash::BuildHasher;

/// The state of one key, in 48 bytes: a store may hold millions of keys, each in a bucket of a
/// hash table that is up to half empty, so the bucket's size is most of what keyed state costs
/// (an entry of its own key, value and expiry took 72).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// The key then the value, in one buffer: inline when both fit in 16 bytes (an id and a
    /// flag, a sku and a count), else one allocation rather than two.
    bytes: Bytes,
    /// Event time from which the entry may be dropped (time-to-live), if `expiring`.
    expires: i64,
    /// Where the key's latest change is in the log, if it was logged in the current epoch: the
    /// epoch, and the index of its entry plus one.
    logged: (u32, u32),
    /// The key's length: framed as a `u32` wherever a key comes from (the batch ABI).
    key_len: u32,
    expiring: bool,
}

impl Entry {
    fn new(key: &[u8], value: &[u8], expires: Option<i64>, logged: (u32, u32)) -> Entry {
        let mut bytes = Bytes::with_capacity(key.len() + value.len());
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Entry {
            bytes,
            expires: expires.unwrap_or_default(),
            logged,
            key_len: key.len() as u32,
            expiring: expires.is_some(),
        }
    }

    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }

    fn expires(&self) -> Option<i64> {
        self.expiring.then_some(self.expires)
    }

    /// The bytes the key and its value take.
    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Replaces the value and its expiry.
    fn set(&mut self, value: &[u8], expires: Option<i64>) {
        self.bytes.truncate(self.key_len as usize);
        self.bytes.extend_from_slice(value);
        self.expires = expires.unwrap_or_default();
        self.expiring = expires.is_some();
    }
}

/// Appends `change` to `log` (of `epoch`); where it is, for its key's entry.
fn log(log: &mut Vec<Change>, epoch: u32, change: Change) -> (u32, u32) {
    log.push(change);
    // Past 4 G entries the key points nowhere: a later change is logged again.
    u32::try_from(log.len()).map_or((0, 0), |at| (epoch, at))
}

/// The keyed state of one partition.
///
/// Entries sit in a hash table of their own whose hash a caller computes once per key
/// ([`KeyedStore::hash`]) and hands to every later lookup of that key: a batch looks a key up
/// once when it reads its state and once when it writes it back, each a single probe of a table
/// that may hold millions of keys (a cache miss each).
#[derive(Debug, Default)]
pub(crate) struct KeyedStore {
    entries: HashTable<Entry>,
    hasher: foldhash::fast::RandomState,
    bytes: usize,
    /// Whether changes are logged.
    tracking: bool,
    /// What changed since the log was last taken, in order.
    log: Vec<Change>,
    /// Which stretch of the log entries may point into: taking the log starts the next epoch,
    /// so no entry points into it any more; so does logging a sweep, so that no change logged
    /// before the sweep is updated in place (which would move it before the sweep).
    epoch: u32,
}

/// A [`KeyedStore`]'s content: each key's value and expiry. A hash table, in no order: the
/// checkpoint writer holds one from checkpoint to checkpoint and applies each checkpoint's changes
/// to it one by one, at a cost that follows the changes, not the state (no sort, no merge).
/// Encoded as a sequence of `(key, value, expires)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyedSnapshot {
    pub entries: Map<Blob, (Blob, Option<i64>)>,
}

/// What changed in keyed state since the last checkpoint, change by change in the order they
/// happened: a key with its value and expiry then, or `None` where it was removed. A key may
/// appear more than once; its last change counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyedDelta {
    /// The changes of each partition (a key's are all in one).
    pub parts: Vec<Vec<Change>>,
}

impl KeyedDelta {
    /// How many changes.
    pub fn len(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }
}

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A key set to a value, to expire at a time (if any).
    Put(Blob, Blob, Option<i64>),
    /// A key's state dropped.
    Remove(Blob),
    /// The partition swept of every entry expired at this watermark ([`KeyedStore::expire`]):
    /// one entry for the whole sweep, not one per key dropped, and applied to the keys of its
    /// own partition only. A sweep drops half a day's keys at a time from a large state (with
    /// a 24 h time to live): the writer drops them in one pass over what it holds, rather than
    /// key by key, each a cache miss.
    Sweep(i64),
}

impl KeyedSnapshot {
    /// Applies `delta` to this snapshot: the snapshot of the state the delta led to.
    pub fn apply(&mut self, delta: KeyedDelta) {
        // A key's changes are all in one partition, in the order they happened (the last
        // counts), and a partition's sweep drops only its own keys: partition by partition, each
        // in order, is exact.
        let count = delta.parts.len();
        for (part, changes) in delta.parts.into_iter().enumerate() {
            // Each sweep is applied ahead of the changes logged before it, which then leave out
            // what it drops (a key put to expire by then is removed, not inserted): the same
            // result, without inserting keys only to drop them — at the end of a run, the sweep
            // to +∞ drops every key the last second's changes put.
            let mut sweeps = (changes.iter())
                .filter_map(|c| match c {
                    Change::Sweep(watermark) => Some(*watermark),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .into_iter();
            let mut ahead = sweeps.next();
            if let Some(watermark) = ahead {
                self.sweep(watermark, part, count);
            }
            for change in changes {
                match change {
                    Change::Put(key, _, Some(at)) if ahead.is_some_and(|w| at <= w) => {
                        self.entries.remove(&key);
                    }
                    Change::Put(key, value, expires) => {
                        self.entries.insert(key, (value, expires));
                    }
                    Change::Remove(key) => {
                        self.entries.remove(&key);
                    }
                    Change::Sweep(_) => {
                        ahead = sweeps.next();
                        if let Some(watermark) = ahead {
                            self.sweep(watermark, part, count);
                        }
                    }
                }
            }
        }
    }

    /// Drops the entries of partition `part` (of `count`) expired at `watermark`.
    fn sweep(&mut self, watermark: i64, part: usize, count: usize) {
        self.entries.retain(|key, (_, expires)| {
            expires.is_none_or(|at| at > watermark) || partition_of(key, count) != part
        });
    }

    /// Merges snapshots of several partitions (whose keys are apart) into one.
    pub fn merge(parts: impl IntoIterator<Item = KeyedSnapshot>) -> KeyedSnapshot {
        let mut parts: Vec<KeyedSnapshot> = parts.into_iter().collect();
        // Into the largest: the fewest entries moved.
        let largest = (0..parts.len()).max_by_key(|&i| parts[i].entries.len());
        let mut merged = largest.map(|i| parts.swap_remove(i)).unwrap_or_default();
        for part in parts {
            merged.entries.extend(part.entries);
        }
        merged
    }
}

/// What a key holds now: its value unless expired, and the bytes it takes (expired or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found<'a> {
    pub live: Option<&'a [u8]>,
    pub footprint: usize,
}

impl KeyedStore {
    /// The hash of `key` in this store, for [`KeyedStore::find`], [`KeyedStore::put_hashed`]
    /// and [`KeyedStore::remove_hashed`].
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// What `key` (of hash `hash`) holds at `watermark`.
    pub fn find(&self, key: &[u8], hash: u64, watermark: i64) -> Found<'_> {
        match self.entries.find(hash, |e| e.key() == key) {
            Some(e) => Found {
                live: e
                    .expires()
                    .is_none_or(|at| at > watermark)
                    .then_some(e.value()),
                footprint: e.len(),
            },
            None => Found {
                live: None,
                footprint: 0,
            },
        }
    }

    /// The value of `key`, unless it expired at `watermark`.
    #[cfg(test)]
    pub fn live(&self, key: &[u8], watermark: i64) -> Option<&[u8]> {
        self.find(key, self.hash(key), watermark).live
    }

    /// The bytes `key` takes now (none if it has no entry, expired or not).
    #[cfg(test)]
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.find(key, self.hash(key), i64::MIN).footprint
    }

    /// Sets `key` to `value`, to expire at `expires`.
    #[cfg(test)]
    pub fn put(&mut self, key: &[u8], value: &[u8], expires: Option<i64>) {
        self.put_hashed(key, self.hash(key), value, expires);
    }

    /// Sets `key` (of hash `hash`) to `value`, to expire at `expires`.
    pub fn put_hashed(&mut self, key: &[u8], hash: u64, value: &[u8], expires: Option<i64>) {
        let hasher = &self.hasher;
        let entry = self
            .entries
            .entry(hash, |e| e.key() == key, |e| hasher.hash_one(e.key()));
        match entry {
            hash_table::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                self.bytes = self.bytes - entry.len() + key.len() + value.len();
                entry.set(value, expires);
                if self.tracking {
                    let (epoch, at) = entry.logged;
                    let slot = (at as usize).checked_sub(1).filter(|_| epoch == self.epoch);
                    match slot.and_then(|i| self.log.get_mut(i)) {
                        // Changed again: its entry in the log takes the new value.
                        Some(Change::Put(_, logged, logged_expires)) => {
                            logged.0.clear();
                            logged.0.extend_from_slice(value);
                            *logged_expires = expires;
                        }
                        _ => {
                            let change = Change::Put(Blob::from(key), Blob::from(value), expires);
                            entry.logged = log(&mut self.log, self.epoch, change);
                        }
                    }
                }
            }
            hash_table::Entry::Vacant(vacant) => {
                self.bytes += key.len() + value.len();
                let logged = if self.tracking {
                    let change = Change::Put(Blob::from(key), Blob::from(value), expires);
                    log(&mut self.log, self.epoch, change)
                } else {
                    (0, 0)
                };
                vacant.insert(Entry::new(key, value, expires, logged));
            }
        }
    }

    /// Drops `key`'s state.
    #[cfg(test)]
    pub fn remove(&mut self, key: &[u8]) {
        self.remove_hashed(key, self.hash(key));
    }

    /// Drops the state of `key`, of hash `hash`.
    pub fn remove_hashed(&mut self, key: &[u8], hash: u64) {
        if let Ok(found) = self.entries.find_entry(hash, |e| e.key() == key) {
            let (gone, _) = found.remove();
            self.bytes -= gone.len();
            if self.tracking {
                self.log.push(Change::Remove(Blob::from(key)));
            }
        }
    }

    /// Drops every entry expired at `watermark`.
    pub fn expire(&mut self, watermark: i64) {
        let bytes = &mut self.bytes;
        self.entries.retain(|e| {
            let keep = e.expires().is_none_or(|at| at > watermark);
            if !keep {
                *bytes -= e.len();
            }
            keep
        });
        if self.tracking {
            self.log.push(Change::Sweep(watermark));
            self.next_epoch();
        }
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Logs changes from now on, for [`KeyedStore::take_changes`] (what was logged is dropped:
    /// the caller takes a whole snapshot now).
    pub fn track(&mut self) {
        self.tracking = true;
        self.next_log();
    }

    /// Stops logging changes (and drops what was logged).
    pub fn untrack(&mut self) {
        self.tracking = false;
        self.next_log();
    }

    /// Whether changes are logged: a checkpoint writer holds the state as of the last
    /// [`KeyedStore::track`] or [`KeyedStore::take_changes`].
    pub fn is_tracking(&self) -> bool {
        self.tracking
    }

    /// What changed since the last call (or [`KeyedStore::track`]), in order: the log itself.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.next_log()
    }

    /// Starts a new, empty log (no entry points into the old one any more); returns the old.
    fn next_log(&mut self) -> Vec<Change> {
        self.next_epoch();
        std::mem::take(&mut self.log)
    }

    /// Starts the next epoch: no entry points into the log written so far any more.
    fn next_epoch(&mut self) {
        // Epoch 0 is never current, so a new entry's `(0, 0)` points nowhere. After 4 G epochs
        // (a century of checkpoints and sweeps) numbers start again, with every entry pointing
        // nowhere.
        self.epoch = match self.epoch.checked_add(1) {
            Some(next) => next,
            None => {
                for entry in self.entries.iter_mut() {
                    entry.logged = (0, 0);
                }
                1
            }
        };
    }

    /// Adds an entry for a key it does not hold.
    fn insert_new(&mut self, entry: Entry) {
        self.bytes += entry.len();
        let hasher = &self.hasher;
        let hash = hasher.hash_one(entry.key());
        self.entries
            .insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
    }

    /// Puts every entry of `snapshot` in the store among `parts` its key hashes to; each part
    /// is filled on a thread of its own when there are several.
    pub fn restore_into(parts: &mut [KeyedStore], snapshot: &KeyedSnapshot) {
        use rayon::prelude::*;
        let count = parts.len();
        let fill = |(at, part): (usize, &mut KeyedStore)| {
            let hasher = &part.hasher;
            part.entries
                .reserve(snapshot.entries.len() / count.max(1), |e| {
                    hasher.hash_one(e.key())
                });
            for (key, (value, expires)) in &snapshot.entries {
                if partition_of(key, count) != at {
                    continue;
                }
                part.insert_new(Entry::new(key, value, *expires, (0, 0)));
            }
        };
        match parts {
            [only] => fill((0, only)),
            _ => parts.par_iter_mut().enumerate().for_each(fill),
        }
    }
}

impl Store for KeyedStore {
    type Snapshot = KeyedSnapshot;

    fn snapshot(&self) -> KeyedSnapshot {
        let entries = self
            .entries
            .iter()
            .map(|e| (Blob::from(e.key()), (Blob::from(e.value()), e.expires())))
            .collect();
        KeyedSnapshot { entries }
    }

    fn restore(snapshot: KeyedSnapshot) -> Self {
        let mut store = [KeyedStore::default()];
        KeyedStore::restore_into(&mut store, &snapshot);
        let [store] = store;
        store
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Logged changes move with their keys, in order, so a checkpoint after a redistribution
    /// still gets every change (entries point into the new logs nowhere: a key changed again is
    /// logged again, and its last change counts). A logged sweep cannot move (it drops the keys
    /// of its old partition): where there is one, the stores stop logging and the next
    /// checkpoint takes them whole.
    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self> {
        let swept = parts
            .iter()
            .any(|p| p.log.iter().any(|c| matches!(c, Change::Sweep(_))));
        let tracking = parts.iter().any(|p| p.tracking) && !swept;
        let mut spread: Vec<KeyedStore> = (0..count.max(1))
            .map(|_| KeyedStore {
                tracking,
                epoch: 1,
                ..Self::default()
            })
            .collect();
        for part in parts {
            for mut entry in part.entries {
                entry.logged = (0, 0);
                spread[partition_of(entry.key(), count)].insert_new(entry);
            }
            if !tracking {
                continue;
            }
            for change in part.log {
                let (Change::Put(key, ..) | Change::Remove(key)) = &change else {
                    unreachable!("a log with a sweep is not moved")
                };
                spread[partition_of(key, count)].log.push(change);
            }
        }
        spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_takes_48_bytes_and_keeps_its_key_value_and_expiry_apart() {
        assert!(size_of::<Entry>() <= 48, "{} bytes", size_of::<Entry>());
        let mut e = Entry::new(b"order-7", b"\x01", Some(-5), (0, 0));
        assert_eq!(
            (e.key(), e.value(), e.expires()),
            (&b"order-7"[..], &b"\x01"[..], Some(-5))
        );
        let long = b"a longer value than the key, past 16 bytes";
        e.set(long, None);
        assert_eq!((e.key(), e.value()), (&b"order-7"[..], &long[..]));
        assert_eq!((e.expires(), e.len()), (None, 7 + long.len()));
        e.set(b"", Some(i64::MAX));
        assert_eq!(
            (e.key(), e.value(), e.expires()),
            (&b"order-7"[..], &b""[..], Some(i64::MAX))
        );
        let empty = Entry::new(b"", b"v", Some(0), (0, 0));
        assert_eq!(
            (empty.key(), empty.value(), empty.expires()),
            (&b""[..], &b"v"[..], Some(0))
        );
    }

    fn store(entries: &[(&str, &str, Option<i64>)]) -> KeyedStore {
        let mut store = KeyedStore::default();
        for (k, v, e) in entries {
            store.put(k.as_bytes(), v.as_bytes(), *e);
        }
        store
    }

    #[test]
    fn bytes_follow_every_change() {
        let mut s = store(&[("a", "12345", None), ("bb", "1", Some(10))]);
        assert_eq!(s.bytes(), 6 + 3);
        s.put(b"a", b"1", None);
        assert_eq!(s.bytes(), 2 + 3);
        s.remove(b"zz");
        s.remove(b"bb");
        assert_eq!(s.bytes(), 2);
        assert_eq!(s.footprint(b"a"), 2);
        assert_eq!(s.footprint(b"bb"), 0);
    }

    #[test]
    fn entries_expire_at_their_time_to_live() {
        let mut s = store(&[("a", "1", Some(10)), ("b", "2", None), ("c", "3", Some(20))]);
        assert_eq!(s.live(b"a", 9), Some(&b"1"[..]));
        assert_eq!(s.live(b"a", 10), None, "expired, though still stored");
        assert_eq!(s.footprint(b"a"), 2);
        s.expire(10);
        assert_eq!(s.len(), 2);
        assert_eq!(s.bytes(), 4);
        assert_eq!(s.live(b"c", 19), Some(&b"3"[..]));
    }

    #[test]
    fn a_sweep_is_logged_once_and_drops_only_its_own_partitions_expired_keys() {
        let keys: Vec<Vec<u8>> = (0..40u8).map(|k| vec![b'k', k]).collect();
        let mut parts = vec![KeyedStore::default(), KeyedStore::default()];
        parts.iter_mut().for_each(KeyedStore::track);
        for (i, key) in keys.iter().enumerate() {
            parts[partition_of(key, 2)].put(key, b"v", Some(i as i64));
        }
        let mut held = KeyedSnapshot::default();
        held.apply(KeyedDelta {
            parts: parts.iter_mut().map(KeyedStore::take_changes).collect(),
        });
        assert_eq!(held.entries.len(), 40);
        // Partition 0 swept at 19, then a key of it put again, already expired at the sweep's
        // watermark: the sweep does not drop it (the store keeps it until its next sweep).
        parts[0].expire(19);
        let late = keys.iter().find(|k| partition_of(k, 2) == 0).unwrap();
        parts[0].put(late, b"again", Some(3));
        let changes: Vec<Vec<Change>> = parts.iter_mut().map(KeyedStore::take_changes).collect();
        assert_eq!(
            changes[0][0],
            Change::Sweep(19),
            "one entry for the whole sweep"
        );
        assert_eq!(changes[0].len(), 2);
        assert!(changes[1].is_empty());
        held.apply(KeyedDelta { parts: changes });
        assert_eq!(held, whole(&parts));
        let (mut kept, mut dropped) = (0, 0);
        for (i, key) in keys.iter().enumerate().filter(|&(i, _)| i <= 19) {
            let held = held.entries.contains_key(&Blob::from(&key[..]));
            match partition_of(key, 2) {
                1 => kept += usize::from(held),
                _ if key != late => dropped += usize::from(!held),
                _ => {}
            }
            assert_eq!(held, partition_of(key, 2) == 1 || key == late, "key {i}");
        }
        assert!(
            kept > 0 && dropped > 0,
            "both partitions hold keys expired at 19"
        );
        assert_eq!(
            held.entries[&Blob::from(&late[..])].0,
            Blob::from(&b"again"[..])
        );
    }

    #[test]
    fn snapshot_restore_and_redistribute_keep_every_entry() {
        let keys: Vec<String> = (0..50).map(|i| format!("key-{i}")).collect();
        let mut parts: Vec<KeyedStore> = (0..3).map(|_| KeyedStore::default()).collect();
        for (i, key) in keys.iter().enumerate() {
            let expires = (i % 2 == 0).then_some(i as i64);
            parts[partition_of(key.as_bytes(), 3)].put(key.as_bytes(), &[i as u8; 20], expires);
        }
        let before: Vec<_> = parts.iter().flat_map(|p| p.snapshot().entries).collect();
        let total: usize = parts.iter().map(Store::bytes).sum();
        for count in [1, 2, 5] {
            let parts: Vec<KeyedStore> = parts
                .iter()
                .map(|p| KeyedStore::restore(p.snapshot()))
                .collect();
            let spread = KeyedStore::redistribute(parts, count);
            assert_eq!(spread.len(), count);
            assert_eq!(spread.iter().map(Store::bytes).sum::<usize>(), total);
            let mut after: Vec<_> = Vec::new();
            for (p, store) in spread.iter().enumerate() {
                for (key, ..) in store.snapshot().entries {
                    assert_eq!(
                        partition_of(&key, count),
                        p,
                        "each key in its home partition"
                    );
                }
                after.extend(store.snapshot().entries);
            }
            let (mut a, mut b) = (before.clone(), after);
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
    }

    /// One change to a partitioned keyed state: put, remove, expire, take a checkpoint, or
    /// redistribute over another number of partitions.
    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8, Option<i64>),
        Remove(u8),
        Expire(i64),
        Checkpoint,
        Spread(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..40u8, any::<u8>(), proptest::option::of(0..100i64))
                .prop_map(|(k, v, e)| Op::Put(k, v, e)),
            2 => (0..40u8).prop_map(Op::Remove),
            1 => (0..100i64).prop_map(Op::Expire),
            2 => Just(Op::Checkpoint),
            1 => (1..5usize).prop_map(Op::Spread),
        ]
    }

    /// Keys of one to twenty bytes (some inline, some not).
    fn key(k: u8) -> Vec<u8> {
        vec![b'k'; 1 + usize::from(k) / 2]
            .into_iter()
            .chain([k])
            .collect()
    }

    fn whole(parts: &[KeyedStore]) -> KeyedSnapshot {
        KeyedSnapshot::merge(parts.iter().map(Store::snapshot))
    }

    proptest::proptest! {
        /// What a checkpoint writer holds — a whole snapshot, then every change taken since
        /// merged into it — is the state, whatever happens between checkpoints.
        #[test]
        fn changes_merged_into_the_last_snapshot_give_the_state(
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let mut parts = vec![KeyedStore::default(), KeyedStore::default()];
            for p in &mut parts {
                p.track();
            }
            let mut held = whole(&parts);
            for op in ops {
                match op {
                    Op::Put(k, v, e) => {
                        let key = key(k);
                        let n = parts.len();
                        parts[partition_of(&key, n)].put(&key, &[v; 3], e);
                    }
                    Op::Remove(k) => {
                        let key = key(k);
                        let n = parts.len();
                        parts[partition_of(&key, n)].remove(&key);
                    }
                    Op::Expire(at) => parts.iter_mut().for_each(|p| p.expire(at)),
                    Op::Checkpoint => {
                        let delta = KeyedDelta {
                            parts: parts.iter_mut().map(KeyedStore::take_changes).collect(),
                        };
                        held.apply(delta);
                        proptest::prop_assert_eq!(&held, &whole(&parts));
                    }
                    Op::Spread(n) => {
                        parts = KeyedStore::redistribute(parts, n);
                        // Stores that stopped logging (a sweep could not move) are taken whole
                        // by the next checkpoint, as `Stage::capture` does.
                        if !parts.iter().all(KeyedStore::is_tracking) {
                            parts.iter_mut().for_each(KeyedStore::track);
                            held = whole(&parts);
                        }
                    }
                }
            }
        }

        /// Snapshot, restore, snapshot is the identity, into any number of partitions, and
        /// every key lands in its home partition.
        #[test]
        fn a_snapshot_restores_into_any_partitions(
            entries in proptest::collection::btree_map(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..24),
                 proptest::option::of(proptest::prelude::any::<i64>())),
                0..60,
            ),
            count in 1..6usize,
        ) {
            let mut store = KeyedStore::default();
            for (k, (v, e)) in &entries {
                store.put(k, v, *e);
            }
            let snapshot = store.snapshot();
            let mut parts: Vec<KeyedStore> = (0..count).map(|_| KeyedStore::default()).collect();
            KeyedStore::restore_into(&mut parts, &snapshot);
            for (p, part) in parts.iter().enumerate() {
                for (key, ..) in part.snapshot().entries {
                    proptest::prop_assert_eq!(partition_of(&key, count), p);
                }
            }
            proptest::prop_assert_eq!(whole(&parts), snapshot.clone());
            proptest::prop_assert_eq!(
                parts.iter().map(Store::bytes).sum::<usize>(),
                store.bytes()
            );
            let bytes = bincode::serde::encode_to_vec(&snapshot, bincode::config::standard())
                .unwrap();
            let (read, _): (KeyedSnapshot, _) =
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
            proptest::prop_assert_eq!(read, snapshot);
        }
    }
}
