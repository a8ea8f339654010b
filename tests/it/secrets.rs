//! Secrets come only from the environment and never show: the real binary runs with every kind
//! of secret set (API token, target bearer token, Slack bot token, webhook token, SMTP password,
//! action bearer token), at debug log level, while a rollback fails and every notification
//! channel fails too — then its logs, `/status`, `/metrics`, the journal and every error message
//! are searched for each secret value.

use crate::common;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const SECRETS: &[(&str, &str)] = &[
    ("RW_API_TOKEN", "api-token-S3CRET-1"),
    ("RW_TARGET_TOKEN", "target-token-S3CRET-2"),
    ("RW_SLACK_TOKEN", "xoxb-S3CRET-3"),
    ("RW_HOOK_TOKEN", "hook-token-S3CRET-4"),
    ("RW_SMTP_PASSWORD", "smtp-password-S3CRET-5"),
    ("RW_ACTION_TOKEN", "action-token-S3CRET-6"),
];

fn assert_clean(what: &str, text: &str) {
    for (var, value) in SECRETS {
        assert!(!text.contains(value), "{what} shows the value of {var}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_status_metrics_journal_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    // Every server here refuses: the target is down, the undo is forbidden, Slack says
    // invalid_auth, the webhook says 401; nothing listens for SMTP.
    let down = Arc::new(AtomicBool::new(true));
    let d = down.clone();
    let target = common::serve_http(move |_| match d.load(Ordering::SeqCst) {
        true => ("503 Service Unavailable", "down".into()),
        false => ("200 OK", "ok".into()),
    })
    .await;
    // The refusing server echoes the request it got, token and all (as careless ones do).
    let forbidden = common::serve_http(|request| ("403 Forbidden", format!("no: {request}"))).await;
    let slack = common::serve_http(|_| ("200 OK", r#"{"ok":false,"error":"invalid_auth"}"#.into())).await;
    let smtp_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["leak", "cut", "env", "undo"]));
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            r##"profiles = [{profile:?}]
state_dir = {state:?}
listen = "127.0.0.1:{api_port}"
api_token_env = "RW_API_TOKEN"
eval_interval = "200ms"

[[target]]
name = "api"
kind = "health"
url = "http://{target}/health"
interval = "200ms"
bearer_token_env = "RW_TARGET_TOKEN"

[channels.slack]
kind = "slack"
channel = "#incidents"
token_env = "RW_SLACK_TOKEN"
api_url = "http://{slack}/api"
attempts = 2
backoff = "10ms"

[channels.hook]
kind = "webhook"
url = "http://{forbidden}/hook"
token_env = "RW_HOOK_TOKEN"
attempts = 2
backoff = "10ms"

[channels.mail]
kind = "email"
smtp = "127.0.0.1:{smtp_port}"
smtp_security = "none"
smtp_user = "rollwatch"
smtp_password_env = "RW_SMTP_PASSWORD"
from = "rollwatch@example.com"
to = ["oncall@example.com"]
attempts = 2
backoff = "10ms"

# A careless script printing a token it was given.
[actions.leak]
kind = "exec"
argv = ["/bin/sh", "-c", "echo \"using token $T\""]
env_from = {{ T = "RW_ACTION_TOKEN" }}

# A secret right at the 4 KiB cut of the journalled output.
[actions.cut]
kind = "exec"
argv = ["/bin/sh", "-c", "printf '%4085s' x; echo \"$T\""]
env_from = {{ T = "RW_ACTION_TOKEN" }}

# Everything an action sees of rollwatch's environment: none of its secrets.
[actions.env]
kind = "exec"
argv = ["/usr/bin/env"]

[actions.undo]
kind = "http"
method = "POST"
url = "http://{forbidden}/rollback"
bearer_token_env = "RW_ACTION_TOKEN"
"##,
            profile = profile.display().to_string(),
            state = dir.path().join("state").display().to_string(),
        ),
    );
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["run", "-c"])
        .arg(&config)
        .envs(SECRETS.iter().copied())
        .env("ROLLWATCH_LOG", "debug")
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let journal = dir.path().join("state").join("journal.jsonl");
    common::wait_for_journal(&journal, "the rollback and every notification to fail", |events| {
        let failed: Vec<&str> =
            events.iter().filter(|e| e["event"] == "notify_failed").filter_map(|e| e["channel"].as_str()).collect();
        let escalated = events.iter().any(|e| e["event"] == "escalation");
        escalated && ["slack", "hook", "mail"].iter().all(|c| failed.iter().filter(|f| *f == c).count() >= 2)
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{api_port}");
    let token = SECRETS[0].1;
    let status = client.get(format!("{api}/status")).send().await.unwrap().text().await.unwrap();
    assert!(status.contains("\"acting\""), "{status}");
    assert_clean("/status", &status);
    let html =
        client.get(format!("{api}/status")).header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    assert_clean("/status (HTML)", &html);
    assert_clean("/metrics", &client.get(format!("{api}/metrics")).send().await.unwrap().text().await.unwrap());
    // A wrong token is refused without echoing anything; the right one works.
    let wrong = client.post(format!("{api}/pause")).bearer_auth("not-it").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let body = wrong.text().await.unwrap();
    assert!(!body.contains("not-it"), "{body}");
    let paused = client.post(format!("{api}/pause?for=1m")).bearer_auth(token).send().await.unwrap();
    assert_eq!(paused.status(), 200);
    common::sigterm(&mut child);

    let journal_text = std::fs::read_to_string(&journal).unwrap();
    assert!(journal_text.contains("notify_failed") && journal_text.contains("HTTP 403"), "{journal_text}");
    assert!(journal_text.contains("using token ***"), "the script's output is journalled, masked: {journal_text}");
    assert!(journal_text.contains("PATH="), "env printed the clean environment: {journal_text}");
    assert_clean("the journal", &journal_text);
    for (_, value) in SECRETS {
        let part = &value[..10];
        assert!(!journal_text.contains(part), "part of a secret ({part}) at the output's cut: {journal_text}");
    }
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(logs.contains("notification failed") && logs.contains("step failed"), "{logs}");
    assert_clean("the logs", &logs);
    assert_clean("stdout", &std::fs::read_to_string(dir.path().join("stdout")).unwrap());

    // A missing secret is named by its variable, never by a value.
    let out = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["run", "-c"])
        .arg(&config)
        .envs(SECRETS.iter().copied().filter(|(k, _)| *k != "RW_SLACK_TOKEN"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(text.contains("channel \"slack\": environment variable RW_SLACK_TOKEN is not set"), "{text}");
    assert_clean("the missing-secret error", &text);
}
