//! The `rollwatch` binary: logging set up, the command line parsed, [`rollwatch::cli::run`]
//! called, and its error printed with its causes. Exit codes: 0 ok, 1 findings, 2 usage.

use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc gives threads up to eight arenas per core, and memory freed in one is not
/// reused by another: a fleet's engines, whose tasks move between the runtime's threads and
/// its blocking pool, left a third of a replica's memory in half-empty arenas (120 MB against
/// 100 MB with two, 600 deployments held 300 here). Two arenas, set before any thread starts.
fn few_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called first thing in main, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Dates log lines on rollwatch's timeline (see [`rollwatch::time::log_time`]), not the system
/// clock: a clock stepped back or forward does not make the log disagree with the journal.
struct Timeline;

impl tracing_subscriber::fmt::time::FormatTime for Timeline {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        w.write_str(&rollwatch::time::log_time())
    }
}

fn main() -> ExitCode {
    few_malloc_arenas();
    // Fault injection for the tests (tikv's `fail`): `FAILPOINTS=after-step-commit=sleep(3000)`
    // stalls a step between its fenced commit and its start. Debug builds only (what `cargo
    // test` runs): a release binary never reads FAILPOINTS, so no environment can stall it.
    #[cfg(debug_assertions)]
    let _failpoints = fail::FailScenario::setup();
    let cli = rollwatch::cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Logs go to stderr; stdout carries the command's output and console channel messages.
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_timer(Timeline);
    match cli.log_format {
        rollwatch::cli::LogFormat::Json => logs.json().init(),
        // Colour only for a terminal: a log file or a pipe gets plain text. Every field and
        // message goes through one escape: a version's ANSI escape or line break from outside
        // shows as `\u{1b}` or `\n`, never colours the terminal or forges a log line (JSON
        // escapes them itself).
        rollwatch::cli::LogFormat::Text => logs
            .fmt_fields(tracing_subscriber::field::MakeExt::delimited(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    let text = format!("{value:?}");
                    let text = rollwatch::template::terminal(&text);
                    match field.name() {
                        "message" => write!(w, "{text}"),
                        name => write!(w, "{name}={text}"),
                    }
                }),
                " ",
            ))
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    // Not locked for the whole run: console notification channels print from other threads.
    let mut stdout = std::io::stdout();
    match rollwatch::cli::run(cli, &mut stdout) {
        Ok(code) => code,
        // A reader that stopped reading (`rollwatch history | head -1`) is not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rollwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
