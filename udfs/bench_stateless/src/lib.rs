//! The stateless benchmark job, as Flink ran it: keep orders with a positive quantity and price,
//! and score them.

use orders_model::BenchOrder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchScore {
    pub order_id: i64,
    pub user_id: i64,
    pub sku: i64,
    pub score: f64,
    pub ts: i64,
}

#[flumen_sdk::filter_map]
pub fn bench_stateless(o: BenchOrder) -> Option<BenchScore> {
    (o.qty > 0 && o.price_cents > 0).then(|| BenchScore {
        order_id: o.order_id,
        user_id: o.user_id,
        sku: o.sku,
        score: (o.qty * o.price_cents) as f64 / 100.0 + (o.user_id % 7) as f64 * 0.5,
        ts: o.ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(qty: i64, price_cents: i64) -> BenchOrder {
        BenchOrder {
            order_id: 1,
            user_id: 10,
            sku: 3,
            qty,
            price_cents,
            ts: 5,
        }
    }

    #[test]
    fn keeps_positive_orders_and_scores_them() {
        assert!(bench_stateless(order(0, 100)).is_none());
        assert!(bench_stateless(order(2, 0)).is_none());
        let scored = bench_stateless(order(2, 150)).unwrap();
        assert_eq!(scored.score, 3.0 + 3.0 * 0.5);
    }
}
