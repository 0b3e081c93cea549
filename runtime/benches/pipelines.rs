//! `make bench`: the reference pipeline (JSON in, every stage and sink; without checkpoints on
//! every core, then on one thread, then with two partitions per keyed stage, then with its 1 s
//! checkpoints), the two peer jobs (in-memory orders into a stateless UDF or 1 s
//! windows) and the Nexmark queries q0, q1, q2, q5 and q7 (`pipelines/nexmark/`), each run by the
//! real `flumen` binary three times with Wasm modules and three times natively, alternating.
//! Prints records/s (median and best), the Wasm ÷ native ratio (median of the rounds' ratios),
//! each stage's busy time and the peak RSS, and writes `target/bench.json`.
//!
//! `BENCH_RECORDS` (default 2,000,000) orders for the reference pipeline, `BENCH_JOB_RECORDS`
//! (default 20,000,000) for each peer job, `BENCH_NEXMARK_EVENTS` (default 10,000,000) for each
//! Nexmark query, `BENCH_ROUNDS` (default 3).

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Nexmark queries `make bench` runs, each `pipelines/nexmark/QUERY.toml`.
const NEXMARK_QUERIES: [&str; 5] = ["q0", "q1", "q2", "q5", "q7"];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A job of `make bench`: its label, its key under `jobs` in the report, its pipeline,
/// environment and flags.
struct Job<'a> {
    label: String,
    key: String,
    pipeline: String,
    envs: &'a [(&'a str, String)],
    args: &'static [&'static str],
}

/// One run of `flumen run`; its summary JSON.
fn run(
    root: &Path,
    pipeline: &str,
    backend: &str,
    envs: &[(&str, String)],
    args: &[&str],
) -> anyhow::Result<Value> {
    let summary = root.join("target/bench/summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_flumen"))
        .current_dir(root)
        .args([
            "run",
            pipeline,
            "--fresh",
            "--backend",
            backend,
            "--summary-json",
        ])
        .arg(&summary)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("FLUMEN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "flumen run {pipeline} --backend {backend} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&std::fs::read(&summary)?)?)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs a job `rounds` times per backend, alternating, and sums it up.
fn job(
    root: &Path,
    name: &str,
    pipeline: &str,
    envs: &[(&str, String)],
    args: &[&str],
    rounds: u64,
) -> anyhow::Result<Value> {
    let mut runs: Vec<(String, Value)> = Vec::new();
    for round in 0..rounds {
        for backend in ["wasm", "native"] {
            let summary = run(root, pipeline, backend, envs, args)?;
            println!(
                "  {name:<10} {backend:<6} round {}: {:>12.0} records/s",
                round + 1,
                summary["records_per_s"].as_f64().unwrap_or(0.0)
            );
            runs.push((backend.to_string(), summary));
        }
    }
    let rates = |backend: &str| -> Vec<f64> {
        runs.iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, s)| s["records_per_s"].as_f64().unwrap_or(0.0))
            .collect()
    };
    let (wasm, native) = (median(rates("wasm")), median(rates("native")));
    // Each round runs Wasm then native back to back, so a slow spell of a shared machine mostly
    // hits both: the ratio is the median of the rounds' ratios, not of the medians.
    let ratio = median(
        rates("wasm")
            .iter()
            .zip(rates("native"))
            .map(|(w, n)| w / n)
            .collect(),
    );
    let best = |backend: &str| rates(backend).into_iter().fold(0.0, f64::max);
    let last_wasm = runs
        .iter()
        .rev()
        .find(|(b, _)| b == "wasm")
        .map(|(_, s)| s.clone())
        .unwrap_or_default();
    let peak = runs
        .iter()
        .filter_map(|(_, s)| s["peak_rss_bytes"].as_u64())
        .max()
        .unwrap_or(0);
    Ok(json!({
        "records": last_wasm["records"],
        "wasm_records_per_s": wasm,
        "native_records_per_s": native,
        "ratio": ratio,
        "wasm_best_records_per_s": best("wasm"),
        "native_best_records_per_s": best("native"),
        "peak_rss_bytes": peak,
        "stages": last_wasm["stages"],
    }))
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let records = env_or("BENCH_RECORDS", 2_000_000);
    let job_records = env_or("BENCH_JOB_RECORDS", 20_000_000);
    let nexmark_events = env_or("BENCH_NEXMARK_EVENTS", 10_000_000);
    let rounds = env_or("BENCH_ROUNDS", 3).max(1);
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    for module in ["validate", "bench_stateless", "bench_window", "nexmark_q7"] {
        let native = flumen::native_module_path(&root.join(format!("target/flumen/{module}.wasm")));
        anyhow::ensure!(
            native.exists(),
            "build the modules first: make udfs and flumen build --native (make bench does)"
        );
    }
    let orders: PathBuf = dir.join(format!("orders-{records}.jsonl"));
    if !orders.exists() {
        let status = Command::new(env!("CARGO_BIN_EXE_flumen"))
            .args([
                "gen",
                "orders",
                "--count",
                &records.to_string(),
                "--seed",
                "7",
                "--out",
            ])
            .arg(&orders)
            .status()?;
        anyhow::ensure!(status.success(), "flumen gen failed");
    }
    println!(
        "reference pipeline: {records} orders; peer jobs: {job_records} records; Nexmark: \
         {nexmark_events} events; {rounds} rounds"
    );
    let reference_env = vec![
        ("ORDERS", orders.display().to_string()),
        ("OUT_DIR", dir.join("out").display().to_string()),
    ];
    let jobs_env = vec![("BENCH_RECORDS", job_records.to_string())];
    let nexmark_env = vec![("NEXMARK_EVENTS", nexmark_events.to_string())];
    // The first job is the headline (its fields at the top of the report): the reference
    // pipeline without checkpoints, as every engine's throughput is quoted; then the same on
    // one thread (what one core does), with two partitions, and with the 1 s checkpoints
    // pipelines/orders.toml asks for.
    let reference = |label: &str, key: &str, args: &'static [&'static str]| Job {
        label: label.into(),
        key: key.into(),
        pipeline: "pipelines/orders.toml".into(),
        envs: &reference_env,
        args,
    };
    let mut jobs = vec![
        reference("reference", "", &["--no-checkpoints"]),
        reference(
            "1 thread",
            "reference_one_thread",
            &["--no-checkpoints", "--threads", "1"],
        ),
        reference(
            "par. 2",
            "reference_parallelism_2",
            &["--no-checkpoints", "--parallelism", "2"],
        ),
        reference("ckpt 1 s", "reference_checkpoints_1s", &[]),
    ];
    for name in ["stateless", "window"] {
        jobs.push(Job {
            label: name.into(),
            key: name.into(),
            pipeline: format!("pipelines/bench-{name}.toml"),
            envs: &jobs_env,
            args: &[],
        });
    }
    for query in NEXMARK_QUERIES {
        jobs.push(Job {
            label: query.into(),
            key: format!("nexmark_{query}"),
            pipeline: format!("pipelines/nexmark/{query}.toml"),
            envs: &nexmark_env,
            args: &[],
        });
    }
    let mut results = Vec::new();
    for Job {
        label,
        key,
        pipeline,
        envs,
        args,
    } in jobs
    {
        let result = job(&root, &label, &pipeline, envs, args, rounds)?;
        results.push((label, key, result));
    }

    println!(
        "\n{:<10} {:>14} {:>14} {:>7} {:>14} {:>10}",
        "job", "wasm rec/s", "native rec/s", "ratio", "wasm best", "peak RSS"
    );
    for (label, _, result) in &results {
        println!(
            "{label:<10} {:>14.0} {:>14.0} {:>7.2} {:>14.0} {:>7} MiB",
            result["wasm_records_per_s"].as_f64().unwrap_or(0.0),
            result["native_records_per_s"].as_f64().unwrap_or(0.0),
            result["ratio"].as_f64().unwrap_or(0.0),
            result["wasm_best_records_per_s"].as_f64().unwrap_or(0.0),
            result["peak_rss_bytes"].as_u64().unwrap_or(0) >> 20
        );
    }
    let mut results = results.into_iter();
    let Some((_, _, mut report)) = results.next() else {
        anyhow::bail!("no jobs ran");
    };
    println!("\nreference pipeline, busy time per stage (wasm):");
    if let Some(stages) = report["stages"].as_object() {
        for (stage, s) in stages {
            println!(
                "  {stage:<18} {:>8.3} s",
                s["busy_s"].as_f64().unwrap_or(0.0)
            );
        }
    }
    report["jobs"] = json!({});
    for (_, key, result) in results {
        report["jobs"][key] = result;
    }
    let path = root.join("target/bench.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
