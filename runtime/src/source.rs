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
    count: u64,
    key_fields: Vec<String>,
    event_time: Option<String>,
    found: Vec<Option<serde_json::Value>>,
}

impl SourceBatch {
    /// An empty batch whose records carry keys `key_fields` and event time `event_time`.
    pub fn new(key_fields: Vec<String>, event_time: Option<String>) -> Self {
        SourceBatch {
            key_fields,
            event_time,
            ..SourceBatch::default()
        }
    }

    /// Empties the batch, keeping its allocations.
    pub fn clear(&mut self) {
        self.out.clear();
        self.times.clear();
        self.count = 0;
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
        SourceKind::File { path, follow } => {
            Box::new(FileSource::open(path.clone(), *follow, config.batch_size)?)
        }
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
/// the value.
pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    follow: bool,
    batch_size: usize,
    line: Vec<u8>,
}

impl FileSource {
    pub fn open(path: PathBuf, follow: bool, batch_size: usize) -> anyhow::Result<Self> {
        let file = File::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open source file {}: {e}", path.display()))?;
        Ok(FileSource {
            path,
            reader: BufReader::with_capacity(1 << 16, file),
            follow,
            batch_size,
            line: Vec::with_capacity(256),
        })
    }
}

impl FileSource {
    /// At the end of a followed file: if the path now names another file (rotation), continue
    /// with that one from its start; if the file shrank (truncation), start it again. A path
    /// that is gone for now is waited for.
    fn reopen_if_replaced(&mut self) -> std::io::Result<bool> {
        use std::io::Seek;
        use std::os::unix::fs::MetadataExt;
        let Ok(now) = std::fs::metadata(&self.path) else {
            return Ok(false);
        };
        let ours = self.reader.get_ref().metadata()?;
        if (now.dev(), now.ino()) != (ours.dev(), ours.ino()) {
            if let Ok(file) = File::open(&self.path) {
                tracing::info!(path = %self.path.display(), "source file replaced; reading the new one");
                self.reader = BufReader::with_capacity(1 << 16, file);
                return Ok(true);
            }
            return Ok(false);
        }
        if now.len() < self.reader.stream_position()? {
            tracing::info!(path = %self.path.display(), "source file truncated; reading it from its start");
            self.reader.seek(std::io::SeekFrom::Start(0))?;
            return Ok(true);
        }
        Ok(false)
    }
}

impl Source for FileSource {
    fn next_batch(&mut self, out: &mut SourceBatch) -> std::io::Result<Pull> {
        while out.len() < self.batch_size {
            self.line.clear();
            let read = self.reader.read_until(b'\n', &mut self.line).map_err(|e| {
                std::io::Error::new(e.kind(), format!("reading {}: {e}", self.path.display()))
            })?;
            if read == 0 {
                if self.follow && self.reopen_if_replaced()? {
                    continue;
                }
                break;
            }
            let complete = self.line.last() == Some(&b'\n');
            if !complete && self.follow {
                // A line still being written: wait for its end. The partial bytes are kept in
                // the reader's place by seeking back.
                self.reader.seek_relative(-(read as i64))?;
                break;
            }
            let line = trim_line_break(&self.line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            out.push_json(line);
        }
        Ok(match (out.is_empty(), self.follow) {
            (false, _) => Pull::Batch,
            (true, true) => Pull::Idle,
            (true, false) => Pull::Finished,
        })
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
        if let SourceKind::File { follow, .. } = config.kind {
            self.follow = follow;
        }
    }
}

fn trim_line_break(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
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
