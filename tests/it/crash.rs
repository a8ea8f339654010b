//! Crash safety of the real binary: `rollwatch run` is SIGKILLed at several points of a
//! rollback (during the first step, during the second, after completion, and with a torn
//! journal line appended), then restarted on the same state. No step may run twice, the
//! unfinished rollback must be reported (interrupted, S1) rather than re-run, and the journal
//! must read back whole.

use crate::common;
use crate::common::{Unmount, fill_disk, mount};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rollwatch::journal::Journal;
use serde_json::Value;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    /// Whether the watched service answers its health check.
    healthy: Arc<AtomicBool>,
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        // The service is down from the start: the rollback decision comes at once.
        let deployment = common::DownDeployment::start().await;
        let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["step1", "step2"]));
        let log = dir.path().join("steps.log");
        // Each step logs its start, works for a while, logs its end.
        let step = |name: &str| {
            format!(
                "[actions.{name}]\nkind = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"echo \\\"start $1\\\" >> \\\"$2\\\"; sleep 1.5; echo \\\"end $1\\\" >> \\\"$2\\\"\", \"sh\", \"{name}\", {log:?}]\ntimeout = \"20s\"\n"
            )
        };
        let head = deployment.config_head(&profile, &dir.path().join("state"), "127.0.0.1:0");
        let text = format!(
            "{head}\n[policy]\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[channels.console]\nkind = \"console\"\n\n{}\n{}",
            step("step1"),
            step("step2")
        );
        let config = common::write(dir.path(), "rollwatch.toml", text);
        Setup { dir, config, healthy: deployment.healthy }
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("state").join("journal.jsonl")
    }

    fn events(&self) -> Vec<Value> {
        Journal::read_back(&self.journal()).unwrap()
    }

    fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    fn steps(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("steps.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn start(&self) -> Child {
        Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(["run", "-c"])
            .arg(&self.config)
            .env("ROLLWATCH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("stderr-{}", self.count("started")))).unwrap())
            .spawn()
            .unwrap()
    }

    /// Waits until `ready` holds.
    async fn until(&self, what: &str, ready: impl Fn(&Setup) -> bool) {
        common::wait_for(what, common::DEADLINE, async || if ready(self) { Ok(()) } else { Err(self.events()) }).await;
    }
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Restarts after a crash and waits until the restored dispatcher has held the still-standing
/// rollback decision back; then stops and checks what every scenario must hold.
async fn restart_and_check(s: &Setup, interrupted: bool) {
    let before = s.count("started");
    let mut again = s.start();
    s.until("the restarted sidecar to hold the decision back", |s| {
        // One read of the journal for both checks: two reads could straddle the new start.
        let events = s.events();
        let started = events.iter().filter(|e| e["event"] == "started").count();
        let restart = events.iter().rposition(|e| e["event"] == "started").unwrap_or(0);
        started > before && events[restart..].iter().any(|e| e["event"] == "suppressed")
    })
    .await;
    common::sigterm(&mut again);
    let steps = s.steps();
    for step in ["start step1", "start step2"] {
        assert!(steps.iter().filter(|l| *l == step).count() <= 1, "{step} ran twice: {steps:?}");
    }
    assert_eq!(s.count("rollback_started"), 1, "{:#?}", s.events());
    let text = std::fs::read_to_string(s.journal()).unwrap();
    assert_eq!(text.lines().count(), s.events().len(), "every line reads back");
    assert!(text.ends_with('\n'));
    let finished: Vec<Value> = s.events().into_iter().filter(|e| e["event"] == "rollback_finished").collect();
    assert_eq!(finished.len(), 1, "{finished:?}");
    if interrupted {
        assert_eq!(finished[0]["result"], "interrupted");
        let escalations: Vec<Value> = s.events().into_iter().filter(|e| e["event"] == "escalation").collect();
        assert!(
            escalations.iter().any(|e| e["severity"] == "S1" && e["finding"].as_str().unwrap().contains("not re-run"))
        );
    } else {
        assert_eq!(finished[0]["result"], "completed");
    }
    // A completed rollback spends its version; so does an interrupted one — never retried for
    // that deploy (its step may still be running; people were told to take over).
    let suppressed = s.events().into_iter().rfind(|e| e["event"] == "suppressed").unwrap();
    let held = if interrupted {
        "version v2 was already rolled back by rb-1 (interrupted); not retried"
    } else {
        "version v2 was already rolled back by rb-1"
    };
    assert!(suppressed["reason"].as_str().unwrap().contains(held), "{suppressed}");
}

fn has(s: &Setup, line: &str) -> bool {
    s.steps().iter().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_first_step() {
    let s = Setup::new().await;
    let mut first = s.start();
    s.until("step 1 to start", |s| has(s, "start step1")).await;
    sigkill(&mut first);
    restart_and_check(&s, true).await;
    assert_eq!(s.steps(), vec!["start step1"]);
    let finished = s.events().into_iter().find(|e| e["event"] == "rollback_finished").unwrap();
    assert!(
        finished["error"]
            .as_str()
            .unwrap()
            .contains("during step 1 run \"step1\" (its start recorded, its end not: it may or may not have run)"),
        "{finished}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_second_step_with_a_torn_journal_line() {
    let s = Setup::new().await;
    let mut first = s.start();
    s.until("step 2 to start", |s| has(s, "start step2")).await;
    sigkill(&mut first);
    // A crash in the middle of writing a line leaves it torn.
    let mut f = std::fs::OpenOptions::new().append(true).open(s.journal()).unwrap();
    std::io::Write::write_all(&mut f, b"{\"at\":1,\"event\":\"step_fini").unwrap();
    drop(f);
    restart_and_check(&s, true).await;
    assert_eq!(s.steps(), vec!["start step1", "end step1", "start step2"]);
    let stderr = std::fs::read_to_string(s.dir.path().join("stderr-1")).unwrap_or_default();
    assert!(stderr.contains("dropping a torn last journal line"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_verifying() {
    let s = Setup::new().await;
    let mut first = s.start();
    s.until("both steps to finish", |s| s.count("step_finished") == 2).await;
    sigkill(&mut first);
    restart_and_check(&s, true).await;
    let finished = s.events().into_iter().find(|e| e["event"] == "rollback_finished").unwrap();
    assert!(finished["error"].as_str().unwrap().contains("after step 2 (\"step2\") finished"), "{finished}");
    assert_eq!(s.steps(), vec!["start step1", "end step1", "start step2", "end step2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_rollback_completed_and_the_issue_came_back() {
    let s = Setup::new().await;
    let mut first = s.start();
    s.until("both steps to finish", |s| s.count("step_finished") == 2).await;
    // The rollback worked: the service is healthy, the rule stops firing, the rollback verifies.
    s.healthy.store(true, Ordering::SeqCst);
    s.until("the rollback to complete", |s| s.count("rollback_finished") == 1).await;
    sigkill(&mut first);
    // The same version fails again: the restarted sidecar must not roll it back a second time.
    s.healthy.store(false, Ordering::SeqCst);
    restart_and_check(&s, false).await;
    assert_eq!(s.steps(), vec!["start step1", "end step1", "start step2", "end step2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_step_lets_the_steps_finish_first() {
    let s = Setup::new().await;
    let mut first = s.start();
    s.until("step 1 to start", |s| has(s, "start step1")).await;
    common::sigterm(&mut first);
    // Both steps ran to their end before the process exited (it waits for the procedure).
    assert_eq!(s.steps(), vec!["start step1", "end step1", "start step2", "end step2"]);
    assert_eq!(s.count("step_finished"), 2);
    let stderr = std::fs::read_to_string(s.dir.path().join("stderr-0")).unwrap();
    assert!(stderr.contains("waiting for the running rollback's steps first"), "{stderr}");
    // Verification was cut short: the next start reports it, and runs nothing again.
    restart_and_check(&s, true).await;
    assert_eq!(s.steps().len(), 4);
}

/// What a journal fault must not break: with the disk under `state` broken by `fault`, an
/// outage is held back (no step runs without its journal line) and told on the console (S1 and
/// the held-back rollback), `/metrics` and `/status` show it (one of `errors` in `journal_error`) and
/// rollwatch keeps watching; once `repair` has run, it acts by itself and says so.
async fn journal_fault_stops_acting_not_watching(
    dir: &Path,
    state: &Path,
    fault: impl FnOnce(),
    errors: &[&str],
    repair: impl FnOnce(),
) {
    let deployment = common::DownDeployment::start().await;
    deployment.healthy.store(true, Ordering::SeqCst);
    let profile = common::write(dir, "profile.toml", common::down_profile(&["undo"]));
    let marker = dir.join("undone");
    let listen = common::free_listen();
    let head = deployment.config_head(&profile, state, &listen);
    let config = common::write(
        dir,
        "rollwatch.toml",
        format!(
            "{head}\n[policy]\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[channels.console]\nkind = \"console\"\n\n[actions.undo]\nkind = \"exec\"\nargv = [\"/usr/bin/touch\", {:?}]\n",
            marker.display().to_string()
        ),
    );
    let mut child = common::spawn_run(dir, &config);
    let journal = state.join("journal.jsonl");
    common::wait_for_journal(&journal, "the first decision", |e| e.iter().any(|e| e["event"] == "decision")).await;
    fault();
    deployment.healthy.store(false, Ordering::SeqCst);
    let stdout = || std::fs::read_to_string(dir.join("stdout")).unwrap_or_default();
    common::wait_for("the console told", common::DEADLINE, async || {
        let out = stdout();
        let told = out.contains("S1: journal unwritable: not acting")
            && out.contains("suppressed: journal unwritable: not acting");
        if told { Ok(()) } else { Err(out) }
    })
    .await;
    assert!(!marker.exists(), "acted without a journal line");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rollwatch_journal_writable 0\n"), "{metrics}");
    let status: serde_json::Value =
        reqwest::get(format!("http://{listen}/status")).await.unwrap().json().await.unwrap();
    let shown = status["acting"]["journal_error"].as_str().unwrap_or_default().to_string();
    assert!(errors.iter().any(|e| shown.contains(e)), "{status}");
    // Still watching: the decision is rollback, on polls made while the journal is broken.
    assert_eq!(status["decisions"][0]["outcome"], "rollback", "{status}");
    assert!(child.try_wait().unwrap().is_none(), "rollwatch exited");
    repair();
    let events = common::wait_for_journal(&journal, "the rollback once the journal is writable", |e| {
        e.iter().any(|e| e["event"] == "step_finished")
    })
    .await;
    assert!(marker.exists());
    assert!(events.iter().any(|e| e["event"] == "journal_recovered"), "{events:#?}");
    let metrics = reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rollwatch_journal_writable 1\n"), "{metrics}");
    common::sigterm(&mut child);
    assert!(stdout().contains("journal writable again after"), "{}", stdout());
    // Every line reads back whole: a failed write left no half line.
    let text = std::fs::read_to_string(&journal).unwrap();
    let lines = text.lines().filter(|l| !l.is_empty()).count();
    assert_eq!(lines, Journal::read_back(&journal).unwrap().len(), "{text}");
}

/// A journal that cannot be written (here: a full disk) stops acting, never watching, and
/// acting resumes by itself when space returns. The disk is a real 1 MiB tmpfs (the tests run as
/// root, as scripts/test.sh does), filled to the last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acting_not_watching_and_acting_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    mount(&state, "size=1m");
    let _unmount = Unmount(state.clone());
    let filler = state.join("filler");
    journal_fault_stops_acting_not_watching(
        dir.path(),
        &state,
        || fill_disk(&state),
        &["No space left"],
        || std::fs::remove_file(&filler).unwrap(),
    )
    .await;
}

/// An ext4 file system on a loop device, mounted with `errors=remount-ro` (as production disks
/// often are): the kernel turns it read-only under open files when it meets an error.
fn mount_ext4(image: &Path, at: &Path) {
    let made = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image).status().unwrap();
    assert!(made.success(), "mkfs.ext4 (e2fsprogs, installed by scripts/test.sh)");
    let ok = Command::new("mount").args(["-o", "loop,errors=remount-ro"]).arg(image).arg(at).status().unwrap();
    assert!(ok.success(), "mounting a loop device needs root (scripts/test.sh runs the tests as root)");
}

/// The journal's file system goes read-only mid-run (ext4 meets an error and remounts itself
/// read-only, the open journal included): rollwatch keeps watching and serving, stops acting,
/// says so on every channel and in `/metrics`; once the state_dir is mounted writable again
/// (here: a repaired copy of the disk), it writes to the new mount and acts by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_gone_read_only_stops_acting_not_watching_and_acting_resumes_on_a_repaired_mount() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
    mount_ext4(&image, &state);
    let _unmount = Unmount(state.clone());
    let fault = || {
        // The kernel's own error path: what `errors=remount-ro` does on a real disk error.
        let device = Command::new("findmnt").args(["-n", "-o", "SOURCE"]).arg(&state).output().unwrap().stdout;
        let device = String::from_utf8(device).unwrap();
        let device = device.trim().rsplit('/').next().unwrap().to_string();
        std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "rollwatch test\n").unwrap();
        assert!(std::fs::write(state.join("probe"), "x").is_err(), "the state_dir is read-only now");
    };
    let repair = || {
        // The operator repairs the disk and mounts it at the same place (over the broken mount:
        // no moment without one, when a write would land in the directory underneath).
        let repaired = dir.path().join("repaired.img");
        std::fs::copy(&image, &repaired).unwrap();
        let _ = Command::new("e2fsck").args(["-f", "-y", "-q"]).arg(&repaired).status().unwrap();
        let ok = Command::new("mount").args(["-o", "loop"]).arg(&repaired).arg(&state).status().unwrap();
        assert!(ok.success());
    };
    // A write caught as the kernel turns the disk read-only fails with EIO rather than EROFS.
    let errors = ["Read-only file system", "Input/output error"];
    journal_fault_stops_acting_not_watching(dir.path(), &state, fault, &errors, repair).await;
}

/// 1,100 idle connections to the own port under a 1,024 file-descriptor limit: the connection
/// cap closes what is beyond it and slow headers time out, so the pollers keep their file
/// descriptors — a healthy target is not rolled back — and a real outage during the flood is
/// still acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_neither_rolls_back_a_healthy_service_nor_hides_an_outage() {
    // This test process holds the 1,100 connections: it needs more descriptors than that.
    let raised = Command::new("prlimit")
        .args(["--pid", &std::process::id().to_string(), "--nofile=8192:8192"])
        .status()
        .unwrap();
    assert!(raised.success());
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::DownDeployment::start().await;
    deployment.healthy.store(true, Ordering::SeqCst);
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["undo"]));
    let marker = dir.path().join("undone");
    let listen = common::free_listen();
    let head = deployment.config_head(&profile, &dir.path().join("state"), &listen);
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "{head}\n[policy]\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[actions.undo]\nkind = \"exec\"\nargv = [\"/usr/bin/touch\", {:?}]\n",
            marker.display().to_string()
        ),
    );
    let mut child = Command::new("prlimit")
        .args(["--nofile=1024:1024", env!("CARGO_BIN_EXE_rollwatch"), "run", "-c"])
        .arg(&config)
        .env("ROLLWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let journal = dir.path().join("state").join("journal.jsonl");
    common::wait_for_journal(&journal, "the first decision", |e| e.iter().any(|e| e["event"] == "decision")).await;
    let mut flood = Vec::new();
    for _ in 0..1100 {
        match tokio::net::TcpStream::connect(&listen).await {
            Ok(s) => flood.push(s),
            Err(e) => panic!("the test could not open its connections: {e}"),
        }
    }
    // While they are held: the health target is polled on, and stays up.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let metrics = |client: reqwest::Client, listen: String| async move {
        common::wait_for("/metrics to answer", common::DEADLINE, async || {
            let answer = client.get(format!("http://{listen}/metrics")).send().await.map_err(|e| e.to_string())?;
            answer.text().await.map_err(|e| e.to_string())
        })
        .await
    };
    let polls = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("rollwatch_target_polls_total{target=\"api\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(0)
    };
    let before = polls(&metrics(client.clone(), listen.clone()).await);
    let text = common::wait_for("15 more polls under the flood", common::DEADLINE, async || {
        let text = metrics(client.clone(), listen.clone()).await;
        if polls(&text) >= before + 15 { Ok(text) } else { Err(text) }
    })
    .await;
    assert!(text.contains("rollwatch_target_up{target=\"api\"} 1\n"), "{text}");
    let refused: u64 = text
        .lines()
        .find(|l| l.starts_with("rollwatch_connections_refused_total "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    assert!(refused >= 800, "the cap closed the connections beyond it: {refused}");
    let events = Journal::read_back(&journal).unwrap();
    assert!(!events.iter().any(|e| e["event"] == "rollback_started"), "a healthy service was rolled back: {events:#?}");
    // A real outage during the flood is acted on.
    deployment.healthy.store(false, Ordering::SeqCst);
    common::wait_for_journal(&journal, "the rollback of the real outage", |e| {
        e.iter().any(|e| e["event"] == "step_finished")
    })
    .await;
    assert!(marker.exists());
    drop(flood);
    common::sigterm(&mut child);
}
