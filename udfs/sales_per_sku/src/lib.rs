//! `sales_per_sku`: per sku and tumbling window, how many orders, units and cents.

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use orders_model::{SkuSales, ValidOrder};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

pub struct SalesPerSku;

#[flumen_sdk::aggregate]
impl Aggregate for SalesPerSku {
    type Input<'a> = ValidOrder<'a>;
    type Acc = Totals;
    type Output = SkuSales;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(SalesPerSku)
    }

    fn create(&self) -> Totals {
        Totals::default()
    }

    fn add(&self, acc: &mut Totals, order: &ValidOrder<'_>) {
        acc.orders += 1;
        acc.units += order.qty;
        acc.revenue_cents += order.amount_cents;
    }

    fn merge(&self, acc: &mut Totals, other: Totals) {
        acc.orders += other.orders;
        acc.units += other.units;
        acc.revenue_cents += other.revenue_cents;
    }

    fn finish(&self, sku: &str, window: Window, acc: Totals) -> Option<SkuSales> {
        Some(SkuSales {
            sku: sku.to_string(),
            window_start: window.start,
            window_end: window.end,
            orders: acc.orders,
            units: acc.units,
            revenue_cents: acc.revenue_cents,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_and_merge() {
        let order = ValidOrder {
            order_id: 1,
            user_id: 1,
            sku: "SKU-0001".into(),
            qty: 3,
            price_cents: 5,
            country: "FR".into(),
            ts: 0,
            amount_cents: 15,
        };
        let mut a = SalesPerSku.create();
        SalesPerSku.add(&mut a, &order);
        let mut b = SalesPerSku.create();
        SalesPerSku.add(&mut b, &order);
        SalesPerSku.merge(&mut a, b);
        let out = SalesPerSku
            .finish(
                "SKU-0001",
                Window {
                    start: 0,
                    end: 60_000,
                },
                a,
            )
            .unwrap();
        assert_eq!((out.orders, out.units, out.revenue_cents), (2, 6, 30));
        assert_eq!((out.window_start, out.window_end), (0, 60_000));
    }
}
