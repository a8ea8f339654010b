//! Helpers shared by the integration suites: temp files and running the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Writes `text` to `dir/name`, returning the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Runs the built `rollwatch` binary; returns (exit code, stdout, stderr).
pub fn rollwatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run rollwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small profile used by several suites: errors above 5% roll back, a health target down for
/// 30 s rolls back.
pub const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m", 10)'

[[rule]]
name = "errors"
when = 'error_rate > 0.05'

[[rule]]
name = "down"
when = 'up("api") == 0'
for = "30s"

[[decide]]
ask = "Is system down?"
if = 'firing("down")'
then = "rollback"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("errors")'
then = "rollback"
"#;

/// Serves HTTP on a fresh loopback port: `reply(request)` gives the status line's code and
/// reason, and the body. Returns `host:port`.
pub async fn serve_http(reply: impl Fn(&str) -> (&'static str, String) + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let (status, body) = reply(&String::from_utf8_lossy(&buf[..n]));
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = sock.write_all(response.as_bytes()).await;
            });
        }
    });
    addr.to_string()
}

/// A service whose `/metrics` counters grow by `per_tick` requests every `every`, the share
/// `permille`/1000 of them failing (code 500). Returns the metrics URL.
pub async fn counters_service(permille: Arc<AtomicU64>, per_tick: f64, every: Duration) -> String {
    let counters = Arc::new(std::sync::Mutex::new((0.0f64, 0.0f64)));
    {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                let share = permille.load(Ordering::SeqCst) as f64 / 1000.0;
                let mut c = counters.lock().unwrap();
                c.0 += per_tick * (1.0 - share);
                c.1 += per_tick * share;
            }
        });
    }
    let addr = serve_http(move |_| {
        let (ok, err) = *counters.lock().unwrap();
        ("200 OK", format!("http_requests_total{{code=\"200\"}} {ok}\nhttp_requests_total{{code=\"500\"}} {err}\n"))
    })
    .await;
    format!("http://{addr}/metrics")
}
