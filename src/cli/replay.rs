//! `rollwatch replay FIXTURE [--svg OUT] [--html OUT]`: the timeline of one fixture — every rule
//! state change and every decision with its explanation and values — then the expectations'
//! verdict; optionally the plots of its signals.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::report;
use crate::fixture::{Fixture, run as replay};

/// Where `replay` writes plots, if anywhere.
#[derive(Debug, Default)]
pub struct PlotFiles<'a> {
    pub svg: Option<&'a Path>,
    pub html: Option<&'a Path>,
}

pub fn run(path: &Path, changes_only: bool, plots: PlotFiles, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (fixture, mut ev) = match Fixture::load(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let names: Vec<&str> = ev.profiles.iter().map(|p| p.name.as_str()).collect();
    writeln!(
        out,
        "replay {}: profiles {}; samples every {}, evaluation every {}, until {}",
        path.display(),
        names.join(", "),
        fixture.interval,
        fixture.eval_interval,
        fixture.end
    )?;
    let several = names.len() > 1;
    let mut previous: Vec<Option<(String, String)>> = vec![None; names.len()];
    let mut io_error = None;
    let mut plot = crate::fixture::plot::Plot::new(&path.display().to_string(), &ev);
    let result = replay(&fixture, &mut ev, |ev, tick, deploys| {
        plot.observe(ev, tick, deploys);
        let mut write = || -> std::io::Result<()> {
            for d in deploys {
                report::deploy(out, d.at, &d.version)?;
            }
            for t in &tick.transitions {
                report::transition(out, t)?;
            }
            for (i, d) in tick.decisions.iter().enumerate() {
                let summary = (d.outcome.to_string(), d.explanation());
                if changes_only && previous[i].as_ref() == Some(&summary) {
                    continue;
                }
                previous[i] = Some(summary);
                report::decision(out, d, several)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            io_error.get_or_insert(e);
        }
    });
    if let Some(e) = io_error {
        return Err(e.into());
    }
    for f in &result.failures {
        report::failure(out, f)?;
    }
    writeln!(out, "{} ticks; {} expectations checked, {} failed", result.ticks, result.checked, result.failures.len())?;
    for (file, text) in [(plots.svg, plot.svg()), (plots.html, plot.html())] {
        if let Some(file) = file {
            std::fs::write(file, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", file.display()))?;
            writeln!(out, "plot written to {}", file.display())?;
        }
    }
    Ok(if result.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
