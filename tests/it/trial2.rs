//! The second SRE trial's findings (issue 19), as a user meets them: the real binary with a
//! config file, watching a loopback service that deploys versions. A silence removes only its
//! rule's path; the cooldown holds the same versions, not a new deploy; a tree that can roll
//! back needs a procedure; a deploy during verification supersedes it; no rollback target is
//! said once; and, among replicas on etcd, a leader killed while verifying leaves the
//! verification to the next, and the bake survives a change of leader.

use crate::common::{VersionedService, of_kind, rollwatch, status_when, ticks_later, until, wait_for_journal};
use crate::ha::{Etcd, Replica, one_leader};
use crate::versions::{Sidecar, finished};
use serde_json::Value;

/// `silence error-rate-critical`, then 8% errors: the tree goes on to the next question that
/// holds (error rate > 1% → consider → an approval), the suppressed message is not the news,
/// and the status page lists the silence with its expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_removes_its_rules_path_not_the_incident() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "").await;
    s.baked("v1").await;
    let (code, out, err) = s.cli(&["silence", "error-rate-critical", "--for", "10m"]);
    assert_eq!(code, 0, "{out}{err}");
    service.deploy("v2", 80);
    let events =
        s.wait("an approval for v2", |e| of_kind(e, "approval_opened").iter().any(|a| a["version"] == "v2")).await;
    assert!(of_kind(&events, "rollback_started").is_empty(), "silenced: no rollback by the silenced rule");
    let out = std::process::Command::new("curl")
        .args(["-sf", "-m", "5", "-H", "accept: text/html", &format!("http://{}/status", s.listen)])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(page.contains("SILENCED") && page.contains("<b>error-rate-critical</b> until 20"), "{page}");
    let decisions: Vec<&Value> = of_kind(&events, "decision");
    assert!(
        decisions.iter().any(|d| d["outcome"] == "consider" && d["silenced"][0] == "error-rate-critical"),
        "the decision says what was silenced: {decisions:#?}"
    );
    assert!(service.rollbacks().is_empty());
    s.stop();
}

/// Soon after a rollback a different version at 8% is not held by the cooldown (a new deploy is
/// judged on its own); the loop guard still counts it: a third bad version is held by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cooldown_holds_the_same_version_not_a_new_one() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "cooldown = \"1h\"").await;
    s.baked("v1").await;
    service.deploy("v2", 500);
    s.wait("rb-1 complete", |e| of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")).await;
    service.deploy("v3", 80);
    let events = s
        .wait("rb-2 started for v3", |e| of_kind(e, "rollback_started").iter().any(|r| r["version_from"] == "v3"))
        .await;
    assert!(
        of_kind(&events, "suppressed").iter().all(|x| !x["reason"].as_str().unwrap_or("").contains("cooldown")),
        "{events:#?}"
    );
    s.wait("rb-2 complete", |e| of_kind(e, "rollback_finished").len() == 2).await;
    service.deploy("v4", 500);
    s.wait("v4 held by the loop guard", |e| {
        of_kind(e, "suppressed").iter().any(|x| x["reason"].as_str().is_some_and(|r| r.contains("loop guard")))
    })
    .await;
    assert_eq!(service.rollbacks(), vec!["v1", "v1"]);
    // The report's timeline shows the hold of rb-2's profile before it (none) and the deploys.
    let (code, report, err) = s.cli(&["report", "rb-2"]);
    assert_eq!(code, 0, "{err}");
    assert!(report.contains("deployment of v3"), "{report}");
    s.stop();
}

/// A tree that decides `rollback` for a profile with no `[[procedure.rollback]]`: no silent
/// "rollback" with no step — said once (suppressed, S1: roll back by hand), nothing started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_decided_without_a_procedure_is_said_never_silently_done() {
    let service = VersionedService::start("v1", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    let config = crate::common::versioned_config(dir.path(), &service, &listen, "");
    let profile = dir.path().join("profile.toml");
    let text = std::fs::read_to_string(&profile).unwrap();
    let text = &text[..text.find("[[procedure.rollback]]").unwrap()];
    std::fs::write(&profile, text).unwrap();
    let (code, out, err) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "a watching-only profile is valid: {out}{err}");
    let mut s = Sidecar { child: crate::common::spawn_run(dir.path(), &config), dir, config, listen };
    s.baked("v1").await;
    service.deploy("v2", 500);
    s.wait("the rollback wanted, said", |e| {
        of_kind(e, "suppressed")
            .iter()
            .any(|x| x["reason"].as_str().is_some_and(|r| r.contains("no [[procedure.rollback]]")))
    })
    .await;
    // Ten more ticks (2 s) decided on the same outage: nothing started.
    ticks_later(&s.listen, 10).await;
    let events = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    assert!(of_kind(&events, "rollback_started").is_empty(), "nothing started: {events:#?}");
    let out = s.stop();
    assert!(out.contains("S1: no [[procedure.rollback]]") && out.contains("roll back by hand"), "{out}");
    assert!(!out.contains("ROLLBACK IN PROGRESS"), "{out}");
}

/// v1 restored, then v1.7.0 deployed during verification: the verification ends "superseded by
/// deploy of v1.7.0" — not "ROLLBACK COMPLETE … v1 restored" on v1.7.0's quiet — told on the
/// channel, in the journal and in the report's timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_during_verification_supersedes_it() {
    let service = VersionedService::start("v1.0.0", 0).await;
    let mut s = Sidecar::start(&service, "verify_stable = \"5s\"").await;
    s.baked("v1.0.0").await;
    service.deploy("v1.5.0", 500);
    s.wait("v1.0.0 restored", |e| {
        of_kind(e, "rollback_started").len() == 1
            && of_kind(e, "deploy").iter().filter(|d| d["to"] == "v1.0.0").count() == 2
    })
    .await;
    // Verifying (the steps done): then v1.7.0 arrives.
    let status = || -> Value {
        let out = std::process::Command::new("curl")
            .args(["-sf", "-m", "2", &format!("http://{}/status", s.listen)])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    until("verifying", || status()["acting"]["in_flight"]["phase"] == "verifying").await;
    service.deploy("v1.7.0", 0);
    let events = s.wait("the rollback finished", finished).await;
    let done = of_kind(&events, "rollback_finished")[0];
    assert_eq!(done["result"], "superseded", "{done}");
    assert!(done["error"].as_str().unwrap_or("").contains("superseded by deploy of v1.7.0"), "{done}");
    let (code, report, err) = s.cli(&["report", "rb-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(report.contains("deployment of v1.7.0") && report.contains("superseded"), "{report}");
    let out = s.stop();
    assert!(out.contains("superseded by deploy of v1.7.0"), "{out}");
    assert!(!out.contains("ROLLBACK COMPLETE"), "{out}");
}

/// The only version ever seen fails: no good version to go to. Said once (suppressed, S1), never
/// "ROLLBACK IN PROGRESS (target: unknown)", however long it lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rollback_target_is_said_once() {
    let service = VersionedService::start("v1", 0).await;
    let mut s = Sidecar::start(&service, "cooldown = \"1s\"\nbake = \"1h\"").await;
    s.wait("v1 seen", |e| of_kind(e, "deploy").iter().any(|d| d["to"] == "v1")).await;
    service.set_errors("v1", 500);
    let events = s
        .wait("no target said", |e| {
            of_kind(e, "suppressed").iter().any(|x| {
                x["reason"].as_str().is_some_and(|r| r.contains("no rollback target: no good version other than v1"))
            })
        })
        .await;
    let no_target = |x: &&Value| x["reason"].as_str().is_some_and(|r| r.contains("no rollback target"));
    let said = of_kind(&events, "suppressed").into_iter().find(no_target).unwrap()["at"].as_i64().unwrap();
    // Several cooldowns (1 s) later on rollwatch's own timeline: still once.
    status_when(&s.listen, "4 s evaluated past the first saying", |st| {
        st["at"].as_i64().is_some_and(|at| at >= said + 4000)
    })
    .await;
    let events = rollwatch::journal::Journal::read_back(&s.journal()).unwrap();
    let escalations: Vec<&Value> = of_kind(&events, "escalation")
        .into_iter()
        .filter(|e| e["finding"].as_str().unwrap_or("").contains("no rollback target"))
        .collect();
    assert_eq!(escalations.len(), 1, "{events:#?}");
    assert!(of_kind(&events, "rollback_started").is_empty());
    let out = s.stop();
    assert!(!out.contains("ROLLBACK IN PROGRESS"), "{out}");
    assert_eq!(out.matches("no rollback target").count(), 2, "one suppressed message, one S1: {out}");
}

/// Among replicas: the leader is killed once every step is done, while it verifies. The new
/// leader finishes the verification ("completed"), no S1 "interrupted".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_verifying_leaves_the_verification_to_the_next() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let policy = "cooldown = \"1h\"\nverify_stable = \"6s\"\nverify_for = \"30s\"";
    let mut replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", policy)).collect();
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 30.0).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    service.deploy("v2", 500);
    wait_for_journal(&replicas[l].journal(), "the undo done", |e| {
        of_kind(e, "step_finished").iter().any(|x| x["ok"] == true)
    })
    .await;
    replicas[l].kill();
    let other = &replicas[1 - l];
    let events = wait_for_journal(&other.journal(), "the rollback finished by the new leader", |e| {
        !of_kind(e, "rollback_finished").is_empty()
    })
    .await;
    let done = of_kind(&events, "rollback_finished")[0];
    assert_eq!(done["result"], "completed", "{done}");
    assert!(!other.stdout().contains("interrupted"), "{}", other.stdout());
    assert_eq!(service.rollbacks(), vec!["v1".to_string()]);
}

/// Among replicas: a leader killed during a version's bake does not restart it — the new leader
/// records it baked about `bake` after it started running clean, not `bake` after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bake_goes_on_across_a_change_of_leader() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let policy = "bake = \"8s\"";
    let mut replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", policy)).collect();
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 30.0).await;
    let other = 1 - l;
    until("the follower to follow", || replicas[other].status()["ha"]["role"] == "follower").await;
    let events = wait_for_journal(&replicas[l].journal(), "v1 seen", |e| !of_kind(e, "deploy").is_empty()).await;
    let deployed = of_kind(&events, "deploy")[0]["at"].as_i64().unwrap();
    // Killed 5 s into the 8 s bake (on the leader's timeline), before it ends.
    status_when(&replicas[l].listen, "5 s of the bake", |st| st["at"].as_i64().is_some_and(|at| at >= deployed + 5000))
        .await;
    replicas[l].kill();
    let events = rollwatch::journal::Journal::read_back(&replicas[l].journal()).unwrap();
    assert!(of_kind(&events, "version_baked").is_empty(), "killed during the bake, not after: {events:#?}");
    let events = wait_for_journal(&replicas[other].journal(), "v1 baked by the new leader", |e| {
        !of_kind(e, "version_baked").is_empty()
    })
    .await;
    let baked = of_kind(&events, "version_baked")[0];
    let at = baked["at"].as_i64().unwrap();
    let since = baked["since"].as_i64().unwrap();
    assert!(since - deployed < 3_000, "clean since near the deploy ({since} vs {deployed}): the bake went on");
    assert!(at - deployed < 8_000 + 5_000, "baked {} ms after the deploy", at - deployed);
}
