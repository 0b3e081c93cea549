//! Tumbling and sliding windows of an aggregate stage: one accumulator per window end and key.
//! Sliding windows without allowed lateness are kept as panes (one accumulator per slide, keyed
//! by the pane's end) and merged into windows when they fire.

use super::{Bytes, Fired, FiredAcc, Map, Store, WindowAcc, next_token, partition_of};
use crate::window::Bounds;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::RangeBounds;

/// The windows (or panes) of one partition.
#[derive(Debug, Default)]
pub(crate) struct WindowStore {
    /// By end, then key.
    windows: BTreeMap<i64, Map<Bytes, WindowAcc>>,
    /// Kept as panes: the end of the last window fired.
    pub panes_fired_until: Option<i64>,
    bytes: usize,
}

/// A [`WindowStore`]'s content: its windows in (end, key) order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WindowSnapshot {
    pub windows: Vec<WindowEntry>,
    pub panes_fired_until: Option<i64>,
}

/// One window (or pane) of one key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct WindowEntry {
    pub end: i64,
    pub key: Vec<u8>,
    pub acc: Vec<u8>,
    pub fired: bool,
}

impl WindowStore {
    /// How many windows (or panes) are held, over every key.
    pub fn len(&self) -> usize {
        self.windows.values().map(|keyed| keyed.len()).sum()
    }

    /// The accumulator of `key`'s window (or pane) ending at `end`.
    pub fn acc(&self, end: i64, key: &[u8]) -> Option<&[u8]> {
        self.windows
            .get(&end)
            .and_then(|keyed| keyed.get(key))
            .map(|w| w.acc.as_slice())
    }

    /// The bytes `key`'s window ending at `end` takes now.
    pub fn footprint(&self, end: i64, key: &[u8]) -> usize {
        self.acc(end, key).map_or(0, |acc| key.len() + acc.len())
    }

    /// Sets the accumulator of `key`'s window ending at `end`; returns whether that window had
    /// already fired (so its result must be emitted again).
    pub fn set(&mut self, end: i64, key: &[u8], acc: &[u8]) -> bool {
        let keyed = self.windows.entry(end).or_default();
        match keyed.get_mut(key) {
            Some(entry) => {
                self.bytes = self.bytes - entry.acc.len() + acc.len();
                entry.acc.clear();
                entry.acc.extend_from_slice(acc);
                entry.token = next_token();
                entry.fired
            }
            None => {
                self.bytes += key.len() + acc.len();
                let acc = WindowAcc::new(Bytes::from_slice(acc), false);
                keyed.insert(Bytes::from_slice(key), acc);
                false
            }
        }
    }

    /// The first and last end held.
    pub fn span(&self) -> Option<(i64, i64)> {
        let first = self.windows.keys().next()?;
        let last = self.windows.keys().next_back()?;
        Some((*first, *last))
    }

    /// The windows (or panes) whose end is in `range`, by end.
    pub fn range(
        &self,
        range: impl RangeBounds<i64>,
    ) -> impl Iterator<Item = (&i64, &Map<Bytes, WindowAcc>)> {
        self.windows.range(range)
    }

    /// Drops every window (or pane) ending at or before `end`.
    pub fn drop_through(&mut self, end: i64) {
        let kept = self.windows.split_off(&end.saturating_add(1));
        let gone = std::mem::replace(&mut self.windows, kept);
        self.bytes -= gone
            .values()
            .flat_map(|keyed| keyed.iter())
            .map(|(k, w)| k.len() + w.acc.len())
            .sum::<usize>();
    }

    /// Marks the windows of `size` that `watermark` completes fired, and drops those whose
    /// lateness has passed; returns those not fired before, in (end, key) order per end.
    pub fn fire(&mut self, size: i64, watermark: i64, lateness: i64) -> Vec<Fired> {
        let mut due = Vec::new();
        let last_end = watermark.saturating_add(1);
        let ends: Vec<i64> = self
            .windows
            .range(..last_end.saturating_add(1))
            .map(|(end, _)| *end)
            .collect();
        for end in ends {
            let bounds = Bounds {
                start: end.saturating_sub(size),
                end,
            };
            if bounds.is_fired(watermark, lateness) {
                // Dropped as it fires: its keys and accumulators move out, uncopied.
                let Some(gone) = self.windows.remove(&end) else {
                    continue;
                };
                for (key, window) in gone {
                    self.bytes -= key.len() + window.acc.len();
                    if !window.fired {
                        due.push((bounds, key, FiredAcc::Whole(window.acc)));
                    }
                }
                continue;
            }
            let Some(keyed) = self.windows.get_mut(&end) else {
                continue;
            };
            for (key, window) in keyed.iter_mut() {
                if !window.fired {
                    window.fired = true;
                    let acc = Bytes::from_slice(&window.acc);
                    due.push((bounds, Bytes::from_slice(key), FiredAcc::Whole(acc)));
                }
            }
        }
        due
    }
}

impl Store for WindowStore {
    type Snapshot = WindowSnapshot;

    fn snapshot(&self) -> WindowSnapshot {
        let mut windows = Vec::new();
        for (end, keyed) in &self.windows {
            let mut keys: Vec<_> = keyed
                .iter()
                .map(|(k, w)| WindowEntry {
                    end: *end,
                    key: k.to_vec(),
                    acc: w.acc.to_vec(),
                    fired: w.fired,
                })
                .collect();
            keys.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            windows.extend(keys);
        }
        WindowSnapshot {
            windows,
            panes_fired_until: self.panes_fired_until,
        }
    }

    fn restore(snapshot: WindowSnapshot) -> Self {
        let mut store = WindowStore {
            panes_fired_until: snapshot.panes_fired_until,
            ..Self::default()
        };
        for w in snapshot.windows {
            let acc = WindowAcc::new(w.acc.into(), w.fired);
            store.insert(w.end, Bytes::from_vec(w.key), acc);
        }
        store
    }

    fn bytes(&self) -> usize {
        self.bytes
    }

    fn redistribute(parts: Vec<Self>, count: usize) -> Vec<Self> {
        // Windows fired from panes must not fire again, whichever partition their keys land in.
        let fired_until = parts.iter().filter_map(|p| p.panes_fired_until).max();
        let mut spread: Vec<WindowStore> = (0..count.max(1))
            .map(|_| WindowStore {
                panes_fired_until: fired_until,
                ..Self::default()
            })
            .collect();
        for part in parts {
            for (end, keyed) in part.windows {
                for (key, acc) in keyed {
                    spread[partition_of(&key, count)].insert(end, key, acc);
                }
            }
        }
        spread
    }
}

impl WindowStore {
    fn insert(&mut self, end: i64, key: Bytes, acc: WindowAcc) {
        self.bytes += key.len() + acc.acc.len();
        if let Some(old) = self.windows.entry(end).or_default().insert(key, acc) {
            self.bytes -= old.acc.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firing_marks_once_and_purges_after_lateness() {
        let mut s = WindowStore::default();
        s.set(10, b"a", b"1");
        s.set(10, b"b", b"22");
        s.set(20, b"a", b"3");
        assert_eq!(s.bytes(), 2 + 3 + 2);
        // Size 10, lateness 5: the watermark 9 fires [0, 10) and keeps it for late records.
        let fired = s.fire(10, 9, 5);
        let mut keys: Vec<_> = fired
            .iter()
            .map(|(b, k, a)| (b.end, k.to_vec(), a.clone()))
            .collect();
        keys.sort_by(|a, b| a.1.cmp(&b.1));
        let whole = |acc: &[u8]| FiredAcc::Whole(Bytes::from_slice(acc));
        assert_eq!(
            keys,
            [
                (10, b"a".to_vec(), whole(b"1")),
                (10, b"b".to_vec(), whole(b"22"))
            ]
        );
        assert!(s.fire(10, 9, 5).is_empty(), "a window fires once");
        assert!(
            s.set(10, b"a", b"9"),
            "a late record updates a fired window"
        );
        assert!(!s.set(20, b"a", b"4"));
        // Past the lateness, [0, 10) is dropped; [10, 20) fires.
        let fired = s.fire(10, 19, 5);
        assert_eq!(fired.len(), 1);
        assert_eq!(s.acc(10, b"a"), None);
        assert_eq!(s.bytes(), 2);
    }

    #[test]
    fn panes_are_dropped_through_an_end() {
        let mut s = WindowStore::default();
        for end in [5, 10, 15] {
            s.set(end, b"k", b"acc");
        }
        assert_eq!(s.span(), Some((5, 15)));
        s.drop_through(10);
        assert_eq!(s.span(), Some((15, 15)));
        assert_eq!(s.bytes(), 4);
        s.drop_through(15);
        assert_eq!(s.span(), None);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn redistribution_keeps_every_window_and_the_pane_progress() {
        let mut parts: Vec<WindowStore> = (0..2).map(|_| WindowStore::default()).collect();
        for i in 0..40i64 {
            let key = format!("user-{i}");
            parts[partition_of(key.as_bytes(), 2)].set(i % 4 * 10, key.as_bytes(), &[i as u8]);
        }
        parts[0].panes_fired_until = Some(30);
        parts[0].fire(10, 0, 100);
        let mut before: Vec<_> = parts.iter().flat_map(|p| p.snapshot().windows).collect();
        let spread = WindowStore::redistribute(parts, 3);
        let mut after = Vec::new();
        for (p, store) in spread.iter().enumerate() {
            assert_eq!(store.panes_fired_until, Some(30));
            let snapshot = store.snapshot();
            for w in &snapshot.windows {
                assert_eq!(partition_of(&w.key, 3), p);
            }
            assert_eq!(WindowStore::restore(snapshot.clone()).snapshot(), snapshot);
            after.extend(snapshot.windows);
        }
        before.sort();
        after.sort();
        assert_eq!(before, after);
    }

    proptest::proptest! {
        /// Snapshot, restore, snapshot is the identity; spread over any number of partitions,
        /// every window is in its key's home partition with its accumulator and firing mark.
        #[test]
        fn windows_restore_and_spread_as_they_were(
            windows in proptest::collection::vec(
                (0..6i64, 0..30u8, proptest::collection::vec(0..255u8, 0..20)), 0..60),
            fired_through in proptest::option::of(0..6i64),
            count in 1..5usize,
        ) {
            let mut store = WindowStore::default();
            for (end, key, acc) in &windows {
                store.set(end * 10, format!("key-{key}").as_bytes(), acc);
            }
            if let Some(through) = fired_through {
                store.fire(10, through * 10, 1000);
                store.panes_fired_until = Some(through * 10);
            }
            let snapshot = store.snapshot();
            let restored = WindowStore::restore(snapshot.clone());
            proptest::prop_assert_eq!(restored.bytes(), store.bytes());
            proptest::prop_assert_eq!(restored.snapshot(), snapshot.clone());
            let spread = WindowStore::redistribute(vec![restored], count);
            let mut after = Vec::new();
            for (p, part) in spread.iter().enumerate() {
                proptest::prop_assert_eq!(part.panes_fired_until, snapshot.panes_fired_until);
                for w in part.snapshot().windows {
                    proptest::prop_assert_eq!(partition_of(&w.key, count), p);
                    after.push(w);
                }
            }
            after.sort();
            proptest::prop_assert_eq!(after, snapshot.windows);
        }
    }
}
