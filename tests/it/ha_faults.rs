//! High availability under the faults of the second adversarial run, against a real etcd and
//! several `rollwatch run` processes: a leader stalled between a step's fenced commit and its
//! start never starts it late; etcd that loses its data is not trusted until the shared state is
//! rebuilt from the replicas' journals (a pause and a rollback remembered); a compaction keeps
//! the cooldown whatever was deployed since; a replica whose clock is an hour ahead does not
//! lead; a 2 MiB version from the version source costs no lease.

use std::time::Duration;

use crate::common::until;
use crate::common::{DEADLINE, VersionedService, of_kind, status_when, wait_for, wait_for_journal};
use crate::ha::{Etcd, POLICY, Replica, one_leader, post};
use rollwatch::time::Stopwatch;

/// The leader commits a step's start, then freezes (SIGSTOP, right after the commit: the
/// failpoint holds it there long enough to be stopped) for 9 s; the other replica leads and
/// reports the rollback interrupted. Woken, the old leader does not run the step: "not
/// started", journalled. Nobody undoes anything twice — here, nobody at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stalled_between_a_steps_commit_and_its_start_never_starts_it_late() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let stall = [("FAILPOINTS", "after-step-commit=sleep(3000)")];
    let a = Replica::start_env(root.path(), "a", &service, &etcd.url(), "2s", POLICY, None, &stall);
    until("a to lead", || a.leads()).await;
    let b = Replica::start(root.path(), "b", &service, &etcd.url(), "2s", POLICY);
    until("b to follow a", || b.status()["ha"]["leader"]["replica"] == "a").await;
    wait_for_journal(&a.journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;

    service.deploy("v2", 500);
    wait_for_journal(&a.journal(), "the undo's start, committed", |e| !of_kind(e, "step_started").is_empty()).await;
    a.signal("-STOP");
    let frozen = Stopwatch::start();
    until("b to lead", || b.leads()).await;
    wait_for_journal(&b.journal(), "rb-1 reported interrupted", |e| {
        of_kind(e, "rollback_finished").iter().any(|f| f["rollback_id"] == "rb-1" && f["result"] == "interrupted")
    })
    .await;
    // The stall this test is about (part of the scenario, not a wait for a result): 9 s in all.
    tokio::time::sleep(Duration::from_secs_f64((9.0 - frozen.elapsed_secs()).max(0.0))).await;
    a.signal("-CONT");
    let events =
        wait_for_journal(&a.journal(), "the step not started", |e| !of_kind(e, "step_not_started").is_empty()).await;
    let why = of_kind(&events, "step_not_started")[0]["why"].as_str().unwrap_or_default().to_string();
    assert!(why.starts_with("not started: ") && why.contains("term"), "{why}");
    // The not-started line is written where the step would have begun: had it run, the undo
    // would be in by now. b holds an interrupted rollback's deploy back (never retried).
    assert!(of_kind(&events, "step_finished").is_empty(), "{events:#?}");
    assert_eq!(service.rollbacks(), Vec::<String>::new(), "no undo from the stalled leader, none from b");
}

/// etcd loses everything (wiped and restarted empty) after a rollback and a pause. Every
/// replica notices (its journal holds what the log lost), says so on its channels, and nobody
/// acts until the shared log is rebuilt from their journals; then the new leader knows the
/// pause, rb-1 and its cooldown: a new bad version is held back, not rolled back again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_losing_its_data_stops_acting_until_the_journals_rebuild_the_shared_state() {
    let root = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", POLICY)).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let l = one_leader(&all, 30.0).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    service.deploy("v2", 500);
    for r in &replicas {
        wait_for_journal(&r.journal(), "rb-1 completed", |e| {
            of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")
        })
        .await;
    }
    let (code, _, body) = post(&replicas[l].listen, "/pause");
    assert_eq!(code, 200, "{body}");
    until("the pause on every replica", || replicas.iter().all(|r| !r.status()["acting"]["paused_until"].is_null()))
        .await;

    etcd.wipe();
    let lost = Stopwatch::start();
    for r in &replicas {
        until("the loss told on the replica's channel", || r.stdout().contains("etcd lost its data")).await;
    }
    // Rebuilt: one leads again, with the pause and rb-1 from the journals.
    let l2 = one_leader(&all, 30.0).await;
    eprintln!("etcd wiped → a replica acts again after {:.1} s (ttl 2 s)", lost.elapsed_secs());
    let leader = &replicas[l2];
    let status = leader.status();
    let logs = || {
        let stderr = std::fs::read_to_string(leader.dir.join("stderr")).unwrap_or_default();
        stderr
            .lines()
            .filter(|l| l.contains("coord") || l.contains("rebuil") || l.contains("lead") || l.contains("merge"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(!status["acting"]["paused_until"].is_null(), "the pause survived: {status}\n{}", logs());
    until("the rebuild's end told", || leader.stdout().contains("rebuilt from the replicas' journals")).await;

    // Paused: a bad version is held back. Resumed: the cooldown of rb-1 holds it back.
    service.deploy("v2", 500); // v2 again: the cooldown guards the versions of rb-1
    wait_for_journal(&leader.journal(), "v2 (again) held back by the pause", |e| {
        of_kind(e, "suppressed").iter().any(|s| s["reason"].as_str().is_some_and(|r| r.contains("paused")))
    })
    .await;
    let (code, _, body) = post(&leader.listen, "/resume");
    assert_eq!(code, 200, "{body}");
    let events = wait_for_journal(&leader.journal(), "v2 (again) held back by rb-1's cooldown", |e| {
        of_kind(e, "suppressed").iter().any(|s| s["reason"].as_str().is_some_and(|r| r.contains("cooldown after rb-1")))
    })
    .await;
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "rolled back once: {events:#?}");
    let started: Vec<_> = of_kind(&events, "rollback_started").iter().map(|s| s["rollback_id"].clone()).collect();
    assert_eq!(started, vec![serde_json::json!("rb-1")], "no id used twice");
}

/// A rollback, then 300 deploys reported through the hook (past a compaction of the shared
/// log), then the leader dies: the new leader still holds the cooldown of rb-1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_shared_log_keeps_the_cooldown_whatever_was_deployed_since() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let mut replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", POLICY)).collect();
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 30.0).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    service.deploy("v2", 500);
    wait_for_journal(&replicas[l].journal(), "rb-1 completed", |e| {
        of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")
    })
    .await;
    let hook = format!("http://{}/hooks/deploy", replicas[l].listen);
    for n in 0..300 {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-m", "10", "-X", "POST", "-H", "content-type: application/json"])
            .args(["-d", &format!(r#"{{"version": "h{n}"}}"#), &hook])
            .output()
            .unwrap();
        assert!(out.status.success(), "deploy h{n}: {out:?}");
    }
    let other = 1 - l;
    wait_for_journal(&replicas[other].journal(), "the 300 deploys, mirrored", |e| {
        of_kind(e, "deploy").iter().any(|d| d["to"] == "h299")
    })
    .await;
    until("a compaction", || {
        std::fs::read_to_string(replicas[l].dir.join("stderr")).is_ok_and(|t| t.contains("shared log compacted"))
    })
    .await;
    replicas[l].kill();
    let b = &replicas[other];
    until("the other replica to lead", || b.leads()).await;
    service.deploy("v2", 500); // v2 again: the cooldown guards the versions of rb-1
    let events = wait_for_journal(&b.journal(), "v2 (again) held back by rb-1's cooldown", |e| {
        of_kind(e, "suppressed").iter().any(|s| s["reason"].as_str().is_some_and(|r| r.contains("cooldown after rb-1")))
    })
    .await;
    assert_eq!(
        service.rollbacks(),
        vec!["v1".to_string()],
        "no second undo: {:#?}",
        of_kind(&events, "rollback_started")
    );
}

/// libfaketime puts one replica's clock an hour ahead (its monotonic clock left alone). It does
/// not lead, and says why; the other leads. With the other gone, nobody leads — rather than a
/// replica whose records would be dated an hour off — and a rollback wanted is told on the
/// channels by the replica left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_is_an_hour_ahead_does_not_lead() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(std::path::Path::new(lib).exists(), "libfaketime is not installed: scripts/test.sh installs it");
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let mut fine = Replica::start(root.path(), "fine", &service, &etcd.url(), "2s", POLICY);
    until("the replica with the right clock to lead", || fine.leads()).await;
    let ahead = [("LD_PRELOAD", lib), ("FAKETIME", "+1h"), ("DONT_FAKE_MONOTONIC", "1"), ("FAKETIME_NO_CACHE", "1")];
    let skewed = Replica::start_env(root.path(), "skewed", &service, &etcd.url(), "2s", POLICY, None, &ahead);
    until("the skew said", || {
        skewed.status()["ha"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("ahead of etcd's") && e.contains("does not lead"))
    })
    .await;
    assert_eq!(skewed.metric("rollwatch_leader"), Some(0.0));
    assert_eq!(skewed.status()["ha"]["leader"]["replica"], "fine");
    fine.kill();
    // Nobody else may lead: the skewed replica keeps saying why, for longer than a failover —
    // looked at until it has decided 40 more ticks (8 s).
    let ticks = |s: &serde_json::Value| s["ticks_total"].as_u64().unwrap_or(0);
    let from = ticks(&status_when(&skewed.listen, "the skewed replica's status", |s| s["ticks_total"].is_u64()).await);
    wait_for("40 more ticks of the skewed replica", DEADLINE, async || {
        assert_eq!(skewed.metric("rollwatch_leader"), Some(0.0), "{}", skewed.status()["ha"]);
        let now = ticks(&skewed.status());
        if now >= from + 40 { Ok(()) } else { Err(now) }
    })
    .await;
    let error = skewed.status()["ha"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("ahead of etcd's"), "still says why: {error}");
    // Left alone, it still tells people: a rollback wanted is said, with why nobody acts.
    service.deploy("v2", 500);
    until("the wanted rollback told by the skewed replica", || {
        let out = skewed.stdout();
        out.contains("rollback wanted for") && out.contains("no replica may act: no replica has led for")
    })
    .await;
    assert!(skewed.stdout().contains("ahead of etcd's"), "{}", skewed.stdout());
    assert!(service.rollbacks().is_empty(), "nobody acts");
}

/// The version source returns a 2 MiB version: it is not a version (said once); nothing of it
/// reaches etcd, and the leader keeps its term — no loop of lost leadership, a small /status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_mib_version_from_the_version_source_costs_no_lease() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let a = Replica::start(root.path(), "a", &service, &etcd.url(), "2s", POLICY);
    until("a to lead", || a.leads()).await;
    wait_for_journal(&a.journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    let term = a.status()["ha"]["term"].clone();
    let huge = "v".repeat(2 << 20);
    service.deploy(&huge, 0);
    let stderr = || std::fs::read_to_string(a.dir.join("stderr")).unwrap_or_default();
    until("the reading refused", || stderr().contains("is not a version")).await;
    assert!(stderr().contains("not over 1024 bytes"), "its size said as it is: {}", stderr());
    // 25 more version polls (200 ms; 5 s, ten lease rounds of 500 ms) later: the same term, quiet.
    let polls = |s: &serde_json::Value| {
        let api = s["targets"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "api").cloned());
        api.and_then(|t| t["polls_total"].as_u64())
    };
    let from = polls(&status_when(&a.listen, "a's status", |s| polls(s).is_some()).await).unwrap();
    status_when(&a.listen, "25 more version polls", |s| polls(s).is_some_and(|n| n >= from + 25)).await;
    let status = crate::ha::get(&format!("http://{}/status", a.listen)).unwrap();
    assert!(status.len() < 64 * 1024, "/status is {} bytes", status.len());
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["ha"]["term"], term, "the same term: {}", status["ha"]);
    assert!(a.leads());
    let log = stderr();
    assert_eq!(log.matches("is not a version").count(), 1, "said once");
    assert!(!log.contains("leadership lost"), "{log}");
    let journal = std::fs::read_to_string(a.journal()).unwrap();
    assert!(!journal.contains(&huge[..1000]), "never recorded");
    // And through the hook: refused with a 400 that says why.
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "content-type: application/json"])
        .args(["--data-binary", &format!(r#"{{"version": "{}"}}"#, "x".repeat(300))])
        .arg(format!("http://{}/hooks/deploy", a.listen))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
}
