//! `flumen graph`: the pipeline as a graph, from its file alone (no module is loaded), in
//! Graphviz's language or as a Mermaid flowchart.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
    /// `dot` (render with `dot -Tsvg`) or `mermaid` (paste into Markdown as a ```mermaid block).
    #[arg(long, value_enum, default_value_t = Format::Dot)]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Dot,
    Mermaid,
}

pub fn run(Args { pipeline, format }: Args) -> anyhow::Result<ExitCode> {
    let config = match flumen::config::load(&pipeline) {
        (Some(config), errors) if errors.is_empty() => config,
        (_, errors) => {
            eprintln!("{}", flumen::config::ConfigErrors(errors));
            return Ok(ExitCode::from(2));
        }
    };
    let graph = config.graph();
    match format {
        Format::Dot => print!("{}", graph.to_dot(&config.name)),
        Format::Mermaid => print!("{}", graph.to_mermaid()),
    }
    Ok(ExitCode::SUCCESS)
}
