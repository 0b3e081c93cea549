//! Nexmark q5, hot items: of the bid counts per auction and sliding window (`nexmark_q5_count`,
//! each emitted at its window's last millisecond), the auctions with the most bids in each
//! window. Run over tumbling windows as long as the slide, each holds the counts of exactly one
//! sliding window.

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use nexmark_model::{AuctionCount, HotItems};

pub struct HotAuctions;

/// The sliding window, the most bids any auction had in it, and those auctions.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Most {
    pub window: (i64, i64),
    pub count: i64,
    pub auctions: Vec<i64>,
}

#[flumen_sdk::aggregate]
impl Aggregate for HotAuctions {
    type Input<'a> = AuctionCount;
    type Acc = Most;
    type Output = HotItems;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(HotAuctions)
    }

    fn create(&self) -> Most {
        Most::default()
    }

    fn add(&self, most: &mut Most, c: &AuctionCount) {
        most.window = (c.window_start, c.window_end);
        if c.count > most.count {
            most.count = c.count;
            most.auctions.clear();
        }
        if c.count == most.count {
            most.auctions.push(c.auction);
        }
    }

    fn merge(&self, most: &mut Most, other: Most) {
        if other.count > most.count {
            *most = other;
        } else if other.count == most.count {
            most.auctions.extend(other.auctions);
        }
    }

    fn finish(&self, _: &str, _: Window, mut most: Most) -> Option<HotItems> {
        most.auctions.sort_unstable();
        (most.count > 0).then_some(HotItems {
            window_start: most.window.0,
            window_end: most.window.1,
            count: most.count,
            auctions: most.auctions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(auction: i64, count: i64) -> AuctionCount {
        AuctionCount {
            auction,
            window_start: 0,
            window_end: 10_000,
            count,
        }
    }

    #[test]
    fn keeps_every_auction_with_the_most_bids() {
        let mut most = HotAuctions.create();
        for c in [count(7, 3), count(5, 9), count(9, 9), count(2, 1)] {
            HotAuctions.add(&mut most, &c);
        }
        let window = Window {
            start: 8_000,
            end: 10_000,
        };
        let hot = HotAuctions.finish("", window, most).unwrap();
        assert_eq!((hot.count, hot.auctions), (9, vec![5, 9]));
        assert_eq!((hot.window_start, hot.window_end), (0, 10_000));
    }
}
