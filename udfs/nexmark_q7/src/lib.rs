//! Nexmark q7, highest bid: per tumbling window of 10 s, the bids with the highest price —
//! `SELECT B.auction, B.price, B.bidder, B.dateTime, B.extra FROM bid B JOIN (SELECT MAX(price)
//! AS maxprice, window_end AS dateTime FROM TUMBLE(bid, dateTime, 10 s)) B1 ON B.price =
//! B1.maxprice AND B.dateTime BETWEEN B1.dateTime - 10 s AND B1.dateTime`, one line per window.

use flumen_sdk::NoParams;
use flumen_sdk::aggregate::{Aggregate, Window};
use nexmark_model::{Bid, BidView, HighestBids};

pub struct HighestBid;

#[flumen_sdk::aggregate]
impl Aggregate for HighestBid {
    type Input<'a> = Bid<'a>;
    /// The highest price so far and the bids at it.
    type Acc = (i64, Vec<BidView<'static>>);
    type Output = HighestBids;
    type Params = NoParams;

    fn new(_: NoParams) -> Result<Self, String> {
        Ok(HighestBid)
    }

    fn create(&self) -> (i64, Vec<BidView<'static>>) {
        (i64::MIN, Vec::new())
    }

    fn add(&self, (price, bids): &mut (i64, Vec<BidView<'static>>), bid: &Bid<'_>) {
        if bid.price < *price {
            return;
        }
        if bid.price > *price {
            *price = bid.price;
            bids.clear();
        }
        bids.push(BidView {
            auction: bid.auction,
            bidder: bid.bidder,
            price: bid.price,
            date_time: bid.date_time,
            extra: bid.extra.to_string().into(),
        });
    }

    fn merge(&self, acc: &mut (i64, Vec<BidView<'static>>), other: (i64, Vec<BidView<'static>>)) {
        if other.0 > acc.0 {
            *acc = other;
        } else if other.0 == acc.0 {
            acc.1.extend(other.1);
        }
    }

    fn finish(
        &self,
        _: &str,
        window: Window,
        (price, mut bids): (i64, Vec<BidView<'static>>),
    ) -> Option<HighestBids> {
        bids.sort_by(|a, b| {
            (a.date_time, a.auction, a.bidder, &a.extra).cmp(&(
                b.date_time,
                b.auction,
                b.bidder,
                &b.extra,
            ))
        });
        (!bids.is_empty()).then_some(HighestBids {
            window_start: window.start,
            window_end: window.end,
            price,
            bids,
        })
    }
}
