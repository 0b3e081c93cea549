//! Nexmark q0, pass-through: `SELECT auction, bidder, price, dateTime, extra FROM bid`. It
//! measures what the runtime costs with next to no work in the query.

use nexmark_model::{BidView, Event};

#[flumen_sdk::filter_map]
pub fn nexmark_q0<'a>(event: Event<'a>) -> Option<BidView<'a>> {
    match event {
        Event::Bid(bid) => Some(bid.into()),
        Event::Person(_) | Event::Auction(_) => None,
    }
}
