//! What rollwatch tells about itself: a [`Snapshot`] the engine publishes after every tick, served
//! as JSON on `/status`, as a page for people ([`page`]) and as Prometheus text on `/metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;

pub mod fleet;
pub mod page;

use serde::Serialize;

use crate::rules::{Decision, Evaluator, Tick};
use crate::selector::escape_label_value;
use crate::source::exposition::format_value;
use crate::source::{Observation, Target};
use crate::template::Unit;
use crate::time::Timestamp;

/// The buckets of the rollback timing histograms, in seconds.
const TIMING_BUCKETS: &[f64] = &[1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// A histogram's rows (`_bucket{le=…}`, `_sum`, `_count`) for `values`.
fn histogram(values: &[f64]) -> Vec<String> {
    let mut rows: Vec<String> = TIMING_BUCKETS
        .iter()
        .map(|le| format!("_bucket{{le=\"{}\"}} {}", format_value(*le), values.iter().filter(|v| *v <= le).count()))
        .collect();
    rows.push(format!("_bucket{{le=\"+Inf\"}} {}", values.len()));
    rows.push(format!("_sum {}", format_value(values.iter().sum())));
    rows.push(format!("_count {}", values.len()));
    rows
}

/// Evaluations of each signal `/status` keeps for its sparkline.
pub const SIGNAL_HISTORY: usize = 120;

/// How many recent decision changes `/status` keeps.
pub const RECENT: usize = 20;

/// One target as last polled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TargetStatus {
    pub name: String,
    pub up: Option<bool>,
    pub duration_seconds: f64,
    pub last_error: Option<String>,
    /// Failed polls by reason (`timeout`, `status`, ...).
    pub errors_total: BTreeMap<String, u64>,
    pub polls_total: u64,
    /// When it last answered well (`up`).
    pub last_ok_at: Option<Timestamp>,
    /// Series dropped as parsed because no rule reads them.
    pub dropped_total: u64,
    /// String fields of its health body (`version`).
    pub fields: BTreeMap<String, String>,
}

/// One rule now.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStatus {
    pub name: String,
    pub profile: String,
    /// The state it holds (`inactive`, `pending`, `firing`); see `unknown`.
    pub state: String,
    /// Its condition could not be decided this tick (inputs without data, `on_no_data = "keep"`):
    /// `state` is only what it holds meanwhile.
    pub unknown: bool,
    /// The signals it reads that have no data now.
    pub no_data: Vec<String>,
    pub value: Option<f64>,
    /// What `value` measures (`share`, `seconds`, `plain`).
    pub unit: Unit,
    pub severity: String,
    /// Pending or firing since (none while inactive).
    pub since: Option<Timestamp>,
    /// The windows its condition reads that hold less than their span ("1h window: 10 min of
    /// data"); with `min_coverage`, the share it requires.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<crate::rules::WindowCoverage>,
}

/// One SLO on the status page: its readings after the last tick and the budget remaining at
/// each of the last [`SIGNAL_HISTORY`] evaluations, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct SloStatus {
    pub profile: String,
    #[serde(flatten)]
    pub reading: crate::rules::slo::SloReading,
    pub budget_history: VecDeque<Option<f64>>,
}

/// Everything `/status` and `/metrics` show.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// In a fleet: the deployment this is (its page says so); absent for one deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    pub at: Timestamp,
    pub targets: Vec<TargetStatus>,
    pub signals: BTreeMap<String, Option<f64>>,
    /// Each signal's latest values, one per evaluation (at most [`SIGNAL_HISTORY`]), oldest
    /// first: the page's sparklines.
    pub signal_history: BTreeMap<String, VecDeque<Option<f64>>>,
    /// Per signal, the rules comparing it with a constant: rule, comparison, constant.
    pub thresholds: BTreeMap<String, Vec<(String, String, f64)>>,
    /// What each signal measures (`share`, `seconds`, `plain`): values stay raw here, the page
    /// shows them as percentages and durations.
    pub units: BTreeMap<String, Unit>,
    pub rules: Vec<RuleStatus>,
    /// Each SLO's budget and burn rates, with its budget's recent history (the page's sparkline).
    pub slos: Vec<SloStatus>,
    /// Current decision per profile.
    pub decisions: Vec<Decision>,
    /// The latest decision changes, newest last.
    pub recent: VecDeque<Decision>,
    /// Decisions made, by profile and outcome (every tick counts).
    pub decisions_total: BTreeMap<String, BTreeMap<String, u64>>,
    pub firing_alerts: Vec<String>,
    pub ticks_total: u64,
    pub last_evaluation_seconds: f64,
    pub series: usize,
    /// Connections to the own server closed for `max_connections`: an idle one evicted for a
    /// newcomer, or a newcomer refused while every slot was busy.
    pub connections_refused: u64,
    /// The dispatcher: mode, rollback in flight, approvals, pause, silences, rollbacks by result.
    pub acting: crate::act::dispatch::ActingStatus,
    /// Whether this replica may act: alone, always; among replicas (`[ha]`), while it leads
    /// (`rollwatch_leader` in `/metrics`).
    pub may_act: bool,
    /// The coordination among replicas, with `[ha]`: this replica's role and the leader.
    pub ha: Option<crate::coord::HaStatus>,
    /// How rollwatch's own timeline and the system clock agree (live runs).
    pub clock: Option<ClockStatus>,
}

/// rollwatch's timeline against the system clock: a step of the system clock (NTP, a VM
/// restored) moves neither, but shows here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ClockStatus {
    /// The system clock minus rollwatch's timeline, in seconds (behind: negative).
    pub system_ahead_seconds: f64,
    /// Whether they disagree by more than [`crate::time::CLOCK_DISAGREEMENT`] (said in the log,
    /// the journal and on the page).
    pub disagrees: bool,
    /// Since when (rollwatch's time) the disagreement is about what it is now.
    pub since: Option<Timestamp>,
}

fn label(v: &str) -> String {
    escape_label_value(v)
}

impl Snapshot {
    /// The targets to show, none polled yet (at start and after a reload).
    pub fn watch_targets(&mut self, targets: &[Target]) {
        self.targets =
            targets.iter().map(|t| TargetStatus { name: t.name.clone(), ..TargetStatus::default() }).collect();
    }

    /// The thresholds of `ev`'s rules and its signals' units (at start and after a reload: they
    /// change with the profiles).
    pub fn watch_thresholds(&mut self, ev: &Evaluator) {
        self.units = ev.signals.iter().map(|s| (s.name.clone(), s.unit)).collect();
        self.thresholds = ev
            .thresholds_by_signal()
            .into_iter()
            .map(|(signal, list)| (signal, list.into_iter().map(|(rule, cmp, v)| (rule, cmp.to_string(), v)).collect()))
            .collect();
    }

    /// One poll's outcome on its target's row.
    pub fn record_poll(&mut self, obs: &Observation) {
        let Some(t) = self.targets.iter_mut().find(|t| t.name == obs.target) else { return };
        t.up = Some(obs.up);
        if obs.up {
            t.last_ok_at = Some(obs.at);
        }
        t.polls_total += 1;
        t.duration_seconds = obs.duration_secs;
        t.last_error = obs.error.as_ref().map(|e| e.to_string());
        t.dropped_total += obs.dropped as u64;
        if let Some(e) = &obs.error {
            *t.errors_total.entry(e.reason().to_string()).or_insert(0) += 1;
        }
    }

    /// Counts this tick's decisions and returns those that changed since the last tick (kept
    /// among the [`RECENT`] ones).
    pub fn changed_decisions<'a>(&mut self, decisions: &'a [Decision]) -> Vec<&'a Decision> {
        let mut changed = Vec::new();
        for (i, d) in decisions.iter().enumerate() {
            let same = self
                .decisions
                .get(i)
                .is_some_and(|prev| prev.outcome == d.outcome && prev.explanation() == d.explanation());
            if !same {
                changed.push(d);
                self.recent.push_back(d.clone());
                if self.recent.len() > RECENT {
                    self.recent.pop_front();
                }
            }
            *self.decisions_total.entry(d.profile.clone()).or_default().entry(d.outcome.to_string()).or_insert(0) += 1;
        }
        changed
    }

    /// The evaluator's view after a tick: decisions, signals, rules, and from its evidence the
    /// alerts and the targets' fields.
    pub fn update(&mut self, ev: &Evaluator, tick: &Tick, now: Timestamp) {
        let evidence = ev.evidence();
        self.at = now;
        self.ticks_total = ev.ticks;
        self.series = evidence.store().len();
        self.decisions = tick.decisions.clone();
        self.firing_alerts = evidence.firing_alerts();
        self.signals = ev.signal_values().into_iter().map(|(n, v)| (n.to_string(), v)).collect();
        self.signal_history.retain(|name, _| self.signals.contains_key(name));
        for (name, value) in &self.signals {
            let history = self.signal_history.entry(name.clone()).or_default();
            history.push_back(value.filter(|v| v.is_finite()));
            if history.len() > SIGNAL_HISTORY {
                history.pop_front();
            }
        }
        let mut slos = Vec::new();
        for (pi, reading) in ev.slo_readings(now) {
            let mut budget_history = self
                .slos
                .iter_mut()
                .find(|s| s.reading.name == reading.name)
                .map(|s| std::mem::take(&mut s.budget_history))
                .unwrap_or_default();
            budget_history.push_back(reading.budget_remaining.filter(|v| v.is_finite()));
            if budget_history.len() > SIGNAL_HISTORY {
                budget_history.pop_front();
            }
            slos.push(SloStatus { profile: ev.profiles[pi].name.clone(), reading, budget_history });
        }
        self.slos = slos;
        let unknown: std::collections::HashSet<&str> =
            tick.decisions.iter().flat_map(|d| d.unknown.iter().map(String::as_str)).collect();
        let signals = &self.signals;
        self.rules = ev
            .rule_states()
            .map(|(r, state, value)| RuleStatus {
                name: r.name.clone(),
                profile: ev.profiles[r.profile].name.clone(),
                state: state.phase().to_string(),
                unknown: unknown.contains(r.name.as_str()),
                no_data: r
                    .reads
                    .iter()
                    .filter_map(|read| read.strip_prefix("signal:"))
                    .filter(|s| signals.get(*s).is_some_and(|v| v.is_none_or(|v| !v.is_finite())))
                    .map(str::to_string)
                    .collect(),
                value,
                unit: r.unit,
                severity: r.severity.clone(),
                since: match state {
                    crate::rules::state::RuleState::Inactive => None,
                    crate::rules::state::RuleState::Pending { since } => Some(since),
                    crate::rules::state::RuleState::Firing { since, .. } => Some(since),
                },
                coverage: ev.rule_coverage(r, now),
            })
            .collect();
        for t in &mut self.targets {
            t.fields = evidence.fields().get(&t.name).map(|f| f.iter().cloned().collect()).unwrap_or_default();
        }
    }

    /// Prometheus text exposition of rollwatch's own state.
    pub fn metrics(&self) -> String {
        let mut text = String::new();
        let mut section = |name: &str, kind: &str, help: &str, rows: Vec<String>| {
            let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for r in rows {
                let _ = writeln!(text, "{name}{r}");
            }
        };
        section(
            "rollwatch_rule_state",
            "gauge",
            "Rule state: 0 inactive, 1 pending, 2 firing.",
            self.rules
                .iter()
                .map(|r| {
                    let v = match r.state.as_str() {
                        "firing" => 2,
                        "pending" => 1,
                        _ => 0,
                    };
                    format!("{{rule=\"{}\",profile=\"{}\"}} {v}", label(&r.name), label(&r.profile))
                })
                .collect(),
        );
        section(
            "rollwatch_slo_budget_remaining",
            "gauge",
            "Share of the SLO's error budget left over its period (on the data there is; negative when overspent).",
            self.slos
                .iter()
                .filter_map(|s| {
                    let v = s.reading.budget_remaining?;
                    Some(format!("{{slo=\"{}\"}} {}", label(&s.reading.name), format_value(v)))
                })
                .collect(),
        );
        section(
            "rollwatch_slo_burn_rate",
            "gauge",
            "The SLO's burn rate over each window of its alerts (error ratio / (1 - objective)).",
            self.slos
                .iter()
                .flat_map(|s| {
                    s.reading.burn_rates.iter().filter_map(move |b| {
                        let v = b.burn_rate?;
                        Some(format!(
                            "{{slo=\"{}\",window=\"{}\"}} {}",
                            label(&s.reading.name),
                            b.window,
                            format_value(v)
                        ))
                    })
                })
                .collect(),
        );
        section(
            "rollwatch_decision",
            "gauge",
            "Current outcome per profile (1 for the outcome in force).",
            self.decisions
                .iter()
                .map(|d| format!("{{profile=\"{}\",outcome=\"{}\"}} 1", label(&d.profile), d.outcome))
                .collect(),
        );
        section(
            "rollwatch_decisions_total",
            "counter",
            "Decisions made, by profile and outcome.",
            self.decisions_total
                .iter()
                .flat_map(|(p, by)| {
                    by.iter().map(move |(o, n)| format!("{{profile=\"{}\",outcome=\"{o}\"}} {n}", label(p)))
                })
                .collect(),
        );
        section(
            "rollwatch_target_up",
            "gauge",
            "Whether the target's last poll succeeded.",
            self.targets
                .iter()
                .filter_map(|t| t.up.map(|up| format!("{{target=\"{}\"}} {}", label(&t.name), u8::from(up))))
                .collect(),
        );
        section(
            "rollwatch_target_probe_duration_seconds",
            "gauge",
            "Duration of the target's last poll.",
            self.targets
                .iter()
                .map(|t| format!("{{target=\"{}\"}} {}", label(&t.name), format_value(t.duration_seconds)))
                .collect(),
        );
        section(
            "rollwatch_target_series_dropped_total",
            "counter",
            "Series dropped as they were parsed because no loaded rule reads them.",
            self.targets.iter().map(|t| format!("{{target=\"{}\"}} {}", label(&t.name), t.dropped_total)).collect(),
        );
        section(
            "rollwatch_target_polls_total",
            "counter",
            "Polls of the target.",
            self.targets.iter().map(|t| format!("{{target=\"{}\"}} {}", label(&t.name), t.polls_total)).collect(),
        );
        section(
            "rollwatch_target_errors_total",
            "counter",
            "Failed polls by reason.",
            self.targets
                .iter()
                .flat_map(|t| {
                    t.errors_total
                        .iter()
                        .map(move |(r, n)| format!("{{target=\"{}\",reason=\"{r}\"}} {n}", label(&t.name)))
                })
                .collect(),
        );
        section(
            "rollwatch_evaluation_duration_seconds",
            "gauge",
            "Duration of the last evaluation tick.",
            vec![format!(" {}", format_value(self.last_evaluation_seconds))],
        );
        section("rollwatch_ticks_total", "counter", "Evaluation ticks.", vec![format!(" {}", self.ticks_total)]);
        let a = &self.acting;
        section(
            "rollwatch_rollbacks",
            "gauge",
            "Rollbacks in the journal by result (in_flight: the running one).",
            a.rollbacks.iter().map(|(result, n)| format!("{{result=\"{}\"}} {n}", label(result))).collect(),
        );
        section(
            "rollwatch_rollback_in_flight",
            "gauge",
            "1 while a rollback's steps run or it is being verified.",
            vec![format!(" {}", u8::from(a.in_flight.is_some()))],
        );
        section(
            "rollwatch_approvals_open",
            "gauge",
            "Approvals waiting for a person.",
            vec![format!(" {}", a.approvals.len())],
        );
        section(
            "rollwatch_paused",
            "gauge",
            "1 while acting is paused.",
            vec![format!(" {}", u8::from(a.paused_until.is_some()))],
        );
        section("rollwatch_silences", "gauge", "Rules silenced now.", vec![format!(" {}", a.silences.len())]);
        section(
            "rollwatch_escalations_total",
            "counter",
            "Escalations (S1, S2, S3, blind) since start.",
            vec![format!(" {}", a.escalations_total)],
        );
        let timings = &a.timings;
        let phase = |f: fn(&crate::act::state::Timings) -> Option<f64>| -> Vec<f64> {
            timings.iter().filter_map(|(_, t)| f(t)).collect()
        };
        section(
            "rollwatch_detect_seconds",
            "histogram",
            "Rollbacks by time from the deploy of the version rolled back to the decision.",
            histogram(&phase(|t| t.detect_seconds)),
        );
        section(
            "rollwatch_rollback_duration_seconds",
            "histogram",
            "Rollbacks by time from their start to their steps done.",
            histogram(&phase(|t| t.steps_seconds)),
        );
        section(
            "rollwatch_recovery_seconds",
            "histogram",
            "Completed rollbacks by time from the first sign of the issue to the verified recovery.",
            histogram(&phase(|t| t.recovery_seconds)),
        );
        let mut downtime: BTreeMap<&str, f64> = BTreeMap::new();
        for (profile, t) in timings {
            *downtime.entry(profile).or_default() += t.recovery_seconds.unwrap_or(0.0);
        }
        section(
            "rollwatch_downtime_seconds_total",
            "counter",
            "Seconds from the first sign of an issue to its verified recovery, summed over the journal's rollbacks.",
            downtime.iter().map(|(p, s)| format!("{{profile=\"{}\"}} {}", label(p), format_value(*s))).collect(),
        );
        section(
            "rollwatch_journal_writable",
            "gauge",
            "0 while the journal cannot be written (rollwatch watches but does not act).",
            vec![format!(" {}", u8::from(a.journal_error.is_none()))],
        );
        section(
            "rollwatch_leader",
            "gauge",
            "1 on the replica that may act (the leader among replicas; a replica alone), 0 elsewhere.",
            vec![format!(" {}", u8::from(self.may_act))],
        );
        section(
            "rollwatch_coordinator_reachable",
            "gauge",
            "With [ha]: 0 while etcd cannot be reached (no replica acts then); 1 otherwise.",
            vec![format!(" {}", u8::from(self.ha.as_ref().is_none_or(|h| h.role != crate::coord::Role::Unreachable)))],
        );
        section(
            "rollwatch_journal_dropped_total",
            "counter",
            "Journal records dropped because the writer fell behind (acting events wait instead).",
            vec![format!(" {}", a.journal_dropped)],
        );
        section(
            "rollwatch_connections_refused_total",
            "counter",
            "Connections to the own server closed for max_connections: an idle one evicted for a newcomer, or a newcomer refused while every slot was busy.",
            vec![format!(" {}", self.connections_refused)],
        );
        if let Some(c) = &self.clock {
            section(
                "rollwatch_clock_system_ahead_seconds",
                "gauge",
                "The system clock minus rollwatch's own timeline (behind: negative); rollwatch times everything on its own.",
                vec![format!(" {}", format_value(c.system_ahead_seconds))],
            );
        }
        section("rollwatch_series", "gauge", "Series in the window store.", vec![format!(" {}", self.series)]);
        section(
            "rollwatch_firing_alerts",
            "gauge",
            "Alertmanager alerts firing now.",
            vec![format!(" {}", self.firing_alerts.len())],
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse_back_with_our_own_parser() {
        let snap = Snapshot {
            targets: vec![TargetStatus {
                name: "a\"pi".into(),
                up: Some(false),
                errors_total: BTreeMap::from([("timeout".to_string(), 3)]),
                polls_total: 7,
                ..TargetStatus::default()
            }],
            rules: vec![RuleStatus {
                name: "r".into(),
                profile: "p".into(),
                state: "firing".into(),
                unknown: false,
                no_data: vec![],
                value: None,
                unit: Unit::Plain,
                severity: "critical".into(),
                since: None,
                coverage: vec![],
            }],
            ticks_total: 9,
            ..Snapshot::default()
        };
        let text = snap.metrics();
        let parsed = crate::source::exposition::parse(text.as_bytes());
        assert_eq!(parsed.bad_lines, 0, "{text}");
        let get = |name: &str| parsed.samples.iter().find(|s| s.key.name == name).map(|s| s.value);
        assert_eq!(get("rollwatch_rule_state"), Some(2.0));
        assert_eq!(get("rollwatch_target_up"), Some(0.0));
        assert_eq!(get("rollwatch_target_errors_total"), Some(3.0));
        assert_eq!(get("rollwatch_ticks_total"), Some(9.0));
        let up = parsed.samples.iter().find(|s| s.key.name == "rollwatch_target_up").unwrap();
        assert_eq!(up.key.label("target"), "a\"pi");
    }

    /// A follower's page: its role, the leader, and the leader's rollback in flight (from the
    /// shared log); `rollwatch_leader` 0.
    #[test]
    fn a_followers_page_names_the_leader_and_its_rollback_in_flight() {
        let entry = crate::act::history::Entry {
            id: "rb-3".into(),
            date: "2026-11-26T12:00:00Z".into(),
            profile: "api".into(),
            version_from: Some("v2".into()),
            version_to: Some("v1".into()),
            target_version: Some("v1".into()),
            reason: "r".into(),
            result: "in_flight".into(),
            duration_minutes: None,
            duration: None,
            steps: vec!["2 run undo: HTTP 200".into()],
            root_cause: None,
            error: None,
            approval_id: None,
            approved_by: None,
            timings: Default::default(),
        };
        let snap = Snapshot {
            may_act: false,
            ha: Some(crate::coord::HaStatus {
                replica: "b".into(),
                role: crate::coord::Role::Follower,
                leader: Some(crate::coord::Leader { replica: "a".into(), address: "http://10.0.0.5:9464".into() }),
                term: Some(7),
                error: None,
                since: None,
            }),
            acting: crate::act::dispatch::ActingStatus {
                standby: Some("a follower: a leads".into()),
                recent_rollbacks: vec![entry],
                ..Default::default()
            },
            ..Snapshot::default()
        };
        let page = snap.page();
        assert!(!page.contains("NOT HELD HERE"), "one deployment's follower watches it: {page}");
        assert!(page.contains("<b id=\"role\">follower</b>"), "{page}");
        let parked = Snapshot { deployment: Some("api".into()), ..snap.clone() };
        let page = parked.page();
        assert!(page.contains("<b>NOT HELD HERE</b>: replica a holds this deployment"), "{page}");
        assert!(page.contains("<b id=\"leader\">a (http://10.0.0.5:9464)</b>"), "{page}");
        assert!(page.contains("rollback <b>rb-3</b> of api (v2 → v1) in flight <b>on the leader</b>"), "{page}");
        assert!(page.contains("2 run undo: HTTP 200"), "{page}");
        assert!(snap.metrics().contains("\nrollwatch_leader 0\n"));
    }
}
