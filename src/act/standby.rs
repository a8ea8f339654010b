//! Leading and following among replicas (`[ha]`): what the dispatcher does with the
//! coordinator's news. A replica that comes to lead restores the acting state from the shared
//! log first, then reports any rollback its predecessor left unfinished (S1, never re-run); one
//! that follows (or cannot reach etcd) acts on nothing and keeps its state and journal in step
//! with the leader's log. etcd trouble is told on every channel once, then reminded.

use super::core::Core;
use super::effect::{Effect, Restart};
use super::event::{DeploySource, Event, Severity};
use super::ledger::RecordError;
use super::state::{Rollback, State};
use crate::coord::Update;
use crate::time::{Span, Timestamp, human};

/// How often etcd trouble is told again while it lasts.
pub const COORD_REMIND: Span = Span(15 * 60_000);

impl Core {
    /// Whether this replica may act: alone, always; among replicas, while it leads.
    pub fn leads(&self) -> bool {
        match (self.ledger.coordinator(), self.lead.term) {
            (None, _) => true,
            // The term, and its lease still certain (a replica resumed after a stop knows at once).
            (Some(c), Some(term)) => c.may_act(term),
            (Some(_), None) => false,
        }
    }

    /// Why this replica does not act now, if it does not.
    pub fn standby(&self) -> Option<&str> {
        self.lead.standby.as_deref()
    }

    /// News from the coordinator.
    pub fn on_coord(&mut self, update: Update) -> Result<(), RecordError> {
        let now = self.clock.now();
        match update {
            Update::Lead { term, log } => {
                self.coord_back(now);
                self.rebuilt(now);
                self.restore_shared(&log)?;
                self.lead.term = Some(term);
                self.lead.standby = None;
                self.lead.leaderless = None;
                self.lead.wanted_told.clear();
                // Whatever this replica ran under an earlier term is fenced off.
                self.in_flight = None;
                tracing::info!(term = term.0, "leading: acting from the shared state");
                self.out.note(now, "leading", serde_json::json!({ "term": term.0 }));
                let unfinished: Vec<Rollback> = self.state.unfinished().cloned().collect();
                for r in unfinished {
                    self.resume_or_interrupted(r, "a change of leader")?;
                }
                // A version this replica reads that the shared state does not know was deployed
                // while nobody could record it (etcd down, an election): a deploy at first sight,
                // recorded before any decision about it is acted on.
                if let Some(seen) = self.seen.observed.clone()
                    && self.state.versions.current.as_deref() != Some(seen.as_str())
                {
                    self.deployed(now, &seen, DeploySource::FirstSight)?;
                }
            }
            Update::Follow { leader, not_standing } => {
                self.coord_back(now);
                self.rebuilt(now);
                self.lead.leaderless = match (&leader, self.lead.leaderless.take()) {
                    (Some(_), _) => None,
                    (None, Some((since, _))) => Some((since, not_standing)),
                    (None, None) => Some((now, not_standing)),
                };
                if self.lead.leaderless.is_none() {
                    self.lead.wanted_told.clear();
                }
                let reason = match leader {
                    Some(l) => format!("a follower: {} leads (at {})", l.replica, l.address),
                    None => "a follower: no replica leads yet".to_string(),
                };
                self.stand_down(&reason);
            }
            Update::HandedOver => {
                if self.lead.term.take().is_some() {
                    tracing::info!(
                        "handed over: another replica is to hold this deployment (the fleet is shared out again)"
                    );
                    self.out.note(now, "handed_over", serde_json::json!({}));
                }
                self.stand_down("parked: another replica is to hold this deployment (the fleet is shared out again)");
            }
            Update::Log(lines) => self.apply_shared(&lines)?,
            Update::Reset(lines) => self.restore_shared(&lines)?,
            Update::Distrust { why, lost } => {
                self.coord_back(now);
                self.stand_down(&format!("not acting: {why}"));
                self.out.note(now, "shared_log_distrusted", serde_json::json!({ "why": why, "lost": lost }));
                if lost && self.lead.rebuilding.is_none() {
                    self.lead.rebuilding = Some(now);
                    self.escalations += 1;
                    self.announce_own(
                        Severity::S1,
                        &format!("no replica acts: {why}"),
                        "Nothing to do unless no replica's journal survived: every replica merges its journal into the shared log; after a quiet period the leader acts from it again.",
                    );
                }
            }
            Update::Unreachable { error, tell } => {
                self.stand_down(&format!("not acting: {error}"));
                if self.lead.coord_down.is_none() {
                    self.lead.coord_down = Some((now, now));
                    self.lead.coord_teller = tell;
                    self.lead.wanted_told.clear();
                    if tell {
                        self.tell_coord_down(now, now, &error);
                    } else {
                        tracing::error!(%error, "no replica acts (the last leader answers and tells people)");
                        self.out.note(now, "coordinator_unreachable", serde_json::json!({ "error": error }));
                    }
                }
            }
        }
        Ok(())
    }

    /// This replica does not act from now on (a rollback in flight here is left to the next
    /// leader, which reports it interrupted).
    pub fn stand_down(&mut self, reason: &str) {
        if self.lead.term.take().is_some() {
            tracing::error!(reason, "not leading any more: not acting");
            self.out.note(self.clock.now(), "stood_down", serde_json::json!({ "reason": reason }));
        }
        if let Some(f) = self.in_flight.take() {
            tracing::error!(rollback = %f.rollback_id, "rollback in flight left to the next leader: reported there, never re-run");
        }
        self.lead.standby = Some(reason.to_string());
        // A reading asked for as leader is not waited for any more (asked again when leading).
        self.seen.waiting = None;
    }

    /// The leader's new lines: into the state and the journal.
    fn apply_shared(&mut self, lines: &[serde_json::Value]) -> Result<(), RecordError> {
        for line in lines {
            match Event::read(line) {
                Ok((at, event)) => {
                    if let Err(e) = self.state.apply(at, &event) {
                        tracing::warn!(error = %e, "shared log line not applied");
                    }
                    if matches!(event, Event::Deploy(_) | Event::VersionChanged(_)) {
                        self.out.push(Effect::RestartEvidence(Restart { at, predates: true, deployed: None }));
                        self.seen.bake.restart();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable shared log line"),
            }
        }
        self.ledger.mirror(lines)?;
        Ok(())
    }

    /// The whole shared log: the state rebuilt from it.
    fn restore_shared(&mut self, lines: &[serde_json::Value]) -> Result<(), RecordError> {
        let latest = self.clock.now().plus(Span::from_secs(5 * 60));
        let (state, errors) = State::restore_before(lines, latest);
        for e in errors {
            tracing::warn!(error = %e, "shared log line skipped while restoring");
        }
        self.rejected = state.rejected_now();
        // Ids go on from the highest this replica knew too: a log that lost lines never makes
        // an id new again.
        let mut state = state;
        state.next_rollback = state.next_rollback.max(self.state.next_rollback);
        state.next_approval = state.next_approval.max(self.state.next_approval);
        if state.versions.deployed_at != self.state.versions.deployed_at
            && let Some(at) = state.versions.deployed_at
        {
            self.out.push(Effect::RestartEvidence(Restart { at, predates: false, deployed: None }));
        }
        self.state = state;
        self.ledger.mirror(lines)?;
        Ok(())
    }

    /// Tells every channel that etcd cannot be reached (and, later, that it still cannot).
    fn tell_coord_down(&mut self, now: Timestamp, since: Timestamp, error: &str) {
        let lasting = if now > since { format!(" for {}", human(now.saturating_since(since))) } else { String::new() };
        self.escalations += 1;
        self.announce_own(
            Severity::S1,
            &format!("no replica acts{lasting}: {error}"),
            "Restore etcd or the network to it. Every replica keeps watching; one resumes acting by itself.",
        );
        self.out.note(now, "coordinator_unreachable", serde_json::json!({ "error": error }));
    }

    /// While etcd cannot be reached, or no replica has led for longer than an election takes
    /// while this one may not stand (its clock), a rollback decided is told (once per profile):
    /// wanted, but nobody may act.
    pub(super) fn tell_wanted(&mut self, now: Timestamp, decisions: &[crate::rules::Decision]) {
        let why = if self.lead.coord_down.is_some() {
            if !self.lead.coord_teller {
                return;
            }
            "etcd cannot be reached".to_string()
        } else if let Some((since, Some(not_standing))) = &self.lead.leaderless
            && let Some(c) = self.ledger.coordinator()
            && now.saturating_since(*since) > Span(2 * c.ttl().as_millis() as i64)
        {
            format!("no replica has led for {}, and {not_standing}", human(now.saturating_since(*since)))
        } else {
            return;
        };
        for d in decisions.iter().filter(|d| d.outcome == crate::rules::Outcome::Rollback) {
            if self.lead.wanted_told.insert(d.profile.clone()) {
                let finding =
                    format!("rollback wanted for {} ({}), but no replica may act: {why}", d.profile, d.explanation());
                tracing::error!("{finding}");
                self.escalations += 1;
                self.announce_own(
                    Severity::S1,
                    &finding,
                    "Roll back by hand, or restore etcd or the replica's clock: a replica acts again by itself.",
                );
            }
        }
    }

    /// While etcd cannot be reached, a reminder every [`COORD_REMIND`].
    pub(super) fn remind_coord(&mut self, now: Timestamp) {
        if !self.lead.coord_teller {
            return;
        }
        let Some((since, told)) = self.lead.coord_down else { return };
        if now.saturating_since(told) >= COORD_REMIND {
            self.lead.coord_down = Some((since, now));
            let error = self.lead.standby.clone().unwrap_or_default();
            self.tell_coord_down(now, since, &error);
        }
    }

    /// The shared log is trusted again (rebuilt): told once.
    fn rebuilt(&mut self, now: Timestamp) {
        let Some(since) = self.lead.rebuilding.take() else { return };
        let finding = format!(
            "the shared state was rebuilt from the replicas' journals after {}: one replica leads and acts",
            human(now.saturating_since(since))
        );
        tracing::warn!("{finding}");
        self.announce_own(Severity::Notice, &finding, "None: acting resumed.");
    }

    /// etcd answers again: told once.
    fn coord_back(&mut self, now: Timestamp) {
        let Some((since, _)) = self.lead.coord_down.take() else { return };
        self.lead.wanted_told.clear();
        if !std::mem::take(&mut self.lead.coord_teller) {
            return;
        }
        let finding =
            format!("etcd reachable again after {}: one replica leads and acts", human(now.saturating_since(since)));
        tracing::warn!("{finding}");
        self.announce_own(Severity::Notice, &finding, "None: acting resumed.");
    }
}
