//! What the dispatcher remembers. Every change is an [`Event`] written to the journal first and
//! then applied here, so reading the journal back ([`State::restore`]) rebuilds exactly the
//! live state: rollbacks (for cooldown, the loop guard and idempotency), approvals (open, and
//! how each closed), the pause, silences, the versions and their evidence, annotations.

use std::collections::BTreeMap;

use super::event::*;
use super::versions::Versions;
use crate::time::Timestamp;

/// One rollback as the journal tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollback {
    pub at: Timestamp,
    /// Its place in the order events were applied ([`State::applied`]): what "since the deploy"
    /// compares, never the dates two replicas' clocks put on them.
    pub seq: u64,
    pub started: RollbackStarted,
    pub finished: Option<(Timestamp, RollbackFinished)>,
    /// Run/verify steps started and not (yet) finished: `(step, action, role)`.
    pub open_steps: Vec<(usize, String, Role)>,
    /// Steps finished, in order, and when the last one did.
    pub steps_done: Vec<StepEvent>,
    pub steps_at: Option<Timestamp>,
    pub root_cause: Option<String>,
}

/// How long a rollback's phases took, in seconds (what `/metrics` and `history` show).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Deploy of the version rolled back from → the first decision against it.
    pub detect_seconds: Option<f64>,
    /// That decision → the rollback's start: held back (cooldown, pause, silence, …) or waiting
    /// for an approval (absent when it started at once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<f64>,
    /// Rollback start → its steps done.
    pub steps_seconds: Option<f64>,
    /// First sign of the issue → verified recovery (completed rollbacks only): the downtime.
    pub recovery_seconds: Option<f64>,
}

impl Rollback {
    pub fn timings(&self) -> Timings {
        let since = |from: Option<Timestamp>, to: Option<Timestamp>| match (from, to) {
            (Some(from), Some(to)) if to >= from => Some(to.saturating_since(from).0 as f64 / 1000.0),
            _ => None,
        };
        // Journals from before `decided_at` was recorded: the decision is the start.
        let decided = self.started.decided_at.filter(|d| *d <= self.at).unwrap_or(self.at);
        let recovered =
            self.finished.as_ref().filter(|(_, f)| f.result == RollbackResult::Completed).map(|(at, _)| *at);
        Timings {
            detect_seconds: since(self.started.deployed_at, Some(decided)),
            held_seconds: since(Some(decided), Some(self.at)).filter(|s| *s > 0.0),
            steps_seconds: since(Some(self.at), self.steps_at),
            recovery_seconds: since(self.started.issue_since.or(Some(self.at)), recovered),
        }
    }
}

/// An approval that was answered or closed, with how.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedApproval {
    pub opened_at: Timestamp,
    pub opened: ApprovalOpened,
    pub closed_at: Timestamp,
    pub closed: ApprovalClosed,
}

/// Escalations kept for `/status`.
pub const RECENT_ESCALATIONS: usize = 20;

/// The dispatcher's memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// The next numbers for rollback (`rb-N`) and approval (`ap-N`) ids.
    pub next_rollback: u64,
    pub next_approval: u64,
    pub rollbacks: Vec<Rollback>,
    /// Open approvals by id, with when they opened.
    pub approvals: BTreeMap<String, (Timestamp, ApprovalOpened)>,
    /// Approvals closed, oldest first.
    pub closed_approvals: Vec<ClosedApproval>,
    /// Paused until then (`Timestamp(i64::MAX)`: until resumed).
    pub paused_until: Option<Timestamp>,
    /// Silenced rules and until when.
    pub silences: BTreeMap<String, Timestamp>,
    pub versions: Versions,
    /// The latest escalations (at most [`RECENT_ESCALATIONS`]), oldest first.
    pub escalations: std::collections::VecDeque<(Timestamp, Escalation)>,
    /// Per profile, why its decision is not acted on, as told on every channel: told once, by
    /// whichever replica led (ended when the decision clears or a rollback starts).
    pub suppressed: BTreeMap<String, String>,
    /// Events applied so far: the order of the facts, whichever replica's clock dated them.
    pub applied: u64,
    /// [`State::applied`] when the current version's deploy was applied.
    pub deployed_seq: Option<u64>,
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
        State::restore_before(lines, Timestamp(i64::MAX))
    }

    /// As [`State::restore`], and an event dated after `latest` (now plus a clock skew) is
    /// reported — but applied all the same: a fact that guards acting (a cooldown, a pause, a
    /// rollback of this version) is never dropped for its date, whichever clock was wrong.
    pub fn restore_before(lines: &[serde_json::Value], latest: Timestamp) -> (State, Vec<ApplyError>) {
        let mut state = State::default();
        let mut errors = Vec::new();
        for line in lines {
            let failed = |message: String| ApplyError {
                event: line.get("event").and_then(|v| v.as_str()).unwrap_or("").to_string(),
                at: line.get("at").and_then(|v| v.as_i64()).unwrap_or(0),
                message,
            };
            match Event::read(line) {
                Ok((at, event)) => {
                    if at > latest && event.restores_state() {
                        errors.push(failed(format!(
                            "dated {} ahead of this clock (a clock is wrong); kept",
                            crate::time::human(at.saturating_since(latest))
                        )));
                    }
                    if let Err(message) = state.apply(at, &event) {
                        errors.push(failed(message));
                    }
                }
                Err(message) => errors.push(failed(message)),
            }
        }
        (state, errors)
    }

    /// Applies one event. Events the dispatcher does not keep are ignored.
    pub fn apply(&mut self, at: Timestamp, event: &Event) -> Result<(), String> {
        let seq = self.applied + 1;
        match event {
            Event::RollbackStarted(started) => {
                self.next_rollback = self.next_rollback.max(number(&started.rollback_id) + 1);
                self.suppressed.remove(&started.profile);
                self.rollbacks.push(Rollback {
                    at,
                    seq,
                    started: started.clone(),
                    finished: None,
                    open_steps: vec![],
                    steps_done: vec![],
                    steps_at: None,
                    root_cause: None,
                });
            }
            Event::RollbackFinished(f) => {
                let r = self.rollback_mut(&f.rollback_id)?;
                r.open_steps.clear();
                r.finished = Some((at, f.clone()));
                let from = r.started.version_from.clone();
                let environment = r.started.environment;
                if f.result == RollbackResult::Completed
                    && let Some(v) = from
                {
                    if environment {
                        self.versions.restored_for_the_environment(at, &v, &f.rollback_id);
                    } else {
                        self.versions.rolled_back(at, &v, &f.rollback_id);
                    }
                }
            }
            Event::StepStarted(s) => {
                self.rollback_mut(&s.rollback_id)?.open_steps.push((s.step, s.action.clone(), s.role));
            }
            Event::StepFinished(s) => {
                let r = self.rollback_mut(&s.rollback_id)?;
                r.open_steps.retain(|(step, _, role)| !(*step == s.step && *role == s.role));
                r.steps_done.push(s.clone());
                r.steps_at = Some(at);
            }
            Event::ApprovalOpened(a) => {
                self.next_approval = self.next_approval.max(number(&a.approval_id) + 1);
                self.approvals.insert(a.approval_id.clone(), (at, a.clone()));
            }
            Event::ApprovalClosed(c) => {
                if let Some((opened_at, opened)) = self.approvals.remove(&c.approval_id) {
                    self.closed_approvals.push(ClosedApproval { opened_at, opened, closed_at: at, closed: c.clone() });
                }
            }
            Event::Paused(p) => self.paused_until = Some(p.until.unwrap_or(Timestamp(i64::MAX))),
            Event::Resumed(_) => self.paused_until = None,
            Event::Silenced(s) => {
                self.silences.insert(s.rule.clone(), s.until.unwrap_or(Timestamp(i64::MAX)));
            }
            Event::Unsilenced(s) => {
                self.silences.remove(&s.rule);
            }
            Event::VersionChanged(VersionChanged { to, .. }) | Event::Deploy(Deploy { to, .. }) => {
                self.versions.deploy(at, to);
                self.deployed_seq = Some(seq);
            }
            Event::VersionBaked(b) => self.versions.baked(at, b),
            Event::VersionMarked(m) => self.versions.marked(at, m),
            Event::Annotated(a) => self.rollback_mut(&a.rollback_id)?.root_cause = Some(a.root_cause.clone()),
            Event::Escalation(e) => {
                self.escalations.push_back((at, e.clone()));
                if self.escalations.len() > RECENT_ESCALATIONS {
                    self.escalations.pop_front();
                }
            }
            Event::Suppressed(x) => {
                self.suppressed.insert(x.profile.clone(), x.reason.clone());
            }
            Event::SuppressionEnded(x) => {
                self.suppressed.remove(&x.profile);
            }
            Event::DryRun(_) | Event::Blind(_) | Event::Sighted(_) | Event::JournalRecovered(_) | Event::Other => {}
        }
        self.applied = seq;
        Ok(())
    }

    /// Whether `finding` was escalated for `profile` since the last rollback started: told
    /// already — by this replica before a restart, or by the leader before this one — and not
    /// to be told again until a rollback starts.
    pub fn escalated_since_last_rollback(&self, profile: &str, finding: &str) -> bool {
        let last = self.rollbacks.iter().map(|r| r.at).max();
        self.escalations
            .iter()
            .any(|(at, e)| e.profile == profile && e.finding == finding && last.is_none_or(|l| *at >= l))
    }

    fn rollback_mut(&mut self, id: &str) -> Result<&mut Rollback, String> {
        self.rollbacks
            .iter_mut()
            .rev()
            .find(|r| r.started.rollback_id == id)
            .ok_or_else(|| format!("no rollback {id:?}"))
    }

    /// A new rollback id, `rb-N`.
    pub fn new_rollback_id(&mut self) -> String {
        self.next_rollback = self.next_rollback.max(1);
        self.next_rollback += 1;
        format!("rb-{}", self.next_rollback - 1)
    }

    /// A new approval id, `ap-N`.
    pub fn new_approval_id(&mut self) -> String {
        self.next_approval = self.next_approval.max(1);
        self.next_approval += 1;
        format!("ap-{}", self.next_approval - 1)
    }

    /// Rollbacks started but not finished (after a crash).
    pub fn unfinished(&self) -> impl Iterator<Item = &Rollback> {
        self.rollbacks.iter().filter(|r| r.finished.is_none())
    }

    /// Rollbacks started in `(since, …]`.
    pub fn started_since(&self, since: Timestamp) -> usize {
        self.rollbacks.iter().filter(|r| r.at > since).count()
    }

    /// The latest rollback of a profile.
    pub fn last_of(&self, profile: &str) -> Option<&Rollback> {
        self.rollbacks.iter().rev().find(|r| r.started.profile == profile)
    }

    /// The latest rollback with this idempotency key started after the current version's deploy
    /// (in the order the facts were applied, not by their dates: a replica whose clock runs ahead
    /// must not make a later redeploy look older than its rollback), if one ran.
    pub fn with_key_since_deploy(&self, key: &str) -> Option<&Rollback> {
        let since = self.deployed_seq.unwrap_or(0);
        self.rollbacks.iter().rev().take_while(|r| r.seq > since).find(|r| r.started.key == key)
    }

    /// `(profile, version)` whose approval was rejected for the version deployed now: not asked
    /// again until its decision clears or the version changes.
    pub fn rejected_now(&self) -> std::collections::BTreeSet<(String, Option<String>)> {
        self.closed_approvals
            .iter()
            .filter(|c| c.closed.how == Closed::Rejected && c.opened.version == self.versions.current)
            .map(|c| (c.opened.profile.clone(), c.opened.version.clone()))
            .collect()
    }

    /// How the approval with this id closed, if it did.
    pub fn closed_approval(&self, id: &str) -> Option<&ClosedApproval> {
        self.closed_approvals.iter().rev().find(|c| c.opened.approval_id == id)
    }
}

/// The number of an id (`rb-7` → 7; 0 when there is none).
fn number(id: &str) -> u64 {
    id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::versions::VersionState;
    use serde_json::json;

    fn line(at: i64, event: &str, data: serde_json::Value) -> serde_json::Value {
        let mut v = data;
        v["at"] = json!(at);
        v["event"] = json!(event);
        v
    }

    fn started(id: &str, from: &str) -> serde_json::Value {
        json!({"rollback_id": id, "profile": "api", "key": format!("api@{from}"), "version_from": from,
            "target_version": "v1", "level": null, "reason": "r", "explanation": "e", "firing": ["x"], "approval_id": null})
    }

    #[test]
    fn restores_rollbacks_approvals_pause_silences_and_versions() {
        let lines = vec![
            line(1, "version_changed", json!({"from": null, "to": "v1"})),
            line(2, "deploy", json!({"from": "v1", "to": "v2", "source": "hook"})),
            line(3, "rollback_started", started("rb-3", "v2")),
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
        assert_eq!((s.next_rollback, s.next_approval), (4, 5), "rollbacks and approvals are numbered apart");
        assert_eq!(s.versions.current.as_deref(), Some("v2"));
        assert_eq!(s.versions.deployed_at, Some(Timestamp(2)));
        let unfinished: Vec<_> = s.unfinished().collect();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].open_steps, vec![(1, "undo".to_string(), Role::Run)]);
        assert!(s.approvals.contains_key("ap-4"));
        assert_eq!(s.paused_until, Some(Timestamp(i64::MAX)));
        assert_eq!(s.silences["x"], Timestamp(50));
        assert_eq!(s.with_key_since_deploy("api@v2").map(|r| r.at), Some(Timestamp(3)));
        assert!(s.with_key_since_deploy("api@v1").is_none());
    }

    #[test]
    fn a_redeploy_after_a_rollback_dated_ahead_is_a_new_deploy() {
        // A replica 25 s ahead rolled v2 back; v2 is deployed again afterwards, dated by a right
        // clock before that rollback's date. The order of the facts decides, not their dates.
        let lines = vec![
            line(100, "deploy", json!({"from": "v1", "to": "v2", "source": "hook"})),
            line(125, "rollback_started", started("rb-1", "v2")),
            line(110, "deploy", json!({"from": "v1", "to": "v2", "source": "hook"})),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(s.with_key_since_deploy("api@v2").is_none(), "the redeploy is judged anew");
        let (before, _) = State::restore(&lines[..2]);
        assert_eq!(before.with_key_since_deploy("api@v2").map(|r| r.seq), Some(2));
    }

    #[test]
    fn an_event_from_the_future_is_reported_and_kept() {
        let lines = vec![
            line(2_000_000, "rollback_started", started("rb-1", "v2")),
            line(10, "paused", json!({"until": null})),
        ];
        let (s, errors) = State::restore_before(&lines, Timestamp(1_000_000));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("ahead of this clock") && errors[0].message.contains("kept"), "{errors:?}");
        assert_eq!(s.rollbacks.len(), 1, "a rollback dated ahead still guards acting (its cooldown, v2 bad)");
        assert!(s.paused_until.is_some());
    }

    #[test]
    fn only_a_completed_rollback_makes_a_version_bad() {
        let finished = |id: &str, result: &str| json!({"rollback_id": id, "result": result, "duration_ms": 1, "version_to": "v1", "error": null});
        let lines = vec![
            line(1, "deploy", json!({"from": null, "to": "v1", "source": "first_sight"})),
            line(2, "version_baked", json!({"version": "v1", "since": 1})),
            line(3, "deploy", json!({"from": "v1", "to": "v2", "source": "version"})),
            line(4, "rollback_started", started("rb-1", "v2")),
            line(5, "rollback_finished", finished("rb-1", "failed")),
            line(6, "rollback_started", started("rb-2", "v2")),
            line(7, "rollback_finished", finished("rb-2", "interrupted")),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.versions.get("v2").map(|v| v.state), Some(VersionState::New), "failed rollbacks poison nothing");
        assert_eq!(s.versions.target(), Some("v1"));
        let mut lines = lines;
        lines.push(line(8, "rollback_started", started("rb-3", "v2")));
        lines.push(line(9, "rollback_finished", finished("rb-3", "completed")));
        let (s, _) = State::restore(&lines);
        assert_eq!(s.versions.get("v2").map(|v| v.state), Some(VersionState::Bad));
        assert_eq!(s.versions.get("v1").map(|v| v.state), Some(VersionState::Good));
    }

    #[test]
    fn a_rollback_for_the_environment_does_not_make_the_version_bad() {
        let mut env = started("rb-1", "v2");
        env["environment"] = json!(true);
        let lines = vec![
            line(1, "deploy", json!({"from": null, "to": "v1", "source": "first_sight"})),
            line(2, "version_baked", json!({"version": "v1", "since": 1})),
            line(3, "deploy", json!({"from": "v1", "to": "v2", "source": "version"})),
            line(4, "version_baked", json!({"version": "v2", "since": 3})),
            line(5, "rollback_started", env),
            line(
                6,
                "rollback_finished",
                json!({"rollback_id": "rb-1", "result": "completed", "duration_ms": 1, "version_to": "v1", "error": null}),
            ),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        let v2 = s.versions.get("v2").unwrap();
        assert_eq!(v2.state, VersionState::Good, "an alert about the environment is not v2's fault");
        assert!(v2.evidence.last().unwrap().contains("for the environment"), "{:?}", v2.evidence);
    }

    #[test]
    fn closed_approvals_remember_who_and_how() {
        let lines = vec![
            line(
                1,
                "approval_opened",
                json!({"approval_id": "ap-1", "profile": "api", "version": "v2", "outcome": "consider",
                "level": null, "reason": "r", "explanation": "e", "firing": [], "expires_at": 100}),
            ),
            line(
                2,
                "approval_closed",
                json!({"approval_id": "ap-1", "how": "rejected", "by": "bob", "reason": "noise"}),
            ),
        ];
        let (s, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(s.approvals.is_empty());
        let c = s.closed_approval("ap-1").unwrap();
        assert_eq!((c.closed.how, c.closed.by.as_deref()), (Closed::Rejected, Some("bob")));
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
