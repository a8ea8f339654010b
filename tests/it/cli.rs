//! The command line end to end: exit codes, every error listed, expected/got reports, timelines.

use crate::common::{PROFILE, rollwatch, write};

#[test]
fn shipped_fixtures_all_pass() {
    let (code, out, err) = rollwatch(&["test", "fixtures/"]);
    assert_eq!(code, 0, "{out}{err}");
    let fixtures = std::fs::read_dir("fixtures").unwrap().count();
    assert!(fixtures >= 20, "only {fixtures} fixtures");
    assert_eq!(out.lines().last(), Some(format!("{fixtures} passed, 0 failed").as_str()), "{out}");
}

#[test]
fn shipped_profiles_and_fixtures_check_clean() {
    let (code, out, err) = rollwatch(&["check", "rules", "fixtures", "examples"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with("files OK"), "{out}");
}

#[test]
fn a_failed_expectation_prints_expected_got_and_the_explanation() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let fixture = write(
        dir.path(),
        "f.toml",
        r#"
profiles = ["p.toml"]
interval = "15s"
[series]
'http_requests_total{code="200"}' = "0+100x8"
'up{target="api"}' = "1x8"
[[expect]]
at = "1m"
decision = "rollback"
firing = ["errors"]
"#,
    );
    let (code, out, _) = rollwatch(&["test", fixture.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("f.toml:7:1: at 1m: decision"), "{out}");
    assert!(out.contains("    expected: rollback\n    got:      monitor\n"), "{out}");
    assert!(out.contains("    decision: Is system down? no → Is error rate > 5%? no → monitor (default)"), "{out}");
    assert!(out.contains("firing \"errors\"\n    expected: firing\n    got:      inactive (value 0)"), "{out}");
    assert_eq!(out.lines().last(), Some("0 passed, 1 failed"));
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        r#"[signals]
error_rate = 'ratio("m{code=~\"5(\"}", "m", "1m")'

[[rule]]
name = "a"
when = 'avg_ovr("m", "5m") > 1'

[[rule]]
name = "b"
when = 'error_rate >'
for = "five minutes"

[[rule]]
name = "a"
when = 'firing("zzz")'
"#,
    );
    let (code, out, _) = rollwatch(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let path = bad.display().to_string();
    for want in [
        format!(
            "{path}:2:14: signal \"error_rate\": argument 1 of ratio: bad selector at column 9: bad regex \"5(\" for label \"code\""
        ),
        format!("{path}:6:8: rule \"a\": unknown function \"avg_ovr\" (did you mean avg_over?)"),
        format!("{path}:10:8: rule \"b\": incomplete expression"),
        format!("{path}:11:7: rule \"b\": for: bad duration \"five minutes\""),
        format!("{path}:14:8: rule \"a\": duplicate rule name (first defined at {path}:5:8)"),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(out.trim_end().ends_with("errors in 1 of 1 files"), "{out}");
}

#[test]
fn check_reports_a_missing_path() {
    let (code, out, _) = rollwatch(&["check", "no/such/file.toml"]);
    assert_eq!(code, 1);
    assert!(out.contains("no/such/file.toml: no such file or directory"), "{out}");
}

#[test]
fn config_procedures_must_name_defined_actions() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", format!("{PROFILE}\n[[procedure.rollback]]\nrun = \"undo\"\nverify = \"status\"\n"));
    let config = write(
        dir.path(),
        "rollwatch.toml",
        r#"profiles = ["p.toml"]
state_dir = "/tmp/rw"
[actions.undo]
kind = "exec"
argv = ["kubectl", "rollout", "undo", "deployment/x"]
[[target]]
name = "api"
kind = "health"
url = "http://127.0.0.1:1/health"
interval = "5 parsecs"
"#,
    );
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("procedure \"rollback\" step 1: runs action \"status\", which this config does not define"),
        "{out}"
    );
    assert!(out.contains("target \"api\": interval: bad duration"), "{out}");
}

#[test]
fn replay_prints_state_changes_and_decisions_with_values() {
    let (code, out, _) = rollwatch(&["replay", "fixtures/solvereign-error-rate-4.8pct.toml"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("15s  rule error-rate-elevated"), "{out}");
    assert!(out.contains("inactive → pending  (value 4.8%)"), "{out}");
    assert!(out.contains("pending → firing  (value 4.8%)"), "{out}");
    assert!(out.contains("5m15s  CONSIDER  Is system down? no → Is data at risk? no → Is error rate > 5%? no → Is error rate > 1% (5 min)? YES → consider  | firing: error-rate-elevated=4.8%"), "{out}");
    // Every tick's decision is printed: 25 ticks.
    assert_eq!(out.lines().filter(|l| l.contains("MONITOR") || l.contains("CONSIDER")).count(), 25, "{out}");
    let (_, changes, _) = rollwatch(&["replay", "--changes", "fixtures/solvereign-error-rate-4.8pct.toml"]);
    assert_eq!(changes.lines().filter(|l| l.contains("MONITOR") || l.contains("CONSIDER")).count(), 2, "{changes}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = rollwatch(&["frobnicate"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = rollwatch(&["test"]);
    assert_eq!(code, 2);
}

#[test]
fn check_places_every_acting_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", format!("{PROFILE}\n[[procedure.rollback]]\nannounce = \"rollback_in_progres\"\n"));
    let config = write(
        dir.path(),
        "rollwatch.toml",
        r##"profiles = ["p.toml"]
state_dir = "/tmp/rw"

[policy]
mode = "yolo"
max_rollbacks = { count = 2, per = "0s" }

[channels.slack]
kind = "slack"
channel = "#x"

[channels.hook]
kind = "webhook"
url = "http://127.0.0.1:1/hook"
fallback = "pagr"

[channels.pager]
kind = "console"

[templates]
escalation = "{{severty}} {{finding}}"

[actions.undo]
kind = "exec"
argv = ["kubectl", "rollout", "undo", "--to-revision={{target_versoin}}"]

[actions.marker]
kind = "file"
path = "/run/x"

[actions.call]
kind = "http"
method = "FETCH ME"
url = "ftp://x"
"##,
    );
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for expected in [
        "policy: mode must be one of auto, approve, dry-run, not \"yolo\"",
        "policy: max_rollbacks.per must be longer than 0s",
        "channel \"slack\": a slack channel needs token_env",
        "channel \"hook\": fallback names no channel \"pagr\" (did you mean pager?)",
        "template \"escalation\": unknown placeholder {{severty}} (did you mean severity?)",
        "action \"undo\": unknown placeholder {{target_versoin}} (did you mean target_version?)",
        "action \"marker\": a file action needs state = \"present\" or \"absent\"",
        "action \"call\": method \"FETCH ME\" is not an HTTP method",
        "action \"call\": url must start with http:// or https://",
        "announces template \"rollback_in_progres\", which neither rollwatch nor [templates] defines (did you mean rollback_in_progress?)",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Every error is placed: file:line:col.
    for line in out.lines().filter(|l| l.contains("rollwatch.toml:")) {
        let rest = line.split("rollwatch.toml:").nth(1).unwrap();
        let mut parts = rest.splitn(3, ':');
        assert!(parts.next().unwrap().parse::<u32>().is_ok() && parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
    }
}

/// Config that cannot work is refused by `check` (and so by `run` and a SIGHUP reload, which load
/// the same way), each error at its place: zero durations, a year and more, verify_stable beyond
/// verify_for, a rule reading a target the config lacks, expressions too deep or too long for the
/// parser, a profile that is not a regular file, a password over plain SMTP beyond loopback, a
/// promql target without a query.
#[test]
fn config_that_cannot_work_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let long = format!("{}1{} > 0", "(".repeat(100_000), ")".repeat(100_000));
    let deep = format!("{}1{} > 0", "(".repeat(1000), ")".repeat(1000));
    let bangs = format!("{}true", "!".repeat(1000));
    let profile = format!(
        r#"
[[rule]]
name = "down"
when = 'up("api") == 0'
for = "0s"

[[rule]]
name = "then"
when = 'last("g", "0s") > 1'

[[rule]]
name = "deep"
when = '{deep}'

[[rule]]
name = "bangs"
when = '{bangs}'

[[rule]]
name = "long"
when = '{long}'

[[decide]]
ask = "Down?"
if = 'firing("down")'
then = "rollback"
"#
    );
    write(dir.path(), "p.toml", profile);
    let config = write(
        dir.path(),
        "rollwatch.toml",
        format!("profiles = [\"p.toml\"]\nstate_dir = {state:?}\n")
            + r#"eval_interval = "0s"

[[target]]
name = "svc"
kind = "health"
url = "http://127.0.0.1:1/health"
timeout = "0s"

[[target]]
name = "prom"
kind = "promql"
url = "http://127.0.0.1:9090"
interval = "400d"

[policy]
verify_for = "30s"
verify_stable = "1m"

[channels.mail]
kind = "email"
smtp = "mail.example.com:25"
smtp_security = "none"
smtp_user = "rollwatch"
smtp_password_env = "SMTP_PASSWORD"
from = "rollwatch@example.com"
to = ["oncall@example.com"]
"#,
    );
    let took = rollwatch::time::Stopwatch::start();
    let (code, out, err) = rollwatch(&["check", config.to_str().unwrap()]);
    assert!(took.elapsed_secs() < 10.0, "checking took {} s", took.elapsed_secs());
    assert_eq!(code, 1, "{out}{err}");
    for wanted in [
        "rollwatch.toml:3:17: eval_interval must be longer than 0s",
        "target \"svc\": timeout must be longer than 0s",
        "target \"prom\": a promql target needs query",
        "target \"prom\": interval: bad duration \"400d\": longer than a year",
        "verify_stable (1m) must not exceed verify_for (30s)",
        "smtp_security = \"none\" would send the SMTP password in clear beyond loopback",
        "rule \"down\": for must be longer than 0s",
        "an offset must be longer than 0s",
        "rule \"deep\": parentheses nested 1000 deep (at most 32)",
        "rule \"bangs\": 1000 unary operators in a row (at most 32)",
        "rule \"long\": expression longer than 4096 bytes (200005 bytes)",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
    }
    // A rule reading a target the config does not define would never see data.
    write(dir.path(), "ok.toml", PROFILE);
    let config = write(
        dir.path(),
        "svc.toml",
        format!(
            "profiles = [\"ok.toml\"]\nstate_dir = {state:?}\n[[target]]\nname = \"svc\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/\"\n"
        ),
    );
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "svc.toml:1:12: rule \"down\" reads target \"api\", which this config does not define (targets: svc)"
        ),
        "{out}"
    );
    // A window shorter than eval_interval would see data only now and then.
    let config = write(
        dir.path(),
        "slow.toml",
        format!(
            "profiles = [\"ok.toml\"]\nstate_dir = {state:?}\neval_interval = \"2m\"\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/\"\n"
        ),
    );
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("signal \"error_rate\": a 1m window is shorter than eval_interval (2m)"), "{out}");
    // A profile that is not a regular file is refused before it is read.
    // A target kind that would be accepted and never polled.
    let config = write(
        dir.path(),
        "am.toml",
        format!(
            "profiles = [\"ok.toml\"]\nstate_dir = {state:?}\n[[target]]\nname = \"api\"\nkind = \"alertmanager\"\nurl = \"http://127.0.0.1:1/\"\n"
        ),
    );
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("am.toml:5:8: target \"api\": there is no alertmanager target"), "{out}");
    let config = write(dir.path(), "zero.toml", format!("profiles = [\"/dev/zero\"]\nstate_dir = {state:?}\n"));
    let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/dev/zero: not a regular file"), "{out}");
}

/// `[ha]` is checked field by field (a lease under 2 s is lost between renewals); a valid one
/// is reported as not runnable by this build, and `run` refuses it rather than running a
/// replica that would act beside its peers.
#[test]
fn the_ha_section_is_checked_with_its_places() {
    let dir = tempfile::tempdir().unwrap();
    // Every path under the test's own folder: `rollwatch` runs in the repository root.
    let state = dir.path().join("state").display().to_string();
    write(dir.path(), "ok.toml", PROFILE);
    let head = format!(
        "profiles = [\"ok.toml\"]\nstate_dir = {state:?}\n[[target]]\nname = \"api\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/\"\n"
    );
    let bad = write(
        dir.path(),
        "bad.toml",
        format!(
            "{head}[ha]\netcd = [\"127.0.0.1:2379\"]\nkey = \"rollwatch\"\nttl = \"1s\"\nadvertise = \"10.0.0.5:9464\"\nusername_env = \"ETCD_USER\"\ncert_file = \"client.pem\"\n"
        ),
    );
    let (code, out, _) = rollwatch(&["check", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for wanted in [
        "bad.toml:8:9: [ha]: etcd endpoints are URLs starting with http:// or https://, not \"127.0.0.1:2379\"",
        "bad.toml:9:7: [ha]: key must be a path such as \"/rollwatch/api\", not \"rollwatch\"",
        "bad.toml:10:7: [ha]: ttl must be at least 2s",
        "bad.toml:11:13: [ha]: advertise is the URL other replicas reach this one at",
        "bad.toml:12:16: [ha]: username_env and password_env: give both or neither",
        "bad.toml:13:13: [ha]: cert_file and key_file: give both or neither",
        "bad.toml:13:13: [ha]: cert_file: cannot read client.pem",
        "bad.toml:13:13: [ha]: cert_file is for https:// endpoints; every endpoint here is http://",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
    }
    // Required fields missing: said with the other errors, not instead of them.
    let bare = write(dir.path(), "bare.toml", format!("{head}[ha]\nttl = \"1s\"\n"));
    let (code, out, _) = rollwatch(&["check", bare.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for wanted in [
        "[ha]: etcd = [\"http://127.0.0.1:2379\"] is required",
        "[ha]: key = \"/rollwatch/NAME\" is required",
        "bare.toml:8:7: [ha]: ttl must be at least 2s",
    ] {
        assert!(out.contains(wanted), "missing {wanted:?} in:\n{out}");
    }
    let good = write(
        dir.path(),
        "good.toml",
        format!("{head}[ha]\netcd = [\"http://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\nttl = \"2s\"\n"),
    );
    let (code, out, _) = rollwatch(&["check", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("[ha]: replicas elect a leader on etcd at run time"), "{out}");
    // Listening on every address: the others need to be told where this replica is.
    let wide = write(
        dir.path(),
        "wide.toml",
        format!(
            "listen = \"0.0.0.0:9464\"\napi_token_env = \"T\"\n{head}[ha]\netcd = [\"http://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\n"
        ),
    );
    let (code, out, _) = rollwatch(&["check", wide.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("advertise = \"http://HOST:9464\" is required when listen is 0.0.0.0"), "{out}");
    // A certificate file that is not PEM, caught by `check`.
    let not_pem = write(
        dir.path(),
        "not-pem.toml",
        format!(
            "{head}[ha]\netcd = [\"https://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\nca_file = {:?}\n",
            good.display()
        ),
    );
    let (code, out, _) = rollwatch(&["check", not_pem.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not PEM (no -----BEGIN line)"), "{out}");
    // PEM of the wrong kind, or a certificate that does not decode: caught by `check` too.
    let key_only = write(dir.path(), "key.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let garbled = write(
        dir.path(),
        "garbled.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    );
    for (file, said) in [(&key_only, "holds no certificate"), (&garbled, "holds a certificate that does not decode")] {
        let config = write(
            dir.path(),
            "pem-kind.toml",
            format!(
                "{head}[ha]\netcd = [\"https://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\nca_file = {:?}\n",
                file.display()
            ),
        );
        let (code, out, _) = rollwatch(&["check", config.to_str().unwrap()]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(said), "{said:?} missing in {out}");
    }
    // A certificate file that cannot be read stops `run` at once, naming it (and `check` too).
    let missing = write(
        dir.path(),
        "missing.toml",
        format!(
            "{head}[ha]\netcd = [\"https://127.0.0.1:2379\"]\nkey = \"/rollwatch/api\"\nca_file = \"/nonexistent/ca.pem\"\n"
        ),
    );
    let (code, out, err) = rollwatch(&["run", "-c", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    let said = format!("{out}{err}");
    assert_eq!(said.matches("cannot read /nonexistent/ca.pem").count(), 1, "said once: {said}");
}

/// The README's table of the values each notification template shows is the templates' own
/// placeholders, in order: documentation that cannot drift from the shipped wording.
#[test]
fn the_readme_lists_each_templates_values() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (name, text) in rollwatch::template::messages::DEFAULTS {
        let mut shown: Vec<&str> = Vec::new();
        for p in rollwatch::template::placeholders(text).unwrap() {
            if !shown.contains(&p) {
                shown.push(p);
            }
        }
        let row = format!("| `{name}` | {} |", shown.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "));
        assert!(readme.contains(&row), "README lacks the row\n{row}");
    }
}

/// `replay --svg/--html` on every shipped fixture: well-formed SVG (a real XML parser), a chart
/// per signal with its line where it has data, the thresholds its rules compare it with, the
/// rules' pending/firing spans, deploy and decision markers, a legend; the same bytes twice.
#[test]
fn replay_plots_every_shipped_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let mut fixtures: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10);
    let (mut thresholds, mut spans, mut deploys) = (0, 0, 0);
    for fixture in &fixtures {
        let (svg, html) = (dir.path().join("plot.svg"), dir.path().join("plot.html"));
        let args =
            ["replay", fixture.to_str().unwrap(), "--svg", svg.to_str().unwrap(), "--html", html.to_str().unwrap()];
        let (code, out, err) = rollwatch(&args);
        assert!(out.contains("plot written to"), "{}: {out}{err} ({code})", fixture.display());
        let text = std::fs::read_to_string(&svg).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: not XML: {e}", fixture.display()));
        let class = |c: &str| doc.descendants().filter(|n| n.attribute("class") == Some(c)).count();
        let charts: Vec<_> = doc.descendants().filter(|n| n.attribute("class") == Some("chart")).collect();
        assert!(!charts.is_empty(), "{}: no chart", fixture.display());
        for chart in &charts {
            let lines = chart.descendants().filter(|n| n.attribute("class") == Some("series")).count();
            let empty = chart.descendants().any(|n| n.attribute("class") == Some("no-data"));
            assert!(
                lines > 0 || empty,
                "{}: chart {:?} has neither a line nor 'no data'",
                fixture.display(),
                chart.attribute("data-signal")
            );
            if !empty {
                assert_eq!(chart.descendants().filter(|n| n.attribute("class") == Some("legend")).count(), 1);
                assert!(chart.descendants().filter(|n| n.attribute("class") == Some("x-tick")).count() >= 2);
            }
        }
        assert!(class("decision") >= 1, "{}: no decision marker", fixture.display());
        let has_deploy = std::fs::read_to_string(fixture).unwrap().contains("[[deploy]]");
        assert_eq!(class("deploy") > 0, has_deploy, "{}", fixture.display());
        thresholds += class("threshold");
        spans += class("pending") + class("firing");
        deploys += class("deploy");
        // A page with one chart per signal, and the same bytes from a second replay.
        let page = std::fs::read_to_string(&html).unwrap();
        assert_eq!(page.matches("<svg ").count(), charts.len(), "{}", fixture.display());
        rollwatch(&args);
        assert_eq!(std::fs::read_to_string(&svg).unwrap(), text, "{}: not deterministic", fixture.display());
    }
    assert!(thresholds > 0 && spans > 0 && deploys > 0, "thresholds {thresholds}, spans {spans}, deploys {deploys}");
}

/// A long replay is drawn to the pixel: 20,000 ticks make a chart of a few thousand points (the
/// first, lowest, highest and last of each pixel column), not 20,000 — and a lone spike stays.
#[test]
fn a_long_replay_is_thinned_to_the_pixel_and_keeps_its_spikes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", "[signals]\nload = 'last(\"load\")'\n\n[[rule]]\nname = \"hot\"\nwhen = 'load > 50'\n");
    let fixture = write(
        dir.path(),
        "long.toml",
        "profiles = [\"p.toml\"]\ninterval = \"10s\"\n\n[series]\n'load' = \"1x10000 99 1x9999\"\n\n[[expect]]\nat = \"0s\"\nnot_firing = [\"hot\"]\n",
    );
    let svg = dir.path().join("long.svg");
    let (code, out, err) =
        rollwatch(&["replay", fixture.to_str().unwrap(), "--changes", "--svg", svg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    let line = text.lines().find(|l| l.contains("class=\"series\"")).expect(&text);
    let points: Vec<&str> = line.split("points=\"").nth(1).unwrap().trim_end_matches("\"/>").split(' ').collect();
    assert!(points.len() < 4 * 900, "{} points for 20,000 ticks", points.len());
    assert!(text.len() < 200_000, "{} bytes", text.len());
    // The spike (99 among 1s) is still drawn: its y is the chart's highest point.
    let ys: Vec<f64> = points.iter().filter_map(|p| p.split(',').nth(1)?.parse().ok()).collect();
    let (top, bottom) = ys.iter().fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(*y), hi.max(*y)));
    assert!(bottom - top > 100.0, "the spike is drawn: y from {top} to {bottom}");
}

/// Issue 19, item 11 (plots): two rules on one signal with the same threshold, both pending and
/// firing at once, two deploys 15 s apart and a signal that never has data. Each rule shades its
/// own lane (no pending/firing band lies over another rule's, so no colour blends), no label
/// prints over another, and the signal without data is one line saying so — not an empty chart.
#[test]
fn replay_plots_keep_labels_apart_and_bands_unblended_and_say_no_data() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.toml",
        r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m")'
p99 = 'quantile(0.99, "latency_seconds_bucket", "1m")'

[[rule]]
name = "errors-high"
when = 'error_rate > 0.05'

[[rule]]
name = "errors-elevated"
when = 'error_rate >= 0.05'
for = "1m"

[[rule]]
name = "slow"
when = 'p99 > 0.5'

[[decide]]
ask = "high?"
if = 'firing("errors-high")'
then = "rollback"

[[decide]]
ask = "elevated?"
if = 'firing("errors-elevated") || firing("slow")'
then = "consider"
"#,
    );
    let fixture = write(
        dir.path(),
        "f.toml",
        "profiles = [\"p.toml\"]\ninterval = \"15s\"\n[series]\n'http_requests_total{code=\"500\"}' = \"0+20x40\"\n'http_requests_total{code=\"200\"}' = \"0+180x40\"\n[[deploy]]\nat = \"5m\"\nversion = \"v2\"\n[[deploy]]\nat = \"5m15s\"\nversion = \"v3\"\n",
    );
    let svg = dir.path().join("plot.svg");
    let (code, out, err) = rollwatch(&["replay", fixture.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    assert!(out.contains("plot written to"), "{out}{err} ({code})");
    let text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let chart = |signal: &str| {
        doc.descendants()
            .find(|n| n.attribute("class") == Some("chart") && n.attribute("data-signal") == Some(signal))
            .unwrap_or_else(|| panic!("no chart for {signal}: {text}"))
    };
    let num = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();

    // Bands: of two different rules, none overlaps another in area.
    let rates = chart("error_rate");
    let bands: Vec<_> = rates
        .descendants()
        .filter(|n| matches!(n.attribute("class"), Some("pending" | "firing")))
        .map(|n| (n.attribute("data-rule").unwrap(), num(n, "x"), num(n, "y"), num(n, "width"), num(n, "height")))
        .collect();
    let rules: std::collections::BTreeSet<_> = bands.iter().map(|b| b.0).collect();
    assert_eq!(rules.len(), 2, "both rules shaded: {bands:?}");
    for a in &bands {
        for b in bands.iter().filter(|b| b.0 != a.0) {
            let apart = a.1 + a.3 <= b.1 || b.1 + b.3 <= a.1 || a.2 + a.4 <= b.2 + 0.01 || b.2 + b.4 <= a.2 + 0.01;
            assert!(apart, "{a:?} lies over {b:?}");
        }
    }
    // Labels: no two share a line where they run side by side (6.2 px a character is wider than
    // the 11 px sans-serif's average, so an overlap here is an overlap on screen).
    let labels: Vec<_> = rates
        .descendants()
        .filter(|n| n.attribute("class").is_some_and(|c| c.ends_with("-label")))
        .map(|n| {
            let width = 6.2 * n.text().unwrap().chars().count() as f64;
            let x = num(n, "x");
            let x0 = if n.attribute("text-anchor") == Some("end") { x - width } else { x };
            (n.text().unwrap().to_string(), x0, x0 + width, num(n, "y"))
        })
        .collect();
    for want in ["deploy v2", "deploy v3", "errors-high > 5%", "errors-elevated >= 5%"] {
        assert!(labels.iter().any(|l| l.0.contains(want)), "no label {want:?}: {labels:?}");
    }
    for (i, a) in labels.iter().enumerate() {
        for b in &labels[i + 1..] {
            let side_by_side = a.1 < b.2 && b.1 < a.2;
            assert!(!side_by_side || (a.3 - b.3).abs() >= 11.0, "{a:?} prints over {b:?}");
        }
    }
    // No data: said on one line, no axes, legend or thresholds drawn around nothing.
    let p99 = chart("p99");
    assert!(p99.descendants().any(|n| n.attribute("class") == Some("no-data")), "{text}");
    for empty in ["axes", "legend", "threshold", "series", "y-tick"] {
        assert!(!p99.descendants().any(|n| n.attribute("class") == Some(empty)), "{empty} in the no-data chart");
    }
}
