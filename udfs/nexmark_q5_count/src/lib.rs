//! Nexmark q5, hot items, first step: per auction (`key_by = "auction"`) and sliding window
//! (10 s, every 2 s), how many bids it had. `nexmark_q5_hot` then keeps each window's most bid
//! auctions.

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use nexmark_model::{AuctionCount, Bid};

pub struct BidsPerAuction;

#[flumen_sdk::aggregate]
impl Aggregate for BidsPerAuction {
    type Input<'a> = Bid<'a>;
    type Acc = i64;
    type Output = AuctionCount;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(BidsPerAuction)
    }

    fn create(&self) -> i64 {
        0
    }

    fn add(&self, count: &mut i64, _: &Bid<'_>) {
        *count += 1;
    }

    fn merge(&self, count: &mut i64, other: i64) {
        *count += other;
    }

    fn finish(&self, auction: &str, window: Window, count: i64) -> Option<AuctionCount> {
        Some(AuctionCount {
            auction: auction.parse().ok()?,
            window_start: window.start,
            window_end: window.end,
            count,
        })
    }
}
