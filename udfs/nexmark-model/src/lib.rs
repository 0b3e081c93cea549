//! The Nexmark benchmark's data model (people, auctions and bids of an online auction house), as
//! Flink, Arroyo, RisingWave and Feldera run it, shared by the queries in `pipelines/nexmark/`.
//! With the feature `generator`, the seeded event generator the runtime's `nexmark` source draws
//! from (see [`generator`]).

use serde::{Deserialize, Serialize};

/// One event of the stream: a new person, a new auction or a bid, 1 : 3 : 46.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

/// A person who may sell or bid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub id: i64,
    pub name: String,
    pub email_address: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: i64,
    pub extra: String,
}

/// An item put up for auction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    pub id: i64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: i64,
    pub reserve: i64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: i64,
    pub category: i64,
    pub extra: String,
}

/// A bid on an auction; `price` in cents (US dollars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// What q0 and q1 select of a bid: `auction, bidder, price, dateTime, extra`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidView {
    pub auction: i64,
    pub bidder: i64,
    pub price: i64,
    pub date_time: i64,
    pub extra: String,
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
    pub bids: Vec<BidView>,
}

impl From<Bid> for BidView {
    fn from(bid: Bid) -> BidView {
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
