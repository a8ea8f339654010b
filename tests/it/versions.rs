//! Version-aware acting, as a user meets it: the real binary with a config file, watching a
//! loopback service that deploys versions (`/health` says which, `/metrics` counts its errors,
//! `POST /rollback?to=V` restores V). Fix-forward, a regression rolled back to the last version
//! that ran healthy, an issue that persists after the rollback, an alert-driven rollback that
//! completes when the alert resolves, an incident that predates a deploy, reject/approve with
//! who, mark, versions, and deploys reported by the hook and `rollwatch deployed`.

use crate::common;
use crate::common::{
    VersionedService, of_kind, post_alert, rollwatch, sigterm, spawn_run, versioned_config, wait_for_journal,
};
use serde_json::Value;

pub(crate) struct Sidecar {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: std::path::PathBuf,
    pub(crate) listen: String,
    pub(crate) child: std::process::Child,
}

impl Sidecar {
    pub(crate) async fn start(service: &VersionedService, policy: &str) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let listen = common::free_listen();
        let config = versioned_config(dir.path(), service, &listen, policy);
        let child = spawn_run(dir.path(), &config);
        Sidecar { dir, config, listen, child }
    }

    pub(crate) fn journal(&self) -> std::path::PathBuf {
        self.dir.path().join("state").join("journal.jsonl")
    }

    pub(crate) async fn wait(&self, what: &str, ready: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_for_journal(&self.journal(), what, ready).await
    }

    pub(crate) async fn baked(&self, version: &str) -> Vec<Value> {
        self.wait(&format!("{version} baked"), |e| of_kind(e, "version_baked").iter().any(|b| b["version"] == version))
            .await
    }

    pub(crate) fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut all: Vec<&str> = vec![args[0], "-c", self.config.to_str().unwrap()];
        all.extend(&args[1..]);
        rollwatch(&all)
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub(crate) fn stop(&mut self) -> String {
        sigterm(&mut self.child);
        self.stdout()
    }
}

impl Drop for Sidecar {
    /// A test that fails midway leaves no sidecar running.
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn finished(events: &[Value]) -> bool {
    !of_kind(events, "rollback_finished").is_empty()
}

/// A bad version's errors reach rollwatch before its version does (the version source polled
/// every 2 s, the metrics every 200 ms): the rollback waits for the next version reading and
/// is about the new version, to the last good one — not about the old version, and not judged
/// an incident older than the deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_seen_before_the_new_version_is_read_are_the_new_versions() {
    let service = VersionedService::start("v1", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = common::free_listen();
    let config = versioned_config(dir.path(), &service, &listen, "");
    let text = std::fs::read_to_string(&config).unwrap();
    // The health target (the version source) polled every 2 s.
    let text = text.replace("/health\"\ninterval = \"200ms\"", "/health\"\ninterval = \"2s\"");
    assert!(text.contains("/health\"\ninterval = \"2s\""), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut s = Sidecar { child: spawn_run(dir.path(), &config), dir, config, listen };
    s.baked("v1").await;
    service.deploy("v2", 500);
    let events = s.wait("the rollback finished", finished).await;
    let started = of_kind(&events, "rollback_started");
    assert_eq!(started.len(), 1, "{events:#?}");
    assert_eq!((started[0]["version_from"].as_str(), started[0]["target_version"].as_str()), (Some("v2"), Some("v1")));
    assert!(of_kind(&events, "escalation").iter().all(|e| !e["finding"].as_str().unwrap_or("").contains("predates")));
    assert_eq!(service.rollbacks(), vec!["v1".to_string()]);
    s.stop();
}

/// A decision waiting to know which version its issue is about reads the version source at
/// once, and is evaluated again as soon as the reading comes: the version source polled every
/// hour delays no rollback; nor does it leave the restored version unknown after the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_waiting_for_the_version_reads_it_at_once() {
    let service = VersionedService::start("v1", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = common::free_listen();
    // The critical rule holds for 1 s before it fires.
    let profile =
        common::VERSIONED_PROFILE.replace("when = 'error_rate > 0.05'\n", "when = 'error_rate > 0.05'\nfor = \"1s\"\n");
    assert_ne!(profile, common::VERSIONED_PROFILE);
    let config = common::versioned_config_with(dir.path(), &service, &listen, "", &profile);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("/health\"\ninterval = \"200ms\"", "/health\"\ninterval = \"1h\"");
    assert!(text.contains("/health\"\ninterval = \"1h\""), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut s = Sidecar { child: spawn_run(dir.path(), &config), dir, config, listen };
    // Its first poll comes within seconds of the start (not anywhere in the hour); then v1 bakes.
    common::status_when(&s.listen, "the version source's first reading", |st| st["acting"]["version_seen"] == "v1")
        .await;
    s.baked("v1").await;
    let watch = rollwatch::time::Stopwatch::start();
    service.deploy("v2", 500);
    let events = s.wait("a rollback", |e| !of_kind(e, "rollback_started").is_empty()).await;
    let took = watch.elapsed_secs();
    assert!(!of_kind(&events, "waiting_for_version").is_empty(), "the decision waited: {events:#?}");
    let started = of_kind(&events, "rollback_started");
    assert_eq!((started[0]["version_from"].as_str(), started[0]["target_version"].as_str()), (Some("v2"), Some("v1")));
    assert!(took < 10.0, "rolled back {took:.1} s after the outage began (the version source polled hourly)");
    // v2, read when the decision asked, is dated just after v1's last reading: the rule that
    // turned true since is v2's, and goes on firing — its `for` not started again.
    let restarted = of_kind(&events, "transition")
        .into_iter()
        .filter(|t| t["rule"] == "error-rate-critical" && t["to"] == "inactive")
        .count();
    assert_eq!(restarted, 0, "the rule was started again by the reading: {events:#?}");
    let events = s.wait("the rollback finished", finished).await;
    assert_eq!(service.rollbacks(), vec!["v1".to_string()]);
    let done = of_kind(&events, "rollback_finished");
    assert_eq!(
        (done[0]["result"].as_str(), done[0]["version_to"].as_str()),
        (Some("completed"), Some("v1")),
        "{done:?}"
    );
    let status = common::status(&s.listen).await.unwrap();
    assert_eq!(status["acting"]["version"], "v1", "the version deployed now: {status}");
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regression_rolls_back_to_the_last_version_that_ran_healthy() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    // v2 fails 3% of requests: considered (an approval opens), never good.
    service.deploy("v2", 30);
    s.wait("an approval for v2", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v2")).await;
    // v3 fails 8%: rolled back — to v1, the last version that ran healthy, not v2 before it.
    service.deploy("v3", 80);
    let events = s.wait("the rollback to finish", finished).await;
    let started = of_kind(&events, "rollback_started")[0];
    assert_eq!((started["version_from"].as_str(), started["target_version"].as_str()), (Some("v3"), Some("v1")));
    let done = of_kind(&events, "rollback_finished")[0];
    assert_eq!(done["result"], "completed", "{done}");
    assert_eq!(done["version_to"], "v1");
    assert_eq!(service.rollbacks(), vec!["v1"]);
    let closed: Vec<&Value> = of_kind(&events, "approval_closed");
    assert_eq!(closed[0]["how"], "superseded", "v2's approval closed when v3 was deployed");
    // v1 is judged on its own evidence from the restore on (verification saw it quiet for
    // verify_stable): nothing opens against it, through v4's deploy and bake.
    service.deploy("v4", 0);
    let events = s.baked("v4").await;
    assert!(of_kind(&events, "approval_opened").iter().all(|a| a["version"] != "v1"), "{events:#?}");
    assert!(of_kind(&events, "escalation").is_empty(), "{events:#?}");
    assert_eq!(of_kind(&events, "rollback_started").len(), 1);
    let (code, versions, _) = s.cli(&["versions"]);
    assert_eq!(code, 0);
    assert!(versions.contains("v3  bad") && versions.contains("rolled back by rb-1"), "{versions}");
    let out = s.stop();
    assert!(out.contains("ROLLBACK IN PROGRESS") && out.contains("(target: v1)"), "{out}");
    assert!(out.contains("ROLLBACK COMPLETE") && out.contains("Previous version restored: v1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_deployed_over_a_bad_version_is_not_rolled_back() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    let (code, out, err) = s.cli(&["pause"]);
    assert_eq!(code, 0, "{out}{err}");
    service.deploy("v1.5.0", 80);
    s.wait("the rollback held back by the pause", |e| {
        of_kind(e, "suppressed").iter().any(|x| x["reason"].as_str().is_some_and(|r| r.starts_with("paused")))
    })
    .await;
    // The fix, then resume: v1.5.0's errors are not v1.5.1's evidence.
    service.deploy("v1.5.1", 0);
    s.wait("the fix deployed", |e| of_kind(e, "deploy").iter().any(|d| d["to"] == "v1.5.1")).await;
    let (code, out, err) = s.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    let events = s.baked("v1.5.1").await;
    assert!(of_kind(&events, "rollback_started").is_empty(), "the fix was rolled back: {events:#?}");
    service.deploy("v1.5.2", 0);
    let events = s.baked("v1.5.2").await;
    assert!(of_kind(&events, "rollback_started").is_empty(), "{events:#?}");
    assert!(service.rollbacks().is_empty());
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issue_persisting_below_the_threshold_after_the_rollback_is_s2_never_complete() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    service.deploy("v2", 80);
    // Whatever broke is not v2 alone: v1 fails 3% once it is back.
    service.set_errors("v1", 30);
    // The escalation is journalled just after the rollback's end: wait for both.
    let events = s
        .wait("the rollback to finish and be escalated", |e| finished(e) && !of_kind(e, "escalation").is_empty())
        .await;
    let done = of_kind(&events, "rollback_finished")[0];
    assert_eq!(done["result"], "issue_persists", "{done}");
    let e = of_kind(&events, "escalation")[0];
    assert_eq!(e["severity"], "S2");
    assert!(e["finding"].as_str().unwrap().contains("issue persists"), "{e}");
    let out = s.stop();
    assert!(!out.contains("ROLLBACK COMPLETE"), "{out}");
    assert!(out.contains("S2: rollback succeeded but issue persists"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_driven_rollback_completes_when_the_alert_resolves() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    service.deploy("v2", 0);
    s.baked("v2").await;
    post_alert(&s.listen, "firing").await;
    s.wait("the undo to v1", |e| of_kind(e, "step_finished").iter().any(|x| x["ok"] == true)).await;
    // The alert still fires after the undo: not verified yet.
    s.wait("the restore seen", |e| of_kind(e, "deploy").iter().any(|d| d["to"] == "v1")).await;
    let events = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    assert!(!finished(&events), "verified while the alert still fired: {events:#?}");
    post_alert(&s.listen, "resolved").await;
    let events = s.wait("the rollback to finish", finished).await;
    let done = of_kind(&events, "rollback_finished")[0];
    assert_eq!(done["result"], "completed", "a resolved alert is known-false: {done}");
    assert_eq!(done["version_to"], "v1");
    // The alert's rule judges the environment (scope = "environment"): v2 baked and did nothing
    // wrong, so it stays good — a rollback target still, not marked bad.
    let (_, json, _) = s.cli(&["versions", "--json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    let v2 = json["versions"].as_array().unwrap().iter().find(|v| v["version"] == "v2").unwrap();
    assert_eq!(v2["state"], "good", "{json:#}");
    assert!(v2["evidence"].to_string().contains("for the environment"), "{json:#}");
    assert_eq!(json["target"], "v2", "{json:#}");
    let out = s.stop();
    assert!(out.contains("ROLLBACK COMPLETE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_that_predates_the_deploy_is_escalated_not_rolled_back() {
    // v1 already fails 8% when rollwatch starts; approve mode keeps it from acting on v1.
    let service = VersionedService::start("v1", 80).await;
    let mut s = Sidecar::start(&service, "mode = \"approve\"").await;
    s.wait("an approval for v1", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v1")).await;
    service.deploy("v2", 80);
    let events = s
        .wait("the S2 escalation", |e| {
            of_kind(e, "escalation").iter().any(|x| x["finding"].as_str().is_some_and(|f| f.contains("predates")))
        })
        .await;
    let e = of_kind(&events, "escalation").into_iter().find(|x| x["severity"] == "S2").unwrap();
    assert!(e["finding"].as_str().unwrap().contains("incident predates deploy of v2"), "{e}");
    assert!(of_kind(&events, "approval_opened").iter().all(|a| a["version"] != "v2"), "{events:#?}");
    assert_eq!(of_kind(&events, "approval_closed")[0]["how"], "superseded");
    // Once v2 is seen healthy, a regression is its own again.
    service.set_errors("v2", 0);
    s.baked("v2").await;
    service.set_errors("v2", 80);
    let events =
        s.wait("an approval for v2", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v2")).await;
    assert_eq!(of_kind(&events, "escalation").len(), 1, "told once: {events:#?}");
    let out = s.stop();
    assert!(out.contains("S2: incident predates deploy of v2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_reject_approve_and_mark_and_history_says_who() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    service.deploy("v2", 30);
    s.wait("an approval for v2", |e| !of_kind(e, "approval_opened").is_empty()).await;
    // The message gives the exact command.
    let wanted = format!("rollwatch approve -c {} ap-1", s.config.display());
    common::wait_for("the approval message", common::DEADLINE, async || {
        let out = s.stdout();
        if out.contains(&wanted) { Ok(()) } else { Err(out) }
    })
    .await;
    let (code, out, err) = s.cli(&["reject", "ap-1", "--reason", "known flaky dependency", "--by", "bob"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rejected by bob"), "{out}");
    // Not asked again for v2. v3 runs healthy, then regresses: asked about anew, approved by alice.
    service.deploy("v3", 0);
    s.baked("v3").await;
    service.set_errors("v3", 30);
    let events =
        s.wait("an approval for v3", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v3")).await;
    assert_eq!(of_kind(&events, "approval_opened").len(), 2, "{events:#?}");
    let (code, out, err) = s.cli(&["approve", "ap-2", "--by", "alice"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rollback rb-1 started"), "{out}");
    s.wait("the rollback to finish", finished).await;
    assert_eq!(service.rollbacks(), vec!["v1"]);
    let (code, history, _) = s.cli(&["history"]);
    assert_eq!(code, 0);
    assert!(history.contains("approved: ap-2 by alice"), "{history}");
    assert!(history.contains("ap-1 profile v2, rejected by bob: known flaky dependency"), "{history}");
    let (_, json, _) = s.cli(&["history", "--json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["rollbacks"][0]["approved_by"], "alice");
    assert_eq!(json["rollbacks"][0]["result"], "completed");
    // An operator marks v1 bad: no version is a rollback target any more.
    let (code, out, err) = s.cli(&["mark", "v1", "bad", "--reason", "leaks memory", "--by", "carol"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("v1 marked bad by carol"), "{out}");
    let (_, versions, _) = s.cli(&["versions"]);
    assert!(versions.contains("v1  bad") && versions.contains("marked bad by carol"), "{versions}");
    let (_, json, _) = s.cli(&["versions", "--json"]);
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["current"], "v1");
    assert_eq!(json["target"], Value::Null);
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_reported_by_the_hook_and_the_command_are_journalled_and_restored() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{}/hooks/deploy", s.listen);
    let plain =
        client.post(&url).header("content-type", "text/plain").body(r#"{"version":"v7"}"#).send().await.unwrap();
    assert_eq!(plain.status(), 415, "a cross-site form post is refused");
    let bad = client.post(&url).header("content-type", "application/json").body(r#"{"v":"v7"}"#).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let ok =
        client.post(&url).header("content-type", "application/json").body(r#"{"version":"v7"}"#).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("deploy of v7 recorded"));
    // Without a token (loopback), no web page may change state: form-style posts and foreign
    // origins are refused.
    let pause = format!("http://{}/pause", s.listen);
    let form = client.post(&pause).header("content-type", "text/plain").body("x").send().await.unwrap();
    assert_eq!(form.status(), 415);
    let foreign = client
        .post(&pause)
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let alert = client
        .post(format!("http://{}/hooks/alertmanager", s.listen))
        .header("origin", "http://evil.example")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(alert.status(), 403);
    let (code, out, err) = s.cli(&["deployed", "v8"]);
    assert_eq!(code, 0, "{out}{err}");
    let events = s.wait("both deploys", |e| of_kind(e, "deploy").len() >= 3).await;
    let deploys: Vec<(&str, &str, &str)> = of_kind(&events, "deploy")
        .iter()
        .map(|d| (d["from"].as_str().unwrap_or("-"), d["to"].as_str().unwrap(), d["source"].as_str().unwrap()))
        .collect();
    assert_eq!(deploys, vec![("-", "v1", "first_sight"), ("v1", "v7", "hook"), ("v7", "v8", "command")]);
    s.stop();
    // Read back from the journal after the sidecar stopped.
    let (code, versions, _) = s.cli(&["versions"]);
    assert_eq!(code, 0);
    assert!(versions.contains("v8  new  deployed") && versions.contains("(deployed now)"), "{versions}");
    assert!(versions.contains("v7  new") && versions.contains("rollback target: v1"), "{versions}");
}

/// `rollwatch report`: the incident report of a rollback, from the journal — severity,
/// versions, durations, the verdict, the root cause once annotated, and a timeline from the
/// deploy through detection, decision, steps and verification; Markdown and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_report_is_filled_from_the_journal() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    service.deploy("v2", 80);
    s.wait("the rollback to finish", finished).await;
    let (code, out, _) = s.cli(&["annotate", "rb-1", "--root-cause", "a bad connection pool size in v2"]);
    assert_eq!(code, 0, "{out}");
    let (code, md, err) = s.cli(&["report", "rb-1"]);
    assert_eq!(code, 0, "{md}{err}");
    for wanted in [
        "# Rollback Incident Report: rb-1",
        "**Severity**: warning",
        "**Result**: completed",
        "a bad connection pool size in v2",
        "- **Previous version**: v2",
        "- **Target version**: v1",
        "- **Version after**: v1",
        "- verdict: completed",
        "## Timeline",
    ] {
        assert!(md.contains(wanted), "missing {wanted:?} in:\n{md}");
    }
    // The timeline in order: HH:MM:SS then what happened.
    let timeline: Vec<&str> = md.split("## Timeline\n\n").nth(1).unwrap().lines().collect();
    let order = [
        "deployment of v2 over v1",
        "issue detected: rule error-rate-",
        "decision: rollback",
        "rollback rb-1 initiated to v1",
        "run undo: ok",
        "rollback complete (steps done)",
        "verification complete: recovered, v1 running",
    ];
    let mut at = 0;
    for what in order {
        let found = timeline[at..]
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("{what:?} not after line {at} in:\n{md}"));
        at += found;
        let line = timeline[at];
        assert!(line.starts_with("- ") && line.as_bytes()[4] == b':' && line.as_bytes()[7] == b':', "{line}");
    }
    let (code, json, _) = s.cli(&["report", "rb-1", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["result"], "completed");
    let (duration, impact) = (v["duration_seconds"].as_f64().unwrap(), v["user_impact_seconds"].as_f64().unwrap());
    assert!(duration > 0.0 && impact >= duration, "impact {impact} s starts before the rollback's {duration} s");
    let (code, out, _) = s.cli(&["report", "rb-9"]);
    assert_eq!(code, 1);
    assert!(out.contains("no rollback \"rb-9\" in the journal (known: rb-1)"), "{out}");
    // The rollback's timings: in history, and as histograms and a downtime counter in /metrics.
    let (code, history, _) = s.cli(&["history"]);
    assert_eq!(code, 0);
    assert!(history.contains("timing: detected ") && history.contains("recovered "), "{history}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://{}/metrics", s.listen)).await.unwrap().text().await.unwrap();
    for name in ["rollwatch_detect_seconds", "rollwatch_rollback_duration_seconds", "rollwatch_recovery_seconds"] {
        assert!(metrics.contains(&format!("# TYPE {name} histogram")), "{metrics}");
        assert!(metrics.contains(&format!("{name}_count 1\n")), "{name}: {metrics}");
        assert!(metrics.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 1\n")), "{name}: {metrics}");
    }
    // The page for people: versions, a sparkline per signal with its thresholds, formatted
    // values, the rollback in the history; the JSON keeps what the page shows.
    let client = reqwest::Client::new();
    let page = client
        .get(format!("http://{}/status", s.listen))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<meta http-equiv=\"refresh\""), "{page}");
    assert!(page.contains("<b id=\"version\">v1</b>") && page.contains("<b id=\"last-good\">v1</b>"), "{page}");
    assert!(page.contains("class=\"signal\" data-signal=\"error_rate\""), "{page}");
    assert_eq!(page.matches("class=\"sparkline\"").count(), page.matches("class=\"signal\"").count(), "{page}");
    assert!(page.contains("error-rate-critical &gt; 5%"), "a threshold for people: {page}");
    assert!(page.contains("<tr class=\"rollback-row\"><td>rb-1</td>") && page.contains("v2 → v1"), "{page}");
    let status: Value = client.get(format!("http://{}/status", s.listen)).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["acting"]["recent_rollbacks"][0]["id"], "rb-1", "{status}");
    let steps = status["acting"]["recent_rollbacks"][0]["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s.as_str().is_some_and(|s| s.contains("run undo: ok"))), "{status}");
    assert!(status["signal_history"]["error_rate"].as_array().is_some_and(|h| !h.is_empty()), "{status}");
    assert_eq!(status["thresholds"]["error_rate"][0][0], "error-rate-critical", "{status}");
    let downtime =
        metrics.lines().find(|l| l.starts_with("rollwatch_downtime_seconds_total{profile=\"profile\"}")).unwrap();
    let secs: f64 = downtime.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((secs - impact).abs() < 1.0, "downtime {secs} s, report's user impact {impact} s");
    s.stop();
}

/// Runs `rollwatch ARGS`, its output in a file; killed and failed if it takes more than `secs`.
fn rollwatch_within(dir: &std::path::Path, args: &[&str], secs: f64) -> (i32, String) {
    let out = dir.join("cli.out");
    // Killed when dropped: also when the wait fails.
    let mut child = common::Guard(
        std::process::Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let status = common::wait_for_blocking(&format!("rollwatch {args:?} to finish"), secs, || {
        child.0.try_wait().unwrap().ok_or("still running")
    });
    (status.code().unwrap_or(-1), std::fs::read_to_string(&out).unwrap())
}

/// 100,000 deploys through the hook, as the journal holds them (written here line by line as
/// the sidecar writes them): v1 baked long ago, v50000 rolled back by rb-1. `versions` and
/// `history` read it back and `run` answers `/healthz` well within 10 s each (quadratic
/// restoring took 20 s a command in a release build); `versions` keeps what acting needs of the
/// old versions — v1 good, still the rollback target, and v50000 bad, each with the line that
/// says why — with the last 50 versions, and says how many without a verdict it forgot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_deploys_read_back_and_restart_in_linear_time() {
    use std::io::Write;
    const DEPLOYS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let t0: i64 = 1_700_000_000_000;
    let at = |i: u64| t0 + i as i64 * 1000;
    let mut j = std::io::BufWriter::new(std::fs::File::create(state.join("journal.jsonl")).unwrap());
    writeln!(j, r#"{{"at":{},"event":"deploy","from":null,"to":"v1","source":"first_sight"}}"#, at(1)).unwrap();
    writeln!(j, r#"{{"at":{},"event":"version_baked","version":"v1","since":{}}}"#, at(1) + 600, at(1)).unwrap();
    for i in 2..=DEPLOYS {
        writeln!(j, r#"{{"at":{},"event":"deploy","from":"v{}","to":"v{i}","source":"hook"}}"#, at(i), i - 1).unwrap();
        if i == 50_000 {
            let (t, rb) = (at(i), "rb-1");
            writeln!(j, r#"{{"at":{},"event":"rollback_started","rollback_id":"{rb}","profile":"profile","key":"profile@v{i}","version_from":"v{i}","target_version":"v1","level":null,"reason":"Is system down? YES","explanation":"Is system down? YES → rollback","firing":["down"],"approval_id":null,"deployed_at":{t}}}"#, t + 100).unwrap();
            writeln!(
                j,
                r#"{{"at":{},"event":"step_started","rollback_id":"{rb}","step":1,"action":"undo","role":"run"}}"#,
                t + 110
            )
            .unwrap();
            writeln!(j, r#"{{"at":{},"event":"step_finished","rollback_id":"{rb}","step":1,"action":"undo","role":"run","ok":true,"detail":"exit 0","duration_ms":50}}"#, t + 160).unwrap();
            writeln!(j, r#"{{"at":{},"event":"rollback_finished","rollback_id":"{rb}","result":"completed","duration_ms":700,"version_to":"v1","error":null}}"#, t + 800).unwrap();
        }
    }
    drop(j);
    let listen = common::free_listen();
    let api = common::serve_http(|_| ("200 OK", "ok".into())).await;
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&[]));
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [{:?}]\nstate_dir = {:?}\nlisten = \"{listen}\"\neval_interval = \"200ms\"\n\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://{api}/health\"\ninterval = \"1s\"\n",
            profile.display().to_string(),
            state.display().to_string(),
        ),
    );
    let config = config.to_str().unwrap();

    let (code, versions) = rollwatch_within(dir.path(), &["versions", "-c", config], 10.0);
    assert_eq!(code, 0, "{versions}");
    let lines: Vec<&str> = versions.lines().collect();
    assert_eq!(lines[0], "(99948 versions without a verdict, deployed before the last 50, are forgotten)");
    assert!(lines[1].starts_with("v1  good  deployed 2023-11-14T22:13:21Z"), "{versions}");
    assert!(lines[2].starts_with("    baked at "), "{versions}");
    assert!(lines[3].starts_with("v50000  bad  deployed "), "{versions}");
    assert!(lines[4].starts_with("    rolled back by rb-1 at "), "{versions}");
    assert!(lines[5].starts_with("v99951  new  deployed "), "{versions}");
    assert!(
        lines[lines.len() - 2].starts_with("v100000  new  deployed ")
            && lines[lines.len() - 2].ends_with("(deployed now)")
    );
    assert_eq!(lines[lines.len() - 1], "rollback target: v1");
    assert_eq!(lines.len(), 1 + 4 + 50 + 1, "{versions}");

    let (code, json) = rollwatch_within(dir.path(), &["versions", "-c", config, "--json"], 10.0);
    assert_eq!(code, 0, "{json}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!((json["current"].as_str(), json["target"].as_str()), (Some("v100000"), Some("v1")));
    assert_eq!(json["versions"].as_array().unwrap().len(), 52);

    let (code, history) = rollwatch_within(dir.path(), &["history", "-c", config], 10.0);
    assert_eq!(code, 0, "{history}");
    assert!(history.starts_with("rb-1 profile v50000 → v1, completed in 0.7s: Is system down? YES"), "{history}");
    assert!(history.contains("step 1 run undo: ok, exit 0"), "{history}");

    // The sidecar restores from it and answers /healthz, deployed v100000, target v1.
    let mut child = common::Guard(common::spawn_run(dir.path(), std::path::Path::new(config)));
    let took = rollwatch::time::Stopwatch::start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    common::wait_for("/healthz within 10 s of the start", 10.0, async || {
        if let Some(exit) = child.0.try_wait().unwrap() {
            panic!("rollwatch exited ({exit}): {}", stderr());
        }
        match client.get(format!("http://{listen}/healthz")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            answer => Err(format!("{answer:?}; stderr: {}", stderr())),
        }
    })
    .await;
    // /status shows the restored versions from the first evaluation on (still within the 10 s).
    let status =
        common::wait_for("the first evaluation", (10.0 - took.elapsed_secs()).max(0.0), async || match common::status(
            &listen,
        )
        .await
        {
            Ok(status) if !status["acting"]["version"].is_null() => Ok(status),
            seen => Err(seen),
        })
        .await;
    assert_eq!(status["acting"]["version"], "v100000", "{}", status["acting"]);
    assert_eq!(status["acting"]["target_version"], "v1", "{}", status["acting"]);
    child.stop();
}

/// The name `id -un` gives for this process's user.
fn os_user() -> String {
    let out = std::process::Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Issue 19, item 11, through the binary: the approval message names the version it would roll
/// back to; a rejection and an approval are announced on the channels, with who; the webhook's
/// `vars.outcome` of a consider says `consider`; `notified` lines of messages about no rollback
/// carry no rollback id (never "unknown"); `approve` and `mark` without `--by` and without
/// `$USER`/`$LOGNAME` (a container's root) record the OS user, not "unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_name_their_target_and_answers_are_announced_with_who() {
    // A webhook channel beside the console one, recording each body.
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let service = VersionedService::start("v1", 0).await;
    // (The [policy] lines are followed by this table, then the console channel.)
    let channel = format!("\n[channels.hook]\nkind = \"webhook\"\nurl = \"http://{hook}/hook\"\n");
    let mut s = Sidecar::start(&service, &channel).await;
    s.baked("v1").await;
    service.deploy("v2", 30);
    s.wait("an approval for v2", |e| !of_kind(e, "approval_opened").is_empty()).await;
    common::wait_for("the approval message", common::DEADLINE, async || {
        let out = s.stdout();
        if out.contains("ROLLBACK APPROVAL NEEDED") { Ok(()) } else { Err(out) }
    })
    .await;
    assert!(s.stdout().contains("Rollback to: v1"), "the target is named: {}", s.stdout());
    // The webhook's worker delivers in its own time, beside the console's.
    let asked = common::wait_for("the approval on the webhook", common::DEADLINE, async || {
        let found = bodies.lock().unwrap().iter().find(|b| b["template"] == "rollback_approval_needed").cloned();
        found.ok_or("not yet")
    })
    .await;
    assert_eq!(asked["vars"]["outcome"], "consider", "{asked:#}");
    assert_eq!(asked["vars"]["target_version"], "v1", "{asked:#}");

    let (code, out, err) = s.cli(&["reject", "ap-1", "--reason", "known flaky dependency", "--by", "bob"]);
    assert_eq!(code, 0, "{out}{err}");
    // v3 runs healthy, then regresses: asked anew, approved by whoever runs the command.
    service.deploy("v3", 0);
    s.baked("v3").await;
    service.set_errors("v3", 30);
    s.wait("an approval for v3", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v3")).await;
    let without_user = |args: &[&str]| {
        let mut all: Vec<&str> = vec![args[0], "-c", s.config.to_str().unwrap()];
        all.extend(&args[1..]);
        std::process::Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(&all)
            .env_remove("USER")
            .env_remove("LOGNAME")
            .output()
            .unwrap()
    };
    let approved = without_user(&["approve", "ap-2"]);
    assert!(approved.status.success(), "{approved:?}");
    let me = os_user();
    assert!(!me.is_empty());
    s.wait("the rollback to finish", finished).await;
    let marked = without_user(&["mark", "v3", "bad", "--reason", "regressed"]);
    assert!(marked.status.success(), "{marked:?}");
    let events = s.wait("the mark", |e| !of_kind(e, "version_marked").is_empty()).await;
    let closed = of_kind(&events, "approval_closed");
    let granted = closed.iter().find(|c| c["approval_id"] == "ap-2").unwrap();
    assert_eq!(granted["by"], me.as_str(), "{granted}");
    assert_eq!(of_kind(&events, "version_marked")[0]["by"], me.as_str());
    // Messages about no rollback carry none; the rollback's carry its id.
    let notified = of_kind(&events, "notified");
    assert!(!notified.is_empty());
    for n in &notified {
        let id = &n["rollback_id"];
        assert!(id.is_null() || id.as_str().is_some_and(|i| i.starts_with("rb-")), "{n}");
    }
    assert!(notified.iter().any(|n| n["template"] == "rollback_approval_needed" && n["rollback_id"].is_null()));
    assert!(notified.iter().any(|n| n["template"] == "rollback_in_progress" && n["rollback_id"] == "rb-1"));
    // The webhook is delivered by the channel's worker, in its own time.
    let delivered = |t: &str| bodies.lock().unwrap().iter().any(|b| b["template"] == t);
    common::until("the answers and the rollback on the webhook", || {
        ["approval_rejected", "approval_granted", "rollback_in_progress"].iter().all(|t| delivered(t))
    })
    .await;

    let out = s.stop();
    assert!(out.contains("ROLLBACK REJECTED by bob (ap-1): known flaky dependency"), "{out}");
    assert!(out.contains(&format!("ROLLBACK APPROVED by {me} (ap-2)")), "{out}");
    assert!(out.contains("Profile: profile from v3 to v1"), "the approval names the target: {out}");
}

/// A rollback held back (here by a pause) shows the hold in the report's timeline, and its
/// detection time ends at the decision, not at the start the hold delayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_rollback_shows_its_hold_in_the_report_and_history() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    let (code, out, err) = s.cli(&["pause"]);
    assert_eq!(code, 0, "{out}{err}");
    service.deploy("v2", 80);
    s.wait("the rollback held back by the pause", |e| {
        of_kind(e, "suppressed").iter().any(|x| x["reason"].as_str().is_some_and(|r| r.starts_with("paused")))
    })
    .await;
    // Paused without an end: said so, not as a date in the year 292 million.
    let status = common::status(&s.listen).await.unwrap();
    assert_eq!(status["acting"]["paused"], "until resumed", "{}", status["acting"]);
    let client = reqwest::Client::new();
    let page = client.get(format!("http://{}/status", s.listen)).header("accept", "text/html").send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains("<b>PAUSED</b> until resumed"), "{page}");
    let (code, out, err) = s.cli(&["resume"]);
    assert_eq!(code, 0, "{out}{err}");
    let events = s.wait("the rollback to finish", finished).await;
    let started = &of_kind(&events, "rollback_started")[0];
    let decided = started["decided_at"].as_i64().expect("the decision's time is recorded");
    assert!(decided < started["at"].as_i64().unwrap(), "decided before the hold ended: {started}");
    let (code, md, err) = s.cli(&["report", "rb-1"]);
    assert_eq!(code, 0, "{md}{err}");
    let timeline = md.split("## Timeline\n\n").nth(1).unwrap();
    let held = timeline.find("held back: paused").unwrap_or_else(|| panic!("no hold in:\n{md}"));
    let initiated = timeline.find("rollback rb-1 initiated").unwrap();
    assert!(held < initiated, "{md}");
    let (code, history, _) = s.cli(&["history"]);
    assert_eq!(code, 0);
    assert!(
        history.contains("after the decision (held back, waiting for the version source, or awaiting approval)"),
        "{history}"
    );
    s.stop();
}
