//! Session windows of an aggregate stage: per key, its open sessions (non-overlapping, in start
//! order), and every session in firing order (end, key, start).

use super::{Bytes, Fired, FiredAcc, Map, Store, WindowAcc, partition_of};
use crate::window::{Bounds, SessionSet};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// The sessions of one partition.
#[derive(Debug, Default)]
pub(crate) struct SessionStore {
    sessions: Map<Bytes, SessionSet<WindowAcc>>,
    ends: BTreeSet<(i64, Bytes, i64)>,
    bytes: usize,
}

/// A [`SessionStore`]'s content: its sessions in (key, start) order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionSnapshot {
    pub sessions: Vec<SessionEntry>,
}

/// One session of one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct SessionEntry {
    pub key: Vec<u8>,
    pub start: i64,
    pub end: i64,
    pub acc: Vec<u8>,
    pub fired: bool,
}

impl SessionStore {
    /// How many sessions are held, over every key.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// `key`'s sessions.
    pub fn get(&self, key: &[u8]) -> Option<&SessionSet<WindowAcc>> {
        self.sessions.get(key)
    }

    /// The bytes `key`'s sessions take now.
    pub fn footprint(&self, key: &[u8]) -> usize {
        self.sessions.get(key).map_or(0, |set| {
            set.sessions
                .iter()
                .map(|(_, w)| key.len() + w.acc.len())
                .sum()
        })
    }

    /// Replaces `key`'s sessions with `sessions` (in start order).
    pub fn replace(&mut self, key: &[u8], sessions: Vec<(Bounds, WindowAcc)>) {
        // One owned key for every probe of `ends`, copied once (a clone of a `Bytes` goes
        // byte by byte).
        let mut probe = (0, Bytes::from_slice(key), 0);
        if let Some(old) = self.sessions.remove(key) {
            for (b, w) in &old.sessions {
                self.bytes -= key.len() + w.acc.len();
                (probe.0, probe.2) = (b.end, b.start);
                self.ends.remove(&probe);
            }
        }
        if sessions.is_empty() {
            return;
        }
        for (b, w) in &sessions {
            self.bytes += key.len() + w.acc.len();
            self.ends.insert((b.end, Bytes::from_slice(key), b.start));
        }
        self.sessions.insert(probe.1, SessionSet { sessions });
    }

    /// Marks the sessions whose last instant is at or before `watermark` fired, and drops those
    /// whose lateness has passed; returns those not fired before, in (end, key, start) order.
    pub fn fire(&mut self, watermark: i64, lateness: i64) -> Vec<Fired> {
        let mut due = Vec::new();
        let last_end = watermark.saturating_add(1);
        // The sessions ending by then leave `ends` whole, their keys moved rather than copied;
        // those kept for their lateness go back.
        let later = self
            .ends
            .split_off(&(last_end.saturating_add(1), Bytes::new(), i64::MIN));
        let ended = std::mem::replace(&mut self.ends, later);
        for (end, key, start) in ended {
            let bounds = Bounds { start, end };
            let Some(set) = self.sessions.get_mut(&key) else {
                continue;
            };
            let Some(at) = set.sessions.iter().position(|(b, _)| *b == bounds) else {
                continue;
            };
            if bounds.is_fired(watermark, lateness) {
                let (_, gone) = set.sessions.remove(at);
                self.bytes -= key.len() + gone.acc.len();
                if set.sessions.is_empty() {
                    self.sessions.remove(&key);
                }
                if !gone.fired {
                    due.push((bounds, key, FiredAcc::Whole(gone.acc)));
                }
                continue;
            }
            let acc = &mut set.sessions[at].1;
            if !acc.fired {
                acc.fired = true;
                let whole = FiredAcc::Whole(Bytes::from_slice(&acc.acc));
                due.push((bounds, Bytes::from_slice(&key), whole));
            }
            self.ends.insert((end, key, start));
        }
        due
    }
}

impl Store for SessionStore {
    type Snapshot = SessionSnapshot;

    fn snapshot(&self) -> SessionSnapshot {
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .flat_map(|(key, set)| {
                set.sessions.iter().map(move |(b, w)| SessionEntry {
                    key: key.to_vec(),
                    start: b.start,
                    end: b.end,
                    acc: w.acc.to_vec(),
                    fired: w.fired,
                })
            })
            .collect();
        sessions.sort_unstable_by(|a, b| (&a.key, a.start).cmp(&(&b.key, b.start)));
        SessionSnapshot { sessions }
    }

    fn restore(snapshot: SessionSnapshot) -> Self {
        let mut store = SessionStore::default();
        let mut key = Vec::new();
        let mut sessions: Vec<(Bounds, WindowAcc)> = Vec::new();
        for s in snapshot.sessions {
            if s.key != key && !sessions.is_empty() {
                store.replace(&key, std::mem::take(&mut sessions));
            }
            key = s.key;
            let bounds = Bounds {
                start: s.start,
                end: s.end,
            };
            let acc = WindowAcc::new(s.acc.into(), s.fired);
            // In start order, as a session set keeps them.
            let at = sessions.partition_point(|(b, _)| b.start < bounds.start);
            sessions.insert(at, (bounds, acc));
        }
        if !sessions.is_empty() {
            store.replace(&key, sessions);
        }
        store
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self> {
        let mut spread: Vec<SessionStore> = (0..count.max(1)).map(|_| Self::default()).collect();
        for part in parts {
            for (key, set) in part.sessions {
                spread[partition_of(&key, count)].replace(&key, set.sessions);
            }
        }
        spread
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(bytes: &[u8]) -> WindowAcc {
        WindowAcc::new(Bytes::from_slice(bytes), false)
    }

    #[test]
    fn sessions_fire_in_end_order_and_leave_after_lateness() {
        let mut s = SessionStore::default();
        s.replace(b"a", vec![(Bounds { start: 0, end: 10 }, acc(b"1"))]);
        s.replace(
            b"b",
            vec![
                (Bounds { start: 0, end: 5 }, acc(b"2")),
                (Bounds { start: 20, end: 30 }, acc(b"3")),
            ],
        );
        assert_eq!(s.bytes(), 6);
        let fired = s.fire(9, 0);
        let ends: Vec<_> = fired.iter().map(|(b, k, _)| (b.end, k.to_vec())).collect();
        assert_eq!(ends, [(5, b"b".to_vec()), (10, b"a".to_vec())]);
        assert_eq!(s.bytes(), 2, "both fired and, without lateness, dropped");
        assert!(s.get(b"a").is_none());
        s.replace(b"b", Vec::new());
        assert_eq!(s.bytes(), 0);
        assert!(s.fire(100, 0).is_empty());
    }

    #[test]
    fn a_session_kept_for_its_lateness_fires_once_and_leaves_when_it_has_passed() {
        let ends = |fired: Vec<Fired>| -> Vec<(i64, Vec<u8>, Vec<u8>)> {
            let whole = |acc: FiredAcc| match acc {
                FiredAcc::Whole(acc) => acc.to_vec(),
                FiredAcc::Panes(_) => unreachable!("sessions fire whole"),
            };
            fired
                .into_iter()
                .map(|(b, k, acc)| (b.end, k.to_vec(), whole(acc)))
                .collect()
        };
        let mut s = SessionStore::default();
        s.replace(b"a", vec![(Bounds { start: 0, end: 10 }, acc(b"1"))]);
        s.replace(b"b", vec![(Bounds { start: 5, end: 30 }, acc(b"2"))]);
        // `a` is complete at 9 and kept for 100 more.
        assert_eq!(ends(s.fire(9, 100)), [(10, b"a".to_vec(), b"1".to_vec())]);
        assert_eq!((s.len(), s.bytes()), (2, 4));
        assert!(s.get(b"a").is_some_and(|set| set.sessions[0].1.fired));
        // `a` does not fire again; `b` does.
        assert_eq!(ends(s.fire(50, 100)), [(30, b"b".to_vec(), b"2".to_vec())]);
        assert_eq!(s.len(), 2);
        // Each leaves once its last instant + 100 has passed, neither fired again.
        assert!(s.fire(108, 100).is_empty());
        assert_eq!(s.len(), 2);
        assert!(s.fire(109, 100).is_empty());
        assert_eq!((s.len(), s.bytes()), (1, 2));
        assert!(s.get(b"a").is_none());
        assert!(s.fire(129, 100).is_empty());
        assert_eq!((s.len(), s.bytes()), (0, 0));
        assert!(s.get(b"a").is_none() && s.get(b"b").is_none());
    }

    #[test]
    fn snapshot_restore_and_redistribute_keep_every_session() {
        let mut parts: Vec<SessionStore> = (0..3).map(|_| SessionStore::default()).collect();
        for i in 0..30i64 {
            let key = format!("user-{i}");
            let sessions = (0..i % 3 + 1)
                .map(|j| {
                    (
                        Bounds {
                            start: j * 100,
                            end: j * 100 + 50,
                        },
                        acc(&[i as u8, j as u8]),
                    )
                })
                .collect();
            parts[partition_of(key.as_bytes(), 3)].replace(key.as_bytes(), sessions);
        }
        let total: usize = parts.iter().map(Store::bytes).sum();
        let mut before: Vec<_> = parts.iter().flat_map(|p| p.snapshot().sessions).collect();
        let parts: Vec<_> = parts
            .iter()
            .map(|p| SessionStore::restore(p.snapshot()))
            .collect();
        let mut spread = SessionStore::redistribute(parts, 2);
        assert_eq!(spread.iter().map(Store::bytes).sum::<usize>(), total);
        let mut after: Vec<_> = spread.iter().flat_map(|p| p.snapshot().sessions).collect();
        before.sort();
        after.sort();
        assert_eq!(before, after);
        // The firing order came along: everything fires at the end of time.
        let fired: usize = spread
            .iter_mut()
            .map(|p| p.fire(i64::MAX - 1, 0).len())
            .sum();
        assert_eq!(fired, before.len());
    }

    proptest::proptest! {
        /// Snapshot, restore, snapshot is the identity; spread over any number of partitions,
        /// every key's sessions are in its home partition, as they were.
        #[test]
        fn sessions_restore_and_spread_as_they_were(
            keys in proptest::collection::btree_map(
                0..30u8,
                proptest::collection::vec((0..5i64, 1..4u8, proptest::prelude::any::<bool>()), 1..4),
                0..20,
            ),
            count in 1..5usize,
        ) {
            let mut store = SessionStore::default();
            for (key, sessions) in &keys {
                // Non-overlapping sessions in start order, as the stage keeps them.
                let sessions = sessions
                    .iter()
                    .enumerate()
                    .map(|(j, &(len, byte, fired))| {
                        let start = j as i64 * 100;
                        let bounds = Bounds { start, end: start + 10 + len };
                        (bounds, WindowAcc::new(Bytes::from_slice(&[byte; 3]), fired))
                    })
                    .collect();
                store.replace(format!("user-{key}").as_bytes(), sessions);
            }
            let snapshot = store.snapshot();
            let restored = SessionStore::restore(snapshot.clone());
            proptest::prop_assert_eq!(restored.bytes(), store.bytes());
            proptest::prop_assert_eq!(restored.snapshot(), snapshot.clone());
            let spread = SessionStore::redistribute(vec![restored], count);
            let mut after = Vec::new();
            for (p, part) in spread.iter().enumerate() {
                for s in part.snapshot().sessions {
                    proptest::prop_assert_eq!(partition_of(&s.key, count), p);
                    after.push(s);
                }
            }
            after.sort();
            proptest::prop_assert_eq!(after, snapshot.sessions);
            proptest::prop_assert_eq!(
                spread.iter().map(SessionStore::len).sum::<usize>(),
                store.len()
            );
        }
    }
}
