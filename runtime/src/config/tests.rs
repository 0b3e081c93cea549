//! The pipeline file's parser, interpolation and errors.

use super::env::substitute_env;
use super::report::Report;
use super::*;

fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<PipelineConfig, ConfigErrors> {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(Path::new("p/orders.toml"), text, &|k| vars.get(k).cloned())
}

const GOOD: &str = r#"
[pipeline]
dead_letter = "dead"

[sources.orders]
type = "file"
path = "${ORDERS:-in.jsonl}"
follow = ${FOLLOW:-false}

[operators.validate]
module = "../target/flumen/validate.wasm"
inputs = ["orders"]
params = { limit = 3, names = ["a"] }

[sinks.rejected]
type = "file"
path = "${OUT_DIR:-out}/rejected.jsonl"
inputs = ["validate.rejected"]

[sinks.dead]
type = "stdout"
"#;

#[test]
fn a_good_file_with_defaults_and_environment() {
    let config = parse_with(GOOD, &[("OUT_DIR", "/tmp/o"), ("FOLLOW", "true")]).unwrap();
    assert_eq!(config.name, "orders");
    assert_eq!(config.dead_letter.as_deref(), Some("dead"));
    assert_eq!(
        config.sources[0].kind,
        SourceKind::File {
            path: "in.jsonl".into(),
            follow: true
        }
    );
    assert_eq!(config.sources[0].batch_size, DEFAULT_BATCH_SIZE);
    let op = &config.operators[0];
    assert_eq!(op.module, Path::new("p/../target/flumen/validate.wasm"));
    assert_eq!(op.params, serde_json::json!({"limit": 3, "names": ["a"]}));
    assert_eq!(op.memory_limit_bytes, 64 << 20);
    assert_eq!(op.timeout, Duration::from_secs(1));
    let rejected = config.sinks.iter().find(|s| s.name == "rejected").unwrap();
    assert_eq!(
        rejected.kind,
        SinkKind::File {
            path: "/tmp/o/rejected.jsonl".into()
        }
    );
    assert_eq!(rejected.inputs[0].to_string(), "validate.rejected");
    assert_eq!(rejected.inputs[0].port.as_deref(), Some("rejected"));
}

fn errors(text: &str) -> Vec<String> {
    parse_with(text, &[])
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn oversized_params_and_pipeline_files_are_refused() {
    let big = "x".repeat(MAX_PARAMS_BYTES + 1);
    let text = format!(
        "[sources.s]\ntype = \"file\"\npath = \"x\"\n[operators.o]\nmodule = \"m.wasm\"\n\
         inputs = [\"s\"]\nparams = {{ blob = \"{big}\" }}\n"
    );
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("`operators.o.params`"), "{}", errors[0]);
    assert!(
        errors[0].contains("more than 1048576 bytes"),
        "{}",
        errors[0]
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut file, &vec![b'#'; MAX_PIPELINE_BYTES as usize + 10]).unwrap();
    let (config, errors) = load(&path);
    assert!(config.is_none());
    assert!(
        errors[0].to_string().contains("larger than"),
        "{}",
        errors[0]
    );
}

#[test]
fn every_unknown_key_is_reported_with_its_line() {
    let text = GOOD
        .replace("follow =", "folow = 1\nfollow =")
        .replace("params =", "param = 2\nparams =");
    let errors = errors(&text);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("p/orders.toml:8:1: `sources.orders.folow`: unknown key"),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("p/orders.toml:14:1: `operators.validate.param`: unknown key"),
        "{errors:?}"
    );
}

#[test]
fn syntax_errors_name_line_and_key() {
    let errors = errors(&GOOD.replace("inputs = [\"orders\"]", "inputs = [\"orders\""));
    assert!(
        errors[0].starts_with("p/orders.toml:12:1: `operators.validate.inputs`: missing comma"),
        "{errors:?}"
    );
}

#[test]
fn type_errors_name_the_key() {
    let errors = errors(&GOOD.replace("inputs = [\"orders\"]", "inputs = \"orders\""));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("p/orders.toml:12:1: `operators.validate.inputs`: invalid type"),
        "{errors:?}"
    );
}

#[test]
fn semantic_errors_are_all_reported() {
    let text = GOOD
        .replace("type = \"stdout\"", "type = \"printer\"")
        .replace("dead_letter = \"dead\"", "dead_letter = \"nowhere\"")
        .replace(
            "[operators.validate]",
            "[operators.validate]\ntimeout_ms = 0",
        );
    let errors = errors(&text);
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].contains("`pipeline.dead_letter`: no sink named `nowhere`"));
    assert!(errors[1].contains("`operators.validate.timeout_ms`: 0 is out of range"));
    assert!(errors[2].contains("`sinks.dead.type`: unknown sink type \"printer\""));
}

#[test]
fn unset_variables_without_default_are_errors() {
    let errors = errors("[sources.a]\ntype = \"file\"\npath = \"${NOPE}\"\n");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("p/orders.toml:3:9: environment variable `NOPE` is not set"));
}

#[test]
fn substitution_handles_escapes_and_empty_values() {
    let mut report = Report {
        file: "f".into(),
        text: String::new(),
        errors: Vec::new(),
    };
    let env = |k: &str| (k == "EMPTY").then(String::new);
    let out = substitute_env("a = \"$$ ${EMPTY:-d} ${EMPTY} $x\"\n", &env, &mut report);
    assert_eq!(out, "a = \"$ d  $x\"\n");
    assert!(report.errors.is_empty());
}

proptest::proptest! {
    /// Whatever a variable holds, inside a basic string it reads back as itself; inside a
    /// literal string or bare, it is that value or refused — never another key.
    #[test]
    fn any_value_reads_back_as_itself_or_is_refused(value in ".*") {
        let env = |_: &str| Some(value.clone());
        for (template, quoted) in [("a = \"${V}\"\n", true), ("a = '${V}'\n", false), ("a = ${V}\n", false)] {
            let mut report = Report {
                file: "f".into(),
                text: String::new(),
                errors: Vec::new(),
            };
            let out = substitute_env(template, &env, &mut report);
            if quoted {
                proptest::prop_assert!(report.errors.is_empty());
            }
            if !report.errors.is_empty() {
                continue;
            }
            let table: toml::Table = toml::from_str(&out)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{out:?}: {e}")))?;
            proptest::prop_assert_eq!(table.len(), 1, "{:?}", out);
            if template.contains('"') || template.contains('\'') {
                proptest::prop_assert_eq!(table["a"].as_str(), Some(value.as_str()));
            }
        }
    }
}

#[test]
fn a_variable_can_only_ever_become_a_value() {
    let vars = [
        ("QUOTE", "x\" # y"),
        ("INJECT", "1\nother = 2"),
        ("COMMENT", "5 # rest"),
        ("NUMBER", "512"),
        ("TICK", "it's"),
    ];
    let env = |k: &str| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    };
    let mut report = Report {
        file: "f".into(),
        text: String::new(),
        errors: Vec::new(),
    };
    let text = "a = \"${QUOTE}\"\nb = \"${INJECT}\"\nc = ${NUMBER}\n# ${INJECT}\n";
    let out = substitute_env(text, &env, &mut report);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let table: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(table["a"].as_str(), Some("x\" # y"));
    assert_eq!(table["b"].as_str(), Some("1\nother = 2"));
    assert_eq!(table["c"].as_integer(), Some(512));
    assert_eq!(table.len(), 3, "{out}");
    for bad in [
        "c = ${COMMENT}\n",
        "c = ${INJECT}\n",
        "c = '${TICK}'\n",
        "c = ${QUOTE}\n",
    ] {
        let mut report = Report {
            file: "f".into(),
            text: String::new(),
            errors: Vec::new(),
        };
        substitute_env(bad, &env, &mut report);
        assert_eq!(report.errors.len(), 1, "{bad}");
        let column = bad.find('$').map(|at| at + 1);
        assert_eq!(report.errors[0].location.map(|l| l.column), column, "{bad}");
    }
}

#[test]
fn stage_names_are_unique_across_sections() {
    let errors = errors(
        &GOOD
            .replace("[sinks.dead]", "[sinks.orders]")
            .replace("\"dead\"", "\"orders\""),
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("the name `orders` is already used")),
        "{errors:?}"
    );
}

#[test]
fn each_connector_reads_its_own_options_with_errors_at_their_key() {
    let text = GOOD
        .replace("follow = ${FOLLOW:-false}", "follow = \"yes\"\ncount = 5")
        .replace("type = \"stdout\"", "type = \"stdout\"\npath = \"x.jsonl\"")
        .replace(
            "type = \"file\"\npath = \"${OUT_DIR",
            "type = \"file\"\nbatch_size = 3\npath = \"${OUT_DIR",
        );
    let errors = errors(&text);
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "p/orders.toml:8:1: `sources.orders.follow`: invalid type: string \"yes\", expected a boolean"
        ),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with(
            "p/orders.toml:9:1: `sources.orders.count`: `count` is not an option of a file source"
        ),
        "{errors:?}"
    );
    assert!(
        errors[2].starts_with("p/orders.toml:18:1: `sinks.rejected.batch_size`: unknown key"),
        "{errors:?}"
    );
    assert!(
        errors[3].starts_with(
            "p/orders.toml:24:1: `sinks.dead.path`: `path` is not an option of a stdout sink"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_source_or_sink_without_a_type_says_so() {
    let errors = errors(&GOOD.replace("[sinks.dead]\ntype = \"stdout\"", "[sinks.dead]"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("p/orders.toml:20:8: `sinks.dead`: missing field `type`"),
        "{errors:?}"
    );
}

#[test]
fn checkpoints_are_configured_under_pipeline_with_errors_at_their_key() {
    let with = |value: &str| {
        GOOD.replace(
            "dead_letter = \"dead\"",
            &format!("dead_letter = \"dead\"\ncheckpoint = {value}"),
        )
    };
    let config = parse_with(
        &with(r#"{ dir = "${OUT_DIR:-out}/cp", interval_ms = ${EVERY:-1000} }"#),
        &[("OUT_DIR", "/tmp/o"), ("EVERY", "250")],
    )
    .unwrap();
    let checkpoint = config.checkpoint.unwrap();
    assert_eq!(checkpoint.dir, Path::new("/tmp/o/cp"));
    assert_eq!(checkpoint.interval, Duration::from_millis(250));
    let default = parse_with(&with(r#"{ dir = "cp" }"#), &[]).unwrap();
    assert_eq!(default.checkpoint.unwrap().interval, Duration::from_secs(1));
    assert_eq!(parse_with(GOOD, &[]).unwrap().checkpoint, None);
    for (value, expected) in [
        (r#"{ dir = "cp", interval_ms = 0 }"#, "p/orders.toml:4:28:"),
        (r#"{ dir = "cp", every = 3 }"#, "unknown field `every`"),
        (r#"{ interval_ms = 5 }"#, "missing field `dir`"),
        (r#"{ dir = "" }"#, "`pipeline.checkpoint.dir`"),
    ] {
        let errors = errors(&with(value));
        assert_eq!(errors.len(), 1, "{value}: {errors:?}");
        assert!(errors[0].contains(expected), "{value}: {errors:?}");
        assert!(
            errors[0].contains("pipeline.checkpoint"),
            "{value}: {errors:?}"
        );
    }
}

#[test]
fn kafka_sources_and_sinks_read_their_options_with_errors_at_their_key() {
    let kafka = |source: &str, sink: &str, checkpoint: bool| {
        let checkpoint = if checkpoint {
            "checkpoint = { dir = \"cp\" }\n"
        } else {
            ""
        };
        format!(
            "[pipeline]\n{checkpoint}[sources.in]\ntype = \"kafka\"\nbrokers = \"b:9092\"\n\
             {source}\n[sinks.out]\ntype = \"kafka\"\nbrokers = \"b:9092\"\ninputs = [\"in\"]\n\
             {sink}\n"
        )
    };
    let config = parse_with(
        &kafka(
            "topic = \"a, b\"\nstop_at = \"end\"\nidle_timeout_ms = 500\nkey_field = \"sku\"",
            "topic = \"out\"\nkey = \"sku\"\npartitions = 3",
            true,
        ),
        &[],
    )
    .unwrap();
    let SourceKind::Kafka(input) = &config.sources[0].kind else {
        panic!("{:?}", config.sources[0].kind)
    };
    assert_eq!(input.topics, ["a", "b"]);
    assert_eq!(input.group, "flumen-a-b");
    assert!(input.stop_at_end && !input.start_latest);
    assert_eq!(input.idle_timeout, Some(Duration::from_millis(500)));
    assert_eq!(input.key_field.as_deref(), Some("sku"));
    let SinkKind::Kafka(output) = &config.sinks[0].kind else {
        panic!("{:?}", config.sinks[0].kind)
    };
    assert_eq!((output.topic.as_str(), output.partitions), ("out", 3));
    assert!(output.exactly_once);
    assert_eq!(output.key.as_deref(), Some("sku"));

    for (source, sink, checkpoint, expected) in [
        ("", "topic = \"o\"", true, "a kafka source needs `topic`"),
        (
            "topic = \"a b\"",
            "topic = \"o\"",
            true,
            "`sources.in.topic`",
        ),
        (
            "topic = \"t\"\nstop_at = \"later\"",
            "topic = \"o\"",
            true,
            "`sources.in.stop_at`",
        ),
        (
            "topic = \"t\"\nidle_timeout_ms = 0",
            "topic = \"o\"",
            true,
            "idle_timeout_ms",
        ),
        (
            "topic = \"t\"",
            "topic = \"o\"\ndelivery = \"maybe\"",
            true,
            "`sinks.out.delivery`",
        ),
        (
            "topic = \"t\"",
            "topic = \"o\"",
            false,
            "exactly once by replaying from checkpoints",
        ),
    ] {
        let errors = errors(&kafka(source, sink, checkpoint));
        assert_eq!(errors.len(), 1, "{source} / {sink}: {errors:?}");
        assert!(errors[0].contains(expected), "{errors:?}");
    }
    // At least once needs no checkpoints.
    let text = kafka(
        "topic = \"t\"",
        "topic = \"o\"\ndelivery = \"at_least_once\"",
        false,
    );
    assert!(parse_with(&text, &[]).is_ok());
}
