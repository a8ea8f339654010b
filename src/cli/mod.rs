//! The command line (clap derive), one file per subcommand; [`report`] formats human output.
//! This is the binary's edge: subcommands return `anyhow::Result` and an exit code —
//! 0 all well, 1 findings (`check` errors, failed fixtures), 2 usage errors (clap's own).

pub mod act;
pub mod check;
pub mod demo;
pub mod replay;
pub mod report;
pub mod run;
pub mod test;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::diag::{Diagnostic, Diagnostics};

/// rollwatch: automated rollback triggers from runbook thresholds.
#[derive(Debug, Parser)]
#[command(name = "rollwatch", version, about, long_about = None)]
pub struct Cli {
    /// How logs are written to stderr: `text` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// The log format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate profiles, fixtures and configs; list every error; exit 1 if any.
    Check {
        /// Files or directories (every *.toml below them).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run fixtures against their profiles; print failures as expected/got; exit 1 on any.
    Test {
        /// Fixture files or directories (every *.toml below them).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the sidecar: poll targets, evaluate, decide and act under the policy (until SIGTERM/SIGINT).
    Run {
        /// The deployment's rollwatch.toml.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the sidecar for a while in dry-run mode (it never acts) and write every series it saw
    /// (resampled onto the evaluation grid), its deploys and its decisions as a fixture.
    Record {
        /// The deployment's rollwatch.toml.
        #[arg(short, long)]
        config: PathBuf,
        /// How long to record, e.g. "10m".
        #[arg(long = "for", value_parser = parse_span)]
        duration: crate::time::Span,
        /// The fixture to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Serve on this address instead of the config's `listen` (to record beside the running
        /// sidecar, e.g. "127.0.0.1:0").
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Keep the recording's journal here instead of the config's `state_dir` (which the
        /// running sidecar holds).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Also draw what was recorded (as `replay --svg` would) into this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Watch an embedded simulated deployment with the SOLVEREIGN profile; roll it back, verify, announce.
    Demo,
    /// Approve a pending rollback (asks the running sidecar).
    Approve {
        /// The running sidecar's rollwatch.toml (its listen address and API token).
        #[arg(short, long)]
        config: PathBuf,
        /// The approval id from the approval-needed message or /status (ap-N).
        id: String,
        /// Who approves (journalled and shown in history; default: your user name).
        #[arg(long)]
        by: Option<String>,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Reject a pending rollback: not asked again for this version until its decision clears.
    Reject {
        /// The running sidecar's rollwatch.toml.
        #[arg(short, long)]
        config: PathBuf,
        /// The approval id (ap-N).
        id: String,
        /// Why (journalled and shown in history).
        #[arg(long)]
        reason: String,
        /// Who rejects (default: your user name).
        #[arg(long)]
        by: Option<String>,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Report a deploy to the running sidecar (as a pipeline would with POST /hooks/deploy).
    Deployed {
        /// The running sidecar's rollwatch.toml.
        #[arg(short, long)]
        config: PathBuf,
        /// The version now deployed.
        version: String,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// List the versions the journal knows: deployed when, good/bad/new, and the evidence.
    Versions {
        /// The deployment's rollwatch.toml (its state_dir holds the journal).
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Correct what a version is: good (a rollback target) or bad (never one). Asks the running sidecar.
    Mark {
        /// The running sidecar's rollwatch.toml.
        #[arg(short, long)]
        config: PathBuf,
        /// The version to mark (as the version target reports it).
        version: String,
        /// good or bad.
        #[arg(value_parser = ["good", "bad"])]
        state: String,
        /// Why (journalled with the mark).
        #[arg(long)]
        reason: String,
        /// Who marks it (default: your user name).
        #[arg(long)]
        by: Option<String>,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Stop acting (decisions are still made and journalled as suppressed), for a while or until resumed.
    Pause {
        /// The running sidecar's rollwatch.toml (its listen address and API token).
        #[arg(short, long)]
        config: PathBuf,
        /// How long, e.g. "30m" (default: until `resume`).
        #[arg(long = "for", value_parser = parse_span)]
        duration: Option<crate::time::Span>,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Act again after `pause`.
    Resume {
        /// The running sidecar's rollwatch.toml (its listen address and API token).
        #[arg(short, long)]
        config: PathBuf,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Suppress rollbacks driven only by this rule, for a while.
    Silence {
        /// The running sidecar's rollwatch.toml (its listen address and API token).
        #[arg(short, long)]
        config: PathBuf,
        /// The rule's name (as in /status and the profile).
        rule: String,
        /// How long, e.g. "2h".
        #[arg(long = "for", value_parser = parse_span)]
        duration: crate::time::Span,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// End a silence early.
    Unsilence {
        /// The running sidecar's rollwatch.toml (its listen address and API token).
        #[arg(short, long)]
        config: PathBuf,
        /// The rule's name (as in /status and the profile).
        rule: String,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Send a notification template through a configured channel (for incident channels); no
    /// sidecar needed.
    Notify {
        /// The rollwatch.toml whose [channels] and [templates] to use.
        #[arg(short, long)]
        config: PathBuf,
        /// The channel's name in [channels.NAME].
        #[arg(long)]
        channel: String,
        /// A template name: rollback_in_progress, rollback_complete, rollback_failed, rollback_approval_needed, escalation, rollback_suppressed, blind, or one from [templates].
        #[arg(long)]
        template: String,
        /// A template value, e.g. --var reason="error spike" (repeatable).
        #[arg(long = "var")]
        vars: Vec<String>,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Print the rollback history (runbook 004's fields) from the journal.
    History {
        /// The deployment's rollwatch.toml (its state_dir holds the journal).
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Print a rollback's incident report from the journal: severity, versions, durations,
    /// verification, escalations, root cause and a timeline.
    Report {
        /// The deployment's rollwatch.toml (its state_dir holds the journal).
        #[arg(short, long)]
        config: PathBuf,
        /// The rollback id (see `history`).
        id: String,
        /// `md` (Markdown) or `json`.
        #[arg(long, value_enum, default_value_t = act::ReportFormat::Md)]
        format: act::ReportFormat,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Record a rollback's root cause in the journal.
    Annotate {
        /// The deployment's rollwatch.toml (its state_dir holds the journal).
        #[arg(short, long)]
        config: PathBuf,
        /// The rollback id (see `history`).
        id: String,
        /// What caused the incident (shown in history and reports).
        #[arg(long)]
        root_cause: String,
        /// In a fleet: which deployment (required when the config lists several).
        #[arg(long)]
        deployment: Option<String>,
    },
    /// Replay one fixture and print its timeline: rule state changes and decisions.
    Replay {
        /// The fixture file to replay.
        fixture: PathBuf,
        /// Print a decision only when it differs from the previous tick's.
        #[arg(long)]
        changes: bool,
        /// Also draw each signal over time (thresholds, pending and firing spans, deploys and
        /// decisions) into this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Also write a page with one chart per signal to this HTML file.
        #[arg(long)]
        html: Option<PathBuf>,
    },
}

/// Runs a parsed command line, writing to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { paths } => check::run(&paths, out),
        Command::Test { paths } => test::run(&paths, out),
        Command::Replay { fixture, changes, svg, html } => {
            let plots = replay::PlotFiles { svg: svg.as_deref(), html: html.as_deref() };
            replay::run(&fixture, changes, plots, out)
        }
        Command::Run { config } => run::run(&config, out),
        Command::Demo => demo::run(),
        Command::Record { config, duration, output, listen, state_dir, svg } => {
            run::record(&config, run::Recording { duration, output: &output, listen, state_dir, svg }, out)
        }
        Command::Approve { config, id, by, deployment } => {
            let by = by.unwrap_or_else(user_name);
            act::post(
                &config,
                deployment.as_deref(),
                &format!("/approve/{}?by={}", url_segment(&id), url_segment(&by)),
                out,
            )
        }
        Command::Reject { config, id, reason, by, deployment } => {
            let by = by.unwrap_or_else(user_name);
            let query = format!("?by={}&reason={}", url_segment(&by), url_segment(&reason));
            act::post(&config, deployment.as_deref(), &format!("/reject/{}{query}", url_segment(&id)), out)
        }
        Command::Deployed { config, version, deployment } => {
            act::deployed(&config, deployment.as_deref(), &version, out)
        }
        Command::Versions { config, json, deployment } => act::versions(&config, deployment.as_deref(), json, out),
        Command::Mark { config, version, state, reason, by, deployment } => {
            let by = by.unwrap_or_else(user_name);
            let query = format!("?state={state}&by={}&reason={}", url_segment(&by), url_segment(&reason));
            act::post(&config, deployment.as_deref(), &format!("/versions/{}/mark{query}", url_segment(&version)), out)
        }
        Command::Pause { config, duration, deployment } => {
            act::post(&config, deployment.as_deref(), &format!("/pause{}", act::for_query(duration)), out)
        }
        Command::Resume { config, deployment } => act::post(&config, deployment.as_deref(), "/resume", out),
        Command::Silence { config, rule, duration, deployment } => act::post(
            &config,
            deployment.as_deref(),
            &format!("/silence/{}{}", url_segment(&rule), act::for_query(Some(duration))),
            out,
        ),
        Command::Unsilence { config, rule, deployment } => {
            act::post(&config, deployment.as_deref(), &format!("/unsilence/{}", url_segment(&rule)), out)
        }
        Command::Notify { config, channel, template, vars, deployment } => {
            act::notify(&config, deployment.as_deref(), &channel, &template, &vars, out)
        }
        Command::History { config, json, deployment } => act::history(&config, deployment.as_deref(), json, out),
        Command::Report { config, id, format, deployment } => {
            act::report(&config, deployment.as_deref(), &id, format, out)
        }
        Command::Annotate { config, id, root_cause, deployment } => {
            // Among replicas the root cause goes to the leader (and through the shared log to
            // every replica's history); alone, straight into the journal.
            if act::has_ha(&config, deployment.as_deref()) {
                let query = format!("?root_cause={}", url_segment(&root_cause));
                act::post(&config, deployment.as_deref(), &format!("/annotate/{}{query}", url_segment(&id)), out)
            } else {
                act::annotate(&config, deployment.as_deref(), &id, &root_cause, out)
            }
        }
    }
}

/// Who is at the keyboard, for `--by`: `$USER`, `$LOGNAME`, else the process's user — its
/// name in `/etc/passwd`, or `uid N` (a container's root has no `$USER`; no C call needed: the
/// owner of `/proc/self` is the process's uid).
fn user_name() -> String {
    use std::os::unix::fs::MetadataExt;
    if let Some(name) = ["USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|u| !u.trim().is_empty()))
    {
        return name;
    }
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else { return "unknown".into() };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| passwd_name(&passwd, uid))
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The name of `uid` in an `/etc/passwd` text (`name:x:uid:gid:...`).
fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_string())
    })
}

/// A path segment, percent-encoded.
fn url_segment(text: &str) -> String {
    let vars = crate::template::Vars::from([("v".to_string(), text.to_string())]);
    crate::template::render("{{v}}", &vars, crate::template::Escape::Url).unwrap_or_default()
}

fn parse_span(text: &str) -> Result<crate::time::Span, String> {
    crate::time::parse_duration(text).map_err(|e| e.to_string())
}

/// Every `*.toml` file named or below a named directory, sorted; a missing path is an error.
pub fn toml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostics> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>, errors: &mut Diagnostics) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                return errors.push(Diagnostic::file(dir, format!("cannot read directory: {e}")));
            }
        };
        let mut found: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        found.sort();
        for p in found {
            if p.is_dir() {
                walk(&p, out, errors);
            } else if p.extension().is_some_and(|e| e == "toml") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut errors = Diagnostics::default();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out, &mut errors);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            errors.push(Diagnostic::file(p, "no such file or directory"));
        }
    }
    if out.is_empty() && errors.is_empty() {
        for p in paths {
            errors.push(Diagnostic::file(p, "no .toml files here"));
        }
    }
    errors.into_result(out)
}

#[cfg(test)]
mod help_tests {
    use clap::CommandFactory;

    #[test]
    fn every_command_and_flag_has_help() {
        let cli = super::Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(sub.get_name().to_string());
            }
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && arg.get_help().is_none() {
                    missing.push(format!("{} {id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }
}

#[cfg(test)]
mod user_tests {
    #[test]
    fn a_uid_is_named_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n";
        assert_eq!(super::passwd_name(passwd, 0).as_deref(), Some("root"));
        assert_eq!(super::passwd_name(passwd, 1000).as_deref(), Some("alice"));
        assert_eq!(super::passwd_name(passwd, 7), None);
    }
}
