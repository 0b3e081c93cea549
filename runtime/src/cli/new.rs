//! `flumen new udf NAME --kind K` / `flumen new pipeline NAME`: a UDF crate that builds, tests
//! and runs as created (its Cargo.toml finds the SDK wherever the crate is), or a pipeline file
//! that runs on generated orders.

use anyhow::{Context, bail};
use flumen::toolchain;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// A UDF crate in folder NAME: Cargo.toml, src/lib.rs (the operator and a unit test) and
    /// pipeline.toml (generated orders through it, live, into out/NAME.jsonl).
    Udf {
        /// The crate's name (lowercase letters, digits, `-` and `_`).
        name: String,
        /// What kind of operator.
        #[arg(long, value_enum, default_value_t = Kind::Map)]
        kind: Kind,
        /// The folder to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A pipeline file NAME.toml: generated orders into a file sink, with a test case
    /// (`flumen test NAME.toml`), ready for operators.
    Pipeline {
        /// The pipeline's name.
        name: String,
    },
}

/// The kinds of operator a UDF crate may be.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Map,
    Filter,
    FilterMap,
    FlatMap,
    Process,
    Aggregate,
}

impl Kind {
    fn template(self) -> &'static str {
        match self {
            Kind::Map => include_str!("new/map.rs.in"),
            Kind::Filter => include_str!("new/filter.rs.in"),
            Kind::FilterMap => include_str!("new/filter_map.rs.in"),
            Kind::FlatMap => include_str!("new/flat_map.rs.in"),
            Kind::Process => include_str!("new/process.rs.in"),
            Kind::Aggregate => include_str!("new/aggregate.rs.in"),
        }
    }

    /// The operator's table in the pipeline file, after `module` and `inputs`.
    fn stage_settings(self) -> &'static str {
        match self {
            Kind::Map => "params = { discount_percent = 10 }\n",
            Kind::Filter => "params = { min_cents = 10000 }\n",
            Kind::FilterMap => "params = { max_qty = 5 }\n",
            Kind::FlatMap => "params = { max_units = 3 }\n",
            Kind::Process => "key_by = \"user_id\"\nparams = { threshold_cents = 100000 }\n",
            Kind::Aggregate => {
                "key_by = \"sku\"\nwindow = { type = \"tumbling\", size_ms = 60_000 }\n"
            }
        }
    }

    /// The operator's side outputs.
    fn sides(self) -> &'static [&'static str] {
        match self {
            Kind::Filter => &["small"],
            Kind::FilterMap => &["rejected"],
            Kind::Aggregate => &["late"],
            _ => &[],
        }
    }
}

pub fn run(Args { what }: Args) -> anyhow::Result<ExitCode> {
    match what {
        What::Udf { name, kind, dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            new_udf(&name, kind, &dir)?;
            let shown = dir.display();
            println!(
                "created UDF crate `{name}` in {shown}:\n  {shown}/src/lib.rs        the operator and \
                 its unit test\n  {shown}/pipeline.toml    generated orders through it into \
                 out/{name}.jsonl\n\nnext:\n  cd {shown}\n  cargo test\n  flumen build\n  flumen \
                 run pipeline.toml --watch --build    # edit src/lib.rs: rebuilt and hot-swapped"
            );
        }
        What::Pipeline { name } => {
            check_name(&name)?;
            let file = PathBuf::from(format!("{name}.toml"));
            if file.exists() {
                bail!("{} exists already", file.display());
            }
            std::fs::write(&file, pipeline_only(&name))
                .with_context(|| format!("cannot write {}", file.display()))?;
            println!(
                "created {}: generated orders into out/{name}.jsonl\n\nnext:\n  flumen run {0}\n  \
                 flumen test {0}\n  flumen graph {0}",
                file.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        bail!(
            "`{name}` cannot be a name: use lowercase letters, digits, `-` and `_`, starting \
             with a letter"
        );
    }
    Ok(())
}

/// `big-orders` → `BigOrders`.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Writes the crate `name` of kind `kind` into `dir`.
fn new_udf(name: &str, kind: Kind, dir: &Path) -> anyhow::Result<()> {
    check_name(name)?;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let snake = name.replace('-', "_");
    let manifest = manifest(name, dir)?;
    let lib = kind
        .template()
        .replace("{{order}}", include_str!("new/order.rs.in"))
        .replace("{{test_order}}", include_str!("new/test_order.rs.in"))
        .replace("{{name}}", name)
        .replace("{{fn}}", &snake)
        .replace("{{Struct}}", &format!("{}Operator", camel(&snake)))
        .replace("{{Type}}", &camel(&snake));
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    std::fs::write(dir.join("src/lib.rs"), lib)?;
    std::fs::write(dir.join("pipeline.toml"), pipeline(name, &snake, kind))?;
    std::fs::write(dir.join(".gitignore"), "/target\n/out\nCargo.lock\n")?;
    Ok(())
}

/// The crate's Cargo.toml: a member of flumen's workspace when created where its members live
/// (`udfs/*`), else a workspace of its own depending on the SDK by path (relative inside
/// flumen's tree, absolute elsewhere).
fn manifest(name: &str, dir: &Path) -> anyhow::Result<String> {
    let sdk = toolchain::sdk_dir()?;
    let sdk = std::path::absolute(&sdk)?;
    let dir = std::path::absolute(dir)?;
    let home = sdk.parent().map(Path::to_path_buf);
    let member = home.as_ref().is_some_and(|home| {
        ["udfs", "tests/udfs"]
            .iter()
            .any(|members| dir.parent() == Some(home.join(members).as_path()))
    });
    let lib = "[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n";
    if member {
        return Ok(format!(
            "[package]\nname = \"{name}\"\nversion.workspace = true\nedition.workspace = true\n\
             rust-version.workspace = true\npublish = false\n\n{lib}\n[dependencies]\n\
             flumen-sdk.workspace = true\nserde.workspace = true\n\n[dev-dependencies]\n\
             serde_json.workspace = true\n"
        ));
    }
    let inside = home.as_ref().is_some_and(|home| dir.starts_with(home));
    let sdk_path = match inside {
        true => relative(&dir, &sdk),
        false => sdk.clone(),
    };
    Ok(format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         {lib}\n[dependencies]\nflumen-sdk = {{ path = \"{}\" }}\n\
         serde = {{ version = \"1\", features = [\"derive\"] }}\n\n[dev-dependencies]\n\
         serde_json = \"1\"\n\n# A workspace of its own, wherever it lies.\n[workspace]\n",
        sdk_path.display()
    ))
}

/// `to` relative to folder `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to_parts: Vec<_> = to.components().collect();
    let common = from
        .iter()
        .zip(&to_parts)
        .take_while(|(a, b)| a == b)
        .count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to_parts[common..] {
        path.push(part);
    }
    path
}

/// The crate's pipeline: generated orders, live (a thousand a second), through the operator.
fn pipeline(name: &str, snake: &str, kind: Kind) -> String {
    let mut text = format!(
        "# Generated orders through `{name}`, live: run it with\n\
         #   flumen run pipeline.toml --watch --build\n\
         # and edit src/lib.rs: the crate is rebuilt and the operator hot-swapped, keeping its \
         state.\n\
         # Paths of sources and sinks are relative to the working folder, the module's to this \
         file's.\n\n\
         [pipeline]\nname = \"{name}\"\ndead_letter = \"dead_letter\"\n\n\
         [sources.orders]\ntype = \"generator\"\ncount = 1_000_000_000\nrate = 1000                \
         # orders a second\nseed = 1\nevent_time = \"ts\"\nwatermark_delay_ms = 5000\n\n\
         [operators.{snake}]\nmodule = \"target/flumen/{snake}.wasm\"\ninputs = [\"orders\"]\n{}\n\
         [sinks.out]\ntype = \"file\"\npath = \"out/{name}.jsonl\"\ninputs = [\"{snake}\"]\n",
        kind.stage_settings()
    );
    for side in kind.sides() {
        text.push_str(&format!(
            "\n[sinks.{side}]\ntype = \"file\"\npath = \"out/{name}-{side}.jsonl\"\ninputs = \
             [\"{snake}.{side}\"]\n"
        ));
    }
    text.push_str(&format!(
        "\n[sinks.dead_letter]\ntype = \"file\"\npath = \"out/{name}-dead_letter.jsonl\"\n"
    ));
    text
}

/// A pipeline without operators yet.
fn pipeline_only(name: &str) -> String {
    format!(
        "# `{name}`: generated orders into a file. Add operators between them:\n\
         #   [operators.NAME]\n#   module = \"path/to/NAME.wasm\"   # `flumen new udf NAME`, then \
         `flumen build`\n#   inputs = [\"orders\"]\n\
         # and name the operator in the sink's `inputs`.\n\n\
         [pipeline]\nname = \"{name}\"\ndead_letter = \"dead_letter\"\n\n\
         [sources.orders]\ntype = \"generator\"\ncount = 10_000\nseed = 1\nevent_time = \"ts\"\n\
         watermark_delay_ms = 5000\n\n\
         [sinks.out]\ntype = \"file\"\npath = \"out/{name}.jsonl\"\ninputs = [\"orders\"]\n\n\
         [sinks.dead_letter]\ntype = \"file\"\npath = \"out/{name}-dead_letter.jsonl\"\n\n\
         # `flumen test {name}.toml` runs these cases; add one per behaviour of your operators.\n\
         [[tests]]\nname = \"an order passes through\"\n\n[[tests.inputs]]\ninto = \"orders\"\n\
         records = [{{ order_id = 1, user_id = 7, sku = \"SKU-0001\", qty = 2, price_cents = 500, \
         country = \"FR\", ts = 1700000000000 }}]\n\n[[tests.outputs]]\nfrom = \"out\"\n\
         records = [{{ order_id = 1, user_id = 7, sku = \"SKU-0001\", qty = 2, price_cents = 500, \
         country = \"FR\", ts = 1700000000000 }}]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(camel("big_orders"), "BigOrders");
        assert!(check_name("big-orders").is_ok());
        assert!(
            check_name("Big").is_err() && check_name("1x").is_err() && check_name("a b").is_err()
        );
        assert_eq!(
            relative(Path::new("/r/a/b"), Path::new("/r/sdk")),
            PathBuf::from("../../sdk")
        );
    }
}
