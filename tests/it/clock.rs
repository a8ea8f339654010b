//! The system clock steps while rollwatch runs (an NTP correction, a VM restored): libfaketime
//! moves the process's wall clock mid-run through a file the test rewrites, its monotonic clock
//! left alone. A step back does not blind rollwatch (an outage right after it is rolled back as
//! fast as without it); a step forward does not end a cooldown or a pause, while running or across
//! a restart; the disagreement with the system clock shows on `/status`, its page and `/metrics`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{
    VersionedService, of_kind, rollwatch, sigterm, spawn_run_env, status_when, ticks_later, versioned_config,
    wait_for_journal,
};
use rollwatch::time::Stopwatch;

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// A sidecar whose wall clock is offset by what `faketime.rc` says (read at every call).
struct Sidecar {
    dir: tempfile::TempDir,
    config: PathBuf,
    listen: String,
    child: std::process::Child,
}

impl Sidecar {
    fn start(service: &VersionedService, policy: &str) -> Sidecar {
        assert!(Path::new(LIBFAKETIME).exists(), "libfaketime is not installed: scripts/test.sh installs it");
        let dir = tempfile::tempdir().unwrap();
        let listen = crate::common::free_listen();
        let config = versioned_config(dir.path(), service, &listen, policy);
        Sidecar { child: Self::spawn(dir.path(), &config), dir, config, listen }
    }

    fn spawn(dir: &Path, config: &Path) -> std::process::Child {
        let rc = dir.join("faketime.rc");
        if !rc.exists() {
            std::fs::write(&rc, "+0\n").unwrap();
        }
        let rc = rc.display().to_string();
        let env = [
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", rc.as_str()),
            ("FAKETIME_NO_CACHE", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        spawn_run_env(dir, config, &env)
    }

    /// Sets the process's wall clock to the real one moved by `offset` (`-120s`, `+2h`); written
    /// whole (a rename), so libfaketime never reads half a file.
    fn step_clock(&mut self, offset: &str) {
        let tmp = self.dir.path().join("faketime.rc.new");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("faketime.rc")).unwrap();
    }

    fn restart(&mut self) {
        sigterm(&mut self.child);
        self.child = Self::spawn(self.dir.path(), &self.config);
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("state").join("journal.jsonl")
    }

    async fn wait(&self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_for_journal(&self.journal(), what, ready).await
    }

    fn get(&self, path: &str, accept: &str) -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "--max-time", "5", "-H", &format!("accept: {accept}")])
            .arg(format!("http://{}{path}", self.listen))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status", "application/json")).unwrap_or(Value::Null)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics", "text/plain");
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} ")).and_then(|v| v.trim().parse().ok()))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Polls `/status` until the clock's disagreement is `seconds` (± 5 s).
    async fn disagreement_shown(&self, seconds: f64) -> Value {
        status_when(&self.listen, &format!("a disagreement of {seconds} s on /status"), |status| {
            status["clock"]["system_ahead_seconds"].as_f64().is_some_and(|s| (s - seconds).abs() < 5.0)
        })
        .await
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn baked(s: &Sidecar, version: &str) {
    s.wait(&format!("{version} baked"), |e| of_kind(e, "version_baked").iter().any(|b| b["version"] == version)).await;
}

/// How long an outage (a bad version deployed) takes to be rolled back.
async fn time_to_rollback(s: &Sidecar, service: &VersionedService, version: &str) -> f64 {
    let watch = Stopwatch::start();
    service.deploy(version, 500);
    s.wait(&format!("{version} rolled back"), |e| {
        of_kind(e, "rollback_started").iter().any(|r| r["version_from"] == version)
    })
    .await;
    watch.elapsed_secs()
}

/// The clock stepped back by `step` seconds right before an outage: rolled back within a few
/// seconds, as without the step (on a timeline that followed the system clock, samples were
/// dropped as older than the last one for as long as the step).
async fn an_outage_after_a_step_back_is_rolled_back_at_once(step: u64) {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "cooldown = \"0s\"");
    baked(&s, "v1").await;
    s.step_clock(&format!("-{step}s"));
    // Long enough for rollwatch to have read the stepped clock (every poll does).
    s.disagreement_shown(-(step as f64)).await;
    let took = time_to_rollback(&s, &service, "v2").await;
    eprintln!("rolled back {took:.1} s after the outage began (a {step} s step back)");
    assert!(took < 10.0, "rolled back {took:.1} s after the outage began (a {step} s step back)");
    let events = s.wait("the rollback finished", |e| !of_kind(e, "rollback_finished").is_empty()).await;
    assert_eq!(of_kind(&events, "rollback_finished")[0]["result"], "completed");
    assert_eq!(service.rollbacks(), vec!["v1".to_string()]);
    // The disagreement is shown (JSON, page, metrics), logged once and journalled.
    let status = s.status();
    assert_eq!(status["clock"]["disagrees"], true, "{}", status["clock"]);
    let page = s.get("/status", "text/html");
    assert!(page.contains("id=\"clock\"") && page.contains("behind rollwatch"), "{page}");
    let metric = s.metric("rollwatch_clock_system_ahead_seconds").unwrap();
    assert!((metric + step as f64).abs() < 5.0, "{metric}");
    assert_eq!(s.stderr().matches("the system clock stepped").count(), 1, "{}", s.stderr());
    // Log lines are dated on the same timeline: none goes back across the step (threads may
    // write a few milliseconds out of order).
    let dates: Vec<std::time::SystemTime> =
        s.stderr().lines().filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok()).collect();
    assert!(dates.len() > 2, "{}", s.stderr());
    let mut latest = dates[0];
    for d in &dates {
        let back = latest.duration_since(*d).unwrap_or_default();
        assert!(back < std::time::Duration::from_secs(1), "a log line dated {back:?} back: {}", s.stderr());
        latest = latest.max(*d);
    }
    let notes = of_kind(&events, "clock");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!((notes[0]["system_ahead_ms"].as_f64().unwrap() + step as f64 * 1000.0).abs() < 5000.0);

    // Across a restart the timeline does not go back either: the new process starts at the
    // last journalled date, and still says how far the system clock is behind.
    let before = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    let last = before.iter().filter_map(|e| e["at"].as_i64()).max().unwrap();
    s.restart();
    let events = s.wait("started again", |e| of_kind(e, "started").len() == 2).await;
    let started = of_kind(&events, "started")[1]["at"].as_i64().unwrap();
    assert!(started >= last, "restarted at {started}, before the journal's last date {last}");
    s.disagreement_shown(-(step as f64)).await;
    // The deployment still judged on that timeline: v1 restored, and a new bad version rolled back.
    let took = time_to_rollback(&s, &service, "v3").await;
    assert!(took < 10.0, "after the restart: rolled back {took:.1} s after the outage began");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_the_clock_steps_back_2_minutes_is_rolled_back_at_once() {
    an_outage_after_a_step_back_is_rolled_back_at_once(120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_the_clock_steps_back_10_minutes_is_rolled_back_at_once() {
    an_outage_after_a_step_back_is_rolled_back_at_once(600).await;
}

/// Suppressed lines of the journal after its first `from` lines.
fn suppressed_after(events: &[Value], from: usize) -> Vec<String> {
    events[from.min(events.len())..]
        .iter()
        .filter(|e| e["event"] == "suppressed")
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until the sidecar has decided `ticks` more ticks (200 ms each), then checks that
/// nothing was rolled back but v1: no second rollback started (journalled before its steps run),
/// no second undo.
async fn no_second_rollback(s: &Sidecar, service: &VersionedService, ticks: u64) {
    ticks_later(&s.listen, ticks).await;
    let events = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    assert_eq!(of_kind(&events, "rollback_started").len(), 1, "a second rollback: {}", s.stderr());
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "a second rollback: {}", s.stderr());
}

/// After a rollback, with a 1 h cooldown, a loop guard of one rollback an hour and `pause --for
/// 30m`, the clock steps forward 2 h: a new bad version is held by the pause, then (resumed) by
/// the loop guard; the version rolled back from, deployed again, by the cooldown — none of
/// them expired with the step — and still after a restart, which continues rollwatch's timeline
/// where it was rather than jumping to the system clock's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_hour_step_forward_ends_neither_a_cooldown_nor_a_pause() {
    let service = VersionedService::start("v1", 0).await;
    let policy = "cooldown = \"1h\"\nmax_rollbacks = { count = 1, per = \"1h\" }";
    let mut s = Sidecar::start(&service, policy);
    baked(&s, "v1").await;
    time_to_rollback(&s, &service, "v2").await;
    s.wait("the rollback finished", |e| !of_kind(e, "rollback_finished").is_empty()).await;
    let config = s.config.display().to_string();
    let (code, out, err) = rollwatch(&["pause", "-c", &config, "--for", "30m"]);
    assert_eq!(code, 0, "{out}{err}");
    s.step_clock("+2h");
    s.disagreement_shown(7200.0).await;
    let page = s.get("/status", "text/html");
    assert!(page.contains("the system clock is 2h 0m ahead of rollwatch"), "{page}");

    // A new bad version: held by the pause.
    let held_by = |seen: usize, why: &'static str| {
        move |e: &[Value]| suppressed_after(e, seen).iter().any(|r| r.starts_with(why))
    };
    let seen = rollwatch::journal::Journal::read_back(&s.journal()).unwrap().len();
    service.deploy("v3", 500);
    s.wait("v3 held by the pause", held_by(seen, "paused until")).await;
    no_second_rollback(&s, &service, 25).await;
    assert!(s.status()["acting"]["paused_until"].is_i64(), "still paused: {}", s.status()["acting"]);

    // Resumed: the loop guard holds v3 (one rollback in the last hour of rollwatch's timeline).
    let (code, out, err) = rollwatch(&["resume", "-c", &config]);
    assert_eq!(code, 0, "{out}{err}");
    let seen = rollwatch::journal::Journal::read_back(&s.journal()).unwrap().len();
    s.wait("v3 held by the loop guard", held_by(seen, "loop guard: 1 rollbacks in the last 1h")).await;
    no_second_rollback(&s, &service, 15).await;
    // v3 mended (it bakes), then v2 deployed again: the cooldown holds the version rolled back
    // from (1 h from rb-1).
    service.set_errors("v3", 0);
    baked(&s, "v3").await;
    let seen = rollwatch::journal::Journal::read_back(&s.journal()).unwrap().len();
    service.deploy("v2", 500);
    s.wait("v2 held by the cooldown", held_by(seen, "cooldown after rb-1")).await;
    no_second_rollback(&s, &service, 15).await;

    // A restart (the clock still 2 h ahead): what was left of the cooldown still holds — told
    // before the restart, so not told again.
    s.restart();
    let events = s.wait("started again", |e| of_kind(e, "started").len() == 2).await;
    let restarted = events.iter().rposition(|e| e["event"] == "started").unwrap() + 1;
    no_second_rollback(&s, &service, 25).await;
    let status = s.status();
    assert_eq!(status["decisions"][0]["outcome"], "rollback", "v2 still decided against: {status}");
    let held = status["acting"]["suppressed"]["profile"].as_str().unwrap_or_default().to_string();
    assert!(held.starts_with("cooldown after rb-1"), "held by the cooldown after the restart: {status}");
    let events = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    assert_eq!(suppressed_after(&events, restarted), Vec::<String>::new(), "told again after the restart");
    s.disagreement_shown(7200.0).await;
    assert!(s.stderr().contains("continues"), "the carried disagreement is said at start: {}", s.stderr());
}
