//! Nexmark q2, selection: `SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0`.

use nexmark_model::{AuctionPrice, Event};

#[flumen_sdk::filter_map]
pub fn nexmark_q2(event: Event<'_>) -> Option<AuctionPrice> {
    match event {
        Event::Bid(bid) if bid.auction % 123 == 0 => Some(AuctionPrice {
            auction: bid.auction,
            price: bid.price,
        }),
        _ => None,
    }
}
