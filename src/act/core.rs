//! The dispatcher routes: each tick's decisions, the deployed version's observations, finished
//! procedures and operator commands go to the part that owns them — the [`gate`](super::gate)
//! (may a rollback start?), the [`versions`](super::versions) (deploys, baking, the target),
//! [`rollback`](super::rollback) (one rollback's life, verified by [`verify`](super::verify)),
//! [`approvals`](super::approvals), [`escalate`](super::escalate), [`commands`](super::commands)
//! — and every change is journalled as an [`Event`] before it
//! counts, so a restart resumes the policy and never silently re-runs a rollback.
//!
//! A rollback: gate → `rollback_started` → the procedure's steps in their own task → the
//! restore point (steps' end; moved to the first observation of a new version) restarts the
//! evidence → the rules behind it, and those reading the same signals, quiet for
//! `verify_stable` → "ROLLBACK COMPLETE"; the version rolled back from is then bad.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;

use super::effect::{Effect, Effects, Restart};
use super::event::*;
use super::gate::{self, Start};
use super::inflight::InFlight;
pub use super::inflight::Phase;
use super::leadership::Leadership;
use super::ledger::{Ledger, RecordError};
use super::plan::Acting;
use super::state::{Rollback, State};
use super::versions::Sighting;
use crate::config::policy::Mode;
use crate::config::procedures::describe;
use crate::rules::{Decision, Outcome};
use crate::time::{Clock, Span, Timestamp, human};

/// An escalation and when it was raised.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEscalation {
    pub at: Timestamp,
    #[serde(flatten)]
    pub escalation: Escalation,
}

/// What `/status` shows of the dispatcher.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActingStatus {
    pub mode: String,
    pub in_flight: Option<InFlight>,
    pub approvals: Vec<ApprovalOpened>,
    /// Paused until then; `9223372036854775807` (`i64::MAX`): until resumed, as `paused`
    /// says for people.
    pub paused_until: Option<Timestamp>,
    /// `until resumed` or `until <date>` while paused.
    pub paused: Option<String>,
    pub silences: BTreeMap<String, Timestamp>,
    /// Per profile, why its decision is held back (told once; see [`State::suppressed`]).
    pub suppressed: BTreeMap<String, String>,
    /// Rollbacks in the journal by result (`in_flight` for the unfinished one).
    pub rollbacks: BTreeMap<String, u64>,
    pub escalations_total: u64,
    /// Why rollwatch is not acting by its own fault (the journal cannot be written), if so.
    pub journal_error: Option<String>,
    /// Journal records (decisions, transitions, notification results) dropped because the
    /// journal writer fell behind; acting events are never dropped, they wait.
    pub journal_dropped: u64,
    /// Why this replica does not act, when replicas coordinate and it does not lead.
    pub standby: Option<String>,
    /// Every rollback in the journal: its profile and how long its phases took.
    pub timings: Vec<(String, super::state::Timings)>,
    /// Per open approval, the exact commands that grant and reject it.
    pub approval_commands: BTreeMap<String, (String, String)>,
    /// The latest rollbacks (at most 5), oldest first, as `history` shows them.
    pub recent_rollbacks: Vec<super::history::Entry>,
    /// The latest escalations, oldest first.
    pub recent_escalations: Vec<RecentEscalation>,
    /// The deployed version, since when, and the current rollback target.
    pub version: Option<String>,
    /// What the version source reads now (it differs from `version` until the deploy is
    /// recorded: among replicas, while nobody leads).
    pub version_seen: Option<String>,
    pub deployed_at: Option<Timestamp>,
    pub target_version: Option<String>,
    /// The most recently deployed version known good (the current one, when it is).
    pub last_good: Option<String>,
}

/// The acting core: the acting state, split among its owners, and what each input (a tick's
/// decisions, a version reading, a step's news, a command, the coordinator's news) changes in it.
/// It performs no I/O but the durable record of acting events (through the [`Ledger`]): what it
/// wants done outside is queued as [`Effect`]s for the [`Executor`](super::executor::Executor).
pub struct Core {
    pub(super) acting: Acting,
    /// Records acting events (fenced by the leadership among replicas) before they count.
    pub(super) ledger: Ledger,
    pub(super) clock: Arc<dyn Clock>,
    /// What the journal rebuilds: versions, rollbacks, approvals, pause, silences, ids.
    pub(super) state: State,
    pub(super) in_flight: Option<InFlight>,
    /// What the version source reads, and the bake of the deployed version.
    pub(super) seen: Sighting,
    /// Leading or following among replicas, and etcd's trouble as told.
    pub(super) lead: Leadership,
    /// What was told once and is not told again until it changes.
    pub(super) told: Told,
    pub(super) escalations: u64,
    /// Per profile, since when it has decided `monitor` (approvals clear after `verify_stable`).
    pub(super) monitor_since: BTreeMap<String, Timestamp>,
    /// `(profile, version)` whose approval was rejected: not asked again until it clears.
    pub(super) rejected: BTreeSet<(String, Option<String>)>,
    /// Since when, and why, the journal cannot be written: nothing is acted on meanwhile.
    pub(super) journal_down: Option<(Timestamp, String)>,
    /// Per profile, since when a rule has been pending or firing (until it decides `monitor`
    /// with none): where an incident's recovery time starts.
    pub(super) issue_since: BTreeMap<String, Timestamp>,
    /// Per profile, since when the tree has decided something other than `monitor` (until it
    /// decides `monitor` again): where detection ends and a hold or an approval's wait begins.
    pub(super) decided_since: BTreeMap<String, Timestamp>,
    /// The effects queued by the input being handled, for the executor.
    pub(super) out: Effects,
}

/// How recent a reading of the version source must be for a decision to be acted on, or a
/// version to be found good: older, the source is read first (at once, a few milliseconds).
const VERSION_FRESH: Span = Span(5_000);

/// What was told once, and is told again only when it changes.
#[derive(Debug, Default)]
pub(super) struct Told {
    /// Per profile, since when every rule has been unknown, and whether that was notified.
    pub(super) blind: BTreeMap<String, (Timestamp, bool)>,
    /// Keys already journalled as dry runs.
    pub(super) dry_runs: Vec<String>,
    /// Profiles whose pre-deploy incident was escalated (once, until its rules are seen quiet).
    pub(super) predates: BTreeSet<String>,
    /// Profiles told (while the journal is down) that their rollback is held back.
    pub(super) journal: BTreeSet<String>,
    /// `(profile, issue since)` whose wait for the version source was told (once each).
    pub(super) version_wait: BTreeSet<(String, Timestamp)>,
    /// Whether the loop guard's escalation was raised (once, until a rollback starts).
    pub(super) loop_guard: bool,
}

impl Core {
    /// Restores the state from the journal's `lines` and reports any rollback found started
    /// but unfinished (escalated S1, never re-run).
    pub fn new(acting: Acting, ledger: Ledger, clock: Arc<dyn Clock>, lines: &[serde_json::Value]) -> Core {
        // A small clock skew is fine; a line dated beyond it is reported (and kept: it guards acting).
        let started = clock.now();
        let latest = started.plus(Span::from_secs(5 * 60));
        let (state, errors) = State::restore_before(lines, latest);
        for e in errors {
            tracing::warn!(error = %e, "journal event skipped while restoring");
        }
        let mut out = Effects::default();
        if let Some(at) = state.versions.deployed_at {
            out.push(Effect::RestartEvidence(Restart { at, predates: false, deployed: None }));
        }
        let rejected = state.rejected_now();
        let told = Told { predates: Core::predates_told(&state), ..Told::default() };
        let mut d = Core {
            acting,
            lead: Leadership::new(ledger.is_shared()),
            ledger,
            clock,
            state,
            in_flight: None,
            seen: Sighting { watching_since: Some(started), ..Sighting::default() },
            told,
            escalations: 0,
            monitor_since: BTreeMap::new(),
            rejected,
            journal_down: None,
            issue_since: BTreeMap::new(),
            decided_since: BTreeMap::new(),
            out,
        };
        if d.ledger.is_shared() {
            // The leader's rollbacks are its own: this replica reports one interrupted only
            // once it leads (and has read the shared log).
            return d;
        }
        let unfinished: Vec<Rollback> = d.state.unfinished().cloned().collect();
        for r in unfinished {
            if let Err(e) = d.interrupted(r, "a restart") {
                // A full disk at start: keep watching, act once the journal takes writes again.
                d.journal_failed(d.clock.now(), &crate::error_chain(&e));
                break;
            }
        }
        d
    }

    /// Takes a reloaded config's actions, policy and plans; state and the rollback in flight stay.
    pub fn reconfigure(&mut self, acting: Acting) {
        self.acting = acting;
    }

    /// The effects queued so far, for the executor (oldest first).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.out.take()
    }

    /// Whether a rollback's steps are running now (not yet verifying).
    pub fn steps_running(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.phase == Phase::Steps)
    }

    /// The core's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Journals an event, then applies it to the state: nothing counts before it is durable.
    pub(super) fn record(&mut self, at: Timestamp, event: Event) -> Result<(), RecordError> {
        self.ledger.append_event(at, &event, self.lead.term)?;
        if let Err(e) = self.state.apply(at, &event) {
            tracing::error!(event = %event.name(), error = %e, "journalled event not applied");
        }
        Ok(())
    }

    /// The journal could not be written: nothing is acted on until it can be (no step runs
    /// without its line), and every channel is told once — S1, since watching goes on but
    /// acting does not. The engine calls this with any error the dispatcher returns.
    pub fn journal_failed(&mut self, now: Timestamp, error: &str) {
        if self.journal_down.is_some() {
            return;
        }
        let error = error.to_string();
        tracing::error!(%error, "journal unwritable: not acting until it takes writes again");
        self.journal_down = Some((now, error.clone()));
        self.escalations += 1;
        self.announce_own(
            Severity::S1,
            &format!("journal unwritable: not acting ({error})"),
            "Free or fix the disk under state_dir. rollwatch keeps watching and resumes acting by itself.",
        );
        // Among replicas, one that cannot keep its record hands leadership to one that can.
        if self.ledger.is_shared() {
            self.out.push(Effect::StepAside);
            self.stand_down(&format!("journal unwritable: leadership left to another replica ({error})"));
        }
    }

    /// Why acting is stopped by rollwatch's own fault, if it is (for `/status` and `/metrics`).
    pub fn journal_error(&self) -> Option<&str> {
        self.journal_down.as_ref().map(|(_, e)| e.as_str())
    }

    /// While the journal is down, tries one write; true once it is writable again.
    fn journal_writable(&mut self, now: Timestamp) -> Result<bool, RecordError> {
        let Some((since, error)) = self.journal_down.clone() else { return Ok(true) };
        let probe = Event::JournalRecovered(JournalRecovered { down_since: since, error });
        if self.ledger.append_event(now, &probe, self.lead.term).is_err() {
            return Ok(false);
        }
        self.journal_down = None;
        self.told.journal.clear();
        let finding =
            format!("journal writable again after {}: acting resumed", crate::time::human(now.saturating_since(since)));
        tracing::warn!("{finding}");
        if self.ledger.is_shared() {
            // Among replicas: this one may lead again.
            self.out.push(Effect::Rejoin);
        }
        if self.leads() {
            let vars = crate::template::messages::blank_vars();
            let profiles = self.acting.plans.keys().cloned().collect::<Vec<_>>().join(", ");
            self.escalate(now, Severity::Notice, &finding, "None: rollwatch acts again.", &profiles, None, vars)?;
        } else {
            let finding = format!("journal writable again after {}", human(now.saturating_since(since)));
            self.announce_own(Severity::Notice, &finding, "None: this replica may lead again.");
        }
        Ok(true)
    }

    /// One tick: expiries, verification, approvals clearing, blindness, baking, then each decision.
    /// While the journal cannot be written, nothing of that runs; a rollback decision is told
    /// on every channel as held back, once per profile.
    pub fn on_tick(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), RecordError> {
        if !self.journal_writable(now)? {
            for d in decisions.iter().filter(|d| d.outcome == Outcome::Rollback) {
                if self.told.journal.insert(d.profile.clone()) {
                    self.announce_suppressed(&d.profile, "journal unwritable: not acting", &d.explanation());
                }
            }
            return Ok(());
        }
        // Where an incident started, on every replica (a follower that comes to lead knows it).
        for d in decisions {
            if d.firing.is_empty() && d.pending.is_empty() && d.outcome == Outcome::Monitor {
                self.issue_since.remove(&d.profile);
            } else {
                self.issue_since.entry(d.profile.clone()).or_insert(d.at);
            }
            if d.outcome == Outcome::Monitor {
                self.decided_since.remove(&d.profile);
            } else {
                self.decided_since.entry(d.profile.clone()).or_insert(d.at);
            }
        }
        if !self.leads() {
            // A follower watches; the leader acts (and journals its acts into the shared log).
            // It bakes too, so that a new leader's bake goes on where it was.
            self.remind_coord(now);
            self.tell_wanted(now, decisions);
            return self.watch_bake(now, decisions);
        }
        self.expire(now)?;
        self.verify_in_flight(now, decisions)?;
        self.read_restore(now);
        self.clear_approvals(now, decisions)?;
        for d in decisions {
            self.watch_blindness(now, d)?;
        }
        self.watch_bake(now, decisions)?;
        for d in decisions {
            self.decide(now, d)?;
        }
        Ok(())
    }

    /// A reading of the version source. A reading that changes to another version than the one
    /// deployed is a deploy (the first reading after start, when it differs from the journal,
    /// is a deploy at first sight); a new version seen after a rollback's steps is its restore
    /// point. An unreadable version is not a change (the caller passes nothing).
    pub fn on_version_observed(&mut self, now: Timestamp, version: &str) -> Result<(), RecordError> {
        // A value that cannot be a version (2 MiB, control characters) is an unreadable reading,
        // said once: it is never recorded, so it never reaches the journal or the shared log.
        if let Err(why) = super::versions::check_version(version) {
            if !self.seen.refused {
                tracing::error!(%why, "the version source's reading is not a version; ignored until it is");
                self.seen.refused = true;
            }
            self.on_version_unreadable(now);
            return Ok(());
        }
        self.seen.refused = false;
        let previous_read = self.seen.read_at.replace(now);
        self.polled(now);
        if self.seen.restore_unseen.as_ref().is_some_and(|(_, from)| from != version) {
            self.seen.restore_unseen = None;
        }
        if !self.leads() {
            self.seen.observed = Some(version.to_string());
            return Ok(());
        }
        let first = self.seen.observed.is_none();
        let changed = self.seen.observed.as_deref() != Some(version);
        self.seen.observed = Some(version.to_string());
        if changed && self.state.versions.current.as_deref() != Some(version) {
            let source = if first { DeploySource::FirstSight } else { DeploySource::Version };
            // Dated just after the last reading of the old version: the earliest the new one
            // could have run, so that what went wrong since is judged as the new version's.
            // A rollback's restore is dated when it is seen (its point: the first observation
            // of a new version after the steps).
            // Never before the last rollback's end, though: a restore read after its rollback
            // completed is not dated before that completion.
            let finished = self.state.rollbacks.last().and_then(|r| r.finished.as_ref()).map(|(at, _)| *at);
            // A first sight is dated at the start of this replica's watching: what it saw since
            // may be the new version's (a rule pending since then goes on).
            let at = match (source, previous_read) {
                (DeploySource::Version, Some(p)) if self.in_flight.is_none() => {
                    p.plus(Span(1)).max(finished.unwrap_or(Timestamp(0))).min(now)
                }
                (DeploySource::FirstSight, _) if self.in_flight.is_none() => {
                    self.seen.watching_since.unwrap_or(now).max(finished.unwrap_or(Timestamp(0))).min(now)
                }
                _ => now,
            };
            self.deployed(at, version, source)?;
        }
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        let Some(v) = &mut f.verification else { return Ok(()) };
        v.first_seen.get_or_insert_with(|| version.to_string());
        if v.version_to.is_none() && f.version_from.as_deref() != Some(version) {
            tracing::info!(rollback = %f.rollback_id, version, "restored version seen: its evidence starts here");
            v.restored(now, version);
            self.out.push(Effect::RestartEvidence(Restart { at: now, predates: false, deployed: None }));
            self.seen.bake.restart();
        }
        Ok(())
    }

    /// Whether the version source (if any) was polled within [`VERSION_FRESH`] of `now`.
    fn version_fresh(&self, now: Timestamp) -> bool {
        !self.acting.version_source || self.seen.polled_at.is_some_and(|p| now.saturating_since(p) <= VERSION_FRESH)
    }

    /// A poll of the version source that read no version (the target down, the field missing):
    /// not a change, but the version is as known as it will be for now.
    pub fn on_version_unreadable(&mut self, now: Timestamp) {
        self.polled(now);
    }

    /// The version source was polled at `now`: a decision waiting for a poll after its issue
    /// began is evaluated again at once, not at the next tick.
    fn polled(&mut self, now: Timestamp) {
        self.seen.polled_at = Some(now);
        if self.seen.waiting.is_some_and(|since| now >= since) {
            self.seen.waiting = None;
            self.out.push(Effect::Evaluate);
        }
    }

    /// `to` is deployed now (seen by the version source, or reported). Returns whether it was
    /// a change.
    pub(super) fn deployed(&mut self, now: Timestamp, to: &str, source: DeploySource) -> Result<bool, RecordError> {
        let from = self.state.versions.current.clone();
        if from.as_deref() == Some(to) {
            return Ok(false);
        }
        tracing::info!(from = from.as_deref().unwrap_or("none"), to, ?source, "deploy");
        if let Some(seen) = self.seen.observed.as_ref().filter(|seen| *seen != to && source != DeploySource::Version) {
            tracing::warn!(to, seen = %seen, "deploy reported, but the version source reads another version: it bakes only once seen");
        }
        let seen_at = self.seen.read_at.filter(|seen| *seen > now);
        self.record(now, Event::Deploy(Deploy { from, to: to.to_string(), source, seen_at }))?;
        if self.in_flight.as_ref().is_some_and(|f| f.phase == Phase::Verifying) {
            self.supersede_verification(now, to)?;
        }
        self.seen.bake.restart();
        self.told.predates.clear();
        self.rejected.retain(|(_, v)| v.as_deref() == Some(to));
        self.supersede_approvals(now, to)?;
        let predates = source != DeploySource::FirstSight && self.in_flight.is_none();
        self.out.push(Effect::RestartEvidence(Restart {
            at: now,
            predates,
            deployed: predates.then(|| to.to_string()),
        }));
        Ok(true)
    }

    fn expire(&mut self, now: Timestamp) -> Result<(), RecordError> {
        if self.state.paused_until.is_some_and(|until| until <= now) {
            tracing::info!("pause expired; acting again");
            self.record(now, Event::Resumed(Resumed { expired: true }))?;
        }
        let expired: Vec<String> =
            self.state.silences.iter().filter(|(_, u)| **u <= now).map(|(r, _)| r.clone()).collect();
        for rule in expired {
            self.record(now, Event::Unsilenced(Silenced { rule, until: None }))?;
        }
        self.expire_approvals(now)
    }

    /// The deployed version becomes good once it has run clean for `bake`.
    fn watch_bake(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), RecordError> {
        // A rollback in flight (here, or the leader's, as the shared log says) is no bake.
        if self.in_flight.is_some() || self.state.unfinished().next().is_some() {
            self.seen.bake.restart();
            return Ok(());
        }
        let Some(version) = self.state.versions.current_unproven().map(str::to_string) else { return Ok(()) };
        // A reported deploy the version source does not confirm has not run here: no evidence.
        if self.seen.observed.as_ref().is_some_and(|seen| *seen != version) {
            self.seen.bake.restart();
            return Ok(());
        }
        let plans = &self.acting.plans;
        let rules_of = |p: &str| plans.get(p).map_or(0, |p| p.rules.len());
        if let Some(since) = self.seen.bake.observe(now, decisions, rules_of, self.acting.policy.bake)
            && self.leads()
        {
            // Good only if it is still the version running: read so recently that another
            // deployed meanwhile would have been seen (its clean run could be the successor's).
            if !self.version_fresh(now) {
                self.out.push(Effect::ReadVersion);
                return Ok(());
            }
            tracing::info!(version, since = %crate::time::iso(since), "version baked: good");
            self.record(now, Event::VersionBaked(VersionBaked { version, since }))?;
        }
        Ok(())
    }

    fn decide(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        if d.outcome == Outcome::Monitor {
            self.told.predates.remove(&d.profile);
            // Cleared, as far as is known: a decision that reads nothing (a restart, a takeover
            // whose windows fill again) does not end it, or it would be told again at once.
            if d.pending.is_empty() && d.unknown.is_empty() && self.state.suppressed.contains_key(&d.profile) {
                // Journalled (and shared): the leader after this one tells a new suppression.
                self.record(now, Event::SuppressionEnded(SuppressionEnded { profile: d.profile.clone() }))?;
            }
            return Ok(());
        }
        if d.predates_deploy() {
            return self.predates(now, d);
        }
        // An issue that began after the version source's last poll may be a new version's, not
        // yet read: wait for a poll after it (asked for at once) rather than act on the old one.
        // Before its first poll, the version is not known at all: a rollback started then would
        // have no version to be held back by, and a first sight of the version after it would
        // read as a deploy since (its cooldown skipped: a second rollback of the same version).
        // And a decision acted on — whenever it comes: after a pause, an approval — is about the
        // version running now: the version source read within VERSION_FRESH (a version deployed
        // during a hold is then seen before anything is acted on).
        let since = self.issue_since.get(&d.profile).copied().unwrap_or(d.at);
        let unread = match self.seen.polled_at {
            None => self.acting.version_source,
            Some(polled) => since > polled || !self.version_fresh(now),
        };
        if unread {
            let until = if self.seen.polled_at.is_some_and(|p| since <= p) { now } else { since };
            let asked = self.seen.waiting.is_some();
            self.seen.waiting = self.seen.waiting.max(Some(until));
            if self.told.version_wait.insert((d.profile.clone(), since)) {
                tracing::info!(profile = %d.profile, outcome = %d.outcome, "decided; reading the version source at once to know which version this is about");
                let note = serde_json::json!({ "profile": d.profile, "outcome": d.outcome, "issue_since": since });
                self.out.note(now, "waiting_for_version", note);
            }
            // Asked at once: waiting for its next scheduled poll would add up to its interval
            // (and the tick after it) to the time an outage takes to be rolled back.
            if !asked {
                self.out.push(Effect::ReadVersion);
            }
            return Ok(());
        }
        self.told.predates.remove(&d.profile);
        let wants_approval = d.outcome == Outcome::Consider
            || (d.outcome == Outcome::Rollback && self.acting.policy.mode == Mode::Approve);
        match d.outcome {
            _ if self.acting.policy.mode == Mode::DryRun => self.dry_run(now, d),
            _ if wants_approval => self.ask(now, d),
            _ => {
                let start = self.start_of(d);
                self.try_start(now, start, None).map(|_| ())
            }
        }
    }

    /// A rollback from a decision about the deployed version.
    pub(super) fn start_of(&self, d: &Decision) -> Start {
        let plan = self.acting.plans.get(&d.profile);
        let level_label = |r: &str| plan.and_then(|p| p.labels.get(r)).and_then(|l| l.get("level")).cloned();
        Start::from_decision(d, self.state.versions.current.clone(), level_label, |r| plan?.summary(r))
    }

    fn dry_run(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        let key = format!("{}:{}", gate::key(&d.profile, self.state.versions.current.as_deref()), d.outcome);
        if self.told.dry_runs.contains(&key) {
            return Ok(());
        }
        self.told.dry_runs.push(key.clone());
        let steps = self.steps_of(&d.profile, "rollback", self.start_of(d).level.as_deref());
        let would_run: Vec<String> = steps.iter().map(describe).collect();
        tracing::warn!(profile = %d.profile, outcome = %d.outcome, steps = ?would_run, "dry run: would act");
        let e = DryRun { profile: d.profile.clone(), outcome: d.outcome, key, explanation: d.explanation(), would_run };
        self.record(now, Event::DryRun(e))
    }

    /// Tells every channel that a profile's rollback is held back, and why.
    fn announce_suppressed(&mut self, profile: &str, reason: &str, explanation: &str) {
        let mut vars = crate::template::messages::blank_vars();
        vars.insert("profile".into(), profile.to_string());
        vars.insert("reason".into(), reason.to_string());
        vars.insert("explanation".into(), explanation.to_string());
        vars.insert("version_from".into(), self.state.versions.current.clone().unwrap_or_else(|| "unknown".into()));
        self.out.announce("rollback_suppressed", &vars);
    }

    /// Journals why a decision was not acted on, once per change of reason.
    pub(super) fn suppress(
        &mut self,
        now: Timestamp,
        profile: &str,
        outcome: Outcome,
        explanation: &str,
        reason: String,
    ) -> Result<(), RecordError> {
        if self.state.suppressed.get(profile) == Some(&reason) {
            return Ok(());
        }
        tracing::warn!(profile, %outcome, reason = %reason, "decision not acted on");
        // Told on every channel — unless a rollback is already in flight (that is the news).
        if outcome == Outcome::Rollback && self.in_flight.is_none() {
            self.announce_suppressed(profile, &reason, explanation);
        }
        let e = Suppressed { profile: profile.to_string(), outcome, reason, explanation: explanation.to_string() };
        self.record(now, Event::Suppressed(e))
    }

    /// The rules silenced at `now` (the evaluator's trees read them as not firing).
    pub fn silenced(&self, now: Timestamp) -> Vec<String> {
        self.state.silences.iter().filter(|(_, until)| **until > now).map(|(r, _)| r.clone()).collect()
    }

    pub fn status(&self) -> ActingStatus {
        let mut rollbacks = BTreeMap::new();
        for r in &self.state.rollbacks {
            let k = r.finished.as_ref().map_or("in_flight", |(_, f)| f.result.key());
            *rollbacks.entry(k.to_string()).or_insert(0) += 1;
        }
        ActingStatus {
            mode: self.acting.policy.mode.to_string(),
            in_flight: self.in_flight.clone(),
            approvals: self.state.approvals.values().map(|(_, a)| a.clone()).collect(),
            approval_commands: self
                .state
                .approvals
                .keys()
                .map(|id| (id.clone(), super::vars::answer_commands(&self.acting, id)))
                .collect(),
            recent_rollbacks: super::history::recent(&self.state, 5),
            recent_escalations: self
                .state
                .escalations
                .iter()
                .map(|(at, e)| RecentEscalation { at: *at, escalation: e.clone() })
                .collect(),
            paused_until: self.state.paused_until,
            paused: self.state.paused_until.map(|u| {
                if u.0 == i64::MAX { "until resumed".to_string() } else { format!("until {}", super::iso(u)) }
            }),
            silences: self.state.silences.clone(),
            suppressed: self.state.suppressed.clone(),
            rollbacks,
            escalations_total: self.escalations,
            journal_error: self.journal_error().map(str::to_string),
            journal_dropped: self.ledger.journal().dropped(),
            standby: self.lead.standby.clone(),
            timings: self.state.rollbacks.iter().map(|r| (r.started.profile.clone(), r.timings())).collect(),
            version: self.state.versions.current.clone(),
            version_seen: self.seen.observed.clone(),
            deployed_at: self.state.versions.deployed_at,
            target_version: self.state.versions.target().map(str::to_string),
            last_good: self.state.versions.last_good().map(str::to_string),
        }
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
