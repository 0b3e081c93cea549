//! The types of the reference e-commerce pipeline (`pipelines/orders.toml`), shared by its UDFs
//! so that every stage agrees on what crosses each edge. Field names and JSON types are the
//! spec's (`shared/spec/orders-pipeline.md`).

use serde::{Deserialize, Serialize};

/// An order event as it arrives, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: i64,
    pub user_id: i64,
    pub sku: String,
    pub qty: i64,
    pub price_cents: i64,
    pub country: String,
    pub ts: i64,
}

/// An order that passed validation: every input field plus its amount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidOrder {
    pub order_id: i64,
    pub user_id: i64,
    pub sku: String,
    pub qty: i64,
    pub price_cents: i64,
    pub country: String,
    pub ts: i64,
    pub amount_cents: i64,
}

/// A business reject, written to the `rejected` sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub order_id: i64,
    pub reason: String,
}
