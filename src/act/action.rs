//! Rollback actions: `exec` (an argv run directly, never through a shell, killed at its
//! timeout, judged by its exit status, and nothing it started left running: see
//! [`process`](super::process)), `http` (a request whose status must match) and `file` (a kill-switch marker made or
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

use super::process;

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

/// How long a step's output is still read after its program exited: what a child holding the
/// pipes writes later is not waited for.
const OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// How long output already written is collected once every process of the step was ended.
const OUTPUT_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Runs `argv` with no shell, as a step ([`process::spawn`]: its own process group, marked). The
/// result is the program's exit status; its output is read until it exits plus
/// [`OUTPUT_GRACE`]; at `timeout` it is killed. Either way, at the end every process the step
/// left is ended ([`process::Tracked::end`]) and named in the detail.
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
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(inherited)
        .envs(env)
        .envs(secret_env.iter().map(|(k, v)| (k, &v.0)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, tracked) = match process::spawn(&mut command) {
        Ok(c) => c,
        Err(e) => return ActionResult::failed(format!("cannot start {program:?}: {e}"), watch),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (status, left) = {
        let reading = async {
            tokio::join!(drain(stdout, &mut out), drain(stderr, &mut err));
        };
        tokio::pin!(reading);
        let mut read_all = false;
        let exited = tokio::time::timeout(timeout.as_std(), async {
            loop {
                tokio::select! {
                    status = child.wait() => break status,
                    () = &mut reading, if !read_all => read_all = true,
                }
            }
        })
        .await;
        if exited.is_ok() && !read_all {
            read_all = tokio::time::timeout(OUTPUT_GRACE, &mut reading).await.is_ok();
        }
        if exited.is_err() {
            // Killed and waited for before the sweep: the sweep never reaps tokio's child.
            let _ = child.kill().await;
        }
        let left = tracked.end().await;
        if !read_all {
            // What was written before the end; a holder that escaped (no subreaper) is not waited for.
            let _ = tokio::time::timeout(OUTPUT_FLUSH, &mut reading).await;
        }
        (exited, left)
    };
    let mut output = out;
    output.extend_from_slice(&err);
    // Cut to OUTPUT_CAP by the caller, after redaction.
    let output = String::from_utf8_lossy(&output).into_owned();
    let left = process::describe(&left);
    let duration_ms = watch.elapsed().0;
    match status {
        Ok(Ok(s)) => ActionResult {
            ok: s.success(),
            detail: match s.code() {
                Some(code) => format!("exit status {code}{left}"),
                None => format!("ended by {s}{left}"),
            },
            output,
            duration_ms,
        },
        Ok(Err(e)) => {
            ActionResult { ok: false, detail: format!("waiting for {program:?}: {e}{left}"), output, duration_ms }
        }
        Err(_) => {
            ActionResult { ok: false, detail: format!("timed out after {timeout}; killed{left}"), output, duration_ms }
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

/// Reads a pipe to its end into `kept`, keeping the first [`READ_CAP`] bytes (what was read is
/// kept if the reading is cut off).
async fn drain(pipe: Option<impl AsyncRead + Unpin>, kept: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = READ_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
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

    /// Waits until process `pid` is gone or a zombie (not running either way): a SIGKILL is
    /// sent, not awaited, so on a loaded machine it may take a moment. Panics after 5 s.
    async fn assert_ends(pid: &str, what: &str) {
        let sent = crate::time::Stopwatch::start();
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone: no stat at all.
            let running = state.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'));
            if !running {
                return;
            }
            assert!(sent.elapsed_secs() < 5.0, "{what} {pid} survived: {state}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Reads the pid a step's script wrote to `path`.
    fn pid_in(path: &std::path::Path) -> String {
        std::fs::read_to_string(path).unwrap().trim().to_string()
    }

    #[tokio::test]
    async fn the_timeout_kills_what_the_program_started_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let r = exec_action(&["/bin/sh", "-c", &script], 300).run(&Vars::new(), &client()).await;
        assert!(r.detail.starts_with("timed out"), "{r:?}");
        assert_ends(&pid_in(&pidfile), "the grandchild sleep").await;
    }

    /// A program that exits 0 leaving a child that holds its stdout: the step is its exit status,
    /// read until the exit plus a short grace — and the child is ended with the step.
    #[tokio::test]
    async fn a_program_that_exits_0_leaving_a_child_on_its_stdout_succeeds_and_the_child_ends() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("echo started; sleep 30 & echo $! > {}; exit 0", pidfile.display());
        let watch = Stopwatch::start();
        let r = exec_action(&["/bin/sh", "-c", &script], 10_000).run(&Vars::new(), &client()).await;
        assert!(r.ok, "{r:?}");
        assert!(watch.elapsed() < Span::from_secs(5), "waited for the child: {}", watch.elapsed());
        assert_eq!(r.output, "started\n");
        // (An orphan of a contained test's step running beside may be named too.)
        let pid = pid_in(&pidfile);
        assert!(r.detail.starts_with("exit status 0; ended "), "{}", r.detail);
        assert!(r.detail.contains(&format!("sleep (pid {pid})")), "{}", r.detail);
        assert_ends(&pid, "the background sleep").await;
        // A failing program's children end too, and the result is still its status.
        let script = format!("sleep 30 & echo $! > {}; exit 3", pidfile.display());
        let r = exec_action(&["/bin/sh", "-c", &script], 10_000).run(&Vars::new(), &client()).await;
        assert_eq!((r.ok, r.detail.starts_with("exit status 3; ended ")), (false, true), "{r:?}");
        assert_ends(&pid_in(&pidfile), "the failed step's sleep").await;
    }

    /// `setsid` leaves the process group, so a group kill misses it. Contained (rollwatch the
    /// child subreaper, as `rollwatch run` makes itself), it is found by its marker — or, with its
    /// environment cleared, as an orphan born while steps ran — and ended.
    #[tokio::test]
    async fn a_grandchild_that_calls_setsid_is_still_ended_when_contained() {
        assert!(process::contain(), "Linux: PR_SET_CHILD_SUBREAPER");
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script =
            format!("setsid /bin/sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; exit 0", pidfile.display());
        let r = exec_action(&["/bin/sh", "-c", &script], 10_000).run(&Vars::new(), &client()).await;
        assert!(r.ok, "{r:?}");
        // Caught as `setsid` when it had not yet exec'd `sleep`: the same process.
        let pid = pid_in(&pidfile);
        assert!(
            r.detail.contains(&format!("sleep (pid {pid})")) || r.detail.contains(&format!("setsid (pid {pid})")),
            "{}",
            r.detail
        );
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(" S ") && !stat.contains(" R "), "still running: {stat}");
        assert_ends(&pid, "the setsid sleep").await;
        // Its environment cleared too: an orphan of ours born while steps ran. Another test's
        // step may be running beside this one: then the last step to end finds it.
        let script = format!(
            "setsid /usr/bin/env -i /bin/sleep 30 </dev/null >/dev/null 2>&1 & echo $! > {}; sleep 0.2; exit 0",
            pidfile.display()
        );
        let r = exec_action(&["/bin/sh", "-c", &script], 10_000).run(&Vars::new(), &client()).await;
        assert!(r.ok, "{r:?}");
        assert_ends(&pid_in(&pidfile), "the setsid sleep with a cleared environment").await;
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
