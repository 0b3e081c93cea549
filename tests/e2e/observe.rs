//! Seeing a pipeline run: `GET /metrics` checked by Prometheus' own parser (`promtool`) and
//! against the end-of-run summary, and the web view in headless Chromium, driven over the
//! DevTools protocol, against a real running reference pipeline.

use crate::support::{
    Live, Scenario, append, free_loopback_address, http, modules, piped, reference_pipeline,
    succeed, wait_until, workspace,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Generated orders, as `flumen gen orders` writes them.
fn orders(count: usize, seed: u64) -> String {
    let out = succeed(
        crate::support::flumen()
            .args(["gen", "orders", "--count", &count.to_string()])
            .args(["--seed", &seed.to_string()]),
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every stage of a pipeline file: sources, operators, sinks.
fn stage_names(pipeline: &Path) -> BTreeSet<String> {
    let table: toml::Table = std::fs::read_to_string(pipeline)
        .unwrap()
        .replace("${CHECKPOINT_INTERVAL_MS:-1000}", "1000")
        .replace("${FOLLOW:-false}", "false")
        .parse()
        .unwrap();
    ["sources", "operators", "sinks"]
        .iter()
        .flat_map(|kind| table[*kind].as_table().unwrap().keys().cloned())
        .collect()
}

/// Samples of a Prometheus text exposition: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// `curl ADMIN/metrics` on the reference pipeline: Prometheus' parser accepts it, and once the
/// run has ended its counters are the summary's, stage by stage and port by port.
#[test]
fn metrics_are_prometheus_and_equal_the_summary() {
    modules();
    let scenario = Scenario::new();
    let input = scenario.write("orders.jsonl", orders(6000, 11));
    let toml = reference_pipeline(&scenario);
    let address = free_loopback_address();
    let summary_path = scenario.path("summary.json");
    let live = Live::start(
        &[
            toml.to_str().unwrap(),
            "--admin",
            &address,
            "--keep-serving",
            "--summary-json",
            summary_path.to_str().unwrap(),
        ],
        &[
            ("ORDERS", input.as_os_str()),
            ("OUT_DIR", scenario.path("out").as_os_str()),
        ],
        scenario.path("stderr.log"),
    );
    live.wait_for_log("serving the admin endpoint until SIGINT", 1);
    let (head, text) = http(&address, "GET", "/metrics");
    assert!(head.contains("200"), "{head}");
    let promtool = std::env::var("FLUMEN_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let checked = piped(
        &promtool,
        &["check", "metrics"],
        text.as_bytes(),
        "Debian's `prometheus`",
    );
    assert!(
        checked.status.success(),
        "promtool refused the metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let got = samples(&text);
    let summary: Value = serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();
    let stages = summary["stages"].as_object().unwrap();
    assert_eq!(stages.len(), stage_names(&toml).len());
    for (name, stage) in stages {
        let kind = stage["kind"].as_str().unwrap();
        let labels = format!("{{stage=\"{name}\",kind=\"{kind}\"}}");
        let metric = |metric: &str| {
            let key = format!("flumen_{metric}_total{labels}");
            *got.get(&key)
                .unwrap_or_else(|| panic!("no {key} in\n{text}"))
        };
        assert_eq!(
            metric("stage_records_in"),
            stage["records_in"].as_f64().unwrap()
        );
        assert_eq!(
            metric("stage_dead_letters"),
            stage["dead_letters"].as_f64().unwrap()
        );
        if kind == "operator" {
            assert_eq!(
                metric("stage_late_records"),
                stage["late"].as_f64().unwrap()
            );
            assert_eq!(
                metric("stage_filtered"),
                stage["filtered"].as_f64().unwrap()
            );
            assert_eq!(
                metric("stage_failed_windows"),
                stage["failed_windows"].as_f64().unwrap()
            );
            assert!(metric("stage_busy_seconds") > 0.0, "{name} never busy");
        }
        for (port, n) in stage["outputs"].as_object().unwrap() {
            let key = format!("flumen_stage_records_out_total{{stage=\"{name}\",port=\"{port}\"}}");
            assert_eq!(got.get(&key), n.as_f64().as_ref(), "{key}");
        }
    }
    // Stateful stages hold keys (those without a TTL: `dedupe` forgets at the end of time); the
    // file source has read its whole input.
    // Each stage's partitions received all its records (one partition here).
    for (name, stage) in stages.iter().filter(|(_, s)| s["kind"] == "operator") {
        let key =
            format!("flumen_stage_partition_records_in_total{{stage=\"{name}\",partition=\"0\"}}");
        assert_eq!(
            got.get(&key),
            stage["records_in"].as_f64().as_ref(),
            "{key}"
        );
    }
    let keys =
        |stage: &str| got[&format!("flumen_stage_state_keys{{stage=\"{stage}\",partition=\"0\"}}")];
    assert!(keys("stock") > 0.0 && keys("score") > 0.0);
    assert_eq!(got["flumen_source_lag_bytes{source=\"orders\"}"], 0.0);
    assert_eq!(got["flumen_reloads_total{outcome=\"ok\"}"], 0.0);
    assert!(got["flumen_checkpoints_total{outcome=\"written\"}"] >= 1.0);
    assert!(live.terminate().success());
}

/// A headless Chromium, driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    socket: tungstenite::WebSocket<std::net::TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`FLUMEN_CHROMIUM`, else Debian's `/usr/bin/chromium`) on `url`.
    fn open(url: &str) -> Browser {
        let binary =
            std::env::var("FLUMEN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1500,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary} (Debian's `chromium`; `make test` installs it): {e}")
            });
        // Chromium writes the port it listens on, and its browser target, into the profile.
        let active = profile.path().join("DevToolsActivePort");
        wait_until("Chromium's DevTools port", || active.exists(), String::new);
        let mut text = String::new();
        wait_until(
            "the DevTools port file",
            || {
                text = std::fs::read_to_string(&active).unwrap_or_default();
                text.lines().count() >= 2
            },
            String::new,
        );
        let mut lines = text.lines();
        let (port, path) = (lines.next().unwrap(), lines.next().unwrap());
        let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (socket, _) =
            tungstenite::client::client(format!("ws://127.0.0.1:{port}{path}"), stream).unwrap();
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// Sends `method` and returns its result (events in between are passed over).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        self.socket
            .send(tungstenite::Message::text(message.to_string()))
            .unwrap();
        loop {
            let reply = self.socket.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let reply: Value = serde_json::from_str(text).unwrap();
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (a promise's, once it settles).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(thrown) = result.get("exceptionDetails") {
            return json!({ "thrown": thrown });
        }
        result["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The web view in headless Chromium against the reference pipeline reading a growing file: every
/// node of the pipeline is drawn, rates move while records flow (in the same page, updated
/// live), and a reload shows in the history.
#[test]
fn the_web_view_shows_the_running_pipeline() {
    modules();
    let scenario = Scenario::new();
    let all = orders(40_000, 5);
    let lines: Vec<&str> = all.lines().collect();
    let input = scenario.write("orders.jsonl", "");
    let toml = reference_pipeline(&scenario);
    let address = free_loopback_address();
    let live = Live::start(
        &[toml.to_str().unwrap(), "--admin", &address, "--watch"],
        &[
            ("FOLLOW", "true".as_ref()),
            ("ORDERS", input.as_os_str()),
            ("OUT_DIR", scenario.path("out").as_os_str()),
        ],
        scenario.path("stderr.log"),
    );
    live.wait_for_log("admin endpoint", 1);
    // Orders keep arriving while the page is open.
    let feeding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let feeder = {
        let (feeding, input) = (feeding.clone(), input.clone());
        let chunks: Vec<String> = lines.chunks(400).map(|c| c.join("\n") + "\n").collect();
        std::thread::spawn(move || {
            for chunk in chunks.iter().cycle().take(400) {
                if !feeding.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                append(&input, chunk);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut browser = Browser::open(&format!("http://{address}/"));
    let names = |browser: &mut Browser| -> BTreeSet<String> {
        let drawn =
            browser.eval("[...document.querySelectorAll('g.node')].map(g => g.dataset.name)");
        drawn
            .as_array()
            .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let expected = stage_names(&toml);
    wait_until(
        "every node drawn",
        || names(&mut browser) == expected,
        || live.log(),
    );
    // The page's own view of the source: its rate and count, updated in place.
    let source = |browser: &mut Browser, field: &str| -> f64 {
        let value = browser.eval(&format!(
            "document.querySelector('g.node[data-name=\"orders\"]')?.dataset.{field}"
        ));
        value.as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0)
    };
    let updates = |browser: &mut Browser| -> u64 {
        let n = browser.eval("document.body.dataset.updates");
        n.as_str().and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let mut first = 0.0;
    wait_until(
        "a rate on the source",
        || {
            first = source(&mut browser, "recordsIn");
            source(&mut browser, "rate") > 0.0
        },
        || live.log(),
    );
    let (since, page_updates) = (first, updates(&mut browser));
    wait_until(
        "the count to move in the same page",
        || source(&mut browser, "recordsIn") > since && updates(&mut browser) > page_updates,
        || live.log(),
    );
    let operators_moving = browser.eval(
        "[...document.querySelectorAll('g.node[data-kind=\"operator\"]')].some(g => Number(g.dataset.recordsIn) > 0)",
    );
    assert_eq!(operators_moving, json!(true));
    // A reload: another threshold for `score`, swapped in live; the history shows it.
    let text = std::fs::read_to_string(&toml).unwrap();
    let changed = text.replace("flag_threshold = 50", "flag_threshold = 40");
    assert_ne!(text, changed);
    let staged = scenario.write("orders.toml.new", changed);
    std::fs::rename(staged, &toml).unwrap();
    live.wait_for_log("swapped operator `score`", 1);
    wait_until(
        "the reload in the page's history",
        || {
            let rows = browser.eval(
                "[...document.querySelectorAll('#reloads tr.reload')].map(r => r.textContent)",
            );
            rows.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r.as_str().unwrap().contains("swapped operator `score`"))
            })
        },
        || live.log(),
    );
    let outcome =
        browser.eval("document.querySelector('#reloads tr.reload td:nth-child(2)').textContent");
    assert_eq!(outcome, json!("ok"));
    // What the README shows: the page as it is now, kept in target/.
    let shot = browser.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        shot["data"].as_str().unwrap(),
    )
    .unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(workspace().join("target/web-view.png"), png).unwrap();
    feeding.store(false, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    drop(browser);
    assert!(live.terminate().success());
}

/// `flumen graph` of the reference pipeline, without its modules: Graphviz's `dot` renders it
/// with every stage, and Mermaid (in Chromium) parses and renders the flowchart with every stage.
#[test]
fn flumen_graph_renders_in_dot_and_mermaid() {
    let scenario = Scenario::new();
    // No module exists at these paths: the graph needs none.
    let text = std::fs::read_to_string(workspace().join("pipelines/orders.toml")).unwrap();
    let toml = scenario.write("orders.toml", text.replace("../target/flumen", "/nowhere"));
    let names = stage_names(&toml);
    let graph = |format: &str| {
        let out = succeed(crate::support::flumen().args([
            "graph",
            toml.to_str().unwrap(),
            "--format",
            format,
        ]));
        String::from_utf8(out.stdout).unwrap()
    };
    let dot = graph("dot");
    let rendered = piped("dot", &["-Tsvg"], dot.as_bytes(), "Debian's `graphviz`");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let svg = String::from_utf8(rendered.stdout).unwrap();
    for name in &names {
        assert!(
            svg.contains(&format!("<title>{name}</title>")),
            "{name} not drawn by dot"
        );
    }
    // Side outputs are labelled edges.
    assert!(svg.contains(">out_of_stock</text>") && svg.contains(">rejected</text>"));

    let mermaid = graph("mermaid");
    let library = std::env::var("FLUMEN_MERMAID").unwrap_or_else(|_| {
        workspace()
            .join("target/tools/mermaid-12.3.0/node_modules/mermaid/dist/mermaid.min.js")
            .display()
            .to_string()
    });
    assert!(
        Path::new(&library).exists(),
        "{library} missing: `make test-tools` installs Mermaid"
    );
    let page = scenario.write(
        "mermaid.html",
        format!("<!doctype html><body><script src=\"file://{library}\"></script></body>"),
    );
    let mut browser = Browser::open(&format!("file://{}", page.display()));
    wait_until(
        "Mermaid to load",
        || browser.eval("typeof mermaid") == json!("object"),
        String::new,
    );
    browser.eval("mermaid.initialize({ startOnLoad: false })");
    let source = serde_json::to_string(&mermaid).unwrap();
    let parsed = browser.eval(&format!("mermaid.parse({source}).then(r => r.diagramType)"));
    assert_eq!(parsed, json!("flowchart-v2"), "{mermaid}");
    let svg = browser.eval(&format!(
        "mermaid.render('graph', {source}).then(r => r.svg)"
    ));
    let svg = svg
        .as_str()
        .unwrap_or_else(|| panic!("Mermaid did not render: {svg}"));
    for name in &names {
        assert!(
            svg.contains(&format!(">{name}<")),
            "{name} not drawn by Mermaid"
        );
    }
    // And a broken flowchart is refused, so the check above can fail.
    let broken = browser.eval("mermaid.parse('flowchart LR\\n  a[\"x\" --> ').then(() => 'ok')");
    assert!(broken.get("thrown").is_some(), "{broken}");
}
