//! The decision journal of a Kafka source: what each of its reads handed out (which partition,
//! how many records) or that it had nothing, and when it called a partition idle — everything
//! that depends on timing rather than on the records themselves. Replaying it after a crash makes
//! the rerun hand out exactly the same batches in the same rounds, so every stage produces the
//! same outputs in the same order, which is what lets a Kafka sink skip the outputs the crashed
//! run had already written (see ARCHITECTURE.md, "Exactly once to Kafka").
//!
//! The journal is a folder of segments, `<n>.log`, each a sequence of bincode-encoded
//! [`Decision`]s. A checkpoint starts a new segment ([`Journal::rotate`]) and records its number:
//! resuming from that checkpoint replays that segment and every later one. Decisions are written
//! and synced ([`Journal::sync`]) before any output they lead to leaves a sink for Kafka; a
//! segment cut short by a crash ends at its last whole decision.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One read of the source, as far as timing decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// A batch of `count` records of split `split`, from where that split was.
    Batch {
        /// The split (partition) read.
        split: u32,
        /// How many records.
        count: u32,
    },
    /// `pulls` reads in a row that had nothing.
    Quiet {
        /// How many.
        pulls: u32,
    },
    /// Split `split` was called idle (before the next read).
    Idle {
        /// The split.
        split: u32,
    },
}

/// The most one decision takes encoded: a tag and two varints.
const MAX_ENCODED: usize = 16;

/// A source's journal, open for appending.
pub struct Journal {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Decisions encoded, not yet written.
    pending: Vec<u8>,
    /// Reads with nothing since the last decision recorded.
    quiet: u32,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl Journal {
    /// Starts the journal in `dir` afresh: segments of an earlier run are removed.
    pub fn fresh(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the journal folder {}: {e}", dir.display())
        })?;
        for (_, path) in segments(dir)? {
            std::fs::remove_file(&path)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
        }
        Self::start(dir, 0, &VecDeque::new())
    }

    /// Opens the journal in `dir` to go on from the checkpoint that started segment `from`: the
    /// decisions of that segment and every later one, in order, to be replayed. They are also
    /// written at the start of a new segment, which later decisions follow, so the journal
    /// stays whole whichever checkpoint comes next.
    pub fn resume(dir: &Path, from: u64) -> anyhow::Result<(Self, VecDeque<Decision>)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the journal folder {}: {e}", dir.display())
        })?;
        let found = segments(dir)?;
        if found.first().is_none_or(|(n, _)| *n > from) {
            anyhow::bail!(
                "the journal segment {from} the checkpoint needs is missing from {}",
                dir.display()
            );
        }
        let mut replay = VecDeque::new();
        let mut last = from;
        for (n, path) in found.iter().filter(|(n, _)| *n >= from) {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            replay.extend(decode_all(&bytes));
            last = *n;
        }
        let journal = Self::start(dir, last + 1, &replay)?;
        Ok((journal, replay))
    }

    /// Creates segment `segment` holding `first` (synced).
    fn start(dir: &Path, segment: u64, first: &VecDeque<Decision>) -> anyhow::Result<Self> {
        let path = dir.join(format!("{segment}.log"));
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            segment,
            file,
            pending: Vec::new(),
            quiet: 0,
        };
        for &decision in first {
            journal.encode(decision);
        }
        journal.sync()?;
        if let Ok(folder) = File::open(dir) {
            let _ = folder.sync_all();
        }
        Ok(journal)
    }

    fn encode(&mut self, decision: Decision) {
        let mut buffer = [0u8; MAX_ENCODED];
        let n = bincode::serde::encode_into_slice(decision, &mut buffer, config())
            .unwrap_or_else(|e| unreachable!("a decision fits {MAX_ENCODED} bytes: {e}"));
        self.pending.extend_from_slice(&buffer[..n]);
    }

    /// Notes one read's decision.
    pub fn record(&mut self, decision: Decision) {
        if let Decision::Quiet { pulls } = decision {
            self.quiet = self.quiet.saturating_add(pulls);
            return;
        }
        self.settle_quiet();
        self.encode(decision);
    }

    fn settle_quiet(&mut self) {
        let pulls = std::mem::take(&mut self.quiet);
        if pulls > 0 {
            self.encode(Decision::Quiet { pulls });
        }
    }

    /// Writes what was recorded and syncs it to the disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.settle_quiet();
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.pending.clear();
        self.file.sync_data()
    }

    /// Ends the current segment (synced) and starts the next, beginning with `unreplayed` (the
    /// decisions of an earlier run not replayed yet); returns its number, for the checkpoint.
    pub fn rotate(&mut self, unreplayed: &VecDeque<Decision>) -> anyhow::Result<u64> {
        self.sync()?;
        let next = Self::start(&self.dir, self.segment + 1, unreplayed)?;
        *self = next;
        Ok(self.segment)
    }

    /// Removes the segments before `segment` (no checkpoint kept needs them).
    pub fn forget_before(&self, segment: u64) {
        let Ok(found) = segments(&self.dir) else {
            return;
        };
        for (_, path) in found.iter().filter(|(n, _)| *n < segment) {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(
                    "cannot remove the old journal segment {}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// Every whole decision in `bytes`; a cut-short last one is left out.
fn decode_all(mut bytes: &[u8]) -> Vec<Decision> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match bincode::serde::decode_from_slice::<Decision, _>(bytes, config()) {
            Ok((decision, read)) => {
                out.push(decision);
                bytes = &bytes[read..];
            }
            Err(_) => break,
        }
    }
    out
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read the journal folder {}: {e}", dir.display()))?;
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let n = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((n, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_journal_replays_from_the_checkpoint_segment_and_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::fresh(dir.path()).unwrap();
        journal.record(Decision::Batch { split: 0, count: 3 });
        journal.record(Decision::Quiet { pulls: 1 });
        journal.record(Decision::Quiet { pulls: 1 });
        let at = journal.rotate(&VecDeque::new()).unwrap();
        journal.record(Decision::Idle { split: 1 });
        journal.record(Decision::Batch { split: 2, count: 7 });
        journal.record(Decision::Quiet { pulls: 1 });
        journal.sync().unwrap();
        journal.record(Decision::Batch { split: 0, count: 1 });
        // Never synced, and a torn write after it: neither is replayed.
        let path = dir.path().join(format!("{at}.log"));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0x00);
        std::fs::write(&path, &bytes).unwrap();
        drop(journal);

        let (mut resumed, replay) = Journal::resume(dir.path(), at).unwrap();
        let expected = [
            Decision::Idle { split: 1 },
            Decision::Batch { split: 2, count: 7 },
            Decision::Quiet { pulls: 1 },
        ];
        assert_eq!(Vec::from(replay.clone()), expected);
        // A checkpoint taken before anything was replayed carries it all into its segment.
        let next = resumed.rotate(&replay).unwrap();
        let (_, again) = Journal::resume(dir.path(), next).unwrap();
        assert_eq!(Vec::from(again), expected);
        // The first segment's decisions, quiet reads merged.
        let (_, from_start) = Journal::resume(dir.path(), 0).unwrap();
        assert_eq!(
            Vec::from(from_start)[..2],
            [
                Decision::Batch { split: 0, count: 3 },
                Decision::Quiet { pulls: 2 }
            ]
        );
    }

    #[test]
    fn a_missing_segment_is_refused_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::fresh(dir.path()).unwrap();
        journal.rotate(&VecDeque::new()).unwrap();
        let at = journal.rotate(&VecDeque::new()).unwrap();
        journal.forget_before(at);
        assert!(Journal::resume(dir.path(), 0).is_err());
        assert!(Journal::resume(dir.path(), at).is_ok());
        // A fresh start forgets everything.
        Journal::fresh(dir.path()).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
