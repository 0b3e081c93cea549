//! The Nexmark queries of `pipelines/nexmark/`, run by the real binary on generated events with
//! a file sink instead of the blackhole; each output is compared with the query computed here,
//! directly from the same seeded events (`nexmark_model::generator`).

use crate::support::{Scenario, assert_same_set, modules};
use nexmark_model::generator::Generator;
use nexmark_model::{Bid, Event};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// 15 s of event time: a handful of q5's sliding windows, two of q7's tumbling ones.
const EVENTS: u64 = 1_500_000;

/// The bids among the first [`EVENTS`] events of seed 1 (the pipelines' seed).
fn bids() -> Vec<Bid<'static>> {
    let mut generator = Generator::new(1);
    (0..EVENTS)
        .filter_map(|_| match generator.next_event() {
            Event::Bid(bid) => Some(bid),
            _ => None,
        })
        .collect()
}

/// Runs `pipelines/nexmark/{query}.toml` with its sink writing a file; the lines written.
fn run(scenario: &Scenario, query: &str) -> Vec<Value> {
    let path = crate::support::workspace().join(format!("pipelines/nexmark/{query}.toml"));
    let toml = std::fs::read_to_string(path).unwrap();
    for expected in [
        "../../target/flumen/",
        "type = \"blackhole\"",
        "${NEXMARK_EVENTS:-",
    ] {
        assert!(toml.contains(expected), "{query}.toml has no {expected}");
    }
    let toml = toml
        .replace("../../target/flumen/", "{modules}/")
        .replace(
            "type = \"blackhole\"",
            &format!("type = \"file\"\npath = \"{{dir}}/{query}.jsonl\""),
        )
        .replace("${NEXMARK_EVENTS:-10000000}", &EVENTS.to_string());
    scenario.run_accounted(&scenario.pipeline(&toml));
    scenario.jsonl(&format!("{query}.jsonl"))
}

fn view(bid: &Bid, price: i64) -> Value {
    json!({"auction": bid.auction, "bidder": bid.bidder, "price": price,
        "date_time": bid.date_time, "extra": bid.extra})
}

#[test]
fn q0_q1_and_q2_select_and_convert_every_bid() {
    modules();
    let scenario = Scenario::new();
    let bids = bids();
    assert_same_set(
        "q0",
        run(&scenario, "q0"),
        bids.iter().map(|b| view(b, b.price)).collect(),
    );
    assert_same_set(
        "q1",
        run(&scenario, "q1"),
        bids.iter().map(|b| view(b, b.price * 908 / 1000)).collect(),
    );
    let q2: Vec<Value> = bids
        .iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| json!({"auction": b.auction, "price": b.price}))
        .collect();
    assert!(
        q2.len() > 100,
        "too few bids on every 123rd auction: {}",
        q2.len()
    );
    assert_same_set("q2", run(&scenario, "q2"), q2);
}

#[test]
fn q5_finds_the_most_bid_auctions_of_each_sliding_window() {
    modules();
    let scenario = Scenario::new();
    // Bids per window end (every 2 s; a window holds the 10 s before its end) and auction.
    let mut counts: BTreeMap<i64, BTreeMap<i64, i64>> = BTreeMap::new();
    for bid in bids() {
        let first_end = bid.date_time - bid.date_time.rem_euclid(2000) + 2000;
        for end in (first_end..first_end + 10_000).step_by(2000) {
            *counts
                .entry(end)
                .or_default()
                .entry(bid.auction)
                .or_default() += 1;
        }
    }
    let expected: Vec<Value> = counts
        .iter()
        .map(|(end, per_auction)| {
            let most = per_auction.values().copied().max().unwrap();
            let auctions: Vec<i64> = per_auction
                .iter()
                .filter(|(_, n)| **n == most)
                .map(|(a, _)| *a)
                .collect();
            json!({"window_start": end - 10_000, "window_end": end, "count": most,
                "auctions": auctions})
        })
        .collect();
    assert!(expected.len() >= 10, "{} windows", expected.len());
    assert_same_set("q5", run(&scenario, "q5"), expected);
}

#[test]
fn q7_finds_the_highest_bids_of_each_tumbling_window() {
    modules();
    let scenario = Scenario::new();
    let mut windows: BTreeMap<i64, Vec<Bid>> = BTreeMap::new();
    for bid in bids() {
        windows
            .entry(bid.date_time - bid.date_time.rem_euclid(10_000))
            .or_default()
            .push(bid);
    }
    let expected: Vec<Value> = windows
        .iter()
        .map(|(start, bids)| {
            let price = bids.iter().map(|b| b.price).max().unwrap();
            let mut top: Vec<&Bid> = bids.iter().filter(|b| b.price == price).collect();
            top.sort_by_key(|b| (b.date_time, b.auction, b.bidder, b.extra.clone()));
            json!({"window_start": start, "window_end": start + 10_000, "price": price,
                "bids": top.iter().map(|b| view(b, b.price)).collect::<Vec<_>>()})
        })
        .collect();
    assert!(expected.len() >= 2, "{} windows", expected.len());
    assert_same_set("q7", run(&scenario, "q7"), expected);
}
