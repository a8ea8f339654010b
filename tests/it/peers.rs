//! rollwatch against real peers, started by the test on free loopback ports: Debian's
//! `prometheus` answers the `promql` source's queries about a loopback service it scrapes, and
//! `prometheus-alertmanager`, fed by a real Prometheus alert rule, delivers its webhook to
//! rollwatch's hook, which reaches a `rollback` decision and runs the profile's procedure:
//! Alertmanager webhooks in, rollback out. `scripts/test.sh` (the README's test command) installs
//! both; without them these tests fail, saying so.

use crate::common;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{serve_http, write};
use rollwatch::rules::Outcome;
use rollwatch::secret::Secret;
use rollwatch::source::poller::http_client;
use rollwatch::source::{Target, TargetKind, probe};
use rollwatch::time::{Span, SystemClock};

/// A child process killed when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(binary: &str, args: &[String], log: &Path) -> Peer {
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(binary).args(args).stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(|e| {
        panic!("cannot start {binary} ({e}): run the tests with scripts/test.sh, which installs it")
    });
    Peer(child)
}

/// Waits until `url` answers 200 (the peer is ready), up to 30 s.
async fn ready(url: &str, log: &Path) {
    let http = http_client().unwrap();
    crate::common::wait_for(&format!("{url} to be ready"), crate::common::DEADLINE, async || {
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            answer => Err(format!("{answer:?}\nits log:\n{}", std::fs::read_to_string(log).unwrap_or_default())),
        }
    })
    .await;
}

/// A loopback service exposing two counters.
async fn metrics_service() -> String {
    serve_http(|_| ("200 OK", "app_requests_total{code=\"200\"} 993\napp_requests_total{code=\"500\"} 7\n".to_string()))
        .await
}

fn prometheus(dir: &Path, config: &str) -> (Peer, String) {
    let port = free_port();
    write(dir, "prometheus.yml", config);
    let args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // The first alert is often sent before Alertmanager discovery completes and is dropped;
        // the default resend delay would then wait a minute.
        "--rules.alert.resend-delay=1s".to_string(),
    ];
    (start("prometheus", &args, &dir.join("prometheus.log")), format!("http://127.0.0.1:{port}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_source_reads_a_real_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let service = metrics_service().await;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: [\"{service}\"]\n"
    );
    let (_prom, url) = prometheus(dir.path(), &config);
    ready(&format!("{url}/-/ready"), &dir.path().join("prometheus.log")).await;

    let http = http_client().unwrap();
    let target = |query: &str| Target {
        name: "errors".into(),
        kind: TargetKind::Promql { url: url.clone(), query: query.into() },
        interval: Span(1000),
        timeout: Span(5000),
        critical: false,
        max_body: 1 << 20,
        auth: None,
        keep: None,
        sample_limit: rollwatch::source::DEFAULT_SAMPLE_LIMIT,
    };
    let errors = target(r#"app_requests_total{code="500"}"#);
    let obs = crate::common::wait_for("Prometheus to scrape the service", crate::common::DEADLINE, async || {
        let obs = probe(&http, &errors, &SystemClock).await;
        if obs.samples.is_empty() { Err(obs) } else { Ok(obs) }
    })
    .await;
    assert!(obs.up, "{:?}", obs.error);
    let (key, value) = &obs.samples[0];
    assert_eq!(key.name, "app_requests_total");
    assert_eq!((key.label("code"), key.label("job"), key.label("instance")), ("500", "app", service.as_str()));
    assert_eq!(*value, 7.0);

    // An aggregate has no metric name: it is named after the target.
    let ratio =
        probe(&http, &target(r#"sum(app_requests_total{code="500"}) / sum(app_requests_total)"#), &SystemClock).await;
    assert_eq!(ratio.samples[0].0.name, "errors");
    assert!((ratio.samples[0].1 - 0.007).abs() < 1e-12);

    // A broken query is a failed poll with Prometheus' own message.
    let bad = probe(&http, &target("sum("), &SystemClock).await;
    assert!(!bad.up);
    let msg = bad.error.unwrap().to_string();
    assert!(msg.contains("HTTP 400") && msg.contains("bad_data"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_webhook_reaches_a_rollback_decision_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let rollwatch_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hooks/alertmanager", rollwatch_listener.local_addr().unwrap());

    // Alertmanager, delivering to rollwatch with a bearer token.
    let am_port = free_port();
    write(
        dir.path(),
        "alertmanager.yml",
        format!(
            "route:\n  receiver: rollwatch\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1m\nreceivers:\n  - name: rollwatch\n    webhook_configs:\n      - url: {hook}\n        send_resolved: true\n        http_config:\n          authorization:\n            credentials: t0k\n"
        ),
    );
    let am_args = vec![
        format!("--config.file={}", dir.path().join("alertmanager.yml").display()),
        format!("--storage.path={}", dir.path().join("am").display()),
        format!("--web.listen-address=127.0.0.1:{am_port}"),
        "--cluster.listen-address=".to_string(),
    ];
    let _am = start("prometheus-alertmanager", &am_args, &dir.path().join("alertmanager.log"));
    ready(&format!("http://127.0.0.1:{am_port}/-/ready"), &dir.path().join("alertmanager.log")).await;

    // Prometheus, scraping an incident flag and alerting while it is set (at once).
    let incident = Arc::new(AtomicBool::new(true));
    let flag = incident.clone();
    let flag_addr =
        serve_http(move |_| ("200 OK", format!("incident_flag {}\n", if flag.load(Ordering::SeqCst) { 1 } else { 0 })))
            .await;
    write(
        dir.path(),
        "rules.yml",
        "groups:\n  - name: security\n    interval: 1s\n    rules:\n      - alert: SecurityIncident\n        expr: incident_flag > 0\n        labels:\n          severity: critical\n",
    );
    let prom_config = format!(
        "global:\n  evaluation_interval: 1s\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flag\n    static_configs:\n      - targets: [\"{flag_addr}\"]\nrule_files:\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n",
        dir.path().join("rules.yml").display()
    );
    let (_prom, prom_url) = prometheus(dir.path(), &prom_config);
    ready(&format!("{prom_url}/-/ready"), &dir.path().join("prometheus.log")).await;

    // rollwatch with the SOLVEREIGN profile.
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/solvereign.toml"),
        dir.path().join("solvereign.toml"),
    )
    .unwrap();
    let marker = dir.path().join("rolled-back");
    // The profile's health rule reads up("api"): the config defines it (a healthy service).
    let api = serve_http(|_| ("200 OK", r#"{"status":"ok"}"#.to_string())).await;
    let cfg = format!(
        "profiles = [\"solvereign.toml\"]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\napi_token_env = \"RW_TOKEN\"\neval_interval = \"200ms\"\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://{api}/health\"\ninterval = \"200ms\"\n[policy]\nverify_for = \"60s\"\nverify_stable = \"1s\"\n{}",
        dir.path().join("state").display(),
        actions(&marker)
    );
    let rollwatch::rules::deployment::Deployment { config, evaluator, procedures } =
        rollwatch::rules::deployment::load(&write(dir.path(), "rollwatch.toml", cfg)).unwrap_or_else(|e| panic!("{e}"));
    let targets = config.targets(|_| None).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut ticks) = tokio::sync::mpsc::unbounded_channel();
    let parts = rollwatch::engine::Parts {
        listener: Some(rollwatch_listener),
        token: Some(Secret("t0k".into())),
        events: Some(tx),
        ..rollwatch::engine::Parts::new(evaluator, procedures, targets)
    };
    let engine = tokio::spawn(async move { rollwatch::engine::run(config, parts, shutdown).await });
    let decided = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(e) = ticks.recv().await {
            let d = &e.tick.decisions[0];
            if d.outcome == Outcome::Rollback {
                return d.explanation();
            }
        }
        String::new()
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no rollback within 60 s; alertmanager log:\n{}\nprometheus log:\n{}",
            std::fs::read_to_string(dir.path().join("alertmanager.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        )
    });
    assert_eq!(decided, "Is system down? no → Is data at risk? YES → rollback");
    // …and the procedure ran: the undo step touched its marker, journalled as done.
    let journal = dir.path().join("state").join("journal.jsonl");
    let events = common::wait_for_journal(&journal, "the undo step", |e| {
        e.iter().any(|e| e["event"] == "step_finished" && e["action"] == "undo" && e["ok"] == true)
    })
    .await;
    assert!(marker.exists());
    let started = events.iter().find(|e| e["event"] == "rollback_started").unwrap();
    assert_eq!(started["firing"], serde_json::json!(["security-incident"]), "{started}");
    // The alert still fires: not verified. Once Prometheus stops alerting, Alertmanager sends it
    // resolved, the rule reads known-false (on_no_data = "ok"), and the rollback completes.
    assert!(!events.iter().any(|e| e["event"] == "rollback_finished"), "{events:#?}");
    incident.store(false, Ordering::SeqCst);
    let events = common::wait_for_journal(&journal, "the rollback to verify", |e| {
        e.iter().any(|e| e["event"] == "rollback_finished")
    })
    .await;
    let finished = events.iter().find(|e| e["event"] == "rollback_finished").unwrap();
    assert_eq!(finished["result"], "completed", "{finished}");
    let alerts = events.iter().filter(|e| e["event"] == "alerts").collect::<Vec<_>>();
    assert!(alerts.iter().any(|a| a["alerts"][0]["firing"] == false), "a resolved notification arrived: {alerts:?}");
    stop.send(true).unwrap();
    engine.await.unwrap().unwrap();
}

/// The SOLVEREIGN procedure's actions: the undo touches `marker`, the checks succeed.
fn actions(marker: &Path) -> String {
    format!(
        "[actions.undo]\nkind = \"exec\"\nargv = [\"/usr/bin/touch\", {:?}]\n[actions.rollout-status]\nkind = \"exec\"\nargv = [\"true\"]\n[actions.health-ready]\nkind = \"exec\"\nargv = [\"true\"]\n[actions.version-check]\nkind = \"exec\"\nargv = [\"true\"]\n",
        marker.display().to_string()
    )
}

/// A `promql` target as a user writes it — in `rollwatch.toml`, run by the binary — reads a real
/// Prometheus that scrapes a service failing 8% of requests, and the profile decides `rollback`
/// (dry-run: journalled, not acted on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promql_target_in_a_config_file_feeds_the_rules_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let service = common::VersionedService::start("v1", 80).await;
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{}\"]\n",
        service.addr
    );
    let (_prom, prom_url) = prometheus(dir.path(), &config);
    ready(&format!("{prom_url}/-/ready"), &dir.path().join("prometheus.log")).await;
    let profile = write(
        dir.path(),
        "profile.toml",
        r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "5s", 10)'

[[rule]]
name = "error-rate-critical"
when = 'error_rate > 0.05'

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("error-rate-critical")'
then = "rollback"
"#,
    );
    let config = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            r#"profiles = [{profile:?}]
state_dir = {state:?}
listen = "127.0.0.1:0"
eval_interval = "500ms"

[[target]]
name = "requests"
kind = "promql"
url = "{prom_url}"
query = 'http_requests_total{{job="app"}}'
interval = "500ms"

[policy]
mode = "dry-run"
"#,
            profile = profile.display().to_string(),
            state = dir.path().join("state").display().to_string(),
        ),
    );
    let (code, out, err) = common::rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut child = common::spawn_run(dir.path(), &config);
    let journal = dir.path().join("state").join("journal.jsonl");
    let events = common::wait_for_journal(&journal, "a rollback decision from Prometheus' numbers", |e| {
        e.iter().any(|e| e["event"] == "decision" && e["outcome"] == "rollback")
    })
    .await;
    let decision = events.iter().find(|e| e["event"] == "decision" && e["outcome"] == "rollback").unwrap();
    let value = decision["firing"][0]["value"].as_f64().unwrap();
    assert!((0.06..0.10).contains(&value), "8% errors read as {value}: {decision}");
    common::sigterm(&mut child);
}
