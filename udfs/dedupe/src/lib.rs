//! `dedupe`: keyed by `order_id`; the first valid order with an id passes, every later one is
//! rejected as `duplicate`. The stage's `state_ttl_ms` lets the host forget old ids.

use flumen_sdk::Outputs;
use flumen_sdk::state::ValueState;
use orders_model::{Reject, ValidOrder};

#[flumen_sdk::process(side(rejected = Reject))]
pub fn dedupe<'a>(
    order: ValidOrder<'a>,
    seen: &mut ValueState<bool>,
    out: &mut Outputs,
) -> Option<ValidOrder<'a>> {
    if seen.get().is_some() {
        out.side(
            "rejected",
            Reject {
                order_id: order.order_id,
                reason: "duplicate".into(),
            },
        );
        return None;
    }
    seen.set(true);
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::testing::Harness;
    use serde_json::json;

    fn order(id: i64) -> ValidOrder<'static> {
        ValidOrder {
            order_id: id,
            user_id: 1,
            sku: "SKU-0001".into(),
            qty: 1,
            price_cents: 100,
            country: "FR".into(),
            ts: 0,
            amount_cents: 100,
        }
    }

    #[test]
    fn the_first_order_of_an_id_passes_and_later_ones_are_rejected() {
        let mut h = Harness::<DedupeOperator>::new(json!({})).unwrap();
        assert_eq!(h.run_keyed("7", order(7), 0).unwrap().main.len(), 1);
        let again = h.run_keyed("7", order(7), 1).unwrap();
        assert!(again.main.is_empty());
        assert_eq!(
            again.side("rejected"),
            vec![json!({"order_id": 7, "reason": "duplicate"})]
        );
        assert_eq!(h.run_keyed("8", order(8), 2).unwrap().main.len(), 1);
    }
}
