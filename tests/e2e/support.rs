//! The harness: builds the modules once, gives each test a folder, runs `flumen`, reads outputs.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A `flumen` command, run from the repository root.
pub fn flumen() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flumen"));
    command.current_dir(workspace()).env("FLUMEN_LOG", "warn");
    command
}

/// The folder of built modules; builds every UDF crate (once per test run) with `flumen build`.
pub fn modules() -> &'static Path {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(|| {
        let out = workspace().join("target/flumen");
        let status = flumen()
            .args(["build", "udfs", "tests/udfs", "--out-dir"])
            .arg(&out)
            .status()
            .expect("cannot run flumen build");
        assert!(status.success(), "flumen build failed");
        out
    })
}

/// The module folder with the native form of every UDF built too (`flumen build --native`).
pub fn native_modules() -> &'static Path {
    static NATIVE: OnceLock<PathBuf> = OnceLock::new();
    NATIVE.get_or_init(|| {
        let out = modules().to_path_buf();
        let status = flumen()
            .args(["build", "udfs", "tests/udfs", "--native", "--out-dir"])
            .arg(&out)
            .status()
            .expect("cannot run flumen build --native");
        assert!(status.success(), "flumen build --native failed");
        out
    })
}

/// A test's own folder with a pipeline and its files.
pub struct Scenario {
    pub dir: tempfile::TempDir,
}

impl Scenario {
    pub fn new() -> Self {
        Scenario {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Writes `pipeline.toml`, with `{modules}` replaced by the module folder and `{dir}` by this
    /// scenario's folder.
    pub fn pipeline(&self, toml: &str) -> PathBuf {
        let text = toml
            .replace("{modules}", &modules().display().to_string())
            .replace("{dir}", &self.dir.path().display().to_string());
        self.write("pipeline.toml", text)
    }

    /// `flumen ARGS…` with `envs` set.
    pub fn flumen(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        flumen()
            .args(args)
            .envs(envs.iter().copied())
            .output()
            .unwrap()
    }

    /// `flumen validate` of this scenario's pipeline, expected to fail: its error lines.
    pub fn validate_errors(&self, toml: &str) -> String {
        let pipeline = self.pipeline(toml);
        let output = flumen().arg("validate").arg(&pipeline).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
        text(&output.stderr)
    }

    /// `flumen run` of this scenario's pipeline, expected to succeed.
    pub fn run(&self, toml: &str) -> Output {
        let pipeline = self.pipeline(toml);
        let output = flumen().arg("run").arg(&pipeline).output().unwrap();
        assert!(
            output.status.success(),
            "flumen run failed: {}",
            text(&output.stderr)
        );
        output
    }

    /// `flumen run PIPELINE --summary-json …`, expected to succeed with every record accounted
    /// for (see [`assert_accounted`]).
    pub fn run_accounted(&self, pipeline: &Path) {
        let summary = self.path("summary.json");
        let output = flumen()
            .arg("run")
            .arg(pipeline)
            .arg("--summary-json")
            .arg(&summary)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "flumen run failed: {}",
            text(&output.stderr)
        );
        assert_accounted(&serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap());
    }

    /// The JSON values of a JSON Lines file of this scenario.
    pub fn jsonl(&self, name: &str) -> Vec<Value> {
        read_jsonl(&self.path(name))
    }
}

/// Asserts that a run's summary accounts for every record, stage by stage: an operator's input
/// records were produced from, filtered, windowed, late or dead letters; a source's were
/// passed on or dead letters.
pub fn assert_accounted(summary: &Value) {
    let count = |stage: &Value, key: &str| stage[key].as_u64().unwrap_or(0);
    for (name, stage) in summary["stages"].as_object().unwrap() {
        let records_in = count(stage, "records_in");
        let accounted = match stage["kind"].as_str() {
            Some("operator") => ["produced", "filtered", "windowed", "late", "dead_letters"]
                .iter()
                .map(|k| count(stage, k))
                .sum(),
            Some("source") => {
                stage["outputs"]["main"].as_u64().unwrap() + count(stage, "dead_letters")
            }
            _ => records_in,
        };
        assert_eq!(
            records_in, accounted,
            "stage `{name}` does not add up: {stage}"
        );
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` to its end; it must succeed (else the test fails with what it printed).
pub fn succeed(command: &mut Command) -> Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Runs `program ARGS` with `input` on its standard input, to its end; `package` says where the
/// program comes from if it is missing.
pub fn piped(program: &str, args: &[&str], input: &[u8], package: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} ({package}; `make test` installs it): {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// JSON values in a canonical order, to compare outputs as sets (with multiplicity).
pub fn sorted(mut values: Vec<Value>) -> Vec<Value> {
    values.sort_by_key(|v| v.to_string());
    values
}

/// Asserts two collections of JSON values are equal as multisets, showing a few differences
/// rather than both collections.
pub fn assert_same_set(what: &str, actual: Vec<Value>, expected: Vec<Value>) {
    let count = |values: Vec<Value>| {
        let mut counts = std::collections::BTreeMap::<String, i64>::new();
        for v in values {
            *counts.entry(v.to_string()).or_default() += 1;
        }
        counts
    };
    let (actual_n, expected_n) = (actual.len(), expected.len());
    let (a, e) = (count(actual), count(expected));
    let extra: Vec<_> = a
        .iter()
        .filter(|(k, n)| e.get(*k) < Some(n))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    let missing: Vec<_> = e
        .iter()
        .filter(|(k, n)| a.get(*k) < Some(n))
        .map(|(k, _)| k)
        .take(5)
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what}: {actual_n} lines, expected {expected_n}\n  unexpected: {extra:#?}\n  missing: {missing:#?}"
    );
}

/// The reference pipeline with its modules from the test build.
pub fn reference_pipeline(scenario: &Scenario) -> PathBuf {
    let text = std::fs::read_to_string(workspace().join("pipelines/orders.toml")).unwrap();
    let text = text.replace("../target/flumen", &modules().display().to_string());
    scenario.write("orders.toml", text)
}

/// A `flumen run` in the background, for tests of a live pipeline.
pub struct Live {
    child: std::process::Child,
    stderr: PathBuf,
}

impl Live {
    /// Starts `flumen run ARGS…` with `envs`, its standard error going to `stderr`.
    pub fn start(args: &[&str], envs: &[(&str, &std::ffi::OsStr)], stderr: PathBuf) -> Live {
        Self::start_with(&workspace(), args, envs, stderr)
    }

    /// Starts `flumen run ARGS…` in folder `dir`, its standard error going to `stderr`.
    pub fn start_in(dir: &Path, args: &[&str], stderr: PathBuf) -> Live {
        Self::start_with(dir, args, &[], stderr)
    }

    fn start_with(
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &std::ffi::OsStr)],
        stderr: PathBuf,
    ) -> Live {
        let log = std::fs::File::create(&stderr).unwrap();
        let child = flumen()
            .current_dir(dir)
            .arg("run")
            .args(args)
            .envs(envs.iter().copied())
            .env("FLUMEN_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Live { child, stderr }
    }

    /// The process id of the running `flumen`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the log holds `needle` `count` times (panics after a generous minute).
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        wait_until(
            &format!("{count} × {needle:?} in the log"),
            || self.log().matches(needle).count() >= count,
            || self.log(),
        );
    }

    /// Kills it with SIGKILL, as a crash would, and waits until it is gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        self.child.wait().unwrap();
    }

    /// Waits until `done` holds or the run has exited (panics after a generous minute).
    pub fn wait_unless_exited(&mut self, what: &str, mut done: impl FnMut() -> bool) {
        let log = self.stderr.clone();
        let child = &mut self.child;
        wait_until(
            what,
            || done() || child.try_wait().unwrap().is_some(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits for it to exit by itself (panics after a generous minute).
    pub fn wait(mut self) -> std::process::ExitStatus {
        let log = self.stderr.clone();
        wait_until(
            "the run to end",
            || self.child.try_wait().unwrap().is_some(),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to the admin endpoint: the status line and the body.
pub fn http(address: &str, method: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// `127.0.0.1:PORT` with a port free right now, for an admin endpoint.
pub fn free_loopback_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Polls `done` until it holds; after a minute, fails with `what` and `context()`.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// How many lines a file has (0 if it does not exist yet).
pub fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Appends `text` to the file at `path`.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The ids of the checkpoints in checkpoint folder `dir`, oldest first.
pub fn checkpoint_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix("checkpoint-")?
                        .strip_suffix(".ckpt")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}
