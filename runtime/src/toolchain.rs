//! `flumen build`: compiles UDF crates to `wasm32-unknown-unknown` modules, on any machine.
//!
//! Two ways, tried in order: rustup's `wasm32-unknown-unknown` target where it is installed; else
//! Debian's `rustc-web cargo-web rust-web-src` (a newer rustc with its source), which builds `std`
//! for the target itself (`RUSTC_BOOTSTRAP=1 -Zbuild-std=std,panic_abort`) and links with the
//! `rust-lld` of rustup's host toolchain. Nothing is downloaded from rustup's servers. Cargo keeps
//! the build incremental; a module file is rewritten only when its bytes change, so a watcher
//! sees only real changes.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-unknown-unknown";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_STD_SOURCE: &str = "/usr/lib/rustlib/src/rust/library/std";

/// Where flumen's own source is, if this binary was built from it and it is still there: the
/// SDK a new crate depends on, and the target folder every module build shares.
pub fn source_home() -> Option<PathBuf> {
    let home = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    home.join("sdk/Cargo.toml")
        .exists()
        .then(|| home.to_path_buf())
}

/// The SDK crate's folder: `FLUMEN_SDK`, else the one beside this binary's source.
pub fn sdk_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLUMEN_SDK") {
        return Ok(PathBuf::from(dir));
    }
    source_home().map(|home| home.join("sdk")).context(
        "cannot find flumen's SDK: this flumen was not built from a source tree that is still \
         there; set FLUMEN_SDK to the `sdk` folder of a flumen checkout",
    )
}

/// The one target folder every Wasm module build uses, whatever crate it is and wherever it
/// lies, so `std` for Wasm and the SDK are compiled once per machine: `FLUMEN_TARGET_DIR`, else
/// `target/wasm` of flumen's source tree, else `~/.cache/flumen/wasm-target`.
pub fn shared_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLUMEN_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(home) = source_home() {
        return home.join("target/wasm");
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("flumen/wasm-target")
}

/// The file beside module `module` that names the crate it was built from.
pub fn source_note(module: &Path) -> PathBuf {
    module.with_extension("source")
}

/// The crate module `module` was built from (its folder), as `flumen build` noted it.
pub fn source_crate(module: &Path) -> Option<PathBuf> {
    let manifest = std::fs::read_to_string(source_note(module)).ok()?;
    let dir = Path::new(manifest.trim()).parent()?.to_path_buf();
    dir.join("Cargo.toml").exists().then_some(dir)
}

/// The newest modification time of a crate's sources (`Cargo.toml`, `src/`), and which file.
pub fn newest_source(crate_dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut pending = vec![crate_dir.join("src")];
    let consider = |path: PathBuf, newest: &mut Option<(std::time::SystemTime, PathBuf)>| {
        if let Ok(modified) = std::fs::metadata(&path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(t, _)| modified > *t)
        {
            *newest = Some((modified, path));
        }
    };
    consider(crate_dir.join("Cargo.toml"), &mut newest);
    // Bounded: a crate's sources, not a whole disk.
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > 10_000 {
                return newest;
            }
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                consider(path, &mut newest);
            }
        }
    }
    newest
}

/// How modules get built on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Toolchain {
    /// rustup's toolchain with its `wasm32-unknown-unknown` target.
    Rustup,
    /// Debian's rustc-web and cargo-web building `std` from source, linked by `linker`.
    DebianBuildStd {
        /// The linker for `wasm32-unknown-unknown` (`rust-lld` or `lld`).
        linker: PathBuf,
    },
}

/// Finds a way to build for `wasm32-unknown-unknown`, or says what to install.
pub fn detect() -> anyhow::Result<Toolchain> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output();
    if let Ok(output) = installed
        && String::from_utf8_lossy(&output.stdout)
            .lines()
            .any(|l| l.trim() == TARGET)
    {
        return Ok(Toolchain::Rustup);
    }
    let debian = [DEBIAN_CARGO, DEBIAN_RUSTC, DEBIAN_STD_SOURCE]
        .iter()
        .all(|p| Path::new(p).exists());
    if debian {
        if let Some(linker) = find_rust_lld() {
            return Ok(Toolchain::DebianBuildStd { linker });
        }
        bail!(
            "Debian's rustc-web is installed but no rust-lld was found to link with: install a \
             rustup host toolchain (it ships rust-lld), or Debian's `lld` package"
        );
    }
    bail!(
        "cannot build for {TARGET}: run `rustup target add {TARGET}`, or on Debian \
         `apt-get install rustc-web cargo-web rust-web-src` (`make` does this when run as root)"
    )
}

/// `rust-lld` from rustup's host toolchain, or an `lld`/`wasm-ld` on the PATH.
fn find_rust_lld() -> Option<PathBuf> {
    let rustc = |args: &[&str]| -> Option<String> {
        let output = Command::new("rustc").args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    };
    if let (Some(sysroot), Some(version)) = (rustc(&["--print", "sysroot"]), rustc(&["-vV"])) {
        let host = version.lines().find_map(|l| l.strip_prefix("host: "))?;
        let lld = Path::new(sysroot.trim())
            .join("lib/rustlib")
            .join(host.trim())
            .join("bin/rust-lld");
        if lld.exists() {
            return Some(lld);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["rust-lld", "wasm-ld"].map(|name| dir.join(name)))
        .find(|candidate| candidate.exists())
}

/// A UDF crate to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdfCrate {
    /// The crate's `Cargo.toml`.
    pub manifest: PathBuf,
    /// Its package name.
    pub package: String,
}

/// The UDF crates (those with crate type `cdylib`) at `path`: a crate folder, or a folder of
/// crate folders such as `udfs/`.
pub fn find_crates(path: &Path) -> anyhow::Result<Vec<UdfCrate>> {
    let manifest = path.join("Cargo.toml");
    if manifest.exists() {
        return Ok(read_crate(&manifest)?.into_iter().collect());
    }
    let mut crates = Vec::new();
    let entries = std::fs::read_dir(path).with_context(|| {
        format!(
            "{} is neither a crate nor a folder of crates",
            path.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    for dir in dirs {
        let manifest = dir.join("Cargo.toml");
        if manifest.exists() {
            crates.extend(read_crate(&manifest)?);
        }
    }
    Ok(crates)
}

fn read_crate(manifest: &Path) -> anyhow::Result<Option<UdfCrate>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let package = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .with_context(|| format!("{} has no package name", manifest.display()))?;
    let cdylib = table
        .get("lib")
        .and_then(|l| l.get("crate-type"))
        .and_then(|t| t.as_array())
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    Ok(cdylib.then(|| UdfCrate {
        manifest: manifest.to_path_buf(),
        package: package.to_string(),
    }))
}

/// Builds `crates` and copies each module to `out_dir/<lib name>.wasm`; returns the module paths.
pub fn build(
    toolchain: &Toolchain,
    crates: &[UdfCrate],
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut modules = Vec::new();
    for krate in crates {
        let target_dir = shared_target_dir();
        let mut cargo = match toolchain {
            Toolchain::Rustup => Command::new("cargo"),
            Toolchain::DebianBuildStd { linker } => {
                let mut cargo = Command::new(DEBIAN_CARGO);
                cargo
                    .env("RUSTC_BOOTSTRAP", "1")
                    .env("RUSTC", DEBIAN_RUSTC)
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", linker)
                    .arg("-Zbuild-std=std,panic_abort");
                cargo
            }
        };
        cargo
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(&krate.manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .args(["-p", &krate.package])
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3")
            .env("CARGO_PROFILE_RELEASE_LTO", "true")
            .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
            .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        tracing::info!(package = %krate.package, target = %target_dir.display(), "building module");
        let built = run_and_collect(cargo, krate, "wasm", out_dir)?;
        for module in &built {
            // Which crate it comes from: what `flumen run --watch` checks it against.
            let manifest = std::path::absolute(&krate.manifest)?;
            let note = source_note(module);
            if std::fs::read_to_string(&note).ok().as_deref() != Some(&*manifest.to_string_lossy())
            {
                std::fs::write(&note, manifest.to_string_lossy().as_bytes())
                    .with_context(|| format!("cannot write {}", note.display()))?;
            }
        }
        modules.extend(built);
    }
    Ok(modules)
}

/// Runs a cargo build of `krate` and copies the artifacts ending in `.{extension}` it reports
/// to `out_dir`.
fn run_and_collect(
    mut cargo: Command,
    krate: &UdfCrate,
    extension: &str,
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let output = cargo
        .output()
        .with_context(|| format!("cannot run cargo to build {}", krate.package))?;
    if !output.status.success() {
        bail!("building {} failed (cargo said why above)", krate.package);
    }
    let built = artifacts(&output.stdout, extension);
    if built.is_empty() {
        bail!("building {} produced no .{extension} file", krate.package);
    }
    let mut copied = Vec::new();
    for artifact in built {
        let name = artifact
            .file_name()
            .with_context(|| format!("odd artifact path {}", artifact.display()))?;
        let dest = out_dir.join(name);
        copy_if_changed(&artifact, &dest)?;
        copied.push(dest);
    }
    Ok(copied)
}

/// Builds `crates` for this machine and copies each shared library to `out_dir`: the native
/// backend's modules. Uses the host toolchain and the crate's usual target folder.
pub fn build_native(crates: &[UdfCrate], out_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut libraries = Vec::new();
    for krate in crates {
        tracing::info!(package = %krate.package, "building native library");
        let mut cargo = Command::new("cargo");
        cargo
            .args([
                "build",
                "--release",
                "--message-format=json-render-diagnostics",
            ])
            .arg("--manifest-path")
            .arg(&krate.manifest)
            .args(["-p", &krate.package])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let extension = std::env::consts::DLL_EXTENSION;
        libraries.extend(run_and_collect(cargo, krate, extension, out_dir)?);
    }
    Ok(libraries)
}

/// The files ending in `.{extension}` in cargo's JSON messages.
fn artifacts(messages: &[u8], extension: &str) -> Vec<PathBuf> {
    messages
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .filter(|f| f.extension().is_some_and(|e| e == extension))
        .collect()
}

fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    // Write beside, then rename: a watcher never sees half a module.
    let partial = to.with_extension("partial");
    std::fs::write(&partial, &bytes)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, to).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cdylib_crates_are_udfs() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("Cargo.toml"), body).unwrap();
        };
        write(
            "a",
            "[package]\nname = \"a\"\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n",
        );
        write("b", "[package]\nname = \"b\"\n");
        let crates = find_crates(dir.path()).unwrap();
        assert_eq!(crates.len(), 1);
        assert_eq!(crates[0].package, "a");
        assert_eq!(find_crates(&dir.path().join("a")).unwrap().len(), 1);
        assert!(find_crates(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn artifacts_are_read_from_cargo_messages() {
        let messages = br#"{"reason":"compiler-artifact","target":{"kind":["cdylib","rlib"]},"filenames":["/t/x.wasm","/t/libx.rlib"]}
{"reason":"compiler-artifact","target":{"kind":["proc-macro"]},"filenames":["/t/libm.so"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            artifacts(messages, "wasm"),
            vec![PathBuf::from("/t/x.wasm")]
        );
    }
}
