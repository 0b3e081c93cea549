//! `make bench-checkpoint`: what checkpoints cost the reference pipeline, measured with the real
//! `flumen` binary on `BENCH_RECORDS` (default 2,000,000) generated orders:
//! - throughput with a checkpoint every second against none, `BENCH_ROUNDS` (default 3) rounds,
//!   alternating, the ratio being the median of the rounds' ratios (this VM drifts);
//! - the pause each checkpoint costs the pipeline (p50, p99, max) while the deduplication state
//!   grows to one id per order (its time-to-live raised to 30 days for that), and the peak RSS
//!   with and without;
//! - the checkpoint's size and the time to recover from it with that state: a live run reads the
//!   whole file, is stopped (SIGTERM: drain, checkpoint), and is started again.
//!
//! Writes `target/bench-checkpoint.json`.

use flumen::checkpoint::{Checkpoint, CheckpointDir};
use flumen::connectors::Position;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flumen(root: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flumen"));
    command.current_dir(root).env("FLUMEN_LOG", "info");
    command
}

/// `flumen run --fresh` of `pipeline` to the end; its summary.
fn run(root: &Path, pipeline: &Path, envs: &[(&str, String)]) -> anyhow::Result<Value> {
    let summary = root.join("target/bench/checkpoint-summary.json");
    let status = flumen(root)
        .arg("run")
        .arg(pipeline)
        .arg("--fresh")
        .arg("--summary-json")
        .arg(&summary)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "flumen run {} failed", pipeline.display());
    Ok(serde_json::from_slice(&std::fs::read(&summary)?)?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Sends SIGTERM to `child` and waits for it.
fn terminate(child: &mut Child) -> anyhow::Result<()> {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    anyhow::ensure!(child.wait()?.success(), "flumen did not stop cleanly");
    Ok(())
}

/// Waits until the newest checkpoint in `dir` has read all `length` bytes of the input.
fn wait_until_read(dir: &Path, length: u64, child: &mut Child) -> anyhow::Result<Checkpoint> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        anyhow::ensure!(child.try_wait()?.is_none(), "the live run ended early");
        anyhow::ensure!(Instant::now() < deadline, "the live run never caught up");
        if let Ok(checkpoints) = CheckpointDir::open(dir)
            && let Ok(newest) = checkpoints.newest()
            && let Some((_, content)) = newest.valid
            && let Ok(checkpoint) = Checkpoint::decode(&content)
            && checkpoint
                .sources
                .iter()
                .all(|s| matches!(s.position, Position::File { offset, .. } if offset == length))
        {
            return Ok(checkpoint);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let records = env_or("BENCH_RECORDS", 2_000_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let modules = root.join("target/flumen");
    anyhow::ensure!(
        modules.join("dedupe.wasm").exists(),
        "build the modules first: make udfs (make bench-checkpoint does)"
    );
    let orders: PathBuf = dir.join(format!("orders-{records}.jsonl"));
    if !orders.exists() {
        let status = flumen(&root)
            .args(["gen", "orders", "--count", &records.to_string()])
            .args(["--seed", "7", "--out"])
            .arg(&orders)
            .status()?;
        anyhow::ensure!(status.success(), "flumen gen failed");
    }
    // The reference pipeline with its modules found from anywhere, with and without checkpoints.
    // Deduplication ids kept 30 days of event time instead of one, so that the state holds one
    // per order of the whole input (a generated day holds about 600 k).
    let reference = std::fs::read_to_string(root.join("pipelines/orders.toml"))?
        .replace("../target/flumen", &modules.display().to_string())
        .replace("state_ttl_ms = 86_400_000", "state_ttl_ms = 2_592_000_000");
    anyhow::ensure!(
        reference.contains("2_592_000_000"),
        "dedupe's time-to-live moved"
    );
    let with = dir.join("checkpoint-with.toml");
    let without = dir.join("checkpoint-without.toml");
    std::fs::write(&with, &reference)?;
    let plain: String = reference
        .lines()
        .filter(|l| !l.starts_with("checkpoint = "))
        .map(|l| format!("{l}\n"))
        .collect();
    anyhow::ensure!(
        plain != reference,
        "pipelines/orders.toml takes no checkpoints"
    );
    std::fs::write(&without, plain)?;
    let out = dir.join("checkpoint-out");
    let envs = [
        ("ORDERS", orders.display().to_string()),
        ("OUT_DIR", out.display().to_string()),
        ("CHECKPOINT_INTERVAL_MS", "1000".to_string()),
    ];
    println!("checkpoints of the reference pipeline: {records} orders, {rounds} rounds");

    let mut ratios = Vec::new();
    let (mut rates_with, mut rates_without) = (Vec::new(), Vec::new());
    let (mut rss_with, mut rss_without) = (0u64, 0u64);
    let mut pauses = Value::Null;
    for round in 1..=rounds {
        let plain = run(&root, &without, &envs)?;
        let checkpointed = run(&root, &with, &envs)?;
        let rate = |s: &Value| s["records_per_s"].as_f64().unwrap_or(0.0);
        let rss = |s: &Value| s["peak_rss_bytes"].as_u64().unwrap_or(0);
        println!(
            "  round {round}: without {:>10.0} orders/s, with 1 s checkpoints {:>10.0} orders/s \
             ({} written, pause p99 {:.1} ms)",
            rate(&plain),
            rate(&checkpointed),
            checkpointed["checkpoints"]["written"],
            checkpointed["checkpoints"]["pause_ms"]["p99"]
                .as_f64()
                .unwrap_or(0.0)
        );
        ratios.push(rate(&checkpointed) / rate(&plain));
        rates_with.push(rate(&checkpointed));
        rates_without.push(rate(&plain));
        rss_with = rss_with.max(rss(&checkpointed));
        rss_without = rss_without.max(rss(&plain));
        pauses = checkpointed["checkpoints"].clone();
    }

    // A live run over the whole file, stopped once it has read it: the checkpoint then holds
    // the deduplication ids of every order; started again, it recovers them.
    let live_out = dir.join("checkpoint-live");
    let _ = std::fs::remove_dir_all(&live_out);
    let live_envs = [
        ("ORDERS", orders.display().to_string()),
        ("OUT_DIR", live_out.display().to_string()),
        ("CHECKPOINT_INTERVAL_MS", "1000".to_string()),
        ("FOLLOW", "true".to_string()),
    ];
    let summary = dir.join("checkpoint-live-summary.json");
    let start = |log: &str| -> anyhow::Result<Child> {
        Ok(flumen(&root)
            .arg("run")
            .arg(&with)
            .arg("--summary-json")
            .arg(&summary)
            .envs(live_envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(std::fs::File::create(dir.join(log))?)
            .spawn()?)
    };
    let length = std::fs::metadata(&orders)?.len();
    let mut live = start("checkpoint-live-1.log")?;
    let caught_up = wait_until_read(&live_out.join("checkpoints"), length, &mut live)?;
    terminate(&mut live)?;
    let live_summary: Value = serde_json::from_slice(&std::fs::read(&summary)?)?;
    let bytes = live_summary["checkpoints"]["last_bytes"]
        .as_u64()
        .unwrap_or(0);
    let keys = caught_up
        .stages
        .iter()
        .find(|s| s.name == "dedupe")
        .map_or(0, |s| s.entries());
    let mut again = start("checkpoint-live-2.log")?;
    let log = dir.join("checkpoint-live-2.log");
    let deadline = Instant::now() + Duration::from_secs(600);
    let recovery_ms = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("resumed from checkpoint")) {
            let ms: f64 = line
                .rsplit("restored in ")
                .next()
                .and_then(|rest| rest.trim_end_matches(" ms").trim().parse().ok())
                .unwrap_or(f64::NAN);
            break ms;
        }
        anyhow::ensure!(again.try_wait()?.is_none(), "the resumed run ended: {text}");
        anyhow::ensure!(Instant::now() < deadline, "the run never resumed: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    terminate(&mut again)?;

    let (with_rate, without_rate) = (median(rates_with), median(rates_without));
    let ratio = median(ratios);
    let pause = |q: &str| pauses["pause_ms"][q].as_f64().unwrap_or(0.0);
    println!(
        "\nthroughput: {without_rate:.0} orders/s without, {with_rate:.0} with 1 s checkpoints: \
         ratio {ratio:.2} (target ≥ 0.90)"
    );
    println!(
        "pause while the state grows to {keys} deduplication ids: p50 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms (target p99 < 50 ms)",
        pause("p50"),
        pause("p99"),
        pause("max")
    );
    println!(
        "checkpoint with {keys} deduplication ids: {:.1} MiB; recovered in {recovery_ms:.0} ms \
         (target < 1000 ms)",
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "peak RSS: {} MiB without, {} MiB with checkpoints",
        rss_without >> 20,
        rss_with >> 20
    );
    let report = json!({
        "records": records,
        "records_per_s_without": without_rate,
        "records_per_s_with": with_rate,
        "ratio": ratio,
        "checkpoints": pauses,
        "dedupe_keys": keys,
        "checkpoint_bytes": bytes,
        "recovery_ms": recovery_ms,
        "peak_rss_bytes_without": rss_without,
        "peak_rss_bytes_with": rss_with,
    });
    let path = root.join("target/bench-checkpoint.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
