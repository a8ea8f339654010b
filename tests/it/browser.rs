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
