//! Nexmark q1, currency conversion: `SELECT auction, bidder, 0.908 * price AS price, dateTime,
//! extra FROM bid` (dollars to euros; prices stay in whole cents, rounded down).

use nexmark_model::{BidView, Event};

/// Euro cents for `cents` dollar cents.
pub fn to_euros(cents: i64) -> i64 {
    cents * 908 / 1000
}

#[flumen_sdk::filter_map]
pub fn nexmark_q1<'a>(event: Event<'a>) -> Option<BidView<'a>> {
    match event {
        Event::Bid(bid) => Some(BidView {
            price: to_euros(bid.price),
            ..bid.into()
        }),
        Event::Person(_) | Event::Auction(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn converts_at_0_908() {
        assert_eq!(super::to_euros(1000), 908);
        assert_eq!(super::to_euros(100), 90);
    }
}
