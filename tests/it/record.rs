//! `rollwatch record` records a live run — a loopback service whose error rate jumps to 20% —
//! and the recording, replayed by `rollwatch test`, reaches the same rule states and decisions.
//! Recording never acts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{Recording, counters_service, rollwatch, write};

const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1s", 10)'

[[rule]]
name = "critical"
when = 'error_rate > 0.05'
for = "400ms"   # not a multiple of the tick: late ticks cannot shift when it fires

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("critical")'
then = "rollback"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_replays_to_the_same_decisions() {
    let permille = Arc::new(AtomicU64::new(0));
    let url = counters_service(permille.clone(), 100.0, Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\neval_interval = \"250ms\"\n[[target]]\nname = \"app\"\nkind = \"prometheus\"\nurl = \"{url}\"\ninterval = \"250ms\"\ntimeout = \"1s\"\n",
            dir.path().join("state").display()
        ),
    );
    let fixture = dir.path().join("recorded.toml");
    let recording = Recording::start(dir.path(), &cfg, &fixture);
    // Errors jump to 20% once the healthy service has been judged for ten ticks (2.5 s).
    recording
        .status_when("ten ticks judging the healthy service", |s| {
            s["ticks_total"].as_u64().is_some_and(|n| n >= 10) && s["signals"]["error_rate"] == 0.0
        })
        .await;
    permille.store(200, Ordering::SeqCst);
    recording.status_when("the rollback decided", |s| s["decisions"][0]["outcome"] == "rollback").await;
    let (code, out) = recording.stop();
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&fixture).unwrap();
    // Ticks before the first poll's answer (none or a few) have no `up`; from then on every
    // tick has it, late or not.
    let up = text.lines().find_map(|l| l.strip_prefix("'up{target=\"app\"}' = \"")).unwrap_or_default();
    let tokens: Vec<&str> = up.trim_end_matches('"').split(' ').collect();
    let first_up = tokens.iter().position(|t| t.starts_with('1')).unwrap_or(tokens.len());
    assert!(tokens[..first_up].iter().all(|t| t.starts_with('_')), "{text}");
    assert!(
        first_up < tokens.len() && tokens[first_up..].iter().all(|t| t.starts_with('1')),
        "up at every tick: {text}"
    );
    assert!(text.contains("'http_requests_total{code=\"500\",target=\"app\"}'"), "{text}");
    assert!(text.contains("decision = \"rollback\"\nfiring = [\"critical\"]"), "the live run rolled back:\n{text}");
    // The recording is a fixture that replays to the same decisions, at the same ticks.
    let (code, out, err) = rollwatch(&["test", &fixture.display().to_string()]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\nfixture:\n{text}");
    assert!(out.ends_with("1 passed, 0 failed\n"), "{out}");
    // Recording watches and never acts: the rollback decision is journalled as a dry run.
    let journal = rollwatch::journal::Journal::read_back(&dir.path().join("state").join("journal.jsonl")).unwrap();
    assert!(journal.iter().any(|e| e["event"] == "dry_run" && e["outcome"] == "rollback"), "{journal:#?}");
    assert!(!journal.iter().any(|e| e["event"] == "rollback_started"), "{journal:#?}");
}

/// `record` beside the running sidecar: with the config's own state_dir it is refused (one
/// process per state_dir) and told how to proceed; with its own `--state-dir` and `--listen` it
/// records, and the fixture names its profiles relative to itself, so it replays from anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_runs_beside_a_live_sidecar_and_names_profiles_relatively() {
    let url = counters_service(Arc::new(AtomicU64::new(0)), 100.0, Duration::from_millis(100)).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let listen = crate::common::free_listen();
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\nlisten = \"{listen}\"\neval_interval = \"250ms\"\n[[target]]\nname = \"app\"\nkind = \"prometheus\"\nurl = \"{url}\"\ninterval = \"250ms\"\ntimeout = \"1s\"\n",
            dir.path().join("state").display()
        ),
    );
    let mut sidecar = crate::common::spawn_run(dir.path(), &cfg);
    crate::common::wait_for_journal(&dir.path().join("state/journal.jsonl"), "the sidecar's start", |e| {
        e.iter().any(|e| e["event"] == "started")
    })
    .await;
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    let fixture = dir.path().join("fixtures/live.toml");
    let (cfg_s, fixture_s) = (cfg.display().to_string(), fixture.display().to_string());
    let (code, out, _) = rollwatch(&["record", "-c", &cfg_s, "--for", "1s", "-o", &fixture_s]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("give `record` its own --state-dir and --listen"), "{out}");
    let state = dir.path().join("recording").display().to_string();
    let (c, f) = (cfg_s.clone(), fixture_s.clone());
    let plot = dir.path().join("live.svg");
    let svg = plot.display().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        rollwatch(&[
            "record",
            "-c",
            &c,
            "--for",
            "2s",
            "-o",
            &f,
            "--state-dir",
            &state,
            "--listen",
            "127.0.0.1:0",
            "--svg",
            &svg,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    crate::common::sigterm(&mut sidecar);
    let text = std::fs::read_to_string(&fixture).unwrap();
    assert!(text.contains("profiles = [\"../p.toml\"]"), "{text}");
    let (code, out, err) = rollwatch(&["test", &fixture_s]);
    assert_eq!(code, 0, "{out}{err}\n{text}");
    // And the plot of what it saw.
    let drawn = std::fs::read_to_string(&plot).unwrap();
    let doc = roxmltree::Document::parse(&drawn).unwrap();
    assert!(
        doc.descendants()
            .any(|n| n.attribute("data-signal") == Some("error_rate") && n.attribute("class") == Some("series")),
        "{drawn}"
    );
}

/// A deploy seen while recording is written as the fixture's `[[deploy]]`: the replay restarts
/// the evidence where the live run did, and reaches the same decisions (a regression of v2
/// judged on v2's own traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_deploy_replays_to_the_same_decisions() {
    let service = crate::common::VersionedService::start("v1", 30).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::common::versioned_config(dir.path(), &service, "127.0.0.1:0", "");
    let fixture = dir.path().join("deploy.toml");
    let recording = Recording::start(dir.path(), &cfg, &fixture);
    // v1 fails 3% (below the 5% threshold), judged for a while; then v2, which fails 8%.
    recording
        .status_when("v1 judged for 3.5 s", |s| {
            s["ticks_total"].as_u64().is_some_and(|n| n >= 17) && s["signals"]["error_rate"].as_f64().is_some()
        })
        .await;
    service.deploy("v2", 80);
    recording
        .status_when("the rollback decided on v2", |s| {
            s["acting"]["version"] == "v2" && s["decisions"][0]["outcome"] == "rollback"
        })
        .await;
    let (code, out) = recording.stop();
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&fixture).unwrap();
    assert!(text.contains("[[deploy]]") && text.contains("version = \"v2\""), "{text}");
    assert!(text.contains("decision = \"rollback\""), "the live run decided rollback on v2:\n{text}");
    let (code, out, err) = rollwatch(&["test", &fixture.display().to_string()]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}\nfixture:\n{text}");
}
