//! `flumen validate`: loads, plans and initialises a pipeline without running it.

use flumen::guest::Sandbox;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
}

pub fn run(Args { pipeline }: Args) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new()?;
    match flumen::prepare(&pipeline, &sandbox, flumen::Options::default()) {
        Ok(prepared) => {
            let plan = &prepared.plan;
            println!(
                "{}: ok ({} sources, {} operators, {} sinks)",
                pipeline.display(),
                plan.sources.len(),
                plan.operators.len(),
                plan.sinks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::from(2))
        }
    }
}
