//! Event-time windows, as Flink defines them: epoch-aligned tumbling and sliding windows, session
//! windows that merge when they touch, half-open `[start, end)`, firing once the watermark reaches
//! `end - 1`, and a record late for a window that has fired. Pure functions: the executor keeps the
//! accumulators, this module says which windows a record belongs to and which have fired.

use serde::Deserialize;

/// How a window stage groups records in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum WindowSpec {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding {
        /// Window length.
        size_ms: i64,
        /// Time between two windows' starts.
        slide_ms: i64,
    },
    /// A key's records closer than `gap_ms` to one another.
    Session {
        /// The longest quiet time within one session.
        gap_ms: i64,
    },
}

impl WindowSpec {
    /// A short description: `tumbling 1m`, `sliding 10m/1m`, `session gap 30m`.
    pub fn describe(&self) -> String {
        match *self {
            WindowSpec::Tumbling { size_ms } => format!("tumbling {}", span(size_ms)),
            WindowSpec::Sliding { size_ms, slide_ms } => {
                format!("sliding {}/{}", span(size_ms), span(slide_ms))
            }
            WindowSpec::Session { gap_ms } => format!("session gap {}", span(gap_ms)),
        }
    }
}

/// `ms` in the largest whole unit: `90s`, `10m`, `1h`, `250ms`.
fn span(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    UNITS
        .iter()
        .find(|(size, _)| ms != 0 && ms % size == 0)
        .map_or_else(
            || format!("{ms}ms"),
            |(size, unit)| format!("{}{unit}", ms / size),
        )
}

/// A record whose windows cannot be represented in i64 milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange {
    /// The record's event time.
    pub ts: i64,
    /// The windows it would go to.
    pub spec: WindowSpec,
}

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event time {} ms is out of range: its {} window would start or end beyond the \
             range of i64 milliseconds",
            self.ts,
            match self.spec {
                WindowSpec::Tumbling { .. } => "tumbling",
                WindowSpec::Sliding { .. } => "sliding",
                WindowSpec::Session { .. } => "session",
            }
        )
    }
}

/// A window's bounds, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bounds {
    /// The first instant in the window.
    pub start: i64,
    /// The first instant after it.
    pub end: i64,
}

impl Bounds {
    /// The last instant in the window: it fires when the watermark reaches it.
    pub fn max_timestamp(&self) -> i64 {
        self.end - 1
    }

    /// Whether a watermark at `watermark` has fired this window (with `lateness` allowed).
    pub fn is_fired(&self, watermark: i64, lateness: i64) -> bool {
        self.max_timestamp().saturating_add(lateness) <= watermark
    }

    /// Whether the windows overlap or touch (Flink merges those).
    pub fn touches(&self, other: &Bounds) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &Bounds) -> Bounds {
        Bounds {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

impl WindowSpec {
    /// Checks the sizes, saying what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            WindowSpec::Tumbling { size_ms } if size_ms <= 0 => {
                Err("a tumbling window needs size_ms > 0".into())
            }
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms <= 0 || slide_ms <= 0 => {
                Err("a sliding window needs size_ms > 0 and slide_ms > 0".into())
            }
            WindowSpec::Sliding { size_ms, slide_ms } if size_ms % slide_ms != 0 => {
                Err("a sliding window's size_ms must be a multiple of slide_ms".into())
            }
            WindowSpec::Session { gap_ms } if gap_ms <= 0 => {
                Err("a session window needs gap_ms > 0".into())
            }
            _ => Ok(()),
        }
    }

    /// Whether every window a record at `ts` belongs to can be represented: its start and end
    /// in the i64 range of milliseconds. A record whose windows cannot be is not windowed at
    /// all (it goes to the dead letters), so no window arithmetic ever overflows.
    pub fn fits(&self, ts: i64) -> Result<(), OutOfRange> {
        let fits = match *self {
            WindowSpec::Tumbling { size_ms } => ts
                .checked_sub(ts.rem_euclid(size_ms))
                .and_then(|start| start.checked_add(size_ms))
                .is_some(),
            WindowSpec::Sliding { size_ms, slide_ms } => ts
                .checked_sub(ts.rem_euclid(slide_ms))
                .and_then(|last| {
                    last.checked_add(size_ms)?;
                    last.checked_sub(size_ms)?.checked_add(slide_ms)
                })
                .is_some(),
            WindowSpec::Session { gap_ms } => ts.checked_add(gap_ms).is_some(),
        };
        if fits {
            Ok(())
        } else {
            Err(OutOfRange { ts, spec: *self })
        }
    }

    /// The windows a record at `ts` belongs to, earliest first. A session record's own window is
    /// `[ts, ts + gap)`, to be merged with the key's other sessions. Assigns nothing to a record
    /// whose windows do not [fit](Self::fits).
    pub fn assign(&self, ts: i64, into: &mut Vec<Bounds>) {
        into.clear();
        if self.fits(ts).is_err() {
            return;
        }
        match *self {
            WindowSpec::Tumbling { size_ms } => {
                let start = ts - ts.rem_euclid(size_ms);
                into.push(Bounds {
                    start,
                    end: start + size_ms,
                });
            }
            WindowSpec::Sliding { size_ms, slide_ms } => {
                let last = ts - ts.rem_euclid(slide_ms);
                let mut start = last - size_ms + slide_ms;
                while start <= last {
                    into.push(Bounds {
                        start,
                        end: start + size_ms,
                    });
                    match start.checked_add(slide_ms) {
                        Some(next) => start = next,
                        None => break,
                    }
                }
            }
            WindowSpec::Session { gap_ms } => into.push(Bounds {
                start: ts,
                end: ts + gap_ms,
            }),
        }
    }

    /// Whether windows of this kind merge (sessions).
    pub fn is_merging(&self) -> bool {
        matches!(self, WindowSpec::Session { .. })
    }
}

/// The sessions of one key: sorted by start, pairwise neither overlapping nor touching, each with
/// a payload (what the executor accumulates for it).
#[derive(Debug, Clone)]
pub struct SessionSet<T> {
    /// The sessions, in start order, with their payloads.
    pub sessions: Vec<(Bounds, T)>,
}

impl<T> Default for SessionSet<T> {
    fn default() -> Self {
        SessionSet {
            sessions: Vec::new(),
        }
    }
}

impl<T> SessionSet<T> {
    /// Adds the session window of a new record: every session it touches (directly or through
    /// another) is merged with it into one, whose payload `combine` makes from theirs (in start
    /// order; none if it touches nothing). Returns the merged bounds.
    pub fn merge_in(
        &mut self,
        window: Bounds,
        combine: impl FnOnce(smallvec::SmallVec<[T; 2]>) -> T,
    ) -> Bounds {
        let mut cover = window;
        // Most records touch one session or none.
        let mut taken: smallvec::SmallVec<[(Bounds, T); 2]> = smallvec::SmallVec::new();
        loop {
            let before = taken.len();
            let mut i = 0;
            while i < self.sessions.len() {
                if self.sessions[i].0.touches(&cover) {
                    let (bounds, payload) = self.sessions.remove(i);
                    cover = cover.cover(&bounds);
                    taken.push((bounds, payload));
                } else {
                    i += 1;
                }
            }
            if taken.len() == before {
                break;
            }
        }
        taken.sort_by_key(|(b, _)| b.start);
        let payload = combine(taken.into_iter().map(|(_, p)| p).collect());
        let at = self
            .sessions
            .partition_point(|(b, _)| b.start < cover.start);
        self.sessions.insert(at, (cover, payload));
        cover
    }

    /// Whether a record at window `window` would merge into an existing session.
    pub fn touches(&self, window: &Bounds) -> bool {
        self.sessions.iter().any(|(b, _)| b.touches(window))
    }
}

/// Bounded-out-of-orderness watermarks: the largest event time seen minus the allowed delay,
/// never going back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct BoundedOutOfOrderness {
    delay: i64,
    max_seen: Option<i64>,
}

impl BoundedOutOfOrderness {
    /// A tracker whose watermark trails the largest event time by `delay_ms`.
    pub fn new(delay_ms: i64) -> Self {
        BoundedOutOfOrderness {
            delay: delay_ms.max(0),
            max_seen: None,
        }
    }

    /// The same progress with another delay (a reloaded `watermark_delay_ms`).
    pub fn with_delay(self, delay_ms: i64) -> Self {
        BoundedOutOfOrderness {
            delay: delay_ms.max(0),
            ..self
        }
    }

    /// A tracker with delay `delay_ms` that goes on from `earlier`'s progress (a reloaded or
    /// resumed source), or starts afresh without one.
    pub fn carried(earlier: Option<Self>, delay_ms: i64) -> Self {
        earlier.map_or_else(|| Self::new(delay_ms), |t| t.with_delay(delay_ms))
    }

    /// Notes a record's event time.
    pub fn observe(&mut self, ts: i64) {
        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
    }

    /// The current watermark (`i64::MIN` before any record).
    pub fn watermark(&self) -> i64 {
        self.max_seen
            .map_or(i64::MIN, |m| m.saturating_sub(self.delay))
    }
}

/// What a source says of one of its splits (a Kafka partition) besides the records it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitMark {
    /// The split exists and holds time back from now on, even before its first record.
    Open(u32),
    /// The split has had nothing to read for a while: it holds time back no more until its next
    /// record.
    Idle(u32),
    /// The split has nothing more to read, ever (a bounded read reached its end).
    Ended(u32),
}

/// The watermarks of a source read in splits (a Kafka topic's partitions, as Flink's Kafka
/// source keeps them): each split its own bounded-out-of-orderness progress; the source's
/// watermark is the least over the splits that are neither idle nor ended. A source read whole
/// (a file) is one split, 0.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct SplitWatermarks {
    delay: i64,
    splits: std::collections::BTreeMap<u32, SplitProgress>,
}

/// One split's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
struct SplitProgress {
    tracker: BoundedOutOfOrderness,
    idle: bool,
    ended: bool,
}

impl SplitWatermarks {
    /// No split yet; each trails its largest event time by `delay_ms`.
    pub fn new(delay_ms: i64) -> Self {
        SplitWatermarks {
            delay: delay_ms.max(0),
            splits: std::collections::BTreeMap::new(),
        }
    }

    /// The progress of `earlier` (a reloaded or resumed source) with delay `delay_ms`, or a
    /// fresh start without one.
    pub fn carried(earlier: Option<Self>, delay_ms: i64) -> Self {
        let Some(mut earlier) = earlier else {
            return Self::new(delay_ms);
        };
        earlier.delay = delay_ms.max(0);
        for split in earlier.splits.values_mut() {
            split.tracker = split.tracker.with_delay(delay_ms);
        }
        earlier
    }

    fn split(&mut self, split: u32) -> &mut SplitProgress {
        let delay = self.delay;
        self.splits.entry(split).or_insert_with(|| SplitProgress {
            tracker: BoundedOutOfOrderness::new(delay),
            idle: false,
            ended: false,
        })
    }

    /// Notes the event time of a record of `split` (which is active again if it was idle).
    pub fn observe(&mut self, split: u32, ts: i64) {
        let progress = self.split(split);
        progress.tracker.observe(ts);
        progress.idle = false;
    }

    /// Notes what the source said of a split.
    pub fn mark(&mut self, mark: SplitMark) {
        match mark {
            SplitMark::Open(split) => {
                self.split(split);
            }
            SplitMark::Idle(split) => self.split(split).idle = true,
            SplitMark::Ended(split) => self.split(split).ended = true,
        }
    }

    /// The least watermark of the active splits; `None` when no split is active (none yet, or
    /// all idle or ended): then time does not move.
    pub fn watermark(&self) -> Option<i64> {
        let active = self.splits.values().filter(|s| !s.idle && !s.ended);
        active.map(|s| s.tracker.watermark()).min()
    }

    /// Each split's watermark (`i64::MIN` before its first record) and whether it is idle.
    pub fn splits(&self) -> impl Iterator<Item = (u32, i64, bool)> + '_ {
        let each = self.splits.iter();
        each.map(|(&id, s)| (id, s.tracker.watermark(), s.idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sessions the obvious way: sort, split where consecutive times are more than `gap` apart.
    fn model_sessions(mut times: Vec<i64>, gap: i64) -> Vec<(Bounds, usize)> {
        times.sort();
        let mut out: Vec<(i64, i64, usize)> = Vec::new();
        for t in times {
            match out.last_mut() {
                Some((_, last, n)) if t - *last <= gap => {
                    *last = t;
                    *n += 1;
                }
                _ => out.push((t, t, 1)),
            }
        }
        out.into_iter()
            .map(|(first, last, n)| {
                (
                    Bounds {
                        start: first,
                        end: last + gap,
                    },
                    n,
                )
            })
            .collect()
    }

    fn assigned(spec: WindowSpec, ts: i64) -> Vec<Bounds> {
        let mut out = Vec::new();
        spec.assign(ts, &mut out);
        out
    }

    #[test]
    fn tumbling_windows_are_epoch_aligned() {
        let spec = WindowSpec::Tumbling { size_ms: 60_000 };
        assert_eq!(
            assigned(spec, 0),
            vec![Bounds {
                start: 0,
                end: 60_000
            }]
        );
        assert_eq!(
            assigned(spec, 59_999),
            vec![Bounds {
                start: 0,
                end: 60_000
            }]
        );
        assert_eq!(
            assigned(spec, 60_000),
            vec![Bounds {
                start: 60_000,
                end: 120_000
            }]
        );
        assert_eq!(
            assigned(spec, -1),
            vec![Bounds {
                start: -60_000,
                end: 0
            }]
        );
    }

    #[test]
    fn a_window_fires_when_the_watermark_reaches_its_last_instant() {
        let w = Bounds {
            start: 0,
            end: 60_000,
        };
        assert!(!w.is_fired(59_998, 0));
        assert!(w.is_fired(59_999, 0));
        assert!(!w.is_fired(59_999, 1));
        assert!(w.is_fired(i64::MAX, i64::MAX));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(WindowSpec::Tumbling { size_ms: 0 }.check().is_err());
        assert!(
            WindowSpec::Sliding {
                size_ms: 10,
                slide_ms: 3
            }
            .check()
            .is_err()
        );
        assert!(WindowSpec::Session { gap_ms: -1 }.check().is_err());
        assert!(
            WindowSpec::Sliding {
                size_ms: 600_000,
                slide_ms: 60_000
            }
            .check()
            .is_ok()
        );
    }

    proptest! {
        /// Against the obvious model: every window `[s, s + size)` with `s` a multiple of the
        /// slide that contains `ts`.
        #[test]
        fn sliding_assignment_matches_the_model(
            ts in -10_000_000i64..10_000_000,
            slide in 1i64..5_000,
            factor in 1i64..12,
        ) {
            let size = slide * factor;
            let got = assigned(WindowSpec::Sliding { size_ms: size, slide_ms: slide }, ts);
            let mut expected = Vec::new();
            let mut s = (ts - size - slide).div_euclid(slide) * slide;
            while s <= ts {
                if s <= ts && ts < s + size {
                    expected.push(Bounds { start: s, end: s + size });
                }
                s += slide;
            }
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn tumbling_is_sliding_with_slide_equal_to_size(ts in -10_000_000i64..10_000_000, size in 1i64..100_000) {
            prop_assert_eq!(
                assigned(WindowSpec::Tumbling { size_ms: size }, ts),
                assigned(WindowSpec::Sliding { size_ms: size, slide_ms: size }, ts)
            );
        }
    }

    #[test]
    fn records_whose_windows_overflow_are_refused_not_wrapped() {
        let specs = [
            WindowSpec::Tumbling { size_ms: 60_000 },
            WindowSpec::Sliding {
                size_ms: 600_000,
                slide_ms: 60_000,
            },
            WindowSpec::Session { gap_ms: 1_800_000 },
        ];
        for spec in specs {
            for ts in [i64::MAX, i64::MAX - 1, i64::MIN] {
                let refused = spec.fits(ts);
                // A session window starts at its record, so only its end can overflow.
                if matches!(spec, WindowSpec::Session { .. }) && ts == i64::MIN {
                    assert!(refused.is_ok());
                    continue;
                }
                assert_eq!(refused, Err(OutOfRange { ts, spec }), "{spec:?} at {ts}");
                assert!(refused.unwrap_err().to_string().contains("out of range"));
                assert!(assigned(spec, ts).is_empty());
            }
            assert!(spec.fits(1_000_000_000_000_000).is_ok());
        }
    }

    proptest! {
        /// Over the whole i64 range: assignment never panics, and a record that fits lies in
        /// every window it is given, each of the spec's size.
        #[test]
        fn assignment_is_total_and_exact(ts in any::<i64>(), slide in 1i64..1_000_000, factor in 1i64..12) {
            for spec in [
                WindowSpec::Tumbling { size_ms: slide * factor },
                WindowSpec::Sliding { size_ms: slide * factor, slide_ms: slide },
                WindowSpec::Session { gap_ms: slide },
            ] {
                let windows = assigned(spec, ts);
                prop_assert_eq!(windows.is_empty(), spec.fits(ts).is_err());
                for w in windows {
                    prop_assert!(w.start <= ts && ts < w.end);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn session_merging_matches_the_model(
            times in proptest::collection::vec(0i64..200_000, 1..60),
            gap in 1i64..20_000,
        ) {
            let mut set = SessionSet::<usize>::default();
            for &t in &times {
                set.merge_in(Bounds { start: t, end: t + gap }, |merged| merged.iter().sum::<usize>() + 1);
            }
            prop_assert_eq!(set.sessions, model_sessions(times, gap));
        }

        /// Over input shuffled by at most `delay`, the watermark never goes back, stays `delay`
        /// behind the largest time seen, and no record arrives behind it.
        #[test]
        fn watermarks_never_overtake_boundedly_shuffled_input(
            steps in proptest::collection::vec(0i64..1_000, 1..300),
            jitter in proptest::collection::vec(0i64..5_000, 300),
            delay in 5_000i64..10_000,
        ) {
            let mut clock = 0;
            let times: Vec<i64> = steps.iter().zip(&jitter).map(|(step, j)| {
                clock += step;
                clock - j
            }).collect();
            let mut tracker = BoundedOutOfOrderness::new(delay);
            let mut last = tracker.watermark();
            let mut max_seen = i64::MIN;
            for ts in times {
                prop_assert!(ts > tracker.watermark(), "record {} behind watermark {}", ts, tracker.watermark());
                tracker.observe(ts);
                max_seen = max_seen.max(ts);
                prop_assert!(tracker.watermark() >= last);
                prop_assert_eq!(tracker.watermark(), max_seen - delay);
                last = tracker.watermark();
            }
        }
    }

    #[test]
    fn split_watermarks_take_the_least_active_split() {
        let mut w = SplitWatermarks::new(10);
        assert_eq!(w.watermark(), None);
        w.mark(SplitMark::Open(0));
        w.mark(SplitMark::Open(1));
        w.observe(0, 1000);
        // Split 1 has read nothing yet: it holds time back.
        assert_eq!(w.watermark(), Some(i64::MIN));
        w.observe(1, 500);
        assert_eq!(w.watermark(), Some(490));
        // An idle split holds it back no more, until its next record.
        w.mark(SplitMark::Idle(1));
        assert_eq!(w.watermark(), Some(990));
        w.observe(1, 600);
        assert_eq!(w.watermark(), Some(590));
        w.mark(SplitMark::Ended(1));
        w.observe(0, 2000);
        assert_eq!(w.watermark(), Some(1990));
        w.mark(SplitMark::Idle(0));
        assert_eq!(w.watermark(), None);
        let carried = SplitWatermarks::carried(Some(w.clone()), 0);
        assert_eq!(
            carried.splits().collect::<Vec<_>>(),
            vec![(0, 2000, true), (1, 600, false)]
        );
    }
}
