//! Sources: where records enter a pipeline. A source fills one [`SourceBatch`] at a time. JSON
//! Lines text travels as the record value, for the first operator to decode into its input type;
//! the source reads only the fields the pipeline needs from it (keys, event time). The bench
//! source makes typed records in memory, already in bincode.

use crate::config::{SourceConfig, SourceKind};
use crate::generator::{BenchGenerator, OrderGenerator};
use flumen_sdk::abi::OutputWriter;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

/// One batch being read: records in output-entry framing, each with one key per field in
/// `key_fields`, and the event times seen (by record index) for the watermark.
#[derive(Debug, Default)]
pub struct SourceBatch {
    pub out: OutputWriter,
    pub times: Vec<(u64, i64)>,
    /// Records refused at the source: why, and (a prefix of) what they were.
    pub rejected: Vec<(String, Vec<u8>)>,
    count: u64,
    key_fields: Vec<String>,
    event_time: Option<String>,
    found: Vec<Option<serde_json::Value>>,
    /// The far-future guard: the most a record's event time may be ahead of `newest`.
    max_future_ms: Option<i64>,
    /// The newest event time seen so far (kept up to date by [`Self::push_json`]).
    pub newest: Option<i64>,
}

/// How much of a refused record's text its dead letter keeps.
pub const REJECTED_PREFIX: usize = 256;

impl SourceBatch {
    /// An empty batch whose records carry keys `key_fields` and event time `event_time`.
    pub fn new(key_fields: Vec<String>, event_time: Option<String>) -> Self {
        SourceBatch {
            key_fields,
            event_time,
            ..SourceBatch::default()
        }
    }

    /// Guards against far-future event times: see [`crate::config::SourceConfig::max_future_ms`].
    pub fn with_max_future(mut self, max_future_ms: Option<i64>) -> Self {
        self.max_future_ms = max_future_ms;
        self
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.out.clear();
        self.times.clear();
        self.rejected.clear();
        self.count = 0;
    }

    /// Refuses a record: it becomes a dead letter of the source with `why` and the start of
    /// `raw`.
    pub fn reject(&mut self, why: String, raw: &[u8]) {
        let mut prefix = raw[..raw.len().min(REJECTED_PREFIX)].to_vec();
        if raw.len() > REJECTED_PREFIX {
            prefix.extend_from_slice("…".as_bytes());
        }
        self.rejected.push((why, prefix));
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a JSON Lines record, reading its keys and event time from the JSON. A line that
    /// is not an object, or lacks a field, gets empty keys and no event time: the first operator
    /// will send it to the dead letters.
    pub fn push_json(&mut self, line: &[u8]) {
        let wanted: Vec<&str> = self
            .key_fields
            .iter()
            .map(String::as_str)
            .chain(self.event_time.as_deref())
            .collect();
        self.found.clear();
        self.found.resize(wanted.len(), None);
        if !wanted.is_empty() {
            let mut deserializer = serde_json::Deserializer::from_slice(line);
            let _ = FieldPicker {
                wanted: &wanted,
                found: &mut self.found,
            }
            .deserialize(&mut deserializer);
        }
        let keys = self.key_fields.len();
        let ts = self
            .event_time
            .as_ref()
            .and_then(|_| self.found.get(keys)?.as_ref()?.as_i64());
        if let (Some(ts), Some(limit), Some(newest)) = (ts, self.max_future_ms, self.newest)
            && ts.saturating_sub(newest) > limit
        {
            self.reject(
                format!(
                    "event time {ts} is {} ms ahead of the newest seen ({newest}), more than \
                     max_future_ms = {limit}",
                    ts.saturating_sub(newest)
                ),
                line,
            );
            return;
        }
        if let Some(ts) = ts {
            self.newest = Some(self.newest.map_or(ts, |n| n.max(ts)));
        }
        let index = self.count;
        if let Some(ts) = ts {
            self.times.push((index, ts));
        }
        let mut entry = self
            .out
            .record(0, index as u32, ts.unwrap_or(0), keys as u8);
        for value in &self.found[..keys] {
            entry.key(|b| match value {
                Some(serde_json::Value::String(s)) => b.extend_from_slice(s.as_bytes()),
                Some(other) => b.extend_from_slice(other.to_string().as_bytes()),
                None => {}
            });
        }
        let _ = entry.value(|b| {
            b.extend_from_slice(line);
            Ok::<_, ()>(())
        });
        self.count += 1;
    }

    /// Appends a typed record: `field` gives each field's integer value by name.
    pub fn push_typed(&mut self, field: impl Fn(&str) -> Option<i64>, ts: i64, value: &[u8]) {
        let index = self.count;
        if self.event_time.is_some() {
            self.times.push((index, ts));
        }
        let mut entry = self
            .out
            .record(0, index as u32, ts, self.key_fields.len() as u8);
        for name in &self.key_fields {
            entry.key(|b| {
                if let Some(v) = field(name) {
                    b.extend_from_slice(v.to_string().as_bytes());
                }
            });
        }
        let _ = entry.value(|b| {
            b.extend_from_slice(value);
            Ok::<_, ()>(())
        });
        self.count += 1;
    }
}

/// Deserializes only the wanted top-level fields of a JSON object, skipping the rest unparsed.
struct FieldPicker<'a, 'b> {
    wanted: &'a [&'b str],
    found: &'a mut [Option<serde_json::Value>],
}

impl<'de> DeserializeSeed<'de> for FieldPicker<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldPicker<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.wanted.iter().position(|w| *w == key) {
                Some(i) => self.found[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// What a call to [`Source::next_batch`] produced.
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

    /// Takes a reloaded configuration of the same input (see [`same_input`]): its tunables
    /// apply from the next batch on, and the source keeps its place.
    fn retune(&mut self, config: &SourceConfig);
}

/// Whether two source configurations read the same input, so a reload keeps the running source
/// (and its place in it) and only retunes it: the same file, or the same generated sequence.
pub fn same_input(old: &SourceConfig, new: &SourceConfig) -> bool {
    match (&old.kind, &new.kind) {
        (SourceKind::File { path: a, .. }, SourceKind::File { path: b, .. }) => same_path(a, b),
        (a @ (SourceKind::Generator { .. } | SourceKind::Bench { .. }), b) => {
            a == b && old.name == new.name
        }
        _ => false,
    }
}

/// Whether two paths name the same file: compared absolute, and as files when both exist.
pub fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.into());
    if absolute(a) == absolute(b) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Opens the source `config` describes.
pub fn open(config: &SourceConfig) -> anyhow::Result<Box<dyn Source>> {
    Ok(match &config.kind {
        SourceKind::File { path, follow } => Box::new(
            FileSource::open(path.clone(), *follow, config.batch_size)?
                .with_max_record_bytes(config.max_record_bytes),
        ),
        SourceKind::Generator { count, seed } => Box::new(GeneratorSource {
            lines: OrderGenerator::new(*seed).take(*count as usize),
            batch_size: config.batch_size,
        }),
        SourceKind::Bench { count, seed } => Box::new(BenchSource {
            generator: BenchGenerator::new(*seed),
            left: *count,
            batch_size: config.batch_size,
            value: Vec::with_capacity(48),
        }),
    })
}

/// JSON Lines from a file: one record per non-blank line, the line (without its line break) as
/// the value. A line longer than `max_record_bytes` is a dead letter (with its first bytes) and
/// the rest of it is skipped without being kept; a followed file's unfinished last line is kept
/// until it ends, and only the new bytes are read while waiting.
pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    follow: bool,
    batch_size: usize,
    max_record_bytes: usize,
    /// The line being read (complete lines are taken at once; an unfinished one waits here).
    line: Vec<u8>,
    /// Whether the current line was too long: its bytes are dropped until its end.
    skipping: bool,
}

/// The most bytes one call reads, so a huge line (or `/dev/zero`) never keeps the executor from
/// its other work.
const READ_BUDGET: usize = 8 << 20;

impl FileSource {
    pub fn open(path: PathBuf, follow: bool, batch_size: usize) -> anyhow::Result<Self> {
        let file = File::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open source file {}: {e}", path.display()))?;
        Ok(FileSource {
            path,
            reader: BufReader::with_capacity(1 << 16, file),
            follow,
            batch_size,
            max_record_bytes: crate::config::DEFAULT_MAX_RECORD_BYTES,
            line: Vec::with_capacity(256),
            skipping: false,
        })
    }

    /// Sets the longest line taken.
    pub fn with_max_record_bytes(mut self, max: usize) -> Self {
        self.max_record_bytes = max;
        self
    }

    /// At the end of a followed file: if the path now names another file (rotation), continue
    /// with that one from its start; if the file shrank (truncation), start it again. A path
    /// that is gone for now is waited for.
    fn reopen_if_replaced(&mut self, out: &mut SourceBatch) -> std::io::Result<bool> {
        use std::io::Seek;
        use std::os::unix::fs::MetadataExt;
        let Ok(now) = std::fs::metadata(&self.path) else {
            return Ok(false);
        };
        let ours = self.reader.get_ref().metadata()?;
        if (now.dev(), now.ino()) != (ours.dev(), ours.ino()) {
            if let Ok(file) = File::open(&self.path) {
                tracing::info!(path = %self.path.display(), "source file replaced; reading the new one");
                // The old file's unfinished last line will never end: it is a record as it is.
                if !self.line.is_empty() && !self.skipping {
                    push_line(&self.line, out);
                }
                self.line.clear();
                self.skipping = false;
                self.reader = BufReader::with_capacity(1 << 16, file);
                return Ok(true);
            }
            return Ok(false);
        }
        if now.len() < self.reader.stream_position()? {
            tracing::info!(path = %self.path.display(), "source file truncated; reading it from its start");
            self.reader.seek(std::io::SeekFrom::Start(0))?;
            self.line.clear();
            self.skipping = false;
            return Ok(true);
        }
        Ok(false)
    }
}

/// The line being assembled by a [`FileSource`]: bytes of an unfinished line, or the knowledge
/// that the current line was too long and is being skipped.
struct PartialLine<'a> {
    line: &'a mut Vec<u8>,
    skipping: &'a mut bool,
    max: usize,
    path: &'a std::path::Path,
}

impl PartialLine<'_> {
    /// Takes the line just completed (or a bounded file's last, unterminated one).
    fn take(&mut self, out: &mut SourceBatch) {
        if !std::mem::take(self.skipping) {
            push_line(self.line, out);
        }
        self.line.clear();
    }

    /// Adds `bytes` (no line break) to the current line, refusing the line once it is too
    /// long: its first bytes go to the dead letters, the rest is dropped as it comes.
    fn extend(&mut self, bytes: &[u8], out: &mut SourceBatch) {
        if *self.skipping {
            return;
        }
        if self.line.len() + bytes.len() <= self.max {
            self.line.extend_from_slice(bytes);
            return;
        }
        let room = REJECTED_PREFIX
            .saturating_sub(self.line.len())
            .min(bytes.len());
        self.line.extend_from_slice(&bytes[..room]);
        out.reject(
            format!(
                "line longer than max_record_bytes ({} bytes) in {}; skipped",
                self.max,
                self.path.display()
            ),
            self.line,
        );
        self.line.clear();
        *self.skipping = true;
    }
}

/// A complete line (without its `\n`) as a record, unless it is blank.
fn push_line(line: &[u8], out: &mut SourceBatch) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        out.push_json(line);
    }
}

impl Source for FileSource {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        let mut budget = READ_BUDGET;
        let mut ended = false;
        while out.len() < self.batch_size && budget > 0 {
            let FileSource {
                path,
                reader,
                follow,
                max_record_bytes,
                line,
                skipping,
                ..
            } = &mut *self;
            let mut partial = PartialLine {
                line,
                skipping,
                max: *max_record_bytes,
                path,
            };
            let buffer = reader.fill_buf().map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
            })?;
            if buffer.is_empty() {
                if *follow {
                    if self.reopen_if_replaced(out)? {
                        continue;
                    }
                } else {
                    // A bounded file's last line needs no line break.
                    if !partial.line.is_empty() || *partial.skipping {
                        partial.take(out);
                    }
                    ended = true;
                }
                break;
            }
            match buffer.iter().position(|&b| b == b'\n') {
                // The usual case: a whole line in the buffer, taken in place.
                Some(at) if partial.line.is_empty() && !*partial.skipping && at <= partial.max => {
                    push_line(&buffer[..at], out);
                    reader.consume(at + 1);
                    budget = budget.saturating_sub(at + 1);
                }
                Some(at) => {
                    partial.extend(&buffer[..at], out);
                    partial.take(out);
                    reader.consume(at + 1);
                    budget = budget.saturating_sub(at + 1);
                }
                None => {
                    let len = buffer.len();
                    partial.extend(buffer, out);
                    reader.consume(len);
                    budget = budget.saturating_sub(len);
                }
            }
        }
        let read_something = !out.is_empty() || !out.rejected.is_empty();
        Ok(match (read_something, ended, budget == 0) {
            (true, _, _) => Pull::Batch,
            (false, true, _) => Pull::Finished,
            (false, false, true) => Pull::Busy,
            (false, false, false) => Pull::Idle,
        })
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
        self.max_record_bytes = config.max_record_bytes;
        if let SourceKind::File { follow, .. } = config.kind {
            self.follow = follow;
        }
    }
}

/// Generated orders, as `flumen gen orders` writes them.
struct GeneratorSource<I> {
    lines: I,
    batch_size: usize,
}

impl<I: Iterator<Item = String>> Source for GeneratorSource<I> {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        while out.len() < self.batch_size {
            let Some(line) = self.lines.next() else { break };
            if !line.trim().is_empty() {
                out.push_json(line.as_bytes());
            }
        }
        Ok(if out.is_empty() {
            Pull::Finished
        } else {
            Pull::Batch
        })
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
    }
}

/// The benchmark's orders, made in memory as bincode `BenchOrder`s (six `i64`s).
struct BenchSource {
    generator: BenchGenerator,
    left: u64,
    batch_size: usize,
    value: Vec<u8>,
}

impl Source for BenchSource {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        while out.len() < self.batch_size && self.left > 0 {
            self.left -= 1;
            let order = self.generator.next_order();
            self.value.clear();
            for field in order {
                self.value.extend_from_slice(&field.to_le_bytes());
            }
            out.push_typed(
                |name| BenchGenerator::field(&order, name),
                order[5],
                &self.value,
            );
        }
        Ok(if out.is_empty() {
            Pull::Finished
        } else {
            Pull::Batch
        })
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::abi::{OutputEntry, OutputReader};
    use std::io::Write;

    fn values(batch: &SourceBatch) -> Vec<String> {
        OutputReader::new(batch.out.as_bytes())
            .map(|e| match e.unwrap() {
                OutputEntry::Record { value, .. } => String::from_utf8(value.to_vec()).unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn json_records_carry_the_keys_and_event_time_they_name() {
        let mut batch = SourceBatch::new(vec!["sku".into(), "user".into()], Some("ts".into()));
        batch.push_json(br#"{"ts": 7, "sku": "S-1", "user": 42, "other": [1, {"x": 2}]}"#);
        batch.push_json(b"not json");
        batch.push_json(br#"{"ts": "late", "sku": "S-2"}"#);
        assert_eq!(batch.times, vec![(0, 7)]);
        let entries: Vec<_> = OutputReader::new(batch.out.as_bytes())
            .map(Result::unwrap)
            .collect();
        match &entries[0] {
            OutputEntry::Record { ts, keys, .. } => {
                assert_eq!(*ts, 7);
                assert_eq!(keys.get(0), Some(&b"S-1"[..]));
                assert_eq!(keys.get(1), Some(&b"42"[..]));
            }
            other => panic!("{other:?}"),
        }
        match &entries[2] {
            OutputEntry::Record { keys, .. } => assert_eq!(keys.get(1), Some(&b""[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn file_lines_become_records_in_batches_skipping_blank_lines() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "a\r\n\n  \nb\nc\nd").unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), false, 2).unwrap();
        let mut batch = SourceBatch::default();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["a", "b"]);
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["c", "d"]);
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Finished);
    }

    #[test]
    fn a_followed_file_waits_for_the_end_of_a_line() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "a\npart").unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), true, 10).unwrap();
        let mut batch = SourceBatch::default();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["a"]);
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Idle);
        writeln!(file, "ial").unwrap();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["partial"]);
    }

    #[test]
    fn an_over_long_line_is_refused_with_its_start_and_skipped_without_being_kept() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let long = "x".repeat(100_000);
        write!(file, "a\n{long}\nb\n{long}").unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), false, 10)
            .unwrap()
            .with_max_record_bytes(1000);
        let mut batch = SourceBatch::default();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["a", "b"]);
        assert_eq!(batch.rejected.len(), 2);
        let (why, raw) = &batch.rejected[0];
        assert!(why.contains("max_record_bytes (1000 bytes)"), "{why}");
        assert!(raw.starts_with(&[b'x'; REJECTED_PREFIX]) && raw.len() < 300);
        assert!(source.line.capacity() < 10_000, "the long line was kept");
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Finished);
    }

    #[test]
    fn a_followed_unfinished_line_is_read_once_and_an_endless_one_is_bounded() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), true, 10)
            .unwrap()
            .with_max_record_bytes(1 << 20);
        let mut batch = SourceBatch::default();
        // Far more than a call reads, with no line break: refused once, then skipped in
        // bounded steps, each returning to the caller.
        file.write_all(&vec![b'z'; 3 * READ_BUDGET]).unwrap();
        let (mut pulls, mut refused) = (Vec::new(), 0);
        for _ in 0..5 {
            batch.clear();
            pulls.push(source.next_batch(&mut batch).unwrap());
            refused += batch.rejected.len();
        }
        assert_eq!(refused, 1);
        assert_eq!(pulls[0], Pull::Batch);
        assert!(pulls[1..].contains(&Pull::Busy));
        assert_eq!(pulls[4], Pull::Idle);
        writeln!(file, "tail").unwrap();
        writeln!(file, "{{\"ok\":1}}").unwrap();
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), [r#"{"ok":1}"#]);
    }

    #[test]
    fn far_future_event_times_are_refused_when_guarded() {
        let mut batch = SourceBatch::new(Vec::new(), Some("ts".into())).with_max_future(Some(1000));
        batch.push_json(br#"{"ts": 5000}"#);
        batch.push_json(br#"{"ts": 5999}"#);
        batch.push_json(br#"{"ts": 1000000000000000000}"#);
        batch.push_json(br#"{"ts": 6500}"#);
        assert_eq!(batch.times, vec![(0, 5000), (1, 5999), (2, 6500)]);
        assert_eq!(batch.rejected.len(), 1);
        assert!(batch.rejected[0].0.contains("max_future_ms = 1000"));
    }

    #[test]
    fn a_followed_file_survives_truncation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let mut source = FileSource::open(path.clone(), true, 10).unwrap();
        let mut batch = SourceBatch::default();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["one", "two"]);
        std::fs::write(&path, "3\n").unwrap();
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["3"]);
        let rotated = dir.path().join("in.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["fresh"]);
        batch.clear();
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Idle);
    }
}
