//! The bids of the Nexmark event stream: Nexmark's `bid` view, read by q5 and q7.

use nexmark_model::{Bid, Event};

#[flumen_sdk::filter_map]
pub fn nexmark_bids<'a>(event: Event<'a>) -> Option<Bid<'a>> {
    match event {
        Event::Bid(bid) => Some(bid),
        Event::Person(_) | Event::Auction(_) => None,
    }
}
