//! Connectors: where records enter a pipeline (sources) and leave it (sinks).
//!
//! Each kind lives in a file of its own with its options (the keys its table takes besides those
//! every source or sink takes), how they are read, and how it runs; this file is the registry that
//! maps a `type` to its kind, and dispatches what depends on the kind — opening, identity on
//! reload, the type and encoding of what a source emits. A new connector is a new file, a
//! variant of [`SourceKind`] or [`SinkKind`], and its lines in the tables below.
//!
//! - `batch`: [`SourceBatch`], the records a source reads in one go, with their keys and times;
//! - `file`: JSON Lines files in and out;
//! - `generator`: seeded orders (`generator`: JSON lines; `bench`: typed, in memory);
//! - `kafka`: Kafka topics in and out, exactly once (its module says how);
//! - `stdio`: standard output and the blackhole sink.

mod batch;
mod file;
pub mod generator;
pub mod kafka;
mod stdio;

pub use batch::{REJECTED_PREFIX, SourceBatch};
pub use file::{FileSink, FileSource, same_path};

use flumen_sdk::abi::Encoding;
use std::path::PathBuf;
use std::time::Duration;

/// Records per batch unless a source says otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// The longest record (a file's line) a source takes unless it says otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest a written record waits in a sink's buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The type name of what a JSON source produces: raw JSON text, which any operator can decode.
pub const JSON_TEXT: &str = "json";

/// A source: its settings and its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceConfig {
    /// Its name, unique among the stages.
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
    /// Records per batch, at most.
    pub batch_size: usize,
    /// The top-level integer field that holds each record's event time.
    pub event_time: Option<String>,
    /// Bounded out-of-orderness: the watermark trails the largest event time by this much.
    pub watermark_delay_ms: i64,
    /// The longest record (a file's line) taken; a longer one is a dead letter.
    pub max_record_bytes: usize,
    /// A record whose event time is further than this ahead of the newest seen so far is a dead
    /// letter (off when `None`).
    pub max_future_ms: Option<i64>,
}

/// What a source reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    /// JSON Lines from a file.
    File {
        /// The file.
        path: PathBuf,
        /// Whether to wait for more lines at its end (and follow rotation), instead of ending.
        follow: bool,
    },
    /// Seeded generated orders, the same as `flumen gen orders`.
    Generator {
        /// How many orders.
        count: u64,
        /// The seed: the same seed gives the same orders.
        seed: u64,
        /// Orders per second, at most (none: as fast as they are taken): a live demo input.
        rate: Option<u64>,
    },
    /// The benchmark's orders, made in memory (no JSON): typed `BenchOrder` records.
    Bench {
        /// How many orders.
        count: u64,
        /// The seed: the same seed gives the same orders.
        seed: u64,
    },
    /// The Nexmark benchmark's events, made in memory (no JSON): typed `Event` records of
    /// `nexmark_model` (people, auctions and bids, 1 : 3 : 46).
    Nexmark {
        /// How many events.
        count: u64,
        /// The seed: the same seed gives the same events.
        seed: u64,
    },
    /// JSON values from every partition of Kafka topics.
    Kafka(Box<kafka::KafkaInput>),
}

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// JSON Lines to a file (its folder is created).
    File {
        /// The file (created or truncated when the sink opens).
        path: PathBuf,
    },
    /// JSON Lines to standard output.
    Stdout,
    /// Counts and drops every record (benchmarks).
    Blackhole,
    /// JSON values to a Kafka topic.
    Kafka(Box<kafka::KafkaOutput>),
}

/// What a source's `next_batch` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// The batch holds at least one record.
    Batch,
    /// Nothing now; try again later (a followed file that has not grown).
    Idle,
    /// Nothing yet, but work was done (a long line skipped): call again soon.
    Busy,
    /// Nothing ever again.
    Finished,
}

/// A source of records.
pub trait Source {
    /// Appends up to one batch of records to `out` (already cleared).
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull>;

    /// Takes a reloaded configuration of the same input (see [`SourceKind::same_input`]): its
    /// tunables apply from the next batch on, and the source keeps its place.
    fn retune(&mut self, config: &SourceConfig);

    /// Where the source is in its input, between batches: what a checkpoint keeps to resume it
    /// exactly after the last record it handed out. Called only for a checkpoint.
    fn position(&mut self) -> std::io::Result<Position>;

    /// Resumes at `position` (one this source's input gave), before reading anything; a
    /// position of another input is refused.
    fn seek(&mut self, position: &Position) -> anyhow::Result<()>;

    /// Makes durable what the source recorded about its reads (a Kafka source's journal):
    /// called before any sink hands on what those reads led to.
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// Hears that the checkpoint holding `position` (one it gave) is durable.
    fn checkpointed(&mut self, _position: &Position) {}

    /// How far behind the end of its input the source is, if it can tell.
    fn lag(&mut self) -> Option<crate::telemetry::Lag> {
        None
    }
}

/// Where a source is in its input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Position {
    /// A file: the byte offset to read on from, and what identifies the file read.
    File {
        /// Bytes of the file already read.
        offset: u64,
        /// Whether the bytes from `offset` to the next line break are the rest of a line too
        /// long to take (already refused), to be skipped.
        skipping: bool,
        /// The file's device.
        device: u64,
        /// The file's inode.
        inode: u64,
        /// The file's size when the position was taken.
        size: u64,
        /// SHA-256 of the bytes read that identify the file: its first bytes and those just
        /// before `offset` (see [`file::fingerprint`]). A file that does not give the same
        /// fingerprint at `offset` is another file.
        fingerprint: [u8; 32],
    },
    /// A generated sequence: how many items were drawn from it.
    Sequence {
        /// Items drawn.
        drawn: u64,
    },
    /// Kafka topics: each partition's next offset, and where the decisions of the reads after
    /// this position are journaled.
    Kafka {
        /// Every partition read, in the source's split order.
        splits: Vec<KafkaSplit>,
        /// Where the journal of the reads after this position begins (with checkpoints,
        /// always).
        journal: Option<kafka::At>,
        /// The split whose turn it is next (round robin).
        turn: u32,
    },
}

impl Position {
    /// Kafka partitions' offsets for people: `orders/0@120 orders/1@98`.
    pub fn offsets(splits: &[KafkaSplit]) -> String {
        let each = splits.iter().map(|s| {
            let stop = s.stop.map(|stop| format!(" of {stop}")).unwrap_or_default();
            format!("{}/{}@{}{stop}", s.topic, s.partition, s.offset)
        });
        each.collect::<Vec<_>>().join(" ")
    }
}

/// One Kafka partition in a [`Position`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KafkaSplit {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to hand out.
    pub offset: i64,
    /// Where a bounded read ends.
    pub stop: Option<i64>,
}

/// A destination of JSON values, one per line. Writes are buffered; the executor calls
/// [`Sink::flush`] at least every [`FLUSH_INTERVAL`] and at the end, so files can be watched.
pub trait Sink: Send {
    /// Writes one JSON value.
    fn write(&mut self, value: &[u8]) -> std::io::Result<()>;
    /// Pushes buffered lines to their destination.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Hands everything written so far to its destination and says how long the output then
    /// is, where that means something (a file's length): what a checkpoint records as
    /// committed. Making it durable ([`Committed::make_durable`]) may happen on another thread.
    fn commit(&mut self) -> std::io::Result<Committed>;
    /// At the end of a run: everything written reaches its destination, or an error says why
    /// not (a Kafka producer's outstanding records).
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()
    }
}

/// What a sink had written when a checkpoint was taken.
pub struct Committed {
    /// Where its output stood (a file's length, a topic's end offsets), if it can go back there.
    pub at: Option<SinkPosition>,
    /// What makes that output durable, run on the checkpoint writer's thread before the
    /// checkpoint that records `at` is written (a file's sync, a producer's flush).
    pub durable: Option<Box<dyn FnOnce() -> std::io::Result<()> + Send>>,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed").field("at", &self.at).finish()
    }
}

/// Where a sink's output stood at a checkpoint: what resuming goes back to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SinkPosition {
    /// A file's length: what follows is cut off on resuming.
    Length(u64),
    /// A Kafka topic: per partition, the offset the sink's next record takes; and how many
    /// records it had written (the round robin of records without a key).
    Offsets {
        /// Per partition, in partition order.
        ends: Vec<i64>,
        /// Records written, over every partition.
        written: u64,
    },
}

impl std::fmt::Display for SinkPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SinkPosition::Length(n) => write!(f, "{n} bytes committed"),
            SinkPosition::Offsets { ends, written } => {
                write!(f, "{written} records committed, end offsets {ends:?}")
            }
        }
    }
}

impl Committed {
    /// Nothing to sync, no position: a sink that cannot take back what it wrote.
    pub fn nothing() -> Self {
        Committed {
            at: None,
            durable: None,
        }
    }

    /// Makes the committed output durable (see [`Committed::durable`]).
    pub fn make_durable(&mut self) -> std::io::Result<()> {
        match self.durable.take() {
            Some(durable) => durable(),
            None => Ok(()),
        }
    }
}

/// The options of one source or sink as the pipeline file writes them, read by its kind: each
/// problem is reported at the key it is about.
pub trait Options {
    /// The string at `key`, if present (a value of another type is reported).
    fn string(&mut self, key: &'static str) -> Option<String>;
    /// The boolean at `key`, if present.
    fn boolean(&mut self, key: &'static str) -> Option<bool>;
    /// The integer at `key`, if present.
    fn integer(&mut self, key: &'static str) -> Option<i64>;
    /// Reports a problem with the value at `key`.
    fn problem(&mut self, key: &'static str, message: String);

    /// The integer at `key` between 1 and `max`, or `default` (an out-of-range value is
    /// reported).
    fn positive(&mut self, key: &'static str, default: u64, max: u64) -> u64 {
        match self.integer(key) {
            None => default,
            Some(v) if v >= 1 && (v as u64) <= max => v as u64,
            Some(v) => {
                self.problem(key, format!("{v} is out of range; expected 1 to {max}"));
                default
            }
        }
    }
}

/// A source `type`: its options and how they make its kind.
struct SourceType {
    name: &'static str,
    options: &'static [&'static str],
    kind: fn(&mut dyn Options) -> Option<SourceKind>,
}

/// Every source type.
const SOURCE_TYPES: &[SourceType] = &[
    SourceType {
        name: "file",
        options: file::SOURCE_OPTIONS,
        kind: file::source_kind,
    },
    SourceType {
        name: "generator",
        options: generator::SOURCE_OPTIONS,
        kind: |options| generator::source_kind(options, false),
    },
    SourceType {
        name: "bench",
        options: generator::SOURCE_OPTIONS,
        kind: |options| generator::source_kind(options, true),
    },
    SourceType {
        name: "nexmark",
        options: generator::TYPED_OPTIONS,
        kind: generator::nexmark_kind,
    },
    SourceType {
        name: "kafka",
        options: kafka::SOURCE_OPTIONS,
        kind: kafka::source_kind,
    },
];

/// A sink `type`: its options and how they make its kind.
struct SinkType {
    name: &'static str,
    options: &'static [&'static str],
    kind: fn(&mut dyn Options) -> Option<SinkKind>,
}

/// Every sink type.
const SINK_TYPES: &[SinkType] = &[
    SinkType {
        name: "file",
        options: file::SINK_OPTIONS,
        kind: file::sink_kind,
    },
    SinkType {
        name: "stdout",
        options: &[],
        kind: |_| Some(SinkKind::Stdout),
    },
    SinkType {
        name: "blackhole",
        options: &[],
        kind: |_| Some(SinkKind::Blackhole),
    },
    SinkType {
        name: "kafka",
        options: kafka::SINK_OPTIONS,
        kind: kafka::sink_kind,
    },
];

/// The options a source of type `kind` takes besides the common ones (`None`: no such type).
pub fn source_options(kind: &str) -> Option<&'static [&'static str]> {
    SOURCE_TYPES
        .iter()
        .find(|t| t.name == kind)
        .map(|t| t.options)
}

/// The options a sink of type `kind` takes besides the common ones (`None`: no such type).
pub fn sink_options(kind: &str) -> Option<&'static [&'static str]> {
    SINK_TYPES
        .iter()
        .find(|t| t.name == kind)
        .map(|t| t.options)
}

/// The source types that take option `key`, for a message about a key given to another type.
pub fn source_types_with(key: &str) -> Vec<&'static str> {
    let types = SOURCE_TYPES.iter().filter(|t| t.options.contains(&key));
    types.map(|t| t.name).collect()
}

/// The sink types that take option `key`.
pub fn sink_types_with(key: &str) -> Vec<&'static str> {
    let types = SINK_TYPES.iter().filter(|t| t.options.contains(&key));
    types.map(|t| t.name).collect()
}

/// The kind of a source of type `kind`, read from its `options`.
pub fn source_kind(kind: &str, options: &mut dyn Options) -> Option<SourceKind> {
    let Some(found) = SOURCE_TYPES.iter().find(|t| t.name == kind) else {
        let known: Vec<String> = SOURCE_TYPES
            .iter()
            .map(|t| format!("\"{}\"", t.name))
            .collect();
        options.problem(
            "type",
            format!(
                "unknown source type \"{kind}\"; expected {}",
                or_list(&known)
            ),
        );
        return None;
    };
    (found.kind)(options)
}

/// The kind of a sink of type `kind`, read from its `options`.
pub fn sink_kind(kind: &str, options: &mut dyn Options) -> Option<SinkKind> {
    let Some(found) = SINK_TYPES.iter().find(|t| t.name == kind) else {
        let known: Vec<String> = SINK_TYPES
            .iter()
            .map(|t| format!("\"{}\"", t.name))
            .collect();
        options.problem(
            "type",
            format!("unknown sink type \"{kind}\"; expected {}", or_list(&known)),
        );
        return None;
    };
    file::jsonl_only(options);
    (found.kind)(options)
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [only] => only.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

impl SourceKind {
    /// Opens the source `config` describes; `journal` is a folder of its own where it may
    /// record its reads (with checkpoints on).
    pub fn open(
        config: &SourceConfig,
        journal: Option<PathBuf>,
    ) -> anyhow::Result<Box<dyn Source>> {
        Ok(match &config.kind {
            SourceKind::File { path, follow } => Box::new(
                FileSource::open(path.clone(), *follow, config.batch_size)?
                    .with_max_record_bytes(config.max_record_bytes),
            ),
            SourceKind::Generator { count, seed, rate } => {
                generator::open(*count, *seed, *rate, config)
            }
            SourceKind::Bench { count, seed } => generator::open_typed(*count, *seed, config),
            SourceKind::Nexmark { count, seed } => generator::open_nexmark(*count, *seed, config),
            SourceKind::Kafka(input) => Box::new(kafka::KafkaSource::open(input, config, journal)?),
        })
    }

    /// Whether two sources read the same input, so a reload keeps the running source (and its
    /// place in it) and only retunes it: the same file, or the same generated sequence.
    pub fn same_input(old: &SourceConfig, new: &SourceConfig) -> bool {
        match (&old.kind, &new.kind) {
            (SourceKind::File { path: a, .. }, SourceKind::File { path: b, .. }) => same_path(a, b),
            (SourceKind::Kafka(a), SourceKind::Kafka(b)) => {
                a.brokers == b.brokers && a.topics == b.topics && a.group == b.group
            }
            (
                SourceKind::Generator { count, seed, .. },
                SourceKind::Generator {
                    count: c, seed: s, ..
                },
            ) => (count, seed) == (c, s) && old.name == new.name,
            (a @ (SourceKind::Bench { .. } | SourceKind::Nexmark { .. }), b) => {
                a == b && old.name == new.name
            }
            _ => false,
        }
    }

    /// The type name and encoding of what the source emits: JSON text, decoded by the first
    /// operator into its input type, or (bench) typed records already in bincode.
    pub fn output(&self) -> (&'static str, Encoding) {
        match self {
            SourceKind::Bench { .. } => (generator::BENCH_ORDER, Encoding::Bincode),
            SourceKind::Nexmark { .. } => (generator::NEXMARK_EVENT, Encoding::Bincode),
            SourceKind::File { .. } | SourceKind::Generator { .. } | SourceKind::Kafka(_) => {
                (JSON_TEXT, Encoding::Json)
            }
        }
    }

    /// The shape of a typed source's records, so that a stage reading them is checked field by
    /// field (none for JSON, read by field name, and for the bench's hand-encoded orders).
    pub fn shape(&self) -> Option<flumen_sdk::abi::Shape> {
        match self {
            SourceKind::Nexmark { .. } => flumen_sdk::shape::of::<nexmark_model::Event>(),
            _ => None,
        }
    }
}

impl SinkKind {
    /// Opens (creating or truncating) the sink.
    pub fn open(&self) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match self {
            SinkKind::File { path } => Box::new(FileSink::create(path.clone())?),
            SinkKind::Stdout => Box::new(stdio::LineSink {
                out: std::io::BufWriter::new(std::io::stdout()),
            }),
            SinkKind::Blackhole => Box::new(stdio::Blackhole),
            SinkKind::Kafka(output) => Box::new(kafka::KafkaSink::open(output, None)?),
        })
    }

    /// Opens the sink to go on from a checkpoint that found its output at `committed`: a file
    /// is cut back to that length (what a crashed run wrote after the checkpoint is written
    /// again) and appended to; a sink without a position is opened as new.
    pub fn resume(&self, committed: Option<SinkPosition>) -> anyhow::Result<Box<dyn Sink>> {
        match (self, committed) {
            (SinkKind::File { path }, Some(SinkPosition::Length(length))) => {
                Ok(Box::new(FileSink::resume(path.clone(), length)?))
            }
            (SinkKind::Kafka(output), at) => Ok(Box::new(kafka::KafkaSink::open(output, at)?)),
            _ => self.open(),
        }
    }

    /// Whether two sinks (named `old_name` and `new_name`) write the same destination, so a
    /// reload keeps the open sink (renaming it, or changing its inputs, never truncates its file).
    pub fn same_output(&self, old_name: &str, new: &SinkKind, new_name: &str) -> bool {
        match (self, new) {
            (SinkKind::File { path: a }, SinkKind::File { path: b }) => same_path(a, b),
            (SinkKind::Stdout, SinkKind::Stdout) => true,
            (SinkKind::Blackhole, SinkKind::Blackhole) => old_name == new_name,
            (SinkKind::Kafka(a), SinkKind::Kafka(b)) => a == b,
            _ => false,
        }
    }

    /// Whether the sink writes lines someone reads, so every value must be one line of JSON
    /// (the blackhole reads nothing).
    pub fn writes_lines(&self) -> bool {
        !matches!(self, SinkKind::Blackhole)
    }

    /// The file the sink writes, if it writes one.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            SinkKind::File { path } => Some(path),
            SinkKind::Stdout | SinkKind::Blackhole | SinkKind::Kafka(_) => None,
        }
    }

    /// Whether the sink delivers exactly once by replay, which needs checkpoints and the
    /// sources' read journals, and a checkpoint before its first record.
    pub fn needs_replay(&self) -> bool {
        matches!(self, SinkKind::Kafka(output) if output.exactly_once)
    }
}

/// Whether `value` is one JSON document on one line: what a JSON Lines sink writes.
pub fn is_json_line(value: &[u8]) -> bool {
    // Skipping over a value checks its syntax, escapes and UTF-8 without building anything.
    memchr::memchr2(b'\n', b'\r', value).is_none()
        && serde_json::from_slice::<&serde_json::value::RawValue>(value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_single_line_json() {
        assert!(is_json_line(br#"{"a":[1,"x"]}"#));
        assert!(is_json_line(b"3"));
        assert!(!is_json_line(b"{\"a\":1}\n{\"forged\":true}"));
        assert!(!is_json_line(b"{\"a\":\n1}"));
        assert!(!is_json_line(b"not json"));
        assert!(!is_json_line(b"{\"a\":\"\xff\"}"));
        assert!(!is_json_line(b""));
    }

    #[test]
    fn every_type_is_listed_once_and_unknown_ones_are_named() {
        struct Nothing(Vec<String>);
        impl Options for Nothing {
            fn string(&mut self, _: &'static str) -> Option<String> {
                None
            }
            fn boolean(&mut self, _: &'static str) -> Option<bool> {
                None
            }
            fn integer(&mut self, _: &'static str) -> Option<i64> {
                None
            }
            fn problem(&mut self, key: &'static str, message: String) {
                self.0.push(format!("{key}: {message}"));
            }
        }
        let mut names: Vec<&str> = SOURCE_TYPES.iter().map(|t| t.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SOURCE_TYPES.len());
        let mut problems = Nothing(Vec::new());
        assert_eq!(sink_kind("printer", &mut problems), None);
        assert_eq!(
            problems.0,
            [
                "type: unknown sink type \"printer\"; expected \"file\", \"stdout\", \"blackhole\" \
                 or \"kafka\""
            ]
        );
        let mut problems = Nothing(Vec::new());
        assert_eq!(source_kind("file", &mut problems), None);
        assert_eq!(problems.0, ["type: a file source needs `path`"]);
        assert_eq!(
            source_types_with("count"),
            ["generator", "bench", "nexmark"]
        );
    }
}
