//! Rollback actions: `exec` (an argv run directly, never through a shell, killed at its
//! timeout), `http` (a request whose status must match) and `file` (a kill-switch marker made or
//! removed). Each template value fills exactly one argv element, header, URL component or JSON
//! string, so a hostile label value stays data. Every run reports success, a one-line detail and
//! capped output for the journal.

use std::collections::BTreeMap;
use std::process::Stdio;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::acting::ActionSpec;
use crate::error_chain;
use crate::secret::{INHERITED_ENV, Secret};
use crate::template::{Escape, TemplateError, Vars, render};
use crate::time::{Span, Stopwatch};

/// Output kept per action for the journal.
pub const OUTPUT_CAP: usize = 4096;

/// How much of an output is read before redaction and the cut to [`OUTPUT_CAP`]: a secret
/// straddling the cut is masked whole.
const READ_CAP: usize = 2 * OUTPUT_CAP;

/// What an action does, its secrets read (see [`crate::config::acting::ActionKind`]).
pub type ActionKind = crate::config::acting::ActionKind<Secret>;

/// A configured action (`[actions.NAME]`).
#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub kind: ActionKind,
    pub timeout: Span,
}

/// How one run of an action went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionResult {
    pub ok: bool,
    /// `exit status 0`, `HTTP 200`, `timed out after 2s`, `created /run/killswitch`, …
    pub detail: String,
    /// Captured stdout+stderr or response body, at most [`OUTPUT_CAP`] bytes, lossily decoded.
    pub output: String,
    pub duration_ms: i64,
}

impl ActionResult {
    fn failed(detail: impl Into<String>, watch: Stopwatch) -> ActionResult {
        ActionResult { ok: false, detail: detail.into(), output: String::new(), duration_ms: watch.elapsed().0 }
    }
}

impl Action {
    /// Builds every action, or says every one that cannot be built.
    pub fn build_all(
        specs: &BTreeMap<String, ActionSpec>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Action>, Vec<String>> {
        let mut built = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, spec) in specs {
            match Action::build(spec, env) {
                Ok(action) => drop(built.insert(name.clone(), action)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(built) } else { Err(errors) }
    }

    /// Builds the action from its spec, reading its secrets through `env`; an unset variable is
    /// an error naming the action and the variable, never a value.
    pub fn build(spec: &ActionSpec, env: &dyn Fn(&str) -> Option<String>) -> Result<Action, String> {
        let kind = spec.kind.map_secrets(|var| {
            env(var).map(Secret).ok_or_else(|| format!("action {:?}: environment variable {var} is not set", spec.name))
        })?;
        Ok(Action { name: spec.name.clone(), kind, timeout: spec.timeout })
    }

    /// The placeholders this action's templates name (checked against the known names at load).
    pub fn templates(&self) -> Vec<&str> {
        self.kind.templates()
    }

    /// Runs the action once with `vars` filled in. Never panics; every failure is a result.
    pub async fn run(&self, vars: &Vars, client: &reqwest::Client) -> ActionResult {
        let watch = Stopwatch::start();
        let rendered = match self.kind.render(vars) {
            Ok(k) => k,
            Err(e) => return ActionResult::failed(format!("template: {e}"), watch),
        };
        match rendered {
            ActionKind::Exec { argv, env, secret_env } => exec(&argv, &env, &secret_env, self.timeout, watch).await,
            ActionKind::Http { method, url, headers, bearer, body, expect_status } => {
                let mut req = client.request(method, &url).timeout(self.timeout.as_std());
                for (k, v) in headers {
                    req = req.header(k, v);
                }
                if let Some(token) = bearer {
                    req = req.bearer_auth(&token.0);
                }
                if let Some(body) = body {
                    req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
                }
                let resp = match req.send().await {
                    Ok(r) => r,
                    // reqwest's error text names the URL, never headers: no secret leaks here.
                    Err(e) => return ActionResult::failed(format!("request failed: {}", error_chain(&e)), watch),
                };
                let status = resp.status();
                let output = match read_capped(resp).await {
                    Ok(o) => o,
                    Err(e) => format!("(body unreadable: {e})"),
                };
                let ok = if expect_status.is_empty() {
                    status.is_success()
                } else {
                    expect_status.contains(&status.as_u16())
                };
                ActionResult { ok, detail: format!("HTTP {}", status.as_u16()), output, duration_ms: watch.elapsed().0 }
            }
            ActionKind::File { path, present } => {
                let result = if present {
                    std::fs::write(&path, format!("rollwatch kill-switch: {}\n", vars.get("reason").map_or("", |s| s)))
                        .map(|()| format!("created {}", path.display()))
                } else {
                    match std::fs::remove_file(&path) {
                        Ok(()) => Ok(format!("removed {}", path.display())),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            Ok(format!("{} was already absent", path.display()))
                        }
                        Err(e) => Err(e),
                    }
                };
                match result {
                    Ok(detail) => {
                        ActionResult { ok: true, detail, output: String::new(), duration_ms: watch.elapsed().0 }
                    }
                    Err(e) => ActionResult::failed(format!("{}: {e}", path.display()), watch),
                }
            }
        }
    }
}

impl ActionKind {
    /// A copy with every template filled, each value escaped for its place.
    fn render(&self, vars: &Vars) -> Result<ActionKind, TemplateError> {
        Ok(match self {
            ActionKind::Exec { argv, env, secret_env } => ActionKind::Exec {
                argv: argv.iter().map(|a| render(a, vars, Escape::None)).collect::<Result<_, _>>()?,
                env: env
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), render(v, vars, Escape::None)?)))
                    .collect::<Result<_, _>>()?,
                secret_env: secret_env.clone(),
            },
            ActionKind::Http { method, url, headers, bearer, body, expect_status } => ActionKind::Http {
                method: method.clone(),
                url: render(url, vars, Escape::Url)?,
                // Percent-encoded where a header cannot carry a value's bytes (CR, LF, …).
                headers: headers
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), render(v, vars, Escape::Header)?)))
                    .collect::<Result<_, _>>()?,
                bearer: bearer.clone(),
                body: body.as_ref().map(|b| render(b, vars, Escape::Json)).transpose()?,
                expect_status: expect_status.clone(),
            },
            ActionKind::File { path, present } => ActionKind::File { path: path.clone(), present: *present },
        })
    }
}

/// Runs `argv` with no shell, in its own process group; at `timeout` kills the whole group
/// (what the program started too) and drops its pipes.
async fn exec(
    argv: &[String],
    env: &BTreeMap<String, String>,
    secret_env: &[(String, Secret)],
    timeout: Span,
    watch: Stopwatch,
) -> ActionResult {
    let Some((program, args)) = argv.split_first() else {
        return ActionResult::failed("empty argv", watch);
    };
    let inherited = INHERITED_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (*k, v)));
    let mut child = match tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(inherited)
        .envs(env)
        .envs(secret_env.iter().map(|(k, v)| (k, &v.0)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return ActionResult::failed(format!("cannot start {program:?}: {e}"), watch),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (out, err, status) = tokio::join!(drain(stdout), drain(stderr), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout.as_std(), finished).await {
        Ok((out, err, status)) => {
            let mut output = out;
            output.extend_from_slice(&err);
            // Cut to OUTPUT_CAP by the caller, after redaction.
            let output = String::from_utf8_lossy(&output).into_owned();
            match status {
                Ok(s) => ActionResult {
                    ok: s.success(),
                    detail: match s.code() {
                        Some(code) => format!("exit status {code}"),
                        None => format!("ended by {s}"),
                    },
                    output,
                    duration_ms: watch.elapsed().0,
                },
                Err(e) => ActionResult::failed(format!("waiting for {program:?}: {e}"), watch),
            }
        }
        Err(_) => {
            // The group's id is the child's pid. `kill(1)` reaches the group without unsafe code;
            // the child itself is killed directly either way.
            if let Some(pid) = child.id() {
                let _ = tokio::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            let _ = child.kill().await;
            ActionResult::failed(format!("timed out after {timeout}; killed"), watch)
        }
    }
}

/// Masks every secret in `text`, then cuts it to [`OUTPUT_CAP`] bytes (at a character boundary):
/// in that order, so a secret across the cut cannot leak in part.
pub fn redact_and_cap(redactor: &crate::secret::Redactor, text: &str) -> String {
    let mut out = redactor.redact(text);
    if out.len() > OUTPUT_CAP {
        let mut cut = OUTPUT_CAP;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Reads a pipe to its end, keeping the first [`READ_CAP`] bytes.
async fn drain(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = READ_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

async fn read_capped(mut resp: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut kept = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = READ_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room == 0 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_action(argv: &[&str], timeout_ms: i64) -> Action {
        Action {
            name: "t".into(),
            kind: ActionKind::Exec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                env: BTreeMap::new(),
                secret_env: vec![],
            },
            timeout: Span(timeout_ms),
        }
    }

    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn exec_reports_exit_status_and_output() {
        let ok = exec_action(&["/bin/echo", "hello", "{{who}}"], 5_000);
        let vars = Vars::from([("who".to_string(), "world".to_string())]);
        let r = ok.run(&vars, &client()).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.detail, "exit status 0");
        assert_eq!(r.output, "hello world\n");
        let bad = exec_action(&["/bin/false"], 5_000).run(&Vars::new(), &client()).await;
        assert!(!bad.ok);
        assert_eq!(bad.detail, "exit status 1");
        let missing = exec_action(&["/no/such/program"], 5_000).run(&Vars::new(), &client()).await;
        assert!(!missing.ok);
        assert!(missing.detail.contains("cannot start"), "{}", missing.detail);
    }

    #[tokio::test]
    async fn exec_is_killed_at_its_timeout() {
        let watch = Stopwatch::start();
        let r = exec_action(&["/bin/sleep", "30"], 200).run(&Vars::new(), &client()).await;
        assert!(!r.ok);
        assert!(r.detail.starts_with("timed out after 200ms"), "{}", r.detail);
        assert!(watch.elapsed() < Span::from_secs(10), "not killed: {}", watch.elapsed());
    }

    #[tokio::test]
    async fn the_timeout_kills_what_the_program_started_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = exec_action(&["/bin/sh", "-c", &script], 300).run(&Vars::new(), &client()).await;
        assert!(r.detail.starts_with("timed out"), "{r:?}");
        let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_string();
        // Gone, or a zombie waiting for its reaper: not running either way. A SIGKILL is sent,
        // not awaited: on a loaded machine the process may take a moment to die.
        let sent = crate::time::Stopwatch::start();
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = state.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'));
            if !running {
                break;
            }
            assert!(sent.elapsed_secs() < 5.0, "the grandchild sleep {pid} survived: {state}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn exec_output_is_capped() {
        let r = exec_action(&["/usr/bin/head", "-c", "100000", "/dev/zero"], 5_000).run(&Vars::new(), &client()).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output.len(), READ_CAP, "read in full up to READ_CAP");
        assert_eq!(redact_and_cap(&crate::secret::Redactor::default(), &r.output).len(), OUTPUT_CAP);
    }

    #[tokio::test]
    async fn a_hostile_value_stays_one_argument() {
        let dir = tempfile::tempdir().unwrap();
        let pwned = dir.path().join("pwned");
        let hostile = format!("$(touch {}); echo pwned", pwned.display());
        let vars = Vars::from([("label".to_string(), hostile.clone())]);
        // printf prints each argument on its own line: one line means one argument.
        let r = exec_action(&["/usr/bin/printf", "[%s]\\n", "{{label}}"], 5_000).run(&vars, &client()).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.output, format!("[{hostile}]\n"));
        assert!(!pwned.exists(), "the label value ran as shell code");
    }

    #[tokio::test]
    async fn file_marker_is_created_and_removed_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("killswitch");
        let on = Action {
            name: "on".into(),
            kind: ActionKind::File { path: path.clone(), present: true },
            timeout: Span(1000),
        };
        let off = Action {
            name: "off".into(),
            kind: ActionKind::File { path: path.clone(), present: false },
            timeout: Span(1000),
        };
        assert!(on.run(&Vars::new(), &client()).await.ok);
        assert!(path.exists());
        assert!(off.run(&Vars::new(), &client()).await.ok);
        assert!(!path.exists());
        let again = off.run(&Vars::new(), &client()).await;
        assert!(again.ok && again.detail.contains("already absent"), "{again:?}");
        let nowhere = Action {
            name: "bad".into(),
            kind: ActionKind::File { path: dir.path().join("no/such/dir/marker"), present: true },
            timeout: Span(1000),
        };
        assert!(!nowhere.run(&Vars::new(), &client()).await.ok);
    }

    #[tokio::test]
    async fn an_unknown_placeholder_fails_the_action_without_running_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let a = exec_action(&["/usr/bin/touch", &marker.display().to_string(), "{{nope}}"], 5_000);
        let r = a.run(&Vars::new(), &client()).await;
        assert!(!r.ok);
        assert!(r.detail.contains("unknown placeholder {{nope}}"), "{}", r.detail);
        assert!(!marker.exists());
    }
}
