//! The window benchmark job, as Flink ran it: per sku and tumbling window, `COUNT(*)` and
//! `SUM(qty * price_cents)`.

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use orders_model::BenchOrder;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountSum {
    pub count: i64,
    pub sum: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuWindow {
    pub sku: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub count: i64,
    pub sum: i64,
}

pub struct BenchWindow;

#[flumen_sdk::aggregate]
impl Aggregate for BenchWindow {
    type Input<'a> = BenchOrder;
    type Acc = CountSum;
    type Output = SkuWindow;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(BenchWindow)
    }

    fn create(&self) -> CountSum {
        CountSum::default()
    }

    fn add(&self, acc: &mut CountSum, o: &BenchOrder) {
        acc.count += 1;
        acc.sum += o.qty * o.price_cents;
    }

    fn merge(&self, acc: &mut CountSum, other: CountSum) {
        acc.count += other.count;
        acc.sum += other.sum;
    }

    fn finish(&self, sku: &str, window: Window, acc: CountSum) -> Option<SkuWindow> {
        Some(SkuWindow {
            sku: sku.parse().ok()?,
            window_start: window.start,
            window_end: window.end,
            count: acc.count,
            sum: acc.sum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_sums() {
        let mut acc = BenchWindow.create();
        let o = BenchOrder {
            order_id: 1,
            user_id: 1,
            sku: 42,
            qty: 3,
            price_cents: 7,
            ts: 0,
        };
        BenchWindow.add(&mut acc, &o);
        BenchWindow.add(&mut acc, &o);
        let out = BenchWindow
            .finish(
                "42",
                Window {
                    start: 0,
                    end: 1000,
                },
                acc,
            )
            .unwrap();
        assert_eq!((out.sku, out.count, out.sum), (42, 2, 42));
    }
}
