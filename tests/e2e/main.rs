//! End-to-end tests: the real `flumen` binary on real files, one module per capability.
//! Expected outputs are computed by the tests themselves from the spec, never copied from a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod author;
mod checkpoints;
mod cli;
mod config_errors;
mod hardening;
mod kafka;
mod live;
mod native;
mod nexmark;
mod observe;
mod orders_pipeline;
mod sandbox;
mod support;
mod validate_stage;
mod windows;
