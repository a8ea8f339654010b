//! The acting subcommands against a real running sidecar in `approve` mode: `approve` (wrong
//! id, held back by `pause` and by `silence`, then granted), `resume`, `unsilence`, the bearer
//! token; then `history` (text and `--json`) and `annotate` on the journal it left.

use crate::common;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;

use serde_json::Value;

const TOKEN: &str = "approve-token-for-tests";

/// Runs the binary with the API token set (or not); returns (code, stdout + stderr).
fn cli(args: &[&str], token: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollwatch"));
    cmd.args(args);
    if token {
        cmd.env("RW_TOKEN", TOKEN);
    } else {
        cmd.env_remove("RW_TOKEN");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_pause_silence_history_and_annotate() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::DownDeployment::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["undo"]));
    let marker = dir.path().join("undone");
    let head = deployment.config_head(&profile, &dir.path().join("state"), &format!("127.0.0.1:{port}"));
    let acting = format!(
        "\n[policy]\nmode = \"approve\"\nverify_for = \"30s\"\nverify_stable = \"500ms\"\n\n[actions.undo]\nkind = \"exec\"\nargv = [\"/usr/bin/touch\", {:?}]\n",
        marker.display().to_string()
    );
    // Top-level keys come before the head's [[target]] tables.
    let config = common::write(dir.path(), "rollwatch.toml", format!("api_token_env = \"RW_TOKEN\"\n{head}{acting}"));
    let config = config.display().to_string();
    let journal = dir.path().join("state").join("journal.jsonl");
    let mut sidecar: Child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["run", "-c", &config])
        .env("RW_TOKEN", TOKEN)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let events =
        common::wait_for_journal(&journal, "an approval", |e| e.iter().any(|e| e["event"] == "approval_opened")).await;
    let id =
        events.iter().find(|e| e["event"] == "approval_opened").unwrap()["approval_id"].as_str().unwrap().to_string();
    // The open approval shows on /status and /metrics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let status: Value =
        client.get(format!("http://127.0.0.1:{port}/status")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["acting"]["mode"], "approve");
    assert_eq!(status["acting"]["approvals"][0]["approval_id"], id.as_str());
    let metrics = client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("rollwatch_approvals_open 1\n"), "{metrics}");
    let c = config.as_str();
    let run = |args: &[&str]| cli(args, true);
    let (code, out) = run(&["approve", "-c", c, "ap-999"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no open approval \"ap-999\""), "{out}");
    let (code, out) = cli(&["approve", "-c", c, &id], false);
    assert_eq!(code, 1);
    assert!(out.contains("api_token_env names RW_TOKEN, which is not set"), "{out}");

    let (code, out) = run(&["pause", "-c", c, "--for", "10m"]);
    assert_eq!((code, out.starts_with("paused until")), (0, true), "{out}");
    let (code, out) = run(&["approve", "-c", c, &id]);
    assert_eq!(code, 1);
    assert!(out.contains("paused until"), "{out}");
    assert_eq!(run(&["resume", "-c", c]), (0, "resumed\n".to_string()));

    let (code, out) = run(&["silence", "-c", c, "down", "--for", "1m"]);
    assert_eq!((code, out.starts_with("down silenced until")), (0, true), "{out}");
    let (code, out) = run(&["approve", "-c", c, &id]);
    assert_eq!(code, 1);
    assert!(out.contains("silenced: down"), "{out}");
    assert_eq!(run(&["unsilence", "-c", c, "down"]).0, 0);
    assert!(!marker.exists(), "nothing acted before the approval");

    let (code, out) = run(&["approve", "-c", c, &id]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("approval {id} granted: rollback rb-")), "{out}");
    common::wait_for_journal(&journal, "the undo step", |e| e.iter().any(|e| e["event"] == "step_finished")).await;
    assert!(marker.exists());
    deployment.healthy.store(true, Ordering::SeqCst);
    common::wait_for_journal(&journal, "the rollback to verify", |e| {
        e.iter().any(|e| e["event"] == "rollback_finished")
    })
    .await;
    common::sigterm(&mut sidecar);

    let (code, out) = run(&["history", "-c", c]);
    assert_eq!(code, 0, "{out}");
    // The undo here changes no version: the version source still reads v2 after it, which is
    // not what was restored (no good version is known either).
    assert!(out.contains(" profile v2 → ?, completed in "), "{out}");
    assert!(out.contains(": Is system down (down = 0)"), "{out}");
    assert!(out.contains("step 1 run undo: ok, exit status 0"), "{out}");
    assert!(!out.contains("step 2"), "one step ran, numbered 1: {out}");
    let rb = out.split_whitespace().next().unwrap().to_string();
    let (code, out) = run(&["annotate", "-c", c, "rb-404", "--root-cause", "x"]);
    assert_eq!(code, 1);
    assert!(out.contains(&format!("no rollback \"rb-404\" in the journal (known: {rb})")), "{out}");
    let (code, out) = run(&["annotate", "-c", c, &rb, "--root-cause", "Missing null check in new code path"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["history", "-c", c, "--json"]);
    assert_eq!(code, 0, "{out}");
    let history: Value = serde_json::from_str(&out).unwrap();
    let entry = &history["rollbacks"][0];
    assert_eq!(entry["id"], rb.as_str());
    assert_eq!(entry["version_from"], "v2");
    assert!(entry["version_to"].is_null(), "{entry}");
    assert_eq!(entry["result"], "completed");
    assert_eq!(entry["root_cause"], "Missing null check in new code path");
    assert!(entry["date"].as_str().unwrap().ends_with('Z'), "{entry}");
    assert!(entry["duration_minutes"].is_number(), "{entry}");
    assert!(entry["reason"].as_str().unwrap().contains("Is system down"), "{entry}");
}
