//! Rules and decisions: [`state`] is the per-rule state machine, [`tree`] the decision tree,
//! [`load`] compiles profiles, and the [`Evaluator`] here runs one tick — window calls →
//! signals → rules in dependency order → one decision per profile — on the time it is given.
//! It holds the [`Evidence`] its rules read (the window store with their selectors registered,
//! the targets' series, the alerts, where the version's evidence starts) and is the sole owner of
//! the rule states (no locks); sources write the evidence through the evaluator's named methods
//! ([`observe`](Evaluator::observe), [`update_alerts`](Evaluator::update_alerts), …), which hand
//! it to the evidence's own. Replay and the live sidecar drive the same evaluator. [`coverage`]
//! tells how much of a window holds data (a rule may require a share: `min_coverage`), and
//! [`checkpoint`] keeps windows and rule states across a restart of rollwatch. [`slo`] turns
//! `[[slo]]` into rules and reads SLOs' budgets.

pub mod checkpoint;
pub mod coverage;
pub mod deployment;
pub mod load;
pub mod slo;
pub mod state;
pub mod tree;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use crate::expr::compare::Judgements;
use crate::expr::{Call, Cond, Num, Offset, Scope, Slots, Truth, Value, Verdict};
use crate::selector::SeriesKey;
use crate::source::alertmanager::AlertUpdate;
use crate::source::{Evidence, Observation};
use crate::time::{Span, Timestamp};
use crate::window::Store;
pub use coverage::WindowCoverage;
pub use state::{OnNoData, Phase, RuleState, Timing};
pub use tree::{Decision, Outcome, RuleValue, Tree};

/// A named numeric expression of a profile.
#[derive(Debug, Clone)]
pub struct Signal {
    pub name: String,
    pub slot: usize,
    pub num: Num,
    /// The selectors of the window calls it makes, as written.
    pub reads: Vec<String>,
    /// The shortest window it reads, with where it is written.
    pub shortest_window: Option<Span>,
    /// The window calls it makes, directly or through other signals (indices of the
    /// evaluator's calls).
    pub calls: Vec<usize>,
    pub span: Range<usize>,
    /// Index of its profile.
    pub profile: usize,
    /// What its values measure, from its expression (else its name): how people are shown them.
    pub unit: crate::template::Unit,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Index of its profile.
    pub profile: usize,
    pub cond: Cond,
    /// What its messages report: `value = '...'`, else the left side of its first comparison.
    pub value: Option<Num>,
    /// What that value measures, from its expression (else the rule's name).
    pub unit: crate::template::Unit,
    pub timing: Timing,
    pub severity: String,
    pub summary: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Rules whose state this one reads.
    pub depends_on: Vec<String>,
    /// Whose evidence it judges: the deployed version's (windows start at its deploy, its state
    /// restarts there) or the environment's (full history).
    pub scope: Scope,
    /// The signals (`signal:NAME`) and selectors its condition reads directly: rules that share
    /// one watch the same thing, and verify a rollback together.
    pub reads: Vec<String>,
    /// The shortest window its condition reads directly.
    pub shortest_window: Option<Span>,
    /// The share of each window its condition reads that must hold data (`min_coverage`):
    /// below it the rule is unknown — it neither fires nor clears on partial data.
    pub min_coverage: Option<f64>,
    /// The window calls its condition reads, directly or through signals (indices of the
    /// evaluator's calls): whose coverage it reports and requires.
    pub windows: Vec<usize>,
    /// Where its condition is written, for messages.
    pub span: Range<usize>,
    firing_slot: usize,
    pending_slot: usize,
    /// The signals its condition compares with a constant (`error_rate > 0.05`): what a plot
    /// of the signal draws as thresholds.
    pub thresholds: Vec<Threshold>,
}

/// A signal compared with a constant by a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: String,
    pub cmp: crate::expr::Cmp,
    pub value: f64,
}

/// A compiled profile: its tree (its rules live in the evaluator; its procedures with acting).
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub path: PathBuf,
    pub description: Option<String>,
    pub tree: Tree,
    pub consider_auto_after: Option<Span>,
}

/// A rule changing state.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transition {
    pub at: Timestamp,
    pub rule: String,
    #[serde(serialize_with = "phase_str")]
    pub from: Phase,
    #[serde(serialize_with = "phase_str")]
    pub to: Phase,
    /// The rule's value on the tick it changed.
    pub value: Option<f64>,
}

fn phase_str<S: serde::Serializer>(p: &Phase, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&p.to_string())
}

/// What one tick produced.
#[derive(Debug, Clone, Default)]
pub struct Tick {
    pub transitions: Vec<Transition>,
    pub decisions: Vec<Decision>,
}

/// Runs rules over the evidence on the time it is given.
#[derive(Debug)]
pub struct Evaluator {
    pub profiles: Vec<Profile>,
    pub signals: Vec<Signal>,
    pub rules: Vec<Rule>,
    calls: Vec<(Call, usize, Scope)>,
    slots: Slots,
    /// What the rules read: the window store (their selectors registered in it), the targets'
    /// series, the alerts, where the version's evidence starts.
    evidence: Evidence,
    states: Vec<RuleState>,
    values: Vec<Option<f64>>,
    truths: Vec<Truth>,
    /// Rule indices per profile, in the order the profile lists them.
    by_profile: Vec<Vec<usize>>,
    /// Ticks evaluated so far.
    pub ticks: u64,
    /// Per call, its value over the window just before that deploy (`"deploy"` offsets only).
    deploy_values: Vec<Option<f64>>,
    /// Per rule, whether it was firing before the current deploy and has not been seen
    /// inactive with known inputs since.
    predated: Vec<bool>,
    /// States ended by the last evidence restart, reported with the next tick's transitions.
    restarted: Vec<Transition>,
    /// Rules an operator silenced: the decision trees read them as not firing.
    silenced: std::collections::BTreeSet<String>,
    /// Per rule, whether a window it reads held less than its `min_coverage` this tick.
    short: Vec<bool>,
    /// The SLOs loaded, with the slots of their burn rates and budgets.
    slos: Vec<slo::SloWatch>,
    /// The baseline judge's calls: each one's verdict on the last tick, and what a `"deploy"`
    /// baseline read just before the current deploy.
    judgements: Judgements,
}

impl Evaluator {
    fn new(
        profiles: Vec<Profile>,
        signals: Vec<Signal>,
        rules: Vec<Rule>,
        calls: Vec<(Call, usize, Scope)>,
        slots: Slots,
        store: Store,
    ) -> Evaluator {
        let mut by_profile = vec![Vec::new(); profiles.len()];
        for (i, r) in rules.iter().enumerate() {
            by_profile[r.profile].push(i);
        }
        let n = rules.len();
        let deploy_values = vec![None; calls.len()];
        Evaluator {
            judgements: Judgements::new(calls.len()),
            deploy_values,
            predated: vec![false; n],
            restarted: vec![],
            silenced: Default::default(),
            short: vec![false; n],
            slos: Vec::new(),
            profiles,
            signals,
            rules,
            calls,
            slots,
            evidence: Evidence::new(store),
            states: vec![RuleState::Inactive; n],
            values: vec![None; n],
            truths: vec![Truth::Unknown; n],
            by_profile,
            ticks: 0,
        }
    }

    /// The metric names the loaded rules can read (`None`: any); sources drop the rest.
    pub fn metric_names(&self) -> Option<std::collections::HashSet<String>> {
        self.evidence.store().selector_names()
    }

    /// What the rules read (the window store, the targets' fields, the alerts), to read.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// The window store, to read.
    pub fn store(&self) -> &Store {
        self.evidence.store()
    }

    /// A poll's observation into the evidence ([`Evidence::observe`]).
    pub fn observe(&mut self, obs: &Observation) {
        self.evidence.observe(obs);
    }

    /// An Alertmanager webhook's updates at `now` into the evidence; returns the changes
    /// ([`Evidence::update_alerts`]).
    pub fn update_alerts(&mut self, updates: Vec<AlertUpdate>, now: Timestamp) -> Vec<AlertUpdate> {
        self.evidence.update_alerts(updates, now)
    }

    /// The alerts' upkeep before a tick ([`Evidence::refresh_alerts`]).
    pub fn refresh_alerts(&mut self, now: Timestamp, expiry: Option<Span>) {
        self.evidence.refresh_alerts(now, expiry);
    }

    /// A fixture's sample ([`Evidence::sample`]).
    pub fn sample(&mut self, key: &SeriesKey, at: Timestamp, value: f64) {
        self.evidence.sample(key, at, value);
    }

    /// A fixture's stale marker ([`Evidence::stale`]).
    pub fn stale(&mut self, key: &SeriesKey, at: Timestamp) {
        self.evidence.stale(key, at);
    }

    /// A rule's current state, by name.
    pub fn state(&self, rule: &str) -> Option<RuleState> {
        self.rules.iter().position(|r| r.name == rule).map(|i| self.states[i])
    }

    /// A rule's value on the last tick.
    pub fn value(&self, rule: &str) -> Option<f64> {
        self.rules.iter().position(|r| r.name == rule).and_then(|i| self.values[i])
    }

    /// Takes over a running evaluator's data and rule states (a config reload): the window store
    /// keeps its samples under this evaluator's selectors, and each rule carries over the state
    /// of the old rule with the same name (as Prometheus' `CopyState`); new rules start inactive.
    pub fn adopt(&mut self, old: Evaluator) {
        // Judges' "deploy" baselines, by the call as written (read before the store moves).
        let kept: Vec<(String, crate::expr::Baseline)> =
            old.judgements.baselines().map(|(i, b)| (old.call_key(i), b.clone())).collect();
        self.evidence.adopt(old.evidence);
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(j) = old.rules.iter().position(|r| r.name == rule.name) {
                self.states[i] = old.states[j];
                self.values[i] = old.values[j];
                self.slots.set(rule.firing_slot, Value::Boolean(self.states[i].is_firing()));
                self.slots.set(rule.pending_slot, Value::Boolean(self.states[i].is_pending()));
            }
        }
        self.ticks = old.ticks;
        for (i, rule) in self.rules.iter().enumerate() {
            self.predated[i] = old.rules.iter().position(|r| r.name == rule.name).is_some_and(|j| old.predated[j]);
        }
        if let Some(at) = self.evidence.since() {
            self.take_deploy_values(at);
            self.restore_baselines(kept);
        }
    }

    /// Puts back judges' `"deploy"` baselines kept at the current deploy (by a running
    /// evaluator, or in a checkpoint), matching calls as written.
    fn restore_baselines(&mut self, kept: Vec<(String, crate::expr::Baseline)>) {
        for (key, baseline) in kept {
            if let Some(i) = (0..self.calls.len()).find(|&i| self.call_key(i) == key) {
                self.judgements.restore_baseline(i, baseline);
            }
        }
    }

    /// Where the current version's evidence starts, if a deploy is known.
    pub fn evidence_since(&self) -> Option<Timestamp> {
        self.evidence.since()
    }

    /// The deployed version's evidence starts at `at` (a deploy, or a rollback's restore point):
    /// windows of deployment-scoped rules start there, their states restart (a pending `for`
    /// does not carry over) — but a rule that turned active after `at` (a deploy dated back)
    /// is pending from when it turned, and fires again at once if its condition holds on the
    /// new evidence — and `"deploy"` offsets read the window just before it. With
    /// `predates` (a deploy seen while running), the rules firing at the last evaluation whose
    /// condition held since `at` or before are remembered: until seen inactive, what they report
    /// is older than this version. (A deploy is dated when the version could first have run —
    /// just after the last reading of the old one — so a rule that turned true after that is
    /// about the new version, even if its evaluation came before the new version was read.)
    pub fn restart_evidence(&mut self, at: Timestamp, predates: bool) {
        self.take_deploy_values(at);
        self.evidence.restart(at);
        for i in 0..self.rules.len() {
            let before = matches!(self.states[i], RuleState::Firing { active_since, .. } if active_since <= at);
            self.predated[i] = predates && self.ticks > 0 && before;
            // A deploy dated back (just after the old version's last reading): a rule that
            // became active since then may be the new version's — it stays pending from when it
            // turned (its `for` is not started again), and fires at once only if its condition
            // holds on the new version's own evidence (its windows included the old version's);
            // the others start again inactive.
            let since = match self.states[i] {
                RuleState::Pending { since } => Some(since),
                RuleState::Firing { active_since, .. } => Some(active_since),
                RuleState::Inactive => None,
            };
            if self.rules[i].scope != Scope::Deployment {
                continue;
            }
            match since {
                Some(since) if since > at => self.demote_rule(i, at, since),
                _ => self.restart_rule(i, at),
            }
        }
    }

    /// Rule `i` starts again inactive at `at` (its end reported with the next tick's
    /// transitions).
    fn restart_rule(&mut self, i: usize, at: Timestamp) {
        let rule = &self.rules[i];
        if self.states[i].phase() != Phase::Inactive {
            self.restarted.push(Transition {
                at,
                rule: rule.name.clone(),
                from: self.states[i].phase(),
                to: Phase::Inactive,
                value: None,
            });
        }
        self.states[i] = RuleState::Inactive;
        self.values[i] = None;
        self.truths[i] = Truth::Unknown;
        self.slots.set(rule.firing_slot, Value::Boolean(false));
        self.slots.set(rule.pending_slot, Value::Boolean(false));
    }

    /// Rule `i`, active since `since`, is pending from then again (a firing rule's end reported
    /// with the next tick's transitions): it fires again only on a condition true from now on.
    fn demote_rule(&mut self, i: usize, at: Timestamp, since: Timestamp) {
        let rule = &self.rules[i];
        if self.states[i].phase() == Phase::Firing {
            self.restarted.push(Transition {
                at,
                rule: rule.name.clone(),
                from: Phase::Firing,
                to: Phase::Pending,
                value: None,
            });
        }
        self.states[i] = RuleState::Pending { since };
        self.values[i] = None;
        self.truths[i] = Truth::Unknown;
        self.slots.set(rule.firing_slot, Value::Boolean(false));
        self.slots.set(rule.pending_slot, Value::Boolean(true));
    }

    /// This evaluator goes on at `now` after a time it was not fed (a fleet's deployment held
    /// here again after another replica held it): the time since it was last watched is missing
    /// data, and every rule starts again inactive — a state from before says nothing of now
    /// (the replica that held it meanwhile may have seen it clear), so a rule fires again only
    /// on what is seen from now on (its `for` included). The samples seen before stay history.
    pub fn resume_after_gap(&mut self, now: Timestamp) {
        let watched: Vec<(Timestamp, Timestamp)> = self.evidence.store().watched().collect();
        self.evidence.resume(watched, now);
        for i in 0..self.rules.len() {
            self.restart_rule(i, now);
            self.predated[i] = false;
            self.short[i] = false;
        }
    }

    fn take_deploy_values(&mut self, at: Timestamp) {
        for (i, (call, _, _)) in self.calls.iter().enumerate() {
            if call.offset() == Offset::Deploy {
                self.deploy_values[i] = call.eval(self.evidence.store(), at, None, Some(at));
            }
            self.judgements.keep_baseline(i, call, self.evidence.store(), at);
        }
    }

    /// Every SLO's budget and burn rates after the tick at `now`, with the index of its profile.
    pub fn slo_readings(&self, now: Timestamp) -> Vec<(usize, slo::SloReading)> {
        self.slos.iter().map(|w| (w.profile, w.read(&self.slots, self.slo_seen(w, now)))).collect()
    }

    /// How much of an SLO's period its budget is computed on at `now`, when less than all of it.
    fn slo_seen(&self, w: &slo::SloWatch, now: Timestamp) -> Option<Span> {
        let (window, covered) = window_coverage(self.calls.get(w.remaining_call)?, &self.evidence, now)?;
        (covered < window).then_some(covered)
    }

    /// Every rule with its current state and value, in evaluation order.
    pub fn rule_states(&self) -> impl Iterator<Item = (&Rule, RuleState, Option<f64>)> {
        self.rules.iter().enumerate().map(|(i, r)| (r, self.states[i], self.values[i]))
    }

    /// Per signal, the rules comparing it with a constant: `(rule, comparison, constant)`, in
    /// rule order (what the status page and the plots draw as thresholds).
    pub fn thresholds_by_signal(&self) -> BTreeMap<String, Vec<(String, crate::expr::Cmp, f64)>> {
        let mut out: BTreeMap<String, Vec<(String, crate::expr::Cmp, f64)>> = BTreeMap::new();
        for r in &self.rules {
            for t in &r.thresholds {
                out.entry(t.signal.clone()).or_default().push((r.name.clone(), t.cmp, t.value));
            }
        }
        out
    }

    /// Current signal values (no data as `None`).
    pub fn signal_values(&self) -> Vec<(&str, Option<f64>)> {
        self.signals
            .iter()
            .map(|s| {
                let v = match self.slots.get(s.slot) {
                    Value::Float(f) => Some(*f),
                    _ => None,
                };
                (s.name.as_str(), v)
            })
            .collect()
    }

    /// The rules silenced from the next tick on (only these): each keeps its state, but the
    /// decision trees read it as neither firing nor pending, so a tree goes on to the next
    /// question that holds without it — a silence removes that rule's path, not the incident.
    pub fn silence(&mut self, rules: impl IntoIterator<Item = String>) {
        self.silenced = rules.into_iter().collect();
    }

    /// Evaluates everything at `now`: the one place rule states change.
    pub fn tick(&mut self, now: Timestamp) -> Tick {
        self.evidence.watch(now);
        self.ticks += 1;
        let (store, evidence_since) = (self.evidence.store(), self.evidence.since());
        for (i, (call, slot, scope)) in self.calls.iter().enumerate() {
            if call.is_judge() {
                let since = if *scope == Scope::Deployment { evidence_since } else { None };
                let truth = match self.judgements.judge(i, call, store, now, since) {
                    Truth::True => Value::Boolean(true),
                    Truth::False => Value::Boolean(false),
                    Truth::Unknown => Value::Empty,
                };
                self.slots.set(*slot, truth);
                continue;
            }
            let value = if call.offset() == Offset::Deploy {
                self.deploy_values[i]
            } else {
                let since = if *scope == Scope::Deployment { evidence_since } else { None };
                call.eval(store, now, since, evidence_since)
            };
            self.slots.set_number(*slot, value);
        }
        for s in &self.signals {
            let v = s.num.eval(&self.slots);
            self.slots.set_number(s.slot, v);
        }
        let mut tick = Tick { transitions: std::mem::take(&mut self.restarted), ..Tick::default() };
        for (i, rule) in self.rules.iter().enumerate() {
            let truth = rule.cond.eval(&self.slots);
            let value = match &rule.value {
                Some(v) => v.eval(&self.slots),
                // A bare baseline comparison reports the candidate's figure.
                None => rule.windows.iter().find_map(|&c| self.judgements.verdict(c)?.candidate()),
            };
            let before = self.states[i];
            // A window holding less than the rule requires: unknown, whatever `on_no_data`
            // says — partial data is no evidence either way, so the state holds.
            self.short[i] = rule.min_coverage.is_some_and(|min| {
                rule.windows.iter().any(|&c| {
                    window_coverage(&self.calls[c], &self.evidence, now)
                        .is_some_and(|(window, covered)| coverage::share(window, covered) < min)
                })
            });
            let (truth, timing) = match self.short[i] {
                true => (Truth::Unknown, Timing { on_no_data: OnNoData::Keep, ..rule.timing }),
                false => (truth, rule.timing),
            };
            let after = before.step(now, truth, &timing);
            if before.phase() != after.phase() {
                tracing::debug!(rule = %rule.name, at = %now, from = %before.phase(), to = %after.phase(), ?value, "rule state changed");
                tick.transitions.push(Transition {
                    at: now,
                    rule: rule.name.clone(),
                    from: before.phase(),
                    to: after.phase(),
                    value,
                });
            }
            self.states[i] = after;
            self.values[i] = value;
            self.truths[i] = timing.on_no_data.apply(truth);
            // Seen quiet clears what predated the deploy. A deployment's rule without data is
            // not seen quiet, whatever its `on_no_data`: its windows start at the deploy, and no
            // data yet on the new version is not the incident's end. (An environment rule read
            // as an alert is: its alert resolved is its series gone.)
            let unseen = truth == Truth::Unknown && rule.scope == Scope::Deployment;
            if self.truths[i] == Truth::False && !unseen {
                self.predated[i] = false;
            }
            let heard = !self.silenced.contains(&rule.name);
            self.slots.set(rule.firing_slot, Value::Boolean(heard && after.is_firing()));
            self.slots.set(rule.pending_slot, Value::Boolean(heard && after.is_pending()));
        }
        for (pi, profile) in self.profiles.iter().enumerate() {
            let (outcome, level, path, by_default) = profile.tree.decide(&self.slots);
            let rules = &self.by_profile[pi];
            let deciding =
                if by_default { None } else { path.len().checked_sub(1).and_then(|i| profile.tree.questions.get(i)) };
            let because = deciding
                .map(|q| {
                    q.reads
                        .iter()
                        .filter(|r| {
                            self.rules.iter().position(|x| &x.name == *r).is_some_and(|i| self.states[i].is_firing())
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            tick.decisions.push(Decision {
                at: now,
                profile: profile.name.clone(),
                outcome,
                level,
                path,
                by_default,
                firing: rules
                    .iter()
                    .filter(|&&i| self.states[i].is_firing())
                    .map(|&i| RuleValue { rule: self.rules[i].name.clone(), value: self.values[i] })
                    .collect(),
                because,
                unknown: rules
                    .iter()
                    .filter(|&&i| self.truths[i] == Truth::Unknown)
                    .map(|&i| self.rules[i].name.clone())
                    .collect(),
                pending: rules
                    .iter()
                    .filter(|&&i| self.states[i].is_pending())
                    .map(|&i| self.rules[i].name.clone())
                    .collect(),
                predates: rules
                    .iter()
                    .filter(|&&i| self.states[i].is_firing() && self.predated[i])
                    .map(|&i| self.rules[i].name.clone())
                    .collect(),
                silenced: rules
                    .iter()
                    .filter(|&&i| self.states[i].is_firing() && self.silenced.contains(&self.rules[i].name))
                    .map(|&i| self.rules[i].name.clone())
                    .collect(),
                coverage: rules
                    .iter()
                    .filter(|&&i| self.short[i] || self.states[i].phase() != Phase::Inactive)
                    .flat_map(|&i| self.rule_coverage(&self.rules[i], now))
                    .collect(),
                slo: self
                    .slos
                    .iter()
                    .filter(|w| {
                        w.profile == pi && w.rules().iter().any(|r| self.state(r).is_some_and(|s| s.is_firing()))
                    })
                    .map(|w| w.read(&self.slots, self.slo_seen(w, now)).note())
                    .collect(),
                judged: rules.iter().flat_map(|&i| self.judged(&self.rules[i])).collect(),
            });
        }
        tick
    }

    /// The baseline judge's figures behind `rule` on the last tick, one line per comparison it
    /// makes: `canary-latency: candidate mean 140ms vs baseline 100ms (+40%), Mann-Whitney
    /// p = 5e-15, 98% needed`.
    pub fn judged(&self, rule: &Rule) -> Vec<String> {
        rule.windows
            .iter()
            .filter_map(|&c| self.judgements.verdict(c))
            .map(|v| format!("{}: {}", rule.name, v.note()))
            .collect()
    }

    /// Call `i` as written (its selectors' texts and arguments): what identifies it across a
    /// restart, whatever order the calls were compiled in.
    fn call_key(&self, i: usize) -> String {
        let Some((call, _, scope)) = self.calls.get(i) else { return String::new() };
        let texts =
            call.clone().map(|id| self.evidence.store().selector(id).map(|s| s.text.clone()).unwrap_or_default());
        format!("{scope:?} {texts:?}")
    }

    /// Whether `rule` compares with a baseline (reads a judge call).
    pub fn judges(&self, rule: &Rule) -> bool {
        rule.windows.iter().any(|&c| self.calls.get(c).is_some_and(|(call, _, _)| call.is_judge()))
    }

    /// Every baseline comparison on the last tick, by rule (for the status page).
    pub fn verdicts(&self) -> Vec<(&Rule, &Verdict)> {
        self.rules
            .iter()
            .flat_map(|r| r.windows.iter().filter_map(|&c| self.judgements.verdict(c)).map(move |v| (r, v)))
            .collect()
    }

    /// The windows `rule`'s condition reads that hold less than their whole span at `now`
    /// (after the tick at `now`), with how much they hold.
    pub fn rule_coverage(&self, rule: &Rule, now: Timestamp) -> Vec<WindowCoverage> {
        rule.windows
            .iter()
            .filter_map(|&c| {
                let (window, covered) = window_coverage(&self.calls[c], &self.evidence, now)?;
                let offset = match self.calls[c].0.offset() {
                    Offset::Ago(span) if span.is_zero() => None,
                    Offset::Ago(span) => Some(span.to_string()),
                    Offset::Deploy => Some("deploy".to_string()),
                };
                (covered < window).then(|| WindowCoverage::new(&rule.name, window, offset, covered, rule.min_coverage))
            })
            .collect()
    }
}

/// A window call's `(window, covered)` at `now`: deployment-scoped calls from the current
/// version's evidence on. `None` for calls without a window.
fn window_coverage(
    (call, _, scope): &(Call, usize, Scope),
    evidence: &Evidence,
    now: Timestamp,
) -> Option<(Span, Span)> {
    let since = if *scope == Scope::Deployment { evidence.since() } else { None };
    call.coverage(evidence.store(), now, since, evidence.since())
}
