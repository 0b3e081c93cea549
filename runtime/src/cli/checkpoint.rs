//! `flumen checkpoint list|inspect DIR`: what a checkpoint folder holds, so an operator can see
//! what a restart will do.

use anyhow::Context;
use flumen::checkpoint::{Checkpoint, CheckpointDir, Found};
use flumen::connectors::Position;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The checkpoints in a folder, oldest first: id, size, age, whether intact, what it holds.
    List {
        /// The checkpoint folder (`[pipeline] checkpoint.dir`).
        dir: PathBuf,
    },
    /// One checkpoint in detail (the newest intact one unless `--id`): sources' positions and
    /// watermarks, each stage's module, keys and state bytes, sinks' committed lengths.
    Inspect {
        /// The checkpoint folder.
        dir: PathBuf,
        /// The checkpoint to show.
        #[arg(long)]
        id: Option<u64>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::List { dir } => list(&dir),
        Command::Inspect { dir, id } => inspect(&dir, id),
    }
}

/// The folder, which must exist (listing never creates it).
fn open(dir: &Path) -> anyhow::Result<CheckpointDir> {
    anyhow::ensure!(dir.is_dir(), "{} is not a folder", dir.display());
    CheckpointDir::open(dir).with_context(|| format!("cannot read {}", dir.display()))
}

fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    let checkpoints = open(dir)?;
    let found = checkpoints.list()?;
    if found.is_empty() {
        println!("no checkpoints in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:>12}  {:>10}  {:>9}  state",
        "id", "bytes", "age", "keys"
    );
    for f in &found {
        match read(&checkpoints, f) {
            Ok(c) => println!(
                "{:>6}  {:>12}  {:>9.1}s  {:>9}  {}{}",
                f.id,
                f.size,
                c.age_ms() as f64 / 1e3,
                c.entries(),
                c.positions(),
                if c.finished() {
                    " — run finished"
                } else {
                    ""
                }
            ),
            Err(why) => println!("{:>6}  {:>12}  unusable: {why}", f.id, f.size),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect(dir: &Path, id: Option<u64>) -> anyhow::Result<ExitCode> {
    let checkpoints = open(dir)?;
    let (found, checkpoint) = match id {
        Some(id) => {
            let found = checkpoints
                .list()?
                .into_iter()
                .find(|f| f.id == id)
                .with_context(|| format!("no checkpoint {id} in {}", dir.display()))?;
            let checkpoint = read(&checkpoints, &found)
                .map_err(|why| anyhow::anyhow!("{}: {why}", found.path.display()))?;
            (found, checkpoint)
        }
        None => {
            let newest = checkpoints.newest()?;
            for why in &newest.passed_over {
                println!("passed over: {why}");
            }
            let Some((found, content)) = newest.valid else {
                println!("no intact checkpoint in {}", dir.display());
                return Ok(ExitCode::from(1));
            };
            let checkpoint = Checkpoint::decode(&content)
                .map_err(|why| anyhow::anyhow!("{}: {why}", found.path.display()))?;
            (found, checkpoint)
        }
    };
    println!(
        "checkpoint {} of pipeline `{}`: {} ({} bytes), taken {:.1} s ago{}",
        found.id,
        checkpoint.pipeline,
        found.path.display(),
        found.size,
        checkpoint.age_ms() as f64 / 1e3,
        if checkpoint.finished() {
            ", at the end of its input: a restart does nothing"
        } else {
            ""
        }
    );
    println!("sources:");
    for s in &checkpoint.sources {
        let at = match &s.position {
            Position::File { offset, size, .. } => {
                format!("byte {offset} of {size}")
            }
            Position::Sequence { drawn } => format!("item {drawn}"),
            Position::Kafka { splits, .. } => Position::offsets(splits),
        };
        println!(
            "  {:<16} {} at {at}, watermark {}{}",
            s.name,
            s.input,
            watermark(s.watermark),
            if s.finished { ", ended" } else { "" }
        );
    }
    println!("stages:");
    for s in &checkpoint.stages {
        println!(
            "  {:<16} module {}, {} partition(s), {} keys/windows/sessions, {} bytes of state, \
             watermark {}",
            s.name,
            &s.module_hash[..s.module_hash.len().min(12)],
            s.partitions,
            s.entries(),
            s.state_bytes(),
            watermark(s.watermark())
        );
    }
    println!("sinks:");
    for s in &checkpoint.sinks {
        let committed = s
            .committed
            .as_ref()
            .map_or("nothing to cut back".to_string(), |at| at.to_string());
        println!("  {:<16} {}: {committed}", s.name, s.output);
    }
    Ok(ExitCode::SUCCESS)
}

fn read(checkpoints: &CheckpointDir, found: &Found) -> Result<Checkpoint, String> {
    let content = checkpoints.read(found).map_err(|e| e.to_string())?;
    Checkpoint::decode(&content)
}

fn watermark(w: i64) -> String {
    match w {
        i64::MIN => "none yet".into(),
        i64::MAX => "+∞".into(),
        w => w.to_string(),
    }
}
