//! `validate`: the first stage of the reference pipeline. Stateless; the first failing rule gives
//! the reject reason, a passing order gains `amount_cents`.

use flumen_sdk::Outputs;
use orders_model::{Order, Reject, ValidOrder};

/// Why `order` is rejected, by the first rule it breaks, or `None` if it is valid.
pub fn reject_reason(order: &Order) -> Option<&'static str> {
    if !(1..=100).contains(&order.qty) {
        Some("bad_qty")
    } else if !(1..=10_000_000).contains(&order.price_cents) {
        Some("bad_price")
    } else if !is_sku(&order.sku) {
        Some("bad_sku")
    } else if !is_country(&order.country) {
        Some("bad_country")
    } else {
        None
    }
}

/// `^SKU-[0-9]{4}$`
fn is_sku(sku: &str) -> bool {
    sku.len() == 8 && sku.starts_with("SKU-") && sku.as_bytes()[4..].iter().all(u8::is_ascii_digit)
}

/// Exactly two ASCII uppercase letters.
fn is_country(country: &str) -> bool {
    country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())
}

#[flumen_sdk::filter_map(side(rejected = Reject))]
pub fn validate<'a>(order: Order<'a>, out: &mut Outputs) -> Option<ValidOrder<'a>> {
    if let Some(reason) = reject_reason(&order) {
        out.side(
            "rejected",
            Reject {
                order_id: order.order_id,
                reason: reason.to_string(),
            },
        );
        return None;
    }
    Some(ValidOrder {
        amount_cents: order.qty * order.price_cents,
        order_id: order.order_id,
        user_id: order.user_id,
        sku: order.sku,
        qty: order.qty,
        price_cents: order.price_cents,
        country: order.country,
        ts: order.ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::testing::Harness;
    use serde_json::json;

    fn order() -> Order<'static> {
        Order {
            order_id: 1,
            user_id: 2,
            sku: "SKU-0042".into(),
            qty: 3,
            price_cents: 250,
            country: "FR".into(),
            ts: 1_700_000_000_000,
        }
    }

    fn reason_of(change: impl FnOnce(&mut Order)) -> Option<&'static str> {
        let mut o = order();
        change(&mut o);
        reject_reason(&o)
    }

    #[test]
    fn each_rule_and_its_bounds() {
        assert_eq!(reason_of(|_| {}), None);
        assert_eq!(reason_of(|o| o.qty = 0), Some("bad_qty"));
        assert_eq!(reason_of(|o| o.qty = 101), Some("bad_qty"));
        assert_eq!(reason_of(|o| o.qty = -3), Some("bad_qty"));
        assert_eq!(reason_of(|o| o.qty = 100), None);
        assert_eq!(reason_of(|o| o.price_cents = 0), Some("bad_price"));
        assert_eq!(reason_of(|o| o.price_cents = 10_000_001), Some("bad_price"));
        assert_eq!(reason_of(|o| o.price_cents = 10_000_000), None);
        assert_eq!(reason_of(|o| o.sku = "SKU-042".into()), Some("bad_sku"));
        assert_eq!(reason_of(|o| o.sku = "SKU-00421".into()), Some("bad_sku"));
        assert_eq!(reason_of(|o| o.sku = "sku-0042".into()), Some("bad_sku"));
        assert_eq!(reason_of(|o| o.sku = "SKU-００42".into()), Some("bad_sku"));
        assert_eq!(reason_of(|o| o.country = "fr".into()), Some("bad_country"));
        assert_eq!(reason_of(|o| o.country = "FRA".into()), Some("bad_country"));
        assert_eq!(reason_of(|o| o.country = "ÉU".into()), Some("bad_country"));
    }

    #[test]
    fn the_first_failing_rule_wins() {
        let reason = reason_of(|o| {
            o.qty = 0;
            o.price_cents = 0;
            o.sku = "x".into();
            o.country = "x".into();
        });
        assert_eq!(reason, Some("bad_qty"));
        assert_eq!(
            reason_of(|o| {
                o.sku = "x".into();
                o.country = "x".into()
            }),
            Some("bad_sku")
        );
    }

    #[test]
    fn valid_orders_gain_their_amount_and_rejects_go_to_the_side() {
        let mut harness = Harness::<ValidateOperator>::new(json!({})).unwrap();
        let emitted = harness.run(order()).unwrap();
        assert_eq!(emitted.main[0]["amount_cents"], json!(750));
        assert_eq!(emitted.main[0]["sku"], json!("SKU-0042"));
        assert!(emitted.sides.is_empty());

        let emitted = harness.run(Order { qty: 0, ..order() }).unwrap();
        assert!(emitted.main.is_empty());
        assert_eq!(
            emitted.side("rejected"),
            vec![json!({"order_id": 1, "reason": "bad_qty"})]
        );
    }

    #[test]
    fn unknown_params_are_refused() {
        assert!(Harness::<ValidateOperator>::new(json!({"nope": 1})).is_err());
    }
}
