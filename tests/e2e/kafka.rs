//! Kafka: the reference pipeline from a topic to nine topics on a real broker (tansu 0.6, started
//! and stopped by each test), equal to the spec's outputs; killed with SIGKILL and restarted, still
//! every result exactly once; per-partition watermarks and idle partitions; a broker that goes
//! away for a while, and one that never answers; values that are not orders.
//!
//! Topics are read back with librdkafka directly, not with flumen.

use crate::orders_pipeline::{SINKS, input, oracle};
use crate::support::{
    Live, Scenario, assert_accounted, assert_same_set, checkpoint_ids, flumen,
    free_loopback_address, modules, text, wait_until, workspace,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A record to produce: its partition, key and value (`None`: a tombstone).
type Record<'a> = (i32, Option<&'a [u8]>, Option<&'a [u8]>);

/// The tansu binary `make tansu` builds (or `FLUMEN_TANSU`).
fn tansu() -> PathBuf {
    let path = std::env::var_os("FLUMEN_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/tools/tansu-0.6.0/bin/tansu"));
    assert!(
        path.is_file(),
        "the Kafka tests need tansu 0.6.0 at {}: `make tansu` builds it (`make test` does)",
        path.display()
    );
    path
}

/// A tansu broker on a free loopback port, its data (sqlite) in a folder of its own.
pub struct Broker {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub address: String,
}

impl Broker {
    pub fn start() -> Broker {
        let mut broker = Broker {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            address: free_loopback_address(),
        };
        broker.restart();
        broker
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.address)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts it (again), on the same port with the same data, and waits until it answers.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .unwrap();
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &self.url()])
            .args(["--advertised-listener-url", &self.url()])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let consumer: BaseConsumer = self.client().create().unwrap();
        wait_until(
            "the broker to answer",
            || {
                consumer
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok()
            },
            || self.log(),
        );
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.address);
        config
    }

    /// Creates `topic` with `partitions` partitions, with tansu's own command.
    pub fn create(&self, topic: &str, partitions: u32) {
        let output = Command::new(tansu())
            .args(["topic", "create", topic, "--partitions"])
            .arg(partitions.to_string())
            .args(["--broker", &self.url()])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output.stderr));
    }

    /// Produces `records` (partition, key, value — `None` a tombstone) in order.
    pub fn produce(&self, topic: &str, records: &[Record<'_>]) {
        let producer: ThreadedProducer<DefaultProducerContext> = self
            .client()
            .set("message.max.bytes", "4194304")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        for &(partition, key, value) in records {
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition);
            if let Some(key) = key {
                record = record.key(key);
            }
            if let Some(value) = value {
                record = record.payload(value);
            }
            producer.send(record).map_err(|(e, _)| e).unwrap();
        }
        producer.flush(TIMEOUT).unwrap();
    }

    /// Every record's value of every partition of `topic`, from its start to its end now.
    pub fn read(&self, topic: &str) -> Vec<Vec<u8>> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", "flumen-tests-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        let mut list = TopicPartitionList::new();
        let mut left = 0;
        for p in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT).unwrap();
            left += high - low;
            list.add_partition_offset(topic, p, Offset::Offset(low))
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        let mut values = Vec::new();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while left > 0 {
            assert!(std::time::Instant::now() < deadline, "reading {topic}");
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                values.push(message.payload().unwrap_or_default().to_vec());
                left -= 1;
            }
        }
        values
    }

    /// The JSON values of `topic`; of `dead_letter`, the `raw` of each (what the spec checks).
    pub fn values(&self, topic: &str) -> Vec<Value> {
        let values = self.read(topic).into_iter().map(|v| {
            serde_json::from_slice::<Value>(&v)
                .unwrap_or_else(|e| panic!("{topic}: {e}: {}", text(&v)))
        });
        match topic {
            "dead_letter" => values.map(|d| d["raw"].clone()).collect(),
            _ => values.collect(),
        }
    }

    /// The offsets group `group` has committed for each partition of `topic`.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<Option<i64>> {
        let consumer: BaseConsumer = self.client().set("group.id", group).create().unwrap();
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer.committed_offsets(list, TIMEOUT).unwrap();
        (0..partitions)
            .map(
                |p| match committed.find_partition(topic, p).unwrap().offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            )
            .collect()
    }

    /// How many records `topic` holds.
    pub fn count(&self, topic: &str) -> i64 {
        self.total(&[topic])
    }

    /// How many records `topics` hold together.
    pub fn total(&self, topics: &[&str]) -> i64 {
        let consumer: BaseConsumer = self.client().create().unwrap();
        topics.iter().map(|t| Self::records(&consumer, t)).sum()
    }

    fn records(consumer: &BaseConsumer, topic: &str) -> i64 {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), TIMEOUT) else {
            return 0;
        };
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p, TIMEOUT)
                    .unwrap_or((0, 0));
                high - low
            })
            .sum()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The topic each sink of `pipelines/orders-kafka.toml` writes: the spec's sink names.
const TOPICS: [&str; 9] = SINKS;

/// Loads `input`'s lines into a new one-partition topic `orders`, with `flumen kafka produce`.
fn load(broker: &Broker, scenario: &Scenario, input: &str) {
    let file = scenario.write("orders.jsonl", input);
    let output = flumen()
        .args([
            "kafka",
            "produce",
            "--brokers",
            &broker.address,
            "--topic",
            "orders",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
}

/// The environment of a bounded run of `pipelines/orders-kafka.toml` on `broker`.
fn bounded<'a>(broker: &'a Broker, out: &'a Path) -> Vec<(&'a str, &'a OsStr)> {
    vec![
        ("KAFKA_BROKERS", broker.address.as_ref()),
        ("STOP_AT", "end".as_ref()),
        ("OUT_DIR", out.as_os_str()),
        ("CHECKPOINT_INTERVAL_MS", "50".as_ref()),
    ]
}

/// A broker whose topic `orders` holds `count` generated orders (seed `seed`), the input's
/// text, and an output folder for the run.
fn loaded(count: &str, seed: &str) -> (Scenario, Broker, String, PathBuf) {
    modules();
    let scenario = Scenario::new();
    let broker = Broker::start();
    let input = input(&scenario, count, seed);
    load(&broker, &scenario, &input);
    let out = scenario.path("out");
    (scenario, broker, input, out)
}

/// A bounded run of `pipelines/orders-kafka.toml` on `broker` (with `args`), expected to
/// succeed; its log.
fn run_bounded(broker: &Broker, out: &Path, args: &[&OsStr]) -> String {
    let output = flumen()
        .args(["run", "pipelines/orders-kafka.toml"])
        .args(args)
        .envs(bounded(broker, out))
        .env("FLUMEN_LOG", "info,flumen::executor=debug")
        .output()
        .unwrap();
    let log = text(&output.stderr);
    assert!(output.status.success(), "{log}");
    log
}

/// Every output topic as the spec computes it from `input`, nothing twice.
fn assert_exact(broker: &Broker, input: &str) {
    let expected = oracle(input);
    for topic in TOPICS {
        assert_same_set(topic, broker.values(topic), expected[topic].clone());
    }
}

#[test]
fn the_reference_pipeline_on_kafka_writes_what_the_file_pipeline_writes() {
    let (scenario, broker, input, out) = loaded("12000", "41");
    let summary = scenario.path("summary.json");
    let log = run_bounded(
        &broker,
        &out,
        &["--summary-json".as_ref(), summary.as_os_str()],
    );
    // Its sinks replay to deliver exactly once, so no level runs a round behind (which would
    // interleave the dead letters of two levels differently from run to run).
    assert!(
        log.contains(", 0 rounds ran the last levels a round behind"),
        "{log}"
    );
    assert_accounted(&serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap());
    assert_exact(&broker, &input);

    // The file pipeline on the same lines writes the same records.
    let files = scenario.path("files");
    let output = flumen()
        .args(["run", "pipelines/orders.toml"])
        .env("ORDERS", scenario.path("orders.jsonl"))
        .env("OUT_DIR", &files)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    for topic in TOPICS {
        assert_same_set(
            topic,
            broker.values(topic),
            crate::orders_pipeline::sink(&files, topic),
        );
    }
    // Its offsets are committed to its consumer group, up to the end.
    let end = broker.count("orders");
    assert_eq!(broker.committed("flumen-orders", "orders", 1), [Some(end)]);
    // Run again, it has nothing to do.
    let log = run_bounded(&broker, &out, &[]);
    assert!(log.contains("nothing to do"), "{log}");
    assert_exact(&broker, &input);
}

#[test]
fn killed_with_sigkill_and_restarted_every_result_is_in_the_topics_exactly_once() {
    let (scenario, broker, input, out) = loaded("60000", "43");
    let envs = bounded(&broker, &out);

    // Killed three times: right after its first checkpoint (before any output, most likely),
    // then twice with results written past a checkpoint of that run.
    let mut envs = envs;
    envs.push(("CHECKPOINT_INTERVAL_MS", "300".as_ref()));
    for round in 0..3 {
        let before = newest(&out);
        let mut live = Live::start(
            &["pipelines/orders-kafka.toml"],
            &envs,
            scenario.path(&format!("{round}.log")),
        );
        live.wait_unless_exited("a checkpoint of this run", || newest(&out) > before);
        if round > 0 {
            // Once this run writes results (reading starts a while after its first
            // checkpoint)…
            let scores = broker.count("scores");
            live.wait_unless_exited("results of this run", || broker.count("scores") > scores);
            // Long enough for results past that checkpoint to reach the topics (sinks hand
            // theirs on every 100 ms), well short of the next checkpoint.
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            !live.exited(),
            "round {round} ended before it was killed:\n{}",
            live.log()
        );
        live.kill();
    }
    // (The last round may have been killed after its final checkpoint: then there is nothing
    // left to do.)
    let log = run_bounded(&broker, &out, &[]);
    assert!(
        log.contains("resumed from checkpoint") || log.contains("nothing to do"),
        "{log}"
    );
    // Some run found results of the one before it past its checkpoint, and skipped them.
    let logs: Vec<String> = (1..3)
        .map(|round| std::fs::read_to_string(scenario.path(&format!("{round}.log"))).unwrap())
        .chain([log.clone()])
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("the replay does not write them again")),
        "{logs:#?}"
    );
    assert_exact(&broker, &input);
    let end = broker.count("orders");
    assert_eq!(broker.committed("flumen-orders", "orders", 1), [Some(end)]);
}

/// Whether a run on `out` has written its first checkpoint.
fn live_started(out: &Path) -> bool {
    newest(out) > 0
}

/// The id of the newest checkpoint of a run on `out` (0: none).
fn newest(out: &Path) -> u64 {
    checkpoint_ids(&out.join("kafka-checkpoints"))
        .last()
        .copied()
        .unwrap_or(0)
}

/// A pipeline counting orders per sku in one-minute windows, from topic `clicks`.
fn windows_pipeline(scenario: &Scenario, broker: &Broker, idle: Option<u64>) -> PathBuf {
    let module = modules().join("sales_per_sku.wasm");
    let idle = idle
        .map(|ms| format!("idle_timeout_ms = {ms}"))
        .unwrap_or_default();
    scenario.pipeline(&format!(
        r#"
[pipeline]
name = "clicks"
dead_letter = "dead"
checkpoint = {{ dir = "{dir}", interval_ms = 100 }}

[sources.clicks]
type = "kafka"
brokers = "{brokers}"
topic = "clicks"
group = "clicks-{tag}"
event_time = "ts"
watermark_delay_ms = 0
{idle}

[operators.sales]
module = "{module}"
inputs = ["clicks"]
key_by = "sku"
window = {{ type = "tumbling", size_ms = 60000 }}

[sinks.windows]
type = "kafka"
brokers = "{brokers}"
topic = "windows-{tag}"
inputs = ["sales"]

[sinks.dead]
type = "kafka"
brokers = "{brokers}"
topic = "dead-{tag}"
"#,
        dir = scenario.path(&format!("ckpt-{}", idle.len())).display(),
        brokers = broker.address,
        tag = if idle.is_empty() { "held" } else { "idle" },
        module = module.display(),
    ))
}

fn order(id: i64, sku: &str, ts: i64) -> Vec<u8> {
    format!(
        r#"{{"order_id": {id}, "user_id": 1, "sku": "{sku}", "qty": 1, "price_cents": 100, "amount_cents": 100, "country": "FR", "ts": {ts}}}"#
    )
    .into_bytes()
}

#[test]
fn three_partitions_take_the_least_watermark_and_an_idle_one_stops_holding_it_back() {
    modules();
    let scenario = Scenario::new();
    let broker = Broker::start();
    broker.create("clicks", 3);
    // Partitions 0 and 1 move through the minutes and go on receiving orders while the run is
    // watched; partition 2 has one order at the start and then nothing: it holds time back at
    // its first second until it is called idle.
    let mut id = 0;
    let mut produced = [0i64; 3];
    let mut minute = 0;
    let mut more = |broker: &Broker, produced: &mut [i64; 3], minutes: i64| {
        let mut records = Vec::new();
        for _ in 0..minutes {
            for p in 0..2 {
                id += 1;
                records.push((p, order(id, "A", minute * 60_000 + i64::from(p))));
                produced[p as usize] += 1;
            }
            minute += 1;
        }
        let slices: Vec<Record<'_>> = records
            .iter()
            .map(|(p, v)| (*p, None, Some(v.as_slice())))
            .collect();
        broker.produce("clicks", &slices);
    };
    more(&broker, &mut produced, 10);
    broker.produce("clicks", &[(2, None, Some(&order(1000, "B", 1_000)))]);
    produced[2] += 1;

    for idle in [None, Some(300)] {
        let pipeline = windows_pipeline(&scenario, &broker, idle);
        let tag = if idle.is_some() { "idle" } else { "held" };
        let summary = scenario.path(&format!("{tag}.json"));
        let address = crate::support::free_loopback_address();
        let live = Live::start(
            &[
                pipeline.to_str().unwrap(),
                "--summary-json",
                summary.to_str().unwrap(),
                "--admin",
                &address,
            ],
            &[],
            scenario.path(&format!("{tag}.log")),
        );
        let windows = format!("windows-{tag}");
        let fired = || broker.count(&windows);
        match idle {
            // Held back by partition 2 (its watermark 1000), no window fires however far the
            // other two go.
            None => {
                for _ in 0..15 {
                    more(&broker, &mut produced, 1);
                    std::thread::sleep(Duration::from_millis(100));
                }
                assert_eq!(fired(), 0, "{}", live.log());
            }
            // Partition 2 idle after 300 ms: the minutes the other two have passed fire.
            Some(_) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while fired() < 10 {
                    assert!(std::time::Instant::now() < deadline, "{}", live.log());
                    more(&broker, &mut produced, 1);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        // Every record read (the group's committed offsets reach the ends), then stopped.
        let group = format!("clicks-{tag}");
        wait_until(
            "every record read",
            || {
                broker.committed(&group, "clicks", 3)
                    == produced.iter().map(|&n| Some(n)).collect::<Vec<_>>()
            },
            || live.log(),
        );
        // The source's lag in /metrics (high watermarks from librdkafka's statistics, every
        // second): nothing left behind once everything is read.
        wait_until(
            "the source's lag at 0 in /metrics",
            || {
                let (_, metrics) = crate::support::http(&address, "GET", "/metrics");
                metrics.contains("flumen_source_lag_offsets{source=\"clicks\"} 0\n")
            },
            || crate::support::http(&address, "GET", "/metrics").1,
        );
        assert!(live.terminate().success());
        let summary: Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_accounted(&summary);
        let total: i64 = produced.iter().sum();
        for stage in ["clicks", "sales"] {
            let read = summary["stages"][stage]["records_in"].as_i64();
            assert_eq!(read, Some(total), "{stage}: {summary}");
        }
    }
    // What fired while partition 2 was idle: its own early window, and the minutes of the
    // other two, two orders each.
    let fired = broker.values("windows-idle");
    assert!(
        fired
            .iter()
            .any(|w| w["sku"] == "B" && w["window_start"] == 0 && w["orders"] == 1),
        "{fired:?}"
    );
    let minutes = fired.iter().filter(|w| w["sku"] == "A");
    assert!(minutes.clone().count() >= 9, "{fired:?}");
    assert!(minutes.clone().all(|w| w["orders"] == 2), "{fired:?}");
}

#[test]
fn a_broker_away_for_seconds_loses_nothing_and_one_that_never_answers_is_an_error() {
    modules();
    let scenario = Scenario::new();
    let mut broker = Broker::start();
    let input = input(&scenario, "6000", "47");
    let lines: Vec<&str> = input.lines().collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    broker.create("orders", 1);
    let produce = |broker: &Broker, lines: &[&str]| {
        let records: Vec<Record<'_>> = lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (0, None, Some(l.as_bytes())))
            .collect();
        broker.produce("orders", &records);
    };
    produce(&broker, first);
    let out = scenario.path("out");
    let envs: Vec<(&str, &OsStr)> = vec![
        ("KAFKA_BROKERS", broker.address.as_ref()),
        ("OUT_DIR", out.as_os_str()),
        ("CHECKPOINT_INTERVAL_MS", "100".as_ref()),
    ];
    let live = Live::start(
        &["pipelines/orders-kafka.toml"],
        &envs,
        scenario.path("live.log"),
    );
    wait_until(
        "the first half's scores",
        || broker.count("scores") > 0 && live_started(&out),
        || live.log(),
    );
    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    produce(&broker, second);
    // Everything the whole input makes, but the windows still open (the run goes on).
    let scores = oracle(&input)["scores"].len() as i64;
    wait_until(
        "every score",
        || broker.count("scores") >= scores,
        || live.log(),
    );
    let log = live.log();
    assert!(live.terminate().success(), "{log}");
    assert!(
        log.contains(&format!("kafka brokers {}", broker.address)),
        "the log says nothing of the broker going away:\n{log}"
    );
    // Resumed to the end (bounded, from the checkpoint of the stop): what does not depend on
    // where a live run's batches fell (and so its watermarks) is exactly the spec's, and
    // nothing anywhere is written twice.
    run_bounded(&broker, &out, &[]);
    let expected = oracle(&input);
    for topic in [
        "rejected",
        "dead_letter",
        "out_of_stock",
        "alerts",
        "scores",
    ] {
        assert_same_set(topic, broker.values(topic), expected[topic].clone());
    }
    for topic in ["sales_per_sku", "trending", "sessions"] {
        let mut values: Vec<String> = broker.values(topic).iter().map(Value::to_string).collect();
        let all = values.len();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), all, "{topic} holds a record twice");
    }

    // Brokers that never answer: a clear error naming them, soon, not a hang.
    let nobody = free_loopback_address();
    let output = flumen()
        .args(["run", "pipelines/orders-kafka.toml"])
        .env("KAFKA_BROKERS", &nobody)
        .env("KAFKA_TIMEOUT_MS", "2000")
        .env("OUT_DIR", scenario.path("nobody"))
        .output()
        .unwrap();
    let error = text(&output.stderr);
    assert!(!output.status.success(), "{error}");
    assert!(
        error.contains(&format!("kafka brokers {nobody}")),
        "{error}"
    );
}

#[test]
fn values_that_are_not_orders_are_dead_letters_naming_where_they_were() {
    modules();
    let scenario = Scenario::new();
    let broker = Broker::start();
    broker.create("orders", 1);
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(1_100_000));
    let good = order(1, "SKU-0001", 1_700_000_000_000);
    let values: Vec<Option<&[u8]>> = vec![
        Some(b"not json"),
        Some(b"{\"bad\": \"\xff\xfe\"}"),
        Some(huge.as_bytes()),
        Some(b""),
        None,
        Some(&good),
    ];
    let records: Vec<_> = values.iter().map(|v| (0, None, *v)).collect();
    broker.produce("orders", &records);
    run_bounded(&broker, &scenario.path("out"), &[]);
    let dead: Vec<Value> = broker
        .read("dead_letter")
        .iter()
        .map(|v| serde_json::from_slice(v).unwrap())
        .collect();
    let errors: Vec<&str> = dead.iter().map(|d| d["error"].as_str().unwrap()).collect();
    assert_eq!(dead.len(), 5, "{errors:#?}");
    for (offset, what) in [
        (0, "is not JSON"),
        (1, "is not UTF-8"),
        (2, "longer than max_record_bytes"),
        (3, "empty value"),
        (4, "tombstone"),
    ] {
        assert!(
            errors
                .iter()
                .any(|e| e.contains(what) && e.contains(&format!("orders/0@{offset}"))),
            "no dead letter says {what:?} at orders/0@{offset}: {errors:#?}"
        );
    }
    assert_eq!(dead[0]["raw"], "not json");
    // The one order went on through the pipeline.
    assert_eq!(broker.count("scores"), 1);
}
