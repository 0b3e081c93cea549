//! Checkpoint files: how a checkpoint's bytes reach the disk and come back, whatever is in them.
//!
//! A checkpoint is one file, `checkpoint-<id>.ckpt` (ids increase), in its pipeline's checkpoint
//! folder: a header — magic, format version, content length, SHA-256 of the content — then the
//! content. It is written to a temporary file, synced, renamed into place, and the folder synced,
//! so a crash leaves either the previous set of checkpoints or the new one, never a torn file
//! under a checkpoint's name; a file that is torn or altered anyway (a disk, a hand) fails its
//! checksum and the one before it is used. The newest [`KEEP`] checkpoints are kept.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The folder, inside a checkpoint folder, of the sources' read journals.
pub const JOURNALS: &str = "journal";

/// The folder of source `source`'s read journal, with checkpoints in `checkpoints`.
pub fn journal_dir(checkpoints: &Path, source: &str) -> PathBuf {
    checkpoints.join(JOURNALS).join(source)
}

/// The version of the checkpoint format this runtime writes and reads.
pub const FORMAT_VERSION: u32 = 2;
/// How many checkpoints a folder keeps: the newest, and one to fall back on.
pub const KEEP: usize = 2;

const MAGIC: &[u8; 8] = b"FLUMENCP";
const HEADER: usize = 8 + 4 + 8 + 32;
const PREFIX: &str = "checkpoint-";
const LOCK: &str = ".lock";
const SUFFIX: &str = ".ckpt";

/// A pipeline's checkpoint folder.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
    /// For tests of a crash in the middle of a write: how long to wait once the temporary file
    /// is written, before it is synced and renamed.
    pause_in_write: Option<std::time::Duration>,
    /// The folder's lock, while this process writes in it (see [`CheckpointDir::lock`]).
    lock: Option<std::sync::Arc<File>>,
}

/// Why a checkpoint cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreadable {
    /// Torn, altered or not a checkpoint: the one before it may be used.
    Damaged(String),
    /// Written in another format version: refused, never passed over silently.
    Version(u32),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Damaged(why) => f.write_str(why),
            Unreadable::Version(version) => write!(
                f,
                "format version {version}, this flumen reads version {FORMAT_VERSION}"
            ),
        }
    }
}

/// A checkpoint file found in a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its id: later checkpoints have larger ones.
    pub id: u64,
    /// Its file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
}

/// What [`CheckpointDir::newest`] found.
#[derive(Debug)]
pub struct Newest {
    /// The newest intact checkpoint and its content, if there is one.
    pub valid: Option<(Found, Vec<u8>)>,
    /// Each newer checkpoint that is not intact, and why.
    pub passed_over: Vec<String>,
}

impl CheckpointDir {
    /// The checkpoint folder `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| in_dir(dir, e))?;
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
            pause_in_write: None,
            lock: None,
        })
    }

    /// Takes the folder for this process — one run at a time writes a pipeline's checkpoints —
    /// or says who has it. The lock (`flock` on `.lock`) goes with the process, however it ends.
    /// A folder where the lock cannot be made (read-only) is used without it, with a warning.
    pub fn lock(mut self) -> anyhow::Result<Self> {
        let path = self.dir.join(LOCK);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            // A folder that cannot be written is not refused here: each checkpoint that cannot
            // be written says so, and the run goes on.
            Err(e) => {
                tracing::warn!(
                    "{}; running without the folder's lock",
                    in_dir(&self.dir, e)
                );
                return Ok(self);
            }
        };
        match file.try_lock() {
            Ok(()) => {
                // Who has it, for the message of the next one to try.
                file.set_len(0)?;
                write!(file, "{}", std::process::id())?;
                self.lock = Some(std::sync::Arc::new(file));
                Ok(self)
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                anyhow::bail!(
                    "the checkpoint folder {} is in use by another flumen run (process {}): \
                     one run at a time per checkpoint folder",
                    self.dir.display(),
                    holder.trim()
                )
            }
            Err(std::fs::TryLockError::Error(e)) => Err(in_dir(&self.dir, e).into()),
        }
    }

    /// Makes every write wait `pause` between writing its temporary file and renaming it into
    /// place, announcing it on standard error: how a test kills a run in the middle of a write.
    pub fn pausing_in_write(mut self, pause: std::time::Duration) -> Self {
        self.pause_in_write = Some(pause);
        self
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The checkpoints in the folder, oldest first (whether their content is intact is for
    /// [`CheckpointDir::read`] to say).
    pub fn list(&self) -> std::io::Result<Vec<Found>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| in_dir(&self.dir, e))? {
            let entry = entry.map_err(|e| in_dir(&self.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix(PREFIX)?.strip_suffix(SUFFIX))
                .and_then(|id| id.parse().ok())
            else {
                continue;
            };
            let size = entry.metadata().map_or(0, |m| m.len());
            found.push(Found {
                id,
                path: entry.path(),
                size,
            });
        }
        found.sort_by_key(|f| f.id);
        Ok(found)
    }

    /// Writes `content` as checkpoint `id` (durably: see the module's documentation), then
    /// removes all but the newest [`KEEP`]. Returns its file.
    pub fn write(&self, id: u64, content: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.dir.join(format!("{PREFIX}{id:020}{SUFFIX}"));
        let temporary = self.dir.join(format!(".{PREFIX}{id:020}.tmp"));
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&(content.len() as u64).to_le_bytes());
        header.extend_from_slice(&Sha256::digest(content));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temporary)?;
            file.write_all(&header)?;
            file.write_all(content)?;
            if let Some(pause) = self.pause_in_write {
                eprintln!("checkpoint {id}: pausing inside the write");
                std::thread::sleep(pause);
            }
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(std::io::Error::new(
                e.kind(),
                format!("cannot write checkpoint {}: {e}", path.display()),
            ));
        }
        let found = self.list()?;
        for old in found.iter().take(found.len().saturating_sub(KEEP)) {
            let _ = std::fs::remove_file(&old.path);
        }
        Ok(path)
    }

    /// Removes every checkpoint (and any temporary file a crashed write left); returns how
    /// many checkpoints there were.
    pub fn clear(&self) -> std::io::Result<usize> {
        let found = self.list()?;
        for checkpoint in &found {
            std::fs::remove_file(&checkpoint.path).map_err(|e| in_dir(&self.dir, e))?;
        }
        for entry in std::fs::read_dir(&self.dir).map_err(|e| in_dir(&self.dir, e))? {
            let path = entry.map_err(|e| in_dir(&self.dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(".tmp") && path.is_file() {
                let _ = std::fs::remove_file(&path);
            }
        }
        let journals = self.dir.join(JOURNALS);
        if journals.is_dir() {
            std::fs::remove_dir_all(&journals).map_err(|e| in_dir(&self.dir, e))?;
        }
        Ok(found.len())
    }

    /// The content of checkpoint `found`, if its header and checksum hold; else why not.
    pub fn read(&self, found: &Found) -> Result<Vec<u8>, Unreadable> {
        use Unreadable::Damaged;
        let mut bytes = Vec::with_capacity(found.size as usize);
        File::open(&found.path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(|e| Damaged(format!("cannot read it: {e}")))?;
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(Damaged("not a flumen checkpoint".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(Unreadable::Version(version));
        }
        let length = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
        let content = &bytes[HEADER..];
        if content.len() as u64 != length {
            return Err(Damaged(format!(
                "torn: {} bytes of content where its header says {length}",
                content.len()
            )));
        }
        if Sha256::digest(content).as_slice() != &bytes[20..HEADER] {
            return Err(Damaged("its checksum does not match its content".into()));
        }
        bytes.drain(..HEADER);
        Ok(bytes)
    }

    /// The newest checkpoint whose header and checksum hold, and why each newer one was passed
    /// over (to be logged). One of another format version stops the search: refused, with why.
    pub fn newest(&self) -> anyhow::Result<Newest> {
        let mut passed_over = Vec::new();
        for found in self.list()?.into_iter().rev() {
            match self.read(&found) {
                Ok(content) => {
                    return Ok(Newest {
                        valid: Some((found, content)),
                        passed_over,
                    });
                }
                Err(why @ Unreadable::Version(_)) => anyhow::bail!(
                    "{} is of {why}: resume it with the flumen that wrote it, or start afresh \
                     with --fresh",
                    found.path.display()
                ),
                Err(why) => passed_over.push(format!("{}: {why}", found.path.display())),
            }
        }
        Ok(Newest {
            valid: None,
            passed_over,
        })
    }
}

fn in_dir(dir: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(
        e.kind(),
        format!("checkpoint folder {}: {e}", dir.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_two_are_kept_and_the_newest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir::open(&dir.path().join("cp")).unwrap();
        for id in 1..=4u64 {
            checkpoints
                .write(id, format!("state {id}").as_bytes())
                .unwrap();
        }
        let ids: Vec<u64> = checkpoints.list().unwrap().iter().map(|f| f.id).collect();
        assert_eq!(ids, [3, 4]);
        let newest = checkpoints.newest().unwrap();
        let (found, content) = newest.valid.unwrap();
        assert_eq!((found.id, content), (4, b"state 4".to_vec()));
        assert!(newest.passed_over.is_empty());
        // Temporary files and strangers are not checkpoints.
        std::fs::write(checkpoints.path().join(".checkpoint-9.tmp"), "x").unwrap();
        std::fs::write(checkpoints.path().join("notes.txt"), "x").unwrap();
        assert_eq!(checkpoints.list().unwrap().len(), 2);
    }

    #[test]
    fn a_torn_or_altered_checkpoint_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir::open(dir.path()).unwrap();
        checkpoints.write(1, b"good old state").unwrap();
        let newest = checkpoints.write(2, b"newer state").unwrap();
        let whole = std::fs::read(&newest).unwrap();
        let cases: [(&str, Vec<u8>, &str); 3] = [
            ("torn", whole[..whole.len() - 3].to_vec(), "torn"),
            (
                "flipped",
                {
                    let mut flipped = whole.clone();
                    *flipped.last_mut().unwrap() ^= 1;
                    flipped
                },
                "checksum",
            ),
            ("empty", Vec::new(), "not a flumen checkpoint"),
        ];
        for (case, bytes, why) in cases {
            std::fs::write(&newest, &bytes).unwrap();
            let Newest { valid, passed_over } = checkpoints.newest().unwrap();
            let (found, content) = valid.unwrap();
            assert_eq!(
                (found.id, content),
                (1, b"good old state".to_vec()),
                "{case}"
            );
            assert_eq!(passed_over.len(), 1, "{case}");
            assert!(passed_over[0].contains(why), "{case}: {passed_over:?}");
        }
    }

    #[test]
    fn a_checkpoint_of_another_format_version_is_refused_not_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir::open(dir.path()).unwrap();
        checkpoints.write(1, b"good old state").unwrap();
        let newest = checkpoints.write(2, b"newer state").unwrap();
        let mut other = std::fs::read(&newest).unwrap();
        other[8] = 9;
        std::fs::write(&newest, other).unwrap();
        let error = checkpoints.newest().unwrap_err().to_string();
        assert!(error.contains("format version 9"), "{error}");
        assert!(error.contains(&newest.display().to_string()), "{error}");
    }

    #[test]
    fn one_process_at_a_time_takes_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let first = CheckpointDir::open(dir.path()).unwrap().lock().unwrap();
        let error = CheckpointDir::open(dir.path())
            .unwrap()
            .lock()
            .err()
            .unwrap()
            .to_string();
        let pid = std::process::id().to_string();
        assert!(error.contains("in use by another flumen run"), "{error}");
        assert!(error.contains(&pid), "{error}");
        // Clones (the writer's) share the lock; it goes when the last goes.
        let clone = first.clone();
        drop(first);
        assert!(CheckpointDir::open(dir.path()).unwrap().lock().is_err());
        drop(clone);
        assert!(CheckpointDir::open(dir.path()).unwrap().lock().is_ok());
        // The lock file is not a checkpoint.
        assert!(
            CheckpointDir::open(dir.path())
                .unwrap()
                .list()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_folder_that_cannot_be_written_says_so_and_keeps_what_it_had() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = CheckpointDir::open(dir.path()).unwrap();
        checkpoints.write(1, b"kept").unwrap();
        // A folder where the temporary file cannot be made: taken by a folder of that name.
        std::fs::create_dir(dir.path().join(format!(".{PREFIX}{:020}.tmp", 2))).unwrap();
        let error = checkpoints.write(2, b"lost").unwrap_err().to_string();
        assert!(error.starts_with("cannot write checkpoint"), "{error}");
        let newest = checkpoints.newest().unwrap();
        assert_eq!(newest.valid.unwrap().1, b"kept");
    }
}
