//! `trending`: over each sliding window, the skus with the most units, most first, ties by sku.

use flumen_sdk::aggregate::{Aggregate, Window};
use orders_model::{SkuUnits, Trending, ValidOrder};
use serde::Deserialize;
use std::collections::BTreeMap;

/// From `[operators.trending.params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendingParams {
    /// How many skus a window lists.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    3
}

pub struct TopSkus {
    top: usize,
}

#[flumen_sdk::aggregate]
impl Aggregate for TopSkus {
    type Input = ValidOrder;
    type Acc = BTreeMap<String, i64>;
    type Output = Trending;
    type Params = TrendingParams;

    fn new(params: TrendingParams) -> Result<Self, String> {
        if params.top == 0 {
            return Err("`top` must be at least 1".into());
        }
        Ok(TopSkus { top: params.top })
    }

    fn create(&self) -> BTreeMap<String, i64> {
        BTreeMap::new()
    }

    fn add(&self, units: &mut BTreeMap<String, i64>, order: &ValidOrder) {
        *units.entry(order.sku.clone()).or_default() += order.qty;
    }

    fn merge(&self, units: &mut BTreeMap<String, i64>, other: BTreeMap<String, i64>) {
        for (sku, n) in other {
            *units.entry(sku).or_default() += n;
        }
    }

    fn finish(&self, _: &str, window: Window, units: BTreeMap<String, i64>) -> Option<Trending> {
        let mut ranked: Vec<(String, i64)> = units.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(self.top);
        Some(Trending {
            window_start: window.start,
            window_end: window.end,
            top: ranked
                .into_iter()
                .map(|(sku, units)| SkuUnits { sku, units })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_units_first_then_sku_order() {
        let agg = TopSkus { top: 3 };
        let units: BTreeMap<String, i64> = [
            ("SKU-0004", 5),
            ("SKU-0002", 7),
            ("SKU-0003", 5),
            ("SKU-0001", 5),
        ]
        .into_iter()
        .map(|(s, n)| (s.to_string(), n))
        .collect();
        let out = agg
            .finish(
                "",
                Window {
                    start: 0,
                    end: 600_000,
                },
                units,
            )
            .unwrap();
        let names: Vec<_> = out.top.iter().map(|t| (t.sku.as_str(), t.units)).collect();
        assert_eq!(
            names,
            vec![("SKU-0002", 7), ("SKU-0001", 5), ("SKU-0003", 5)]
        );
    }
}
