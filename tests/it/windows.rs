//! Windows across restarts of rollwatch, and their coverage, through the binary (issue 19, item
//! 5): what a run saw — windows, rule states, a pending `for` — comes back after a SIGTERM and a
//! restart, the gap counted as missing data; a rule with `min_coverage` stays unknown until its
//! window holds enough, saying how much it holds; a corrupt checkpoint is logged and ignored.
//! Real sockets: short real intervals, generous deadlines.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::common::{self, counters_service, free_listen, of_kind, serve_http, sigterm, spawn_run, status_when, write};
use rollwatch::time::{Span, Stopwatch, parse_duration};

/// Counters failing 10% of 20 requests every 100 ms, and a health endpoint serving version v1.
async fn service() -> (String, String) {
    let metrics = counters_service(Arc::new(AtomicU64::new(100)), 20.0, Duration::from_millis(100)).await;
    let health = serve_http(|_| ("200 OK", r#"{"status":"ok","version":"v1"}"#.into())).await;
    (metrics, format!("http://{health}/health"))
}

/// A config watching `metrics` and the version at `health` every 200 ms, evaluating every 200 ms.
fn config(dir: &Path, profile: &str, metrics: &str, health: &str, listen: &str) -> std::path::PathBuf {
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
url = "{health}"
interval = "200ms"

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "{metrics}"
interval = "200ms"

[policy]
mode = "dry-run"

[channels.console]
kind = "console"
"#,
        profile = profile.display().to_string(),
        state = dir.join("state").display().to_string(),
    );
    write(dir, "rollwatch.toml", text)
}

/// Errors above 5% over a minute, pending for an hour: it stays pending the whole test.
const PENDING_PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m", 10)'

[[rule]]
name = "errors-elevated"
when = 'error_rate > 0.05'
for = "1h"

[[decide]]
ask = "Is error rate > 5% (1h)?"
if = 'firing("errors-elevated")'
then = "rollback"

[[procedure.rollback]]
announce = "rollback_in_progress"
"#;

/// A rule on `/status` (null until the first evaluation lists it).
fn rule<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    static NONE: serde_json::Value = serde_json::Value::Null;
    status["rules"].as_array().and_then(|rules| rules.iter().find(|r| r["name"] == name)).unwrap_or(&NONE)
}

fn at(event: &serde_json::Value) -> i64 {
    event["at"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_windows_and_a_pending_for_without_counting_the_gap() {
    let (metrics, health) = service().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen();
    let path = config(dir.path(), PENDING_PROFILE, &metrics, &health, &listen);
    let journal = dir.path().join("state/journal.jsonl");

    // First run: the rule turns pending on v1's errors; four more seconds of data, then SIGTERM.
    let mut first = spawn_run(dir.path(), &path);
    let events = common::wait_for_journal(&journal, "errors-elevated pending", |events| {
        of_kind(events, "transition").iter().any(|t| t["rule"] == "errors-elevated" && t["to"] == "pending")
    })
    .await;
    let pending_at = at(of_kind(&events, "transition").iter().rfind(|t| t["to"] == "pending").unwrap());
    status_when(&listen, "4 s of pending", |s| s["at"].as_i64().is_some_and(|now| now >= pending_at + 4000)).await;
    sigterm(&mut first);
    assert!(dir.path().join("state/checkpoint.bin").is_file(), "a checkpoint is written on stop");
    let stopped = Stopwatch::start();
    // The downtime this test is about (part of the scenario, not a wait for a result): at
    // least 1.5 s during which the service runs on unwatched.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Second run, after a gap of at least 1.5 s.
    let gap = stopped.elapsed().0;
    let mut second = spawn_run(dir.path(), &path);
    let events =
        common::wait_for_journal(&journal, "the second start", |events| of_kind(events, "started").len() == 2).await;
    let started = at(of_kind(&events, "started")[1]);
    let restored = of_kind(&events, "checkpoint_restored");
    assert_eq!(restored.len(), 1, "{events:#?}");
    assert_eq!(restored[0]["rules"], 1, "{:?}", restored[0]);
    assert!(restored[0]["gap_seconds"].as_f64().unwrap() * 1000.0 >= gap as f64, "{:?}", restored[0]);

    // Still pending, since as long before the restart as it had been pending at the stop: the
    // pending time is kept and the gap not counted (`since` moved on by the gap).
    let s = status_when(&listen, "the rule restored and evaluated", |s| {
        s["ticks_total"].as_u64().is_some_and(|n| n > 0) && rule(s, "errors-elevated")["state"] == "pending"
    })
    .await;
    let errors = rule(&s, "errors-elevated");
    let since = errors["since"].as_i64().unwrap();
    assert!(
        since < started - 3000,
        "pending since {since}, started {started}: the pending time before the stop is kept"
    );
    assert!(
        since >= pending_at + gap,
        "pending since {since}, first at {pending_at}, gap {gap} ms: the gap counts nothing"
    );

    // The 1-minute window holds what the first run saw, not only what this one has.
    let coverage = &errors["coverage"][0];
    assert_eq!(coverage["window"], "1m", "{errors}");
    let covered = parse_duration(coverage["covered"].as_str().unwrap()).unwrap();
    let this_run = Span(s["at"].as_i64().unwrap() - started);
    assert!(covered.0 > this_run.0 + 3000, "covered {covered} with {this_run} seen since the restart: {errors}");

    sigterm(&mut second);
    let events = rollwatch::journal::Journal::read_back(&journal).unwrap();
    let second_run = &events[events.iter().rposition(|e| e["event"] == "started").unwrap()..];
    let restarted: Vec<_> =
        of_kind(second_run, "transition").into_iter().filter(|t| t["rule"] == "errors-elevated").collect();
    assert!(restarted.is_empty(), "the rule carried on, it did not start pending again: {restarted:?}");
    assert_eq!(of_kind(&events, "deploy").len(), 1, "v1 seen again is no deploy: its evidence goes on");
}

/// Errors above 5% over 6 seconds, required to hold data for 90% of them.
const COVERAGE_PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "6s", 10)'

[[rule]]
name = "errors-burn"
when = 'error_rate > 0.05'
min_coverage = "90%"

[[decide]]
ask = "Is the error budget burning?"
if = 'firing("errors-burn")'
then = "rollback"

[[procedure.rollback]]
announce = "rollback_in_progress"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_coverage_keeps_a_rule_unknown_until_its_window_holds_enough() {
    let (metrics, health) = service().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen();
    let path = config(dir.path(), COVERAGE_PROFILE, &metrics, &health, &listen);
    let (code, out, _) = common::rollwatch(&["check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");

    let mut child = spawn_run(dir.path(), &path);
    // While the window holds less than 90% of its 6 s: unknown, not firing, and saying why.
    let early = status_when(&listen, "a partial window", |s| {
        rule(s, "errors-burn")["coverage"].get(0).is_some_and(|c| c["share"].as_f64().is_some_and(|x| x > 0.2))
    })
    .await;
    let burn = rule(&early, "errors-burn");
    assert_eq!(burn["state"], "inactive", "{burn}");
    assert_eq!(burn["coverage"][0]["required"], 0.9, "{burn}");
    assert!(burn["coverage"][0]["share"].as_f64().unwrap() < 0.9, "{burn}");
    let decision = &early["decisions"][0];
    assert_eq!(decision["outcome"], "monitor");
    assert!(decision["unknown"].as_array().unwrap().iter().any(|r| r == "errors-burn"), "{decision}");
    assert_eq!(decision["coverage"][0]["rule"], "errors-burn", "{decision}");

    // Covered: it fires on the same errors.
    let journal = dir.path().join("state/journal.jsonl");
    let events = common::wait_for_journal(&journal, "errors-burn firing", |events| {
        of_kind(events, "transition").iter().any(|t| t["rule"] == "errors-burn" && t["to"] == "firing")
    })
    .await;
    sigterm(&mut child);
    let started = at(of_kind(&events, "started")[0]);
    let fired = at(of_kind(&events, "transition").into_iter().find(|t| t["rule"] == "errors-burn").unwrap());
    assert!(fired - started >= 5400, "fired {} ms after the start, before 90% of 6 s", fired - started);
    // The first decision, in the journal, says how much of the window it had.
    let first = of_kind(&events, "decision")[0];
    assert_eq!(first["outcome"], "monitor");
    assert_eq!(first["coverage"][0]["window"], "6s", "{first}");
    assert_eq!(first["coverage"][0]["required"], 0.9, "{first}");
    // And the log says it as people read it.
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(
        stderr.contains("errors-burn: 6s window: ") && stderr.contains("under min_coverage 90%: unknown"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_checkpoint_is_logged_and_ignored() {
    let (metrics, health) = service().await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen();
    let path = config(dir.path(), PENDING_PROFILE, &metrics, &health, &listen);
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    write(&dir.path().join("state"), "checkpoint.bin", b"RWCKPT\x01\x00 torn in the middle of its header");

    let mut child = spawn_run(dir.path(), &path);
    let journal = dir.path().join("state/journal.jsonl");
    let events = common::wait_for_journal(&journal, "watching", |events| {
        of_kind(events, "transition").iter().any(|t| t["rule"] == "errors-elevated" && t["to"] == "pending")
    })
    .await;
    let ignored = of_kind(&events, "checkpoint_ignored");
    assert_eq!(ignored.len(), 1, "{events:#?}");
    assert!(ignored[0]["reason"].as_str().unwrap().contains("corrupt checkpoint"), "{:?}", ignored[0]);
    sigterm(&mut child);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("checkpoint not used: starting with empty windows"), "{stderr}");
    // The stop wrote a good one in its place.
    let bytes = std::fs::read(dir.path().join("state/checkpoint.bin")).unwrap();
    let kept = rollwatch::rules::checkpoint::decode(&bytes).unwrap();
    assert!(kept.series.iter().any(|s| s.key.name == "http_requests_total"), "{:?}", kept.series);
}
