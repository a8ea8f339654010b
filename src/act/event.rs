//! The acting journal's events: one typed enum, serde-tagged, each variant one line
//! `{"at": …, "event": "<snake_case>", …fields}`. The dispatcher writes them, [`super::state`]
//! rebuilds its memory from them, compaction keeps those that do, `history` and `versions` read
//! them back. Journals written by earlier versions read back (`version_changed` is a deploy).

use serde::{Deserialize, Serialize};

use crate::rules::Outcome;
use crate::time::Timestamp;

/// One acting event. Lines of other kinds (decisions, transitions, notifications) read as
/// [`Event::Other`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RollbackStarted(RollbackStarted),
    RollbackFinished(RollbackFinished),
    StepStarted(StepEvent),
    StepFinished(StepEvent),
    ApprovalOpened(ApprovalOpened),
    ApprovalClosed(ApprovalClosed),
    Paused(Paused),
    Resumed(Resumed),
    Silenced(Silenced),
    Unsilenced(Silenced),
    /// Written before deploys were events; read as a deploy seen by the version source.
    VersionChanged(VersionChanged),
    Deploy(Deploy),
    VersionBaked(VersionBaked),
    VersionMarked(VersionMarked),
    Annotated(Annotated),
    Escalation(Escalation),
    Suppressed(Suppressed),
    SuppressionEnded(SuppressionEnded),
    DryRun(DryRun),
    Blind(Blind),
    Sighted(Sighted),
    JournalRecovered(JournalRecovered),
    #[serde(other)]
    Other,
}

impl Event {
    /// Whether the dispatcher's state (and the history) is rebuilt from it: compaction keeps it.
    pub fn restores_state(&self) -> bool {
        !matches!(
            self,
            Event::Other | Event::DryRun(_) | Event::Blind(_) | Event::Sighted(_) | Event::JournalRecovered(_)
        )
    }

    /// Reads one journal line: its time and event.
    pub fn read(line: &serde_json::Value) -> Result<(Timestamp, Event), String> {
        let at = Timestamp(line.get("at").and_then(|v| v.as_i64()).unwrap_or(0));
        Event::deserialize(line).map(|e| (at, e)).map_err(|e| e.to_string())
    }

    /// The event's name as journalled (`rollback_started`).
    pub fn name(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_default()
    }
}

/// How a rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackResult {
    /// Steps succeeded and the rules behind it stayed inactive for `verify_stable`.
    Completed,
    /// A step failed (S1).
    Failed,
    /// Steps succeeded but the issue went on or came back within `verify_for` (S2).
    IssuePersists,
    /// Steps succeeded but the rules' inputs stayed unknown past `verify_for` (S2).
    Unverified,
    /// Found started but unfinished after a restart; never re-run (S1).
    Interrupted,
    /// Steps succeeded, then another version was deployed during verification: the evidence
    /// is that version's now, so the rollback is neither complete nor failed.
    Superseded,
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
            RollbackResult::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for RollbackResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key().replace('_', " "))
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
    /// The explicit target: the most recent good version other than `version_from`.
    pub target_version: Option<String>,
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    /// The rules behind the decision (the deciding question's firing rules).
    pub firing: Vec<String>,
    pub approval_id: Option<String>,
    /// When the version rolled back from was deployed (for the detection time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<Timestamp>,
    /// When the profile first showed the issue (a rule pending or firing) before this rollback
    /// (for the recovery time and the downtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_since: Option<Timestamp>,
    /// When the tree first decided against the version (before this rollback): detection ends
    /// there; from there to the start it was held back or waited for an approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// Every rule behind it judges the environment (`scope = "environment"`: an alert, a node,
    /// a storage backend), not the deployed version: completing it does not make `version_from`
    /// bad.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub environment: bool,
}

/// `rollback_finished`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackFinished {
    pub rollback_id: String,
    pub result: RollbackResult,
    pub duration_ms: i64,
    /// The version observed after the steps (the restore), when one was.
    pub version_to: Option<String>,
    pub error: Option<String>,
}

/// `run` or `verify`: what a step's action was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Run,
    Verify,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Run => "run",
            Role::Verify => "verify",
        })
    }
}

/// `step_started` / `step_finished` (the latter with the action's result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    pub rollback_id: String,
    /// Index in the procedure as run (after level filtering), from 1.
    pub step: usize,
    pub action: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// `approval_opened`: for one version and one decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalOpened {
    pub approval_id: String,
    pub profile: String,
    pub version: Option<String>,
    /// The decision it was opened for (`consider`, or `rollback` in approve mode).
    #[serde(default)]
    pub outcome: Option<Outcome>,
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    pub firing: Vec<String>,
    pub expires_at: Timestamp,
}

/// How an approval closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Closed {
    /// Approved: its rollback started.
    Granted,
    /// Acted on by itself after `consider_auto_after`.
    Auto,
    /// Rejected by a person.
    Rejected,
    /// Unanswered for `approval_timeout`.
    Expired,
    /// The version changed, or another rollback of the profile started.
    Superseded,
    /// Answered after the version changed: nothing done.
    Stale,
    /// The decision was back to `monitor` for `verify_stable`.
    Cleared,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = serde_json::to_value(self).ok();
        f.write_str(v.as_ref().and_then(|v| v.as_str()).unwrap_or("closed"))
    }
}

/// `approval_closed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalClosed {
    pub approval_id: String,
    pub how: Closed,
    /// Who granted or rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `paused` (until: `None` = until resumed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub until: Option<Timestamp>,
}

/// `resumed` (by a person, or the pause expired).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resumed {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expired: bool,
}

/// `silenced` (a rule's rollbacks suppressed until `until`) and `unsilenced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silenced {
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
}

/// `version_changed`, as journals before deploy events wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionChanged {
    pub from: Option<String>,
    pub to: String,
}

/// Who reported a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploySource {
    /// The `version` field of the config's version target changed.
    Version,
    /// The version target's first reading after start differed from the journal's (or there
    /// was none): deployed at first sight.
    FirstSight,
    /// `POST /hooks/deploy` from a pipeline.
    Hook,
    /// `rollwatch deployed`.
    Command,
}

/// `deploy`: the deployed version changed; its evidence starts here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub from: Option<String>,
    pub to: String,
    pub source: DeploySource,
    /// When it was seen, when that is later than the line's `at` (a version read after the
    /// old one's last reading is dated just after that reading: the earliest it could have run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at: Option<Timestamp>,
}

/// `version_baked`: the version ran `bake` with its profiles deciding `monitor` and no rule
/// pending or firing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionBaked {
    pub version: String,
    /// Since when it ran clean.
    pub since: Timestamp,
}

/// What an operator says a version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    Good,
    Bad,
}

impl Mark {
    pub fn parse(text: &str) -> Option<Mark> {
        match text {
            "good" => Some(Mark::Good),
            "bad" => Some(Mark::Bad),
            _ => None,
        }
    }
}

/// `version_marked`: an operator's correction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionMarked {
    pub version: String,
    pub state: Mark,
    pub by: String,
    pub reason: String,
}

/// `annotated`: what only people know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotated {
    pub rollback_id: String,
    pub root_cause: String,
}

/// Runbook 004's severities, and `notice` for being blind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    S1,
    S2,
    S3,
    #[serde(rename = "notice")]
    Notice,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::S1 => "S1",
            Severity::S2 => "S2",
            Severity::S3 => "S3",
            Severity::Notice => "notice",
        })
    }
}

/// `escalation`: a runbook 004 finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    pub severity: Severity,
    pub finding: String,
    pub response: String,
    pub profile: String,
    pub rollback_id: Option<String>,
}

/// `suppressed`: a decision not acted on, and why (journalled once per change of reason).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppressed {
    pub profile: String,
    pub outcome: Outcome,
    pub reason: String,
    pub explanation: String,
}

/// `suppression_ended`: the decision a suppression held back cleared (`monitor`); a new one is
/// told again. With `suppressed`, state: what a new leader (or this replica after a restart)
/// knows was told already.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuppressionEnded {
    pub profile: String,
}

/// `dry_run`: what would have run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    pub profile: String,
    pub outcome: Outcome,
    pub key: String,
    pub explanation: String,
    pub would_run: Vec<String>,
}

/// `blind`: every rule of a profile has had unknown inputs for `blind_after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blind {
    pub profile: String,
    pub since: Timestamp,
    pub rules: Vec<String>,
}

/// `sighted`: inputs known again after being blind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sighted {
    pub profile: String,
}

/// `journal_recovered`: the journal is writable again after failing since `down_since`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecovered {
    pub down_since: Timestamp,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_keep_their_names_and_fields() {
        let e = Event::ApprovalClosed(ApprovalClosed {
            approval_id: "ap-1".into(),
            how: Closed::Rejected,
            by: Some("alice".into()),
            reason: Some("known issue".into()),
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            json!({"event": "approval_closed", "approval_id": "ap-1", "how": "rejected", "by": "alice", "reason": "known issue"})
        );
        assert_eq!(e.name(), "approval_closed");
        let back = Event::read(&json!({"at": 5, "event": "approval_closed", "approval_id": "ap-1", "how": "granted"}));
        assert!(matches!(back, Ok((Timestamp(5), Event::ApprovalClosed(ApprovalClosed { how: Closed::Granted, .. })))));
    }

    #[test]
    fn lines_of_other_kinds_and_old_lines_read_back() {
        let (_, e) = Event::read(&json!({"at": 1, "event": "decision", "outcome": "monitor"})).unwrap();
        assert_eq!(e, Event::Other);
        assert!(!e.restores_state());
        let (_, e) = Event::read(&json!({"at": 1, "event": "resumed"})).unwrap();
        assert_eq!(e, Event::Resumed(Resumed { expired: false }));
        let (_, e) = Event::read(&json!({"at": 1, "event": "version_changed", "from": null, "to": "v1"})).unwrap();
        assert!(e.restores_state());
        let old = json!({"at": 1, "event": "approval_opened", "approval_id": "ap-2", "profile": "p", "version": "v1",
            "level": null, "reason": "r", "explanation": "e", "firing": [], "expires_at": 9});
        assert!(matches!(Event::read(&old), Ok((_, Event::ApprovalOpened(ApprovalOpened { outcome: None, .. })))));
        let esc = json!({"at": 1, "event": "escalation", "severity": "notice", "finding": "f", "response": "r",
            "profile": "p", "rollback_id": null});
        assert!(matches!(Event::read(&esc), Ok((_, Event::Escalation(Escalation { severity: Severity::Notice, .. })))));
    }

    #[test]
    fn a_result_is_named_the_same_in_the_journal_and_everywhere_else() {
        use RollbackResult::*;
        for r in [Completed, Failed, IssuePersists, Unverified, Interrupted] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.key());
        }
        assert_eq!(IssuePersists.to_string(), "issue persists");
    }
}
