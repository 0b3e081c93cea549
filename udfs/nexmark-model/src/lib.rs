//! The Nexmark benchmark's data model (people, auctions and bids of an online auction house), as
//! Flink, Arroyo, RisingWave and Feldera run it, shared by the queries in `pipelines/nexmark/`.
//! With the feature `generator`, the seeded event generator the runtime's `nexmark` source draws
//! from (see [`generator`]).
//!
//! Events borrow their text from the record's bytes (`Cow<'a, str>`, `#[serde(borrow)]`), so a
//! query reads the fields it needs without allocating the ones it drops; `Event<'static>` is the
//! owned form.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One event of the stream: a new person, a new auction or a bid, 1 : 3 : 46.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event<'a> {
    Person(#[serde(borrow)] Person<'a>),
    Auction(#[serde(borrow)] Auction<'a>),
    Bid(#[serde(borrow)] Bid<'a>),
}

/// A person who may sell or bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person<'a> {
    pub id: i64,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub email_address: Cow<'a, str>,
    #[serde(borrow)]
    pub credit_card: Cow<'a, str>,
    #[serde(borrow)]
    pub city: Cow<'a, str>,
    #[serde(borrow)]
    pub state: Cow<'a, str>,
    pub date_time: i64,
    #[serde(borrow)]
    pub extra: Cow<'a, str>,
}

/// An item put up for auction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction<'a> {
    pub id: i64,
    #[serde(borrow)]
    pub item_name: Cow<'a, str>,
    #[serde(borrow)]
    pub description: Cow<'a, str>,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    #[serde(borrow)]
    pub extra: Cow<'a, str>,
}

/// A bid on an auction; `price` in cents (US dollars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid<'a> {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    #[serde(borrow)]
    pub channel: Cow<'a, str>,
    #[serde(borrow)]
    pub url: Cow<'a, str>,
    pub date_time: i64,
    #[serde(borrow)]
    pub extra: Cow<'a, str>,
}

/// What q0 and q1 select of a bid: `auction, bidder, price, dateTime, extra`. Its `extra` may
/// point into the bid it came from when emitted; decoded, it owns its text (it is q7's
/// accumulator too), so `BidView<'static>` is an owned type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidView<'a> {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub date_time: i64,
    pub extra: Cow<'a, str>,
}

/// What q2 selects: `auction, price`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionPrice {
    pub auction: i64,
    pub price: i64,
}

/// q5's first step: bids on one auction in one sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionCount {
    pub auction: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub count: i64,
}

/// q5's answer: the auctions with the most bids in one sliding window (ties all listed, by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotItems {
    pub window_start: i64,
    pub window_end: i64,
    pub count: i64,
    pub auctions: Vec<i64>,
}

/// q7's answer: the highest price bid in one tumbling window, and every bid at that price (in
/// arrival order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighestBids {
    pub window_start: i64,
    pub window_end: i64,
    pub price: i64,
    pub bids: Vec<BidView<'static>>,
}

impl<'a> From<Bid<'a>> for BidView<'a> {
    fn from(bid: Bid<'a>) -> BidView<'a> {
        BidView {
            auction: bid.auction,
            bidder: bid.bidder,
            price: bid.price,
            date_time: bid.date_time,
            extra: bid.extra,
        }
    }
}

#[cfg(feature = "generator")]
pub mod generator;
