//! Where acting events are recorded before they count: the local journal, and with `[ha]` first
//! the shared log in etcd, in a transaction fenced by this replica's leadership term — a
//! replica that lost leadership cannot record a step, so it never runs one. Lines of the shared
//! log carry their `seq`; the local journal mirrors them (the leader's own, and a follower's
//! copy of the leader's), so `history` and `report` read the same on every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

use super::event::Event;
use crate::coord::{CommitError, Coordinator, Term};
use crate::journal::{JournalError, SharedJournal};
use crate::time::Timestamp;

/// Why an acting event was not recorded (and so nothing it records may run).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The shared log refused it (leadership lost) or could not be reached.
    #[error(transparent)]
    Shared(#[from] CommitError),
}

/// The journal, and the shared log when replicas coordinate.
#[derive(Debug, Clone)]
pub struct Ledger {
    journal: SharedJournal,
    shared: Option<Arc<Coordinator>>,
    /// The highest `seq` of the shared log in the local journal.
    mirrored: Arc<AtomicU64>,
}

#[derive(Serialize)]
struct Sequenced<'a> {
    seq: u64,
    #[serde(flatten)]
    event: &'a Event,
}

pub use crate::coord::seq_of;

impl Ledger {
    /// The journal alone.
    pub fn local(journal: SharedJournal) -> Ledger {
        Ledger { journal, shared: None, mirrored: Arc::default() }
    }

    /// The shared log first, then the journal; `lines` is what the journal holds (for the
    /// highest `seq` already mirrored).
    pub fn shared(journal: SharedJournal, coordinator: Arc<Coordinator>, lines: &[Value]) -> Ledger {
        // One count with the coordinator's: a shared log that ends before it is not trusted.
        let mirrored = coordinator.journal_seq();
        mirrored.fetch_max(lines.iter().map(seq_of).max().unwrap_or(0), Ordering::SeqCst);
        Ledger { journal, shared: Some(coordinator), mirrored }
    }

    pub fn journal(&self) -> &SharedJournal {
        &self.journal
    }

    pub fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.shared.as_ref()
    }

    /// Whether acting needs the leadership (replicas coordinate).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn shared_line(at: Timestamp, event: &Event) -> Result<Value, JournalError> {
        let mut v = serde_json::to_value(event).map_err(|e| JournalError::Io {
            path: std::path::PathBuf::from("(shared log)"),
            source: std::io::Error::other(e),
        })?;
        v["at"] = serde_json::json!(at.0);
        Ok(v)
    }

    /// Records one event and waits until it is durable. With a shared log, an event acting
    /// depends on is committed there first under `term` (none: refused).
    pub fn append_event(&self, at: Timestamp, event: &Event, term: Option<Term>) -> Result<(), RecordError> {
        match (&self.shared, event.restores_state()) {
            (Some(c), true) => {
                let term = term.ok_or_else(|| CommitError::NotLeader("this replica does not lead".into()))?;
                let line = Self::shared_line(at, event)?;
                let committed = block_on(c.commit(term, line))??;
                self.mirror_own(at, event, committed)
            }
            _ => Ok(self.journal.append_event(at, event)?),
        }
    }

    /// [`append_event`](Self::append_event) for async code (a procedure's steps).
    pub async fn append_event_async(
        &self,
        at: Timestamp,
        event: &Event,
        term: Option<Term>,
    ) -> Result<(), RecordError> {
        match (&self.shared, event.restores_state()) {
            (Some(c), true) => {
                let term = term.ok_or_else(|| CommitError::NotLeader("this replica does not lead".into()))?;
                let committed = c.commit(term, Self::shared_line(at, event)?).await?;
                let seq = seq_of(&committed);
                self.journal.append_event_async(at, &Sequenced { seq, event }).await?;
                self.mirrored.fetch_max(seq, Ordering::SeqCst);
                Ok(())
            }
            _ => Ok(self.journal.append_event_async(at, event).await?),
        }
    }

    /// Whether a step whose start was committed under `term` (sent at `committed`) may start
    /// now (see [`Coordinator::may_start`]); alone, always.
    pub fn may_start(&self, term: Option<Term>, committed: crate::time::Stopwatch) -> Result<(), String> {
        match (&self.shared, term) {
            (None, _) => Ok(()),
            (Some(c), Some(term)) => c.may_start(term, committed),
            (Some(_), None) => Err("this replica does not lead".into()),
        }
    }

    /// Waits, at most a ttl, until this replica's lead under `term` is certain well beyond a
    /// step's margin: a round that took long (etcd slow to answer, a takeover) leaves it short
    /// for a moment, and a step committed then would be refused for nothing — failing the
    /// rollback on rollwatch's own hiccup. [`may_start`](Self::may_start) still decides; alone,
    /// or not leading under `term`, at once.
    pub async fn await_certain(&self, term: Option<Term>) {
        let (Some(c), Some(term)) = (&self.shared, term) else { return };
        let margin = c.step_margin();
        let waiting = crate::time::Stopwatch::start();
        while waiting.elapsed().as_std() < c.ttl() {
            match c.lease_left(term) {
                Some(left) if left <= margin + margin / 2 => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => return,
            }
        }
    }

    fn mirror_own(&self, at: Timestamp, event: &Event, committed: Value) -> Result<(), RecordError> {
        let seq = seq_of(&committed);
        self.journal.append_event(at, &Sequenced { seq, event })?;
        self.mirrored.fetch_max(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Copies lines of the shared log this journal lacks into it (a follower's copy of the
    /// leader's record).
    pub fn mirror(&self, lines: &[Value]) -> Result<(), JournalError> {
        for line in lines {
            let seq = seq_of(line);
            if seq > self.mirrored.load(Ordering::SeqCst) {
                self.journal.append_line(line)?;
                self.mirrored.fetch_max(seq, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// Runs a commit from synchronous code (the dispatcher runs off the runtime's workers, see
/// `engine::off_runtime`). Replicas run on the binary's multi-threaded runtime.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, CommitError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(|| h.block_on(f))),
        _ => Err(CommitError::Unreachable("a shared log needs the multi-threaded runtime".into())),
    }
}

/// The most recently deployed versions whose events the shared log's snapshot keeps (with the
/// rollbacks of them): an older version is forgotten by acting — never a rollback target —
/// while each replica's journal keeps its whole story.
pub const SHARED_VERSIONS: usize = 50;

/// Closed approvals and escalations the snapshot keeps (the latest).
pub const SHARED_RECENT: usize = 20;

/// What acting needs of the shared log's lines, bounded (the coordinator's compactor): the
/// events of the last [`SHARED_VERSIONS`] versions deployed and of their rollbacks (steps only
/// of a rollback unfinished: an interrupted one is reported by its open step), open approvals
/// and the last closed ones, the pause and silences in force, the latest escalations — and,
/// whatever was deployed since, every fact that still guards acting: the last rollback of each
/// profile (its cooldown) and the last `recent_rollbacks` rollbacks (the loop guard's count).
/// Lines keep their order and `seq`.
pub fn compact_shared(lines: Vec<Value>, now: Timestamp) -> Vec<Value> {
    compact_shared_keeping(lines, now, SHARED_RECENT)
}

/// [`compact_shared`], keeping at least the last `recent_rollbacks` rollbacks (at least the loop
/// guard's `max_rollbacks`).
pub fn compact_shared_keeping(lines: Vec<Value>, _now: Timestamp, recent_rollbacks: usize) -> Vec<Value> {
    use std::collections::{BTreeMap, BTreeSet};
    let events: Vec<(Value, Event)> = lines
        .into_iter()
        .filter_map(|l| {
            let (_, e) = Event::read(&l).ok()?;
            e.restores_state().then_some((l, e))
        })
        .collect();
    // The versions deployed last: the first SHARED_VERSIONS met from the end (one pass, however
    // many deploys a merged journal brings).
    let mut versions: BTreeSet<String> = BTreeSet::new();
    for (_, e) in events.iter().rev() {
        if versions.len() == SHARED_VERSIONS {
            break;
        }
        if let Event::Deploy(super::event::Deploy { to, .. })
        | Event::VersionChanged(super::event::VersionChanged { to, .. }) = e
        {
            versions.insert(to.clone());
        }
    }
    let mut rollbacks = BTreeSet::new();
    // Guards of acting whatever the versions: each profile's last rollback, the latest ones.
    let mut last_of_profile: BTreeMap<&str, &str> = BTreeMap::new();
    let mut started: Vec<&str> = vec![];
    for (_, e) in &events {
        if let Event::RollbackStarted(s) = e {
            last_of_profile.insert(&s.profile, &s.rollback_id);
            started.push(&s.rollback_id);
        }
    }
    let guarding: BTreeSet<String> = last_of_profile
        .values()
        .chain(started.iter().rev().take(recent_rollbacks.max(SHARED_RECENT)))
        .map(|id| id.to_string())
        .collect();
    let mut unfinished = BTreeSet::new();
    let mut open_approvals = BTreeSet::new();
    let mut closed_approvals = vec![];
    for (_, e) in &events {
        match e {
            Event::RollbackStarted(s)
                if s.version_from.as_ref().is_none_or(|v| versions.contains(v))
                    || guarding.contains(&s.rollback_id) =>
            {
                rollbacks.insert(s.rollback_id.clone());
                unfinished.insert(s.rollback_id.clone());
            }
            Event::RollbackFinished(f) => {
                unfinished.remove(&f.rollback_id);
            }
            Event::ApprovalOpened(a) => {
                open_approvals.insert(a.approval_id.clone());
            }
            Event::ApprovalClosed(c) if open_approvals.remove(&c.approval_id) => {
                closed_approvals.push(c.approval_id.clone());
            }
            _ => {}
        }
    }
    let recent_closed: BTreeSet<String> = closed_approvals.iter().rev().take(SHARED_RECENT).cloned().collect();
    // The last pause event, each rule's last silence event, the latest escalations, each
    // profile's last suppression (when not ended).
    let mut last_pause = None;
    let mut last_silence: BTreeMap<&str, usize> = BTreeMap::new();
    let mut escalations = vec![];
    // Each profile's suppression told and not ended.
    let mut last_suppression: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (_, e)) in events.iter().enumerate() {
        match e {
            Event::Paused(_) | Event::Resumed(_) => last_pause = Some(i),
            Event::Silenced(s) | Event::Unsilenced(s) => {
                last_silence.insert(&s.rule, i);
            }
            Event::Escalation(_) => escalations.push(i),
            Event::Suppressed(super::event::Suppressed { profile, .. })
            | Event::SuppressionEnded(super::event::SuppressionEnded { profile }) => {
                last_suppression.insert(profile, i);
            }
            _ => {}
        }
    }
    let recent_escalations: BTreeSet<usize> = escalations.iter().rev().take(SHARED_RECENT).copied().collect();
    let keep = |i: usize, e: &Event| match e {
        Event::RollbackStarted(super::event::RollbackStarted { rollback_id, .. })
        | Event::RollbackFinished(super::event::RollbackFinished { rollback_id, .. })
        | Event::Annotated(super::event::Annotated { rollback_id, .. }) => rollbacks.contains(rollback_id),
        Event::StepStarted(s) | Event::StepFinished(s) => unfinished.contains(&s.rollback_id),
        Event::ApprovalOpened(super::event::ApprovalOpened { approval_id, .. })
        | Event::ApprovalClosed(super::event::ApprovalClosed { approval_id, .. }) => {
            open_approvals.contains(approval_id) || recent_closed.contains(approval_id)
        }
        Event::Paused(_) => last_pause == Some(i),
        Event::Resumed(_) => false,
        Event::Silenced(s) => last_silence.get(s.rule.as_str()) == Some(&i),
        Event::Unsilenced(_) => false,
        Event::VersionChanged(super::event::VersionChanged { to: version, .. })
        | Event::Deploy(super::event::Deploy { to: version, .. })
        | Event::VersionBaked(super::event::VersionBaked { version, .. })
        | Event::VersionMarked(super::event::VersionMarked { version, .. }) => versions.contains(version),
        Event::Escalation(_) => recent_escalations.contains(&i),
        Event::Suppressed(x) => last_suppression.get(x.profile.as_str()) == Some(&i),
        Event::SuppressionEnded(_) => false,
        _ => false,
    };
    let kept: Vec<bool> = events.iter().enumerate().map(|(i, (_, e))| keep(i, e)).collect();
    events.into_iter().zip(kept).filter(|(_, k)| *k).map(|((l, _), _)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::state::State;
    use serde_json::json;

    fn line(seq: u64, at: i64, event: &str, mut data: Value) -> Value {
        data["seq"] = json!(seq);
        data["at"] = json!(at);
        data["event"] = json!(event);
        data
    }

    /// A year of deploys and rollbacks: the snapshot stays small and acting reads the same
    /// from it — the version deployed, the rollback target, the cooldown's last rollback, the
    /// pause, a silence, an open approval, a rollback in flight with its open step.
    #[test]
    fn a_compacted_log_is_bounded_and_acting_reads_the_same() {
        let mut lines = vec![];
        let mut seq = 0;
        let mut push = |at: i64, event: &str, data: Value| {
            seq += 1;
            lines.push(line(seq, at, event, data));
        };
        for n in 1..=1000i64 {
            let at = n * 1000;
            push(at, "deploy", json!({"from": format!("v{}", n - 1), "to": format!("v{n}"), "source": "hook"}));
            if n % 2 == 0 {
                push(at + 1, "version_baked", json!({"version": format!("v{n}"), "since": at}));
            } else {
                let id = format!("rb-{n}");
                push(
                    at + 2,
                    "rollback_started",
                    json!({"rollback_id": id, "profile": "api", "key": format!("api@v{n}"),
                    "version_from": format!("v{n}"), "target_version": format!("v{}", n - 1), "level": null,
                    "reason": "r", "explanation": "e", "firing": ["err"], "approval_id": null}),
                );
                push(at + 3, "step_started", json!({"rollback_id": id, "step": 1, "action": "undo", "role": "run"}));
                if n < 999 {
                    push(
                        at + 4,
                        "step_finished",
                        json!({"rollback_id": id, "step": 1, "action": "undo", "role": "run", "ok": true}),
                    );
                    push(
                        at + 5,
                        "rollback_finished",
                        json!({"rollback_id": id, "result": "completed", "duration_ms": 3, "version_to": null, "error": null}),
                    );
                }
                push(
                    at + 6,
                    "escalation",
                    json!({"severity": "S3", "finding": "f", "response": "r", "profile": "api", "rollback_id": id}),
                );
            }
            push(at + 7, "paused", json!({"until": null}));
            push(at + 8, "resumed", json!({}));
            push(at + 9, "silenced", json!({"rule": format!("r{}", n % 7), "until": 10_000_000}));
            // Suppressions of three profiles, each ended but the last of "p2".
            let profile = format!("p{}", n % 3);
            let reason = format!("cooldown after rb-{n}");
            push(
                at + 10,
                "suppressed",
                json!({"profile": profile, "outcome": "rollback", "reason": reason, "explanation": "e"}),
            );
            if n != 999 {
                push(at + 11, "suppression_ended", json!({"profile": profile}));
            }
        }
        push(2_000_000, "paused", json!({"until": null}));
        push(
            2_000_001,
            "approval_opened",
            json!({"approval_id": "ap-1", "profile": "api", "version": "v1000",
            "level": null, "reason": "r", "explanation": "e", "firing": [], "expires_at": 3_000_000}),
        );
        let (before, errors) = State::restore(&lines);
        assert!(errors.is_empty(), "{errors:?}");
        let compacted = compact_shared(lines.clone(), Timestamp(2_000_002));
        let (after, errors) = State::restore(&compacted);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(compacted.len() < 400, "{} of {} lines kept", compacted.len(), lines.len());
        assert_eq!(after.versions.current, before.versions.current);
        assert_eq!(after.versions.target(), before.versions.target());
        assert_eq!(after.versions.last_good(), before.versions.last_good());
        assert_eq!(after.last_of("api").map(|r| r.at), before.last_of("api").map(|r| r.at));
        assert_eq!(after.paused_until, before.paused_until);
        assert_eq!(after.silences, before.silences);
        assert_eq!(after.suppressed, before.suppressed);
        assert_eq!(before.suppressed.len(), 1, "{:?}", before.suppressed);
        assert_eq!(after.approvals, before.approvals);
        let open: Vec<_> = after.unfinished().map(|r| (r.started.rollback_id.clone(), r.open_steps.clone())).collect();
        let was: Vec<_> = before.unfinished().map(|r| (r.started.rollback_id.clone(), r.open_steps.clone())).collect();
        assert_eq!(open, was);
        assert_eq!(open.len(), 1, "rb-999 is in flight");
        assert_eq!(after.escalations, before.escalations);
        assert_eq!(after.next_rollback, before.next_rollback, "ids go on from the same number");
        assert!(compacted.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])), "order and seq kept");
    }

    /// A rollback, then 300 versions deployed: the compacted log still holds the rollback that
    /// guards acting (the profile's cooldown, the loop guard's count, v2 bad).
    #[test]
    fn a_compaction_keeps_the_rollbacks_that_guard_acting_whatever_was_deployed_since() {
        let mut lines = vec![line(1, 1, "deploy", json!({"from": null, "to": "v2", "source": "hook"}))];
        lines.push(line(
            2,
            2,
            "rollback_started",
            json!({"rollback_id": "rb-1", "profile": "api", "key": "api@v2", "version_from": "v2",
            "target_version": "v1", "level": null, "reason": "r", "explanation": "e", "firing": ["err"], "approval_id": null}),
        ));
        lines.push(line(
            3,
            3,
            "rollback_finished",
            json!({"rollback_id": "rb-1", "result": "completed", "duration_ms": 3, "version_to": "v1", "error": null}),
        ));
        for n in 0..300u64 {
            lines.push(line(
                4 + n,
                4 + n as i64,
                "deploy",
                json!({"from": null, "to": format!("h{n}"), "source": "hook"}),
            ));
        }
        let (before, _) = State::restore(&lines);
        let (after, errors) = State::restore(&compact_shared_keeping(lines, Timestamp(1_000), 2));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(after.last_of("api").map(|r| r.at), Some(Timestamp(2)), "the cooldown's rollback kept");
        assert_eq!(
            after.started_since(Timestamp(0)),
            before.started_since(Timestamp(0)),
            "the loop guard counts the same"
        );
        assert_eq!(after.next_rollback, 2);
    }
}
