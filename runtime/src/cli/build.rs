//! `flumen build`: UDF crates to WebAssembly modules (and, with `--native`, shared libraries).

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// UDF crates, or folders of UDF crates (default: the crate in this folder, else `udfs`).
    paths: Vec<PathBuf>,
    /// Where the modules go.
    #[arg(long, default_value = "target/flumen")]
    out_dir: PathBuf,
    /// Also build each crate for this machine, into OUT_DIR/native (for `--backend native`).
    #[arg(long)]
    native: bool,
}

pub fn run(
    Args {
        paths,
        out_dir,
        native,
    }: Args,
) -> anyhow::Result<ExitCode> {
    let toolchain = flumen::toolchain::detect()?;
    let paths = match paths.is_empty() {
        false => paths,
        true => match flumen::toolchain::find_crates(std::path::Path::new(".")) {
            Ok(here) if !here.is_empty() && std::path::Path::new("Cargo.toml").exists() => {
                vec![PathBuf::from(".")]
            }
            _ => vec![PathBuf::from("udfs")],
        },
    };
    let mut crates = Vec::new();
    for path in &paths {
        crates.extend(flumen::toolchain::find_crates(path)?);
    }
    if crates.is_empty() {
        anyhow::bail!("no UDF crate (crate-type \"cdylib\") under {paths:?}");
    }
    for module in flumen::toolchain::build(&toolchain, &crates, &out_dir)? {
        println!("{}", module.display());
    }
    if native {
        for library in flumen::toolchain::build_native(&crates, &out_dir.join("native"))? {
            println!("{}", library.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
