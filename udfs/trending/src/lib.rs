//! `trending`: over each sliding window, the skus with the most units, most first, ties by sku.
//!
//! The accumulator is a list of `(sku, units)` sorted by sku: it decodes without building a tree,
//! two of them merge in one pass, and a window's top skus are selected without sorting them all.
//! Skus are `CompactString`s: up to 24 bytes they live inline, so decoding the ten panes of a
//! window allocates nothing per sku.

use compact_str::CompactString;
use flumen_sdk::aggregate::{Aggregate, Window};
use orders_model::{SkuUnits, Trending, ValidOrder};
use serde::Deserialize;
use std::cmp::Ordering;

/// From `[operators.trending.params]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendingParams {
    /// How many skus a window lists.
    #[serde(default = "default_top")]
    pub top: usize,
}

fn default_top() -> usize {
    3
}

pub struct TopSkus {
    top: usize,
}

/// Units per sku, sorted by sku, each sku once.
pub type Units = Vec<(CompactString, i64)>;

/// Most units first, then sku ascending.
fn rank(a: &(CompactString, i64), b: &(CompactString, i64)) -> Ordering {
    b.1.cmp(&a.1).then_with(|| by_sku(&a.0, &b.0))
}

/// The order of `str` (byte by byte), deciding on the first eight bytes as one number where it
/// can: skus share their `SKU-` prefix, and a `memcmp` call per comparison was half of merging.
fn by_sku(a: &str, b: &str) -> Ordering {
    /// The first eight bytes as one number, zero-padded. Read in one load where there are eight:
    /// a copy of a length not known in advance is a `memory.copy` call out of Wasm.
    fn head(s: &[u8]) -> u64 {
        match s.first_chunk::<8>() {
            Some(first) => u64::from_be_bytes(*first),
            None => {
                let mut bytes = [0; 8];
                bytes[..s.len()].copy_from_slice(s);
                u64::from_be_bytes(bytes)
            }
        }
    }
    // Zero-padded, two heads differ only where the texts differ in their first eight bytes, or
    // where one ends there and the other goes on with a non-zero byte: the same order either way.
    // Equal heads with one text of at most eight bytes make it a prefix of the other, so the
    // shorter is first (no `memcmp` call for the skus of eight bytes that merging meets most).
    let (a, b) = (a.as_bytes(), b.as_bytes());
    head(a)
        .cmp(&head(b))
        .then_with(|| match (a.get(8..), b.get(8..)) {
            (Some(rest_a), Some(rest_b)) if !rest_a.is_empty() && !rest_b.is_empty() => {
                rest_a.cmp(rest_b)
            }
            _ => a.len().cmp(&b.len()),
        })
}

/// Up to this many top skus, a window's are picked in one pass.
const SCAN_TOP: usize = 16;

/// The `top` first of `units` by [`rank`], in rank order: one pass that keeps the best so far,
/// where most skus are set aside by one comparison of units with the last kept (a selection
/// moves every sku around).
fn top_by_scan(units: &[(CompactString, i64)], top: usize) -> Units {
    let mut best: Units = Vec::with_capacity(top + 1);
    for entry in units {
        if best.len() == top && best.last().is_some_and(|last| last.1 > entry.1) {
            continue;
        }
        let at = best.partition_point(|kept| rank(kept, entry) == Ordering::Less);
        if at < top {
            best.insert(at, entry.clone());
            best.truncate(top);
        }
    }
    best
}

#[flumen_sdk::aggregate]
impl Aggregate for TopSkus {
    type Input<'a> = ValidOrder<'a>;
    type Acc = Units;
    type Output = Trending;
    type Params = TrendingParams;

    fn new(params: TrendingParams) -> Result<Self, String> {
        if params.top == 0 {
            return Err("`top` must be at least 1".into());
        }
        Ok(TopSkus { top: params.top })
    }

    fn create(&self) -> Units {
        Vec::new()
    }

    fn add(&self, units: &mut Units, order: &ValidOrder<'_>) {
        match units.binary_search_by(|(sku, _)| by_sku(sku, &order.sku)) {
            Ok(at) => units[at].1 += order.qty,
            Err(at) => units.insert(at, (CompactString::from(&*order.sku), order.qty)),
        }
    }

    fn merge(&self, units: &mut Units, other: Units) {
        if other.is_empty() {
            return;
        }
        let mine = std::mem::take(units);
        // As long as both together: the merged list is never copied to grow.
        units.reserve(mine.len() + other.len());
        let (mut a, mut b) = (mine.into_iter().peekable(), other.into_iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match by_sku(&x.0, &y.0) {
                    Ordering::Less => a.next(),
                    Ordering::Greater => b.next(),
                    Ordering::Equal => {
                        let (sku, n) = a.next().unwrap_or_default();
                        let (_, m) = b.next().unwrap_or_default();
                        Some((sku, n + m))
                    }
                },
                // One side is done: the rest of the other follows as it is.
                (Some(_), None) => {
                    units.extend(a);
                    break;
                }
                (None, Some(_)) => {
                    units.extend(b);
                    break;
                }
                (None, None) => break,
            };
            units.extend(next);
        }
    }

    fn finish(&self, _: &str, window: Window, mut units: Units) -> Option<Trending> {
        if units.len() > self.top {
            if self.top <= SCAN_TOP {
                units = top_by_scan(&units, self.top);
            } else {
                units.select_nth_unstable_by(self.top - 1, rank);
                units.truncate(self.top);
            }
        }
        units.sort_by(rank);
        Some(Trending {
            window_start: window.start,
            window_end: window.end,
            top: units
                .into_iter()
                .map(|(sku, units)| SkuUnits {
                    sku: sku.into_string(),
                    units,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn units(pairs: &[(&str, i64)]) -> Units {
        let mut units: Units = pairs.iter().map(|(s, n)| ((*s).into(), *n)).collect();
        units.sort();
        units
    }

    fn order(sku: &str, qty: i64) -> ValidOrder<'static> {
        ValidOrder {
            order_id: 1,
            user_id: 1,
            sku: sku.to_string().into(),
            qty,
            price_cents: 100,
            country: "FR".into(),
            ts: 0,
            amount_cents: 100,
        }
    }

    #[test]
    fn most_units_first_then_sku_order() {
        let agg = TopSkus { top: 3 };
        let window = Window {
            start: 0,
            end: 600_000,
        };
        let all = units(&[
            ("SKU-0004", 5),
            ("SKU-0002", 7),
            ("SKU-0003", 5),
            ("SKU-0001", 5),
        ]);
        let out = agg.finish("", window, all).unwrap();
        let names: Vec<_> = out.top.iter().map(|t| (t.sku.as_str(), t.units)).collect();
        assert_eq!(
            names,
            vec![("SKU-0002", 7), ("SKU-0001", 5), ("SKU-0003", 5)]
        );
        let few = agg.finish("", window, units(&[("SKU-0009", 1)])).unwrap();
        assert_eq!(few.top.len(), 1);
    }

    proptest! {
        /// `by_sku` is `str`'s order, for texts that share prefixes, end within or past the
        /// first eight bytes, hold zero bytes or characters of several bytes.
        #[test]
        fn by_sku_is_the_order_of_str(a in "[\\x00AS\u{e9}]{0,11}", b in "[\\x00AS\u{e9}]{0,11}") {
            prop_assert_eq!(by_sku(&a, &b), a.cmp(&b));
            prop_assert_eq!(by_sku(&a, &a), Ordering::Equal);
        }

        /// The scan picks what a full sort puts first.
        #[test]
        fn the_scan_picks_the_top_of_a_sort(
            counts in prop::collection::btree_map(0u16..500, -3i64..6, 0..80),
            top in 1usize..=SCAN_TOP,
        ) {
            let all: Units = counts.iter().map(|(s, n)| (format!("SKU-{s}").into(), *n)).collect();
            let mut sorted = all.clone();
            sorted.sort_by(rank);
            sorted.truncate(top);
            prop_assert_eq!(top_by_scan(&all, top), sorted);
        }

        /// Adding orders to panes and merging the panes gives the units a map would count, in
        /// sku order, and the top skus are those of a full sort.
        #[test]
        fn panes_merge_to_the_counted_units(
            panes in prop::collection::vec(
                prop::collection::vec((0u8..40, 1i64..20), 0..30), 1..6),
            top in 1usize..6,
        ) {
            let agg = TopSkus { top };
            let mut expected: BTreeMap<String, i64> = BTreeMap::new();
            let mut merged = agg.create();
            for pane in &panes {
                let mut acc = agg.create();
                for &(sku, qty) in pane {
                    let sku = format!("SKU-{sku:04}");
                    *expected.entry(sku.clone()).or_default() += qty;
                    agg.add(&mut acc, &order(&sku, qty));
                }
                agg.merge(&mut merged, acc);
            }
            let counted: Units = expected.into_iter().map(|(s, n)| (s.into(), n)).collect();
            prop_assert_eq!(&merged, &counted);
            let mut ranked = counted.clone();
            ranked.sort_by(rank);
            ranked.truncate(top);
            let window = Window { start: 0, end: 1 };
            let out = agg.finish("", window, merged).unwrap();
            let got: Units = out.top.into_iter().map(|t| (t.sku.into(), t.units)).collect();
            prop_assert_eq!(got, ranked);
        }
    }
}
