//! Keyed state of a `process` stage: one value per key, each with the event time from which it
//! may be dropped (time-to-live).
//!
//! Once a checkpointing pipeline asks ([`KeyedStore::track`]), the store also lists the keys that
//! changed since the last checkpoint took its changes ([`KeyedStore::take_changes`]): a
//! checkpoint then costs the executor what changed, not everything held (the checkpoint writer
//! keeps the rest).

use super::{Blob, Bytes, Map, Store, partition_of};
use serde::{Deserialize, Serialize};

/// The state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    /// Event time from which the entry may be dropped (time-to-live).
    expires: Option<i64>,
    /// Whether the key is listed as changed since the last checkpoint.
    changed: bool,
}

/// The keyed state of one partition.
#[derive(Debug, Default)]
pub(crate) struct KeyedStore {
    entries: Map<Bytes, Entry>,
    bytes: usize,
    /// Whether changes are listed in `changed`.
    tracking: bool,
    /// Keys put or removed since their changes were last taken (a key may be listed twice).
    changed: Vec<Bytes>,
}

/// A [`KeyedStore`]'s content: `(key, value, expires)` in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyedSnapshot {
    pub entries: Vec<(Blob, Blob, Option<i64>)>,
}

/// What changed in keyed state since the last checkpoint: keys set (with value and expiry) and
/// keys removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyedDelta {
    pub put: Vec<(Blob, Blob, Option<i64>)>,
    pub removed: Vec<Blob>,
}

impl KeyedSnapshot {
    /// Applies `delta` (its entries in any order) to this snapshot (in key order): the
    /// snapshot of the state the delta led to.
    pub fn apply(&mut self, mut delta: KeyedDelta) {
        delta.put.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        delta.removed.sort_unstable();
        let old = std::mem::take(&mut self.entries);
        let mut merged = Vec::with_capacity(old.len() + delta.put.len());
        let mut put = delta.put.into_iter().peekable();
        let mut removed = delta.removed.into_iter().peekable();
        for entry in old {
            while let Some(new) = put.next_if(|p| p.0 < entry.0) {
                merged.push(new);
            }
            while removed.next_if(|r| *r < entry.0).is_some() {}
            let gone = removed.next_if(|r| *r == entry.0).is_some();
            match put.next_if(|p| p.0 == entry.0) {
                Some(new) => merged.push(new),
                None if gone => {}
                None => merged.push(entry),
            }
        }
        merged.extend(put);
        self.entries = merged;
    }

    /// Merges snapshots of several partitions into one, in key order.
    pub fn merge(parts: impl IntoIterator<Item = KeyedSnapshot>) -> KeyedSnapshot {
        let mut entries: Vec<_> = parts.into_iter().flat_map(|p| p.entries).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        KeyedSnapshot { entries }
    }
}

impl KeyedStore {
    /// The value of `key`, unless it expired at `watermark`.
    pub fn live(&self, key: &[u8], watermark: i64) -> Option<&[u8]> {
        self.entries
            .get(key)
            .filter(|e| e.expires.is_none_or(|at| at > watermark))
            .map(|e| e.value.as_slice())
    }

    /// The bytes `key` takes now (none if it has no entry, expired or not).
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.entries
            .get(key)
            .map_or(0, |e| key.len() + e.value.len())
    }

    /// Sets `key` to `value`, to expire at `expires`.
    pub fn put(&mut self, key: &[u8], value: &[u8], expires: Option<i64>) {
        match self.entries.get_mut(key) {
            Some(entry) => {
                self.bytes = self.bytes - entry.value.len() + value.len();
                entry.value.clear();
                entry.value.extend_from_slice(value);
                entry.expires = expires;
                if self.tracking && !entry.changed {
                    entry.changed = true;
                    self.changed.push(Bytes::from_slice(key));
                }
            }
            None => {
                self.bytes += key.len() + value.len();
                let value = Bytes::from_slice(value);
                let changed = self.tracking;
                let key = Bytes::from_slice(key);
                if changed {
                    self.changed.push(key.clone());
                }
                let entry = Entry {
                    value,
                    expires,
                    changed,
                };
                self.entries.insert(key, entry);
            }
        }
    }

    /// Drops `key`'s state.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(gone) = self.entries.remove(key) {
            self.bytes -= key.len() + gone.value.len();
            if self.tracking && !gone.changed {
                self.changed.push(Bytes::from_slice(key));
            }
        }
    }

    /// Drops every entry expired at `watermark`.
    pub fn expire(&mut self, watermark: i64) {
        let bytes = &mut self.bytes;
        let changed = &mut self.changed;
        let tracking = self.tracking;
        self.entries.retain(|key, e| {
            let keep = e.expires.is_none_or(|at| at > watermark);
            if !keep {
                *bytes -= key.len() + e.value.len();
                if tracking && !e.changed {
                    changed.push(key.clone());
                }
            }
            keep
        });
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Lists changes from now on, for [`KeyedStore::take_changes`] (what was listed is dropped:
    /// the caller takes a whole snapshot now).
    pub fn track(&mut self) {
        self.tracking = true;
        self.changed.clear();
        for entry in self.entries.values_mut() {
            entry.changed = false;
        }
    }

    /// What changed since the last call (or [`KeyedStore::track`]).
    pub fn take_changes(&mut self) -> KeyedDelta {
        let mut delta = KeyedDelta::default();
        for key in std::mem::take(&mut self.changed) {
            match self.entries.get_mut(&key) {
                Some(entry) if entry.changed => {
                    entry.changed = false;
                    let value = Blob(entry.value.clone());
                    delta.put.push((Blob(key), value, entry.expires));
                }
                // Listed twice, and taken already.
                Some(_) => {}
                None => delta.removed.push(Blob(key)),
            }
        }
        delta
    }

    /// Puts every entry of `snapshot` in the store among `parts` its key hashes to.
    pub fn restore_into(parts: &mut [KeyedStore], snapshot: KeyedSnapshot) {
        let count = parts.len();
        if let [only] = parts {
            only.entries.reserve(snapshot.entries.len());
        }
        for (key, value, expires) in snapshot.entries {
            let home = &mut parts[partition_of(&key, count)];
            home.bytes += key.len() + value.len();
            let entry = Entry {
                value: value.0,
                expires,
                changed: false,
            };
            home.entries.insert(key.0, entry);
        }
    }
}

impl Store for KeyedStore {
    type Snapshot = KeyedSnapshot;

    fn snapshot(&self) -> KeyedSnapshot {
        let mut entries: Vec<_> = self
            .entries
            .iter()
            .map(|(k, e)| (Blob(k.clone()), Blob(e.value.clone()), e.expires))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        KeyedSnapshot { entries }
    }

    fn restore(snapshot: KeyedSnapshot) -> Self {
        let mut store = [KeyedStore::default()];
        KeyedStore::restore_into(&mut store, snapshot);
        let [store] = store;
        store
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Listed changes move with their keys, so a checkpoint after a redistribution still finds
    /// every change.
    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self> {
        let tracking = parts.iter().any(|p| p.tracking);
        let mut spread: Vec<KeyedStore> = (0..count.max(1))
            .map(|_| KeyedStore {
                tracking,
                ..Self::default()
            })
            .collect();
        for part in parts {
            for (key, entry) in part.entries {
                let home = &mut spread[partition_of(&key, count)];
                home.bytes += key.len() + entry.value.len();
                home.entries.insert(key, entry);
            }
            for key in part.changed {
                spread[partition_of(&key, count)].changed.push(key);
            }
        }
        spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                        let mut delta = KeyedDelta::default();
                        for p in &mut parts {
                            let d = p.take_changes();
                            delta.put.extend(d.put);
                            delta.removed.extend(d.removed);
                        }
                        held.apply(delta);
                        proptest::prop_assert_eq!(&held, &whole(&parts));
                    }
                    Op::Spread(n) => parts = KeyedStore::redistribute(parts, n),
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
            KeyedStore::restore_into(&mut parts, snapshot.clone());
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
