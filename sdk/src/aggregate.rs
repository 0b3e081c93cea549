//! Window aggregates, like Flink's `AggregateFunction`: the host runs the windows (assignment,
//! watermarks, firing, lateness, session merging) and stores one accumulator per key and window;
//! the module says how to create, add to, merge and finish an accumulator.
//!
//! ```
//! use flumen_sdk::aggregate::{Aggregate, Window};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Sale { pub sku: String, pub qty: i64 }
//!
//! #[derive(Serialize)]
//! pub struct Units { pub sku: String, pub window_start: i64, pub units: i64 }
//!
//! pub struct UnitsPerSku;
//!
//! #[flumen_sdk::aggregate]
//! impl Aggregate for UnitsPerSku {
//!     type Input<'a> = Sale;
//!     type Acc = i64;
//!     type Output = Units;
//!     type Params = flumen_sdk::NoParams;
//!
//!     fn new(_: Self::Params) -> Result<Self, String> { Ok(UnitsPerSku) }
//!     fn create(&self) -> i64 { 0 }
//!     fn add(&self, acc: &mut i64, sale: &Sale) { *acc += sale.qty }
//!     fn merge(&self, acc: &mut i64, other: i64) { *acc += other }
//!     fn finish(&self, key: &str, window: Window, acc: i64) -> Option<Units> {
//!         Some(Units { sku: key.to_string(), window_start: window.start, units: acc })
//!     }
//! }
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The bounds of a window: `[start, end)`, milliseconds since the Unix epoch — what
/// [`Aggregate::finish`] is told of the window it finishes.
///
/// ```
/// use flumen_sdk::aggregate::Window;
///
/// // A tumbling minute: records with 60 000 <= ts < 120 000; it fires at watermark 119 999.
/// let minute = Window { start: 60_000, end: 120_000 };
/// assert_eq!(minute.end - minute.start, 60_000);
/// assert!((minute.start..minute.end).contains(&119_999));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First instant in the window.
    pub start: i64,
    /// First instant after the window.
    pub end: i64,
}

/// An incremental aggregate over the records of a window.
pub trait Aggregate: Sized + 'static {
    /// What the window stage consumes; it may borrow from the record's bytes, as an
    /// [`Operator`](crate::Operator)'s input may.
    type Input<'a>: Deserialize<'a> + Serialize;
    /// The accumulator, stored by the host between batches. `Clone`: a sliding window's pane,
    /// decoded once, is copied into each of the windows that hold it instead of being decoded
    /// again for each.
    type Acc: Serialize + DeserializeOwned + Clone;
    /// What a fired window produces.
    type Output: Serialize;
    /// Parameters, from the stage's `params` table.
    type Params: DeserializeOwned;

    /// The shape of [`Self::Output`] (see [`crate::Operator::output_shape`]); the
    /// [`aggregate`](macro@crate::aggregate) macro fills it in.
    fn output_shape() -> Option<crate::abi::Shape> {
        None
    }

    /// Builds the aggregate from its parameters.
    fn new(params: Self::Params) -> Result<Self, String>;
    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds a record to an accumulator.
    fn add(&self, acc: &mut Self::Acc, input: &Self::Input<'_>);
    /// Merges `other` into `acc`: when session windows merge, and when a sliding window fires,
    /// whose accumulator is the merge of its panes (one per slide). It must be associative, as
    /// Flink's `AggregateFunction::merge` is: a window's panes are merged as runs that the
    /// windows sliding over them share (those of a block of the window's size from its end,
    /// those of the next block from its start, then the two), a later one always into an
    /// earlier one, so their order is kept; the nesting depends on the panes' positions alone,
    /// so a merge that rounds gives the same result in every run.
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result of a fired window of `key` (empty for a global window), or none.
    fn finish(&self, key: &str, window: Window, acc: Self::Acc) -> Option<Self::Output>;
}
