//! The `rollwatch` binary: logging set up, the command line parsed, [`rollwatch::cli::run`]
//! called, and its error printed with its causes. Exit codes: 0 ok, 1 findings, 2 usage.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = rollwatch::cli::Cli::parse();
    // Not locked for the whole run: console notification channels print from other threads.
    let mut stdout = std::io::stdout();
    match rollwatch::cli::run(cli, &mut stdout) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rollwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
