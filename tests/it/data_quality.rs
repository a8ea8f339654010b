//! No data is never 0 and never a pass: NaN, stale series, empty windows and missing targets make
//! a condition unknown, and each rule follows its `on_no_data`. Where other tools fail open or
//! abort falsely, these pin the behaviour down.

use crate::common::write;
use rollwatch::fixture::{Fixture, run};
use rollwatch::rules::Decision;

/// Replays `series` (15 s apart) against `rules`, returning every tick's decision and the
/// fixture's failures (expectations are given inline in `expects`).
fn replay(rules: &str, series: &str, expects: &str) -> (Vec<Decision>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", rules);
    let path = write(
        dir.path(),
        "f.toml",
        format!("profiles = [\"p.toml\"]\ninterval = \"15s\"\n[series]\n{series}\n{expects}"),
    );
    let (fixture, mut ev) = Fixture::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut decisions = Vec::new();
    let report = run(&fixture, &mut ev, |_, tick, _| decisions.extend(tick.decisions.iter().cloned()));
    let failures = report
        .failures
        .iter()
        .map(|f| format!("{} {}: expected {}, got {}", f.at, f.what, f.expected, f.got))
        .collect();
    (decisions, failures)
}

const TREE: &str = "\n[[decide]]\nask = \"Bad?\"\nif = 'firing(\"r\")'\nthen = \"rollback\"\n";

fn rule(when: &str, extra: &str) -> String {
    format!("[[rule]]\nname = \"r\"\nwhen = '{when}'\n{extra}\n{TREE}")
}

#[test]
fn a_stale_series_keeps_a_firing_rule_firing_by_default() {
    let (decisions, failures) = replay(
        &rule(r#"last("g") > 5"#, ""),
        "'g' = \"10 10 stale _x3\"",
        "[[expect]]\nat = \"15s\"\nfiring = [\"r\"]\n[[expect]]\nat = \"1m15s\"\nfiring = [\"r\"]\ndecision = \"rollback\"\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(decisions[1].unknown, Vec::<String>::new());
    assert_eq!(decisions[2].unknown, ["r"], "the decision notes the rule whose input went stale");
}

#[test]
fn on_no_data_ok_clears_and_fire_fires_after_for() {
    let (_, failures) = replay(
        &rule(r#"last("g") > 5"#, "on_no_data = \"ok\""),
        "'g' = \"10 10 stale _x3\"",
        "[[expect]]\nat = \"30s\"\nnot_firing = [\"r\"]\ndecision = \"monitor\"\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    let (_, failures) = replay(
        &rule(r#"last("g") > 5"#, "on_no_data = \"fire\"\nfor = \"30s\""),
        "'g' = \"1 1 NaN NaN NaN\"",
        "[[expect]]\nat = \"45s\"\nnot_firing = [\"r\"]\n[[expect]]\nat = \"1m\"\nfiring = [\"r\"]\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn nan_samples_are_no_data_not_values() {
    // max_over skips NaN; a window holding only NaN is no data (keep: stays inactive).
    let (decisions, failures) = replay(
        &rule(r#"max_over("g", "30s") > 5"#, ""),
        "'g' = \"1 NaN NaN NaN 9\"",
        "[[expect]]\nat = \"45s\"\nnot_firing = [\"r\"]\n[[expect]]\nat = \"1m\"\nfiring = [\"r\"]\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(decisions[3].unknown, ["r"]);
}

#[test]
fn a_missing_target_is_unknown_not_healthy_and_not_down() {
    // evalexpr alone would answer `Empty != 1` with true and roll back on no data at all.
    let (decisions, failures) = replay(
        &rule(r#"up("api") != 1"#, ""),
        "'up{target=\"other\"}' = \"0x4\"",
        "[[expect]]\nat = \"1m\"\nnot_firing = [\"r\"]\ndecision = \"monitor\"\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(decisions.iter().all(|d| d.unknown == ["r"]));
}

#[test]
fn or_is_true_when_one_side_is_true_and_the_other_unknown() {
    let rules = rule(
        r#"up("api") == 0 || ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m", 100) > 0.05"#,
        "",
    );
    // No traffic (ratio has no data) but the api is down: the rule fires.
    let (_, failures) =
        replay(&rules, "'up{target=\"api\"}' = \"1 0 0\"", "[[expect]]\nat = \"15s\"\nfiring = [\"r\"]\n");
    assert!(failures.is_empty(), "{failures:?}");
    // And `false && unknown` is false, not unknown.
    let rules = rule(r#"up("api") == 0 && last("nothing") > 1"#, "on_no_data = \"fire\"");
    let (decisions, failures) =
        replay(&rules, "'up{target=\"api\"}' = \"1 1\"", "[[expect]]\nat = \"15s\"\nnot_firing = [\"r\"]\n");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(decisions[1].unknown.is_empty());
}

#[test]
fn zero_traffic_is_no_data_and_a_reset_is_not_a_spike() {
    let rules = rule(r#"ratio("http_requests_total{code=\"500\"}", "http_requests_total", "1m") > 0.05"#, "");
    // 0/0 for a minute; then a counter reset of the 200s (a restart) and normal traffic.
    let (decisions, failures) = replay(
        &rules,
        "'http_requests_total{code=\"500\"}' = \"3x8\"\n'http_requests_total{code=\"200\"}' = \"500x4 100+100x4\"",
        "[[expect]]\nat = \"1m\"\nnot_firing = [\"r\"]\n[[expect]]\nat = \"2m\"\nnot_firing = [\"r\"]\n",
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(decisions[4].unknown, ["r"], "0/0 is no data");
    assert!(decisions[8].unknown.is_empty(), "after the reset there is traffic again");
}

#[test]
fn rule_values_come_from_the_comparison_or_value_field() {
    let (decisions, _) = replay(&rule(r#"last("g") * 2 > 5"#, ""), "'g' = \"10\"", "");
    assert_eq!(decisions[0].firing[0].value, Some(20.0));
    let (decisions, _) = replay(&rule(r#"last("g") > 5"#, "value = 'last(\"g\") / 100'"), "'g' = \"10\"", "");
    assert_eq!(decisions[0].firing[0].value, Some(0.1));
}

/// A version is judged on its own evidence: a deployment rule's window starts at the deploy, the
/// `"deploy"` offset reads the same window just before it (before/after), and a rule with
/// `scope = "environment"` keeps its full history.
#[test]
fn windows_start_at_the_deploy_and_the_deploy_offset_reads_just_before_it() {
    let rules = r#"
[[rule]]
name = "slower-than-before-the-deploy"
when = 'avg_over("lat", "1m") > 1.5 * avg_over("lat", "1m", "deploy")'

[[rule]]
name = "slow-here"
when = 'avg_over("lat", "1m") > 2'

[[rule]]
name = "slow-environment"
scope = "environment"
when = 'avg_over("lat", "1m") > 2'
"#;
    let expects = r#"
[[deploy]]
at = "2m"
version = "v2"

[[expect]]
at = "1m45s"
not_firing = ["slower-than-before-the-deploy"]

[[expect]]
at = "2m30s"
firing = ["slower-than-before-the-deploy", "slow-here"]
not_firing = ["slow-environment"]

[[expect]]
at = "3m15s"
firing = ["slower-than-before-the-deploy", "slow-here", "slow-environment"]
"#;
    let (decisions, failures) = replay(rules, "'lat' = \"1x8 3x8\"", expects);
    assert_eq!(failures, Vec::<String>::new());
    // Before any deploy, "before the deploy" is no data: the before/after rule is unknown.
    assert!(decisions[4].unknown.contains(&"slower-than-before-the-deploy".to_string()), "{:?}", decisions[4]);
}
