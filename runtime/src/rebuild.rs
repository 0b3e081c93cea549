//! `flumen run --watch`'s view of the UDF crates behind its modules: a module older than its
//! crate's sources is pointed out, and with `--build` a crate whose sources change is rebuilt
//! (Spin's `watch`); the new module file is what the reloader then swaps in.
//!
//! Which crate a module comes from is what `flumen build` noted beside it
//! ([`crate::toolchain::source_crate`]); modules built otherwise are left alone.

use crate::toolchain::{self, UdfCrate};
use notify::{RecursiveMode, Watcher};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

/// How long a crate's files must be quiet before it is rebuilt: editors and `cargo fmt` write in
/// several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A UDF crate and where its module goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The crate's folder.
    pub dir: PathBuf,
    /// The module built from it.
    pub module: PathBuf,
}

/// The crates behind `modules`, as `flumen build` noted them.
pub fn sources(modules: &[PathBuf]) -> Vec<Source> {
    let mut found: Vec<Source> = modules
        .iter()
        .filter_map(|module| {
            toolchain::source_crate(module).map(|dir| Source {
                dir,
                module: module.clone(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    found.dedup_by(|a, b| a.dir == b.dir);
    found
}

/// Why `source`'s module is out of date, if it is: a source file newer than it.
pub fn stale(source: &Source) -> Option<String> {
    let built = std::fs::metadata(&source.module)
        .and_then(|m| m.modified())
        .ok()?;
    let (changed, file) = toolchain::newest_source(&source.dir)?;
    (changed > built).then(|| {
        format!(
            "module {} is older than its source {}: run `flumen build {}`, or `flumen run \
             --watch --build` to rebuild and swap it in on every change",
            source.module.display(),
            file.display(),
            source.dir.display()
        )
    })
}

/// Builds `source`'s crate into its module's folder; says how it went in the log.
pub fn build(source: &Source) -> bool {
    let outcome = toolchain::detect().and_then(|toolchain| {
        let crates: Vec<UdfCrate> = toolchain::find_crates(&source.dir)?;
        let out_dir = source.module.parent().unwrap_or(Path::new("."));
        toolchain::build(&toolchain, &crates, out_dir)
    });
    match outcome {
        Ok(_) => {
            tracing::info!(crate_dir = %source.dir.display(), "rebuilt; the reloader swaps in what changed");
            true
        }
        Err(e) => {
            tracing::error!(crate_dir = %source.dir.display(), "rebuild failed (the running version stays): {e:#}");
            false
        }
    }
}

/// Watches each crate's `Cargo.toml` and `src/`, rebuilding a crate once its files have been
/// quiet for [`DEBOUNCE`] — and first those whose module is [`stale`] already. Runs for the life
/// of the process.
pub fn spawn(sources: Vec<Source>) -> anyhow::Result<()> {
    if sources.is_empty() {
        return Ok(());
    }
    let (sender, changes) = std::sync::mpsc::channel::<usize>();
    let dirs: Vec<PathBuf> = sources
        .iter()
        .map(|s| std::path::absolute(&s.dir).unwrap_or_else(|_| s.dir.clone()))
        .collect();
    let owners = dirs.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        for path in &event.paths {
            // A crate's own build output is not a change of its sources.
            let owner = owners.iter().position(|dir| {
                path.starts_with(dir)
                    && !path.starts_with(dir.join("target"))
                    && !path.starts_with(dir.join("out"))
            });
            if let Some(owner) = owner {
                let _ = sender.send(owner);
            }
        }
    })?;
    for dir in &dirs {
        watcher.watch(&dir.join("Cargo.toml"), RecursiveMode::NonRecursive)?;
        watcher.watch(&dir.join("src"), RecursiveMode::Recursive)?;
    }
    tracing::info!(
        "--build: rebuilding {} on change",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    std::thread::Builder::new()
        .name("flumen-rebuild".into())
        .spawn(move || {
            let _watcher = watcher;
            let mut pending = BTreeSet::new();
            for (owner, source) in sources.iter().enumerate() {
                if let Some(why) = stale(source) {
                    tracing::info!("{why}; rebuilding it now");
                    pending.insert(owner);
                }
            }
            loop {
                let next = match pending.is_empty() {
                    true => changes.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    false => changes.recv_timeout(DEBOUNCE),
                };
                match next {
                    Ok(owner) => {
                        pending.insert(owner);
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        for owner in std::mem::take(&mut pending) {
                            tracing::info!(crate_dir = %sources[owner].dir.display(), "source changed: rebuilding");
                            build(&sources[owner]);
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(())
}
