//! Notifications against real servers on loopback: a server speaking Slack's Web API
//! (`chat.postMessage`, answering 429 with `Retry-After` once), Debian's aiosmtpd receiving
//! mail from lettre, a webhook that keeps failing (retries, then the fallback channel), and
//! `rollwatch notify` from the command line.

use crate::common;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use rollwatch::journal::{Journal, SharedJournal};
use rollwatch::notify::email::{EmailChannel, Security};
use rollwatch::notify::slack::SlackChannel;
use rollwatch::notify::{Channel, ChannelKind, Console, Notifier, NotifyError, Templates};
use rollwatch::secret::Secret;
use rollwatch::template::messages::blank_vars;
use rollwatch::time::{Span, Stopwatch, SystemClock};

/// What a fake server saw: (authorization header, body) per request, and when.
#[derive(Default)]
struct Seen {
    requests: Vec<(String, String, Stopwatch)>,
}

type Shared = Arc<Mutex<Seen>>;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

/// `chat.postMessage` as Slack answers it; the first call is rate limited.
async fn slack_api(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> axum::response::Response {
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let n = {
        let mut s = seen.lock().unwrap();
        s.requests.push((auth, String::from_utf8_lossy(&body).into_owned(), Stopwatch::start()));
        s.requests.len()
    };
    if n == 1 {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "").into_response();
    }
    let reply = serde_json::json!({"ok": true, "channel": "C024BE91L", "ts": "1700000000.000100",
        "message": {"type": "message", "text": "posted", "ts": "1700000000.000100"}});
    axum::Json(reply).into_response()
}

fn notifier(
    channels: Vec<Channel>,
    journal: Option<SharedJournal>,
) -> (Notifier, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let n = Notifier::start(
        channels,
        Templates::default(),
        reqwest::Client::new(),
        Console::Sender(tx),
        journal,
        Arc::new(SystemClock),
    );
    (n, rx)
}

fn channel(name: &str, kind: ChannelKind, fallback: Option<&str>, attempts: u32) -> Channel {
    Channel { name: name.into(), kind, fallback: fallback.map(str::to_string), attempts, backoff: Span(10) }
}

#[tokio::test]
async fn slack_gets_the_post_after_honouring_retry_after_and_threads_an_incident() {
    let seen: Shared = Arc::default();
    let url = serve(Router::new().route("/api/chat.postMessage", post(slack_api)).with_state(seen.clone())).await;
    let slack =
        SlackChannel::new("#incidents".into(), &Secret("xoxb-test-token".into()), Some(&format!("{url}/api"))).unwrap();
    let (n, _) = notifier(vec![channel("incident", ChannelKind::Slack(slack), None, 3)], None);
    let mut vars = blank_vars();
    vars.insert("reason".into(), "error rate <8%> & rising".into());
    vars.insert("rollback_id".into(), "rb-7".into());
    let delivery = n.send("incident", "rollback_in_progress", &vars).await.unwrap();
    assert_eq!(delivery.attempts, 2);
    // The same rollback's next message replies in its thread; another rollback's does not.
    n.send("incident", "rollback_complete", &vars).await.unwrap();
    vars.insert("rollback_id".into(), "rb-8".into());
    n.send("incident", "rollback_in_progress", &vars).await.unwrap();
    let s = seen.lock().unwrap();
    assert_eq!(s.requests.len(), 4);
    assert!(!s.requests[1].1.contains("thread_ts"), "{}", s.requests[1].1);
    assert!(s.requests[2].1.contains("\"thread_ts\":\"1700000000.000100\""), "{}", s.requests[2].1);
    assert!(!s.requests[3].1.contains("thread_ts"), "{}", s.requests[3].1);
    // The backoff is 10 ms: only the server's Retry-After explains a wait of a second.
    let waited = s.requests[0].2.elapsed_secs() - s.requests[1].2.elapsed_secs();
    assert!(waited >= 0.95, "waited {waited}s");
    let (auth, body, _) = &s.requests[1];
    assert_eq!(auth, "Bearer xoxb-test-token");
    assert!(body.contains("#incidents"), "{body}");
    assert!(body.contains("ROLLBACK IN PROGRESS"), "{body}");
    // Values are escaped for Slack's mrkdwn.
    assert!(body.contains("error rate &lt;8%&gt; &amp; rising"), "{body}");
}

#[tokio::test]
async fn a_slack_api_error_is_not_retried() {
    let url = serve(Router::new().route(
        "/api/chat.postMessage",
        post(|| async { axum::Json(serde_json::json!({"ok": false, "error": "channel_not_found"})) }),
    ))
    .await;
    let slack = SlackChannel::new("#nowhere".into(), &Secret("xoxb-x".into()), Some(&format!("{url}/api"))).unwrap();
    let (n, _) = notifier(vec![channel("incident", ChannelKind::Slack(slack), None, 4)], None);
    match n.send("incident", "escalation", &blank_vars()).await {
        Err(NotifyError::Failed { attempts, message, .. }) => {
            assert_eq!(attempts, 1);
            assert!(message.contains("channel_not_found"), "{message}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_webhook_is_retried_then_the_fallback_channel_gets_the_message() {
    let seen: Shared = Arc::default();
    let url = serve(
        Router::new()
            .route(
                "/hook",
                post(|State(seen): State<Shared>, body: Bytes| async move {
                    seen.lock().unwrap().requests.push((
                        String::new(),
                        String::from_utf8_lossy(&body).into_owned(),
                        Stopwatch::start(),
                    ));
                    StatusCode::BAD_GATEWAY
                }),
            )
            .with_state(seen.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let journal = SharedJournal::new(Journal::open(dir.path()).unwrap());
    let hook = ChannelKind::Webhook { url: format!("{url}/hook"), bearer: None };
    let mut hook = channel("hook", hook, Some("console"), 3);
    hook.backoff = Span(200);
    let (n, mut console) =
        notifier(vec![hook, channel("console", ChannelKind::Console, None, 1)], Some(journal.clone()));
    let delivery = n.send("hook", "rollback_complete", &blank_vars()).await.unwrap();
    assert_eq!(delivery.channel, "console");
    assert_eq!(seen.lock().unwrap().requests.len(), 3, "three attempts at the webhook");
    // Exponential backoff: 200 ms, then 400 ms.
    let at: Vec<f64> = seen.lock().unwrap().requests.iter().map(|r| r.2.elapsed_secs()).collect();
    let (first, second) = (at[0] - at[1], at[1] - at[2]);
    assert!(first >= 0.19 && second >= 0.39 && second > first * 1.5, "gaps {first}s, {second}s");
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap().requests[0].1).unwrap();
    assert_eq!(body["template"], "rollback_complete");
    assert!(body["text"].as_str().unwrap().starts_with("✅ ROLLBACK COMPLETE"));
    assert!(console.recv().await.unwrap().starts_with("✅ ROLLBACK COMPLETE"));
    journal.flush();
    let lines = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
    let events: Vec<&str> = lines.iter().map(|l| l["event"].as_str().unwrap()).collect();
    assert_eq!(events, vec!["notify_failed", "notified"]);
    assert!(lines[0]["error"].as_str().unwrap().contains("failed after 3 attempt(s): HTTP 502"), "{lines:?}");
}

/// Debian's aiosmtpd writing what it receives into a Maildir; killed on drop.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn smtp_server() -> SmtpServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let maildir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new("/usr/bin/python3")
        .args(["-u", "-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir.path().join("mail"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("python3-aiosmtpd is installed by scripts/test.sh");
    common::wait_for("aiosmtpd to start", 20.0, async || tokio::net::TcpStream::connect(("127.0.0.1", port)).await)
        .await;
    SmtpServer { child, port, maildir }
}

#[tokio::test]
async fn email_reaches_a_real_smtp_server() {
    let server = smtp_server().await;
    let email = EmailChannel::new(
        &format!("127.0.0.1:{}", server.port),
        Security::None,
        "rollwatch@example.com",
        &["oncall@example.com".to_string()],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    let (n, _) = notifier(vec![channel("mail", ChannelKind::Email(email), None, 3)], None);
    let mut vars = blank_vars();
    vars.insert("rollback_id".into(), "rb-42".into());
    vars.insert("duration".into(), "3m 5s".into());
    n.send("mail", "rollback_complete", &vars).await.unwrap();
    let new = server.maildir.path().join("mail").join("new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
    assert_eq!(files.len(), 1);
    let mail = std::fs::read_to_string(files[0].as_ref().unwrap().path()).unwrap();
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(mail.contains("From: rollwatch@example.com"), "{mail}");
    assert!(mail.contains("Subject: "), "{mail}");
    assert!(mail.contains("rb-42") && mail.contains("3m 5s"), "{mail}");
}

#[tokio::test]
async fn a_refused_smtp_connection_is_retried_then_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let email = EmailChannel::new(
        &format!("127.0.0.1:{port}"),
        Security::None,
        "rollwatch@example.com",
        &["oncall@example.com".to_string()],
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    let (n, _) = notifier(vec![channel("mail", ChannelKind::Email(email), None, 3)], None);
    match n.send("mail", "escalation", &blank_vars()).await {
        Err(NotifyError::Failed { attempts, .. }) => assert_eq!(attempts, 3),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_notify_command_sends_a_template_with_values() {
    let seen: Shared = Arc::default();
    let url = serve(
        Router::new()
            .route(
                "/hook",
                post(|State(seen): State<Shared>, headers: HeaderMap, body: Bytes| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    seen.lock().unwrap().requests.push((
                        auth,
                        String::from_utf8_lossy(&body).into_owned(),
                        Stopwatch::start(),
                    ));
                    "ok"
                }),
            )
            .with_state(seen.clone()),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let profile = common::write(dir.path(), "p.toml", common::PROFILE);
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [{:?}]\nstate_dir = {:?}\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/\"\n[channels.hook]\nkind = \"webhook\"\nurl = \"{url}/hook\"\n",
            profile.display().to_string(),
            dir.path().join("state").display().to_string()
        ),
    );
    let config = config.display().to_string();
    let c = config.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let args = [
            "notify",
            "-c",
            &c,
            "--channel",
            "hook",
            "--template",
            "rollback_in_progress",
            "--var",
            "reason=checkout errors",
            "--var",
            "profile=checkout",
            "--var",
            "version_from=v2.4.1",
            "--var",
            "target_version=v2.4.0",
            "--var",
            "level=immediate",
            "--var",
            "explanation=error rate 8% > 5%",
            "--var",
            "rollback_id=manual",
        ];
        common::rollwatch(&args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("sent rollback_in_progress to hook"), "{stdout}");
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap().requests[0].1).unwrap();
    assert!(body["text"].as_str().unwrap().contains("Issue: checkout errors"), "{body}");

    let c = config.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        common::rollwatch(&["notify", "-c", &c, "--channel", "hook", "--template", "rollback_complet"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(stdout.contains("did you mean rollback_complete?"), "{stdout}");
    let c = config.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        common::rollwatch(&["notify", "-c", &c, "--channel", "hook", "--template", "escalation", "--var", "sevrity=S1"])
    })
    .await
    .unwrap();
    assert_eq!(code, 1);
    assert!(stdout.contains("did you mean severity?"), "{stdout}");
    // A value the template shows but nobody gave is named, never sent as "unknown".
    let c = config.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        common::rollwatch(&[
            "notify",
            "-c",
            &c,
            "--channel",
            "hook",
            "--template",
            "escalation",
            "--var",
            "severity=S1",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("template \"escalation\" shows finding, response not given"), "{stdout}");
    assert!(stdout.contains("--var finding=..."), "{stdout}");
    assert!(!stdout.contains("rollback_id") && !stdout.contains("profile"), "the context is not asked for: {stdout}");
    assert_eq!(seen.lock().unwrap().requests.len(), 1, "nothing sent");
    // Issue 19, item 11: an ad-hoc escalation names what it is about; the rollback it belongs to
    // (none) and the profile (the config's) are not asked for.
    let c = config.clone();
    let (code, stdout, _) = tokio::task::spawn_blocking(move || {
        common::rollwatch(&[
            "notify",
            "-c",
            &c,
            "--channel",
            "hook",
            "--template",
            "escalation",
            "--var",
            "severity=S2",
            "--var",
            "finding=database failover under way",
            "--var",
            "response=hold deploys",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}");
    let body: serde_json::Value = serde_json::from_str(&seen.lock().unwrap().requests[1].1).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("S2: database failover under way"), "{body}");
    assert!(text.contains("Rollback: none") && text.contains("Profile: p"), "{body}");
    assert!(!text.contains("unknown"), "{body}");
}

/// A server asking to retry after more than a minute does not park the message: the fallback
/// takes it at once. Queues are bounded (the oldest dropped, counted, journalled), and what is
/// still queued at stop is journalled as not sent. Tokio's paused clock: no real waiting.
#[tokio::test(start_paused = true)]
async fn notifications_degrade_visibly() {
    let url =
        serve(Router::new().route(
            "/hook",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "100000")], "slow down") }),
        ))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let journal = SharedJournal::new(Journal::open(dir.path()).unwrap());
    let hook = channel("hook", ChannelKind::Webhook { url: format!("{url}/hook"), bearer: None }, Some("console"), 4);
    let (n, mut console) =
        notifier(vec![hook, channel("console", ChannelKind::Console, None, 1)], Some(journal.clone()));
    let delivery = n.send("hook", "rollback_complete", &blank_vars()).await.unwrap();
    assert_eq!(delivery.channel, "console", "the fallback took it");
    assert!(console.recv().await.unwrap().starts_with("✅ ROLLBACK COMPLETE"));
    journal.flush();
    let lines = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
    let failed = lines.iter().find(|l| l["event"] == "notify_failed").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("failed after 1 attempt(s): HTTP 429"), "{failed}");

    // A channel whose server never answers in time: its queue fills, the oldest go.
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let got = received.clone();
    let stuck = serve(Router::new().route(
        "/hook",
        post(move || async move {
            got.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let journal = SharedJournal::new(Journal::open(dir.path()).unwrap());
    let hook = channel("stuck", ChannelKind::Webhook { url: format!("{stuck}/hook"), bearer: None }, None, 1);
    let (n, _console) = notifier(vec![hook], Some(journal.clone()));
    let extra = 10;
    n.announce("escalation", &blank_vars());
    // The worker takes the first message and waits on the server.
    common::until("the first message at the server", || received.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    for _ in 0..rollwatch::notify::QUEUE_CAP + extra {
        n.announce("escalation", &blank_vars());
    }
    assert_eq!(n.dropped(), extra as u64, "one is being sent, QUEUE_CAP wait, the oldest beyond that dropped");
    n.abandon();
    journal.flush();
    let lines = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
    let count = |event: &str| lines.iter().filter(|l| l["event"] == event).count();
    assert_eq!(count("notify_dropped"), extra);
    assert_eq!(count("notify_unsent"), rollwatch::notify::QUEUE_CAP);
}

/// Through a config file and the binary: a webhook answering `429 Retry-After: 100000` hands its
/// message to the fallback channel at once (not in a day), and a channel whose server never
/// answers has what it could not send journalled as `notify_unsent` when rollwatch stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_that_cannot_deliver_degrades_visibly_through_the_binary() {
    let limited =
        serve(Router::new().route(
            "/hook",
            post(|| async { (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "100000")], "slow down") }),
        ))
        .await;
    let stuck = serve(Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK
        }),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::DownDeployment::start().await;
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["undo"]));
    let state = dir.path().join("state");
    let head = deployment.config_head(&profile, &state, &common::free_listen());
    let marker = dir.path().join("undone");
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            r#"{head}
[policy]
verify_for = "30s"
verify_stable = "500ms"

[channels.hook]
kind = "webhook"
url = "{limited}/hook"
fallback = "console"

[channels.stuck]
kind = "webhook"
url = "{stuck}/hook"

[channels.console]
kind = "console"

[actions.undo]
kind = "exec"
argv = ["/usr/bin/touch", {marker:?}]
"#,
            marker = marker.display().to_string()
        ),
    );
    let mut child = common::spawn_run(dir.path(), &config);
    let journal = state.join("journal.jsonl");
    common::wait_for_journal(&journal, "the rollback's step", |e| e.iter().any(|e| e["event"] == "step_finished"))
        .await;
    // The undo worked: verification passes and the procedure announces completion.
    deployment.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let events = common::wait_for_journal(&journal, "the fallback's delivery of the hook's message", |e| {
        e.iter().any(|e| e["event"] == "notified" && e["channel"] == "console" && e["template"] == "rollback_complete")
            && e.iter().any(|e| e["event"] == "notify_failed" && e["channel"] == "hook")
    })
    .await;
    assert!(marker.exists());
    let failed = events.iter().find(|e| e["event"] == "notify_failed" && e["channel"] == "hook").unwrap();
    assert!(failed["error"].as_str().unwrap().contains("asked to retry after"), "{failed}");
    assert_eq!(failed["rollback_id"], "rb-1", "{failed}");
    // The console printed the hook's message as its fallback, and its own copy: told apart.
    let carried = events.iter().filter(|e| e["event"] == "notified" && e["fallback_for"] == "hook").count();
    let own = events
        .iter()
        .filter(|e| e["event"] == "notified" && e["channel"] == "console" && e["fallback_for"].is_null())
        .count();
    assert!(carried >= 1 && own >= 1, "{events:#?}");
    common::sigterm(&mut child);
    let events = Journal::read_back(&journal).unwrap();
    let unsent: Vec<_> = events.iter().filter(|e| e["event"] == "notify_unsent").collect();
    assert!(unsent.iter().all(|e| e["channel"] == "stuck"), "{unsent:#?}");
    assert!(!unsent.is_empty(), "the stuck channel's queued message is on record: {events:#?}");
    assert_eq!(events.last().unwrap()["event"], "stopped");
}
