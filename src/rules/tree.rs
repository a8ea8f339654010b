//! The decision tree (runbook 004, the matrix of 003): ordered questions over rule states; the
//! first that holds gives the outcome, and the path walked is kept as the explanation.

use crate::expr::{Cond, Slots, Truth};
use crate::time::Timestamp;

pub use crate::config::outcome::Outcome;

/// One `[[decide]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Question {
    pub ask: String,
    pub cond: Cond,
    pub then: Outcome,
    /// The procedure level this answer calls for, if any.
    pub level: Option<String>,
    /// The rules its condition reads.
    pub reads: Vec<String>,
}

/// A profile's tree.
#[derive(Debug, Clone)]
pub struct Tree {
    pub questions: Vec<Question>,
    pub default: Outcome,
}

/// One answered question on the path.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    pub ask: String,
    pub yes: bool,
}

/// A rule behind a decision, with its latest value.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleValue {
    pub rule: String,
    pub value: Option<f64>,
}

/// The outcome of one tick for one profile, with why.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    pub at: Timestamp,
    pub profile: String,
    pub outcome: Outcome,
    pub level: Option<String>,
    /// Questions asked, in order, up to the one that held.
    pub path: Vec<Answer>,
    /// Whether no question held and the default was taken.
    pub by_default: bool,
    /// The profile's firing rules and their values.
    pub firing: Vec<RuleValue>,
    /// The firing rules the deciding question read: what this decision is because of (empty
    /// when the default was taken).
    pub because: Vec<String>,
    /// The profile's rules whose inputs had no data this tick (and whose `on_no_data` did not
    /// make that a known answer).
    pub unknown: Vec<String>,
    /// The profile's pending rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Firing rules that were already firing at the last evaluation before the current deploy
    /// and have not been seen inactive (with known inputs) since: the deploy did not cause them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub predates: Vec<String>,
    /// Firing rules an operator silenced: the tree read them as not firing (it went on to the
    /// next question that holds without them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silenced: Vec<String>,
    /// The windows of the profile's firing, pending and under-covered rules that do not yet
    /// hold data over their whole span ("1h window: 10 min of data").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<super::coverage::WindowCoverage>,
    /// For each SLO whose page or ticket rule fires: what the version spent of its budget
    /// ("availability: this version burned 1.0% of the 30-day budget in 12 min, burn rate 36×; …").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slo: Vec<String>,
    /// For each of the profile's rules that compares with a baseline, firing or not: the
    /// figures behind its verdict, or why it has none
    /// ("canary-latency: candidate mean 140ms vs baseline 100ms (+40%), Mann-Whitney p = 4e-15,
    /// 98% needed").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judged: Vec<String>,
}

impl Decision {
    /// `outcome` for `profile` at `at`, with nothing asked, firing, pending or unknown (the
    /// default taken for `monitor`): the rest is set by who builds it.
    pub fn new(at: Timestamp, profile: &str, outcome: Outcome) -> Decision {
        Decision {
            at,
            profile: profile.to_string(),
            outcome,
            level: None,
            path: vec![],
            by_default: outcome == Outcome::Monitor,
            firing: vec![],
            because: vec![],
            unknown: vec![],
            pending: vec![],
            predates: vec![],
            silenced: vec![],
            coverage: vec![],
            slo: vec![],
            judged: vec![],
        }
    }
}

impl Tree {
    /// Walks the questions. Questions read rule states only, which are always known.
    pub fn decide(&self, slots: &Slots) -> (Outcome, Option<String>, Vec<Answer>, bool) {
        let mut path = Vec::new();
        for q in &self.questions {
            let yes = q.cond.eval(slots) == Truth::True;
            path.push(Answer { ask: q.ask.clone(), yes });
            if yes {
                return (q.then, q.level.clone(), path, false);
            }
        }
        (self.default, None, path, true)
    }
}

impl Decision {
    /// Whether everything this rollback decision is because of predates the current deploy:
    /// rolling the new version back would not fix it.
    pub fn predates_deploy(&self) -> bool {
        !self.because.is_empty() && self.because.iter().all(|r| self.predates.contains(r))
    }

    /// `Is system down? no → Is error rate > 5%? YES → rollback`.
    pub fn explanation(&self) -> String {
        let mut parts: Vec<String> =
            self.path.iter().map(|a| format!("{} {}", a.ask, if a.yes { "YES" } else { "no" })).collect();
        let mut end = self.outcome.to_string();
        if let Some(level) = &self.level {
            end.push_str(&format!(" ({level})"));
        }
        if self.by_default {
            end.push_str(" (default)");
        }
        parts.push(end);
        let mut text = parts.join(" → ");
        if !self.silenced.is_empty() {
            text.push_str(&format!(" [silenced: {}]", self.silenced.join(", ")));
        }
        text
    }

    /// The explanation with the windows that hold less than their span:
    /// `… → rollback; errors-1h: 1h window: 1 min of data`. For people (logs, messages, pages);
    /// [`explanation`](Self::explanation) is the same decision as long as the path holds.
    pub fn explained(&self) -> String {
        self.explained_for(None)
    }

    /// [`explained`](Self::explained), the version named where the SLO notes say "this
    /// version" (`v2 burned 1.0% of the 30-day budget …`): what the acting core tells people.
    pub fn explained_for(&self, version: Option<&str>) -> String {
        let mut text = self.explanation();
        for c in &self.coverage {
            text.push_str(&format!("; {}: {c}", c.rule));
        }
        for note in &self.slo {
            match version {
                Some(v) => text.push_str(&format!("; {}", note.replacen(super::slo::SUBJECT, v, 1))),
                None => text.push_str(&format!("; {note}")),
            }
        }
        for note in &self.judged {
            text.push_str(&format!("; {note}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanation_reads_like_the_runbook() {
        let d = Decision {
            path: vec![
                Answer { ask: "Is system down?".into(), yes: false },
                Answer { ask: "Is error rate > 5%?".into(), yes: true },
            ],
            ..Decision::new(Timestamp(0), "p", Outcome::Rollback)
        };
        assert_eq!(d.explanation(), "Is system down? no → Is error rate > 5%? YES → rollback");
        assert_eq!(d.explained(), d.explanation(), "every window full");
        let short = super::super::coverage::WindowCoverage::new(
            "errors-1h",
            crate::time::Span(3_600_000),
            None,
            crate::time::Span(60_000),
            None,
        );
        let burned = format!("availability: {} burned 2.1% of the 30-day budget in 12m", super::super::slo::SUBJECT);
        let d3 = Decision { slo: vec![burned], ..d.clone() };
        assert!(d3.explained().ends_with("; availability: this version burned 2.1% of the 30-day budget in 12m"));
        assert!(d3.explained_for(Some("v2")).ends_with("; availability: v2 burned 2.1% of the 30-day budget in 12m"));
        assert_eq!(d3.explained_for(None), d3.explained());
        let d2 = Decision { coverage: vec![short], ..d.clone() };
        assert_eq!(
            d2.explained(),
            "Is system down? no → Is error rate > 5%? YES → rollback; errors-1h: 1h window: 1 min of data"
        );
        let d = Decision { outcome: Outcome::Monitor, by_default: true, path: vec![], ..d };
        assert_eq!(d.explanation(), "monitor (default)");
        assert_eq!(Outcome::parse("consider"), Some(Outcome::Consider));
        assert_eq!(Outcome::parse("panic"), None);
    }
}
