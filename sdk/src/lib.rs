//! Everything a flumen UDF author depends on.
//!
//! A UDF is a plain Rust function over serde types, marked with one of the attribute macros:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Order { pub order_id: i64, pub qty: i64 }
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Reject { pub order_id: i64, pub reason: String }
//!
//! #[flumen_sdk::filter_map(side(rejected = Reject))]
//! pub fn check(order: Order, out: &mut flumen_sdk::Outputs) -> Option<Order> {
//!     if order.qty < 1 {
//!         out.side("rejected", Reject { order_id: order.order_id, reason: "bad_qty".into() });
//!         return None;
//!     }
//!     Some(order)
//! }
//! ```
//!
//! Built with `flumen build` (crate type `cdylib`), the crate becomes a WebAssembly module that a
//! pipeline names in its TOML. Natively (crate type `rlib`) it is ordinary Rust, so its tests are
//! plain `cargo test`, with [`testing`] to drive the operator as the runtime would.
//!
//! The macros: [`map`] (one output per input), [`filter`] (the input or nothing), [`filter_map`]
//! (one output or none), [`flat_map`] (any number). After the input, a function may take, in any
//! order, `&mut Outputs` (side outputs) and `&P` for any `P: Deserialize` (its parameters, from the
//! stage's `params` table). It may return `Result<_, E>` with `E: Display`: an `Err`, a panic, or
//! an input that does not decode sends that record to the dead letters with the message, and the
//! pipeline goes on. Side outputs are declared in the attribute: `side(name = Type, ...)`.
//!
//! ## Reading text without allocating
//!
//! An input type may borrow from the record's bytes, which live for the call: a field
//! `Cow<'a, str>` marked `#[serde(borrow)]` points into the record (JSON text with escapes, such as
//! `"\u0053KU-1"`, still decodes, into an owned string), and so may an output that passes it on.
//! Name the lifetime on the function, or write `'_` where the output does not borrow:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use std::borrow::Cow;
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Order<'a> {
//!     pub order_id: i64,
//!     #[serde(borrow)]
//!     pub sku: Cow<'a, str>,
//! }
//!
//! #[flumen_sdk::filter_map]
//! pub fn known_sku<'a>(order: Order<'a>) -> Option<Order<'a>> {
//!     order.sku.starts_with("SKU-").then_some(order)
//! }
//!
//! # use flumen_sdk::testing::Harness;
//! let mut harness = Harness::<KnownSkuOperator>::new(serde_json::json!({})).unwrap();
//! let kept = harness.run(Order { order_id: 1, sku: "SKU-1".into() }).unwrap();
//! assert_eq!(kept.main, [serde_json::json!({"order_id": 1, "sku": "SKU-1"})]);
//! ```
//!
//! A plain `&'a str` field borrows too, but cannot hold JSON text with escapes: such a record goes
//! to the dead letters. The host compares `Order<'static>` (named `Order`) with what the producer
//! writes, so an owned `Order` upstream and a borrowing one downstream agree.

#![warn(missing_docs)]

pub mod abi;
pub mod aggregate;
mod codec;
mod fields;
pub mod guest;
pub mod log;
mod operator;
pub mod render;
pub mod shape;
pub mod state;
pub mod testing;
pub mod transcode;
mod wire;

pub use flumen_sdk_macros::{aggregate, filter, filter_map, flat_map, map, process};
pub use operator::{NoParams, Operator, Outputs};

/// The name of `T` as flumen compares types along an edge: the Rust type with every path
/// shortened to its last segment, so `alloc::vec::Vec<orders::Order>` is `Vec<Order>` and two
/// crates may each define the same `Order`.
///
/// Lifetimes are left out: an `Order<'a>` that borrows its text is the `Order` its producer
/// writes.
///
/// ```
/// assert_eq!(flumen_sdk::type_name::<Vec<std::string::String>>(), "Vec<String>");
/// assert_eq!(flumen_sdk::type_name::<(i64, Option<u8>)>(), "(i64, Option<u8>)");
/// assert_eq!(flumen_sdk::type_name::<std::borrow::Cow<'static, str>>(), "Cow<str>");
/// assert_eq!(flumen_sdk::type_name::<Vec<&'static str>>(), "Vec<&str>");
/// ```
pub fn type_name<T: ?Sized>() -> String {
    without_lifetimes(&shorten_paths(std::any::type_name::<T>()))
}

/// `name` without its lifetimes: `Cow<'_, str>` is `Cow<str>`, `&'a str` is `&str`, `Order<'_>`
/// is `Order`.
fn without_lifetimes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('\'') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        rest = &after[end..];
        // The separator that followed it: `'a, T` and `&'a T` keep only `T`.
        rest = rest
            .strip_prefix(", ")
            .or_else(|| rest.strip_prefix(' '))
            .unwrap_or(rest);
        if out.ends_with('<') && rest.starts_with('>') {
            out.pop();
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn shorten_paths(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment_start = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(segment_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                segment_start = out.len();
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names_drop_module_paths() {
        assert_eq!(shorten_paths("validate::Order"), "Order");
        assert_eq!(
            shorten_paths("alloc::vec::Vec<a::b::Order, alloc::alloc::Global>"),
            "Vec<Order, Global>"
        );
        assert_eq!(
            shorten_paths("&[core::option::Option<i64>]"),
            "&[Option<i64>]"
        );
        assert_eq!(shorten_paths("i64"), "i64");
    }
}
