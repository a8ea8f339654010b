//! High availability against a real etcd (Debian's `etcd-server`, started here on free loopback
//! ports): replicas of the real binary, each with its own state_dir and listen address, watching
//! one versioned service. Three replicas elect one leader and undo one outage once; a killed
//! leader is replaced within the TTL and its cooldown kept; a leader killed mid-step is never
//! re-run; a leader stopped past its TTL never acts beside the new one; with etcd down nobody
//! acts and everyone answers; a write of a lost term is refused by etcd itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::common::{
    DEADLINE, VersionedService, free_listen, of_kind, status_when, ticks_later, until, versioned_config, wait_for,
    wait_for_blocking, wait_for_journal,
};
use rollwatch::time::Stopwatch;

/// A single-member etcd on free loopback ports, its data in `dir`; killed when dropped.
pub(crate) struct Etcd {
    child: Option<Child>,
    dir: PathBuf,
    client: String,
    peer: String,
}

impl Etcd {
    pub(crate) fn start(dir: &Path) -> Etcd {
        let mut etcd = Etcd { child: None, dir: dir.join("etcd"), client: free_listen(), peer: free_listen() };
        etcd.restart();
        etcd
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Starts it (again, on the same data and ports) and waits until it answers.
    pub(crate) fn restart(&mut self) {
        let (client, peer) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
        self.child = Some(child);
        wait_for_blocking("etcd to start", 20.0, || {
            let out = Command::new("curl").args(["-sf", "-m", "1", &format!("{client}/health")]).output();
            let health = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            if health.contains("true") { Ok(()) } else { Err(health) }
        });
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Etcd {
    /// Loses every key: killed, its data removed, started again empty (a wiped member).
    pub(crate) fn wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        self.restart();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One replica: its dir (config, state, stdout), listen address and process.
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) listen: String,
    pub(crate) config: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Writes the replica's config (the versioned service's, with `policy` and `[ha]` on `etcd`
    /// under `key`, lease `ttl`; `actions` replaces the http undo when given) and starts it.
    pub(crate) fn start(
        root: &Path,
        name: &str,
        service: &VersionedService,
        etcd: &str,
        ttl: &str,
        policy: &str,
    ) -> Replica {
        Replica::start_with(root, name, service, etcd, ttl, policy, None)
    }

    pub(crate) fn start_with(
        root: &Path,
        name: &str,
        service: &VersionedService,
        etcd: &str,
        ttl: &str,
        policy: &str,
        undo: Option<&str>,
    ) -> Replica {
        Replica::start_env(root, name, service, etcd, ttl, policy, undo, &[])
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_env(
        root: &Path,
        name: &str,
        service: &VersionedService,
        etcd: &str,
        ttl: &str,
        policy: &str,
        undo: Option<&str>,
        env: &[(&str, &str)],
    ) -> Replica {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = free_listen();
        let config = versioned_config(&dir, service, &listen, policy);
        let mut text = std::fs::read_to_string(&config).unwrap();
        if let Some(undo) = undo {
            let at = text.find("[actions.undo]").unwrap();
            text.truncate(at);
            text.push_str(undo);
        }
        text.push_str(&format!(
            "\n[ha]\netcd = [\"{etcd}\"]\nkey = \"/rollwatch/test\"\nttl = \"{ttl}\"\nreplica = \"{name}\"\n"
        ));
        std::fs::write(&config, text).unwrap();
        let child = crate::common::spawn_run_env(&dir, &config, env);
        Replica { name: name.to_string(), dir, listen, config, child: Some(child) }
    }

    pub(crate) fn journal(&self) -> PathBuf {
        self.dir.join("state/journal.jsonl")
    }

    pub(crate) fn metric(&self, name: &str) -> Option<f64> {
        let text = get(&format!("http://{}/metrics", self.listen))?;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok())
    }

    pub(crate) fn leads(&self) -> bool {
        self.metric("rollwatch_leader") == Some(1.0)
    }

    pub(crate) fn status(&self) -> Value {
        get(&format!("http://{}/status", self.listen)).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die of SIGKILL's reaping cleanly.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// A GET's body, when it answers 200 within 2 s.
pub(crate) fn get(url: &str) -> Option<String> {
    let out = Command::new("curl").args(["-sf", "-m", "2", url]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A POST (`application/json`) to a replica: its status code, the leader header and the body.
pub(crate) fn post(listen: &str, path: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-X", "POST", "-H", "content-type: application/json", "-D", "-"])
        .arg(format!("http://{listen}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let leader = text
        .lines()
        .find_map(|l| l.strip_prefix("x-rollwatch-leader: "))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, leader, body)
}

/// Waits (at most `secs`) until exactly one replica leads; its index.
pub(crate) async fn one_leader(replicas: &[&Replica], secs: f64) -> usize {
    wait_for("a single leader", secs, async || {
        let leading: Vec<usize> = (0..replicas.len()).filter(|&i| replicas[i].leads()).collect();
        if leading.len() == 1 { Ok(leading[0]) } else { Err(leading) }
    })
    .await
}

/// Waits until every replica has evaluated `n` more ticks (see [`ticks_later`]).
pub(crate) async fn all_ticks_later(replicas: &[&Replica], n: u64) {
    for r in replicas {
        ticks_later(&r.listen, n).await;
    }
}

pub(crate) const POLICY: &str = "cooldown = \"1h\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_one_leader_and_undo_one_outage_once() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let replicas: Vec<Replica> =
        ["a", "b", "c"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "3s", POLICY)).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let l = one_leader(&all, 20.0).await;
    let leader = &replicas[l];
    for (i, r) in replicas.iter().enumerate().filter(|(i, _)| *i != l) {
        // The new log's rebuild closed by the leader: each follower sees it at its next round.
        until("a follower", || r.status()["ha"]["role"] == "follower").await;
        let s = r.status();
        assert_eq!(s["ha"]["role"], "follower", "replica {i}: {s}");
        assert_eq!(s["ha"]["leader"]["replica"], leader.name.as_str());
        assert_eq!(r.metric("rollwatch_leader"), Some(0.0));
        let out = Command::new("curl")
            .args(["-sf", "-m", "2", "-H", "accept: text/html", &format!("http://{}/status", r.listen)])
            .output()
            .unwrap();
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(page.contains("<b id=\"role\">follower</b>"), "{page}");
        assert!(page.contains(&format!("<b id=\"leader\">{} (http://{})", leader.name, leader.listen)), "{page}");
    }
    wait_for_journal(&leader.journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;

    service.deploy("v2", 500);
    until("the undo", || !service.rollbacks().is_empty()).await;
    // Every replica watches the same outage; one acts. Each one has decided 15 more ticks (3 s)
    // on it, long enough for a second undo to show.
    all_ticks_later(&all, 15).await;
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "exactly one undo, to v1");

    // Every replica's journal has the leader's rollback, and `history` shows it there.
    for r in &replicas {
        let events = wait_for_journal(&r.journal(), "the rollback, mirrored", |e| {
            of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")
        })
        .await;
        assert_eq!(of_kind(&events, "rollback_started").len(), 1, "{}: {events:#?}", r.name);
        let (code, out, err) = crate::common::rollwatch(&["history", "-c", r.config.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("rb-1") && out.contains("completed"), "{}: {out}", r.name);
    }

    // A root cause given on a follower is recorded once, by the leader, for every replica.
    let follower_config = replicas[(l + 1) % 3].config.to_str().unwrap().to_string();
    let (code, out, err) =
        crate::common::rollwatch(&["annotate", "-c", &follower_config, "rb-1", "--root-cause", "bad v2 build"]);
    assert_eq!(code, 0, "{out}{err}");
    for r in &replicas {
        wait_for_journal(&r.journal(), "the root cause", |e| {
            of_kind(e, "annotated").iter().filter(|a| a["root_cause"] == "bad v2 build").count() == 1
        })
        .await;
    }

    // A command sent to a follower is applied once, by the leader.
    let follower = &replicas[(l + 1) % 3];
    let (code, by, body) = post(&follower.listen, "/pause");
    assert_eq!((code, by.as_str()), (200, leader.name.as_str()), "{body}");
    assert!(body.contains("paused until resumed"), "{body}");
    until("the pause on every replica", || replicas.iter().all(|r| !r.status()["acting"]["paused_until"].is_null()))
        .await;
    // Alerts posted to a follower reach the leader too (and the follower, which watches).
    crate::common::post_alert(&follower.listen, "firing").await;
    for r in [leader, follower] {
        wait_for_journal(&r.journal(), "the alert", |e| !of_kind(e, "alerts").is_empty()).await;
    }
    let (code, _, body) = post(&replicas[(l + 2) % 3].listen, "/resume");
    assert_eq!(code, 200, "{body}");
    // A deploy reported to a follower's hook is recorded once, by the leader, and reaches all.
    let out = Command::new("curl")
        .args(["-sf", "-m", "10", "-X", "POST", "-H", "content-type: application/json", "-d", r#"{"version": "v9"}"#])
        .arg(format!("http://{}/hooks/deploy", follower.listen))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("deploy of v9 recorded"), "{out:?}");
    for r in &replicas {
        wait_for_journal(&r.journal(), "the reported deploy", |e| {
            of_kind(e, "deploy").iter().filter(|d| d["to"] == "v9" && d["source"] == "hook").count() == 1
        })
        .await;
    }
    let paused = of_kind(&rollwatch::journal::Journal::read_back(&leader.journal()).unwrap(), "paused").len();
    assert_eq!(paused, 1, "the pause was applied once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_the_ttl_and_its_cooldown_kept() {
    // `RW_HA_TTL=10s` measures the failover at the default ttl (README, "Measured failover").
    let ttl = std::env::var("RW_HA_TTL").unwrap_or_else(|_| "2s".into());
    let ttl_secs = rollwatch::time::parse_duration(&ttl).unwrap().0 as f64 / 1000.0;
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let mut replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), &ttl, POLICY)).collect();
    // The first leader of a new log acts 2 × ttl after it is elected.
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 16.0 + 2.0 * ttl_secs).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    service.deploy("v2", 500);
    wait_for_journal(&replicas[l].journal(), "the rollback", |e| {
        of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")
    })
    .await;
    // A silence set on the leader, to outlive it.
    let (code, _, body) = post(&replicas[l].listen, "/silence/error-rate-elevated?for=1h");
    assert_eq!(code, 200, "{body}");
    // v2 again: held back by rb-1's cooldown, and told so, by the leader.
    service.deploy("v2", 500);
    let held = |e: &[serde_json::Value]| {
        of_kind(e, "suppressed")
            .iter()
            .filter(|s| s["reason"].as_str().is_some_and(|r| r.contains("cooldown after rb-1")))
            .count()
    };
    wait_for_journal(&replicas[1 - l].journal(), "v2 (again) held back by the cooldown, mirrored", |e| held(e) == 1)
        .await;
    assert!(replicas[l].stdout().contains("suppressed: cooldown after rb-1"), "told by the leader");

    replicas[l].kill();
    let failover = Stopwatch::start();
    let other = &replicas[1 - l];
    until("the other replica to lead", || other.leads()).await;
    let took = failover.elapsed_secs();
    eprintln!("failover: leader SIGKILLed → the other replica leads in {took:.1} s (ttl {ttl})");
    assert!(took < ttl_secs + 5.0, "failover took {took:.1} s");
    // The new leader acts from the shared state: the silence, the versions (v2 bad, v1 the target).
    let status = other.status();
    assert!(status["acting"]["silences"]["error-rate-elevated"].is_i64(), "{status}");
    assert_eq!(status["acting"]["last_good"], "v1", "{status}");
    let (code, out, _) = crate::common::rollwatch(&["versions", "-c", other.config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"bad\""), "v2 bad on the new leader too: {out}");

    // The cooldown of the dead leader's rollback holds v2 back on the new leader too, and what
    // the dead leader told is not told again: 15 ticks (3 s) of the new leader deciding it.
    ticks_later(&other.listen, 15).await;
    let status = other.status();
    assert_eq!(status["decisions"][0]["outcome"], "rollback", "v2 still decided against: {status}");
    let events = rollwatch::journal::Journal::read_back(&other.journal()).unwrap();
    assert_eq!(held(&events), 1, "held back, told once: {:#?}", of_kind(&events, "suppressed"));
    assert!(!other.stdout().contains("suppressed"), "the new leader told it again: {}", other.stdout());
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "no second undo: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_in_the_middle_of_a_step_is_never_re_run() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let marker = root.path().join("undo-ran");
    let undo = format!(
        "[actions.undo]\nkind = \"exec\"\nargv = [\"sh\", \"-c\", \"echo ran >> {} && sleep 4\"]\ntimeout = \"30s\"\n",
        marker.display()
    );
    let mut replicas: Vec<Replica> = ["a", "b"]
        .iter()
        .map(|n| Replica::start_with(root.path(), n, &service, &etcd.url(), "2s", POLICY, Some(&undo)))
        .collect();
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 20.0).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;
    service.deploy("v2", 500);
    until("the step to run", || marker.exists()).await;
    replicas[l].kill();

    let other = &replicas[1 - l];
    let events = wait_for_journal(&other.journal(), "the rollback reported interrupted, S1", |e| {
        of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "interrupted")
            && of_kind(e, "escalation").iter().any(|e| e["severity"] == "S1")
    })
    .await;
    let finished = of_kind(&events, "rollback_finished");
    let error = finished[0]["error"].as_str().unwrap_or("");
    assert!(error.contains("change of leader") && error.contains("undo"), "{error}");
    assert!(of_kind(&events, "escalation").iter().any(|e| e["severity"] == "S1"), "reported S1: {events:#?}");
    // 15 more ticks (3 s) decided by the new leader, long enough for a re-run to show: a step is
    // journalled before it runs, and none was; the step ran once.
    ticks_later(&other.listen, 15).await;
    let events = rollwatch::journal::Journal::read_back(&other.journal()).unwrap();
    assert_eq!(of_kind(&events, "step_started").len(), 1, "the step started once: {events:#?}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n", "the step ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_past_its_ttl_never_acts_beside_the_new_one() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", POLICY)).collect();
    let l = one_leader(&replicas.iter().collect::<Vec<_>>(), 20.0).await;
    let (stopped, other) = (&replicas[l], &replicas[1 - l]);
    wait_for_journal(&stopped.journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;

    stopped.signal("-STOP");
    // A command to the follower while its leader is stalled: answered within the CLI's 10 s
    // (by the new leader, or a 503 saying to try again), never held.
    let asked = Stopwatch::start();
    let (code, _, body) = post(&other.listen, "/silence/no-such-rule?for=1m");
    assert!(asked.elapsed_secs() < 10.0, "held {:.1} s: {body}", asked.elapsed_secs());
    assert!(
        code == 409 && body.contains("no rule named") || code == 503 && body.contains("try again"),
        "{code} {body}"
    );
    until("the other replica to lead", || other.leads()).await;
    service.deploy("v2", 500);
    until("the undo", || !service.rollbacks().is_empty()).await;
    stopped.signal("-CONT");

    // From its resumption on, never two acting leaders: looked at until the resumed replica
    // follows and both have decided 20 more ticks (4 s).
    let ticks = |r: &Replica| r.status()["ticks_total"].as_u64().unwrap_or(0);
    let answered = |s: &Value| s["ticks_total"].is_u64();
    let from = (
        status_when(&stopped.listen, "the resumed replica's status", answered).await["ticks_total"].as_u64().unwrap(),
        status_when(&other.listen, "the other replica's status", answered).await["ticks_total"].as_u64().unwrap(),
    );
    let mut seen_follower = false;
    wait_for("the resumed replica to follow, 20 ticks on", DEADLINE, async || {
        let (a, b) = (stopped.leads(), other.leads());
        assert!(!(a && b), "two acting leaders");
        seen_follower |= stopped.status()["ha"]["role"] == "follower";
        let (now_a, now_b) = (ticks(stopped), ticks(other));
        if seen_follower && now_a >= from.0 + 20 && now_b >= from.1 + 20 { Ok(()) } else { Err((now_a, now_b)) }
    })
    .await;
    assert!(other.leads());
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "exactly one undo");
    let events = rollwatch::journal::Journal::read_back(&stopped.journal()).unwrap();
    let own = events.iter().filter(|e| e["event"] == "rollback_started").count();
    assert!(own <= 1, "the stopped replica started nothing of its own: {events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_nobody_acts_everyone_answers_one_tells_and_one_resumes() {
    let root = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    let replicas: Vec<Replica> =
        ["a", "b"].iter().map(|n| Replica::start(root.path(), n, &service, &etcd.url(), "2s", POLICY)).collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let l = one_leader(&all, 20.0).await;
    wait_for_journal(&replicas[l].journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;

    etcd.kill();
    let down = Stopwatch::start();
    until("nobody leads", || replicas.iter().all(|r| r.metric("rollwatch_leader") == Some(0.0))).await;
    assert!(down.elapsed_secs() < 2.0 + 1.0, "the leader stopped acting within the ttl");
    until("every replica to show the trouble", || {
        replicas.iter().all(|r| {
            r.metric("rollwatch_coordinator_reachable") == Some(0.0) && r.status()["ha"]["role"] == "unreachable"
        })
    })
    .await;
    for r in &replicas {
        assert_eq!(get(&format!("http://{}/healthz", r.listen)).as_deref(), Some("ok\n"));
    }
    // One page: the last leader tells (the follower sees it answer and stays quiet).
    let leader = &replicas[l];
    until("the trouble told by the last leader", || leader.stdout().contains("S1: no replica acts")).await;
    service.deploy("v2", 500);
    // A rollback wanted meanwhile is said (by the same replica), and not acted on.
    until("the wanted rollback told", || leader.stdout().contains("rollback wanted for")).await;
    all_ticks_later(&all, 15).await;
    assert!(service.rollbacks().is_empty(), "nobody acts without etcd");
    let follower = &replicas[1 - l];
    assert!(!follower.stdout().contains("no replica acts"), "one page, not two: {}", follower.stdout());
    assert!(!follower.stdout().contains("rollback wanted"), "{}", follower.stdout());

    etcd.restart();
    one_leader(&all, 15.0).await;
    until("the undo", || !service.rollbacks().is_empty()).await;
    all_ticks_later(&all, 10).await;
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "exactly one undo once etcd is back");
    until("etcd's return told", || replicas.iter().any(|r| r.stdout().contains("etcd reachable again"))).await;
}

/// A coordinator in this process, on `etcd`, for tests of the coordination itself.
fn in_process(
    etcd: &Etcd,
    key: &str,
    ttl_secs: i64,
    replica: &str,
    compactor: rollwatch::coord::Compactor,
) -> rollwatch::coord::Coordinator {
    let ttl = rollwatch::time::Span::from_secs(ttl_secs);
    let spec = rollwatch::config::deploy::HaSpec::plain(vec![etcd.url()], key, ttl, Some(replica));
    let clock: std::sync::Arc<dyn rollwatch::time::Clock> = std::sync::Arc::new(rollwatch::time::SystemClock);
    rollwatch::coord::Coordinator::new(&spec, "127.0.0.1:1".parse().unwrap(), &|_| None, clock, compactor).unwrap()
}

/// The fence itself: a replica whose lease was lost finds its write refused by etcd, even
/// while its own clock would still let it act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_a_lost_term_is_refused_by_etcd() {
    use rollwatch::coord::CommitError;
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let coordinator = |name: &str| in_process(&etcd, "/rollwatch/fence", 30, name, Box::new(|lines, _| lines));
    let (a, b) = (coordinator("a"), coordinator("b"));
    let (mut lease_a, mut lease_b) = (None, None);
    let term_a = a.elect_once(&mut lease_a).await.unwrap().expect("a leads");
    assert_eq!(b.elect_once(&mut lease_b).await.unwrap(), None, "one leader");
    let line = serde_json::json!({"at": 1, "event": "paused", "until": null});
    let written = a.commit(term_a, line.clone()).await.unwrap();
    assert_eq!(written["seq"], 1);

    // a's lease ends (as a partition past the ttl would end it); b takes over.
    a.etcd().revoke(lease_a.unwrap()).await.unwrap();
    let term_b = b.elect_once(&mut lease_b).await.unwrap().expect("b leads");
    assert_ne!(term_a, term_b);
    assert!(a.may_act(term_a), "a's own clock still lets it act: only etcd can refuse");
    match a.commit(term_a, line.clone()).await {
        Err(CommitError::NotLeader(why)) => assert!(why.contains("refused") && why.contains("b"), "{why}"),
        other => panic!("a late write went through: {other:?}"),
    }
    assert!(!a.may_act(term_a), "refused once, a stops acting");
    let written = b.commit(term_b, line).await.unwrap();
    assert_eq!(written["seq"], 2, "b goes on after a's line");
}

/// Certificates for a TLS etcd on 127.0.0.1 made with `openssl`: a CA, a server certificate and a
/// client certificate without a Common Name (etcd's gateway refuses one with a CN while auth is
/// on; without one, only the password grants access).
fn certificates(dir: &Path) {
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=rollwatch-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /O=rollwatch 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
"#;
    let ok = Command::new("sh").args(["-c", script]).current_dir(dir).status().unwrap().success();
    assert!(ok, "openssl could not make the test certificates");
}

/// A POST to the TLS etcd's JSON gateway with the client certificate (and a token).
fn etcd_call(dir: &Path, url: &str, path: &str, body: &str, token: Option<&str>) -> String {
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "5", "--cacert", "ca.pem", "--cert", "client.pem", "--key", "client.key", "-d", body])
        .current_dir(dir);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = c.arg(format!("{url}{path}")).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `https://` endpoints with a CA, a client certificate and etcd's own auth (user and password
/// from env vars), through the binary as the README shows; a wrong password is shown as etcd
/// trouble, and nothing acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    let (client, peer) = (free_listen(), free_listen());
    let url = format!("https://{client}");
    let file = |name: &str| certs.join(name).display().to_string();
    let mut etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(root.path().join("etcd"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args([
            "--listen-peer-urls",
            &format!("http://{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{peer}"),
        ])
        .args(["--initial-cluster", &format!("default=http://{peer}")])
        .args(["--cert-file", &file("server.pem"), "--key-file", &file("server.key")])
        .args(["--client-cert-auth", "--trusted-ca-file", &file("ca.pem")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
    until("etcd over TLS", || etcd_call(&certs, &url, "/v3/kv/range", r#"{"key":"AA=="}"#, None).contains("header"))
        .await;
    for (path, body) in [
        ("/v3/auth/user/add", r#"{"name":"root","password":"s3cret-pw"}"#),
        ("/v3/auth/role/add", r#"{"name":"root"}"#),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        let answer = etcd_call(&certs, &url, path, body, None);
        assert!(answer.contains("header"), "{path}: {answer}");
    }
    // The client certificate alone gets nothing.
    let denied = etcd_call(&certs, &url, "/v3/kv/range", r#"{"key":"AA=="}"#, None);
    assert!(denied.contains("user name is empty"), "{denied}");

    let service = VersionedService::start("v1", 0).await;
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nusername_env = \"ETCD_USER\"\npassword_env = \"ETCD_PASSWORD\"\n",
        file("ca.pem"),
        file("client.pem"),
        file("client.key")
    );
    let start = |name: &str, password: &str| {
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = free_listen();
        let config = versioned_config(&dir, &service, &listen, POLICY);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[ha]\netcd = [\"{url}\"]\nkey = \"/rollwatch/tls\"\nttl = \"2s\"\nreplica = \"{name}\"\n{tls}"
        ));
        std::fs::write(&config, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(["run", "-c"])
            .arg(&config)
            .env("ETCD_USER", "root")
            .env("ETCD_PASSWORD", password)
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .unwrap();
        Replica { name: name.into(), dir, listen, config, child: Some(child) }
    };
    let good = start("good", "s3cret-pw");
    let wrong = start("wrong", "not-the-password");
    until("the replica with the password to lead", || good.leads()).await;
    until("the wrong password shown as etcd trouble", || {
        let s = wrong.status();
        s["ha"]["role"] == "unreachable" && s["ha"]["error"].as_str().is_some_and(|e| e.contains("authentication"))
    })
    .await;
    assert_eq!(wrong.metric("rollwatch_leader"), Some(0.0));
    assert!(!wrong.status().to_string().contains("not-the-password"), "the password is not shown");
    let _ = etcd.kill();
    let _ = etcd.wait();
}

/// The shared log in a real etcd: past its bound the leader compacts it into a snapshot (in one
/// fenced transaction that deletes the events it holds), and a replica that starts later reads
/// the whole log — the snapshot and what followed — and restores the same acting state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_log_is_compacted_and_a_late_replica_reads_it_whole() {
    use rollwatch::coord::etcd::{Op, prefix_end};
    use rollwatch::coord::{COMPACT_AFTER, Coordinator, Update};
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let start = |name: &str| {
        let compactor = Box::new(rollwatch::act::ledger::compact_shared);
        let c = in_process(&etcd, "/rollwatch/compact", 2, name, compactor);
        let c = std::sync::Arc::new(c);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(c.clone().run(tx, stopped));
        (c, rx, stop)
    };
    let (a, mut a_news, _stop_a) = start("a");
    // A new log is first rebuilt from every replica's journal (here: none), then led.
    let (term, log) = loop {
        match a_news.recv().await {
            Some(Update::Lead { term, log }) => break (term, log),
            Some(Update::Distrust { lost, .. }) => assert!(!lost, "a new log is no loss"),
            other => panic!("a leads: {other:?}"),
        }
    };
    assert!(log.is_empty());
    let line = |event: &str, data: Value| {
        let mut v = data;
        v["at"] = serde_json::json!(1_000);
        v["event"] = serde_json::json!(event);
        v
    };
    a.commit(term, line("deploy", serde_json::json!({"from": null, "to": "v1", "source": "hook"}))).await.unwrap();
    for i in 0..COMPACT_AFTER + 40 {
        let (event, data) = if i % 2 == 0 {
            ("paused", serde_json::json!({"until": null}))
        } else {
            ("resumed", serde_json::json!({}))
        };
        a.commit(term, line(event, data)).await.unwrap();
    }
    a.commit(term, line("paused", serde_json::json!({"until": null}))).await.unwrap();

    async fn events(c: &Coordinator) -> usize {
        let from = "/rollwatch/compact/events/".to_string();
        let to = prefix_end(&from);
        c.etcd().txn(&[], &[Op::GetRange(from, to)], &[]).await.unwrap().ranges[0].len()
    }
    // 298 lines committed: one compaction (past 256), which leaves at most the 41 after it.
    wait_for("the compaction", 20.0, async || {
        let snapshot = a.etcd().get("/rollwatch/compact/snapshot").await.unwrap().is_some();
        let left = events(&a).await;
        if snapshot && left <= 41 { Ok(()) } else { Err(format!("snapshot: {snapshot}, {left} events")) }
    })
    .await;

    let (_b, mut b_news, _stop_b) = start("b");
    let whole = loop {
        match b_news.recv().await {
            Some(Update::Reset(lines)) => break lines,
            Some(_) => continue,
            None => panic!("b stopped"),
        }
    };
    // The snapshot's few lines and the events after it.
    assert!(whole.len() <= 2 + 41, "the snapshot keeps what acting needs: {whole:#?}");
    let (state, errors) = rollwatch::act::state::State::restore(&whole);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(state.versions.current.as_deref(), Some("v1"));
    assert!(state.paused_until.is_some(), "still paused");
    let seqs: Vec<u64> = whole.iter().map(rollwatch::act::ledger::seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && *seqs.last().unwrap() == COMPACT_AFTER + 42, "{seqs:?}");
}

/// The leader's disk fills up: it cannot keep its own record, so it stops acting and gives the
/// leader key up; the other replica leads and undoes the next outage once; when space returns,
/// the first stands for election again (and follows, the key being taken).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_journal_fails_hands_leadership_to_a_healthy_replica() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path());
    let service = VersionedService::start("v1", 0).await;
    // The first replica's state_dir on a small tmpfs, so that its disk can fill.
    let state = root.path().join("a/state");
    std::fs::create_dir_all(&state).unwrap();
    crate::common::mount(&state, "size=2m");
    let _unmount = crate::common::Unmount(state.clone());
    let a = Replica::start(root.path(), "a", &service, &etcd.url(), "2s", POLICY);
    until("a to lead", || a.leads()).await;
    let b = Replica::start(root.path(), "b", &service, &etcd.url(), "2s", POLICY);
    until("b to follow a", || b.status()["ha"]["leader"]["replica"] == "a").await;
    wait_for_journal(&b.journal(), "v1 baked", |e| !of_kind(e, "version_baked").is_empty()).await;

    crate::common::fill_disk(&state);
    // The next thing the leader records (a deploy) finds its journal full.
    service.deploy("v2", 0);
    until("b to lead", || b.leads()).await;
    until("a to say why it stood aside", || {
        let s = a.status();
        s["acting"]["journal_error"].is_string() && s["ha"]["role"] == "follower"
    })
    .await;
    assert_eq!(a.metric("rollwatch_leader"), Some(0.0));
    wait_for_journal(&b.journal(), "v2's deploy", |e| of_kind(e, "deploy").iter().any(|d| d["to"] == "v2")).await;
    service.set_errors("v2", 500);
    until("the undo", || !service.rollbacks().is_empty()).await;

    std::fs::remove_file(state.join("filler")).unwrap();
    until("a back on its feet, following b", || {
        let s = a.status();
        s["acting"]["journal_error"].is_null() && s["ha"]["role"] == "follower" && s["ha"]["leader"]["replica"] == "b"
    })
    .await;
    all_ticks_later(&[&a, &b], 10).await;
    assert_eq!(service.rollbacks(), vec!["v1".to_string()], "exactly one undo");
    assert!(b.leads() && !a.leads());
}
