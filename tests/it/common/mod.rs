//! Helpers shared by the integration suites: temp files and running the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rollwatch::time::Stopwatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `text` to `dir/name`, returning the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Runs the built `rollwatch` binary; returns (exit code, stdout, stderr). It runs in the
/// repository root (so that `fixtures/` and `rules/` resolve), where a relative `state_dir` would
/// leave a journal in the working tree: a run that creates `state/` there fails the test.
pub fn rollwatch(args: &[&str]) -> (i32, String, String) {
    let stray = Path::new(env!("CARGO_MANIFEST_DIR")).join("state");
    let was_there = stray.exists();
    let out = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run rollwatch");
    assert!(
        was_there || !stray.exists(),
        "`rollwatch {}` wrote {} into the working tree: give the test a state_dir under its temporary folder",
        args.join(" "),
        stray.display()
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small profile used by several suites: errors above 5% roll back, a health target down for
/// 30 s rolls back.
pub const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m", 10)'

[[rule]]
name = "errors"
when = 'error_rate > 0.05'

[[rule]]
name = "down"
when = 'up("api") == 0'
for = "30s"

[[decide]]
ask = "Is system down?"
if = 'firing("down")'
then = "rollback"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("errors")'
then = "rollback"
"#;

/// Serves HTTP on a fresh loopback port: `reply(request)` gives the status line's code and
/// reason, and the body. Returns `host:port`.
pub async fn serve_http(reply: impl Fn(&str) -> (&'static str, String) + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let (status, body) = reply(&String::from_utf8_lossy(&buf[..n]));
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    addr.to_string()
}

/// A service whose `/metrics` counters grow by `per_tick` requests every `every`, the share
/// `permille`/1000 of them failing (code 500). Returns the metrics URL.
pub async fn counters_service(permille: Arc<AtomicU64>, per_tick: f64, every: Duration) -> String {
    let counters = Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64)));
    {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                let share = permille.load(Ordering::SeqCst) as f64 / 1000.0;
                let mut c = counters.lock().unwrap();
                c.0 += per_tick * (1.0 - share);
                c.1 += per_tick * share;
            }
        });
    }
    let addr = serve_http(move |_| {
        let (ok, err) = *counters.lock().unwrap();
        ("200 OK", format!("http_requests_total{{code=\"200\"}} {ok}\nhttp_requests_total{{code=\"500\"}} {err}\n"))
    })
    .await;
    format!("http://{addr}/metrics")
}

/// A profile that rolls back while the health target `api` is down, with a procedure that
/// announces, runs `runs` in order, and announces completion.
pub fn down_profile(runs: &[&str]) -> String {
    let mut text = String::from(
        "[[rule]]\nname = \"down\"\nwhen = 'up(\"api\") == 0'\n\n[[decide]]\nask = \"Is system down?\"\nif = 'firing(\"down\")'\nthen = \"rollback\"\n\n[[procedure.rollback]]\nannounce = \"rollback_in_progress\"\n",
    );
    for run in runs {
        text.push_str(&format!("\n[[procedure.rollback]]\nrun = \"{run}\"\n"));
    }
    text.push_str("\n[[procedure.rollback]]\nannounce = \"rollback_complete\"\n");
    text
}

/// How long a wait for a condition may last before the test fails: generous, for a loaded
/// 2-core machine. A test that passes never waits it out.
pub const DEADLINE: f64 = 30.0;

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// A wait's deadline: fails the test, saying what it waited for and what it saw last.
struct Deadline<'a> {
    what: &'a str,
    secs: f64,
    waiting: Stopwatch,
}

impl Deadline<'_> {
    fn check(&self, seen: &dyn std::fmt::Debug) {
        assert!(
            self.waiting.elapsed_secs() < self.secs,
            "timed out after {} s waiting for {}; last seen: {seen:#?}",
            self.secs,
            self.what
        );
    }
}

/// The one wait of these suites: tests wait on a condition, never for a fixed time. Looks at
/// `probe` every 20 ms until it answers `Ok(value)`, and returns the value; while it answers
/// `Err(seen)` for more than `secs` s, fails the test with `what` and the last `seen`.
pub async fn wait_for<T, E: std::fmt::Debug>(what: &str, secs: f64, mut probe: impl AsyncFnMut() -> Result<T, E>) -> T {
    let deadline = Deadline { what, secs, waiting: Stopwatch::start() };
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => deadline.check(&seen),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_for`] outside the async runtime (a plain thread, a synchronous helper).
pub fn wait_for_blocking<T, E: std::fmt::Debug>(what: &str, secs: f64, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Deadline { what, secs, waiting: Stopwatch::start() };
    loop {
        match probe() {
            Ok(value) => return value,
            Err(seen) => deadline.check(&seen),
        }
        std::thread::sleep(POLL);
    }
}

/// Waits (at most [`DEADLINE`]) until `ready` holds.
pub async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    wait_for(what, DEADLINE, async || if ready() { Ok(()) } else { Err("not yet") }).await
}

/// Reads the journal at `path` until `ready` holds for its events (at most [`DEADLINE`]).
pub async fn wait_for_journal(
    path: &Path,
    what: &str,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    wait_for(what, DEADLINE, async || {
        let events = rollwatch::journal::Journal::read_back(path).unwrap_or_default();
        if ready(&events) { Ok(events) } else { Err(events) }
    })
    .await
}

/// A sidecar's `/status` as JSON, or why it did not answer (within 2 s).
pub async fn status(listen: &str) -> Result<serde_json::Value, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().map_err(|e| e.to_string())?;
    let answer = client.get(format!("http://{listen}/status")).send().await.map_err(|e| e.to_string())?;
    answer.json().await.map_err(|e| e.to_string())
}

/// The sidecar's `/status` once `ready` holds for it (at most [`DEADLINE`]).
pub async fn status_when(listen: &str, what: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    wait_for(what, DEADLINE, async || match status(listen).await {
        Ok(s) if ready(&s) => Ok(s),
        Ok(s) => Err(s),
        Err(e) => Err(serde_json::Value::String(e)),
    })
    .await
}

/// Waits until the sidecar at `listen` has evaluated `n` more ticks than it had when asked, and
/// returns its `/status` then. Each tick's decisions are acted on before its status is
/// published, so whatever those ticks would start has been started (and journalled) by then:
/// this is how a test shows that nothing happened, rather than by sleeping.
pub async fn ticks_later(listen: &str, n: u64) -> serde_json::Value {
    let ticks = |s: &serde_json::Value| s["ticks_total"].as_u64().unwrap_or(0);
    let from = ticks(&status_when(listen, "the sidecar's /status", |s| s["ticks_total"].is_u64()).await);
    status_when(listen, &format!("{n} more ticks than {from}"), |s| ticks(s) >= from + n).await
}

/// Stops a running sidecar with SIGTERM and checks that it exits 0.
pub fn sigterm(child: &mut std::process::Child) {
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    assert!(child.wait().unwrap().success(), "the sidecar did not stop cleanly");
}

/// `rollwatch record -c config -o fixture` running, its output in `dir`, serving `/status` on
/// its own `listen` address so that the test can wait for what it wants recorded; then
/// [`Recording::stop`] ends it as SIGTERM does (it writes the fixture, as at the end of `--for`).
pub struct Recording {
    pub listen: String,
    dir: PathBuf,
    child: Guard,
}

impl Recording {
    pub fn start(dir: &Path, config: &Path, fixture: &Path) -> Recording {
        let listen = free_listen();
        let child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(["record", "-c"])
            .arg(config)
            // A bound only: the test stops it once the recording holds what it is about.
            .args(["--for", "5m", "-o"])
            .arg(fixture)
            .args(["--listen", &listen])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(std::fs::File::create(dir.join("record.stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("record.stderr")).unwrap())
            .spawn()
            .unwrap();
        Recording { listen, dir: dir.to_path_buf(), child: Guard(child) }
    }

    /// Its `/status` once `ready` holds for it.
    pub async fn status_when(&self, what: &str, ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        status_when(&self.listen, what, ready).await
    }

    /// Stops it with SIGTERM; its exit code and output (stdout, then stderr).
    pub fn stop(mut self) -> (i32, String) {
        let kill = Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status().unwrap();
        assert!(kill.success());
        let code = self.child.0.wait().unwrap().code().unwrap_or(-1);
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        (code, format!("{}{}", read("record.stdout"), read("record.stderr")))
    }
}

/// A sidecar killed when the test ends, also when it fails (none left running by a failed test);
/// [`Guard::stop`] stops it with SIGTERM and checks its clean exit.
pub struct Guard(pub std::process::Child);

impl Guard {
    pub fn stop(mut self) {
        sigterm(&mut self.0);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A deployment whose health endpoint (`api`) is up only while `healthy` is set, with its version
/// `v2` served by a second endpoint (`app`) that stays up.
pub struct DownDeployment {
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
    health: String,
    version: String,
}

impl DownDeployment {
    /// Starts both endpoints, unhealthy.
    pub async fn start() -> DownDeployment {
        let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = healthy.clone();
        let health = serve_http(move |_| match h.load(Ordering::SeqCst) {
            true => ("200 OK", "ok".into()),
            false => ("503 Service Unavailable", "down".into()),
        })
        .await;
        let version = serve_http(|_| ("200 OK", r#"{"status":"ok","version":"v2"}"#.into())).await;
        DownDeployment { healthy, health, version }
    }

    /// A config's head: the profile, state dir, listen address, 200 ms evaluation, both targets
    /// polled every 200 ms and the version read from `app`. Append `[policy]`, channels, actions.
    pub fn config_head(&self, profile: &Path, state: &Path, listen: &str) -> String {
        format!(
            r#"profiles = [{profile:?}]
state_dir = {state:?}
listen = "{listen}"
eval_interval = "200ms"
version = {{ target = "app", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{health}/health"
interval = "200ms"

[[target]]
name = "app"
kind = "health"
url = "http://{version}/version"
interval = "200ms"
"#,
            profile = profile.display().to_string(),
            state = state.display().to_string(),
            health = self.health,
            version = self.version,
        )
    }
}

/// A service that deploys versions: `/health` answers `{"status":"ok","version":V}`, `/metrics`
/// counts requests (40 every 100 ms), the share failing set per version (per mille), and
/// `POST /rollback?to=V` deploys V (as `kubectl rollout undo --to-revision` would), refusing a
/// version it never ran.
#[derive(Clone)]
pub struct VersionedService {
    pub state: Arc<std::sync::Mutex<ServiceState>>,
    pub addr: String,
}

pub struct ServiceState {
    pub version: String,
    pub permille: std::collections::BTreeMap<String, u64>,
    pub ok: f64,
    pub errors: f64,
    /// Every `POST /rollback` target, in order.
    pub rollbacks: Vec<String>,
}

impl VersionedService {
    pub async fn start(version: &str, permille: u64) -> VersionedService {
        let state = Arc::new(std::sync::Mutex::new(ServiceState {
            version: version.to_string(),
            permille: [(version.to_string(), permille)].into(),
            ok: 0.0,
            errors: 0.0,
            rollbacks: vec![],
        }));
        {
            let state = state.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(100));
                loop {
                    ticker.tick().await;
                    let mut s = state.lock().unwrap();
                    let share = *s.permille.get(&s.version).unwrap_or(&0) as f64 / 1000.0;
                    s.ok += 40.0 * (1.0 - share);
                    s.errors += 40.0 * share;
                }
            });
        }
        let s = state.clone();
        let addr = serve_http(move |request| {
            let line = request.lines().next().unwrap_or("").to_string();
            let mut st = s.lock().unwrap();
            if line.starts_with("GET /health") {
                return ("200 OK", format!(r#"{{"status":"ok","version":"{}"}}"#, st.version));
            }
            if line.starts_with("GET /metrics") {
                return (
                    "200 OK",
                    format!(
                        "http_requests_total{{code=\"200\"}} {}\nhttp_requests_total{{code=\"500\"}} {}\n",
                        st.ok.floor(),
                        st.errors.floor()
                    ),
                );
            }
            if let Some(rest) = line.strip_prefix("POST /rollback?to=") {
                let to = rest.split_whitespace().next().unwrap_or("").to_string();
                st.rollbacks.push(to.clone());
                if !st.permille.contains_key(&to) {
                    return ("400 Bad Request", format!("never ran {to:?}"));
                }
                st.version = to;
                return ("200 OK", "rolled back".into());
            }
            ("404 Not Found", String::new())
        })
        .await;
        VersionedService { state, addr }
    }

    /// Deploys `version`, failing `permille`/1000 of its requests.
    pub fn deploy(&self, version: &str, permille: u64) {
        let mut s = self.state.lock().unwrap();
        s.permille.insert(version.to_string(), permille);
        s.version = version.to_string();
    }

    /// Changes how many of `version`'s requests fail from now on.
    pub fn set_errors(&self, version: &str, permille: u64) {
        self.state.lock().unwrap().permille.insert(version.to_string(), permille);
    }

    pub fn rollbacks(&self) -> Vec<String> {
        self.state.lock().unwrap().rollbacks.clone()
    }
}

/// A SOLVEREIGN-shaped profile on short windows: errors > 5% (2 s window) roll back, > 1% for
/// 1 s is considered, a KeyFeatureBroken alert (the environment's) rolls back; the procedure
/// announces, undoes to the target version, announces completion.
pub const VERSIONED_PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "2s", 20)'

[[rule]]
name = "error-rate-critical"
when = 'error_rate > 0.05'

[[rule]]
name = "error-rate-elevated"
when = 'error_rate > 0.01'
for = "1s"

[[rule]]
name = "key-feature-broken"
scope = "environment"
when = 'last("ALERTS{alertname=\"KeyFeatureBroken\"}") > 0'
on_no_data = "ok"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("error-rate-critical")'
then = "rollback"

[[decide]]
ask = "Is key feature broken?"
if = 'firing("key-feature-broken")'
then = "rollback"

[[decide]]
ask = "Is error rate > 1%?"
if = 'firing("error-rate-elevated")'
then = "consider"

[[procedure.rollback]]
announce = "rollback_in_progress"

[[procedure.rollback]]
run = "undo"

[[procedure.rollback]]
announce = "rollback_complete"
"#;

/// A config for [`VERSIONED_PROFILE`] watching `service`: 200 ms polls and ticks, the version
/// from `/health`, an undo to `{{target_version}}`, a console channel, and `policy` lines (which
/// replace the short `bake`, `verify_stable` and `verify_for` defaults they name).
pub fn versioned_config(dir: &Path, service: &VersionedService, listen: &str, policy: &str) -> PathBuf {
    versioned_config_with(dir, service, listen, policy, VERSIONED_PROFILE)
}

/// [`versioned_config`] with another profile (`profile`, the text of `profile.toml`): it may
/// run the action `undo`.
pub fn versioned_config_with(
    dir: &Path,
    service: &VersionedService,
    listen: &str,
    policy: &str,
    profile: &str,
) -> PathBuf {
    let profile = write(dir, "profile.toml", profile);
    let text = format!(
        r#"profiles = [{profile:?}]
state_dir = {state:?}
listen = "{listen}"
eval_interval = "200ms"
version = {{ target = "api", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{addr}/health"
interval = "200ms"

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "http://{addr}/metrics"
interval = "200ms"

[policy]
{defaults}
{policy}

[channels.console]
kind = "console"

[actions.undo]
kind = "http"
method = "POST"
url = "http://{addr}/rollback?to={{{{target_version}}}}"
"#,
        profile = profile.display().to_string(),
        state = dir.join("state").display().to_string(),
        addr = service.addr,
        // The short defaults, unless `policy` sets its own.
        defaults = [("bake", "\"1s\""), ("verify_stable", "\"2s\""), ("verify_for", "\"10s\"")]
            .iter()
            .filter(|(key, _)| !policy.lines().any(|l| l.trim_start().starts_with(&format!("{key} "))))
            .map(|(key, value)| format!("{key} = {value}\n"))
            .collect::<String>(),
    );
    write(dir, "rollwatch.toml", text)
}

/// A free loopback port's address (bound and released).
pub fn free_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// `rollwatch run -c config` with its stdout (the console channel) and stderr in `dir`.
pub fn spawn_run(dir: &Path, config: &Path) -> std::process::Child {
    spawn_run_env(dir, config, &[])
}

/// [`spawn_run`] with more environment (a failpoint, a faked clock).
pub fn spawn_run_env(dir: &Path, config: &Path, env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["run", "-c"])
        .arg(config)
        .env("ROLLWATCH_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap()
}

/// The journal's events of one kind.
pub fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// Posts an Alertmanager webhook (version 4) with one `KeyFeatureBroken` alert in `status`
/// (`firing` or `resolved`) to a sidecar's hook; it must be accepted.
pub async fn post_alert(listen: &str, status: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = format!(
        r#"{{"version":"4","groupKey":"g","status":"{status}","receiver":"rollwatch","groupLabels":{{}},
        "commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am","truncatedAlerts":0,
        "alerts":[{{"status":"{status}","labels":{{"alertname":"KeyFeatureBroken"}},"annotations":{{}},
        "startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"f"}}]}}"#
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{listen}/hooks/alertmanager"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
}

/// Unmounts (lazily) on drop, every mount stacked there.
pub struct Unmount(pub PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for _ in 0..3 {
            let unmounted = Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
            if !unmounted.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

pub fn mount(state: &Path, options: &str) {
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(state).status().unwrap();
    assert!(ok.success(), "mounting a tmpfs needs root (scripts/test.sh runs the tests as root)");
}

/// Fills the disk to the last byte, the journal's own last page too.
pub fn fill_disk(state: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(state.join("filler")).unwrap();
    for chunk in [65536, 4096, 1] {
        while filler.write_all(&vec![0u8; chunk]).is_ok() {}
    }
    // The journal's last page still has room: fill it with empty lines (read back as nothing).
    let mut journal = std::fs::OpenOptions::new().append(true).open(state.join("journal.jsonl")).unwrap();
    while journal.write_all(b"\n").and_then(|()| journal.sync_data()).is_ok() {}
}
