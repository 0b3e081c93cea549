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

/// JSON Lines to a file, whose folder is created if missing.
pub struct FileSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl FileSink {
    pub fn create(path: PathBuf) -> anyhow::Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("cannot create the sink folder {}: {e}", parent.display())
            })?;
        }
        let file = File::create(&path)
            .map_err(|e| anyhow::anyhow!("cannot create sink file {}: {e}", path.display()))?;
        Ok(FileSink {
            path,
            out: BufWriter::with_capacity(1 << 16, file),
        })
    }

    fn context(&self, e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), format!("writing {}: {e}", self.path.display()))
    }
}

impl Sink for FileSink {
    fn write(&mut self, value: &[u8]) -> std::io::Result<()> {
        self.out
            .write_all(value)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(|e| self.context(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush().map_err(|e| self.context(e))
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
}
