//! The `flumen` command line: run, validate, build, gen.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flumen::connectors::generator::OrderGenerator;
use flumen::executor::Pipeline;
use flumen::guest::Sandbox;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

/// The most partitions a stage may have (each is a sandboxed instance of its module).
const MAX_PARALLELISM: usize = 256;

#[derive(Parser)]
#[command(
    name = "flumen",
    version,
    about = "A stream runtime whose operators are Rust functions compiled to WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until its sources are finished, then print what each stage did.
    Run {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
        /// Partitions of every keyed stage.
        #[arg(long, env = "FLUMEN_PARALLELISM", default_value_t = 1)]
        parallelism: usize,
        /// Reload when the pipeline file or one of its modules changes (SIGHUP reloads anyway).
        #[arg(long)]
        watch: bool,
        /// Serve GET /status and POST /reload on this address (e.g. 127.0.0.1:9090).
        #[arg(long, value_name = "ADDRESS")]
        admin: Option<String>,
        /// The bearer token the admin endpoint requires (needed off loopback).
        #[arg(
            long,
            env = "FLUMEN_ADMIN_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        admin_token: Option<String>,
        /// Run operators as sandboxed Wasm, or natively (built by `flumen build --native`).
        #[arg(long, value_enum, default_value_t = Backend::Wasm)]
        backend: Backend,
        /// Also write the summary as JSON to this file (records, time, per-stage counts, peak RSS).
        #[arg(long, value_name = "FILE")]
        summary_json: Option<PathBuf>,
    },
    /// Check a pipeline file and its modules without running it; every problem is reported.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Build UDF crates to WebAssembly modules.
    Build {
        /// UDF crates, or folders of UDF crates.
        #[arg(default_value = "udfs")]
        paths: Vec<PathBuf>,
        /// Where the modules go.
        #[arg(long, default_value = "target/flumen")]
        out_dir: PathBuf,
        /// Also build each crate for this machine, into OUT_DIR/native (for `--backend native`).
        #[arg(long)]
        native: bool,
    },
    /// Generate test data.
    Gen {
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
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// Sandboxed WebAssembly.
    Wasm,
    /// The same UDF crates as native shared libraries: unsandboxed, for measuring and debugging.
    Native,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    /// Order events, JSON Lines, with every kind of reject and malformed line.
    Orders,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLUMEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            pipeline,
            parallelism,
            watch,
            admin,
            admin_token,
            backend,
            summary_json,
        } => {
            if !(1..=MAX_PARALLELISM).contains(&parallelism) {
                anyhow::bail!("--parallelism is between 1 and {MAX_PARALLELISM}");
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (trigger_sender, triggers) = mpsc::channel();
            handle_signals(stop.clone(), trigger_sender.clone())?;
            let options = flumen::Options {
                parallelism,
                backend: match backend {
                    Backend::Wasm => flumen::BackendKind::Wasm,
                    Backend::Native => flumen::BackendKind::Native,
                },
            };
            let capacity = flumen::instances_needed(&pipeline, options);
            let sandbox = Arc::new(Sandbox::with_capacity(capacity)?);
            let prepared = match flumen::prepare(&pipeline, &sandbox, options) {
                Ok(prepared) => prepared,
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(2));
                }
            };
            let files = flumen::reload::watched_files(&pipeline, &prepared);
            let status = admin.as_ref().map(|_| {
                Arc::new(std::sync::Mutex::new(flumen::status::Status {
                    pipeline: pipeline.display().to_string(),
                    ..Default::default()
                }))
            });
            if let (Some(address), Some(status)) = (&admin, &status) {
                let config = flumen::admin::AdminConfig {
                    address: address.clone(),
                    token: admin_token,
                };
                flumen::admin::serve(&config, status.clone(), trigger_sender.clone())?;
            }
            let (link, reloads) = flumen::reload::link();
            let reloader = flumen::reload::Reloader {
                path: pipeline.clone(),
                sandbox: sandbox.clone(),
                options,
                watch,
                running: prepared.plan.clone(),
                status: status.clone(),
            };
            flumen::reload::spawn(reloader, files, triggers, trigger_sender, link)?;
            let mut running = Pipeline::build(prepared)?;
            if let Some(status) = status {
                running.report_to(status);
            }
            let started = std::time::Instant::now();
            let summary = running.run(&stop, Some(&reloads))?;
            let elapsed = started.elapsed();
            eprint!("{summary}");
            if let Some(path) = summary_json {
                let report = summary.to_json(elapsed);
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { pipeline } => {
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
        Command::Build {
            paths,
            out_dir,
            native,
        } => {
            let toolchain = flumen::toolchain::detect()?;
            let mut crates = Vec::new();
            for path in &paths {
                crates.extend(flumen::toolchain::find_crates(path)?);
            }
            if crates.is_empty() {
                anyhow::bail!("no UDF crate (crate-type \"cdylib\") under {paths:?}");
            }
            for module in flumen::toolchain::build(&toolchain, &crates, &out_dir)? {
                println!("{}", module.display());
            }
            if native {
                for library in flumen::toolchain::build_native(&crates, &out_dir.join("native"))? {
                    println!("{}", library.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gen {
            what: Dataset::Orders,
            count,
            seed,
            out,
        } => {
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
    }
}

/// SIGINT and SIGTERM stop the run gracefully (what was read is drained, sinks are flushed, the
/// exit code is 0); SIGHUP asks for a reload. The handlers are in place when this returns.
fn handle_signals(
    stop: Arc<AtomicBool>,
    reload: mpsc::Sender<flumen::reload::Trigger>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    let (mut terminate, mut interrupt, mut hangup) = {
        let _entered = runtime.enter();
        (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        )
    };
    std::thread::Builder::new()
        .name("flumen-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    tokio::select! {
                        _ = terminate.recv() => {
                            tracing::info!("SIGTERM: draining and stopping");
                            stop.store(true, Ordering::Relaxed);
                        }
                        _ = interrupt.recv() => {
                            tracing::info!("SIGINT: draining and stopping");
                            stop.store(true, Ordering::Relaxed);
                        }
                        _ = hangup.recv() => {
                            let _ = reload.send(flumen::reload::Trigger::Asked);
                        }
                    }
                }
            })
        })?;
    Ok(())
}
