//! `rollwatch test PATH...`: replay every fixture, print each failed expectation with expected
//! vs got and the decision's explanation, end with `N passed, N failed`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{report, toml_files};
use crate::fixture::{Fixture, run as replay};

pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let files = match toml_files(paths) {
        Ok(files) => files,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            writeln!(out, "0 passed, {} failed", errors.len())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for path in &files {
        match Fixture::load(path) {
            Err(errors) => {
                failed += 1;
                writeln!(out, "FAIL {} (does not load)", path.display())?;
                for e in &errors.0 {
                    writeln!(out, "  {e}")?;
                }
            }
            Ok((fixture, mut ev)) => {
                let result = replay(&fixture, &mut ev, |_, _, _| {});
                if result.passed() {
                    passed += 1;
                    writeln!(out, "ok   {} ({} expectations, {} ticks)", path.display(), result.checked, result.ticks)?;
                } else {
                    failed += 1;
                    writeln!(out, "FAIL {}", path.display())?;
                    for f in &result.failures {
                        report::failure(out, f)?;
                    }
                }
            }
        }
    }
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
