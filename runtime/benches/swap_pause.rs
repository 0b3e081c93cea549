//! How long a hot swap holds a pipeline still, under full load: the reference pipeline runs on
//! generated orders as fast as it can while another thread keeps preparing new versions (the
//! `score` stage's threshold changes each time), and stops once the last is applied; each swap's
//! pause is measured inside `Pipeline::apply`. Prints p50, p99 and max, and the throughput
//! meanwhile.
//!
//! Run: `make udfs && cargo bench -p flumen --bench swap_pause` (`SWAPS` to change how many;
//! `ORDERS` bounds the input, which the swaps should outlast on any machine).

use flumen::executor::Pipeline;
use flumen::guest::Sandbox;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let swaps: usize = std::env::var("SWAPS")
        .ok()
        .and_then(|s| s.parse().ok())
        // Enough swaps that p99 is not simply the slowest one (one preemption of a shared
        // machine's thread would decide it).
        .unwrap_or(200);
    let orders: u64 = std::env::var("ORDERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let modules = root.join("target/flumen");
    anyhow::ensure!(
        modules.join("score.wasm").exists(),
        "build the modules first: make udfs"
    );
    let dir = tempfile::tempdir()?;
    let reference = std::fs::read_to_string(root.join("pipelines/orders.toml"))?
        .replace("../target/flumen", &modules.display().to_string())
        .replace(
            "type = \"file\"\npath = \"${ORDERS:-pipelines/sample/orders.jsonl}\"\nfollow = ${FOLLOW:-false}",
            &format!("type = \"generator\"\ncount = {orders}\nseed = 1"),
        )
        .replace("${OUT_DIR:-out}", &dir.path().join("out").display().to_string());
    let path = dir.path().join("pipeline.toml");
    let version = move |threshold: usize| {
        reference.replace(
            "flag_threshold = 50",
            &format!("flag_threshold = {threshold}"),
        )
    };
    std::fs::write(&path, version(50))?;
    let version = Arc::new(version);

    let sandbox = Arc::new(Sandbox::new()?);
    let options = flumen::Options::default();
    let prepared = flumen::prepare(&path, &sandbox, options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut pipeline = Pipeline::build(prepared)?;
    let (link, reloads) = flumen::reload::link();
    let sender = link.versions;
    // The run stops once the last version is applied; the preparer stops if the run ends first
    // (versions it prepared meanwhile would hold their instances).
    let (stop, ended) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let preparer = {
        let (sandbox, path, version) = (sandbox.clone(), path.clone(), version.clone());
        let (stop, ended) = (stop.clone(), ended.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            for i in 0..swaps {
                std::thread::sleep(Duration::from_millis(40));
                if ended.load(Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&path, version(51 + i % 40))?;
                let next = flumen::prepare(&path, &sandbox, options)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if sender
                    .send(flumen::reload::Version::Ready(Box::new(next)))
                    .is_err()
                {
                    break;
                }
            }
            // The executor takes a version at its next round: give it the time, then stop.
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            Ok(())
        })
    };
    let started = Instant::now();
    let summary = pipeline.run(&stop, Some(&reloads));
    ended.store(true, Ordering::Relaxed);
    let summary = summary?;
    let elapsed = started.elapsed();
    preparer
        .join()
        .map_err(|_| anyhow::anyhow!("the preparer panicked"))??;

    let mut pauses: Vec<Duration> = pipeline.swap_pauses().to_vec();
    anyhow::ensure!(
        !pauses.is_empty(),
        "no swap happened before the run ended: raise ORDERS"
    );
    pauses.sort();
    let at = |q: f64| pauses[((pauses.len() - 1) as f64 * q).round() as usize];
    let read = summary.stages.first().map_or(0, |s| s.records_in);
    println!("swaps under load: {}", pauses.len());
    println!(
        "pause p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
    println!(
        "throughput meanwhile: {:.0} orders/s",
        read as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
