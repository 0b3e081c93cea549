//! Hot reload, outside the running pipeline: a thread that, when the pipeline file or one of its
//! modules changes (watched with `notify`, parent folders included so editors' rename-saves are
//! seen, debounced) or when SIGHUP asks, loads, checks and initialises the new version of the
//! pipeline while the old one keeps running, then hands it to the executor, which swaps it in at a
//! batch boundary ([`crate::executor::Pipeline::apply`]). A version that does not load leaves the
//! running pipeline alone and says why in one line.

use crate::config::ConfigErrors;
use crate::guest::Sandbox;
use crate::plan::Plan;
use crate::{Options, Prepared};
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// How long files must be quiet before a reload starts: editors write in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Why a reload is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    FileChanged,
    /// SIGHUP, or the admin endpoint.
    Asked,
}

/// The files a pipeline depends on: the pipeline file and its modules.
pub fn watched_files(path: &Path, prepared: &Prepared) -> BTreeSet<PathBuf> {
    std::iter::once(path.to_path_buf())
        .chain(prepared.config.operators.iter().map(|o| o.module.clone()))
        .map(|p| absolute(&p))
        .collect()
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// What the reloader made of the files as they are now.
pub enum Version {
    /// A version ready to swap in.
    Ready(Box<Prepared>),
    /// Why the files do not make one (its first line), for the executor to report.
    Failed(String),
}

/// The executor's end of the reloader: the versions to swap in, and where it says whether each
/// one was (the reloader diffs the next version against the one running).
pub struct Reloads {
    /// Versions to swap in, in order.
    pub versions: Receiver<Version>,
    /// Whether each `Version::Ready` was swapped in.
    pub outcomes: Sender<bool>,
}

/// The reloader's end: where it sends versions and hears whether they were swapped in.
pub struct Link {
    /// Where versions go.
    pub versions: Sender<Version>,
    /// Whether each `Version::Ready` was swapped in.
    pub outcomes: Receiver<bool>,
}

/// A connected pair of ends.
pub fn link() -> (Link, Reloads) {
    let (versions, versions_in) = std::sync::mpsc::channel();
    let (outcomes_out, outcomes) = std::sync::mpsc::channel();
    let link = Link { versions, outcomes };
    let reloads = Reloads {
        versions: versions_in,
        outcomes: outcomes_out,
    };
    (link, reloads)
}

/// What the reloader reloads, and how.
pub struct Reloader {
    /// The pipeline file.
    pub path: PathBuf,
    /// The sandbox modules load into.
    pub sandbox: Arc<Sandbox>,
    /// How stages are prepared (as at start).
    pub options: Options,
    /// Whether to watch the pipeline file and its modules (else only `Trigger::Asked` reloads).
    pub watch: bool,
    /// The plan running at start: each version is diffed against the one running, so only the
    /// stages it swaps or adds are instantiated.
    pub running: Plan,
}

/// Starts the reloader thread. It reads `triggers` (which the watcher, if `watch`, also feeds),
/// sends each successfully prepared version over `link`, and waits to hear whether it was
/// swapped in before preparing the next.
pub fn spawn(
    reloader: Reloader,
    files: BTreeSet<PathBuf>,
    triggers: Receiver<Trigger>,
    trigger_sender: Sender<Trigger>,
    link: Link,
) -> anyhow::Result<()> {
    let Reloader {
        path,
        sandbox,
        options,
        watch,
        mut running,
    } = reloader;
    let mut watcher = if watch {
        let sender = trigger_sender.clone();
        let names = Arc::new(std::sync::Mutex::new(files.clone()));
        let seen = names.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            let relevant = seen
                .lock()
                .is_ok_and(|files| event.paths.iter().any(|p| files.contains(&absolute(p))));
            if relevant {
                let _ = sender.send(Trigger::FileChanged);
            }
        })?;
        Some((watcher, names, BTreeSet::new()))
    } else {
        None
    };
    if let Some((watcher, _, dirs)) = watcher.as_mut() {
        watch_folders(watcher, dirs, &files);
    }
    std::thread::Builder::new()
        .name("flumen-reload".into())
        .spawn(move || {
            while triggers.recv().is_ok() {
                loop {
                    match triggers.recv_timeout(DEBOUNCE) {
                        Ok(_) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                tracing::info!(pipeline = %path.display(), "reloading");
                // Whatever a module or a file does, the reloader keeps watching: a panic while
                // preparing is a failed reload like any other.
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    crate::prepare_reload(&path, &sandbox, options, &running)
                }))
                .unwrap_or_else(|panic| Err(ConfigErrors::internal(&path, panic_text(&panic))));
                match attempt {
                    Ok(next) => {
                        let files = watched_files(&path, &next);
                        if let Some((watcher, names, dirs)) = watcher.as_mut() {
                            if let Ok(mut names) = names.lock() {
                                names.clone_from(&files);
                            }
                            watch_folders(watcher, dirs, &files);
                        }
                        let plan = next.plan.clone();
                        if link.versions.send(Version::Ready(Box::new(next))).is_err() {
                            return;
                        }
                        match link.outcomes.recv() {
                            Ok(true) => running = plan,
                            Ok(false) => {}
                            Err(_) => return,
                        }
                    }
                    Err(errors) => {
                        if link
                            .versions
                            .send(Version::Failed(errors.first_line()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        })?;
    Ok(())
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Watches the folder of every file (not the file: an editor's rename-save replaces it).
fn watch_folders(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    files: &BTreeSet<PathBuf>,
) {
    let wanted: BTreeSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    for dir in watched.difference(&wanted) {
        let _ = watcher.unwatch(dir);
    }
    for dir in wanted.difference(watched) {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(folder = %dir.display(), "cannot watch: {e}");
        }
    }
    *watched = wanted;
}
