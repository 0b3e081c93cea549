//! `flumen test`: runs the `[[tests]]` cases of a pipeline file in-process and says which fail,
//! with a diff of each output that differs (see [`flumen::testcases`]).

use flumen::guest::Sandbox;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file (TOML) with `[[tests]]` cases.
    pipeline: PathBuf,
    /// Run only the cases whose name contains this.
    #[arg(long)]
    only: Option<String>,
}

pub fn run(Args { pipeline, only }: Args) -> anyhow::Result<ExitCode> {
    let cases = match flumen::testcases::read(&pipeline) {
        Ok(cases) => cases,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::from(2));
        }
    };
    let cases: Vec<_> = cases
        .iter()
        .filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
        .collect();
    if cases.is_empty() {
        eprintln!(
            "{}: no test case to run: add [[tests]] (see `flumen new pipeline`)",
            pipeline.display()
        );
        return Ok(ExitCode::from(2));
    }
    let sandbox = Sandbox::new()?;
    let (mut passed, mut failed) = (0, 0);
    for case in cases {
        match flumen::testcases::run(&pipeline, case, &sandbox) {
            Ok(outcome) if outcome.passed() => {
                passed += 1;
                println!("test {} ... ok", case.name);
            }
            Ok(outcome) => {
                failed += 1;
                println!("test {} ... FAILED", case.name);
                for difference in &outcome.differences {
                    println!("  {}", difference.replace('\n', "\n  "));
                }
            }
            Err(e) => {
                failed += 1;
                println!("test {} ... FAILED\n  {e:#}", case.name);
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    Ok(match failed {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}
