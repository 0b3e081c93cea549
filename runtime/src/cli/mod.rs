//! The verbs of the command line, one file each, over the library's facade
//! ([`flumen::prepare`], [`flumen::executor::Pipeline`], [`flumen::reload`]).

mod build;
mod checkpoint;
mod gen_data;
mod graph;
mod kafka;
mod new;
mod progress;
mod run;
mod test;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flumen",
    version,
    about = "A stream runtime whose operators are Rust functions compiled to WebAssembly"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its sources are finished, then print what each stage did.
    Run(run::Args),
    /// Check a pipeline file and its modules without running it; every problem is reported.
    Validate(validate::Args),
    /// Build UDF crates to WebAssembly modules.
    Build(build::Args),
    /// Generate test data.
    Gen(gen_data::Args),
    /// Show the checkpoints of a pipeline: what a restart would resume from.
    Checkpoint(checkpoint::Args),
    /// Load JSON Lines into a Kafka topic, or count what topics hold.
    Kafka(kafka::Args),
    /// Draw a pipeline: its sources, operators and sinks and what feeds what (no module needed).
    Graph(graph::Args),
    /// Start a UDF crate or a pipeline file that builds, tests and runs as created.
    New(new::Args),
    /// Run the test cases (`[[tests]]`) of a pipeline file; exits 1 if one fails, with a diff.
    Test(test::Args),
}

/// Runs the verb `cli` names.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Build(args) => build::run(args),
        Command::Gen(args) => gen_data::run(args),
        Command::Checkpoint(args) => checkpoint::run(args),
        Command::Kafka(args) => kafka::run(args),
        Command::Graph(args) => graph::run(args),
        Command::New(args) => new::run(args),
        Command::Test(args) => test::run(args),
    }
}
