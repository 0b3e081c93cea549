//! `flumen run`: prepares a pipeline, starts the admin endpoint, the reloader and the signal
//! handlers, and runs it until its sources end or a signal stops it.

use anyhow::Context;
use flumen::BackendKind;
use flumen::checkpoint::{Checkpoint, CheckpointDir};
use flumen::executor::Pipeline;
use flumen::guest::Sandbox;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// The most partitions a stage may have (each is a sandboxed instance of its module).
const MAX_PARALLELISM: usize = 256;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (TOML).
    pipeline: PathBuf,
    /// Partitions of every keyed stage.
    #[arg(long, env = "FLUMEN_PARALLELISM", default_value_t = 1)]
    parallelism: usize,
    /// Threads the run may use: the executor's, and workers that run a stage's partitions and
    /// stages of one level (none reading another) side by side. Default: one per core; 1 runs
    /// everything on one thread.
    #[arg(long, env = "FLUMEN_THREADS", value_name = "N")]
    threads: Option<usize>,
    /// Reload when the pipeline file or one of its modules changes (SIGHUP reloads anyway); a
    /// module older than the crate it was built from is pointed out.
    #[arg(long)]
    watch: bool,
    /// With --watch: rebuild a module's UDF crate when its sources change (then the new module
    /// is hot-swapped in).
    #[arg(long, requires = "watch")]
    build: bool,
    /// Serve the web view (GET /), GET /status, GET /metrics and POST /reload on this address
    /// (e.g. 127.0.0.1:9090).
    #[arg(long, value_name = "ADDRESS")]
    admin: Option<String>,
    /// After a bounded run ends, keep serving the admin endpoint (final counts, metrics, web
    /// view) until SIGINT or SIGTERM.
    #[arg(long, requires = "admin")]
    keep_serving: bool,
    /// The bearer token the admin endpoint requires (needed off loopback).
    #[arg(
        long,
        env = "FLUMEN_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Run operators as sandboxed Wasm, or natively (built by `flumen build --native`).
    #[arg(long, value_enum, default_value_t = BackendKind::Wasm)]
    backend: BackendKind,
    /// Also write the summary as JSON to this file (records, time, per-stage counts, peak RSS).
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
    /// Start from the beginning: remove the pipeline's checkpoints instead of resuming from them.
    #[arg(long)]
    fresh: bool,
    /// Take no checkpoints, even where the pipeline file asks for them (a benchmark, a throwaway
    /// run): a crash then loses the run's state, and the next run starts from the beginning.
    /// Refused with a Kafka sink that delivers exactly once.
    #[arg(long)]
    no_checkpoints: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Args {
        pipeline,
        parallelism,
        threads,
        watch,
        build,
        admin,
        keep_serving,
        admin_token,
        backend,
        summary_json,
        fresh,
        no_checkpoints,
    } = args;
    if !(1..=MAX_PARALLELISM).contains(&parallelism) {
        anyhow::bail!("--parallelism is between 1 and {MAX_PARALLELISM}");
    }
    if let Some(threads) = threads {
        flumen::limit_threads(threads).map_err(|e| anyhow::anyhow!("--threads: {e}"))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (trigger_sender, triggers) = mpsc::channel();
    handle_signals(stop.clone(), trigger_sender.clone())?;
    let options = flumen::Options {
        parallelism,
        backend,
    };
    let capacity = flumen::instances_needed(&pipeline, options);
    let sandbox = Arc::new(Sandbox::with_capacity(capacity)?);
    let mut prepared = match flumen::prepare(&pipeline, &sandbox, options) {
        Ok(prepared) => prepared,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    if no_checkpoints {
        let replaying = prepared.config.sinks.iter().find(|s| s.kind.needs_replay());
        if let Some(sink) = replaying {
            eprintln!(
                "--no-checkpoints: sink `{}` delivers exactly once, which needs checkpoints \
                 (set its delivery = \"at_least_once\" to run without)",
                sink.name
            );
            return Ok(ExitCode::from(2));
        }
        prepared.config.checkpoint = None;
    }
    let files = flumen::reload::watched_files(&pipeline, &prepared);
    let modules: Vec<PathBuf> = prepared
        .config
        .operators
        .iter()
        .map(|o| o.module.clone())
        .collect();
    let running_plan = prepared.plan.clone();
    let running_config = prepared.config.clone();
    let mut running = match start(prepared, fresh) {
        Ok(Start::Run(running)) => *running,
        Ok(Start::Finished(why)) => {
            eprintln!("{why}");
            if let Some(path) = summary_json {
                // A script reading the summary finds it, with nothing read and why.
                let mut report = flumen::telemetry::Summary::default().to_json(Duration::ZERO);
                report["nothing_to_do"] = why.into();
                std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => {
            eprintln!("{e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    // What the admin endpoint serves and the progress line shows.
    let status = Arc::new(std::sync::Mutex::new(flumen::telemetry::Status {
        pipeline: pipeline.display().to_string(),
        started_at_ms: flumen::telemetry::status::now_ms(),
        ..Default::default()
    }));
    if let Some(address) = &admin {
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
        running: running_plan,
    };
    flumen::reload::spawn(reloader, files, triggers, trigger_sender, link)?;
    if watch {
        let sources = flumen::rebuild::sources(&modules);
        match build {
            true => flumen::rebuild::spawn(sources)?,
            false => {
                for why in sources.iter().filter_map(flumen::rebuild::stale) {
                    tracing::warn!("{why}");
                }
            }
        }
    }
    running.report_to(status.clone());
    let done = Arc::new(AtomicBool::new(false));
    // Only for a run that ends by itself: a followed input has no end to estimate.
    let progress = match follows(&running_config) {
        true => None,
        false => super::progress::spawn(status, done.clone()),
    };
    let started = std::time::Instant::now();
    let summary = running.run(&stop, Some(&reloads));
    done.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.join();
    }
    let summary = summary?;
    let elapsed = started.elapsed();
    eprint!("{summary}");
    if let Some(path) = summary_json {
        let report = summary.to_json(elapsed);
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Stopped by a signal, the run ends here; finished by itself, it may go on serving.
    if keep_serving && !stop.load(Ordering::Relaxed) {
        tracing::info!("the run has ended; serving the admin endpoint until SIGINT or SIGTERM");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether a source of `config` never ends by itself (a followed file, an unbounded topic).
fn follows(config: &flumen::config::PipelineConfig) -> bool {
    use flumen::connectors::SourceKind;
    config.sources.iter().any(|s| match &s.kind {
        SourceKind::File { follow, .. } => *follow,
        SourceKind::Kafka(input) => !input.stop_at_end,
        SourceKind::Generator { .. } | SourceKind::Bench { .. } | SourceKind::Nexmark { .. } => {
            false
        }
    })
}

/// What `flumen run` does after preparing the pipeline.
enum Start {
    /// Runs it (from its start, or from its newest checkpoint).
    Run(Box<Pipeline>),
    /// Nothing: its newest checkpoint was taken at the end of a finished run (the message says
    /// so).
    Finished(String),
}

/// Opens the prepared pipeline: from its newest valid checkpoint if it takes checkpoints and has
/// one (unless `fresh`, which removes them), else from its start.
fn start(prepared: flumen::Prepared, fresh: bool) -> anyhow::Result<Start> {
    let Some(config) = prepared.config.checkpoint.clone() else {
        return Ok(Start::Run(Box::new(Pipeline::build(prepared)?)));
    };
    let dir = CheckpointDir::open(&config.dir)
        .with_context(|| format!("cannot use the checkpoint folder {}", config.dir.display()))?
        .lock()?;
    let dir = match std::env::var(PAUSE_IN_WRITE)
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        Some(ms) => dir.pausing_in_write(Duration::from_millis(ms)),
        None => dir,
    };
    let folder = dir.path().display().to_string();
    if fresh {
        let removed = dir
            .clear()
            .with_context(|| format!("--fresh: cannot clear the checkpoint folder {folder}"))?;
        if removed > 0 {
            tracing::info!("--fresh: removed {removed} checkpoints from {folder}");
        }
    }
    let started = Instant::now();
    let newest = dir
        .newest()
        .with_context(|| format!("cannot resume from the checkpoint folder {folder}"))?;
    for why in &newest.passed_over {
        tracing::warn!("passing over a damaged checkpoint: {why}");
    }
    let mut running = match newest.valid {
        None => Pipeline::build(prepared)?,
        Some((found, content)) => {
            let refused = |why: String| {
                anyhow::anyhow!(
                    "cannot resume from {}: {why}\nstart afresh with `flumen run --fresh` (every \
                     output is written again from the start), or give the pipeline another \
                     checkpoint folder",
                    found.path.display()
                )
            };
            let checkpoint = Checkpoint::decode(&content).map_err(refused)?;
            let (age, positions) = (checkpoint.age_ms(), checkpoint.positions());
            let (running, resumed) = Pipeline::resume(prepared, checkpoint, found.id)
                .map_err(|e| refused(format!("{e:#}")))?;
            for note in &resumed.notes {
                tracing::info!("resuming: {note}");
            }
            if running.is_finished() {
                return Ok(Start::Finished(format!(
                    "nothing to do: this run had finished (checkpoint {} in {folder}, taken \
                     {:.1} s ago at the end of its input). Run it with --fresh to start again.",
                    found.id,
                    age as f64 / 1e3
                )));
            }
            tracing::info!(
                "resumed from checkpoint {} ({}, taken {:.1} s ago): {positions}; {} keys, \
                 windows and sessions restored in {:.1} ms",
                found.id,
                found.path.display(),
                age as f64 / 1e3,
                resumed.entries,
                started.elapsed().as_secs_f64() * 1e3
            );
            running
        }
    };
    running.checkpoint_into(dir, config.interval)?;
    Ok(Start::Run(Box::new(running)))
}

/// A hidden hook for tests: every checkpoint write pauses this many milliseconds once its
/// temporary file is written (announced on standard error), so a test can kill the run there.
const PAUSE_IN_WRITE: &str = "FLUMEN_CHECKPOINT_WRITE_PAUSE_MS";

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
