//! What the running pipeline tells of itself, written in one place and read by everyone else.
//!
//! - `stats`: per-stage counters ([`StageStats`]), each owned by its stage (an operator counts its
//!   own; the executor counts sources and sinks), and the end-of-run [`Summary`];
//! - `status`: the snapshot the executor publishes between batches ([`Status`]) — stages, their
//!   counters and watermarks, the last reload — which the admin endpoint only reads. Only the
//!   executor's thread writes it: a reload that fails to prepare reaches it through the reloader's
//!   link like one that succeeds.
//! - `metrics`: the status as Prometheus metrics, each defined once ([`metrics::METRICS`]);
//! - `graph`: the pipeline as a graph, from its configuration, rendered for Graphviz or Mermaid.

mod graph;
pub mod metrics;
pub mod stats;
pub mod status;

pub use stats::{CheckpointStats, StageKind, StageStats, Summary};
pub use status::{Graph, GuestHealth, Lag, ReloadOutcome, SharedStatus, StageStatus, Status};
