//! The sidecar end to end on loopback: a real health server goes down and the live engine
//! decides `rollback` within one poll plus one evaluation interval plus the rule's `for`; the
//! binary shuts down cleanly on SIGTERM with its journal whole. Real sockets: short real
//! intervals and generous deadlines.

use crate::common;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{serve_http, write};
use rollwatch::journal::Journal;
use rollwatch::rules::Outcome;

/// A health endpoint answering 200 or 503 as `healthy` says.
async fn health_server(healthy: Arc<AtomicBool>) -> String {
    let addr = serve_http(move |_| {
        let status = if healthy.load(Ordering::SeqCst) { "200 OK" } else { "503 Unavailable" };
        (status, r#"{"status":"ok","version":"v1.2.4"}"#.to_string())
    })
    .await;
    format!("http://{addr}/health/ready")
}

const PROFILE: &str = r#"
[[rule]]
name = "down"
when = 'up("api") == 0'
for = "300ms"

[[decide]]
ask = "Is system down?"
if = 'firing("down")'
then = "rollback"
"#;

fn config_text(url: &str, state: &std::path::Path) -> String {
    format!(
        "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\neval_interval = \"100ms\"\n\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"{url}\"\ninterval = \"50ms\"\ntimeout = \"1s\"\n",
        state.display()
    )
}

/// A running engine watching a health server, and the handles a test drives it with.
struct Running {
    healthy: Arc<AtomicBool>,
    dir: tempfile::TempDir,
    ticks: tokio::sync::mpsc::UnboundedReceiver<rollwatch::engine::TickEvent>,
    stop: tokio::sync::watch::Sender<bool>,
    reload: tokio::sync::mpsc::Sender<()>,
    engine: tokio::task::JoinHandle<Result<(), rollwatch::engine::EngineError>>,
}

async fn start(healthy: bool) -> Running {
    let healthy = Arc::new(AtomicBool::new(healthy));
    let url = health_server(healthy.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let path = write(dir.path(), "rollwatch.toml", config_text(&url, &dir.path().join("state")));
    let rollwatch::rules::deployment::Deployment { config, evaluator: ev, procedures } =
        rollwatch::rules::deployment::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let targets = config.targets(|_| None).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, ticks) = tokio::sync::mpsc::unbounded_channel();
    let (reload, reloads) = tokio::sync::mpsc::channel(1);
    let parts = rollwatch::engine::Parts {
        events: Some(tx),
        reload: Some(reloads),
        ..rollwatch::engine::Parts::new(ev, procedures, targets)
    };
    let engine = tokio::spawn(async move { rollwatch::engine::run(config, parts, shutdown).await });
    Running { healthy, dir, ticks, stop, reload, engine }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_target_going_down_gives_rollback() {
    let Running { healthy, dir, mut ticks, stop, engine, .. } = start(true).await;

    // Healthy first: wait for a tick that saw the target up and decided monitor.
    let healthy_seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(tick) = ticks.recv().await {
            if tick.tick.decisions[0].outcome == Outcome::Monitor && tick.tick.decisions[0].unknown.is_empty() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(healthy_seen, Ok(true));

    healthy.store(false, Ordering::SeqCst);
    let went_down = rollwatch::time::Stopwatch::start();
    let rollback = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(tick) = ticks.recv().await {
            if tick.tick.decisions[0].outcome == Outcome::Rollback {
                return Some(tick.tick.decisions[0].explanation());
            }
        }
        None
    })
    .await
    .expect("rollback within the deadline");
    assert_eq!(rollback.as_deref(), Some("Is system down? YES → rollback"));
    // Within one poll (50ms) + one evaluation (100ms) + the rule's `for` (300ms), with 1 s of
    // allowance for scheduling on a loaded machine; and not before the `for`.
    let took = went_down.elapsed().0;
    assert!(took >= 300, "not before the rule's `for`: {took} ms");
    assert!(took <= 50 + 100 + 300 + 1000, "rollback {took} ms after the target went down");

    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
    let journal = Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
    let events: Vec<&str> = journal.iter().filter_map(|v| v["event"].as_str()).collect();
    assert_eq!(events.first(), Some(&"started"));
    assert_eq!(events.last(), Some(&"stopped"));
    assert!(journal.iter().any(|v| v["event"] == "decision" && v["outcome"] == "rollback"), "{journal:?}");
    assert!(journal.iter().any(|v| v["event"] == "transition" && v["rule"] == "down" && v["to"] == "firing"));
}

#[test]
fn sigterm_stops_the_sidecar_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    // Nothing listens on port 9 of loopback: the target is simply down.
    let path = write(dir.path(), "rollwatch.toml", config_text("http://127.0.0.1:9/health", &dir.path().join("state")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("ROLLWATCH_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("rollwatch started") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the sidecar exited before starting");
    }
    // A second `run` (or `record`) on the same state_dir refuses to start, naming the holder.
    let (code, out, err) = common::rollwatch(&["run", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("in use by another rollwatch (pid {})", child.id())), "{out}{err}");
    let (code, out, _) = common::rollwatch(&["record", "-c", path.to_str().unwrap(), "--for", "1s", "-o", "/dev/null"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("one process per state_dir"), "{out}");
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = common::wait_for_blocking("the sidecar to stop (within 5 s)", 5.0, || {
        child.try_wait().unwrap().ok_or("still running")
    });
    assert!(status.success(), "{status}");
    let journal = Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
    assert_eq!(journal.last().and_then(|v| v["event"].as_str()), Some("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_rule_states_and_a_bad_config_keeps_the_old_one() {
    let Running { dir, mut ticks, stop, reload, engine, .. } = start(false).await;
    let firing = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = ticks.recv().await {
            if e.tick.decisions[0].outcome == Outcome::Rollback {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(firing, Ok(true));

    // A new profile version: same rule name with a longer `for`, and a new rule. The firing
    // state carries over by name (no re-pending), the new rule starts inactive.
    write(
        dir.path(),
        "p.toml",
        PROFILE.replace("for = \"300ms\"", "for = \"1h\"") + "\n[[rule]]\nname = \"new\"\nwhen = 'up(\"api\") == 0'\n",
    );
    reload.send(()).await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = ticks.recv().await {
            let d = &e.tick.decisions[0];
            if d.firing.iter().any(|r| r.rule == "new") {
                return (d.outcome, d.firing.iter().any(|r| r.rule == "down"));
            }
        }
        (Outcome::Monitor, false)
    })
    .await
    .unwrap();
    assert_eq!(after, (Outcome::Rollback, true), "`down` still firing after the reload despite for = 1h");

    // A broken config: reported, the running one kept.
    let good = std::fs::read_to_string(dir.path().join("rollwatch.toml")).unwrap();
    write(dir.path(), "rollwatch.toml", "profiles = [\"p.toml\"]\nbogus = 1\n");
    reload.send(()).await.unwrap();
    let kept = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let journal = Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
            if let Some(failed) = journal.iter().find(|v| v["event"] == "reload_failed") {
                return failed["errors"].as_str().unwrap_or_default().to_string();
            }
            ticks.recv().await.expect("the engine keeps running");
        }
    })
    .await
    .unwrap();
    assert!(kept.contains("unknown field `bogus`"), "{kept}");
    let e = ticks.recv().await.expect("still ticking after a failed reload");
    assert_eq!(e.tick.decisions[0].outcome, Outcome::Rollback);

    // An [ha] section added: the rest reloads, replicas start at the next restart (this
    // process goes on alone rather than join an election halfway).
    let ha = "\n[ha]\netcd = [\"http://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\n";
    write(dir.path(), "rollwatch.toml", format!("{good}{ha}"));
    reload.send(()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let journal = Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
            if journal.iter().filter(|v| v["event"] == "reloaded").count() == 2 {
                return;
            }
            ticks.recv().await.expect("the engine keeps running");
        }
    })
    .await
    .unwrap();
    let e = ticks.recv().await.expect("still ticking, alone");
    assert_eq!(e.tick.decisions[0].outcome, Outcome::Rollback);

    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
    let journal = Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
    let events: Vec<&str> = journal.iter().filter_map(|v| v["event"].as_str()).collect();
    assert!(events.contains(&"reloaded"), "{events:?}");
    let down_transitions = journal.iter().filter(|v| v["event"] == "transition" && v["rule"] == "down").count();
    assert_eq!(down_transitions, 2, "inactive → pending → firing once, nothing after the reload: {journal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reaches_the_dispatcher() {
    let Running { healthy, dir, mut ticks, stop, reload, engine } = start(true).await;
    ticks.recv().await.expect("ticking");
    // Switch the running sidecar to dry-run, then break the service.
    let text = config_text(&url_of(&dir), &dir.path().join("state"))
        .replace("[[target]]", "[policy]\nmode = \"dry-run\"\n\n[[target]]");
    write(dir.path(), "rollwatch.toml", text);
    reload.send(()).await.unwrap();
    let journal = dir.path().join("state/journal.jsonl");
    common::wait_for_journal(&journal, "the reload", |e| e.iter().any(|e| e["event"] == "reloaded")).await;
    healthy.store(false, Ordering::SeqCst);
    let events = common::wait_for_journal(&journal, "a dry run", |e| e.iter().any(|e| e["event"] == "dry_run")).await;
    assert!(!events.iter().any(|e| e["event"] == "rollback_started"), "{events:#?}");
    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
}

/// The health URL the running config polls (read back from its file).
fn url_of(dir: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(dir.path().join("rollwatch.toml")).unwrap();
    let start = text.find("url = \"").unwrap() + 7;
    text[start..].split('"').next().unwrap().to_string()
}

/// The kinds a user writes that no other binary test goes through: a `tcp` target (a storage
/// backend) and a `file` action (a kill-switch marker), from a config file, run by the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_target_going_down_sets_a_file_kill_switch() {
    let dir = tempfile::tempdir().unwrap();
    let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = storage.local_addr().unwrap().to_string();
    let profile = write(
        dir.path(),
        "p.toml",
        "[[rule]]\nname = \"storage-down\"\nscope = \"environment\"\nwhen = 'up(\"storage\") == 0'\n\n[[decide]]\nask = \"Storage down?\"\nif = 'firing(\"storage-down\")'\nthen = \"rollback\"\n\n[[procedure.rollback]]\nrun = \"killswitch-on\"\n",
    );
    let marker = dir.path().join("killswitch");
    let config = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [{:?}]\nstate_dir = {:?}\nlisten = \"127.0.0.1:0\"\neval_interval = \"200ms\"\n\n[[target]]\nname = \"storage\"\nkind = \"tcp\"\naddress = \"{address}\"\ninterval = \"200ms\"\n\n[policy]\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[actions.killswitch-on]\nkind = \"file\"\npath = {:?}\nstate = \"present\"\n",
            profile.display().to_string(),
            dir.path().join("state").display().to_string(),
            marker.display().to_string()
        ),
    );
    let mut child = common::spawn_run(dir.path(), &config);
    let journal = dir.path().join("state").join("journal.jsonl");
    common::wait_for_journal(&journal, "the storage seen up", |e| e.iter().any(|e| e["event"] == "decision")).await;
    assert!(!marker.exists());
    drop(storage); // the storage backend goes away: connections are refused
    common::wait_for_journal(&journal, "the kill-switch step", |e| {
        e.iter().any(|e| e["event"] == "step_finished" && e["action"] == "killswitch-on" && e["ok"] == true)
    })
    .await;
    assert!(marker.exists(), "the file action set the kill-switch marker");
    common::sigterm(&mut child);
}

/// `--log-format json`: every log line on stderr is one JSON object (level, message, fields),
/// and nothing but the command's own output is on stdout.
#[test]
fn json_logs_are_one_object_a_line_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let path = write(dir.path(), "rollwatch.toml", config_text("http://127.0.0.1:9/health", &dir.path().join("state")));
    let fixture = dir.path().join("recorded.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["--log-format", "json", "record", "-c", path.to_str().unwrap(), "--for", "1s", "-o"])
        .arg(&fixture)
        .env("ROLLWATCH_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "{stderr}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("rollwatch started")), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("recorded 1s to {}", fixture.display()), "{stdout}");
}
