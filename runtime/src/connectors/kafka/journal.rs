//! The decision journal of a Kafka source: what each of its reads handed out (which partition,
//! how many records) or that it had nothing, and when it called a partition idle — everything
//! that depends on timing rather than on the records themselves. Replaying it after a crash makes
//! the rerun hand out exactly the same batches in the same rounds, so every stage produces the
//! same outputs in the same order, which is what lets a Kafka sink skip the outputs the crashed
//! run had already written (see ARCHITECTURE.md, "Exactly once to Kafka").
//!
//! The journal is a folder of segments, `<n>.log`, each a sequence of bincode-encoded
//! [`Decision`]s; together, in order, they are every decision since the first checkpoint kept.
//! A checkpoint starts a new segment ([`Journal::rotate`]) and records where the decisions after
//! it begin ([`At`]): the new segment's start, or — in the middle of a replay — the place of the
//! next decision still to replay. Resuming replays from there to the end of the last segment.
//! Decisions are written and synced ([`Journal::sync`]) before any output they lead to leaves a
//! sink for Kafka; a segment cut short by a crash ends at its last whole decision.

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

/// A place in the journal: the `index`-th decision of segment `segment`, of which (a run of
/// quiet reads) `pulls` were replayed already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct At {
    /// The segment.
    pub segment: u64,
    /// The decision in it.
    pub index: u64,
    /// Quiet reads of that decision already replayed.
    pub pulls: u32,
}

/// A decision to replay, with its place.
pub type Replayed = (At, Decision);

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
        Self::start(dir, 0)
    }

    /// Opens the journal in `dir` to go on from a checkpoint that recorded `from`: the
    /// decisions from there to the end, in order, with their places, to be replayed. New
    /// decisions go to a new segment after them.
    pub fn resume(dir: &Path, from: At) -> anyhow::Result<(Self, VecDeque<Replayed>)> {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!("cannot create the journal folder {}: {e}", dir.display())
        })?;
        let found = segments(dir)?;
        if !found.iter().any(|(n, _)| *n == from.segment) {
            anyhow::bail!(
                "the journal segment {} the checkpoint needs is missing from {}",
                from.segment,
                dir.display()
            );
        }
        let mut replay = VecDeque::new();
        let mut last = from.segment;
        for (n, path) in found.iter().filter(|(n, _)| *n >= from.segment) {
            let bytes = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            for (index, decision) in decode_all(&bytes).into_iter().enumerate() {
                let at = At {
                    segment: *n,
                    index: index as u64,
                    pulls: 0,
                };
                replay.push_back((at, decision));
            }
            last = *n;
        }
        // The decisions before `from` in its segment were replayed before that checkpoint.
        while replay
            .front()
            .is_some_and(|(at, _)| at.segment == from.segment && at.index < from.index)
        {
            replay.pop_front();
        }
        if let Some((at, Decision::Quiet { pulls })) = replay.front_mut()
            && at.segment == from.segment
            && at.index == from.index
            && from.pulls > 0
        {
            at.pulls = from.pulls;
            *pulls = pulls.saturating_sub(from.pulls).max(1);
        }
        let journal = Self::start(dir, last + 1)?;
        Ok((journal, replay))
    }

    /// Creates segment `segment`, empty.
    fn start(dir: &Path, segment: u64) -> anyhow::Result<Self> {
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

    /// Ends the current segment (synced) and starts the next; returns the place of its first
    /// decision, for the checkpoint.
    pub fn rotate(&mut self) -> anyhow::Result<At> {
        self.sync()?;
        let next = Self::start(&self.dir, self.segment + 1)?;
        *self = next;
        Ok(At {
            segment: self.segment,
            index: 0,
            pulls: 0,
        })
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

    fn decisions(replay: VecDeque<Replayed>) -> Vec<Decision> {
        replay.into_iter().map(|(_, d)| d).collect()
    }

    #[test]
    fn a_resumed_journal_replays_from_the_checkpoints_place_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::fresh(dir.path()).unwrap();
        journal.record(Decision::Batch { split: 0, count: 3 });
        journal.record(Decision::Quiet { pulls: 1 });
        journal.record(Decision::Quiet { pulls: 1 });
        let at = journal.rotate().unwrap();
        journal.record(Decision::Idle { split: 1 });
        journal.record(Decision::Batch { split: 2, count: 7 });
        journal.record(Decision::Quiet { pulls: 3 });
        journal.sync().unwrap();
        journal.record(Decision::Batch { split: 0, count: 1 });
        // Never synced, and a torn write after it: neither is replayed.
        let path = dir.path().join(format!("{}.log", at.segment));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0x00);
        std::fs::write(&path, &bytes).unwrap();
        drop(journal);

        let (mut resumed, replay) = Journal::resume(dir.path(), at).unwrap();
        let expected = [
            Decision::Idle { split: 1 },
            Decision::Batch { split: 2, count: 7 },
            Decision::Quiet { pulls: 3 },
        ];
        assert_eq!(decisions(replay.clone()), expected);
        // A checkpoint in the middle of the replay (one decision and one quiet read of the
        // next three replayed) records the place of what is left; decisions made after it
        // follow in the new segment, and nothing is replayed twice.
        let (mut middle, _) = replay[2];
        middle.pulls = 1;
        resumed.rotate().unwrap();
        resumed.record(Decision::Batch { split: 1, count: 2 });
        resumed.sync().unwrap();
        let (_, again) = Journal::resume(dir.path(), middle).unwrap();
        assert_eq!(
            decisions(again),
            [
                Decision::Quiet { pulls: 2 },
                Decision::Batch { split: 1, count: 2 }
            ]
        );
        // From the first segment: its decisions (quiet reads merged), then the rest.
        let start = At {
            segment: 0,
            index: 0,
            pulls: 0,
        };
        let (_, from_start) = Journal::resume(dir.path(), start).unwrap();
        assert_eq!(
            decisions(from_start)[..3],
            [
                Decision::Batch { split: 0, count: 3 },
                Decision::Quiet { pulls: 2 },
                Decision::Idle { split: 1 }
            ]
        );
    }

    #[test]
    fn a_missing_segment_is_refused_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::fresh(dir.path()).unwrap();
        let first = journal.rotate().unwrap();
        let at = journal.rotate().unwrap();
        journal.forget_before(at.segment);
        assert!(Journal::resume(dir.path(), first).is_err());
        assert!(Journal::resume(dir.path(), at).is_ok());
        // A fresh start forgets everything.
        Journal::fresh(dir.path()).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
    }
}
