//! The UDF author's path, as a newcomer takes it: `flumen new udf` anywhere on the machine →
//! `cargo test` → `flumen build` → `flumen run --watch --build` → an edit hot-swapped in.

use crate::support::{Live, flumen, modules, succeed, wait_until};
use std::path::Path;
use std::process::Command;

/// `cargo test` in `dir`, sharing `target` between the crates of one test.
fn cargo_test(dir: &Path, target: &Path) {
    let out = Command::new("cargo")
        .args(["test", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "cargo test in {}:\n{text}\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every kind `flumen new udf` makes is a crate outside the repository whose unit test passes
/// as created; a name that cannot be a crate's is refused.
#[test]
fn every_kind_of_new_udf_tests_green_as_created() {
    let place = tempfile::tempdir().unwrap();
    let target = place.path().join("shared-target");
    for kind in [
        "map",
        "filter",
        "filter-map",
        "flat-map",
        "process",
        "aggregate",
    ] {
        let name = format!("my-{kind}");
        succeed(
            flumen()
                .args(["new", "udf", &name, "--kind", kind, "--dir"])
                .arg(place.path().join(&name)),
        );
        let dir = place.path().join(&name);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let sdk = crate::support::workspace().join("sdk");
        assert!(
            manifest.contains(&format!("path = \"{}\"", sdk.display())),
            "{manifest}"
        );
        cargo_test(&dir, &target);
    }
    let refused = flumen().args(["new", "udf", "Bad Name"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be a name"));
}

/// A crate made by `flumen new` outside the repository builds with `flumen build` (into the
/// machine's shared target folder), runs live under `--watch --build`, and an edit of its source
/// is rebuilt and hot-swapped in, state kept, while records flow.
#[test]
fn a_new_udf_is_built_run_and_hot_swapped_on_edit() {
    modules();
    let place = tempfile::tempdir().unwrap();
    let dir = place.path().join("big-orders");
    succeed(
        flumen()
            .args(["new", "udf", "big-orders", "--kind", "process", "--dir"])
            .arg(&dir),
    );
    succeed(flumen().arg("build").current_dir(&dir));
    let module = dir.join("target/flumen/big_orders.wasm");
    assert!(module.exists());
    // The build used the shared target folder, not one of the crate's own.
    assert!(!dir.join("target/wasm32-unknown-unknown").exists());
    assert!(!dir.join("target/release").exists());

    let live = Live::start_in(
        &dir,
        &["pipeline.toml", "--watch", "--build"],
        place.path().join("stderr.log"),
    );
    live.wait_for_log("--build: rebuilding", 1);
    let out = dir.join("out/big-orders.jsonl");
    wait_until(
        "big spenders",
        || crate::support::line_count(&out) > 0,
        || live.log(),
    );
    // A module older than its source is pointed out without --build.
    let lib = dir.join("src/lib.rs");
    let text = std::fs::read_to_string(&lib).unwrap();
    let edited = text.replace(
        "(before < params.threshold_cents && after >= params.threshold_cents)",
        "(before < params.threshold_cents / 2 && after >= params.threshold_cents / 2)",
    );
    assert_ne!(text, edited);
    std::fs::write(&lib, edited).unwrap();
    live.wait_for_log("source changed: rebuilding", 1);
    live.wait_for_log("swapped operator `big_orders`", 1);
    assert!(live.log().contains("state kept"), "{}", live.log());
    assert!(live.terminate().success());

    // Without --build, a stale module is named with what to do.
    std::fs::write(
        &lib,
        format!("{}\n// touched\n", std::fs::read_to_string(&lib).unwrap()),
    )
    .unwrap();
    let stale = Live::start_in(
        &dir,
        &["pipeline.toml", "--watch"],
        place.path().join("stale.log"),
    );
    stale.wait_for_log("is older than its source", 1);
    assert!(stale.log().contains("flumen build"), "{}", stale.log());
    assert!(stale.terminate().success());
}

/// `flumen test` on the reference pipeline's own `[[tests]]` (expected records from the spec):
/// they pass; a case expecting another score fails with a diff and exit 1; a misspelled key in a
/// case is refused with the file, line and key, exit 2.
#[test]
fn flumen_test_passes_fails_with_a_diff_and_refuses_a_malformed_case() {
    modules();
    let scenario = crate::support::Scenario::new();
    let toml = crate::support::reference_pipeline(&scenario);
    let test = |file: &Path| {
        let out = flumen().arg("test").arg(file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, _) = test(&toml);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");

    let text = std::fs::read_to_string(&toml).unwrap();
    let wrong = scenario.write(
        "wrong.toml",
        text.replace("score = 40, flagged = false", "score = 90, flagged = true"),
    );
    let (code, stdout, _) = test(&wrong);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("test a valid order is scored, a bad one rejected ... FAILED"));
    assert!(
        stdout.contains(r#"- {"flagged":true,"order_id":1,"score":90,"user_id":7}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"+ {"flagged":false,"order_id":1,"score":40,"user_id":7}"#),
        "{stdout}"
    );
    assert!(stdout.contains("2 passed, 1 failed"), "{stdout}");

    let malformed = scenario.write(
        "malformed.toml",
        text.replace(
            "from = \"rejected\"\nrecords",
            "from = \"rejected\"\nrecods",
        ),
    );
    let line = std::fs::read_to_string(&malformed)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("recods"))
        .unwrap()
        + 1;
    let (code, _, stderr) = test(&malformed);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("malformed.toml:{line}:"))
            && stderr.contains("unknown field `recods`"),
        "{stderr}"
    );
}

/// A bounded run on a terminal (a pseudo-terminal from `script`) redraws a progress line —
/// records, rate, ETA — on standard error; with standard error not a terminal, it writes none.
#[test]
fn a_long_bounded_run_on_a_terminal_shows_progress() {
    let place = tempfile::tempdir().unwrap();
    succeed(
        flumen()
            .current_dir(place.path())
            .args(["new", "pipeline", "slow"]),
    );
    let file = place.path().join("slow.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace("count = 10_000", "count = 3000\nrate = 1000"),
    )
    .unwrap();
    let binary = env!("CARGO_BIN_EXE_flumen");
    let on_tty = succeed(
        Command::new("script")
            .args(["-qfec", &format!("{binary} run slow.toml"), "/dev/null"])
            .current_dir(place.path())
            .env("FLUMEN_LOG", "warn"),
    );
    let shown = String::from_utf8_lossy(&on_tty.stdout);
    assert!(
        shown.contains(" records · ") && shown.contains("/s · ETA "),
        "{shown}"
    );
    let piped = succeed(
        flumen()
            .current_dir(place.path())
            .args(["run", "slow.toml"]),
    );
    assert!(!String::from_utf8_lossy(&piped.stderr).contains(" records · "));
}

/// Every Rust snippet of the README is a crate's whole `src/lib.rs`: each compiles as shown
/// and its tests pass.
#[test]
fn the_readme_rust_snippets_compile_and_their_tests_pass() {
    let readme = std::fs::read_to_string(crate::support::workspace().join("README.md")).unwrap();
    let mut snippets = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```rust" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            snippets.push(body.join("\n"));
        }
    }
    assert!(snippets.len() >= 3, "{} Rust snippets", snippets.len());
    let place = tempfile::tempdir().unwrap();
    let target = place.path().join("shared-target");
    let sdk = crate::support::workspace().join("sdk");
    for (i, snippet) in snippets.iter().enumerate() {
        let dir = place.path().join(format!("snippet-{i}"));
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            format!(
                "[package]\nname = \"snippet-{i}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
                 [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\n\
                 flumen-sdk = {{ path = \"{}\" }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
                 [dev-dependencies]\nserde_json = \"1\"\n\n[workspace]\n",
                sdk.display()
            ),
        )
        .unwrap();
        std::fs::write(dir.join("src/lib.rs"), snippet).unwrap();
        cargo_test(&dir, &target);
    }
}
