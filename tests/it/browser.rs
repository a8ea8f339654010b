//! `/status` in a real browser: Debian's Chromium, headless, loads the page of a sidecar that
//! has just rolled a bad version back, and the rendered DOM shows the version, a sparkline per
//! signal and the rollback in the history — with no script error in the browser's console.

use std::process::Command;

use crate::common::{VersionedService, of_kind, sigterm, spawn_run, versioned_config, wait_for_journal};

/// The DOM Chromium rendered for `url`, and what it logged.
fn headless_dom(url: &str) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--virtual-time-budget=2000", "--dump-dom", url])
        .output()
        .expect("chromium (Debian's package, installed by scripts/test.sh)");
    assert!(out.status.success(), "{out:?}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_a_real_browser_after_a_rollback() {
    let service = VersionedService::start("v1", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    let config = versioned_config(dir.path(), &service, &listen, "");
    let mut child = spawn_run(dir.path(), &config);
    let journal = dir.path().join("state/journal.jsonl");
    wait_for_journal(&journal, "v1 baked", |e| of_kind(e, "version_baked").iter().any(|b| b["version"] == "v1")).await;
    service.deploy("v2", 80);
    wait_for_journal(&journal, "the rollback to finish", |e| !of_kind(e, "rollback_finished").is_empty()).await;

    let url = format!("http://{listen}/status");
    let (dom, log) = tokio::task::spawn_blocking(move || headless_dom(&url)).await.unwrap();
    assert!(dom.contains("<b id=\"version\">v1</b>"), "{dom}");
    let signals = dom.matches("class=\"signal\"").count();
    assert!(signals >= 1, "{dom}");
    assert_eq!(dom.matches("class=\"sparkline\"").count(), signals, "a sparkline per signal: {dom}");
    assert!(dom.contains("<polyline"), "the sparklines have lines: {dom}");
    assert!(dom.contains("<tr class=\"rollback-row\"><td>rb-1</td>"), "the rollback in the history: {dom}");
    let errors: Vec<&str> =
        log.lines().filter(|l| l.contains("CONSOLE") && (l.contains("ERROR") || l.contains("Uncaught"))).collect();
    assert!(errors.is_empty(), "script errors: {errors:#?}");
    sigterm(&mut child);
}

/// A profile comparing p99 latency with an hour ago: on a sidecar that started a minute ago the
/// hour-ago window is empty, so the rule's condition is unknown while p99 itself is known.
const LATENCY_PROFILE: &str = r#"
[signals]
p99 = 'quantile(0.99, "http_request_duration_seconds_bucket", "2s")'
p99_hour_ago = 'quantile(0.99, "http_request_duration_seconds_bucket", "2s", "1h")'

[[rule]]
name = "latency-degraded"
when = 'p99 > 1.5 * p99_hour_ago'

[[decide]]
ask = "Is p99 worse than an hour ago?"
if = 'firing("latency-degraded")'
then = "consider"
"#;

/// Issue 19, item 10: a rule whose inputs are unknown is shown as unknown (not "inactive"), with
/// the signal that has no data named; a latency is shown as a duration (`49ms`, not `0.0492`) —
/// on the page in the browser, while `/status` as JSON keeps the raw value and says the unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_says_unknown_and_shows_latencies_as_durations() {
    // A histogram whose every poll adds 100 requests: 50 under 10 ms, the rest under 50 ms.
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let addr = crate::common::serve_http(move |_| {
        let n = polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as f64;
        let body = format!(
            "http_request_duration_seconds_bucket{{le=\"0.01\"}} {}\nhttp_request_duration_seconds_bucket{{le=\"0.05\"}} {}\nhttp_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
            50.0 * n,
            100.0 * n,
            100.0 * n
        );
        ("200 OK", body)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    crate::common::write(dir.path(), "p.toml", LATENCY_PROFILE);
    let config = crate::common::write(
        dir.path(),
        "rollwatch.toml",
        format!(
            "profiles = [\"p.toml\"]\nstate_dir = {:?}\nlisten = \"{listen}\"\neval_interval = \"200ms\"\n[[target]]\nname = \"app\"\nkind = \"prometheus\"\nurl = \"http://{addr}/metrics\"\ninterval = \"200ms\"\n",
            dir.path().join("state").display().to_string()
        ),
    );
    let mut child = spawn_run(dir.path(), &config);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let url = format!("http://{listen}/status");
    let status = crate::common::wait_for("a value of p99", crate::common::DEADLINE, async || {
        match crate::common::status(&listen).await {
            Ok(status) if status["signals"]["p99"].is_f64() => Ok(status),
            seen => Err(format!(
                "{seen:?}; stderr:\n{}",
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            )),
        }
    })
    .await;
    // JSON: raw values, the unit said, unknown said.
    let p99 = status["signals"]["p99"].as_f64().unwrap();
    assert!((p99 - 0.0492).abs() < 1e-9, "{status:#}");
    assert_eq!(status["units"]["p99"], "seconds", "{status:#}");
    let rule = &status["rules"][0];
    assert_eq!(rule["name"], "latency-degraded");
    assert_eq!(rule["unknown"], true, "{status:#}");
    assert_eq!(rule["no_data"], serde_json::json!(["p99_hour_ago"]), "{status:#}");
    assert_eq!(rule["unit"], "seconds", "{status:#}");

    // A plain GET of the page for people.
    let page = http.get(&url).header("accept", "text/html").send().await.unwrap().text().await.unwrap();
    let row = |page: &str, marker: &str| -> String {
        let start = page.find(marker).unwrap_or_else(|| panic!("no {marker:?} in {page}"));
        page[start..].split("</tr>").next().unwrap().to_string()
    };
    let signal = row(&page, "data-signal=\"p99\"");
    assert!(signal.contains("<td>49ms</td>"), "p99 as a duration: {signal}");
    assert!(!signal.contains("0.0492"), "{signal}");
    let rule = row(&page, "data-rule=\"latency-degraded\"");
    assert!(rule.contains("unknown"), "{rule}");
    assert!(rule.contains("no data for p99_hour_ago"), "{rule}");
    assert!(!rule.contains("class=\"inactive\""), "unknown is not inactive: {rule}");
    assert!(rule.contains("<td>49ms</td>"), "the rule's value as a duration too: {rule}");

    // The same in a real browser.
    let (dom, _) = tokio::task::spawn_blocking(move || headless_dom(&url)).await.unwrap();
    assert!(row(&dom, "data-signal=\"p99\"").contains("49ms"), "{dom}");
    assert!(row(&dom, "data-rule=\"latency-degraded\"").contains("no data for p99_hour_ago"), "{dom}");
    sigterm(&mut child);
}
