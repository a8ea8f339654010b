//! The acting subcommands. `approve`, `pause`, `resume`, `silence` and `unsilence` ask the
//! running sidecar (at the config's `listen` address, with the bearer token from
//! `api_token_env`); `notify` sends a template through the config's channels directly;
//! `history` and `annotate` read and append to the journal in `state_dir`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::report::{line, lines};
use crate::act::history;
use crate::config::deploy::Config;
use crate::notify::{Console, Notifier};
use crate::template::messages::blank_vars;
use crate::time::{Clock, Span, SystemClock};

/// The deployment a command concerns (`--deployment NAME` in a fleet); else its errors are
/// written and the exit code returned: 2 for a `--deployment` left out or naming none (a usage
/// error), 1 for a config's errors.
fn load_deployment(
    path: &Path,
    deployment: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<Result<crate::rules::deployment::Deployment, ExitCode>> {
    use crate::rules::deployment::NotLoaded;
    match crate::rules::deployment::load_selected(path, deployment) {
        Ok(loaded) => Ok(Ok(loaded)),
        Err(e) => {
            writeln!(out, "{e}")?;
            Ok(Err(match e {
                NotLoaded::Unselected(_) => ExitCode::from(2),
                NotLoaded::Invalid(_) => ExitCode::FAILURE,
            }))
        }
    }
}

/// The config of the deployment a command concerns, as [`load_deployment`].
fn load(path: &Path, deployment: Option<&str>, out: &mut dyn Write) -> anyhow::Result<Result<Config, ExitCode>> {
    Ok(load_deployment(path, deployment, out)?.map(|d| d.config))
}

/// `rollwatch report -c FILE ID [--format md|json]`: the incident report of one rollback.
pub fn report(
    config: &Path,
    deployment: Option<&str>,
    id: &str,
    format: ReportFormat,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let loaded = match load_deployment(config, deployment, out)? {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let severities = loaded.evaluator.rules.iter().map(|r| (r.name.clone(), r.severity.clone())).collect();
    const KINDS: &[&str] = &[
        "deploy",
        "transition",
        "decision",
        "approval_opened",
        "approval_closed",
        "rollback_started",
        "step_finished",
        "rollback_finished",
        "escalation",
        "annotated",
        "suppressed",
    ];
    let journal = loaded.config.state_dir.join("journal.jsonl");
    let lines =
        crate::journal::Journal::read_back_kept(&journal, |l| l["event"].as_str().is_some_and(|e| KINDS.contains(&e)))?;
    match crate::act::report::incident(&lines, id, &severities) {
        Ok(mut incident) => {
            incident.deployment = loaded.config.member.as_ref().map(|m| m.name.clone());
            match format {
                ReportFormat::Md => write!(out, "{}", incident.markdown())?,
                ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&incident)?)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if let Some(note) = held_elsewhere(&loaded.config) {
                line(out, &note)?;
            }
            writeln!(out, "{}: {e}", journal.display())?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `report --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Markdown, after the runbook's incident report template.
    Md,
    /// JSON, every field the Markdown shows.
    Json,
}

/// POSTs `path_and_query` to the running sidecar and prints its answer.
pub fn post(
    config: &Path,
    deployment: Option<&str>,
    path_and_query: &str,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    post_body(config, deployment, path_and_query, None, out)
}

/// `rollwatch deployed -c FILE VERSION`: `POST /hooks/deploy` as a pipeline would.
pub fn deployed(
    config: &Path,
    deployment: Option<&str>,
    version: &str,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "version": version, "source": "command" });
    post_body(config, deployment, "/hooks/deploy", Some(body), out)
}

/// `rollwatch versions -c FILE [--json]`: every version the journal knows, latest deploy last
/// (of versions deployed before the last [`RECENT_VERSIONS`](crate::act::versions::RECENT_VERSIONS),
/// those with a verdict).
pub fn versions(config: &Path, deployment: Option<&str>, json: bool, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let config = match load(config, deployment, out)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let state = history::state(&config.state_dir.join("journal.jsonl"))?;
    let list = history::versions(&state);
    let current = state.versions.current.clone();
    let target = state.versions.target().map(str::to_string);
    let elsewhere = held_elsewhere(&config);
    if json {
        let mut value = serde_json::json!({ "current": current, "target": target, "versions": list });
        if let Some(note) = elsewhere {
            value["note"] = serde_json::json!(note);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(note) = &elsewhere {
        line(out, note)?;
    }
    if list.is_empty() {
        writeln!(out, "no deploys in {}", config.state_dir.join("journal.jsonl").display())?;
    }
    let forgotten = state.versions.forgotten();
    if forgotten > 0 {
        let recent = crate::act::versions::RECENT_VERSIONS;
        writeln!(out, "({forgotten} versions without a verdict, deployed before the last {recent}, are forgotten)")?;
    }
    // Versions and evidence come from outside (a service, a pipeline, an operator): each line
    // goes out through `line`, control characters shown as escapes.
    for v in &list {
        let now = if current.as_ref() == Some(&v.version) { "  (deployed now)" } else { "" };
        let deploys = if v.deploys > 1 { format!(", {} deploys", v.deploys) } else { String::new() };
        line(out, &format!("{}  {}  deployed {}{deploys}{now}", v.version, v.state, crate::time::iso(v.deployed_at)))?;
        for e in &v.evidence {
            line(out, &format!("    {e}"))?;
        }
    }
    line(out, &format!("rollback target: {}", target.as_deref().unwrap_or("none (no other version has run healthy)")))?;
    Ok(ExitCode::SUCCESS)
}

fn post_body(
    config: &Path,
    deployment: Option<&str>,
    path_and_query: &str,
    body: Option<serde_json::Value>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let config = match load(config, deployment, out)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    // A fleet's deployment is named to the sidecar (in the body of a deploy, else the query).
    let (path_and_query, body) = match &config.member {
        None => (path_and_query.to_string(), body),
        Some(m) => match body {
            Some(mut b) => {
                b["deployment"] = serde_json::json!(m.name);
                (path_and_query.to_string(), Some(b))
            }
            None => {
                let join = if path_and_query.contains('?') { '&' } else { '?' };
                (format!("{path_and_query}{join}deployment={}", m.name), None)
            }
        },
    };
    let addr = local_addr(&config);
    let token = match &config.api_token_env {
        None => None,
        Some(var) => Some(std::env::var(var).with_context(|| format!("api_token_env names {var}, which is not set"))?),
    };
    let url = format!("http://{addr}{path_and_query}");
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (status, text) = runtime.block_on(async {
        let client = crate::source::poller::http_client().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut req = client.post(&url).timeout(std::time::Duration::from_secs(10));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        // Always JSON: without a token the sidecar refuses anything else (no cross-site forms).
        let body = body.clone().unwrap_or_else(|| serde_json::json!({}));
        req = req.header("content-type", "application/json").body(body.to_string());
        let resp =
            req.send().await.with_context(|| format!("cannot reach the sidecar at {addr} (is `rollwatch run` up?)"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        anyhow::Ok((status, text))
    })?;
    lines(out, &text)?;
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Where this machine's `rollwatch run` of `config` answers.
fn local_addr(config: &Config) -> std::net::SocketAddr {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// For a deployment of a fleet shared among replicas that another replica holds now (as this
/// machine's `rollwatch run` says): that this journal is as of when this replica last held it,
/// and where the current one is. `None` alone, for one this replica holds, or when nobody answers.
fn held_elsewhere(config: &Config) -> Option<String> {
    let (Some(_), Some(member)) = (&config.ha, &config.member) else { return None };
    let url = format!("http://{}/status/{}", local_addr(config), member.name);
    let runtime = tokio::runtime::Runtime::new().ok()?;
    let page: serde_json::Value = runtime.block_on(async {
        let client = crate::source::poller::http_client().ok()?;
        let resp = client.get(&url).timeout(std::time::Duration::from_secs(2)).send().await.ok()?;
        resp.json().await.ok()
    })?;
    let here = page["ha"]["replica"].as_str()?;
    if page["may_act"] == true {
        return None;
    }
    let holder = match (page["ha"]["leader"]["replica"].as_str(), page["ha"]["leader"]["address"].as_str()) {
        (Some(r), _) if r == here => return None,
        (Some(r), Some(a)) => format!("replica {r} ({a}) holds it"),
        _ => "no replica holds it at the moment".to_string(),
    };
    Some(format!(
        "note: this replica ({here}) does not hold deployment {:?}: {holder}. This journal is as of when {here} last held it (empty if it never did); run the command there for what is current.",
        member.name
    ))
}

/// `rollwatch notify -c FILE --channel NAME --template NAME [--var k=v]...`
pub fn notify(
    config: &Path,
    deployment: Option<&str>,
    channel: &str,
    template: &str,
    vars: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (config, profiles) = match load_deployment(config, deployment, out)? {
        Ok(loaded) => {
            let profiles: Vec<String> = loaded.evaluator.profiles.iter().map(|p| p.name.clone()).collect();
            (loaded.config, profiles)
        }
        Err(code) => return Ok(code),
    };
    let spec = &config.acting;
    if spec.templates.get(template).is_none() {
        let hint = crate::diag::did_you_mean(template, spec.templates.names());
        let known: Vec<&str> = spec.templates.names().collect();
        writeln!(out, "no template named {template:?}{hint}; known: {}", known.join(", "))?;
        return Ok(ExitCode::FAILURE);
    }
    let mut values = blank_vars();
    for v in vars {
        let Some((k, val)) = v.split_once('=') else {
            writeln!(out, "--var {v:?}: write name=value")?;
            return Ok(ExitCode::FAILURE);
        };
        if !values.contains_key(k) && k.strip_prefix("labels.").is_none_or(str::is_empty) {
            let hint = crate::diag::did_you_mean(k, crate::template::messages::VARS.iter().copied());
            writeln!(
                out,
                "--var {k:?}: no such variable{hint}; known: {}",
                crate::template::messages::VARS.join(", ")
            )?;
            return Ok(ExitCode::FAILURE);
        }
        values.insert(k.to_string(), val.to_string());
    }
    // A note sent by hand belongs to no rollback or approval, and the config knows the rest of
    // its context: those values need not be given.
    let context = [
        ("rollback_id", "none".to_string()),
        ("approval_id", "none".to_string()),
        ("profile", profiles.join(", ")),
        ("mode", spec.policy.mode.to_string()),
        ("stable_for", spec.policy.verify_stable.to_string()),
        ("expires_in", crate::time::human(spec.policy.approval_timeout)),
    ];
    let mut given: Vec<&str> = vars.iter().filter_map(|v| v.split_once('=')).map(|(k, _)| k).collect();
    for (k, v) in &context {
        if !given.contains(k) {
            values.insert(k.to_string(), v.clone());
            given.push(k);
        }
    }
    // Every other value the template shows must be given: a message to people never says
    // "unknown" (an empty `--var NAME=` is given, and shows nothing).
    let text = spec.templates.get(template).unwrap_or_default();
    let mut missing: Vec<&str> =
        crate::template::placeholders(text).unwrap_or_default().into_iter().filter(|p| !given.contains(p)).collect();
    missing.dedup();
    if !missing.is_empty() {
        let example: Vec<String> = missing.iter().map(|m| format!("--var {m}=...")).collect();
        writeln!(
            out,
            "template {template:?} shows {} not given: add {} (or --var NAME= to leave one empty)",
            missing.join(", "),
            example.join(" ")
        )?;
        return Ok(ExitCode::FAILURE);
    }
    let env = |var: &str| std::env::var(var).ok();
    let channels = match crate::notify::Channel::build_all(&spec.channels, &env) {
        Ok(c) => c,
        Err(errors) => {
            writeln!(out, "{}", crate::diag::Diagnostics::of_file(&config.path, errors))?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if !channels.iter().any(|c| c.name == channel) {
        let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
        let hint = crate::diag::did_you_mean(channel, names.iter().copied());
        writeln!(out, "no channel named {channel:?}{hint}; configured: {}", names.join(", "))?;
        return Ok(ExitCode::FAILURE);
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let client = crate::source::poller::http_client().map_err(|e| anyhow::anyhow!("{e}"))?;
        let notifier =
            Notifier::start(channels, spec.templates.clone(), client, Console::Stdout, None, Arc::new(SystemClock));
        let secrets = config.secret_vars().into_iter().filter_map(|v| std::env::var(v).ok());
        notifier.redact_with(crate::secret::Redactor::new(secrets));
        anyhow::Ok(notifier.send(channel, template, &values).await)
    })?;
    match result {
        Ok(d) if d.channel == channel => {
            writeln!(out, "sent {template} to {} ({} attempt(s))", d.channel, d.attempts)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(d) => {
            writeln!(
                out,
                "{channel} failed; sent {template} to its fallback {} ({} attempt(s))",
                d.channel, d.attempts
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "not sent: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `rollwatch history -c FILE [--json]`
pub fn history(config: &Path, deployment: Option<&str>, json: bool, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let config = match load(config, deployment, out)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    let state = history::state(&config.state_dir.join("journal.jsonl"))?;
    let entries = history::entries(&state);
    let approvals = history::approvals(&state);
    let elsewhere = held_elsewhere(&config);
    if json {
        let mut value = serde_json::json!({ "rollbacks": entries, "approvals": approvals });
        if let Some(note) = elsewhere {
            value["note"] = serde_json::json!(note);
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(note) = &elsewhere {
        line(out, note)?;
    }
    if entries.is_empty() {
        writeln!(out, "no rollbacks in {}", config.state_dir.join("journal.jsonl").display())?;
    }
    for e in entries {
        line(out, &format!("{}  ({})", e.summary(), e.date))?;
        let config_args = match &config.member {
            Some(m) => format!("{} --deployment {}", m.fleet.display(), m.name),
            None => config.path.display().to_string(),
        };
        let hint = format!("(not recorded: rollwatch annotate -c {config_args} {} --root-cause \"...\")", e.id);
        line(out, &format!("    root cause: {}", e.root_cause.as_deref().unwrap_or(&hint)))?;
        if let Some(t) = e.timing_line() {
            line(out, &format!("    timing: {t}"))?;
        }
        for step in &e.steps {
            line(out, &format!("    step {step}"))?;
        }
        if let Some(err) = &e.error {
            line(out, &format!("    error: {err}"))?;
        }
        if let (Some(id), Some(by)) = (&e.approval_id, &e.approved_by) {
            line(out, &format!("    approved: {id} by {by}"))?;
        }
    }
    let answered: Vec<_> = approvals.iter().filter(|a| a.result != "granted" && a.result != "auto").collect();
    if !answered.is_empty() {
        writeln!(out, "approvals not acted on:")?;
    }
    for a in answered {
        let by = a.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
        let why = a.why.as_deref().map(|w| format!(": {w}")).unwrap_or_default();
        let version = a.version.as_deref().unwrap_or("?");
        line(out, &format!("{} {} {version}, {}{by}{why}  ({}; {})", a.id, a.profile, a.result, a.date, a.reason))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the config names replicas (`[ha]`); a config that does not load says no (the
/// command it was asked for then reports the errors).
pub fn has_ha(config: &Path, deployment: Option<&str>) -> bool {
    crate::rules::deployment::load_selected(config, deployment).is_ok_and(|d| d.config.ha.is_some())
}

/// `rollwatch annotate -c FILE ID --root-cause TEXT`
pub fn annotate(
    config: &Path,
    deployment: Option<&str>,
    id: &str,
    root_cause: &str,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let config = match load(config, deployment, out)? {
        Ok(config) => config,
        Err(code) => return Ok(code),
    };
    // Dated on the sidecar's timeline (as it resumes), which may differ from the system clock.
    let now = SystemClock.now();
    let at = crate::journal::LastTimeline::read(&config.state_dir).map_or(now, |l| l.resume(now, config.ha.is_none()));
    match history::annotate(&config.state_dir, id, root_cause, at) {
        Ok(()) => {
            writeln!(out, "{id}: root cause recorded")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "{e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `--for` for `pause` and `silence`, as a query string.
pub fn for_query(d: Option<Span>) -> String {
    d.map(|d| format!("?for={d}")).unwrap_or_default()
}
