//! `rollwatch demo`: see [`crate::demo`].

use std::process::ExitCode;

use anyhow::Context;

pub fn run() -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut stdout = std::io::stdout();
    let rolled_back = runtime.block_on(crate::demo::run(&mut stdout))?;
    Ok(if rolled_back { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
