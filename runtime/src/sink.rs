//! Sinks: where records leave a pipeline, as JSON Lines. Writes are buffered; the executor calls
//! [`Sink::flush`] at least every [`FLUSH_INTERVAL`] and at the end, so files can be watched.

use crate::config::{SinkConfig, SinkKind};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The longest a written record waits in a sink's buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A destination of JSON values, one per line.
pub trait Sink {
    /// Writes one JSON value.
    fn write(&mut self, value: &[u8]) -> std::io::Result<()>;
    /// Pushes buffered lines to their destination.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// Whether `value` is one JSON document on one line: what a JSON Lines sink writes.
pub fn is_json_line(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == b'\n' || b == b'\r')
        && std::str::from_utf8(value).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(value).is_ok()
}

/// Whether two sink configurations write the same destination, so a reload keeps the open sink
/// (renaming it, or changing its inputs, never truncates its file).
pub fn same_output(old: &SinkConfig, new: &SinkConfig) -> bool {
    match (&old.kind, &new.kind) {
        (SinkKind::File { path: a }, SinkKind::File { path: b }) => crate::source::same_path(a, b),
        (SinkKind::Stdout, SinkKind::Stdout) => true,
        (SinkKind::Blackhole, SinkKind::Blackhole) => old.name == new.name,
        _ => false,
    }
}

/// Opens (creating or truncating) the sink `config` describes.
pub fn open(config: &SinkConfig) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match &config.kind {
        SinkKind::File { path } => Box::new(FileSink::create(path.clone())?),
        SinkKind::Stdout => Box::new(LineSink {
            out: BufWriter::new(std::io::stdout()),
        }),
        SinkKind::Blackhole => Box::new(Blackhole),
    })
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
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("cannot create the sink folder {}: {e}", parent.display())
            })?;
        }
        let file = open_no_follow(&path, true)?;
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

fn identity(file: &File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
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
}

/// Drops every record (the executor counts them).
struct Blackhole;

impl Sink for Blackhole {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON Lines to any writer (standard output).
struct LineSink<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> Sink for LineSink<W> {
    fn write(&mut self, value: &[u8]) -> std::io::Result<()> {
        self.out.write_all(value)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn json_lines_are_single_line_json() {
        assert!(is_json_line(br#"{"a":[1,"x"]}"#));
        assert!(is_json_line(b"3"));
        assert!(!is_json_line(b"{\"a\":1}\n{\"forged\":true}"));
        assert!(!is_json_line(b"{\"a\":\n1}"));
        assert!(!is_json_line(b"not json"));
        assert!(!is_json_line(b"{\"a\":\"\xff\"}"));
        assert!(!is_json_line(b""));
    }
}
