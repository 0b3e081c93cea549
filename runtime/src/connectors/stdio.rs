//! Standard output (JSON Lines) and the blackhole sink (benchmarks).

use super::Sink;
use std::io::{BufWriter, Write};

/// Drops every record (the executor counts them).
pub(super) struct Blackhole;

impl Sink for Blackhole {
    fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn commit(&mut self) -> std::io::Result<super::Committed> {
        Ok(super::Committed::nothing())
    }
}

/// JSON Lines to any writer (standard output).
pub(super) struct LineSink<W: Write> {
    pub out: BufWriter<W>,
}

impl<W: Write + Send> Sink for LineSink<W> {
    fn write(&mut self, value: &[u8]) -> std::io::Result<()> {
        self.out.write_all(value)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    /// What was written to a stream is gone: committing it is flushing it.
    fn commit(&mut self) -> std::io::Result<super::Committed> {
        self.out.flush().map(|()| super::Committed::nothing())
    }
}
