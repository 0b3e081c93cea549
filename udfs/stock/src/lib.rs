//! `stock`: keyed by `sku`, remembers the units remaining. An order is accepted if its quantity
//! is in stock; otherwise it goes to `out_of_stock`. An accepted order that takes the stock from
//! at or above the threshold to below it raises a low-stock alert.

use flumen_sdk::Outputs;
use flumen_sdk::state::ValueState;
use orders_model::{LowStockAlert, OutOfStock, ValidOrder};
use serde::Deserialize;
use std::collections::BTreeMap;

/// From `[operators.stock.params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockParams {
    /// Units every sku starts with, unless listed in `initial_by_sku`.
    pub initial_stock: i64,
    /// Starting units of particular skus.
    #[serde(default)]
    pub initial_by_sku: BTreeMap<String, i64>,
    /// Alert when the stock falls below this.
    pub low_stock_threshold: i64,
}

#[flumen_sdk::process(side(out_of_stock = OutOfStock, alerts = LowStockAlert))]
pub fn stock<'a>(
    order: ValidOrder<'a>,
    remaining: &mut ValueState<i64>,
    params: &StockParams,
    out: &mut Outputs,
) -> Option<ValidOrder<'a>> {
    let initial = || {
        params
            .initial_by_sku
            .get(order.sku.as_ref())
            .copied()
            .unwrap_or(params.initial_stock)
    };
    let before = remaining.get().copied().unwrap_or_else(initial);
    if order.qty > before {
        out.side(
            "out_of_stock",
            OutOfStock {
                order_id: order.order_id,
                sku: order.sku.into_owned(),
                qty: order.qty,
                remaining: before,
            },
        );
        return None;
    }
    let after = before - order.qty;
    remaining.set(after);
    if before >= params.low_stock_threshold && after < params.low_stock_threshold {
        out.side(
            "alerts",
            LowStockAlert {
                sku: order.sku.to_string(),
                remaining: after,
                ts: order.ts,
            },
        );
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::testing::Harness;
    use serde_json::json;

    fn order(id: i64, sku: &str, qty: i64) -> ValidOrder<'static> {
        ValidOrder {
            order_id: id,
            user_id: 1,
            sku: sku.to_string().into(),
            qty,
            price_cents: 100,
            country: "FR".into(),
            ts: 1000 + id,
            amount_cents: 100 * qty,
        }
    }

    fn harness() -> Harness<StockOperator> {
        Harness::new(json!({
            "initial_stock": 1000,
            "initial_by_sku": {"SKU-0003": 5},
            "low_stock_threshold": 20,
        }))
        .unwrap()
    }

    #[test]
    fn orders_take_stock_until_it_runs_out() {
        let mut h = harness();
        assert_eq!(
            h.run_keyed("SKU-0003", order(1, "SKU-0003", 3), 0)
                .unwrap()
                .main
                .len(),
            1
        );
        let refused = h.run_keyed("SKU-0003", order(2, "SKU-0003", 3), 0).unwrap();
        assert!(refused.main.is_empty());
        assert_eq!(
            refused.side("out_of_stock"),
            vec![json!({"order_id": 2, "sku": "SKU-0003", "qty": 3, "remaining": 2})]
        );
        assert_eq!(
            h.run_keyed("SKU-0003", order(3, "SKU-0003", 2), 0)
                .unwrap()
                .main
                .len(),
            1
        );
        assert_eq!(h.state("SKU-0003").unwrap().get(), Some(&0));
    }

    #[test]
    fn an_alert_fires_once_when_crossing_the_threshold() {
        let mut h = harness();
        let mut alerts = Vec::new();
        for (id, qty) in [(1, 490), (2, 490), (3, 5), (4, 10), (5, 1)] {
            alerts.extend(
                h.run_keyed("SKU-0009", order(id, "SKU-0009", qty), 0)
                    .unwrap()
                    .side("alerts"),
            );
        }
        assert_eq!(
            alerts,
            vec![json!({"sku": "SKU-0009", "remaining": 15, "ts": 1003})]
        );
    }

    #[test]
    fn starting_below_the_threshold_never_alerts() {
        let mut h = harness();
        let out = h.run_keyed("SKU-0003", order(1, "SKU-0003", 1), 0).unwrap();
        assert!(out.side("alerts").is_empty());
    }
}
