//! SLOs through the binary (issue 21): `[[slo]]` in a profile is checked at file:line:col by
//! `check`; its generated `<name>-page` / `<name>-ticket` rules agree with the same alerts
//! written as Prometheus rules and run by Debian's `promtool test rules` on the same series
//! (fast burn, slow burn, ticket-level burn, a spike that ends, flapping, a traffic gap); the
//! shipped fixtures pass `test`; `replay` says what a version burned and draws the burn rates;
//! `run` shows each SLO's budget and burn rates on `/status` and `/metrics`, and judges each
//! version on its own burn: a bad one rolled back, the next not held to the budget it spent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::common::{rollwatch, write};

/// An availability SLO of 99.9% over 30 days and a tree acting on its rules.
const PROFILE: &str = r#"
[[slo]]
name = "availability"
objective = "99.9%"
errors = 'http_requests_total{code=~"5.."}'
total = 'http_requests_total'

[[decide]]
ask = "Page-level burn?"
if = 'firing("availability-page")'
then = "rollback"

[[decide]]
ask = "Ticket-level burn?"
if = 'firing("availability-ticket")'
then = "consider"
"#;

/// The same alerts as Sloth writes them for google-30d, in PromQL.
fn prometheus_rules() -> String {
    let ratio = |w: &str| {
        format!("(sum(increase(http_requests_total{{code=~\"5..\"}}[{w}])) / sum(increase(http_requests_total[{w}])))")
    };
    let row = |long: &str, short: &str, factor: &str| {
        format!("({} > ({factor} * (1 - 0.999)) and {} > ({factor} * (1 - 0.999)))", ratio(long), ratio(short))
    };
    format!(
        "groups:\n- name: slo\n  interval: 1m\n  rules:\n  - alert: availability-page\n    expr: '{} or {}'\n  - alert: availability-ticket\n    expr: '{} or {}'\n",
        row("1h", "5m", "14.4"),
        row("6h", "30m", "6"),
        row("1d", "2h", "3"),
        row("3d", "6h", "1"),
    )
}

/// A scenario: per minute, (requests, errors) for `minutes` runs, one after another.
struct Scenario {
    name: &'static str,
    runs: Vec<(usize, f64, f64)>,
}

impl Scenario {
    /// The two counters' values each minute from 0 (the errors and the successes).
    fn counters(&self) -> (Vec<f64>, Vec<f64>) {
        let (mut err, mut ok) = (vec![0.0], vec![0.0]);
        for &(minutes, requests, errors) in &self.runs {
            for _ in 0..minutes {
                err.push(err.last().unwrap() + errors);
                ok.push(ok.last().unwrap() + requests - errors);
            }
        }
        (err, ok)
    }

    fn minutes(&self) -> usize {
        self.runs.iter().map(|r| r.0).sum()
    }
}

fn values(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join(" ")
}

fn scenarios() -> Vec<Scenario> {
    // 1000 requests a minute; for 99.9% the burn rate is the errors a minute.
    vec![
        Scenario { name: "fast-burn", runs: vec![(360, 1000.0, 0.0), (90, 1000.0, 20.0), (60, 1000.0, 0.0)] },
        Scenario { name: "slow-burn", runs: vec![(360, 1000.0, 0.0), (420, 1000.0, 7.0), (60, 1000.0, 0.0)] },
        Scenario { name: "ticket-burn", runs: vec![(1440, 1000.0, 0.0), (1500, 1000.0, 3.5), (120, 1000.0, 0.0)] },
        Scenario { name: "spike-that-ends", runs: vec![(120, 1000.0, 0.0), (3, 1000.0, 500.0), (120, 1000.0, 0.0)] },
        Scenario {
            name: "flapping",
            runs: std::iter::once((120, 1000.0, 0.0))
                .chain((0..12).flat_map(|_| [(5, 1000.0, 40.0), (5, 1000.0, 0.0)]))
                .chain(std::iter::once((60, 1000.0, 0.0)))
                .collect(),
        },
        Scenario {
            name: "traffic-gap",
            runs: vec![(120, 1000.0, 0.0), (30, 1000.0, 20.0), (45, 0.0, 0.0), (30, 1000.0, 20.0), (30, 1000.0, 0.0)],
        },
    ]
}

/// Per minute, whether each of the two rules is firing, from `rollwatch replay`'s transitions.
fn rollwatch_timeline(dir: &Path, s: &Scenario) -> Vec<[bool; 2]> {
    let (err, ok) = s.counters();
    let profile = write(dir, "slo.toml", PROFILE);
    let fixture = write(
        dir,
        &format!("{}.toml", s.name),
        format!(
            "profiles = [{:?}]\ninterval = \"1m\"\n[series]\n'http_requests_total{{code=\"500\"}}' = \"{}\"\n'http_requests_total{{code=\"200\"}}' = \"{}\"\n",
            profile.display().to_string(),
            values(&err),
            values(&ok)
        ),
    );
    let (code, out, err) = rollwatch(&["replay", fixture.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let mut changes: BTreeMap<i64, Vec<(usize, bool)>> = BTreeMap::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.get(1) != Some(&"rule") {
            continue;
        }
        let at = rollwatch::time::parse_duration(words[0]).unwrap().0 / 60_000;
        let rule = match words[2] {
            "availability-page" => 0,
            "availability-ticket" => 1,
            other => panic!("unexpected rule {other}: {line}"),
        };
        changes.entry(at).or_default().push((rule, words[5] == "firing"));
    }
    let mut state = [false; 2];
    (0..=s.minutes() as i64)
        .map(|m| {
            for &(rule, firing) in changes.get(&m).into_iter().flatten() {
                state[rule] = firing;
            }
            state
        })
        .collect()
}

/// A promtool test file expecting, at every minute, what rollwatch decided.
fn promtool_test(s: &Scenario, timeline: &[[bool; 2]]) -> String {
    let (err, ok) = s.counters();
    let mut text = format!(
        "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:\n  - series: 'http_requests_total{{code=\"500\"}}'\n    values: '{}'\n  - series: 'http_requests_total{{code=\"200\"}}'\n    values: '{}'\n  alert_rule_test:\n",
        values(&err),
        values(&ok)
    );
    for (m, state) in timeline.iter().enumerate().skip(1) {
        for (i, name) in ["availability-page", "availability-ticket"].iter().enumerate() {
            let alerts = if state[i] { "\n    - exp_labels: {}" } else { " []" };
            let _ = write!(text, "  - eval_time: {m}m\n    alertname: {name}\n    exp_alerts:{alerts}\n");
        }
    }
    text
}

#[test]
fn generated_rules_agree_with_promtool() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "rules.yml", prometheus_rules());
    let mut fired = BTreeMap::new();
    for s in scenarios() {
        let timeline = rollwatch_timeline(dir.path(), &s);
        let test = write(dir.path(), &format!("{}.yml", s.name), promtool_test(&s, &timeline));
        let out = Command::new("promtool")
            .args(["test", "rules"])
            .arg(&test)
            .output()
            .expect("promtool (Debian: prometheus)");
        assert!(
            out.status.success(),
            "{}: promtool disagrees with rollwatch:\n{}{}",
            s.name,
            String::from_utf8_lossy(&out.stdout).chars().take(4000).collect::<String>(),
            String::from_utf8_lossy(&out.stderr)
        );
        let minutes = |i: usize| timeline.iter().filter(|t| t[i]).count();
        fired.insert(s.name, (minutes(0), minutes(1), timeline.last().unwrap()[0]));
    }
    // The comparison is worth something only if the scenarios fire and clear.
    // (minutes the page fired, minutes the ticket fired, page firing at the end)
    assert!(fired["fast-burn"].0 > 0 && !fired["fast-burn"].2, "{fired:?}");
    assert!(fired["slow-burn"].0 > 0, "{fired:?}");
    assert!(fired["ticket-burn"].1 > 0 && fired["ticket-burn"].0 == 0, "{fired:?}");
    // A 3-minute spike pages while the 30m window holds it, then clears.
    let spike = fired["spike-that-ends"];
    assert!(spike.0 > 0 && spike.0 <= 35 && !spike.2, "{fired:?}");
    assert!(fired["flapping"].0 > 0 && !fired["flapping"].2, "{fired:?}");
    assert!(fired["traffic-gap"].0 > 0, "{fired:?}");
}

#[test]
fn check_places_every_slo_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "[[rule]]\nname = \"latency-page\"\nwhen = 'true'\n\
         [[slo]]\nname = \"availability\"\nobjective = \"101%\"\nperiod = \"fortnight\"\nerrors = 'a{code=~\"(\"}'\ntotal = 'b'\n\
         [[slo]]\nname = \"latency\"\nobjective = 0.99\ngood = 'x'\nerrors = 'y'\ntotal = 'z'\n",
    );
    let (code, out, _) = rollwatch(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let path = bad.display().to_string();
    for want in [
        format!("{path}:6:13: slo \"availability\": objective must lie strictly between 0 and 1"),
        format!("{path}:7:10: slo \"availability\": period: bad duration"),
        format!("{path}:8:10: slo \"availability\": errors:"),
        format!("{path}:13:8: slo \"latency\": give either errors (bad events) or good (good events), not both"),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    // Two SLOs named alike, and an SLO whose generated rule a rule already uses.
    let clash = write(
        dir.path(),
        "clash.toml",
        "[[rule]]\nname = \"latency-page\"\nwhen = 'true'\n\
         [[slo]]\nname = \"latency\"\nobjective = 0.99\ngood = 'x'\ntotal = 'z'\n",
    );
    let (code, out, _) = rollwatch(&["check", clash.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{}:5:8: slo \"latency\": the name collides with rule \"latency-page\"",
            clash.display()
        )),
        "{out}"
    );
    // One mistake in an SLO a tree reads: one error, not one more per question reading its rules.
    let one = write(
        dir.path(),
        "one.toml",
        "[[slo]]\nname = \"availability\"\nobjective = \"100%\"\nerrors = 'e'\ntotal = 't'\n\
         [[decide]]\nask = \"Page?\"\nif = 'firing(\"availability-page\")'\nthen = \"rollback\"\n\
         [[decide]]\nask = \"Ticket?\"\nif = 'firing(\"availability-ticket\")'\nthen = \"consider\"\n",
    );
    let (code, out, _) = rollwatch(&["check", one.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("objective must lie strictly between 0 and 1"), "{out}");
    assert!(!out.contains("no rule named"), "no follow-on error: {out}");
    let (code, out, err) = rollwatch(&["check", "rules/slo.toml", "examples/slo.toml"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn shipped_slo_fixtures_pass_and_a_wrong_expectation_fails() {
    let fixtures: Vec<String> = std::fs::read_dir("fixtures")
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.contains("/slo-"))
        .collect();
    assert!(fixtures.len() >= 8, "{fixtures:?}");
    let mut args = vec!["test"];
    args.extend(fixtures.iter().map(String::as_str));
    let (code, out, err) = rollwatch(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with(&format!("{} passed, 0 failed\n", fixtures.len())), "{out}");
    // The crossing fixture expects no page a minute earlier: asking for one fails.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string("fixtures/slo-page-1h-crosses.toml")
        .unwrap()
        .replace("../rules/slo.toml", &format!("{}/rules/slo.toml", env!("CARGO_MANIFEST_DIR")))
        .replace("not_firing = [\"availability-page\"]", "firing = [\"availability-page\"]");
    let moved = write(dir.path(), "early.toml", text);
    let (code, out, _) = rollwatch(&["test", moved.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("at 6h57m: firing \"availability-page\""), "{out}");
}

#[test]
fn replay_says_what_the_version_burned() {
    let (code, out, err) = rollwatch(&["replay", "fixtures/slo-page-1h-crosses.toml"]);
    assert_eq!(code, 0, "{out}{err}");
    let page = out.lines().find(|l| l.contains("ROLLBACK")).unwrap_or_else(|| panic!("no rollback:\n{out}"));
    assert!(page.trim_start().starts_with("6h58m"), "{page}");
    assert!(
        page.contains("slo: availability: this version burned 2.01% of the 30-day budget in 6h 58m, burn rate 2.1×"),
        "{page}"
    );
    // The budget left is computed on the data there is: said, when that is less than the period.
    assert!(page.contains("of the budget remains (on 6h 58m of data, not the 30-day period)"), "{page}");
    // `--svg` draws each alert window's burn rate against its factor.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("burn.svg");
    let (code, out, err) = rollwatch(&["replay", "fixtures/slo-page-1h-crosses.toml", "--svg", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let drawn = std::fs::read_to_string(&svg).unwrap();
    for window in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"] {
        assert!(drawn.contains(&format!("availability burn rate over {window}")), "{window}:\n{drawn}");
    }
    assert!(drawn.contains("&gt; 14.4×") && drawn.contains("&gt; 6×"), "the page factors: {drawn}");
    assert!(drawn.contains("&gt; 3×") && drawn.contains("&gt; 1×"), "the ticket factors: {drawn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pages_on_a_burning_version_and_shows_the_budget() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    // 10% of requests fail: for 99.9% a burn rate of 100, over every window since the deploy.
    let metrics =
        crate::common::counters_service(Arc::new(AtomicU64::new(100)), 50.0, std::time::Duration::from_millis(100))
            .await;
    let health = crate::common::serve_http(|_| ("200 OK", r#"{"status":"ok","version":"v2"}"#.into())).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = crate::common::free_listen();
    let profile = write(
        dir.path(),
        "slo.toml",
        format!("{PROFILE}\n[[procedure.rollback]]\nannounce = \"rollback_in_progress\"\n"),
    );
    let config = write(
        dir.path(),
        "rollwatch.toml",
        format!(
            r#"profiles = [{profile:?}]
state_dir = {state:?}
listen = "{listen}"
eval_interval = "200ms"
version = {{ target = "api", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{health}/health"
interval = "200ms"

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "{metrics}"
interval = "200ms"

[policy]
mode = "dry-run"

[channels.console]
kind = "console"
"#,
            profile = profile.display().to_string(),
            state = dir.path().join("state").display().to_string(),
        ),
    );
    let (code, out, err) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let child = crate::common::spawn_run(dir.path(), &config);
    let guard = crate::common::Guard(child);
    let s = crate::common::status_when(&listen, "a rollback decision", |s| {
        s["decisions"][0]["outcome"] == "rollback" && s["slos"][0]["budget_remaining"].is_number()
    })
    .await;
    let d = &s["decisions"][0];
    assert!(d["firing"].as_array().unwrap().iter().any(|r| r["rule"] == "availability-page"), "{d:#}");
    let note = d["slo"][0].as_str().unwrap_or_default();
    assert!(note.starts_with("availability: this version burned "), "{d:#}");
    assert!(note.contains("burn rate 100×"), "{note}");
    let slo = &s["slos"][0];
    assert_eq!(slo["name"], "availability");
    assert!(slo["budget_remaining"].as_f64().unwrap() < 0.0, "{slo:#}");
    // 6h is the page's long window (6×) and the 3-day ticket's short one (1×): both said.
    let six = slo["burn_rates"].as_array().unwrap().iter().find(|b| b["window"] == "6h").unwrap();
    assert_eq!((six["factor"].as_f64(), six["also"]["factor"].as_f64()), (Some(6.0), Some(1.0)), "{six}");
    let five = slo["burn_rates"].as_array().unwrap().iter().find(|b| b["window"] == "5m").unwrap();
    assert!((five["burn_rate"].as_f64().unwrap() - 100.0).abs() < 1.0, "{five}");
    assert_eq!(five["factor"], 14.4);

    let metrics = reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap();
    let line = |prefix: &str| metrics.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
    let remaining = line("rollwatch_slo_budget_remaining{slo=\"availability\"} ").expect(&metrics);
    assert!(remaining.ends_with(|c: char| c.is_ascii_digit()) && remaining.contains(" -"), "{remaining}");
    let burn = line("rollwatch_slo_burn_rate{slo=\"availability\",window=\"1h\"} ").expect(&metrics);
    let v: f64 = burn.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((v - 100.0).abs() < 1.0, "{burn}");

    let page = reqwest::Client::new()
        .get(format!("http://{listen}/status"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h2>SLOs</h2>") && page.contains("data-slo=\"availability\""), "{page}");
    assert!(page.contains("class=\"sparkline\""), "{page}");
    assert!(!page.contains("<h2>Signals</h2>"), "no empty Signals table for a profile without signals: {page}");
    assert!(page.contains("(6× page, 1× ticket)"), "{page}");
    // For people, the version by its name.
    assert!(page.contains("availability: v2 burned "), "{page}");
    guard.stop();
}

/// A version deployed in the middle of an SLO: v2 burns at 80× and is rolled back on its own
/// burn; v3, deployed after, is judged on its own evidence — the budget v2 spent (and the
/// service's budget, overspent) are not held against it: no second rollback, and v3's own
/// spend starts at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_judged_on_its_own_burn() {
    use crate::common::{VersionedService, free_listen, of_kind, spawn_run, wait_for_journal};
    let service = VersionedService::start("v1", 0).await;
    let dir = tempfile::tempdir().unwrap();
    let listen = free_listen();
    let profile = format!(
        "{PROFILE}\n[[procedure.rollback]]\nannounce = \"rollback_in_progress\"\n\n[[procedure.rollback]]\nrun = \"undo\"\n"
    );
    let config = crate::common::versioned_config_with(dir.path(), &service, &listen, "", &profile);
    let (code, out, err) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let child = spawn_run(dir.path(), &config);
    let guard = crate::common::Guard(child);
    let journal = dir.path().join("state").join("journal.jsonl");
    let baked =
        |v: &'static str| move |e: &[serde_json::Value]| of_kind(e, "version_baked").iter().any(|b| b["version"] == v);
    wait_for_journal(&journal, "v1 baked", baked("v1")).await;
    service.deploy("v2", 80);
    let events = wait_for_journal(&journal, "v2 rolled back", |e| {
        of_kind(e, "rollback_finished").iter().any(|f| f["result"] == "completed")
    })
    .await;
    let started = of_kind(&events, "rollback_started");
    assert_eq!(started.len(), 1, "{started:#?}");
    assert_eq!(started[0]["version_from"], "v2");
    assert!(started[0]["firing"].as_array().unwrap().iter().any(|r| r == "availability-page"), "{}", started[0]);
    assert_eq!(service.rollbacks(), vec!["v1".to_string()]);
    // The service's budget is overspent now; v3 is clean and judged on its own burn.
    service.deploy("v3", 0);
    let events = wait_for_journal(&journal, "v3 baked", baked("v3")).await;
    assert_eq!(of_kind(&events, "rollback_started").len(), 1, "v3 not rolled back: {events:#?}");
    let s = crate::common::status_when(&listen, "v3's SLO reading", |s| {
        s["acting"]["version"] == "v3" && s["slos"][0]["budget_spent"].is_number()
    })
    .await;
    let slo = &s["slos"][0];
    assert_eq!(slo["budget_spent"].as_f64(), Some(0.0), "v3 spent nothing: {slo:#}");
    assert!(slo["budget_remaining"].as_f64().unwrap() < 1.0, "v2's burn stays in the service's budget: {slo:#}");
    assert_eq!(s["decisions"][0]["outcome"], "monitor", "{}", s["decisions"][0]);
    guard.stop();
}
