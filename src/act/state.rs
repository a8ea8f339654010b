//! What the dispatcher remembers, and the journal events that change it. Every change is an
//! event written to the journal first and then applied here, so reading the journal back
//! ([`State::restore`]) rebuilds exactly the live state: rollbacks (for cooldown, the loop guard
//! and idempotency), open approvals, the pause, silences, deployed versions, annotations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// How a rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackResult {
    /// Steps succeeded and the triggering rules stopped firing.
    Completed,
    /// A step failed (S1).
    Failed,
    /// Steps succeeded but the rules kept firing past `verify_for` (S2).
    IssuePersists,
    /// Steps succeeded but the rules' inputs stayed unknown past `verify_for` (S2).
    Unverified,
    /// Found started but unfinished after a restart; never re-run (S1).
    Interrupted,
}

impl RollbackResult {
    /// The name journalled and shown by `history --json` and `/metrics` (`issue_persists`).
    pub fn key(self) -> &'static str {
        match self {
            RollbackResult::Completed => "completed",
            RollbackResult::Failed => "failed",
            RollbackResult::IssuePersists => "issue_persists",
            RollbackResult::Unverified => "unverified",
            RollbackResult::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for RollbackResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollbackResult::Completed => "completed",
            RollbackResult::Failed => "failed",
            RollbackResult::IssuePersists => "issue persists",
            RollbackResult::Unverified => "unverified",
            RollbackResult::Interrupted => "interrupted",
        })
    }
}

/// `rollback_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStarted {
    pub rollback_id: String,
    pub profile: String,
    /// Idempotency key: profile + deployed version.
    pub key: String,
    pub version_from: Option<String>,
    /// The explicit target (the last good version seen before `version_from`).
    pub target_version: Option<String>,
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    /// The rules whose firing must stop for the rollback to verify.
    pub firing: Vec<String>,
    pub approval_id: Option<String>,
}

/// `rollback_finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackFinished {
    pub rollback_id: String,
    pub result: RollbackResult,
    pub duration_ms: i64,
    pub version_to: Option<String>,
    pub error: Option<String>,
}

/// `step_started` / `step_finished` (the latter with the action's result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    pub rollback_id: String,
    /// Index in the procedure as run (after level filtering), from 1.
    pub step: usize,
    pub action: String,
    /// `run` or `verify`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// `approval_opened`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalOpened {
    pub approval_id: String,
    pub profile: String,
    pub version: Option<String>,
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    pub firing: Vec<String>,
    pub expires_at: Timestamp,
}

/// `approval_closed`: granted, expired, superseded (a rollback started anyway) or stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalClosed {
    pub approval_id: String,
    pub how: String,
}

/// `paused` (until: `None` = until resumed) and `resumed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub until: Option<Timestamp>,
}

/// `silenced` (a rule's rollbacks suppressed until `until`) and `unsilenced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silenced {
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

/// `version_changed`: the deployed version read from the version target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionChanged {
    pub from: Option<String>,
    pub to: String,
}

/// `annotated`: what only people know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotated {
    pub rollback_id: String,
    pub root_cause: String,
}

/// `escalation`: a runbook 004 finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// `S1`, `S2`, `S3`, or `notice` for being blind.
    pub severity: String,
    pub finding: String,
    pub response: String,
    pub profile: String,
    pub rollback_id: Option<String>,
}

/// One rollback as the journal tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub at: Timestamp,
    pub started: RollbackStarted,
    pub finished: Option<(Timestamp, RollbackFinished)>,
    /// Run/verify steps started and not (yet) finished: `(step, action, role)`.
    pub open_steps: Vec<(usize, String, String)>,
    /// Steps finished, in order.
    pub steps_done: Vec<StepEvent>,
    pub root_cause: Option<String>,
}

/// The dispatcher's memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The next number for a rollback or approval id.
    pub next_id: u64,
    pub rollbacks: Vec<Rollback>,
    /// Open approvals by id, with when they opened.
    pub approvals: BTreeMap<String, (Timestamp, ApprovalOpened)>,
    /// Paused until then (`Timestamp(i64::MAX)`: until resumed).
    pub paused_until: Option<Timestamp>,
    /// Silenced rules and until when.
    pub silences: BTreeMap<String, Timestamp>,
    /// The deployed version last read, and for each version the one deployed before it.
    pub version: Option<String>,
    pub previous: BTreeMap<String, String>,
}

/// An event that could not be applied (kept out of the state, reported).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("journal event {event:?} at {at}: {message}")]
pub struct ApplyError {
    pub event: String,
    pub at: i64,
    pub message: String,
}

impl State {
    /// Rebuilds the state from journal lines (see [`crate::journal::Journal::read_back`]); lines
    /// that do not fit are skipped and returned.
    pub fn restore(lines: &[serde_json::Value]) -> (State, Vec<ApplyError>) {
        let mut state = State::default();
        let mut errors = Vec::new();
        for line in lines {
            let at = Timestamp(line.get("at").and_then(|v| v.as_i64()).unwrap_or(0));
            let event = line.get("event").and_then(|v| v.as_str()).unwrap_or("");
            if let Err(message) = state.apply(at, event, line) {
                errors.push(ApplyError { event: event.to_string(), at: at.0, message });
            }
        }
        (state, errors)
    }

    /// Applies one event (its fields as written). Events the dispatcher does not keep are ignored.
    pub fn apply(&mut self, at: Timestamp, event: &str, data: &serde_json::Value) -> Result<(), String> {
        fn parse<T: for<'de> Deserialize<'de>>(data: &serde_json::Value) -> Result<T, String> {
            T::deserialize(data).map_err(|e| e.to_string())
        }
        match event {
            "rollback_started" => {
                let started: RollbackStarted = parse(data)?;
                self.bump_id(&started.rollback_id);
                self.rollbacks.push(Rollback {
                    at,
                    started,
                    finished: None,
                    open_steps: vec![],
                    steps_done: vec![],
                    root_cause: None,
                });
            }
            "rollback_finished" => {
                let f: RollbackFinished = parse(data)?;
                let r = self.rollback_mut(&f.rollback_id)?;
                r.open_steps.clear();
                r.finished = Some((at, f));
            }
            "step_started" => {
                let s: StepEvent = parse(data)?;
                self.rollback_mut(&s.rollback_id)?.open_steps.push((s.step, s.action, s.role));
            }
            "step_finished" => {
                let s: StepEvent = parse(data)?;
                let r = self.rollback_mut(&s.rollback_id)?;
                r.open_steps.retain(|(step, _, role)| !(*step == s.step && *role == s.role));
                r.steps_done.push(s);
            }
            "approval_opened" => {
                let a: ApprovalOpened = parse(data)?;
                self.bump_id(&a.approval_id);
                self.approvals.insert(a.approval_id.clone(), (at, a));
            }
            "approval_closed" => {
                let c: ApprovalClosed = parse(data)?;
                self.approvals.remove(&c.approval_id);
            }
            "paused" => {
                let p: Paused = parse(data)?;
                self.paused_until = Some(p.until.unwrap_or(Timestamp(i64::MAX)));
            }
            "resumed" => self.paused_until = None,
            "silenced" => {
                let s: Silenced = parse(data)?;
                self.silences.insert(s.rule, s.until.unwrap_or(Timestamp(i64::MAX)));
            }
            "unsilenced" => {
                let s: Silenced = parse(data)?;
                self.silences.remove(&s.rule);
            }
            "version_changed" => {
                let v: VersionChanged = parse(data)?;
                // A version rolled back from is never anyone's last good one: after rolling v2
                // back to v1, v1's predecessor is not v2.
                let rolled_back =
                    |version: &str| self.rollbacks.iter().any(|r| r.started.version_from.as_deref() == Some(version));
                if let Some(from) = &v.from
                    && from != &v.to
                    && !rolled_back(from)
                {
                    self.previous.insert(v.to.clone(), from.clone());
                }
                self.version = Some(v.to);
            }
            "annotated" => {
                let a: Annotated = parse(data)?;
                self.rollback_mut(&a.rollback_id)?.root_cause = Some(a.root_cause);
            }
            _ => {}
        }
        Ok(())
    }

    fn bump_id(&mut self, id: &str) {
        if let Some(n) = id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()) {
            self.next_id = self.next_id.max(n + 1);
        }
    }

    fn rollback_mut(&mut self, id: &str) -> Result<&mut Rollback, String> {
        self.rollbacks
            .iter_mut()
            .rev()
            .find(|r| r.started.rollback_id == id)
            .ok_or_else(|| format!("no rollback {id:?}"))
    }

    /// A new id with `prefix` (`rb`, `ap`).
    pub fn new_id(&mut self, prefix: &str) -> String {
        self.next_id = self.next_id.max(1);
        let id = format!("{prefix}-{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Rollbacks started but not finished (after a crash).
    pub fn unfinished(&self) -> impl Iterator<Item = &Rollback> {
        self.rollbacks.iter().filter(|r| r.finished.is_none())
    }

    /// Rollbacks started in `(now - per, now]`.
    pub fn started_since(&self, since: Timestamp) -> usize {
        self.rollbacks.iter().filter(|r| r.at > since).count()
    }

    /// The latest rollback of a profile.
    pub fn last_of(&self, profile: &str) -> Option<&Rollback> {
        self.rollbacks.iter().rev().find(|r| r.started.profile == profile)
    }

    /// The rollback with this idempotency key, if one ran.
    pub fn with_key(&self, key: &str) -> Option<&Rollback> {
        self.rollbacks.iter().rev().find(|r| r.started.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(at: i64, event: &str, data: serde_json::Value) -> serde_json::Value {
        let mut v = data;
        v["at"] = json!(at);
        v["event"] = json!(event);
        v
    }

    #[test]
    fn restores_rollbacks_approvals_pause_silences_and_versions() {
        let started = json!({"rollback_id": "rb-3", "profile": "api", "key": "api@v2", "version_from": "v2",
            "target_version": "v1", "level": null, "reason": "r", "explanation": "e", "firing": ["x"], "approval_id": null});
        let lines = vec![
            line(1, "version_changed", json!({"from": null, "to": "v1"})),
            line(2, "version_changed", json!({"from": "v1", "to": "v2"})),
            line(3, "rollback_started", started),
            line(4, "step_started", json!({"rollback_id": "rb-3", "step": 1, "action": "undo", "role": "run"})),
            line(
                5,
                "approval_opened",
                json!({"approval_id": "ap-4", "profile": "api", "version": "v2", "level": null,
                "reason": "r", "explanation": "e", "firing": [], "expires_at": 100}),
            ),
            line(6, "paused", json!({"until": null})),
            line(7, "silenced", json!({"rule": "x", "until": 50})),
            line(8, "decision", json!({"whatever": 1})),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.next_id, 5);
        assert_eq!(s.version.as_deref(), Some("v2"));
        assert_eq!(s.previous["v2"], "v1");
        let unfinished: Vec<_> = s.unfinished().collect();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].open_steps, vec![(1, "undo".to_string(), "run".to_string())]);
        assert!(s.approvals.contains_key("ap-4"));
        assert_eq!(s.paused_until, Some(Timestamp(i64::MAX)));
        assert_eq!(s.silences["x"], Timestamp(50));
        assert_eq!(s.with_key("api@v2").map(|r| r.at), Some(Timestamp(3)));
    }

    #[test]
    fn a_version_rolled_back_from_never_becomes_a_last_good_version() {
        let started = json!({"rollback_id": "rb-1", "profile": "api", "key": "api@v2", "version_from": "v2",
            "target_version": "v1", "level": null, "reason": "r", "explanation": "e", "firing": [], "approval_id": null});
        let lines = vec![
            line(1, "version_changed", json!({"from": null, "to": "v1"})),
            line(2, "version_changed", json!({"from": "v1", "to": "v2"})),
            line(3, "rollback_started", started),
            line(4, "version_changed", json!({"from": "v2", "to": "v1"})),
            line(5, "version_changed", json!({"from": "v1", "to": "v3"})),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.previous.get("v1"), None, "v2 was rolled back from");
        assert_eq!(s.previous["v2"], "v1");
        assert_eq!(s.previous["v3"], "v1");
    }

    #[test]
    fn a_result_is_named_the_same_in_the_journal_and_everywhere_else() {
        use RollbackResult::*;
        for r in [Completed, Failed, IssuePersists, Unverified, Interrupted] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.key());
        }
    }

    #[test]
    fn an_event_that_does_not_fit_is_reported_and_skipped() {
        let lines = vec![
            line(
                1,
                "rollback_finished",
                json!({"rollback_id": "rb-9", "result": "completed", "duration_ms": 1,
                "version_to": null, "error": null}),
            ),
            line(2, "paused", json!({"until": "soon"})),
        ];
        let (s, errors) = State::restore(&lines);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(s, State::default());
    }
}
