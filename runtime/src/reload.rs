//! Hot reload, outside the running pipeline: a thread that, when the pipeline file or one of its
//! modules changes (watched with `notify`, parent folders included so editors' rename-saves are
//! seen, debounced) or when SIGHUP asks, loads, checks and initialises the new version of the
//! pipeline while the old one keeps running, then hands it to the executor, which swaps it in at a
//! batch boundary ([`crate::executor::Pipeline::apply`]). A version that does not load leaves the
//! running pipeline alone and says why in one line.

use crate::config::ConfigErrors;
use crate::guest::Sandbox;
use crate::status::{ReloadOutcome, SharedStatus};
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

/// Starts the reloader thread. It reads `triggers` (which the watcher, if `watch`, also feeds)
/// and sends each successfully prepared version on `prepared`.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    path: PathBuf,
    sandbox: Arc<Sandbox>,
    options: Options,
    watch: bool,
    files: BTreeSet<PathBuf>,
    triggers: Receiver<Trigger>,
    trigger_sender: Sender<Trigger>,
    prepared: Sender<Prepared>,
    status: Option<SharedStatus>,
) -> anyhow::Result<()> {
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
                    crate::prepare(&path, &sandbox, options)
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
                        if prepared.send(next).is_err() {
                            return;
                        }
                    }
                    Err(errors) => {
                        let line = errors.first_line();
                        tracing::error!("reload failed: {line}");
                        if let Some(Ok(mut status)) = status.as_ref().map(|s| s.lock()) {
                            status.last_reload = Some(ReloadOutcome::now(false, vec![line]));
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
