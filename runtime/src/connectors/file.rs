//! Files: JSON Lines in ([`FileSource`], optionally following a growing file across truncation
//! and rotation) and out ([`FileSink`], never through a symbolic link, started again if its file
//! is deleted or moved away).

use super::batch::{REJECTED_PREFIX, SourceBatch};
use super::{Options, Position, Pull, Sink, SinkKind, Source, SourceConfig, SourceKind};
use std::fs::File;
use std::io::{BufRead, BufReader, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The options of a file source, besides those of every source.
pub(super) const SOURCE_OPTIONS: &[&str] = &["path", "format", "follow"];

/// A file source's kind, from its options.
pub(super) fn source_kind(options: &mut dyn Options) -> Option<SourceKind> {
    jsonl_only(options);
    let follow = options.boolean("follow").unwrap_or(false);
    let Some(path) = options.string("path") else {
        options.problem("type", "a file source needs `path`".into());
        return None;
    };
    Some(SourceKind::File {
        path: PathBuf::from(path),
        follow,
    })
}

/// The options of a file sink, besides those of every sink.
pub(super) const SINK_OPTIONS: &[&str] = &["path"];

/// A file sink's kind, from its options.
pub(super) fn sink_kind(options: &mut dyn Options) -> Option<SinkKind> {
    let Some(path) = options.string("path") else {
        options.problem("type", "a file sink needs `path`".into());
        return None;
    };
    Some(SinkKind::File {
        path: PathBuf::from(path),
    })
}

/// Refuses a `format` other than JSON Lines.
pub(super) fn jsonl_only(options: &mut dyn Options) {
    if let Some(format) = options.string("format")
        && format != "jsonl"
    {
        options.problem("format", "the only format is \"jsonl\" (JSON Lines)".into());
    }
}

/// Whether two paths name the same file: compared absolute, and as files when both exist.
pub fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.into());
    if absolute(a) == absolute(b) {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
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
    /// `(device, inode)` of the file being read.
    identity: (u64, u64),
    /// Bytes of that file consumed so far, and where the line not taken yet starts.
    consumed: u64,
    line_start: u64,
}

/// The most bytes one call reads, so a huge line (or `/dev/zero`) never keeps the executor from
/// its other work.
const READ_BUDGET: usize = 8 << 20;

impl FileSource {
    /// Opens `path`, to read `batch_size` lines at a time; following it if `follow`.
    pub fn open(path: PathBuf, follow: bool, batch_size: usize) -> anyhow::Result<Self> {
        let file = File::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open source file {}: {e}", path.display()))?;
        let identity = identity(&file)
            .map_err(|e| anyhow::anyhow!("cannot read source file {}: {e}", path.display()))?;
        Ok(FileSource {
            path,
            reader: BufReader::with_capacity(1 << 16, file),
            follow,
            batch_size,
            max_record_bytes: super::DEFAULT_MAX_RECORD_BYTES,
            line: Vec::with_capacity(256),
            skipping: false,
            identity,
            consumed: 0,
            line_start: 0,
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
                self.identity = identity(&file)?;
                self.reader = BufReader::with_capacity(1 << 16, file);
                self.restart_at(0, false);
                return Ok(true);
            }
            return Ok(false);
        }
        if now.len() < self.reader.stream_position()? {
            tracing::info!(path = %self.path.display(), "source file truncated; reading it from its start");
            self.reader.seek(std::io::SeekFrom::Start(0))?;
            self.restart_at(0, false);
            return Ok(true);
        }
        Ok(false)
    }

    /// Forgets the line being read: reading goes on at byte `offset` of the file (the reader is
    /// there already), dropping bytes to the next line break if `skipping`.
    fn restart_at(&mut self, offset: u64, skipping: bool) {
        self.line.clear();
        self.skipping = skipping;
        self.consumed = offset;
        self.line_start = offset;
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
                consumed,
                line_start,
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
                    *line_start = *consumed;
                    ended = true;
                }
                break;
            }
            match buffer.iter().position(|&b| b == b'\n') {
                // The usual case: a whole line in the buffer, taken in place.
                Some(at) if partial.line.is_empty() && !*partial.skipping && at <= partial.max => {
                    push_line(&buffer[..at], out);
                    reader.consume(at + 1);
                    *consumed += at as u64 + 1;
                    *line_start = *consumed;
                    budget = budget.saturating_sub(at + 1);
                }
                Some(at) => {
                    partial.extend(&buffer[..at], out);
                    partial.take(out);
                    reader.consume(at + 1);
                    *consumed += at as u64 + 1;
                    *line_start = *consumed;
                    budget = budget.saturating_sub(at + 1);
                }
                None => {
                    let len = buffer.len();
                    partial.extend(buffer, out);
                    reader.consume(len);
                    *consumed += len as u64;
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

    fn lag(&mut self) -> Option<crate::telemetry::Lag> {
        let size = self.reader.get_ref().metadata().ok()?.len();
        Some(crate::telemetry::Lag {
            behind: size.saturating_sub(self.consumed),
            unit: "bytes",
        })
    }

    fn position(&mut self) -> std::io::Result<Position> {
        let (device, inode) = self.identity;
        // Inside a line too long to take, the rest of it is skipped on resuming too (it was
        // refused already); inside any other line, that line is read again whole.
        let (offset, skipping) = match self.skipping {
            true => (self.consumed, true),
            false => (self.line_start, false),
        };
        let file = self.reader.get_ref();
        Ok(Position::File {
            offset,
            skipping,
            device,
            inode,
            size: file.metadata()?.len(),
            fingerprint: fingerprint(file, offset)?,
        })
    }

    fn seek(&mut self, position: &Position) -> anyhow::Result<()> {
        let &Position::File {
            offset,
            skipping,
            device,
            inode,
            fingerprint: expected,
            ..
        } = position
        else {
            anyhow::bail!(
                "{} is a file; a position of another input cannot resume it",
                self.path.display()
            );
        };
        let file = self.reader.get_ref();
        let length = file.metadata()?.len();
        anyhow::ensure!(
            length >= offset,
            "{} is not the file this position was taken in: it is {length} bytes long, and \
             {offset} bytes of that file had been read",
            self.path.display()
        );
        anyhow::ensure!(
            fingerprint(file, offset)? == expected,
            "{} is not the file this position was taken in: its first bytes, or those before \
             byte {offset}, differ (that file was device {device}, inode {inode})",
            self.path.display()
        );
        if (device, inode) != self.identity {
            tracing::info!(
                path = %self.path.display(),
                "the source file is another copy of the same content (its device or inode \
                 changed); resuming it at byte {offset}"
            );
        }
        self.reader.seek(std::io::SeekFrom::Start(offset))?;
        self.restart_at(offset, skipping);
        Ok(())
    }

    fn retune(&mut self, config: &SourceConfig) {
        self.batch_size = config.batch_size;
        self.max_record_bytes = config.max_record_bytes;
        if let SourceKind::File { follow, .. } = config.kind {
            self.follow = follow;
        }
    }
}

/// JSON Lines to a file, whose folder is created if missing. The file is created by flumen and
/// never reached through a symbolic link; if it is deleted or moved away while running, the sink
/// notices before its next write and starts a new file at its path (saying so), so no line is
/// written into a file nobody can read.
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// `(device, inode)` of `file`, to tell whether the path still names it.
    identity: (u64, u64),
    buffer: Vec<u8>,
}

/// Lines are written to the file in pieces of about this size (and on every flush).
const SINK_BUFFER: usize = 1 << 16;

impl FileSink {
    /// Creates (or truncates) the file at `path`, and its folder.
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        Self::open(path, None)
    }

    /// Opens the file at `path` to go on after a checkpoint that committed its first
    /// `committed` bytes: what follows them (written after that checkpoint) is cut off, and
    /// writing appends from there. A file shorter than that was changed by someone else: refused.
    pub fn resume(path: PathBuf, committed: u64) -> anyhow::Result<Self> {
        Self::open(path, Some(committed))
    }

    /// Creates (or truncates) the file at `path`, or with `committed`, resumes it.
    fn open(path: PathBuf, committed: Option<u64>) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("cannot create the sink folder {}: {e}", parent.display())
            })?;
        }
        let file = open_no_follow(&path, committed.is_none())?;
        if let Some(committed) = committed {
            let length = file
                .metadata()
                .map_err(|e| anyhow::anyhow!("cannot read sink file {}: {e}", path.display()))?
                .len();
            anyhow::ensure!(
                length >= committed,
                "sink file {} is {length} bytes long, shorter than the {committed} bytes the \
                 checkpoint committed: it was changed outside flumen",
                path.display()
            );
            if length > committed {
                file.set_len(committed).map_err(|e| {
                    anyhow::anyhow!("cannot cut sink file {} back: {e}", path.display())
                })?;
            }
        }
        Ok(FileSink {
            identity: identity(&file)?,
            path,
            file,
            buffer: Vec::with_capacity(SINK_BUFFER),
        })
    }

    fn context(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display()))
    }

    /// Makes sure the path still names the file being written; if not, starts a new one there.
    fn ensure_file(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let current = std::fs::symlink_metadata(&self.path).ok();
        if current.is_some_and(|m| (m.dev(), m.ino()) == self.identity) {
            return Ok(());
        }
        tracing::warn!(
            path = %self.path.display(),
            "sink file was deleted or moved away; writing a new one at its path"
        );
        let file = open_no_follow(&self.path, false).map_err(std::io::Error::other)?;
        self.identity = identity(&file)?;
        self.file = file;
        Ok(())
    }

    fn write_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.ensure_file().map_err(|e| self.context(e))?;
        self.file
            .write_all(&self.buffer)
            .map_err(|e| self.context(e))?;
        self.buffer.clear();
        Ok(())
    }
}

/// Opens `path` for writing, never through a symbolic link (`O_NOFOLLOW`), truncating it or
/// appending to it.
fn open_no_follow(path: &std::path::Path, truncate: bool) -> anyhow::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .append(!truncate)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow::anyhow!(
                "sink file {} is a symbolic link; flumen writes only files it creates, never \
                 through a link (remove the link or choose another path)",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot create sink file {}: {e}", path.display()),
        })
}

/// How many of a file's first bytes, and of the bytes before a position, its fingerprint covers.
const FINGERPRINT_HEAD: u64 = 64 << 10;
const FINGERPRINT_TAIL: u64 = 4 << 10;

/// What tells a file read up to `offset` from another: SHA-256 of its first bytes (up to
/// 64 KiB, never past `offset`) and of the 4 KiB before `offset`. Bytes already read never change
/// in a file that only grows, so the same file gives the same fingerprint for as long as it
/// lives; a rotated, rewritten or other file does not.
pub(super) fn fingerprint(file: &File, offset: u64) -> std::io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::FileExt;
    let head = offset.min(FINGERPRINT_HEAD);
    let tail_start = offset.saturating_sub(FINGERPRINT_TAIL).max(head);
    let mut hash = Sha256::new();
    hash.update(offset.to_le_bytes());
    let mut buffer = vec![0; (FINGERPRINT_HEAD + FINGERPRINT_TAIL) as usize];
    for (start, end) in [(0, head), (tail_start, offset)] {
        let bytes = &mut buffer[..(end - start) as usize];
        file.read_exact_at(bytes, start)?;
        hash.update(&*bytes);
    }
    Ok(hash.finalize().into())
}

/// `(device, inode)` of an open file.
fn identity(file: &File) -> std::io::Result<(u64, u64)> {
    let meta = file.metadata()?;
    Ok((meta.dev(), meta.ino()))
}

impl Sink for FileSink {
    fn write(&mut self, value: &[u8]) -> std::io::Result<()> {
        self.buffer.extend_from_slice(value);
        self.buffer.push(b'\n');
        if self.buffer.len() >= SINK_BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.write_buffer()
    }

    fn commit(&mut self) -> std::io::Result<super::Committed> {
        self.write_buffer()?;
        let length = self.file.metadata().map_err(|e| self.context(e))?.len();
        let file = self.file.try_clone().map_err(|e| self.context(e))?;
        Ok(super::Committed {
            at: Some(super::SinkPosition::Length(length)),
            durable: Some(Box::new(move || file.sync_data())),
        })
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

    #[test]
    fn file_sink_creates_its_folder_and_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/er/out.jsonl");
        let mut sink = FileSink::create(path.clone()).unwrap();
        sink.write(br#"{"a":1}"#).unwrap();
        sink.write(b"2").unwrap();
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "{\"a\":1}\n2\n");
    }

    #[test]
    fn a_deleted_or_moved_file_is_started_again_and_links_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::create(path.clone()).unwrap();
        sink.write(b"1").unwrap();
        sink.flush().unwrap();
        std::fs::remove_file(&path).unwrap();
        sink.write(b"2").unwrap();
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2\n");
        let moved = dir.path().join("moved.jsonl");
        std::fs::rename(&path, &moved).unwrap();
        sink.write(b"3").unwrap();
        sink.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&moved).unwrap(), "2\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "3\n");

        let target = dir.path().join("precious.txt");
        std::fs::write(&target, "keep me").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = FileSink::create(link).err().unwrap().to_string();
        assert!(error.contains("symbolic link"), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    }

    #[test]
    fn a_source_resumes_at_its_position_even_inside_a_refused_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "1\n2\n3\n4\n5\n").unwrap();
        let mut first = FileSource::open(path.clone(), false, 2).unwrap();
        let mut batch = SourceBatch::new(Vec::new(), None);
        first.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["1", "2"]);
        let at = first.position().unwrap();
        let mut again = FileSource::open(path.clone(), false, 10).unwrap();
        again.seek(&at).unwrap();
        batch.clear();
        again.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["3", "4", "5"]);

        // Followed, in the middle of a line too long to take: its rest is skipped on resuming.
        let long = dir.path().join("long.jsonl");
        std::fs::write(&long, format!("ok\n{}", "x".repeat(100))).unwrap();
        let open = || {
            FileSource::open(long.clone(), true, 10)
                .unwrap()
                .with_max_record_bytes(10)
        };
        let mut first = open();
        batch.clear();
        first.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["ok"]);
        assert_eq!(batch.rejected.len(), 1);
        let at = first.position().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&long)
            .unwrap()
            .write_all(b"yyyy\nnext\n")
            .unwrap();
        let mut again = open();
        again.seek(&at).unwrap();
        batch.clear();
        again.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["next"]);
        assert!(batch.rejected.is_empty(), "refused once, not again");

        // An unfinished line is read again whole.
        let partial = dir.path().join("partial.jsonl");
        std::fs::write(&partial, "a\nbb").unwrap();
        let mut first = FileSource::open(partial.clone(), true, 10).unwrap();
        batch.clear();
        first.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["a"]);
        let at = first.position().unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .unwrap()
            .write_all(b"b\n")
            .unwrap();
        let mut again = FileSource::open(partial, true, 10).unwrap();
        again.seek(&at).unwrap();
        batch.clear();
        again.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["bbb"]);

        let error = FileSource::open(path, false, 10)
            .unwrap()
            .seek(&at)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not the file"), "{error}");
    }

    #[test]
    fn a_commit_makes_the_lines_durable_and_gives_the_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::create(path.clone()).unwrap();
        sink.write(b"1").unwrap();
        sink.write(b"22").unwrap();
        let mut committed = sink.commit().unwrap();
        assert_eq!(
            committed.at,
            Some(crate::connectors::SinkPosition::Length(5))
        );
        committed.make_durable().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n22\n");
        // What was written after the commit is cut off when resuming from it.
        sink.write(b"333").unwrap();
        sink.flush().unwrap();
        drop(sink);
        let mut resumed = FileSink::resume(path.clone(), 5).unwrap();
        resumed.write(b"4").unwrap();
        resumed.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n22\n4\n");
        let error = FileSink::resume(path, 100).err().unwrap().to_string();
        assert!(error.contains("shorter than the 100 bytes"), "{error}");
    }

    #[test]
    fn a_copy_of_the_same_file_resumes_and_another_file_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "1\n2\n3\n").unwrap();
        let mut first = FileSource::open(path.clone(), false, 2).unwrap();
        let mut batch = SourceBatch::new(Vec::new(), None);
        first.next_batch(&mut batch).unwrap();
        let at = first.position().unwrap();
        let copy = dir.path().join("copy.jsonl");
        std::fs::copy(&path, &copy).unwrap();
        let mut again = FileSource::open(copy, false, 10).unwrap();
        again.seek(&at).unwrap();
        batch.clear();
        again.next_batch(&mut batch).unwrap();
        assert_eq!(values(&batch), ["3"]);
        // Rewritten in place (same inode): its bytes before the position changed.
        std::fs::write(&path, "9\n2\n3\n").unwrap();
        let error = FileSource::open(path.clone(), false, 10)
            .unwrap()
            .seek(&at)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not the file"), "{error}");
        std::fs::write(&path, "1\n").unwrap();
        let error = FileSource::open(path, false, 10)
            .unwrap()
            .seek(&at)
            .unwrap_err()
            .to_string();
        assert!(error.contains("2 bytes long"), "{error}");
    }
}
