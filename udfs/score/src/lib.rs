//! `score`: keyed by `user_id`, scores each accepted order from the user's recent orders, the
//! country of their first order, the amount and the quantity.

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

/// What `score` remembers of a user.
///
/// Every timestamp is kept: the spec would allow forgetting those older than the newest minus
/// 605 s, but a far-late order (more than 5 s behind the newest) needs older ones to be scored as
/// the spec defines `recent`, so forgetting would change results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserHistory {
    pub first_country: String,
    /// Event times of the user's accepted orders, sorted.
    pub timestamps: Vec<i64>,
}

#[flumen_sdk::process]
pub fn score(
    order: ValidOrder<'_>,
    history: &mut ValueState<UserHistory>,
    params: &ScoreParams,
) -> Score {
    let user = history.get_or_insert_with(|| UserHistory {
        first_country: order.country.to_string(),
        timestamps: Vec::new(),
    });
    let times = &user.timestamps;
    let from = times.partition_point(|&t| t < order.ts - RECENT_MS);
    let to = times.partition_point(|&t| t <= order.ts);
    let recent = to - from;
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
    user.timestamps.insert(to, order.ts);
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
    fn flagged_follows_the_threshold_parameter() {
        let mut h = Harness::<ScoreOperator>::new(json!({"flag_threshold": 40})).unwrap();
        let out = h.run_keyed("9", order(1, 0, "FR", 1, 60_000), 0).unwrap();
        assert_eq!(
            out.main[0],
            json!({"order_id": 1, "user_id": 9, "score": 40, "flagged": true})
        );
    }
}
