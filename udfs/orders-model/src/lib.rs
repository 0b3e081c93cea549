//! The types of the reference e-commerce pipeline (`pipelines/orders.toml`), shared by its UDFs
//! so that every stage agrees on what crosses each edge. Field names and JSON types are the
//! spec's (`shared/spec/orders-pipeline.md`).
//!
//! The records that flow through every stage borrow their text from the record's bytes
//! (`Cow<'a, str>` with `#[serde(borrow)]`): a stage reads `sku` and `country` in place instead of
//! allocating them. JSON text with escapes (`"\u0053KU-0001"`) still decodes, into an owned
//! string. `Order<'static>` is the owned form, for tests and tools.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// An order event as it arrives, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order<'a> {
    pub order_id: i64,
    pub user_id: i64,
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    pub qty: i64,
    pub price_cents: i64,
    #[serde(borrow)]
    pub country: Cow<'a, str>,
    pub ts: i64,
}

/// An order that passed validation: every input field plus its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidOrder<'a> {
    pub order_id: i64,
    pub user_id: i64,
    #[serde(borrow)]
    pub sku: Cow<'a, str>,
    pub qty: i64,
    pub price_cents: i64,
    #[serde(borrow)]
    pub country: Cow<'a, str>,
    pub ts: i64,
    pub amount_cents: i64,
}

/// A business reject, written to the `rejected` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub order_id: i64,
    pub reason: String,
}

/// An order `stock` could not serve, written to the `out_of_stock` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutOfStock {
    pub order_id: i64,
    pub sku: String,
    pub qty: i64,
    pub remaining: i64,
}

/// A sku whose stock fell below the threshold, written to the `alerts` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowStockAlert {
    pub sku: String,
    pub remaining: i64,
    pub ts: i64,
}

/// The risk score of an accepted order, written to the `scores` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Score {
    pub order_id: i64,
    pub user_id: i64,
    pub score: i64,
    pub flagged: bool,
}

/// Sales of one sku in one tumbling window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuSales {
    pub sku: String,
    pub window_start: i64,
    pub window_end: i64,
    pub orders: i64,
    pub units: i64,
    pub revenue_cents: i64,
}

/// Units of one sku, an entry of a trending list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuUnits {
    pub sku: String,
    pub units: i64,
}

/// The best-selling skus of one sliding window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trending {
    pub window_start: i64,
    pub window_end: i64,
    pub top: Vec<SkuUnits>,
}

/// One user session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub user_id: i64,
    pub window_start: i64,
    pub window_end: i64,
    pub orders: i64,
    pub revenue_cents: i64,
}

/// An order of the benchmark jobs (the peer jobs Flink ran), made in memory by the `bench`
/// source: six integers, `sku` a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchOrder {
    pub order_id: i64,
    pub user_id: i64,
    pub sku: i64,
    pub qty: i64,
    pub price_cents: i64,
    pub ts: i64,
}
