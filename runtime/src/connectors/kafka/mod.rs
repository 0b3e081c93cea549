//! Kafka topics in ([`KafkaSource`]) and out ([`KafkaSink`]), through librdkafka (`rdkafka`,
//! built from its bundled source).
//!
//! Exactly once without Kafka transactions — deterministic replay with offset reconciliation:
//! a source's offsets live in flumen's checkpoints (and are committed to its consumer group after
//! each one, for the lag tools); whatever timing decided about its reads is journaled
//! ([`journal`]) and synced before any output it leads to is produced; a sink is the only writer
//! of its topic and records each partition's end offset in every checkpoint. After a crash the
//! rerun replays the journal from the checkpoint, so it regenerates the same outputs in the same
//! order, and each sink skips as many as its partitions gained since the checkpoint — the ones
//! the crashed run had already written. ARCHITECTURE.md has the argument and its limits.

mod journal;
mod sink;
mod source;

pub use journal::At;
pub use sink::KafkaSink;
pub use source::KafkaSource;

use super::Options;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use std::time::Duration;

/// How long a Kafka client waits on the brokers by default before it gives up with an error.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The options of a Kafka source, besides those of every source.
pub(super) const SOURCE_OPTIONS: &[&str] = &[
    "brokers",
    "topic",
    "group",
    "start_at",
    "stop_at",
    "idle_timeout_ms",
    "key_field",
    "timestamp_field",
    "timeout_ms",
];

/// The options of a Kafka sink, besides those of every sink.
pub(super) const SINK_OPTIONS: &[&str] = &[
    "brokers",
    "topic",
    "key",
    "partitions",
    "delivery",
    "timeout_ms",
];

/// What a Kafka source reads, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaInput {
    /// The bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topics read (every partition of each).
    pub topics: Vec<String>,
    /// The consumer group its offsets are committed to after each checkpoint.
    pub group: String,
    /// Where a first run starts when the group has no committed offset: the earliest record
    /// (`false`) or the end (`true`).
    pub start_latest: bool,
    /// Whether to read only up to the end offsets seen at the start, then end like a file.
    pub stop_at_end: bool,
    /// A partition with nothing to read for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
    /// Add the record's key (UTF-8) to the JSON object as this field.
    pub key_field: Option<String>,
    /// Add the record's timestamp (ms since the epoch) to the JSON object as this field.
    pub timestamp_field: Option<String>,
    /// The longest to wait on the brokers before giving up with an error.
    pub timeout: Duration,
}

/// Where a Kafka sink writes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaOutput {
    /// The bootstrap brokers.
    pub brokers: String,
    /// The topic (created with `partitions` partitions if missing).
    pub topic: String,
    /// The top-level field of each value that is its record key (and picks its partition).
    pub key: Option<String>,
    /// Partitions of the topic if flumen creates it.
    pub partitions: i32,
    /// Exactly once (the default: needs checkpoints), or at least once.
    pub exactly_once: bool,
    /// The longest to wait on the brokers before giving up with an error.
    pub timeout: Duration,
}

/// The brokers, required and not blank.
fn brokers(options: &mut dyn Options, what: &str) -> Option<String> {
    match options.string("brokers") {
        Some(b) if !b.trim().is_empty() => Some(b.trim().to_string()),
        Some(_) => {
            options.problem("brokers", "the brokers are `host:port`, not empty".into());
            None
        }
        None => {
            options.problem("type", format!("a kafka {what} needs `brokers`"));
            None
        }
    }
}

/// A topic name as Kafka takes it.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn topics(options: &mut dyn Options, what: &str) -> Option<Vec<String>> {
    let Some(value) = options.string("topic") else {
        options.problem("type", format!("a kafka {what} needs `topic`"));
        return None;
    };
    let topics: Vec<String> = value.split(',').map(|t| t.trim().to_string()).collect();
    if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
        options.problem(
            "topic",
            format!("\"{bad}\" is not a topic name (1 to 249 of letters, digits, `.`, `_`, `-`)"),
        );
        return None;
    }
    Some(topics)
}

fn timeout(options: &mut dyn Options) -> Duration {
    Duration::from_millis(options.positive("timeout_ms", DEFAULT_TIMEOUT_MS, 3_600_000))
}

/// A Kafka source's kind, from its options.
pub(super) fn source_kind(options: &mut dyn Options) -> Option<super::SourceKind> {
    let brokers = brokers(options, "source");
    let topics = topics(options, "source");
    let start_latest = match options.string("start_at").as_deref() {
        None | Some("earliest") => false,
        Some("latest") => true,
        Some(other) => {
            options.problem(
                "start_at",
                format!("\"{other}\" is not a start; expected \"earliest\" or \"latest\""),
            );
            false
        }
    };
    let stop_at_end = match options.string("stop_at").as_deref() {
        None | Some("never") => false,
        Some("end") => true,
        Some(other) => {
            options.problem(
                "stop_at",
                format!("\"{other}\" is not a stop; expected \"end\" or \"never\""),
            );
            false
        }
    };
    let idle_timeout = options
        .integer("idle_timeout_ms")
        .is_some()
        .then(|| Duration::from_millis(options.positive("idle_timeout_ms", 1, 86_400_000)));
    let key_field = options.string("key_field");
    let timestamp_field = options.string("timestamp_field");
    let timeout = timeout(options);
    let (brokers, topics) = (brokers?, topics?);
    let group = options
        .string("group")
        .unwrap_or_else(|| format!("flumen-{}", topics.join("-")));
    Some(super::SourceKind::Kafka(Box::new(KafkaInput {
        brokers,
        topics,
        group,
        start_latest,
        stop_at_end,
        idle_timeout,
        key_field,
        timestamp_field,
        timeout,
    })))
}

/// A Kafka sink's kind, from its options.
pub(super) fn sink_kind(options: &mut dyn Options) -> Option<super::SinkKind> {
    let brokers = brokers(options, "sink");
    let topics = topics(options, "sink");
    if topics.as_ref().is_some_and(|t| t.len() > 1) {
        options.problem("topic", "a kafka sink writes one topic".into());
    }
    let key = options.string("key");
    let partitions = options.positive("partitions", 1, 10_000) as i32;
    let exactly_once = match options.string("delivery").as_deref() {
        None | Some("exactly_once") => true,
        Some("at_least_once") => false,
        Some(other) => {
            options.problem(
                "delivery",
                format!(
                    "\"{other}\" is not a delivery; expected \"exactly_once\" or \"at_least_once\""
                ),
            );
            true
        }
    };
    let timeout = timeout(options);
    let topic = topics?.into_iter().next()?;
    Some(super::SinkKind::Kafka(Box::new(KafkaOutput {
        brokers: brokers?,
        topic,
        key,
        partitions,
        exactly_once,
        timeout,
    })))
}

/// What every flumen Kafka client is configured with.
fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", "flumen")
        // Give up on a broker address that does not answer, and look it up again, quickly.
        .set("socket.connection.setup.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

/// Says what librdkafka reports about the brokers in flumen's log (a broker down, a connection
/// refused, retries) instead of librdkafka's own lines; repeated lines are held back to one per
/// [`LOG_EVERY`].
pub struct Context {
    brokers: String,
    last_said: std::sync::Mutex<Option<(String, std::time::Instant)>>,
    /// Offset commits asked for, and answered (either way).
    commits_sent: std::sync::atomic::AtomicU64,
    commits_done: std::sync::atomic::AtomicU64,
    /// Each partition's high watermark, from librdkafka's statistics (consumers).
    high: std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

/// A line about the brokers repeats at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Context {
    fn new(brokers: &str) -> Self {
        Context {
            brokers: brokers.to_string(),
            last_said: std::sync::Mutex::new(None),
            commits_sent: Default::default(),
            commits_done: Default::default(),
            high: Default::default(),
        }
    }

    /// The high watermark of `topic`'s `partition` at the last statistics, if known.
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let high = self.high.lock().ok()?;
        high.get(&(topic.to_string(), partition)).copied()
    }

    fn say(&self, what: String) {
        let Ok(mut last) = self.last_said.lock() else {
            return;
        };
        if let Some((said, at)) = &*last
            && *said == what
            && at.elapsed() < LOG_EVERY
        {
            return;
        }
        tracing::warn!("kafka brokers {}: {what}; retrying", self.brokers);
        *last = Some((what, std::time::Instant::now()));
    }
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, line: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                self.say(format!("{facility}: {line}"))
            }
            _ => tracing::debug!("librdkafka {facility}: {line}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.say(format!("{error}: {reason}"));
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Ok(mut high) = self.high.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            for (partition, p) in topic.partitions {
                // The internal "unassigned" partition is -1; offsets unknown yet are negative.
                if partition >= 0 && p.hi_offset >= 0 {
                    high.insert((name.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Context {
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        _: &rdkafka::TopicPartitionList,
    ) {
        if let Err(e) = result {
            self.say(format!("committing offsets: {e}"));
        }
        self.commits_done
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A client error, naming the brokers.
fn failed(brokers: &str, doing: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("kafka brokers {brokers}: cannot {doing}: {e}")
}

/// The partitions of `topic`, as the brokers say within `timeout`; `None` if it does not exist.
fn partitions_of<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Vec<i32>>> {
    let metadata = client.fetch_metadata(Some(topic), timeout).map_err(|e| {
        failed(
            brokers,
            &format!(
                "read the metadata of topic `{topic}` within {} ms",
                timeout.as_millis()
            ),
            e,
        )
    })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if let Some(error) = found.error() {
        if error == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART {
            return Ok(None);
        }
        return Err(failed(
            brokers,
            &format!("read topic `{topic}`"),
            format!("{error:?}"),
        ));
    }
    let mut partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    partitions.sort_unstable();
    Ok((!partitions.is_empty()).then_some(partitions))
}

/// Kafka's default partitioner's hash (murmur2, as the Java client computes it), so a keyed
/// record lands where any Kafka client would put it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `partitions` a record with `key` goes to (Kafka's default partitioner).
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_the_java_clients() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
        assert!((0..3).contains(&partition_for(b"SKU-0001", 3)));
    }

    #[test]
    fn topic_names_are_kafkas() {
        assert!(valid_topic("orders"));
        assert!(valid_topic("sales_per-sku.v2"));
        assert!(!valid_topic(""));
        assert!(!valid_topic(".."));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(&"x".repeat(250)));
    }
}
