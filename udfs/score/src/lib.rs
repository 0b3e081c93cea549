//! `score`: keyed by `user_id`, scores each accepted order from the user's recent orders, the
//! country of their first order, the amount and the quantity.

use compact_str::CompactString;
use flumen_sdk::state::ValueState;
use orders_model::{Score, ValidOrder};
use serde::{Deserialize, Serialize};

/// How far back an earlier order counts as recent, in event time.
pub const RECENT_MS: i64 = 600_000;

/// From `[operators.score.params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreParams {
    /// Orders scoring at least this are flagged.
    pub flag_threshold: i64,
}

/// What `score` remembers of a user. Named anew when its layout changed (event times went from
/// a list of numbers to bytes), so a swap from a module that keeps the old layout is refused by
/// name rather than misreading it.
///
/// Every timestamp is kept: the spec would allow forgetting those older than the newest minus
/// 605 s, but a far-late order (more than 5 s behind the newest) needs older ones to be scored as
/// the spec defines `recent`, so forgetting would change results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserTimes {
    /// Inline: a country code is never allocated.
    pub first_country: CompactString,
    /// Event times of the user's accepted orders.
    pub timestamps: Timestamps,
}

/// Event times, sorted, kept as the little-endian bytes of each `i64`: the state of a user with
/// a long history is read and written with one copy, and searched where it lies, rather than
/// decoded and encoded number by number every time the user orders (which made scoring an order
/// cost in proportion to the user's history).
#[derive(Debug, Clone, Default)]
pub struct Timestamps(Vec<u8>);

impl Serialize for Timestamps {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamps {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Timestamps;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("event times as bytes, 8 each")
            }
            fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Timestamps, E> {
                if !bytes.len().is_multiple_of(8) {
                    return Err(E::invalid_length(bytes.len(), &self));
                }
                // Room for the one the order about to be scored adds.
                let mut held = Vec::with_capacity(bytes.len() + 8);
                held.extend_from_slice(bytes);
                Ok(Timestamps(held))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

impl Timestamps {
    /// Each, as a number, in order.
    fn times(&self) -> &[[u8; 8]] {
        self.0.as_chunks::<8>().0
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.times().len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.times().is_empty()
    }

    /// How many come before the first for which `before` is false (`before` holds for a prefix).
    fn partition_point(&self, before: impl Fn(i64) -> bool) -> usize {
        self.times()
            .partition_point(|t| before(i64::from_le_bytes(*t)))
    }

    /// How many are in `[from, to]`.
    pub fn count_within(&self, from: i64, to: i64) -> usize {
        let first = self.partition_point(|t| t < from);
        let end = self.partition_point(|t| t <= to);
        end.saturating_sub(first)
    }

    /// Adds `ts`, after any equal to it.
    pub fn insert(&mut self, ts: i64) {
        let at = self.partition_point(|t| t <= ts) * 8;
        let end = self.0.len();
        self.0.extend_from_slice(&ts.to_le_bytes());
        self.0.copy_within(at..end, at + 8);
        self.0[at..at + 8].copy_from_slice(&ts.to_le_bytes());
    }
}

#[flumen_sdk::process]
pub fn score(
    order: ValidOrder<'_>,
    history: &mut ValueState<UserTimes>,
    params: &ScoreParams,
) -> Score {
    let user = history.get_or_insert_with(|| UserTimes {
        first_country: CompactString::from(order.country.as_ref()),
        timestamps: Timestamps::default(),
    });
    let recent = user
        .timestamps
        .count_within(order.ts.saturating_sub(RECENT_MS), order.ts);
    let mut score = 0;
    if order.amount_cents > 50_000 {
        score += 40;
    }
    if recent >= 3 {
        score += 30;
    }
    if order.country != user.first_country {
        score += 20;
    }
    if order.qty >= 10 {
        score += 10;
    }
    user.timestamps.insert(order.ts);
    Score {
        order_id: order.order_id,
        user_id: order.user_id,
        score,
        flagged: score >= params.flag_threshold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::testing::Harness;
    use serde_json::json;

    fn order(id: i64, ts: i64, country: &str, qty: i64, price: i64) -> ValidOrder<'static> {
        ValidOrder {
            order_id: id,
            user_id: 9,
            sku: "SKU-0001".into(),
            qty,
            price_cents: price,
            country: country.to_string().into(),
            ts,
            amount_cents: qty * price,
        }
    }

    fn scores(orders: Vec<ValidOrder<'static>>) -> Vec<i64> {
        let mut h = Harness::<ScoreOperator>::new(json!({"flag_threshold": 50})).unwrap();
        orders
            .into_iter()
            .map(|o| {
                h.run_keyed("9", o, 0).unwrap().main[0]["score"]
                    .as_i64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn each_rule_adds_its_points() {
        assert_eq!(scores(vec![order(1, 0, "FR", 1, 100)]), vec![0]);
        assert_eq!(scores(vec![order(1, 0, "FR", 1, 50_001)]), vec![40]);
        assert_eq!(scores(vec![order(1, 0, "FR", 10, 1)]), vec![10]);
        assert_eq!(
            scores(vec![order(1, 0, "FR", 1, 1), order(2, 1, "DE", 1, 1)]),
            vec![0, 20]
        );
    }

    #[test]
    fn recent_counts_earlier_arrivals_within_ten_minutes_inclusive() {
        let base = 10_000_000;
        let orders = vec![
            order(1, base - RECENT_MS, "FR", 1, 1),
            order(2, base - 5, "FR", 1, 1),
            order(3, base + 1000, "FR", 1, 1),
            order(4, base, "FR", 1, 1),
        ];
        // The fourth sees ts base-600000 and base-5 (in range), not base+1000 (after it).
        assert_eq!(scores(orders), vec![0, 0, 0, 0]);
        let orders = vec![
            order(1, base - RECENT_MS, "FR", 1, 1),
            order(2, base - 5, "FR", 1, 1),
            order(3, base, "FR", 1, 1),
            order(4, base, "FR", 1, 1),
        ];
        assert_eq!(scores(orders), vec![0, 0, 0, 30]);
    }

    #[test]
    fn recent_reaches_back_ten_minutes_even_from_the_least_event_time() {
        let orders = (0..4).map(|i| order(i, i64::MIN + i, "FR", 1, 1)).collect();
        assert_eq!(scores(orders), vec![0, 0, 0, 30]);
    }

    #[test]
    fn timestamps_read_back_only_in_whole_eights() {
        // serde_json hands a string's bytes to `deserialize_bytes`.
        let one: Timestamps =
            serde_json::from_str("\"\\u0001\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\\u0000\"")
                .unwrap();
        assert_eq!(one.times(), [1i64.to_le_bytes()]);
        let error = serde_json::from_str::<Timestamps>("\"1234567\"").unwrap_err();
        assert!(error.to_string().contains("invalid length 7"), "{error}");
    }

    proptest::proptest! {
        /// Held as bytes, the event times count and keep order as a sorted list does.
        #[test]
        fn timestamps_count_as_a_sorted_list_does(
            times in proptest::collection::vec(-2_000_000i64..2_000_000, 0..200),
            queries in proptest::collection::vec((-3_000_000i64..3_000_000, 0i64..700_000), 1..20),
        ) {
            let mut held = Timestamps::default();
            let mut list: Vec<i64> = Vec::new();
            for &ts in &times {
                held.insert(ts);
                list.insert(list.partition_point(|&t| t <= ts), ts);
                proptest::prop_assert_eq!(held.len(), list.len());
            }
            for &(to, span) in &queries {
                let naive = list.iter().filter(|&&t| to - span <= t && t <= to).count();
                proptest::prop_assert_eq!(held.count_within(to - span, to), naive);
            }
            let read: Vec<i64> = held.times().iter().map(|t| i64::from_le_bytes(*t)).collect();
            proptest::prop_assert_eq!(read, list);
        }
    }

    #[test]
    fn flagged_follows_the_threshold_parameter() {
        let mut h = Harness::<ScoreOperator>::new(json!({"flag_threshold": 40})).unwrap();
        let out = h.run_keyed("9", order(1, 0, "FR", 1, 60_000), 0).unwrap();
        assert_eq!(
            out.main[0],
            json!({"order_id": 1, "user_id": 9, "score": 40, "flagged": true})
        );
    }
}
