//! rollwatch's own endpoints on loopback: `/healthz`, `/metrics` (parseable by our own parser),
//! `/status` (JSON and HTML), and the Alertmanager hook — token enforced, malformed payloads
//! answered 400, and a firing alert reaching a `rollback` decision.

use std::time::Duration;

use crate::common::{rollwatch, write};
use rollwatch::rules::Outcome;
use rollwatch::secret::Secret;
use rollwatch::source::poller::http_client;

const PROFILE: &str = r#"
[[rule]]
name = "security-incident"
when = 'last("ALERTS{alertname=\"SecurityIncident\"}") > 0'
on_no_data = "ok"

[[decide]]
ask = "Security incident?"
if = 'firing("security-incident")'
then = "rollback"
"#;

const ALERT: &str = r#"{"version":"4","groupKey":"g","status":"firing","receiver":"rollwatch","groupLabels":{},"commonLabels":{},
"commonAnnotations":{},"externalURL":"","truncatedAlerts":0,"alerts":[{"status":"firing","labels":{"alertname":"SecurityIncident",
"severity":"critical"},"annotations":{},"startsAt":"2026-11-24T10:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"f"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_serve_state_and_the_hook_reaches_a_decision() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = format!(
        "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\napi_token_env = \"RW_TEST_TOKEN\"\neval_interval = \"100ms\"\n",
        dir.path().join("state").display()
    );
    let rollwatch::rules::deployment::Deployment { config, evaluator: ev, procedures } =
        rollwatch::rules::deployment::load(&write(dir.path(), "rollwatch.toml", cfg)).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let parts = rollwatch::engine::Parts {
        listener: Some(listener),
        token: Some(Secret("t0k".into())),
        events: Some(tx),
        ..rollwatch::engine::Parts::new(ev, procedures, vec![])
    };
    let engine = tokio::spawn(async move { rollwatch::engine::run(config, parts, shutdown).await });
    let http = http_client().unwrap();

    assert_eq!(http.get(format!("{base}/healthz")).send().await.unwrap().text().await.unwrap(), "ok\n");
    ticks.recv().await.unwrap();
    ticks.recv().await.unwrap();
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let parsed = rollwatch::source::exposition::parse(metrics.as_bytes());
    assert_eq!(parsed.bad_lines, 0, "{metrics}");
    assert!(
        parsed
            .samples
            .iter()
            .any(|s| s.key.name == "rollwatch_rule_state" && s.key.label("rule") == "security-incident")
    );
    let status: serde_json::Value = http.get(format!("{base}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["rules"][0]["state"], "inactive");
    assert_eq!(status["decisions"][0]["outcome"], "monitor");
    let page =
        http.get(format!("{base}/status")).header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    assert!(page.contains("<h2>Rules</h2>") && page.contains("security-incident"), "{page}");

    // The hook: no token, a wrong token, garbage, then a real alert.
    let hook = format!("{base}/hooks/alertmanager");
    let r = http.post(&hook).body(ALERT).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(&hook).bearer_auth("guess").body(ALERT).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.post(&hook).bearer_auth("t0k").body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().starts_with("not an Alertmanager webhook payload"));
    let r = http.post(&hook).bearer_auth("t0k").body(ALERT).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let decided = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(tick) = ticks.recv().await {
            if tick.tick.decisions[0].outcome == Outcome::Rollback {
                return tick.tick.decisions[0].explanation();
            }
        }
        String::new()
    })
    .await
    .expect("the alert reaches a decision");
    if decided.is_empty() {
        panic!("engine ended: {:?}", engine.await);
    }
    assert_eq!(decided, "Security incident? YES → rollback");
    let status: serde_json::Value = http.get(format!("{base}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["firing_alerts"][0], r#"ALERTS{alertname="SecurityIncident",severity="critical"}"#);

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), engine).await.expect("stops").unwrap().unwrap();
}

#[test]
fn listening_beyond_loopback_requires_a_token() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        "profiles = [\"p.toml\"]\nstate_dir = \"/tmp/x\"\nlisten = \"0.0.0.0:9464\"\n",
    );
    let (code, out, _) = rollwatch(&["check", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("rollwatch.toml:3:10: listening beyond loopback needs api_token_env"), "{out}");
}

/// Alertmanager re-sends a firing alert only every `repeat_interval` (4 h by default): an alert
/// sent once must keep firing until it is sent resolved. Tokio's paused clock runs six minutes of
/// 15 s evaluations in milliseconds.
#[tokio::test(start_paused = true)]
async fn an_alert_sent_once_still_fires_six_minutes_later_and_ends_when_resolved() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = format!(
        "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\neval_interval = \"15s\"\n[policy]\nmode = \"dry-run\"\n",
        dir.path().join("state").display()
    );
    let rollwatch::rules::deployment::Deployment { config, evaluator: ev, procedures } =
        rollwatch::rules::deployment::load(&write(dir.path(), "rollwatch.toml", cfg)).unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clock =
        std::sync::Arc::new(rollwatch::time::TokioClock::starting_at(rollwatch::time::Timestamp(1_800_000_000_000)));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let parts = rollwatch::engine::Parts {
        listener: Some(listener),
        clock,
        events: Some(tx),
        ..rollwatch::engine::Parts::new(ev, procedures, vec![])
    };
    let engine = tokio::spawn(async move { rollwatch::engine::run(config, parts, shutdown).await });
    let post = |body: String| async move {
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "POST /hooks/alertmanager HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    };
    // Sent again and again (a hook flood, or Alertmanager's repeats): one change, one line.
    for _ in 0..50 {
        post(ALERT.to_string()).await;
    }
    let firing =
        |e: &rollwatch::engine::TickEvent| e.tick.decisions[0].firing.iter().any(|r| r.rule == "security-incident");
    let first = loop {
        let e = ticks.recv().await.unwrap();
        if firing(&e) {
            break e.at;
        }
    };
    loop {
        let e = ticks.recv().await.unwrap();
        assert!(firing(&e), "the alert stopped firing {} after it was sent once", e.at.saturating_since(first));
        if e.at.saturating_since(first) >= rollwatch::time::Span::from_secs(6 * 60) {
            break;
        }
    }
    post(ALERT.replace("\"firing\"", "\"resolved\"")).await;
    loop {
        let e = ticks.recv().await.unwrap();
        if !firing(&e) {
            assert!(e.tick.decisions[0].unknown.is_empty(), "a resolved alert is known-false, not unknown");
            break;
        }
    }
    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
    let journal = rollwatch::journal::Journal::read_back(&dir.path().join("state/journal.jsonl")).unwrap();
    let alerts: Vec<_> = journal.iter().filter(|l| l["event"] == "alerts").collect();
    assert_eq!(alerts.len(), 2, "the firing and the resolution, not the repeats: {alerts:?}");
}
