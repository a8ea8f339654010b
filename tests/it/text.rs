//! Text from outside reaching people (issue 18, item 6): a version a service reports or a
//! pipeline posts, a label value a target exposes. A version's control characters are taken in
//! their visible form at the version source (the hook refuses them); then each kind of output
//! escapes once, at its edge: terminal text (`versions`, `history`, the console channel, the
//! log) shows control characters as visible escapes, the Markdown report escapes HTML and
//! Markdown and never lets a value start a line, an HTTP action's header carries what a header
//! cannot percent-encoded, and a recorded fixture quotes it as TOML reads it back.

use std::sync::{Arc, Mutex};

use crate::common::{of_kind, rollwatch, serve_http, sigterm, spawn_run, wait_for_journal, write};
use serde_json::Value;

/// A version with everything hostile in it: HTML, a CR/LF and a line that would be a Markdown
/// heading, table rows, ANSI colour escapes — and a character beyond ASCII and a `%`, which a
/// header carries percent-encoded.
const HOSTILE: &str = "v2-ü 100%<script>alert(1)</script>\r\n## injected\n| a | b |\n\x1b[31mRED\x1b[0m";

/// The same version as rollwatch takes it from the version source: its control characters in
/// their visible form.
const SEEN: &str = r"v2-ü 100%<script>alert(1)</script>\r\n## injected\n| a | b |\n\u{1b}[31mRED\u{1b}[0m";

/// The profile: errors above 5% over 2 s roll back through `undo`.
const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "2s", 20)'

[[rule]]
name = "error-rate-critical"
when = 'error_rate > 0.05'
summary = "errors at {{value}}"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("error-rate-critical")'
then = "rollback"

[[procedure.rollback]]
announce = "rollback_in_progress"

[[procedure.rollback]]
run = "undo"

[[procedure.rollback]]
announce = "rollback_complete"
"#;

/// What the service was asked to do.
#[derive(Default)]
struct Seen {
    version: String,
    failing: bool,
    ok: f64,
    errors: f64,
    /// Every `POST /rollback` request as received (request line and headers).
    rollbacks: Vec<String>,
}

/// A service whose `/health` reports `version` (JSON-encoded: anything goes), whose `/metrics`
/// counts requests (half failing while `failing`), and whose `POST /rollback?to=V` restores V.
struct Service {
    seen: Arc<Mutex<Seen>>,
    addr: String,
}

impl Service {
    async fn start(version: &str) -> Service {
        let seen = Arc::new(Mutex::new(Seen { version: version.into(), ..Seen::default() }));
        let s = seen.clone();
        let addr = serve_http(move |request| {
            let line = request.lines().next().unwrap_or("").to_string();
            let mut st = s.lock().unwrap();
            // Every request counts 40 more served, half failing while the version fails.
            let errors = if st.failing { 20.0 } else { 0.0 };
            st.ok += 40.0 - errors;
            st.errors += errors;
            if line.starts_with("GET /health") {
                return ("200 OK", serde_json::json!({"status": "ok", "version": st.version}).to_string());
            }
            if line.starts_with("GET /metrics") {
                return (
                    "200 OK",
                    format!(
                        "http_requests_total{{code=\"200\"}} {}\nhttp_requests_total{{code=\"500\"}} {}\n",
                        st.ok, st.errors
                    ),
                );
            }
            if let Some(rest) = line.strip_prefix("POST /rollback?to=") {
                st.rollbacks.push(request.to_string());
                st.version = rest.split_whitespace().next().unwrap_or("").to_string();
                st.failing = false;
                return ("200 OK", "rolled back".into());
            }
            ("404 Not Found", String::new())
        })
        .await;
        Service { seen, addr }
    }

    fn deploy(&self, version: &str, failing: bool) {
        let mut st = self.seen.lock().unwrap();
        st.version = version.to_string();
        st.failing = failing;
    }

    fn rollbacks(&self) -> Vec<String> {
        self.seen.lock().unwrap().rollbacks.clone()
    }
}

/// A config watching `service` (the version read from `/health`) whose `undo` is an http action
/// naming the versions in its URL and in two headers, with a console channel.
fn config(dir: &std::path::Path, service: &Service, listen: &str) -> std::path::PathBuf {
    let profile = write(dir, "profile.toml", PROFILE);
    let text = format!(
        r#"profiles = [{profile:?}]
state_dir = {state:?}
listen = "{listen}"
eval_interval = "200ms"
version = {{ target = "api", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{addr}/health"
interval = "200ms"

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "http://{addr}/metrics"
interval = "200ms"

[policy]
bake = "1s"
verify_stable = "1s"
verify_for = "10s"

[channels.console]
kind = "console"

[actions.undo]
kind = "http"
method = "POST"
url = "http://{addr}/rollback?to={{{{target_version}}}}"
headers = {{ X-Version-From = "{{{{version_from}}}}", X-Target = "to {{{{target_version}}}}" }}
"#,
        profile = profile.display().to_string(),
        state = dir.join("state").display().to_string(),
        addr = service.addr,
    );
    write(dir, "rollwatch.toml", text)
}

/// Percent-decoding, as the receiver of a header would.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// A header's value in a raw request (names are case-insensitive).
fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Text meant for a terminal: no control character but the line breaks of the output itself,
/// and no line that a value started.
fn assert_terminal_safe(what: &str, text: &str) {
    let raw: Vec<char> = text.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(raw.is_empty(), "{what}: raw control characters {raw:?} in:\n{text}");
    for line in text.lines() {
        let line = line.trim_start();
        assert!(
            !line.starts_with("## injected") && !line.starts_with("| a | b |"),
            "{what}: a value started a line: {line:?} in:\n{text}"
        );
    }
}

/// A version from the version source with HTML, CR/LF, a would-be heading, table rows and ANSI
/// escapes is taken in its visible form (`\r\n`, `\u{1b}`): the deploy is seen and the rollback
/// from it completes — the http action's header carries it (what a header cannot, percent-
/// encoded, decoded back to the same text by the receiver) — and the console channel, the log,
/// `versions`, `history` and `report --format md` show no raw control character; the Markdown
/// escapes its HTML and Markdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_version_reaches_people_escaped_and_headers_encoded() {
    let service = Service::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    let cfg = config(dir.path(), &service, &listen);
    let mut child = spawn_run(dir.path(), &cfg);
    let journal = dir.path().join("state/journal.jsonl");
    wait_for_journal(&journal, "v1 baked", |e| of_kind(e, "version_baked").iter().any(|b| b["version"] == "v1")).await;
    service.deploy(HOSTILE, true);
    let events =
        wait_for_journal(&journal, "the rollback to finish", |e| !of_kind(e, "rollback_finished").is_empty()).await;
    let started = of_kind(&events, "rollback_started");
    assert_eq!(started[0]["version_from"], SEEN, "the version in its visible form: {events:#?}");
    let finished = of_kind(&events, "rollback_finished");
    assert_eq!(finished[0]["result"], "completed", "a CR/LF in a version does not fail the step: {events:#?}");

    // The receiver got the version percent-encoded in its header, and decodes it back.
    let requests = service.rollbacks();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let sent = header(&requests[0], "x-version-from").expect("the header was sent");
    assert!(sent.starts_with(r"v2-%C3%BC 100%25<script>alert(1)</script>\r\n## injected"), "{sent}");
    assert_eq!(percent_decode(sent), SEEN, "sent as {sent}");
    assert_eq!(header(&requests[0], "x-target"), Some("to v1"), "a plain value is sent as it is");

    // Also logged: a deploy reported by the hook while the version source reads a hostile one.
    service.deploy(&format!("{HOSTILE} again"), false);
    wait_for_journal(&journal, "the second hostile deploy", |e| {
        of_kind(e, "deploy").iter().any(|d| d["to"].as_str().is_some_and(|v| v.ends_with(" again")))
    })
    .await;
    let (code, out, err) = rollwatch(&["deployed", "-c", cfg.to_str().unwrap(), "v9"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for_journal(&journal, "v9 reported", |e| of_kind(e, "deploy").iter().any(|d| d["to"] == "v9")).await;
    sigterm(&mut child);

    let stdout = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    assert!(stdout.contains("ROLLBACK COMPLETE"), "{stdout}");
    assert!(stdout.contains(&format!("Rolling back profile from {SEEN} (target: v1)")), "{stdout}");
    // The issue is what the firing rule's summary says, its value filled in as a share.
    let issue = stdout.lines().find_map(|l| l.trim().strip_prefix("Issue: ")).unwrap_or_default();
    assert!(issue.starts_with("errors at ") && issue.ends_with('%'), "the rule's summary: {stdout}");
    assert_terminal_safe("the console channel", &stdout);
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("deploy reported, but the version source reads another version"), "{stderr}");
    assert_terminal_safe("the log", &stderr);

    let c = cfg.to_str().unwrap();
    let (code, versions, _) = rollwatch(&["versions", "-c", c]);
    assert_eq!(code, 0, "{versions}");
    assert!(versions.contains(&format!("{SEEN}  bad  deployed")), "{versions}");
    assert_terminal_safe("versions", &versions);
    let (code, history, _) = rollwatch(&["history", "-c", c]);
    assert_eq!(code, 0, "{history}");
    assert!(history.contains(&format!("rb-1 profile {SEEN} → v1, completed")), "{history}");
    assert_terminal_safe("history", &history);

    let (code, md, _) = rollwatch(&["report", "-c", c, "rb-1", "--format", "md"]);
    assert_eq!(code, 0, "{md}");
    assert_terminal_safe("report --format md", &md);
    assert!(!md.contains("<script") && !md.contains("</script"), "raw HTML in:\n{md}");
    assert!(
        md.contains(
            r"- **Previous version**: v2-ü 100%&lt;script&gt;alert(1)&lt;/script&gt;\\r\\n\#\# injected\\n\| a \| b \|\\n\\u{1b}\[31mRED"
        ),
        "{md}"
    );
    let headings: Vec<&str> = md.lines().filter(|l| l.starts_with('#')).collect();
    assert_eq!(
        headings,
        [
            "# Rollback Incident Report: rb-1",
            "## Issue Description",
            "## Root Cause",
            "## Rollback Details",
            "## Verification Results",
            "## Timeline"
        ],
        "{md}"
    );
    assert!(md.lines().all(|l| !l.starts_with('|')), "a table row in:\n{md}");
    // JSON carries the version as recorded.
    let (code, json, _) = rollwatch(&["report", "-c", c, "rb-1", "--format", "json"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap()["version_from"], SEEN);
}

/// A pipeline's deploy hook: a version with HTML and Markdown (printable: accepted) reaches the
/// report escaped; a version with a control character is refused with a reason, from the hook
/// and from `rollwatch deployed`, and recorded nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_from_the_deploy_hook_are_refused_or_escaped() {
    const POSTED: &str = "v3 <img src=x onerror=alert(1)> | x | # *bold* [link](http://evil)";
    let service = Service::start("v1").await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    let cfg = config(dir.path(), &service, &listen);
    let c = cfg.to_str().unwrap().to_string();
    let mut child = spawn_run(dir.path(), &cfg);
    let journal = dir.path().join("state/journal.jsonl");
    wait_for_journal(&journal, "v1 baked", |e| of_kind(e, "version_baked").iter().any(|b| b["version"] == "v1")).await;
    let (code, out, err) = rollwatch(&["deployed", "-c", &c, "v3\x1b[31m"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("version must be 1 to 256 printable characters"), "{out}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let refused = reqwest::Client::new()
        .post(format!("http://{listen}/hooks/deploy"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"version": "v3\n## injected"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let (code, out, err) = rollwatch(&["deployed", "-c", &c, POSTED]);
    assert_eq!(code, 0, "{out}{err}");
    service.deploy(POSTED, true);
    let events =
        wait_for_journal(&journal, "the rollback to finish", |e| !of_kind(e, "rollback_finished").is_empty()).await;
    assert_eq!(of_kind(&events, "rollback_started")[0]["version_from"], POSTED, "{events:#?}");
    let tos: Vec<&str> = of_kind(&events, "deploy").iter().filter_map(|d| d["to"].as_str()).collect();
    assert!(tos.iter().all(|v| !v.chars().any(char::is_control)), "a refused version was recorded: {tos:?}");
    sigterm(&mut child);
    let (code, md, _) = rollwatch(&["report", "-c", &c, "rb-1"]);
    assert_eq!(code, 0, "{md}");
    assert!(
        md.contains(
            r"- **Previous version**: v3 &lt;img src=x onerror=alert(1)&gt; \| x \| \# \*bold\* \[link\](http://evil)"
        ),
        "{md}"
    );
    assert!(!md.contains("<img"), "{md}");
}

/// A label value with a quote and control characters, and a version with a quote (its control
/// characters taken in their visible form, backslashes), recorded: the fixture is TOML that
/// `test` and `replay` read, with the same label value and version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_label_value_with_a_quote_and_a_control_character_reads_back() {
    const VALUE: &str = "a\"b\x01c\x1b[0m\td\\e";
    const VERSION: &str = "v\"2\x1b[31m\u{7f}";
    let body = format!(
        "http_requests_total{{code=\"200\",path=\"{}\"}} 100\nhttp_requests_total{{code=\"500\",path=\"{}\"}} 0\n",
        rollwatch::selector::escape_label_value(VALUE),
        rollwatch::selector::escape_label_value(VALUE),
    );
    // v1 at first, then the hostile version: a deploy seen while recording.
    let version = Arc::new(Mutex::new("v1".to_string()));
    let v = version.clone();
    let addr = serve_http(move |request| match request.starts_with("GET /metrics") {
        true => ("200 OK", body.clone()),
        false => ("200 OK", serde_json::json!({"status": "ok", "version": *v.lock().unwrap()}).to_string()),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // The rule and the tree without acting: recording never acts.
    let watching = PROFILE.split("[[procedure.rollback]]").next().unwrap().replace("\"rollback\"", "\"monitor\"");
    write(dir.path(), "p.toml", watching);
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            r#"profiles = ["p.toml"]
state_dir = "{state}"
listen = "127.0.0.1:0"
eval_interval = "250ms"
version = {{ target = "api", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{addr}/health"
interval = "250ms"

[[target]]
name = "app"
kind = "prometheus"
url = "http://{addr}/metrics"
interval = "250ms"
"#,
            state = dir.path().join("state").display()
        ),
    );
    let fixture = dir.path().join("recorded.toml");
    let recording = crate::common::Recording::start(dir.path(), &cfg, &fixture);
    recording.status_when("v1 seen", |s| s["acting"]["version"] == "v1").await;
    *version.lock().unwrap() = VERSION.to_string();
    // The deploy seen, and evaluated after (a status is published by a tick).
    recording.status_when("the new version seen", |s| s["acting"]["version"].as_str().is_some_and(|v| v != "v1")).await;
    let (code, out) = recording.stop();
    let text = std::fs::read_to_string(&fixture).unwrap_or_default();
    assert_eq!(code, 0, "{out}\n{text}");
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "raw control characters in:\n{text}");
    let (code, out, err) = rollwatch(&["test", &fixture.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}\n{text}");
    let (code, out, err) = rollwatch(&["replay", &fixture.display().to_string()]);
    assert_eq!(code, 0, "{out}{err}\n{text}");
    assert!(out.contains(r#"DEPLOY    v"2\u{1b}[31m\u{7f} (its evidence starts here)"#), "{out}");
    assert_terminal_safe("replay", &out);
    // The same label value and version, read back.
    let (loaded, _) = rollwatch::fixture::Fixture::load(&fixture).unwrap();
    let paths: Vec<&str> = loaded
        .series
        .iter()
        .filter(|s| s.key.name == "http_requests_total")
        .filter_map(|s| s.key.labels.iter().find(|(l, _)| l == "path").map(|(_, v)| v.as_str()))
        .collect();
    assert_eq!(paths, [VALUE, VALUE], "{text}");
    let versions: Vec<&str> = loaded.deploys.iter().map(|d| d.version.as_str()).collect();
    assert_eq!(versions, [r#"v"2\u{1b}[31m\u{7f}"#], "{text}");
}

/// A header the config itself writes wrongly — a name with a space, a value with a line break
/// in its own text — is refused at load, by `check` and `run`, naming the action and the
/// header: a step never finds out when it runs.
#[test]
fn a_header_the_config_cannot_send_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", crate::common::down_profile(&["undo"]));
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        r#"profiles = ["p.toml"]
state_dir = "state"

[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:9/health"

[actions.undo]
kind = "http"
url = "http://127.0.0.1:9/undo"
headers = { "Bad Name" = "x", X-Break = "a\r\nX-Injected: 1", X-Wide = "größe {{version_from}}", X-Fine = "v {{version_from}} 100%" }
"#,
    );
    let c = cfg.to_str().unwrap();
    for command in ["check", "run"] {
        let args: Vec<&str> = if command == "check" { vec!["check", c] } else { vec!["run", "-c", c] };
        let (code, out, err) = rollwatch(&args);
        assert_eq!(code, 1, "{command}: {out}{err}");
        for wanted in [
            "action \"undo\": header \"Bad Name\": not a valid HTTP header name",
            "action \"undo\": header \"X-Break\": its text \"a\\r\\nX-Injected: 1\" has a character a header cannot carry",
        ] {
            assert!(out.contains(wanted), "{command}: {wanted:?} missing in:\n{out}{err}");
        }
        assert!(!out.contains("X-Fine") && !out.contains("X-Wide"), "text and placeholders that make a header: {out}");
        assert!(out.contains("rollwatch.toml:"), "placed in the file: {out}");
    }
}
