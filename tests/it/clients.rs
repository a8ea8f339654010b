//! Slow clients against the own server, through the binary: connections that send nothing hold
//! no slot a command or a hook needs. More half-open connections than `max_connections`, kept
//! open (each one the server closes is opened again at once), and meanwhile `rollwatch pause` /
//! `resume` and Alertmanager's hook all succeed.

use crate::common;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rollwatch::time::Stopwatch;
use tokio::io::AsyncReadExt;

const TOKEN: &str = "token-for-the-slow-clients-test";

/// Keeps `n` connections to `addr` open that never send a byte: each one the server closes is
/// opened again at once. Counts the connections opened in `opened`.
fn flood(addr: String, n: usize, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let (addr, stop, opened) = (addr.clone(), stop.clone(), opened.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    let Ok(mut sock) = tokio::net::TcpStream::connect(&addr).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    // Held until the server closes it (or the test ends).
                    loop {
                        match tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await {
                            Ok(Ok(0) | Err(_)) => break,
                            Ok(Ok(_)) => {}
                            Err(_) if stop.load(Ordering::SeqCst) => return,
                            Err(_) => {}
                        }
                    }
                }
            })
        })
        .collect()
}

/// Runs the CLI with the token; returns (exit code, output, seconds taken).
async fn cli(args: &[&str]) -> (i32, String, f64) {
    let watch = Stopwatch::start();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(args)
        .env("RW_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text, watch.elapsed_secs())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_beyond_the_cap_lock_out_neither_commands_nor_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = common::DownDeployment::start().await;
    deployment.healthy.store(true, Ordering::SeqCst);
    let profile = common::write(dir.path(), "profile.toml", common::down_profile(&["undo"]));
    let listen = common::free_listen();
    let head = deployment.config_head(&profile, &dir.path().join("state"), &listen);
    // Top-level keys come before the head's [[target]] tables.
    let config = common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "api_token_env = \"RW_TOKEN\"\nmax_connections = 16\n{head}\n[actions.undo]\nkind = \"exec\"\nargv = [\"/bin/true\"]\n"
        ),
    );
    let c = config.display().to_string();
    let sidecar = common::Guard(
        std::process::Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(["run", "-c", &c])
            .env("RW_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    common::wait_for("the sidecar to answer", common::DEADLINE, async || {
        client.get(format!("http://{listen}/healthz")).send().await
    })
    .await;

    // 40 half-open connections against a cap of 16, kept open.
    let (stop, opened) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let flooders = flood(listen.clone(), 40, stop.clone(), opened.clone());
    common::until("the flood to open its connections", || opened.load(Ordering::Relaxed) >= 40).await;
    let hook = |status: &str| {
        format!(
            r#"{{"version":"4","groupKey":"g","status":"{status}","receiver":"rollwatch","groupLabels":{{}},
            "commonLabels":{{}},"commonAnnotations":{{}},"externalURL":"http://am","truncatedAlerts":0,
            "alerts":[{{"status":"{status}","labels":{{"alertname":"Flood"}},"annotations":{{}},
            "startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"f"}}]}}"#
        )
    };
    let mut failures = Vec::new();
    let mut slowest = 0.0f64;
    for round in 0..6 {
        let (code, out, secs) = cli(&["pause", "-c", &c, "--for", "10m"]).await;
        slowest = slowest.max(secs);
        if code != 0 || !out.starts_with("paused until") || secs > 12.0 {
            failures.push(format!("round {round}: pause: exit {code} after {secs:.1} s: {out}"));
        }
        let (code, out, secs) = cli(&["resume", "-c", &c]).await;
        slowest = slowest.max(secs);
        if code != 0 || out != "resumed\n" || secs > 12.0 {
            failures.push(format!("round {round}: resume: exit {code} after {secs:.1} s: {out}"));
        }
        let status = if round % 2 == 0 { "firing" } else { "resolved" };
        let sent = client
            .post(format!("http://{listen}/hooks/alertmanager"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(hook(status))
            .timeout(Duration::from_secs(12))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => failures.push(format!("round {round}: hook: HTTP {}", r.status())),
            Err(e) => failures.push(format!("round {round}: hook: {e}")),
        }
    }
    let flood_opened = opened.load(Ordering::Relaxed);
    stop.store(true, Ordering::SeqCst);
    for f in flooders {
        let _ = f.await;
    }
    assert!(failures.is_empty(), "locked out under the flood:\n{}", failures.join("\n"));
    eprintln!("slowest command under the flood: {slowest:.2} s");
    // The flood was real: the server kept closing connections for the cap, and they came back.
    let metrics = client.get(format!("http://{listen}/metrics")).send().await.unwrap().text().await.unwrap();
    let closed: u64 = metrics
        .lines()
        .find(|l| l.starts_with("rollwatch_connections_refused_total "))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap();
    assert!(closed >= 24, "closed for the cap: {closed}");
    assert!(flood_opened > 40, "the flood reopened what was closed: {flood_opened}");
    sidecar.stop();
}
