//! Checkpoints: the reference pipeline killed with SIGKILL at any moment (in the middle of a
//! checkpoint write too) and started again with the same command, at one and two partitions,
//! ends with every sink exactly as the spec computes it — nothing missing, nothing twice; a live
//! run stopped (or killed right after a hot swap) and resumed equals one that never stopped;
//! damaged checkpoints are passed over, foreign ones refused, and a folder that cannot be
//! written never stops the run.

use crate::live::{pipeline_copy, write_atomically};
use crate::orders_pipeline::{SINKS, input, oracle, sink, with_orders};
use crate::support::{
    Live, Scenario, append, assert_accounted, assert_same_set, checkpoint_ids, flumen, line_count,
    modules, text, wait_until,
};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The checkpoint folder `pipelines/orders.toml` uses for `out`.
fn checkpoints(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The ids of the checkpoints in `out`'s folder, oldest first.
fn ids(out: &Path) -> Vec<u64> {
    checkpoint_ids(&checkpoints(out))
}

fn newest(out: &Path) -> u64 {
    ids(out).last().copied().unwrap_or(0)
}

fn checkpoint_file(out: &Path, id: u64) -> PathBuf {
    checkpoints(out).join(format!("checkpoint-{id:020}.ckpt"))
}

/// `flumen run PIPELINE` in the background, checkpointing every 100 ms unless `envs` say
/// otherwise; a live run (`FOLLOW` in `envs`) watches its files.
fn start(
    scenario: &Scenario,
    log: &str,
    pipeline: &Path,
    orders: &Path,
    out: &Path,
    envs: &[(&str, &str)],
) -> Live {
    let mut all: Vec<(&str, &OsStr)> = vec![
        ("ORDERS", orders.as_os_str()),
        ("OUT_DIR", out.as_os_str()),
        ("CHECKPOINT_INTERVAL_MS", "100".as_ref()),
    ];
    all.extend(envs.iter().map(|(k, v)| (*k, v.as_ref())));
    let watch = envs.iter().any(|(k, _)| *k == "FOLLOW");
    let args = [pipeline.to_str().unwrap(), "--watch"];
    Live::start(&args[..1 + usize::from(watch)], &all, scenario.path(log))
}

/// What a run killed at a checkpoint is started with: it follows its input, so it never ends by
/// itself before the checkpoint it is killed at, however fast the machine.
const UNTIL_KILLED: &[(&str, &str)] = &[("FOLLOW", "true")];

/// Kills `live` once the checkpoint folder of `out` holds one numbered `id` or later (or the
/// run is over).
fn kill_at_checkpoint(mut live: Live, out: &Path, id: u64) {
    live.wait_unless_exited(&format!("checkpoint {id}"), || newest(out) >= id);
    live.kill();
}

/// Every sink as the spec computes it from `input`, with nothing twice.
fn assert_exact(out: &Path, input: &str) {
    let expected = oracle(input);
    for name in SINKS {
        assert_same_set(name, sink(out, name), expected[name].clone());
    }
}

/// The reference pipeline to the end, its log.
fn finish(scenario: &Scenario, orders: &Path, out: &Path, parallelism: &str) -> String {
    let summary = scenario.path("summary.json");
    // Each run writes its own (a finished run's too).
    let _ = std::fs::remove_file(&summary);
    let output = flumen()
        .args(["run", "pipelines/orders.toml", "--summary-json"])
        .arg(&summary)
        .env("ORDERS", orders)
        .env("OUT_DIR", out)
        .env("FLUMEN_PARALLELISM", parallelism)
        .env("FLUMEN_LOG", "info")
        .output()
        .unwrap();
    let log = text(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert_accounted(&serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap());
    log
}

#[test]
fn killed_at_any_moment_a_run_resumes_to_exactly_the_output_of_one_never_killed() {
    // Enough orders that the runs below are killed while they still read, on this VM at its
    // fastest (≈ 600 k orders/s).
    let (scenario, input, orders) = with_orders("600000", "31");
    let out = scenario.path("out");
    let pipeline = Path::new("pipelines/orders.toml");

    // One partition, killed once its third checkpoint is written.
    let live = start(&scenario, "1.log", pipeline, &orders, &out, UNTIL_KILLED);
    kill_at_checkpoint(live, &out, 3);
    let first = newest(&out);
    assert!(first >= 3, "{:?}", ids(&out));

    // Two partitions, killed in the middle of writing a checkpoint: its temporary file is
    // written, not yet renamed.
    let live = start(
        &scenario,
        "2.log",
        pipeline,
        &orders,
        &out,
        &[
            ("FLUMEN_PARALLELISM", "2"),
            ("FLUMEN_CHECKPOINT_WRITE_PAUSE_MS", "60000"),
        ],
    );
    live.wait_for_log("pausing inside the write", 1);
    assert!(
        live.log().contains("resumed from checkpoint"),
        "{}",
        live.log()
    );
    live.kill();
    let left: Vec<String> = std::fs::read_dir(checkpoints(&out))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(left.iter().any(|n| n.ends_with(".tmp")), "{left:?}");
    assert_eq!(
        newest(&out),
        first,
        "a write killed midway is not a checkpoint"
    );

    // Two partitions again, killed two checkpoints later.
    let live = start(
        &scenario,
        "3.log",
        pipeline,
        &orders,
        &out,
        &[("FLUMEN_PARALLELISM", "2"), UNTIL_KILLED[0]],
    );
    kill_at_checkpoint(live, &out, first + 2);

    // One partition, to the end: every sink exact.
    let log = finish(&scenario, &orders, &out, "1");
    assert!(log.contains("resumed from checkpoint"), "{log}");
    assert_exact(&out, &input);
    let listing = text(
        &flumen()
            .args(["checkpoint", "list"])
            .arg(checkpoints(&out))
            .output()
            .unwrap()
            .stdout,
    );
    assert!(listing.contains("run finished"), "{listing}");

    // Again: a finished run is not run twice, and its summary says so.
    let log = finish(&scenario, &orders, &out, "2");
    assert!(log.contains("nothing to do"), "{log}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scenario.path("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["records"], 0, "{summary}");
    let why = summary["nothing_to_do"].as_str().unwrap_or_default();
    assert!(why.contains("this run had finished"), "{summary}");
    assert_exact(&out, &input);
    // --fresh starts over, and ends the same.
    let output = flumen()
        .args(["run", "pipelines/orders.toml", "--fresh"])
        .env("ORDERS", &orders)
        .env("OUT_DIR", &out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_exact(&out, &input);
}

#[test]
fn no_checkpoints_runs_a_checkpointing_pipeline_without_any_and_from_its_start() {
    let (scenario, input, orders) = with_orders("5000", "3");
    let out = scenario.path("out");
    for _ in 0..2 {
        // Twice: a run without checkpoints leaves nothing to resume, so the second starts over.
        let output = flumen()
            .args(["run", "pipelines/orders.toml", "--no-checkpoints"])
            .env("ORDERS", &orders)
            .env("OUT_DIR", &out)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(!checkpoints(&out).exists(), "{:?}", ids(&out));
        assert_exact(&out, &input);
    }
    // A sink that delivers exactly once needs them: refused before anything runs.
    let pipeline = scenario.pipeline(
        r#"
[pipeline]
checkpoint = { dir = "{dir}/checkpoints" }
[sources.orders]
type = "generator"
count = 10
[operators.validate]
module = "{modules}/validate.wasm"
inputs = ["orders"]
[sinks.out]
type = "kafka"
brokers = "127.0.0.1:9"
topic = "valid"
inputs = ["validate"]
"#,
    );
    let output = flumen()
        .arg("run")
        .arg(&pipeline)
        .arg("--no-checkpoints")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("sink `out` delivers exactly once, which needs checkpoints"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn damaged_checkpoints_are_passed_over_and_foreign_ones_refused() {
    let (scenario, input, orders) = with_orders("60000", "32");
    let out = scenario.path("out");
    let pipeline = Path::new("pipelines/orders.toml");
    let live = start(&scenario, "1.log", pipeline, &orders, &out, UNTIL_KILLED);
    kill_at_checkpoint(live, &out, 3);

    let inspect = text(
        &flumen()
            .args(["checkpoint", "inspect"])
            .arg(checkpoints(&out))
            .output()
            .unwrap()
            .stdout,
    );
    for expected in [
        "of pipeline `orders`",
        "orders.jsonl at byte",
        "dedupe",
        "bytes committed",
    ] {
        assert!(inspect.contains(expected), "{expected:?} in {inspect}");
    }

    // Another input file, another pipeline, a state that no longer fits: refused with the
    // folder and the reason, and no output touched.
    let outputs = |out: &Path| -> Vec<Vec<u8>> {
        SINKS
            .iter()
            .map(|s| std::fs::read(out.join(format!("{s}.jsonl"))).unwrap_or_default())
            .collect()
    };
    let before = outputs(&out);
    let other = scenario.write("other.jsonl", input.replacen('1', "2", 1));
    let copy = pipeline_copy();
    let renamed = scenario.write(
        "renamed.toml",
        copy.replace("name = \"orders\"", "name = \"x\""),
    );
    let rekeyed = scenario.write(
        "rekeyed.toml",
        copy.replace("key_by = \"order_id\"", "key_by = \"user_id\""),
    );
    let reference = scenario.write("copy.toml", &copy);
    for (pipeline, orders, why) in [
        (
            &reference,
            &other,
            "is not the file this position was taken in",
        ),
        (
            &renamed,
            &orders,
            "checkpoint of the pipeline `orders`, not of `x`",
        ),
        (&rekeyed, &orders, "`key_by` changed"),
    ] {
        let output = flumen()
            .arg("run")
            .arg(pipeline)
            .env("ORDERS", orders)
            .env("OUT_DIR", &out)
            .output()
            .unwrap();
        let error = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{error}");
        for needed in [why, &checkpoints(&out).display().to_string(), "--fresh"] {
            assert!(error.contains(needed), "{needed:?} in {error}");
        }
        assert!(
            outputs(&out) == before,
            "a refused checkpoint changed the outputs"
        );
    }

    // The newest torn: the one before it is used; the newest altered: likewise.
    type Spoil = fn(&mut Vec<u8>);
    let damages: [(&str, Spoil); 2] = [
        ("torn", |bytes| bytes.truncate(bytes.len() / 2)),
        ("altered", |bytes| {
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x20;
        }),
    ];
    for (round, (damage, spoil)) in damages.into_iter().enumerate() {
        let [.., previous, last] = ids(&out)[..] else {
            panic!("two checkpoints expected: {:?}", ids(&out));
        };
        let mut bytes = std::fs::read(checkpoint_file(&out, last)).unwrap();
        spoil(&mut bytes);
        std::fs::write(checkpoint_file(&out, last), bytes).unwrap();
        // The first run is killed at a checkpoint, the second runs to the end.
        let envs = [UNTIL_KILLED, &[]][round];
        let live = start(
            &scenario,
            &format!("{damage}.log"),
            pipeline,
            &orders,
            &out,
            envs,
        );
        let resumed = format!("resumed from checkpoint {previous} ");
        live.wait_for_log(&resumed, 1);
        assert!(
            live.log().contains("passing over a damaged checkpoint"),
            "{}",
            live.log()
        );
        if round == 0 {
            kill_at_checkpoint(live, &out, last + 3);
        } else {
            assert!(live.wait().success());
        }
    }
    assert_exact(&out, &input);
}

#[test]
fn a_checkpoint_folder_that_cannot_be_written_is_a_loud_error_and_the_run_goes_on() {
    let (scenario, input, orders) = with_orders("20000", "33");
    let out = scenario.path("out");
    let folder = checkpoints(&out);
    std::fs::create_dir_all(&folder).unwrap();
    // Read-only, and (for root, whom permissions do not stop) every temporary file name taken.
    for id in 1..=500 {
        std::fs::create_dir(folder.join(format!(".checkpoint-{id:020}.tmp"))).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    let summary = scenario.path("summary.json");
    let output = flumen()
        .args(["run", "pipelines/orders.toml", "--summary-json"])
        .arg(&summary)
        .env("ORDERS", &orders)
        .env("OUT_DIR", &out)
        .env("CHECKPOINT_INTERVAL_MS", "20")
        .output()
        .unwrap();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = text(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("could not be written"), "{log}");
    assert!(log.contains("ERROR"), "{log}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    assert_eq!(summary["checkpoints"]["written"], 0, "{summary}");
    assert!(
        summary["checkpoints"]["failed"].as_u64() >= Some(1),
        "{summary}"
    );
    assert!(
        summary["checkpoints"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot write checkpoint")),
        "{summary}"
    );
    assert_exact(&out, &input);
}

/// Splits the lines of `input` into parts after `cuts` lines each, in event-time order: no
/// record is then late however a live source batches them, so window results do not depend on
/// when lines arrive.
fn in_time_order(input: &str, cuts: [usize; 2]) -> [String; 3] {
    let mut last = i64::MIN;
    let mut lines: Vec<(i64, &str)> = input
        .lines()
        .map(|line| {
            let ts = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["ts"].as_i64());
            last = ts.unwrap_or(last);
            (last, line)
        })
        .collect();
    lines.sort_by_key(|(ts, _)| *ts);
    let join = |part: &[(i64, &str)]| part.iter().map(|(_, l)| format!("{l}\n")).collect();
    let (a, rest) = lines.split_at(cuts[0]);
    let (b, c) = rest.split_at(cuts[1]);
    [join(a), join(b), join(c)]
}

#[test]
fn a_live_run_stopped_killed_after_a_swap_and_resumed_equals_one_that_never_stopped() {
    modules();
    let scenario = Scenario::new();
    let parts = in_time_order(&input(&scenario, "9000", "34"), [3000, 3000]);
    let accepted = |n: usize| oracle(&parts[..n].concat())["scores"].len();
    let changed = |toml: &str| toml.replace("flag_threshold = 50", "flag_threshold = 30");

    // Never stopped.
    let steady = scenario.path("steady");
    std::fs::create_dir_all(&steady).unwrap();
    let (orders, toml) = (steady.join("orders.jsonl"), steady.join("pipeline.toml"));
    std::fs::write(&orders, &parts[0]).unwrap();
    std::fs::write(&toml, pipeline_copy()).unwrap();
    let envs = [("FOLLOW", "true"), ("FLUMEN_PARALLELISM", "2")];
    let live = Live::start(
        &[toml.to_str().unwrap(), "--watch"],
        &[
            ("ORDERS", orders.as_os_str()),
            ("OUT_DIR", steady.join("out").as_os_str()),
            ("FOLLOW", "true".as_ref()),
        ],
        scenario.path("steady.log"),
    );
    let scores = steady.join("out/scores.jsonl");
    let reach = |live: &Live, n: usize| {
        let want = accepted(n);
        wait_until("scores", || line_count(&scores) >= want, || live.log());
    };
    reach(&live, 1);
    write_atomically(&toml, &changed(&pipeline_copy()));
    live.wait_for_log("swapped operator `score`", 1);
    append(&orders, &parts[1]);
    reach(&live, 2);
    append(&orders, &parts[2]);
    reach(&live, 3);
    assert!(live.terminate().success());

    // Stopped three ways: killed right after a swap, stopped with SIGTERM, and resumed each time.
    let stopped = scenario.path("stopped");
    std::fs::create_dir_all(&stopped).unwrap();
    let (orders, toml, out) = (
        stopped.join("orders.jsonl"),
        stopped.join("pipeline.toml"),
        stopped.join("out"),
    );
    std::fs::write(&orders, &parts[0]).unwrap();
    std::fs::write(&toml, pipeline_copy()).unwrap();
    let scores = out.join("scores.jsonl");
    let go = |log: &str| {
        let mut all: Vec<(&str, &str)> = envs.to_vec();
        all.push(("CHECKPOINT_INTERVAL_MS", "200"));
        start(&scenario, log, &toml, &orders, &out, &all[..])
    };
    let reach = |live: &Live, n: usize| {
        let want = accepted(n);
        wait_until("scores", || line_count(&scores) >= want, || live.log());
    };
    let live = go("stopped-1.log");
    reach(&live, 1);
    // One run at a time per checkpoint folder.
    let second = flumen()
        .arg("run")
        .arg(&toml)
        .env("ORDERS", &orders)
        .env("OUT_DIR", &out)
        .output()
        .unwrap();
    let error = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{error}");
    assert!(error.contains("in use by another flumen run"), "{error}");
    write_atomically(&toml, &changed(&pipeline_copy()));
    live.wait_for_log("swapped operator `score`", 1);
    // Once a checkpoint records the new version, a crash.
    let after_swap = newest(&out) + 2;
    kill_at_checkpoint(live, &out, after_swap);
    let live = go("stopped-2.log");
    live.wait_for_log("resumed from checkpoint", 1);
    append(&orders, &parts[1]);
    reach(&live, 2);
    assert!(live.terminate().success());
    let live = go("stopped-3.log");
    live.wait_for_log("resumed from checkpoint", 1);
    append(&orders, &parts[2]);
    reach(&live, 3);
    assert!(live.terminate().success());

    for name in SINKS {
        assert_same_set(name, sink(&out, name), sink(&steady.join("out"), name));
    }
    assert!(!sink(&out, "sales_per_sku").is_empty());
    assert!(!sink(&out, "sessions").is_empty());
    // The parameter change holds after the restarts: later orders flagged at 30.
    assert!(
        sink(&out, "scores")
            .iter()
            .any(|s| s["flagged"] == true && s["score"].as_i64().is_some_and(|v| v < 50))
    );
}
