//! Keyed state of a `process` stage: one value per key, each with the event time from which it
//! may be dropped (time-to-live).

use super::{Bytes, Map, Store, partition_of};
use serde::{Deserialize, Serialize};

/// The state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    /// Event time from which the entry may be dropped (time-to-live).
    expires: Option<i64>,
}

/// The keyed state of one partition.
#[derive(Debug, Default)]
pub(crate) struct KeyedStore {
    entries: Map<Bytes, Entry>,
    bytes: usize,
}

/// A [`KeyedStore`]'s content: `(key, value, expires)` in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyedSnapshot {
    pub entries: Vec<(Vec<u8>, Vec<u8>, Option<i64>)>,
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
            }
            None => {
                self.bytes += key.len() + value.len();
                let value = Bytes::from_slice(value);
                self.entries
                    .insert(Bytes::from_slice(key), Entry { value, expires });
            }
        }
    }

    /// Drops `key`'s state.
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(gone) = self.entries.remove(key) {
            self.bytes -= key.len() + gone.value.len();
        }
    }

    /// Drops every entry expired at `watermark`.
    pub fn expire(&mut self, watermark: i64) {
        let bytes = &mut self.bytes;
        self.entries.retain(|key, e| {
            let keep = e.expires.is_none_or(|at| at > watermark);
            if !keep {
                *bytes -= key.len() + e.value.len();
            }
            keep
        });
    }

    /// How many keys have state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Store for KeyedStore {
    type Snapshot = KeyedSnapshot;

    fn snapshot(&self) -> KeyedSnapshot {
        let mut entries: Vec<_> = self
            .entries
            .iter()
            .map(|(k, e)| (k.to_vec(), e.value.to_vec(), e.expires))
            .collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        KeyedSnapshot { entries }
    }

    fn restore(snapshot: KeyedSnapshot) -> Self {
        let mut store = KeyedStore::default();
        for (key, value, expires) in snapshot.entries {
            store.put(&key, &value, expires);
        }
        store
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self> {
        let mut spread: Vec<KeyedStore> = (0..count.max(1)).map(|_| Self::default()).collect();
        for part in parts {
            for (key, entry) in part.entries {
                let home = &mut spread[partition_of(&key, count)];
                home.bytes += key.len() + entry.value.len();
                home.entries.insert(key, entry);
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
}
