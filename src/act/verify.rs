//! Verification: a rollback is complete only when the rules behind it — and every rule that
//! reads one of the same signals or selectors — have been inactive with known inputs for
//! `verify_stable`, on the restored version's own evidence (from the restore point on). A rule
//! seen quiet that fires again is a relapse; still pending, firing or unknown when `verify_for`
//! runs out is "issue persists" (or "unverified" when only unknown). Pure: the dispatcher feeds
//! it each tick's decision and acts on the verdict.

use crate::rules::Decision;
use crate::time::{Span, Timestamp};

/// The verification of one rollback in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The rules that must be quiet.
    pub rules: Vec<String>,
    /// Where the restored version's evidence starts (steps' end, then the new version's first
    /// observation).
    pub restore_at: Timestamp,
    /// The new version observed after the steps (the restore), once it is.
    pub version_to: Option<String>,
    /// The first version observed after the steps, new or not.
    pub first_seen: Option<String>,
    /// When verification gives up.
    pub deadline: Timestamp,
    stable_since: Option<Timestamp>,
    seen_quiet: Vec<String>,
}

/// What one tick says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Waiting,
    /// Quiet for `verify_stable`.
    Verified,
    /// Seen quiet after the restore, then firing again.
    Relapsed(Vec<String>),
    /// `verify_for` ran out with these rules pending or firing.
    Persists(Vec<String>),
    /// `verify_for` ran out with these rules' inputs unknown (and none pending or firing).
    Unseen(Vec<String>),
}

impl Verification {
    pub fn new(rules: Vec<String>, steps_done: Timestamp, verify_for: Span) -> Verification {
        Verification {
            rules,
            restore_at: steps_done,
            version_to: None,
            first_seen: None,
            deadline: steps_done.plus(verify_for),
            stable_since: None,
            seen_quiet: vec![],
        }
    }

    /// The restore point moves to `at` (the new version first seen): evidence starts over.
    pub fn restored(&mut self, at: Timestamp, version: &str) {
        self.restore_at = at;
        self.version_to = Some(version.to_string());
        self.stable_since = None;
        self.seen_quiet.clear();
    }

    /// The version observed after the steps: what the rollback left deployed.
    pub fn observed_after(&self) -> Option<String> {
        self.version_to.clone().or_else(|| self.first_seen.clone())
    }

    /// One tick's decision for the rollback's profile.
    pub fn observe(&mut self, now: Timestamp, d: &Decision, stable: Span) -> Verdict {
        let firing: Vec<String> = d.firing.iter().map(|r| r.rule.clone()).filter(|r| self.rules.contains(r)).collect();
        let relapsed: Vec<String> = firing.iter().filter(|r| self.seen_quiet.contains(r)).cloned().collect();
        if !relapsed.is_empty() {
            return Verdict::Relapsed(relapsed);
        }
        let busy: Vec<String> =
            self.rules.iter().filter(|r| firing.contains(r) || d.pending.contains(r)).cloned().collect();
        let unseen: Vec<String> =
            self.rules.iter().filter(|r| !busy.contains(r) && d.unknown.contains(r)).cloned().collect();
        for r in &self.rules {
            if !busy.contains(r) && !unseen.contains(r) && !self.seen_quiet.contains(r) {
                self.seen_quiet.push(r.clone());
            }
        }
        if busy.is_empty() && unseen.is_empty() {
            let since = *self.stable_since.get_or_insert(now);
            if now.saturating_since(since) >= stable {
                return Verdict::Verified;
            }
        } else {
            self.stable_since = None;
        }
        if now >= self.deadline {
            return if busy.is_empty() { Verdict::Unseen(unseen) } else { Verdict::Persists(busy) };
        }
        Verdict::Waiting
    }
}

/// The rules a rollback must see quiet: those behind it, and every rule of `rules` (name, what
/// it reads) that reads one of the same signals or selectors.
pub fn rules_to_verify(behind: &[String], rules: &[(String, Vec<String>)]) -> Vec<String> {
    let reads_of = |name: &str| rules.iter().find(|(n, _)| n == name).map(|(_, r)| r.as_slice()).unwrap_or_default();
    let watched: Vec<&String> = behind.iter().flat_map(|b| reads_of(b)).collect();
    let mut out: Vec<String> = behind.to_vec();
    for (name, reads) in rules {
        if !out.contains(name) && reads.iter().any(|r| watched.contains(&r)) {
            out.push(name.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Outcome, RuleValue};

    fn tick(firing: &[&str], pending: &[&str], unknown: &[&str]) -> Decision {
        Decision {
            firing: firing.iter().map(|r| RuleValue { rule: r.to_string(), value: None }).collect(),
            unknown: unknown.iter().map(|r| r.to_string()).collect(),
            pending: pending.iter().map(|r| r.to_string()).collect(),
            ..Decision::new(Timestamp(0), "p", Outcome::Monitor)
        }
    }

    const S: i64 = 1000;

    fn verification() -> Verification {
        Verification::new(vec!["critical".into(), "elevated".into()], Timestamp(0), Span(600 * S))
    }

    #[test]
    fn verified_only_after_every_rule_is_quiet_for_verify_stable() {
        let mut v = verification();
        let stable = Span(60 * S);
        // The > 5% rule stopped, the > 1% rule is still pending: not fixed.
        assert_eq!(v.observe(Timestamp(2 * S), &tick(&[], &["elevated"], &[]), stable), Verdict::Waiting);
        assert_eq!(v.observe(Timestamp(10 * S), &tick(&[], &[], &[]), stable), Verdict::Waiting);
        assert_eq!(v.observe(Timestamp(69 * S), &tick(&[], &[], &[]), stable), Verdict::Waiting);
        assert_eq!(v.observe(Timestamp(70 * S), &tick(&[], &[], &[]), stable), Verdict::Verified);
    }

    #[test]
    fn unknown_inputs_are_not_quiet_and_a_relapse_ends_it() {
        let mut v = verification();
        let stable = Span(60 * S);
        assert_eq!(v.observe(Timestamp(S), &tick(&[], &[], &["critical", "elevated"]), stable), Verdict::Waiting);
        assert_eq!(
            v.observe(Timestamp(600 * S), &tick(&[], &[], &["critical"]), stable),
            Verdict::Unseen(vec!["critical".into()])
        );
        let mut v = verification();
        assert_eq!(v.observe(Timestamp(S), &tick(&[], &[], &[]), stable), Verdict::Waiting);
        assert_eq!(
            v.observe(Timestamp(2 * S), &tick(&["critical"], &[], &[]), stable),
            Verdict::Relapsed(vec!["critical".into()])
        );
    }

    #[test]
    fn an_issue_below_the_threshold_persists_past_verify_for() {
        let mut v = verification();
        let stable = Span(60 * S);
        assert_eq!(v.observe(Timestamp(S), &tick(&[], &["elevated"], &[]), stable), Verdict::Waiting);
        assert_eq!(
            v.observe(Timestamp(600 * S), &tick(&[], &["elevated"], &[]), stable),
            Verdict::Persists(vec!["elevated".into()])
        );
    }

    #[test]
    fn the_restore_point_starts_the_evidence_over() {
        let mut v = verification();
        let stable = Span(60 * S);
        assert_eq!(v.observe(Timestamp(S), &tick(&[], &[], &[]), stable), Verdict::Waiting);
        v.restored(Timestamp(5 * S), "v1");
        assert_eq!(
            v.observe(Timestamp(61 * S), &tick(&[], &[], &[]), stable),
            Verdict::Waiting,
            "61 - 5 < 60 only counts from the restore... first tick after"
        );
        assert_eq!(v.observe(Timestamp(121 * S), &tick(&[], &[], &[]), stable), Verdict::Verified);
        assert_eq!(v.version_to.as_deref(), Some("v1"));
    }

    #[test]
    fn rules_reading_the_same_signal_verify_together() {
        let rules = vec![
            ("critical".to_string(), vec!["signal:error_rate".to_string()]),
            ("elevated".to_string(), vec!["signal:error_rate".to_string()]),
            ("down".to_string(), vec!["up{target=\"api\"}".to_string()]),
        ];
        assert_eq!(rules_to_verify(&["critical".into()], &rules), vec!["critical".to_string(), "elevated".to_string()]);
        assert_eq!(rules_to_verify(&["down".into()], &rules), vec!["down".to_string()]);
    }
}
