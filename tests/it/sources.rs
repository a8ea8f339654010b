//! Sources against real HTTP/TCP servers on 127.0.0.1: healthy and hostile targets (500,
//! timeout, refused, invalid UTF-8, malformed exposition, oversized body), authentication, and
//! independent polling (a dead target never delays a live one). Real sockets, so short real
//! intervals and generous deadlines; no test sleeps to get its result.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rollwatch::secret::Secret;
use rollwatch::source::poller::http_client;
use rollwatch::source::{Auth, SourceError, Target, TargetKind, probe, run_target};
use rollwatch::time::{Span, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test server does with a request.
#[derive(Clone)]
enum Reply {
    /// Status line, extra headers and body.
    Http(u16, &'static str, Vec<u8>),
    /// Accepts and never answers.
    Hang,
    /// A 200 whose chunked body never ends (until the client hangs up).
    Endless,
}

/// Serves `reply(request)` on a fresh loopback port; returns the base URL and a request counter.
async fn serve(reply: impl Fn(&str) -> Reply + Send + Sync + 'static) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let reply = reply.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += n,
                    }
                }
                let request = String::from_utf8_lossy(&buf[..got]).into_owned();
                match reply(&request) {
                    Reply::Http(status, headers, body) => {
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n",
                            body.len()
                        );
                        let _ = sock.write_all(head.as_bytes()).await;
                        let _ = sock.write_all(&body).await;
                    }
                    Reply::Hang => tokio::time::sleep(Duration::from_secs(30)).await,
                    Reply::Endless => {
                        let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").await;
                        let chunk = format!("10000\r\n{}\r\n", "m 1\n".repeat(0x10000 / 4));
                        while sock.write_all(chunk.as_bytes()).await.is_ok() {}
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), hits)
}

fn target(name: &str, kind: TargetKind) -> Target {
    Target {
        name: name.into(),
        kind,
        interval: Span(50),
        timeout: Span(1000),
        critical: false,
        max_body: 1024 * 1024,
        auth: None,
        keep: None,
        sample_limit: rollwatch::source::DEFAULT_SAMPLE_LIMIT,
    }
}

fn prom(url: &str) -> Target {
    target("app", TargetKind::Prometheus { url: format!("{url}/metrics") })
}

async fn once(t: &Target) -> rollwatch::source::Observation {
    probe(&http_client().unwrap(), t, &SystemClock).await
}

#[tokio::test]
async fn a_healthy_exposition_becomes_samples() {
    let body = b"# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 10\njob:x:rate5m{target=\"spoofed\"} 0.5\n".to_vec();
    let (url, _) = serve(move |_| Reply::Http(200, "content-type: text/plain\r\n", body.clone())).await;
    let obs = once(&prom(&url)).await;
    assert!(obs.up, "{:?}", obs.error);
    assert_eq!(obs.samples.len(), 2);
    assert_eq!(obs.samples[1].0.name, "job:x:rate5m");
    // Every scraped series carries target="NAME", overriding one the exposition claims.
    assert!(obs.samples.iter().all(|(k, _)| k.label("target") == "app"), "{:?}", obs.samples);
    assert!(obs.duration_secs > 0.0);
}

#[tokio::test]
async fn http_500_is_down_with_its_status() {
    let (url, _) = serve(|_| Reply::Http(500, "", b"oops".to_vec())).await;
    let obs = once(&prom(&url)).await;
    assert!(!obs.up);
    assert_eq!(obs.error, Some(SourceError::Status(500)));
    assert_eq!(obs.error.unwrap().reason(), "status");
}

#[tokio::test]
async fn a_target_that_never_answers_times_out() {
    let (url, _) = serve(|_| Reply::Hang).await;
    let mut t = prom(&url);
    t.timeout = Span(300);
    let obs = once(&t).await;
    assert!(!obs.up);
    assert!(matches!(obs.error, Some(SourceError::Timeout(_)) | Some(SourceError::Http(_))), "{:?}", obs.error);
    assert!(obs.duration_secs < 5.0, "the timeout is hard: {}", obs.duration_secs);
}

#[tokio::test]
async fn a_refused_connection_is_down() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let obs = once(&prom(&format!("http://127.0.0.1:{port}"))).await;
    assert!(!obs.up);
    assert!(matches!(obs.error, Some(SourceError::Connect(_))), "{:?}", obs.error);
    let tcp = once(&target("db", TargetKind::Tcp { address: format!("127.0.0.1:{port}") })).await;
    assert!(!tcp.up);
}

#[tokio::test]
async fn invalid_utf8_is_down() {
    let (url, _) = serve(|_| Reply::Http(200, "", b"m{a=\"\xff\xfe\"} 1\n".to_vec())).await;
    let obs = once(&prom(&url)).await;
    assert!(!obs.up);
    assert_eq!(obs.error, Some(SourceError::NotUtf8(5)));
}

#[tokio::test]
async fn a_malformed_exposition_is_down_and_a_partly_bad_one_counts_its_bad_lines() {
    let (url, _) = serve(|_| Reply::Http(200, "", b"<html>not metrics</html>\n".to_vec())).await;
    let obs = once(&prom(&url)).await;
    assert!(!obs.up);
    assert!(matches!(obs.error, Some(SourceError::Malformed { bad: 1, line: 1, .. })), "{:?}", obs.error);

    let (url, _) = serve(|_| Reply::Http(200, "", b"good 1\nbad{ 2\nalso_good 3\n".to_vec())).await;
    let obs = once(&prom(&url)).await;
    assert!(obs.up);
    assert_eq!((obs.samples.len(), obs.bad_lines), (2, 1));
}

#[tokio::test]
async fn a_body_over_max_body_is_refused_without_buffering_it() {
    let (url, _) = serve(|_| Reply::Http(200, "", vec![b'#'; 2 * 1024 * 1024])).await;
    let obs = once(&prom(&url)).await;
    assert_eq!(obs.error, Some(SourceError::BodyTooLarge(1024 * 1024)), "declared length over the cap");

    // An endless chunked body: the read stops at the cap instead of growing forever.
    let (url, _) = serve(|_| Reply::Endless).await;
    let mut t = prom(&url);
    t.timeout = Span(10_000);
    let obs = once(&t).await;
    assert_eq!(obs.error, Some(SourceError::BodyTooLarge(1024 * 1024)));
}

#[tokio::test]
async fn health_targets_read_status_and_json_fields() {
    let (url, _) = serve(|req| {
        if req.starts_with("GET /health/ready") {
            Reply::Http(
                200,
                "content-type: application/json\r\n",
                br#"{"status":"ok","version":"v1.2.4","checksum_ok":true}"#.to_vec(),
            )
        } else {
            Reply::Http(503, "", b"{}".to_vec())
        }
    })
    .await;
    let obs = once(&target("api", TargetKind::Health { url: format!("{url}/health/ready") })).await;
    assert!(obs.up, "{:?}", obs.error);
    assert_eq!(obs.samples.len(), 1);
    assert_eq!((obs.samples[0].0.name.as_str(), obs.samples[0].1), ("checksum_ok", 1.0));
    assert_eq!(obs.strings, [("status".to_string(), "ok".to_string()), ("version".to_string(), "v1.2.4".to_string())]);
    let down = once(&target("api", TargetKind::Health { url: format!("{url}/other") })).await;
    assert_eq!(down.error, Some(SourceError::Status(503)));
}

#[tokio::test]
async fn bearer_and_basic_auth_are_sent() {
    let (url, _) = serve(|req| {
        let lower = req.to_ascii_lowercase();
        if lower.contains("authorization: bearer s3cret") || lower.contains("authorization: basic dxnlcjpwyxnz") {
            Reply::Http(200, "", b"m 1\n".to_vec())
        } else {
            Reply::Http(401, "", vec![])
        }
    })
    .await;
    let mut t = prom(&url);
    assert_eq!(once(&t).await.error, Some(SourceError::Status(401)));
    t.auth = Some(Auth::Bearer(Secret("s3cret".into())));
    assert!(once(&t).await.up);
    t.auth = Some(Auth::Basic { username: "user".into(), password: Secret("pass".into()) });
    assert!(once(&t).await.up);
    assert!(!format!("{t:?}").contains("pass\""), "secrets never print");
}

#[tokio::test]
async fn a_dead_target_never_delays_a_live_one() {
    let (live, _) = serve(|_| Reply::Http(200, "", b"m 1\n".to_vec())).await;
    let (dead, dead_hits) = serve(|_| Reply::Hang).await;
    let client = http_client().unwrap();
    let (tx, mut rx) = rollwatch::source::queue::queue(rollwatch::source::queue::QUEUE_SAMPLES);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut slow = prom(&dead);
    slow.name = "dead".into();
    // Polled every 200 ms (its first poll within that, whatever its offset) but stuck 5 s.
    slow.timeout = Span(5_000);
    slow.interval = Span(200);
    for t in [prom(&live), slow] {
        let now = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(run_target(t, client.clone(), Arc::new(SystemClock), tx.clone(), shutdown.clone(), now));
    }
    drop(tx);
    // Ten polls of the live target (every 50 ms) arrive while the dead one is stuck in its
    // 5-second timeout.
    let live_polls = tokio::time::timeout(Duration::from_secs(4), async {
        let mut live_polls = 0;
        while live_polls < 10 {
            let obs = rx.recv().await.expect("live polls keep coming").obs;
            assert_eq!(obs.target, "app", "the dead target has not answered yet");
            assert!(obs.up);
            live_polls += 1;
        }
        live_polls
    })
    .await;
    assert_eq!(live_polls, Ok(10), "ten live polls within the dead target's timeout");
    assert_eq!(dead_hits.load(Ordering::SeqCst), 1, "the dead target was polled once and is still waiting");
    stop.send(true).unwrap();
    // Every task ends on shutdown: the channel closes.
    let rest = tokio::time::timeout(Duration::from_secs(5), async { while rx.recv().await.is_some() {} }).await;
    assert!(rest.is_ok(), "pollers stop on shutdown");
}

/// A poll asked for now is made at once, whatever the target's interval and offset: a
/// decision waiting to know which version it is about does not wait for the next scheduled one.
#[tokio::test]
async fn a_poll_asked_for_now_is_made_at_once() {
    let (url, hits) = serve(|_| Reply::Http(200, "", b"m 1\n".to_vec())).await;
    let client = http_client().unwrap();
    let (tx, mut rx) = rollwatch::source::queue::queue(rollwatch::source::queue::QUEUE_SAMPLES);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut t = prom(&url);
    t.interval = Span::from_secs(3_600);
    let now = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(run_target(t, client, Arc::new(SystemClock), tx, shutdown, now.clone()));
    for asked in 1..=3 {
        now.notify_one();
        let obs = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(obs.expect("polled when asked, not an hour later").expect("the poller runs").obs.up);
        // The first ask replaces the wait for the target's offset, and its poll is the
        // interval's first: no other poll is made.
        assert_eq!(hits.load(Ordering::SeqCst), asked, "one poll per ask");
    }
    stop.send(true).unwrap();
}

/// Memory is bounded by configuration, whatever a target sends: series no rule reads are
/// dropped as they are parsed (counted, never stored), and `sample_limit` rejects a poll whole —
/// the target is then unknown for it, never down.
#[tokio::test]
async fn series_no_rule_reads_are_dropped_and_sample_limit_rejects_a_poll_whole() {
    let mut body = String::with_capacity(600_000 * 20);
    for i in 0..600_000 {
        body.push_str(&format!("j{{i=\"{i}\"}} 1\n"));
    }
    body.push_str("http_requests_total{code=\"200\"} 7\n");
    let bytes = body.into_bytes();
    assert!(bytes.len() < 10 << 20, "inside the default max_body");
    let (url, _) = serve(move |_| Reply::Http(200, "content-type: text/plain\r\n", bytes.clone())).await;
    let mut t = prom(&url);
    t.max_body = 10 << 20;
    t.keep = Some(std::sync::Arc::new(["http_requests_total".to_string()].into()));
    let obs = once(&t).await;
    assert!(obs.up, "{:?}", obs.error);
    assert_eq!(obs.samples.len(), 1);
    assert_eq!(obs.samples[0].0.name, "http_requests_total");
    assert_eq!(obs.dropped, 600_000);

    // Without the filter, 600,001 samples are more than a sample_limit of 100,000.
    t.keep = None;
    let obs = once(&t).await;
    let e = obs.error.clone().expect("rejected");
    assert_eq!(e.reason(), "sample_limit");
    assert!(e.to_string().contains("600001 samples, more than sample_limit (100000)"), "{e}");
    let mut store = rollwatch::window::Store::new(Span(600_000));
    let up = store.add_selector(rollwatch::selector::Selector::parse(r#"up{target="app"}"#).unwrap());
    let mut evidence = rollwatch::source::Evidence::new(store);
    evidence.observe(&obs);
    assert_eq!(evidence.store().up(up, rollwatch::window::At::new(obs.at)), None, "unknown, not down");
}

/// A timeout that expires while rollwatch's own scheduling lag exceeds it is rollwatch's fault:
/// the target is unknown for that poll, not down. The lag is made by blocking the runtime's only
/// thread while a poll waits on a server that does not answer.
#[test]
fn a_timeout_during_rollwatch_s_own_lag_is_its_own_fault() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (url, _) = serve(|_| Reply::Hang).await;
        let mut t = prom(&url);
        t.timeout = Span(100);
        let client = http_client().unwrap();
        let poll = tokio::spawn(async move { probe(&client, &t, &SystemClock).await });
        tokio::task::yield_now().await;
        // Overloaded: the one runtime thread is busy for 5 timeouts.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let obs = poll.await.unwrap();
        let e = obs.error.expect("failed");
        assert_eq!(e.reason(), "own", "{e}");
        assert!(e.is_unknown());
    });
    // Without lag, the same silence is the target's timeout.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (url, _) = serve(|_| Reply::Hang).await;
        let mut t = prom(&url);
        t.timeout = Span(100);
        let obs = once(&t).await;
        assert_eq!(obs.error.expect("failed").reason(), "timeout");
    });
}
