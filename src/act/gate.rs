//! The policy gate: whether a rollback may start now — a pure function of the state, the
//! policy and the time, returning a value (act, or hold with the reason). The dispatcher
//! journals and announces what the gate answers; the gate itself writes nothing.

use super::event::{ApprovalOpened, RollbackResult};
use super::state::State;
use crate::config::policy::Policy;
use crate::rules::Decision;
use crate::time::{Timestamp, iso};

/// What a rollback is started from: a decision, or an approval.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub profile: String,
    pub version: Option<String>,
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    /// The rules behind it (the deciding question's firing rules).
    pub firing: Vec<String>,
}

impl Start {
    /// From a decision about `version`; `level_label` gives a rule's `level` label, for a
    /// decision whose question sets no level.
    /// `level_label(rule)`: the rule's `level` label; `summary(rule)`: what the rule says for
    /// people (its `summary`), when it has one — the issue is then those, else the question
    /// that held and the firing rules' values.
    pub fn from_decision(
        d: &Decision,
        version: Option<String>,
        level_label: impl Fn(&str) -> Option<String>,
        summary: impl Fn(&crate::rules::RuleValue) -> Option<String>,
    ) -> Start {
        let asked = d.path.iter().rev().find(|a| a.yes).map(|a| a.ask.trim_end_matches('?').to_string());
        // What the decision is because of: the firing rules its question read (all firing rules
        // when the tree could not say).
        let cause: Vec<&crate::rules::RuleValue> =
            d.firing.iter().filter(|r| d.because.is_empty() || d.because.contains(&r.rule)).collect();
        let values: Vec<String> =
            cause.iter().map(|r| format!("{} = {}", r.rule, crate::template::show(&r.rule, r.value))).collect();
        let summaries: Vec<Option<String>> = cause.iter().map(|r| summary(r)).collect();
        let reason = match asked {
            _ if summaries.iter().any(Option::is_some) => {
                let said = summaries.into_iter().zip(&values).map(|(s, v)| s.unwrap_or_else(|| v.clone()));
                said.collect::<Vec<_>>().join("; ")
            }
            Some(q) => format!("{q} ({})", values.join(", ")),
            None => values.join(", "),
        };
        let firing: Vec<String> = cause.iter().map(|r| r.rule.clone()).collect();
        let level = d.level.clone().or_else(|| firing.iter().find_map(|r| level_label(r)));
        let explanation = d.explained_for(version.as_deref());
        Start { profile: d.profile.clone(), version, level, reason, explanation, firing }
    }

    pub fn from_approval(a: &ApprovalOpened) -> Start {
        Start {
            profile: a.profile.clone(),
            version: a.version.clone(),
            level: a.level.clone(),
            reason: a.reason.clone(),
            explanation: a.explanation.clone(),
            firing: a.firing.clone(),
        }
    }

    /// The idempotency key: profile + version.
    pub fn key(&self) -> String {
        key(&self.profile, self.version.as_deref())
    }
}

/// `profile@version` (`unknown` without a version source).
pub fn key(profile: &str, version: Option<&str>) -> String {
    format!("{profile}@{}", version.unwrap_or("unknown"))
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    Act,
    /// Held back for this reason (journalled as suppressed).
    Hold(String),
    /// The loop guard: held back, and worth an S1 page the first time.
    LoopGuard(String),
}

/// Whether `version` is a new deploy since rollback `last`: neither the version it rolled back
/// from nor its target nor the one it restored, and deployed after it started (in the order of
/// the facts, whichever clocks dated them).
fn deployed_since(state: &State, last: &super::state::Rollback, version: Option<&str>) -> bool {
    let Some(version) = version else { return false };
    let started = &last.started;
    let restored = last.finished.as_ref().and_then(|(_, f)| f.version_to.as_deref());
    started.version_from.as_deref() != Some(version)
        && started.target_version.as_deref() != Some(version)
        && restored != Some(version)
        && state.deployed_seq.is_some_and(|seq| seq > last.seq)
}

/// When a silence ends, as said to people.
pub fn until_text(until: Timestamp) -> String {
    if until.0 == i64::MAX { "unsilenced".into() } else { iso(until) }
}

/// Whether `start` may begin at `now`. `in_flight` is the rollback running, if any.
pub fn gate(state: &State, policy: &Policy, now: Timestamp, start: &Start, in_flight: Option<(&str, &str)>) -> Gate {
    if let Some((id, profile)) = in_flight {
        return Gate::Hold(format!("rollback {id} of {profile} is in flight"));
    }
    // A version is rolled back once per deploy of it: a failed attempt (its step ended) may be
    // tried again, cooldown and the loop guard permitting; an interrupted one never is — its
    // step may still be running where it was cut off (an orphaned `kubectl`, a dead leader's
    // child), and people were told to take over. A redeploy is judged anew.
    if let Some(version) = &start.version
        && let Some(r) = state.with_key_since_deploy(&start.key())
        && r.finished.as_ref().is_none_or(|(_, f)| f.result != RollbackResult::Failed)
    {
        let result = r.finished.as_ref().map_or("in flight".to_string(), |(_, f)| f.result.to_string());
        let by_hand = if result == "interrupted" { "; not retried: check the deployment by hand" } else { "" };
        return Gate::Hold(format!(
            "version {version} was already rolled back by {} ({result}){by_hand}",
            r.started.rollback_id
        ));
    }
    if let Some(until) = state.paused_until {
        return Gate::Hold(if until.0 == i64::MAX {
            "paused until resumed".into()
        } else {
            format!("paused until {}", iso(until))
        });
    }
    let silenced: Vec<String> = start
        .firing
        .iter()
        .filter_map(|r| state.silences.get(r).map(|until| format!("{r} until {}", until_text(*until))))
        .collect();
    if !start.firing.is_empty() && silenced.len() == start.firing.len() {
        return Gate::Hold(format!("silenced: {}", silenced.join(", ")));
    }
    // The cooldown guards against flapping on the same versions (the one rolled back from, the
    // one restored); a version deployed since the last rollback is judged on its own — the loop
    // guard still counts it.
    if let Some(last) = state.last_of(&start.profile)
        && now.saturating_since(last.at) < policy.cooldown
        && !deployed_since(state, last, start.version.as_deref())
    {
        let until = last.at.plus(policy.cooldown);
        return Gate::Hold(format!("cooldown after {} until {}", last.started.rollback_id, iso(until)));
    }
    let recent = state.started_since(now.minus(policy.max_rollbacks_per));
    if recent >= policy.max_rollbacks as usize {
        return Gate::LoopGuard(format!(
            "loop guard: {recent} rollbacks in the last {}; rollwatch stopped acting",
            policy.max_rollbacks_per
        ));
    }
    Gate::Act
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::event::{Deploy, DeploySource, Event, RollbackFinished, RollbackStarted};
    use crate::time::Span;

    fn start(version: &str) -> Start {
        Start {
            profile: "api".into(),
            version: Some(version.into()),
            level: None,
            reason: "r".into(),
            explanation: "e".into(),
            firing: vec!["err".into()],
        }
    }

    #[test]
    fn the_issue_is_the_firing_rules_summaries_else_the_question_and_their_values() {
        use crate::rules::tree::Answer;
        use crate::rules::{Decision, Outcome, RuleValue};
        let d = Decision {
            path: vec![Answer { ask: "Is error rate > 5%?".into(), yes: true }],
            firing: vec![
                RuleValue { rule: "errors".into(), value: Some(0.08) },
                RuleValue { rule: "latency".into(), value: Some(2.0) },
            ],
            because: vec!["errors".into(), "latency".into()],
            ..Decision::new(crate::time::Timestamp(0), "api", Outcome::Rollback)
        };
        let none = Start::from_decision(&d, None, |_| None, |_| None);
        assert_eq!(none.reason, "Is error rate > 5% (errors = 0.08, latency = 2s)");
        let some = Start::from_decision(&d, None, |_| None, |r| (r.rule == "errors").then(|| "Error rate 8%".into()));
        assert_eq!(some.reason, "Error rate 8%; latency = 2s", "a rule without a summary shows its value");
    }

    fn rolled_back(state: &mut State, at: i64, id: &str, version: &str, result: RollbackResult) {
        let s = RollbackStarted {
            deployed_at: None,
            issue_since: None,
            decided_at: None,
            rollback_id: id.into(),
            profile: "api".into(),
            key: key("api", Some(version)),
            version_from: Some(version.into()),
            target_version: None,
            level: None,
            reason: "r".into(),
            explanation: "e".into(),
            firing: vec![],
            approval_id: None,
            environment: false,
        };
        state.apply(Timestamp(at), &Event::RollbackStarted(s)).unwrap();
        let f = RollbackFinished { rollback_id: id.into(), result, duration_ms: 1, version_to: None, error: None };
        state.apply(Timestamp(at + 1), &Event::RollbackFinished(f)).unwrap();
    }

    const H: i64 = 3_600_000;

    #[test]
    fn an_escalation_counts_as_told_until_the_next_rollback_starts() {
        use crate::act::event::{Escalation, Severity};
        let mut state = State::default();
        let finding = "loop guard: 2 rollbacks in the last 6h; rollwatch stopped acting";
        let escalate = |state: &mut State, at: i64| {
            let e = Escalation {
                severity: Severity::S1,
                finding: finding.into(),
                response: "r".into(),
                profile: "api".into(),
                rollback_id: None,
            };
            state.apply(Timestamp(at), &Event::Escalation(e)).unwrap();
        };
        rolled_back(&mut state, H, "rb-1", "v2", RollbackResult::Completed);
        assert!(!state.escalated_since_last_rollback("api", finding));
        escalate(&mut state, 2 * H);
        assert!(state.escalated_since_last_rollback("api", finding), "told: a new leader does not tell it again");
        assert!(!state.escalated_since_last_rollback("web", finding), "another profile's is its own");
        assert!(!state.escalated_since_last_rollback("api", "loop guard: 3 rollbacks in the last 6h"));
        rolled_back(&mut state, 3 * H, "rb-2", "v3", RollbackResult::Completed);
        assert!(!state.escalated_since_last_rollback("api", finding), "a rollback since: told again when it trips");
    }

    #[test]
    fn the_gate_holds_in_order_and_says_why() {
        let policy = Policy::default();
        let mut state = State::default();
        let now = Timestamp(10 * H);
        assert_eq!(gate(&state, &policy, now, &start("v2"), None), Gate::Act);
        assert!(
            matches!(gate(&state, &policy, now, &start("v2"), Some(("rb-1", "api"))), Gate::Hold(r) if r.contains("in flight"))
        );
        rolled_back(&mut state, 9 * H, "rb-1", "v2", RollbackResult::Completed);
        assert!(
            matches!(gate(&state, &policy, now, &start("v2"), None), Gate::Hold(r) if r.contains("already rolled back by rb-1"))
        );
        assert!(matches!(gate(&state, &policy, now, &start("v3"), None), Gate::Act), "another version is judged anew");
        state.paused_until = Some(Timestamp(i64::MAX));
        assert!(matches!(gate(&state, &policy, now, &start("v3"), None), Gate::Hold(r) if r == "paused until resumed"));
        state.paused_until = None;
        state.silences.insert("err".into(), Timestamp(i64::MAX));
        assert!(
            matches!(gate(&state, &policy, now, &start("v3"), None), Gate::Hold(r) if r == "silenced: err until unsilenced")
        );
    }

    /// The cooldown guards the versions of the last rollback (the one rolled back from, the one
    /// restored); a version deployed since is judged on its own, the loop guard counting.
    #[test]
    fn the_cooldown_holds_the_same_versions_not_a_new_deploy() {
        let policy = Policy { cooldown: Span(H), ..Policy::default() };
        let mut state = State::default();
        state
            .apply(
                Timestamp(0),
                &Event::Deploy(Deploy { from: None, to: "v2".into(), source: DeploySource::Hook, seen_at: None }),
            )
            .unwrap();
        rolled_back(&mut state, 10, "rb-1", "v2", RollbackResult::Failed);
        let soon = Timestamp(60_000);
        assert!(
            matches!(gate(&state, &policy, soon, &start("v2"), None), Gate::Hold(r) if r.contains("cooldown after rb-1"))
        );
        state
            .apply(
                Timestamp(30_000),
                &Event::Deploy(Deploy { from: None, to: "v3".into(), source: DeploySource::Hook, seen_at: None }),
            )
            .unwrap();
        assert_eq!(
            gate(&state, &policy, soon, &start("v3"), None),
            Gate::Act,
            "a new deploy is not held by the cooldown"
        );
    }

    #[test]
    fn a_failed_rollback_may_be_retried_after_the_cooldown_within_the_loop_guard() {
        let policy = Policy { cooldown: Span(30 * 60_000), ..Policy::default() };
        let mut state = State::default();
        rolled_back(&mut state, 0, "rb-1", "v2", RollbackResult::Failed);
        assert!(
            matches!(gate(&state, &policy, Timestamp(60_000), &start("v2"), None), Gate::Hold(r) if r.contains("cooldown"))
        );
        assert_eq!(gate(&state, &policy, Timestamp(H), &start("v2"), None), Gate::Act);
        rolled_back(&mut state, H, "rb-2", "v2", RollbackResult::Failed);
        assert!(
            matches!(gate(&state, &policy, Timestamp(2 * H), &start("v2"), None), Gate::LoopGuard(f) if f.contains("2 rollbacks"))
        );
    }

    #[test]
    fn an_interrupted_rollback_is_never_retried_for_that_deploy() {
        let policy = Policy { cooldown: Span(60_000), ..Policy::default() };
        let mut state = State::default();
        rolled_back(&mut state, 0, "rb-1", "v2", RollbackResult::Interrupted);
        assert!(matches!(
            gate(&state, &policy, Timestamp(10 * H), &start("v2"), None),
            Gate::Hold(r) if r.contains("rb-1 (interrupted); not retried: check the deployment by hand")
        ));
        assert_eq!(
            gate(&state, &policy, Timestamp(10 * H), &start("v3"), None),
            Gate::Act,
            "another version is judged anew"
        );
    }
}
