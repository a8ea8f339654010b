//! Exec steps and their children, through the binary: a step's result is its program's exit
//! status, its output is read until the exit plus a short grace, and nothing it started outlives
//! it — a background child holding its stdout, nor one that left the process group with
//! `setsid` (`rollwatch run` is the child subreaper on Linux).

use crate::common;
use std::sync::atomic::Ordering;

/// The processes whose command line holds `text`: their pids and command lines.
fn running_with(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(text) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// The undo step starts two children that would act 3 s later, and exits 0 at once: one
/// backgrounded on the step's stdout, one `setsid`'d away from the group with its output on
/// /dev/null. The step is ok promptly, the rollback completes, and neither child ever acts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_exits_0_leaving_children_is_ok_at_once_and_its_children_never_act() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::DownDeployment::start().await;
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["undo"]));
    let (held, escaped) = (dir.path().join("held-stdout-acted"), dir.path().join("setsid-acted"));
    let script = format!(
        "(sleep 3; touch {held:?}) & setsid /bin/sh -c 'sleep 3; touch {escaped:?}' </dev/null >/dev/null 2>&1 & echo undone",
        held = held.display().to_string(),
        escaped = escaped.display().to_string(),
    );
    let head = deployment.config_head(&profile, &dir.path().join("state"), "127.0.0.1:0");
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "{head}\n[policy]\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[actions.undo]\nkind = \"exec\"\nargv = [\"/bin/sh\", \"-c\", {script:?}]\ntimeout = \"10s\"\n"
        ),
    );
    let sidecar = common::Guard(common::spawn_run(dir.path(), &config));
    let journal = dir.path().join("state").join("journal.jsonl");
    let events =
        common::wait_for_journal(&journal, "the undo step", |e| e.iter().any(|e| e["event"] == "step_finished")).await;
    let step = common::of_kind(&events, "step_finished")[0].clone();
    assert_eq!(step["ok"], true, "{step}");
    assert!(step["duration_ms"].as_i64().unwrap() < 2_500, "not prompt: {step}");
    let detail = step["detail"].as_str().unwrap();
    assert!(detail.starts_with("exit status 0; ended "), "{detail}");
    assert!(detail.contains("sleep (pid "), "the children are named: {detail}");
    assert_eq!(step["output"], "undone\n", "{step}");
    // The service recovers: the rollback completes.
    deployment.healthy.store(true, Ordering::SeqCst);
    let events = common::wait_for_journal(&journal, "the rollback to complete", |e| {
        e.iter().any(|e| e["event"] == "rollback_finished")
    })
    .await;
    let finished = common::of_kind(&events, "rollback_finished")[0];
    assert_eq!(finished["result"], "completed", "{finished}");
    // The children would act 3 s after the step started: they are gone, so they never will.
    // (Their command lines name the markers; one that survived acts and exits within 3 s.)
    let markers = [held.display().to_string(), escaped.display().to_string()];
    common::until("no process left that names a marker", || markers.iter().all(|m| running_with(m).is_empty())).await;
    assert!(!held.exists(), "the child holding the step's stdout survived and acted");
    assert!(!escaped.exists(), "the setsid child survived and acted");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("ended processes the step left running"), "{stderr}");
    sidecar.stop();
}
