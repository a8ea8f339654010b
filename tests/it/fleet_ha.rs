//! A fleet shared among replicas on a real etcd (Debian's `etcd-server`): `rollwatch run`
//! processes, each with the same fleet of six deployments (its own copy of the files, its own
//! state_dir and listen address), read through their `/metrics` and `/status`. A replica alone
//! holds every deployment; two more join and each gets a fair share, every deployment held by
//! exactly one; a parked deployment is not evaluated; outages in two deployments roll each back
//! once and nothing else; a replica SIGKILLed has its deployments taken over within the ttl and
//! 2 s and acted on once; an alert sent to any replica reaches the deployment its label names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;

use crate::common::{self, DEADLINE, wait_for};
use crate::fleet::{Service, deployment, get, post_alert, profile, rule_state, status_of};
use crate::ha::Etcd;
use rollwatch::time::Stopwatch;

/// The deployments of the fleet.
const NAMES: [&str; 6] = ["d0", "d1", "d2", "d3", "d4", "d5"];

/// The lease's ttl, in seconds.
const TTL: f64 = 2.0;

/// What every test here starts with: a real etcd and one loopback service per deployment.
struct Fleet {
    root: tempfile::TempDir,
    etcd: Etcd,
    services: Vec<Service>,
}

impl Fleet {
    async fn start() -> Fleet {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = tempfile::tempdir().unwrap();
        let etcd = Etcd::start(root.path());
        let mut services = Vec::new();
        for _ in NAMES {
            services.push(Service::start(true).await);
        }
        Fleet { root, etcd, services }
    }
}

/// The service deployment `d` watches.
fn service_of<'a>(services: &'a [Service], d: &str) -> &'a Service {
    &services[NAMES.iter().position(|n| *n == d).unwrap()]
}

/// One replica of the fleet: its dir, listen address and process.
struct Replica {
    name: String,
    listen: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Writes the fleet (`services` by deployment, in [`NAMES`]' order) under `root/name` with
    /// `[ha]` on `etcd`, and starts it.
    fn start(root: &Path, name: &str, services: &[Service], etcd: &str) -> Replica {
        Replica::start_env(root, name, services, etcd, &[])
    }

    /// The same, its process with `env` added.
    fn start_env(root: &Path, name: &str, services: &[Service], etcd: &str, env: &[(&str, &str)]) -> Replica {
        Replica::start_with(root, name, services, etcd, env, "0")
    }

    /// The same, each rollback's first step taking `slow` seconds.
    fn start_with(
        root: &Path,
        name: &str,
        services: &[Service],
        etcd: &str,
        env: &[(&str, &str)],
        slow: &str,
    ) -> Replica {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("deploy")).unwrap();
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        common::write(&dir.join("rules"), "down.toml", profile());
        for (d, service) in NAMES.iter().zip(services) {
            common::write(&dir.join("deploy"), &format!("{d}.toml"), deployment(d, service, slow));
        }
        let listen = common::free_listen();
        let config = common::write(
            &dir,
            "rollwatch.toml",
            format!(
                "deployments = [\"deploy/*.toml\"]\nstate_dir = {state:?}\nlisten = \"{listen}\"\neval_interval = \"200ms\"\n\n\
                 [channels.console]\nkind = \"console\"\n\n\
                 [ha]\netcd = [\"{etcd}\"]\nkey = \"/rollwatch/fleet\"\nttl = \"{TTL}s\"\nreplica = \"{name}\"\n",
                state = dir.join("state").display().to_string()
            ),
        );
        let child = common::spawn_run_env(&dir, &config, env);
        Replica { name: name.to_string(), listen, dir, child: Some(child) }
    }

    /// The deployments it acts on, as its `/metrics` says (`rollwatch_leader{deployment=…} 1`).
    async fn holds(&self) -> Result<Vec<String>, String> {
        let metrics = get(&self.listen, "/metrics").await?;
        Ok(metrics
            .lines()
            .filter_map(|l| l.strip_prefix("rollwatch_leader{deployment=\""))
            .filter_map(|l| l.strip_suffix("\"} 1"))
            .map(str::to_string)
            .collect())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            common::sigterm(c);
        }
        self.kill();
    }
}

/// Who holds each deployment, by every replica's word: each deployment's holders.
async fn holders(replicas: &[&Replica]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut held: BTreeMap<String, Vec<String>> = NAMES.iter().map(|n| (n.to_string(), vec![])).collect();
    for r in replicas {
        for d in r.holds().await? {
            held.entry(d).or_default().push(r.name.clone());
        }
    }
    Ok(held)
}

/// Waits until every deployment is held by exactly one of `replicas`, none holding more than
/// `most`; returns who holds what.
async fn held_once(replicas: &[&Replica], most: usize, what: &str) -> BTreeMap<String, String> {
    wait_for(what, DEADLINE, async || {
        let held = holders(replicas).await?;
        let once = held.values().all(|h| h.len() == 1);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for h in held.values().flatten() {
            *counts.entry(h).or_default() += 1;
        }
        if once && counts.values().all(|c| *c <= most) {
            Ok(held.into_iter().map(|(d, h)| (d, h[0].clone())).collect())
        } else {
            Err(format!("{held:?}"))
        }
    })
    .await
}

/// When `replica`'s journal of deployment `d` last recorded `event` (ms since the epoch),
/// waiting until it has.
async fn last_at(replica: &Replica, d: &str, event: &str) -> i64 {
    let journal = replica.dir.join("state").join(d).join("journal.jsonl");
    let what = format!("{}'s journal of {d} to record {event}", replica.name);
    let events = common::wait_for_journal(&journal, &what, |e| e.iter().any(|e| e["event"] == event)).await;
    common::of_kind(&events, event).last().and_then(|e| e["at"].as_i64()).unwrap()
}

fn ticks(s: &serde_json::Value) -> u64 {
    s["ticks_total"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_is_shared_among_replicas_each_deployment_acted_on_once_and_a_dead_replicas_taken_over() {
    let Fleet { root, etcd, services } = Fleet::start().await;
    let service = |d: &str| service_of(&services, d);

    // Alone, one replica holds the whole fleet; two that join get a fair share each:
    // none holds more than ⌈6/3⌉ + 1.
    let a = Replica::start(root.path(), "a", &services, &etcd.url());
    held_once(&[&a], 6, "replica a alone to hold every deployment").await;
    let b = Replica::start(root.path(), "b", &services, &etcd.url());
    let mut c = Replica::start(root.path(), "c", &services, &etcd.url());
    let held = wait_for("each replica to hold a share", DEADLINE, async || {
        let held = held_once(&[&a, &b, &c], 3, "every deployment held once").await;
        let by: Vec<usize> =
            ["a", "b", "c"].iter().map(|r| held.values().filter(|h| h.as_str() == *r).count()).collect();
        if by.iter().all(|n| *n >= 1) { Ok(held) } else { Err(format!("{held:?}")) }
    })
    .await;

    // A move is planned, not a fault: a hands each moved deployment over without an error, and
    // its new holder leads it within the ttl (the joiner does not leave it unwatched meanwhile).
    for (d, h) in held.iter().filter(|(_, h)| h.as_str() != "a") {
        let new_holder = [&b, &c].into_iter().find(|r| &r.name == h).unwrap();
        let given = last_at(&a, d, "handed_over").await;
        let led = last_at(new_holder, d, "leading").await;
        let gap = (led - given) as f64 / 1000.0;
        eprintln!("{d}: handed over by a, led by {h} {gap:.2} s later");
        assert!(gap < TTL, "{d} unled for {gap:.2} s between a's hand-over and {h}'s lead");
    }
    let log = std::fs::read_to_string(a.dir.join("stderr")).unwrap();
    assert!(!log.contains("not leading any more"), "a planned move is not logged as a loss: {log}");
    assert!(!log.contains("leadership lost"), "a planned move is not logged as a loss: {log}");

    // A deployment parked here is not evaluated here; its holder evaluates it.
    let (parked_at, d) = (if held["d0"] == "a" { &b } else { &a }, "d0");
    let holder = [&a, &b, &c].into_iter().find(|r| r.name == held[d]).unwrap();
    let parked = ticks(&status_of(&parked_at.listen, d, |_| true).await);
    let from = ticks(&status_of(&holder.listen, d, |_| true).await);
    status_of(&holder.listen, d, |s| ticks(s) >= from + 5).await;
    let still = status_of(&parked_at.listen, d, |_| true).await;
    assert_eq!(ticks(&still), parked, "a parked deployment is not evaluated: {still}");
    assert_eq!(still["ha"]["leader"]["replica"], held[d], "its page names the holder: {still}");
    let list: serde_json::Value = serde_json::from_str(&get(&parked_at.listen, "/status").await.unwrap()).unwrap();
    let row = list["deployments"].as_array().unwrap().iter().find(|r| r["name"] == d).unwrap().clone();
    assert_eq!(row["held_by"], held[d], "{list}");
    assert_eq!((row["held_here"].as_bool(), row["version"].is_null()), (Some(false), true), "nothing stale: {list}");
    // `versions` and `history` read this replica's journal: on a replica that parks the
    // deployment they say so, and name its holder.
    let config = parked_at.dir.join("rollwatch.toml");
    for command in ["versions", "history"] {
        let (code, out, _) = common::rollwatch(&[command, "-c", config.to_str().unwrap(), "--deployment", d]);
        assert_eq!(code, 0, "{out}");
        let said = format!("this replica ({}) does not hold deployment \"{d}\": replica {} (", parked_at.name, held[d]);
        assert!(out.contains(&said), "{command} on {}: {out}", parked_at.name);
    }
    let config = holder.dir.join("rollwatch.toml");
    let (_, out, _) = common::rollwatch(&["history", "-c", config.to_str().unwrap(), "--deployment", d]);
    assert!(!out.contains("does not hold"), "its holder's history is current: {out}");

    // SIGHUP reloads every deployment held here (one parked here is loaded when it is held here
    // again): what a replica holds it still polls and evaluates.
    let pid = a.child.as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let mine = held.iter().find(|(_, h)| h.as_str() == "a").map(|(d, _)| d.clone()).unwrap();
    let journal = a.dir.join("state").join(&mine).join("journal.jsonl");
    common::wait_for_journal(&journal, "a's reload", |e| e.iter().any(|e| e["event"] == "reloaded")).await;
    for (d, h) in held.iter().filter(|(_, h)| h.as_str() == "a") {
        let from = ticks(&status_of(&a.listen, d, |_| true).await);
        let s = status_of(&a.listen, d, |s| ticks(s) >= from + 5).await;
        assert_eq!(s["may_act"], true, "{d} held by {h} after SIGHUP: {s}");
    }

    // Outages in two deployments: each rolled back once, by its holder, and nothing else.
    for d in ["d1", "d4"] {
        service(d).fail();
    }
    for d in ["d1", "d4"] {
        wait_for(&format!("{d} to be rolled back"), DEADLINE, async || {
            let n = service(d).rollbacks.load(Ordering::SeqCst);
            if n >= 1 { Ok(()) } else { Err(n) }
        })
        .await;
    }
    for d in ["d1", "d4"] {
        let holder = [&a, &b, &c].into_iter().find(|r| r.name == held[d]).unwrap();
        let from = ticks(&status_of(&holder.listen, d, |_| true).await);
        status_of(&holder.listen, d, |s| ticks(s) >= from + 5).await;
    }
    for (d, s) in NAMES.iter().zip(&services) {
        let want = u64::from(["d1", "d4"].contains(d));
        assert_eq!(s.rollbacks.load(Ordering::SeqCst), want, "{d} rolled back {want} time(s)");
    }

    // Replica c killed: its deployments are taken over by a and b within the ttl + 2 s.
    let of_c: Vec<String> = held.iter().filter(|(_, h)| h.as_str() == "c").map(|(d, _)| d.clone()).collect();
    assert!(!of_c.is_empty());
    // An alert about one of them, sent to a: every replica has it — its holder in its evidence,
    // the others kept for when they hold it.
    let alerted = of_c.last().unwrap().clone();
    let answer = post_alert(&a.listen, &alerted).await;
    assert!(answer.contains("accepted"), "{answer}");
    status_of(&c.listen, &alerted, |s| rule_state(s, "feature-broken") == "\"firing\"").await;
    c.kill();
    let killed = Stopwatch::start();
    let after = held_once(&[&a, &b], 6, "c's deployments to be taken over").await;
    let took = killed.elapsed_secs();
    assert!(took <= TTL + 2.0, "taken over in {took:.1} s, more than the ttl + 2 s");
    eprintln!("c's deployments {of_c:?} taken over in {took:.2} s");
    // The alert that came while it was parked is in its new holder's evidence.
    let alerted_by = [&a, &b].into_iter().find(|r| r.name == after[&alerted]).unwrap();
    status_of(&alerted_by.listen, &alerted, |s| rule_state(s, "feature-broken") == "\"firing\"").await;
    // Acted on once by the new holder: an outage in one of them.
    let taken = &of_c[0];
    let before: Vec<u64> = services.iter().map(|s| s.rollbacks.load(Ordering::SeqCst)).collect();
    service(taken).fail();
    wait_for(&format!("{taken} to be rolled back by its new holder"), DEADLINE, async || {
        let n = service(taken).rollbacks.load(Ordering::SeqCst);
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;
    let new_holder = [&a, &b].into_iter().find(|r| r.name == after[taken]).unwrap();
    let from = ticks(&status_of(&new_holder.listen, taken, |_| true).await);
    status_of(&new_holder.listen, taken, |s| ticks(s) >= from + 5).await;
    for (i, (d, s)) in NAMES.iter().zip(&services).enumerate() {
        let want = before[i] + u64::from(d == taken);
        assert_eq!(s.rollbacks.load(Ordering::SeqCst), want, "{d}");
    }
    let journal = new_holder.dir.join("state").join(taken).join("journal.jsonl");
    let events = rollwatch::journal::Journal::read_back(&journal).unwrap();
    assert_eq!(common::of_kind(&events, "rollback_started").len(), 1, "{taken}: one rollback in its journal");

    // An alert sent to a replica that does not hold its deployment reaches the holder.
    let (d, held_by) = after.iter().find(|(_, h)| h.as_str() == "b").map(|(d, h)| (d.clone(), h.clone())).unwrap();
    assert_eq!(held_by, "b");
    let answer = post_alert(&a.listen, &d).await;
    assert!(answer.contains("accepted"), "{answer}");
    status_of(&b.listen, &d, |s| rule_state(s, "feature-broken") == "\"firing\"").await;
    // A command given to a replica that does not hold its deployment is applied by the holder;
    // so is a deploy reported to it through the hook.
    let config = a.dir.join("rollwatch.toml");
    let config = config.to_str().unwrap();
    let (code, out, _) = common::rollwatch(&["pause", "-c", config, "--deployment", &d, "--for", "1h"]);
    assert_eq!(code, 0, "{out}");
    status_of(&b.listen, &d, |s| !s["acting"]["paused_until"].is_null()).await;
    let answer = reqwest::Client::new()
        .post(format!("http://{}/hooks/deploy", a.listen))
        .header("content-type", "application/json")
        .body(format!(r#"{{"deployment": "{d}", "version": "v3"}}"#))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{answer:?}");
    assert_eq!(answer.headers()["x-rollwatch-leader"], "b");
    status_of(&b.listen, &d, |s| s["acting"]["version"] == "v3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_out_of_reach_every_replica_watches_every_deployment_and_none_acts_until_it_answers() {
    let Fleet { root, mut etcd, services } = Fleet::start().await;
    // Each lead is won slowly (1.1 s between the round and the lead: FAILPOINTS), so that a
    // lead won when etcd answers again is certain for a moment only (about 0.2 s of a 2 s ttl,
    // less than a step's margin of 0.5 s, until the next renewal): the rollback decided then
    // waits for the renewal; it does not fail its first step "not started" (and then wait out
    // its cooldown, the outage never rolled back).
    let slow = [("FAILPOINTS", "before-lead=return(1100)")];
    let a = Replica::start_env(root.path(), "a", &services, &etcd.url(), &slow);
    let b = Replica::start_env(root.path(), "b", &services, &etcd.url(), &slow);
    let held = held_once(&[&a, &b], 4, "every deployment held once").await;
    let d = held.iter().find(|(_, h)| h.as_str() == "b").map(|(d, _)| d.clone()).unwrap();
    let service = service_of(&services, &d);
    let parked = ticks(&status_of(&a.listen, &d, |_| true).await);

    // etcd gone: a watches b's deployment too (it is evaluated there again), and says why
    // it does not act.
    etcd.kill();
    let watched = status_of(&a.listen, &d, |s| ticks(s) >= parked + 3 && s["ha"]["role"] == "unreachable").await;
    assert_eq!(watched["may_act"], false, "{watched}");
    // An outage meanwhile: nobody acts on it, and people are told that nobody can.
    service.fail();
    for r in [&a, &b] {
        let from = ticks(&status_of(&r.listen, &d, |_| true).await);
        status_of(&r.listen, &d, |s| ticks(s) >= from + 5).await;
    }
    assert_eq!(service.rollbacks.load(Ordering::SeqCst), 0, "nobody acts while etcd is out of reach");
    let told = |r: &Replica| std::fs::read_to_string(r.dir.join("stdout")).unwrap_or_default();
    assert!(
        [&a, &b].iter().any(|r| told(r).contains(&format!("[{d}]")) && told(r).contains("no replica acts")),
        "a: {}\nb: {}",
        told(&a),
        told(&b)
    );

    // etcd back: each deployment goes back to one replica, and the outage is rolled back once.
    etcd.restart();
    wait_for("the outage to be rolled back once etcd answers", DEADLINE, async || {
        let n = service.rollbacks.load(Ordering::SeqCst);
        if n >= 1 { Ok(()) } else { Err(n) }
    })
    .await;
    let after = held_once(&[&a, &b], 4, "every deployment held once again").await;
    let holder = if after[&d] == "a" { &a } else { &b };
    let from = ticks(&status_of(&holder.listen, &d, |_| true).await);
    status_of(&holder.listen, &d, |s| ticks(s) >= from + 5).await;
    assert_eq!(service.rollbacks.load(Ordering::SeqCst), 1, "rolled back once");
    for (n, s) in NAMES.iter().zip(&services) {
        if *n != d {
            assert_eq!(s.rollbacks.load(Ordering::SeqCst), 0, "{n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_clock_keeps_it_out_of_the_share_alone_watches_and_tells_that_nobody_acts() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(Path::new(lib).exists(), "libfaketime is not installed: scripts/test.sh installs it");
    let Fleet { root, etcd, services } = Fleet::start().await;
    let ahead = [("LD_PRELOAD", lib), ("FAKETIME", "+1h"), ("DONT_FAKE_MONOTONIC", "1"), ("FAKETIME_NO_CACHE", "1")];
    let skewed = Replica::start_env(root.path(), "skewed", &services, &etcd.url(), &ahead);
    // Nobody holds the fleet: after 2 × ttl the skewed replica watches it, saying why it
    // cannot act.
    let d = NAMES[2];
    let s = status_of(&skewed.listen, d, |s| {
        ticks(s) >= 3 && s["ha"]["error"].as_str().is_some_and(|e| e.contains("ahead of etcd's"))
    })
    .await;
    assert_eq!(s["may_act"], false, "{s}");
    services[2].fail();
    let stdout = || std::fs::read_to_string(skewed.dir.join("stdout")).unwrap_or_default();
    wait_for("the wanted rollback told by the skewed replica", DEADLINE, async || {
        let out = stdout();
        if out.contains(&format!("[{d}]")) && out.contains("rollback wanted for") && out.contains("no replica may act")
        {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;
    let stderr = std::fs::read_to_string(skewed.dir.join("stderr")).unwrap_or_default();
    assert!(stderr.contains("it holds no deployment of the fleet"), "{stderr}");
    assert!(services.iter().all(|s| s.rollbacks.load(Ordering::SeqCst) == 0), "nobody acts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stopping_with_a_rollback_in_flight_lets_its_other_deployments_go_at_once() {
    let Fleet { root, etcd, services } = Fleet::start().await;
    // Each rollback's first step takes 6 s.
    let mut a = Replica::start_with(root.path(), "a", &services, &etcd.url(), &[], "6");
    held_once(&[&a], 6, "replica a alone to hold every deployment").await;
    let b = Replica::start_with(root.path(), "b", &services, &etcd.url(), &[], "6");
    let held = held_once(&[&a, &b], 3, "every deployment held once, three each").await;
    let of_a: Vec<String> = held.iter().filter(|(_, h)| h.as_str() == "a").map(|(d, _)| d.clone()).collect();
    assert_eq!(of_a.len(), 3, "{held:?}");

    // An outage in one of a's deployments: its rollback is in flight on a when a is told to stop.
    let busy = of_a[0].clone();
    let service = service_of(&services, &busy);
    service.fail();
    status_of(&a.listen, &busy, |s| !s["acting"]["in_flight"].is_null()).await;
    let mut child = a.child.take().unwrap();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopping = Stopwatch::start();

    // a lets its other deployments go as it stops, and b takes them while a still lets the
    // step finish (before, a's key stayed until its last deployment stopped, and b waited
    // with its share full).
    let others: Vec<&String> = of_a.iter().filter(|d| **d != busy).collect();
    wait_for("b to hold a's deployments without a rollback in flight", DEADLINE, async || {
        let holds = b.holds().await?;
        if others.iter().all(|d| holds.contains(d)) { Ok(()) } else { Err(format!("{holds:?}")) }
    })
    .await;
    let took = stopping.elapsed_secs();
    eprintln!("a's deployments {others:?} held by b {took:.2} s after a was told to stop");
    assert!(child.try_wait().unwrap().is_none(), "a still runs its rollback's step");
    assert!(took < TTL + 1.0, "held by b {took:.2} s after a was told to stop");
    // Meanwhile a says it acts on them no more (its lanes outlive their engines).
    let still = a.holds().await.unwrap();
    assert!(others.iter().all(|d| !still.contains(d)), "a still says it acts on {still:?}");

    // The rollback in flight ends on a, which then stops; b holds every deployment, and the
    // outage was rolled back once.
    assert!(child.wait().unwrap().success(), "a stopped cleanly");
    held_once(&[&b], 6, "b to hold every deployment").await;
    assert_eq!(service.rollbacks.load(Ordering::SeqCst), 1, "rolled back once, by a");
    let from = ticks(&status_of(&b.listen, &busy, |_| true).await);
    status_of(&b.listen, &busy, |s| ticks(s) >= from + 5).await;
    for (n, s) in NAMES.iter().zip(&services) {
        assert_eq!(s.rollbacks.load(Ordering::SeqCst), u64::from(*n == busy), "{n}");
    }
}
