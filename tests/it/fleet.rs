//! A fleet through the binary: one `rollwatch run` watching two deployments, each from its own
//! file, against two loopback services — each outage rolled back once in its own deployment
//! and nowhere else, a slow rollback in one never holding up the other's evaluation, alerts
//! routed by their `deployment` label (an unknown one applied to none and counted), commands
//! with `--deployment`, and `check` placing a deployment's errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::common;

/// A service: `GET /health` answers 200 while healthy, 503 otherwise; `GET /version` says v2;
/// `POST /rollback` makes it healthy (and is counted).
pub(crate) struct Service {
    pub(crate) rollbacks: Arc<AtomicU64>,
    healthy: Arc<AtomicBool>,
    pub(crate) addr: String,
}

impl Service {
    pub(crate) async fn start(healthy: bool) -> Service {
        let flag = Arc::new(AtomicBool::new(healthy));
        let rollbacks = Arc::new(AtomicU64::new(0));
        let (h, r) = (flag.clone(), rollbacks.clone());
        let addr = common::serve_http(move |req| {
            if req.starts_with("POST /rollback") {
                r.fetch_add(1, Ordering::SeqCst);
                h.store(true, Ordering::SeqCst);
                ("200 OK", "rolled back".into())
            } else if req.starts_with("GET /version") {
                ("200 OK", r#"{"status":"ok","version":"v2"}"#.into())
            } else if h.load(Ordering::SeqCst) {
                ("200 OK", "ok".into())
            } else {
                ("503 Service Unavailable", "down".into())
            }
        })
        .await;
        Service { rollbacks, healthy: flag, addr }
    }

    /// An outage: `/health` answers 503 until the service is rolled back.
    pub(crate) fn fail(&self) {
        self.healthy.store(false, Ordering::SeqCst);
    }
}

/// The profile: `api` down → roll back (a slow step, then the service's rollback); an alert
/// `KeyFeatureBroken` is a rule of its own (it only fires: no question asks it).
pub(crate) fn profile() -> String {
    let mut text = common::down_profile(&["slow", "undo"]);
    text.push_str(
        "\n[[rule]]\nname = \"feature-broken\"\nwhen = 'last(\"ALERTS{alertname=\\\"KeyFeatureBroken\\\"}\") == 1'\n",
    );
    text
}

/// One deployment's file: its two targets, its policy and actions.
pub(crate) fn deployment(name: &str, service: &Service, slow: &str) -> String {
    format!(
        r#"name = "{name}"
profiles = ["../rules/down.toml"]
version = {{ target = "app", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{addr}/health"
interval = "200ms"

[[target]]
name = "app"
kind = "health"
url = "http://{addr}/version"
interval = "200ms"

[policy]
cooldown = "1h"
verify_for = "30s"
verify_stable = "500ms"

[actions.slow]
kind = "exec"
argv = ["sleep", "{slow}"]
timeout = "10s"

[actions.undo]
kind = "http"
method = "POST"
url = "http://{addr}/rollback"
"#,
        addr = service.addr
    )
}

/// Writes a fleet of `api` and `web` (their slow steps taking `slow_api` and 0 s) in `dir`:
/// the top file with the process-wide keys and a console channel both share.
fn fleet(dir: &Path, listen: &str, api: &Service, web: &Service, slow_api: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("deploy")).unwrap();
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    common::write(&dir.join("rules"), "down.toml", profile());
    common::write(&dir.join("deploy"), "api.toml", deployment("api", api, slow_api));
    common::write(&dir.join("deploy"), "web.toml", deployment("web", web, "0"));
    common::write(
        dir,
        "rollwatch.toml",
        format!(
            "deployments = [\"deploy/*.toml\"]\nstate_dir = {state:?}\nlisten = \"{listen}\"\neval_interval = \"200ms\"\n\n[channels.console]\nkind = \"console\"\n",
            state = dir.join("state").display().to_string()
        ),
    )
}

/// `GET http://listen/PATH`, as text.
pub(crate) async fn get(listen: &str, path: &str) -> Result<String, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(2)).build().unwrap();
    let answer = client.get(format!("http://{listen}{path}")).send().await.map_err(|e| e.to_string())?;
    answer.text().await.map_err(|e| e.to_string())
}

/// One deployment's `/status/NAME` as JSON, once `ready` holds.
pub(crate) async fn status_of(
    listen: &str,
    name: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    common::wait_for(&format!("/status/{name}"), common::DEADLINE, async || {
        let text = get(listen, &format!("/status/{name}")).await.map_err(serde_json::Value::String)?;
        let s: serde_json::Value = serde_json::from_str(&text).map_err(|e| serde_json::Value::String(e.to_string()))?;
        if ready(&s) { Ok(s) } else { Err(s) }
    })
    .await
}

/// A deployment's ticks so far.
fn ticks(s: &serde_json::Value) -> u64 {
    s["ticks_total"].as_u64().unwrap_or(0)
}

/// A deployment's journal.
fn journal(dir: &Path, name: &str) -> PathBuf {
    dir.join("state").join(name).join("journal.jsonl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_in_two_deployments_roll_back_each_once_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let (api, web) = (Service::start(false).await, Service::start(false).await);
    let listen = common::free_listen();
    let config = fleet(dir.path(), &listen, &api, &web, "0");
    let sidecar = common::Guard(common::spawn_run(dir.path(), &config));
    for name in ["api", "web"] {
        let events =
            common::wait_for_journal(&journal(dir.path(), name), &format!("{name}'s rollback to complete"), |e| {
                e.iter().any(|e| e["event"] == "rollback_finished")
            })
            .await;
        let finished = common::of_kind(&events, "rollback_finished");
        assert_eq!(finished.len(), 1, "{name}: {finished:?}");
        assert_eq!(finished[0]["result"], "completed", "{name}: {}", finished[0]);
    }
    // Both healthy again; some more evaluations of each change nothing.
    for name in ["api", "web"] {
        let from = ticks(&status_of(&listen, name, |s| ticks(s) > 0).await);
        status_of(&listen, name, |s| ticks(s) >= from + 5).await;
    }
    for (name, service) in [("api", &api), ("web", &web)] {
        let events = rollwatch::journal::Journal::read_back(&journal(dir.path(), name)).unwrap();
        assert_eq!(common::of_kind(&events, "rollback_started").len(), 1, "{name}: one rollback");
        assert_eq!(service.rollbacks.load(Ordering::SeqCst), 1, "{name}'s service was rolled back once");
    }
    // One list for people, and the messages name their deployment.
    let overview: serde_json::Value = serde_json::from_str(&get(&listen, "/status").await.unwrap()).unwrap();
    let names: Vec<&str> =
        overview["deployments"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["api", "web"], "{overview}");
    assert_eq!(overview["deployments"][0]["page"], "/status/api", "{overview}");
    assert_eq!(overview["deployments"][0]["version"], "v2", "{overview}");
    let page = get(&listen, "/status/web").await.unwrap();
    let web: serde_json::Value = serde_json::from_str(&page).unwrap();
    assert_eq!(web["deployment"], "web", "{web}");
    let html = |path: &'static str| {
        let url = format!("http://{listen}{path}");
        async move {
            reqwest::Client::new().get(url).header("accept", "text/html").send().await.unwrap().text().await.unwrap()
        }
    };
    let list = html("/status").await;
    assert!(
        list.contains("<a href=\"/status/api\">api</a>") && list.contains("<a href=\"/status/web\">web</a>"),
        "{list}"
    );
    let page = html("/status/api").await;
    assert!(page.contains("<title>rollwatch: api</title>"), "{page}");
    let metrics = get(&listen, "/metrics").await.unwrap();
    assert!(metrics.contains("rollwatch_ticks_total{deployment=\"api\"}"), "{metrics}");
    assert!(metrics.contains("rollwatch_ticks_total{deployment=\"web\"}"), "{metrics}");
    assert_eq!(metrics.matches("# TYPE rollwatch_ticks_total ").count(), 1, "{metrics}");
    // The deployment's own history, from its own journal, saying how to annotate it.
    let top = config.to_str().unwrap();
    let (code, out, _) = common::rollwatch(&["history", "-c", top, "--deployment", "web"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rb-1") && out.contains("completed"), "{out}");
    assert!(out.contains(&format!("rollwatch annotate -c {top} --deployment web rb-1")), "{out}");
    let (code, out, _) = common::rollwatch(&["report", "-c", top, "--deployment", "web", "rb-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("`rollwatch annotate -c FILE --deployment web rb-1 --root-cause ...`"), "{out}");
    sidecar.stop();
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(stdout.contains("[api] 🔄 ROLLBACK IN PROGRESS"), "{stdout}");
    assert!(stdout.contains("[web] ✅ ROLLBACK COMPLETE"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_one_deployment_rolls_back_only_it_and_the_other_is_evaluated_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let (api, web) = (Service::start(false).await, Service::start(true).await);
    let listen = common::free_listen();
    // api's rollback has a 3 s step first.
    let config = fleet(dir.path(), &listen, &api, &web, "3");
    let sidecar = common::Guard(common::spawn_run(dir.path(), &config));
    common::wait_for_journal(&journal(dir.path(), "api"), "api's slow step to start", |e| {
        e.iter().any(|e| e["event"] == "step_started")
    })
    .await;
    let during = ticks(&status_of(&listen, "web", |s| ticks(s) > 0).await);
    let events = common::wait_for_journal(&journal(dir.path(), "api"), "api's slow step to end", |e| {
        e.iter().any(|e| e["event"] == "step_finished")
    })
    .await;
    let slow = common::of_kind(&events, "step_finished")[0];
    assert!(slow["duration_ms"].as_i64().unwrap() >= 2_900, "{slow}");
    // web was evaluated all along: at 200 ms a tick, 3 s are ~15 ticks (half of them is plenty
    // on a loaded machine, and none would be if api's rollback held web's evaluation).
    let after = ticks(&status_of(&listen, "web", |s| ticks(s) > 0).await);
    assert!(after >= during + 7, "web evaluated {} times during api's 3 s step", after - during);
    common::wait_for_journal(&journal(dir.path(), "api"), "api's rollback to complete", |e| {
        e.iter().any(|e| e["event"] == "rollback_finished")
    })
    .await;
    let web_events = rollwatch::journal::Journal::read_back(&journal(dir.path(), "web")).unwrap();
    assert!(common::of_kind(&web_events, "rollback_started").is_empty(), "web was not rolled back");
    assert_eq!(web.rollbacks.load(Ordering::SeqCst), 0);
    assert_eq!(api.rollbacks.load(Ordering::SeqCst), 1);
    let web_status = status_of(&listen, "web", |_| true).await;
    assert!(web_status["acting"]["in_flight"].is_null(), "{web_status}");
    sidecar.stop();
}

/// Posts an Alertmanager webhook with one `KeyFeatureBroken` alert labelled
/// `deployment=NAME`; returns the hook's answer.
pub(crate) async fn post_alert(listen: &str, deployment: &str) -> String {
    let body = format!(
        r#"{{"version":"4","groupKey":"g","status":"firing","receiver":"rollwatch","groupLabels":{{}},
        "commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am","truncatedAlerts":0,
        "alerts":[{{"status":"firing","labels":{{"alertname":"KeyFeatureBroken","deployment":"{deployment}"}},"annotations":{{}},
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
    resp.text().await.unwrap()
}

/// The state of rule `rule` in a deployment's status.
pub(crate) fn rule_state(s: &serde_json::Value, rule: &str) -> String {
    s["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rule)
        .map(|r| r["state"].to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_go_to_the_deployment_their_label_names_and_an_unknown_one_to_none() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (api, web) = (Service::start(true).await, Service::start(true).await);
    let listen = common::free_listen();
    let config = fleet(dir.path(), &listen, &api, &web, "0");
    let sidecar = common::Guard(common::spawn_run(dir.path(), &config));
    status_of(&listen, "web", |s| ticks(s) > 0).await;
    let answer = post_alert(&listen, "web").await;
    assert_eq!(answer.trim(), "accepted 1 alert");
    status_of(&listen, "web", |s| rule_state(s, "feature-broken") == "\"firing\"").await;
    // api never saw it.
    let from = ticks(&status_of(&listen, "api", |s| ticks(s) > 0).await);
    let api_status = status_of(&listen, "api", |s| ticks(s) >= from + 3).await;
    assert_eq!(rule_state(&api_status, "feature-broken"), "\"inactive\"", "{api_status}");
    // An alert for no known deployment: applied to none, counted, logged once.
    for _ in 0..2 {
        let answer = post_alert(&listen, "nope").await;
        assert!(answer.contains("accepted 0 of 1 alert (1 names no known deployment)"), "{answer}");
    }
    let metrics = get(&listen, "/metrics").await.unwrap();
    assert!(metrics.contains("\nrollwatch_alerts_unrouted_total 2\n"), "{metrics}");
    let from = ticks(&status_of(&listen, "api", |s| ticks(s) > 0).await);
    let api_status = status_of(&listen, "api", |s| ticks(s) >= from + 3).await;
    assert_eq!(rule_state(&api_status, "feature-broken"), "\"inactive\"", "{api_status}");
    sidecar.stop();
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(stderr.matches("an alert names no known deployment").count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_name_their_deployment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (api, web) = (Service::start(true).await, Service::start(true).await);
    let listen = common::free_listen();
    let config = fleet(dir.path(), &listen, &api, &web, "0");
    let config = config.to_str().unwrap().to_string();
    let sidecar = common::Guard(common::spawn_run(dir.path(), Path::new(&config)));
    status_of(&listen, "web", |s| ticks(s) > 0).await;
    status_of(&listen, "api", |s| ticks(s) > 0).await;
    // Without --deployment, a fleet of two asks which: a usage error (exit 2), whatever the
    // command.
    for command in ["pause", "history", "versions"] {
        let (code, out, _) = common::rollwatch(&[command, "-c", &config]);
        assert_eq!(code, 2, "{command}: {out}");
        assert!(out.contains("say which with --deployment NAME") && out.contains("api, web"), "{command}: {out}");
    }
    let (code, out, _) = common::rollwatch(&["pause", "-c", &config, "--deployment", "wbe"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no deployment named \"wbe\" (did you mean web?)"), "{out}");
    // Paused: web only.
    let (code, out, _) = common::rollwatch(&["pause", "-c", &config, "--deployment", "web", "--for", "1h"]);
    assert_eq!(code, 0, "{out}");
    let web_status = status_of(&listen, "web", |s| !s["acting"]["paused_until"].is_null()).await;
    let api_status = status_of(&listen, "api", |_| true).await;
    assert!(api_status["acting"]["paused_until"].is_null(), "{api_status} / {web_status}");
    // A deploy reported for api reaches api's journal only.
    let (code, out, _) = common::rollwatch(&["deployed", "-c", &config, "--deployment", "api", "v3"]);
    assert_eq!(code, 0, "{out}");
    let deployed_v3 = |e: &[serde_json::Value]| e.iter().any(|e| e["event"] == "deploy" && e["to"] == "v3");
    common::wait_for_journal(&journal(dir.path(), "api"), "api's deploy of v3", deployed_v3).await;
    let web_events = rollwatch::journal::Journal::read_back(&journal(dir.path(), "web")).unwrap();
    assert!(!deployed_v3(&web_events), "web saw api's deploy");
    // The deploy hook as a pipeline calls it: the deployment in the body; without it, 400.
    let client = reqwest::Client::new();
    let post = |body: &'static str| {
        client
            .post(format!("http://{listen}/hooks/deploy"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let resp = post(r#"{"deployment": "web", "version": "v4"}"#).await.unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    let resp = post(r#"{"version": "v4"}"#).await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert!(resp.text().await.unwrap().contains("say which deployment"));
    let resp = post(r#"{"deployment": "WEB", "version": "v4"}"#).await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.text().await.unwrap().contains("no deployment named \"WEB\" (did you mean web?)"));
    common::wait_for_journal(&journal(dir.path(), "web"), "web's deploy of v4", |e| {
        e.iter().any(|e| e["event"] == "deploy" && e["to"] == "v4")
    })
    .await;
    // Reading commands read the deployment's own journal.
    let (code, out, _) = common::rollwatch(&["versions", "-c", &config, "--deployment", "api"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("v3") && !out.contains("v4"), "{out}");
    let (code, out, _) = common::rollwatch(&["history", "-c", &config, "--deployment", "web"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no rollbacks in") && out.contains("/web/journal.jsonl"), "{out}");
    sidecar.stop();
}

#[test]
fn check_places_each_error_and_names_its_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("deploy")).unwrap();
    std::fs::create_dir_all(d.join("rules")).unwrap();
    common::write(&d.join("rules"), "down.toml", common::down_profile(&[]));
    let ok = "name = \"api\"\nprofiles = [\"../rules/down.toml\"]\n\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/health\"\n";
    common::write(&d.join("deploy"), "api.toml", ok);
    // A second deployment with the same name, a process-wide key, and a typo in a target kind.
    common::write(
        &d.join("deploy"),
        "web.toml",
        "name = \"api\"\nprofiles = [\"../rules/down.toml\"]\nstate_dir = \"/tmp/x\"\n\n[[target]]\nname = \"api\"\nkind = \"helth\"\nurl = \"http://127.0.0.1:1/health\"\n",
    );
    let top = common::write(
        d,
        "rollwatch.toml",
        format!(
            "deployments = [\"deploy/*.toml\"]\nstate_dir = {:?}\ntarget = []\n",
            d.join("state").display().to_string()
        ),
    );
    let (code, out, _) = common::rollwatch(&["check", top.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let web = d.join("deploy").join("web.toml").display().to_string();
    let top = top.display().to_string();
    for expected in [
        format!("{top}:3:10: target belongs to a deployment"),
        format!("{web}:1:8: deployment \"api\": the name \"api\" is taken by"),
        format!("{web}:3:13: deployment \"api\": state_dir is process-wide"),
        format!("{web}:7:8: deployment \"api\", target \"api\": kind must be one of"),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in\n{out}");
    }
    assert!(out.contains("4 errors"), "{out}");
    // The good deployment alone passes: a fleet of one.
    std::fs::remove_file(d.join("deploy").join("web.toml")).unwrap();
    common::write(d, "rollwatch.toml", "deployments = [\"deploy/*.toml\"]\n");
    let (code, out, _) = common::rollwatch(&["check", d.join("rollwatch.toml").to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // Recording a fleet is not built: said, not half done.
    let fixture = d.join("rec.toml");
    let top = d.join("rollwatch.toml");
    let (code, out, _) =
        common::rollwatch(&["record", "-c", top.to_str().unwrap(), "--for", "1s", "-o", fixture.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("`record` of a fleet is not built yet"), "{out}");
    assert!(!fixture.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_each_deployment_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let (api, web) = (Service::start(true).await, Service::start(true).await);
    let listen = common::free_listen();
    let config = fleet(dir.path(), &listen, &api, &web, "0");
    let sidecar = common::Guard(common::spawn_run(dir.path(), &config));
    status_of(&listen, "web", |s| s["acting"]["mode"] == "auto").await;
    // web goes dry-run; api's file is broken: web reloads, api keeps its running config.
    let web_file = dir.path().join("deploy").join("web.toml");
    let text = std::fs::read_to_string(&web_file).unwrap().replace("[policy]\n", "[policy]\nmode = \"dry-run\"\n");
    std::fs::write(&web_file, text).unwrap();
    let api_file = dir.path().join("deploy").join("api.toml");
    let text = std::fs::read_to_string(&api_file).unwrap().replace("interval = \"200ms\"", "interval = \"soon\"");
    std::fs::write(&api_file, text).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &sidecar.0.id().to_string()]).status().unwrap();
    assert!(hup.success());
    status_of(&listen, "web", |s| s["acting"]["mode"] == "dry-run").await;
    common::wait_for_journal(&journal(dir.path(), "api"), "api's reload to fail", |e| {
        e.iter().any(|e| e["event"] == "reload_failed")
    })
    .await;
    let api_status = status_of(&listen, "api", |_| true).await;
    assert_eq!(api_status["acting"]["mode"], "auto", "{api_status}");
    let events = rollwatch::journal::Journal::read_back(&journal(dir.path(), "api")).unwrap();
    let failed = common::of_kind(&events, "reload_failed")[0];
    assert!(failed["errors"].as_str().unwrap().contains("deployment \"api\", target \"api\": interval"), "{failed}");
    sidecar.stop();
}

#[test]
fn ha_beside_deployments_is_checked_in_the_top_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("deploy")).unwrap();
    common::write(d, "down.toml", common::down_profile(&[]));
    common::write(
        &d.join("deploy"),
        "api.toml",
        "name = \"api\"\nprofiles = [\"../down.toml\"]\n\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/health\"\n",
    );
    let top_with = |ttl: &str| {
        common::write(
            d,
            "rollwatch.toml",
            format!(
                "deployments = [\"deploy/*.toml\"]\nstate_dir = {:?}\n\n[ha]\netcd = [\"http://127.0.0.1:2379\"]\nkey = \"/rollwatch/fleet\"\nttl = \"{ttl}\"\n",
                d.join("state").display().to_string()
            ),
        )
    };
    let top = top_with("10s");
    let top = top.to_str().unwrap();
    let (code, out, _) = common::rollwatch(&["check", top]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[ha]: the replicas share the deployments out on etcd"), "{out}");
    // A lease too short for a busy replica: placed in the top file, and nothing runs.
    top_with("1s");
    for args in [vec!["check", top], vec!["run", "-c", top]] {
        let (code, out, _) = common::rollwatch(&args);
        assert_eq!(code, 1, "{args:?}: {out}");
        assert!(out.contains(&format!("{top}:7:7: [ha]: ttl")), "{args:?}: {out}");
    }
    assert!(!d.join("state").exists(), "run started nothing");
}
