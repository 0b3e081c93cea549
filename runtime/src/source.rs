//! Sources: where records enter a pipeline. A source fills one batch at a time; JSON Lines text
//! travels as the record value, for the first operator to decode into its input type.

use crate::config::{SourceConfig, SourceKind};
use crate::generator::OrderGenerator;
use flumen_sdk::abi::BatchWriter;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

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
    fn next_batch(&mut self, out: &mut BatchWriter) -> std::io::Result<Pull>;
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
    fn next_batch(&mut self, out: &mut BatchWriter) -> std::io::Result<Pull> {
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
            out.push(b"", 0, line);
        }
        Ok(match (out.is_empty(), self.follow) {
            (false, _) => Pull::Batch,
            (true, true) => Pull::Idle,
            (true, false) => Pull::Finished,
        })
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
    fn next_batch(&mut self, out: &mut BatchWriter) -> std::io::Result<Pull> {
        while out.len() < self.batch_size {
            let Some(line) = self.lines.next() else { break };
            if !line.trim().is_empty() {
                out.push(b"", 0, line.as_bytes());
            }
        }
        Ok(if out.is_empty() {
            Pull::Finished
        } else {
            Pull::Batch
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flumen_sdk::abi::{BatchReader, Encoding};
    use std::io::Write;

    fn values(writer: &BatchWriter) -> Vec<String> {
        BatchReader::new(writer.as_bytes())
            .unwrap()
            .map(|r| String::from_utf8(r.unwrap().value.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn file_lines_become_records_in_batches_skipping_blank_lines() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "a\r\n\n  \nb\nc\nd").unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), false, 2).unwrap();
        let mut batch = BatchWriter::new(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["a", "b"]);
        batch.clear(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["c", "d"]);
        batch.clear(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Finished);
    }

    #[test]
    fn a_followed_file_waits_for_the_end_of_a_line() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        write!(file, "a\npart").unwrap();
        let mut source = FileSource::open(file.path().to_path_buf(), true, 10).unwrap();
        let mut batch = BatchWriter::new(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["a"]);
        batch.clear(Encoding::Json);
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
        let mut batch = BatchWriter::new(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["one", "two"]);
        std::fs::write(&path, "3\n").unwrap();
        batch.clear(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["3"]);
        let rotated = dir.path().join("in.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        std::fs::write(&path, "fresh\n").unwrap();
        batch.clear(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Batch);
        assert_eq!(values(&batch), ["fresh"]);
        batch.clear(Encoding::Json);
        assert_eq!(source.next_batch(&mut batch).unwrap(), Pull::Idle);
    }
}
