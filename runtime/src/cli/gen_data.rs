//! `flumen gen`: seeded test data.

use anyhow::Context;
use clap::ValueEnum;
use flumen::connectors::generator::OrderGenerator;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// What to generate.
    what: Dataset,
    /// How many lines.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// The seed: the same seed gives the same lines.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// Order events, JSON Lines, with every kind of reject and malformed line.
    Orders,
}

pub fn run(
    Args {
        what: Dataset::Orders,
        count,
        seed,
        out,
    }: Args,
) -> anyhow::Result<ExitCode> {
    let mut writer: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for line in OrderGenerator::new(seed).take(count) {
        writeln!(writer, "{line}")?;
    }
    writer.flush()?;
    Ok(ExitCode::SUCCESS)
}
