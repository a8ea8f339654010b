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
use tokio::sync::mpsc;

use super::effect::Restart;
use super::event::*;
use super::gate::{self, Start};
use super::inflight::InFlight;
pub use super::inflight::Phase;
use super::ledger::{Ledger, RecordError};
use super::plan::Acting;
use super::procedure::ProcedureDone;
use super::state::{Rollback, State};
use super::steps::describe;
use super::versions::Bake;
use crate::config::policy::Mode;
use crate::notify::Notifier;
use crate::rules::{Decision, Outcome, Transition};
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
    pub paused_until: Option<Timestamp>,
    pub silences: BTreeMap<String, Timestamp>,
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

/// Turns decisions into procedures.
pub struct Dispatcher {
    pub(super) acting: Acting,
    pub(super) notifier: Notifier,
    pub(super) ledger: Ledger,
    pub(super) client: reqwest::Client,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) state: State,
    pub(super) in_flight: Option<InFlight>,
    pub(super) done: mpsc::UnboundedSender<ProcedureDone>,
    /// The running procedure's task, and notifiers replaced by a reload while they flush:
    /// joined at [`stop`](Self::stop).
    pub(super) tasks: tokio::task::JoinSet<()>,
    /// Per profile, the last suppression journalled (journalled again only when it changes).
    pub(super) suppressed: BTreeMap<String, String>,
    /// Per profile, since when every rule has been unknown, and whether that was notified.
    pub(super) blind: BTreeMap<String, (Timestamp, bool)>,
    /// Keys already journalled as dry runs.
    pub(super) dry_runs: Vec<String>,
    pub(super) loop_guard_tripped: bool,
    pub(super) escalations: u64,
    pub(super) bake: Bake,
    /// The version source's last reading (a reading that changes is a deploy).
    pub(super) observed: Option<String>,
    /// Whether the version source's last reading was refused (told once).
    version_refused: bool,
    /// When the version source was last read, and last polled at all (read or not): a decision
    /// about an issue that began after the last poll waits for the next one, which says what
    /// version the issue is about.
    pub(super) version_read_at: Option<Timestamp>,
    pub(super) version_polled_at: Option<Timestamp>,
    /// `(profile, issue since)` whose wait for the version source was told (once each).
    version_wait_told: BTreeSet<(String, Timestamp)>,
    pub(super) restart: Option<Restart>,
    /// Profiles whose pre-deploy incident was escalated (once, until its rules are seen quiet).
    pub(super) predates_told: BTreeSet<String>,
    /// Per profile, since when it has decided `monitor` (approvals clear after `verify_stable`).
    pub(super) monitor_since: BTreeMap<String, Timestamp>,
    /// `(profile, version)` whose approval was rejected: not asked again until it clears.
    pub(super) rejected: BTreeSet<(String, Option<String>)>,
    /// Since when, and why, the journal cannot be written: nothing is acted on meanwhile.
    pub(super) journal_down: Option<(Timestamp, String)>,
    /// Profiles told (while the journal is down) that their rollback is held back.
    journal_told: BTreeSet<String>,
    /// Per profile, since when a rule has been pending or firing (until it decides `monitor`
    /// with none): where an incident's recovery time starts.
    pub(super) issue_since: BTreeMap<String, Timestamp>,
    /// The leadership term this replica acts under (replicas on etcd); `None` while it does not
    /// lead. Alone, always `None` and unused.
    pub(super) term: Option<crate::coord::Term>,
    /// Why this replica does not act (a follower, etcd unreachable), with replicas.
    pub(super) standby: Option<String>,
    /// Since when etcd cannot be reached, and when that was last told on the channels.
    pub(super) coord_down: Option<(Timestamp, Timestamp)>,
    /// Since when the shared log is not trusted (etcd lost data) and is being rebuilt: told
    /// once; its end told once.
    pub(super) rebuilding: Option<Timestamp>,
    /// Whether this replica tells people of the etcd outage (one replica does).
    pub(super) coord_teller: bool,
    /// Profiles whose rollback was wanted during the etcd outage (told once each).
    pub(super) wanted_told: BTreeSet<String>,
}

impl Dispatcher {
    /// Restores the state from the journal's `lines` and reports any rollback found started
    /// but unfinished (escalated S1, never re-run). The receiver yields finished procedures.
    pub fn new(
        acting: Acting,
        notifier: Notifier,
        ledger: Ledger,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
        lines: &[serde_json::Value],
    ) -> Result<(Dispatcher, mpsc::UnboundedReceiver<ProcedureDone>), RecordError> {
        // A small clock skew is fine; a line dated beyond it is reported (and kept: it guards acting).
        let latest = clock.now().plus(Span::from_secs(5 * 60));
        let (state, errors) = State::restore_before(lines, latest);
        for e in errors {
            tracing::warn!(error = %e, "journal event skipped while restoring");
        }
        let (done, done_rx) = mpsc::unbounded_channel();
        let restart = state.versions.deployed_at.map(|at| Restart { at, predates: false, deployed: None });
        let rejected = state.rejected_now();
        let mut d = Dispatcher {
            acting,
            notifier,
            standby: ledger.is_shared().then(|| "waiting for the election on etcd".to_string()),
            ledger,
            client,
            clock,
            state,
            in_flight: None,
            done,
            tasks: tokio::task::JoinSet::new(),
            suppressed: BTreeMap::new(),
            blind: BTreeMap::new(),
            dry_runs: vec![],
            loop_guard_tripped: false,
            escalations: 0,
            bake: Bake::default(),
            observed: None,
            version_refused: false,
            version_read_at: None,
            version_polled_at: None,
            version_wait_told: BTreeSet::new(),
            restart,
            predates_told: BTreeSet::new(),
            monitor_since: BTreeMap::new(),
            rejected,
            journal_down: None,
            journal_told: BTreeSet::new(),
            issue_since: BTreeMap::new(),
            term: None,
            coord_down: None,
            rebuilding: None,
            coord_teller: false,
            wanted_told: BTreeSet::new(),
        };
        if d.ledger.is_shared() {
            // The leader's rollbacks are its own: this replica reports one interrupted only
            // once it leads (and has read the shared log).
            return Ok((d, done_rx));
        }
        let unfinished: Vec<Rollback> = d.state.unfinished().cloned().collect();
        for r in unfinished {
            if let Err(e) = d.interrupted(r, "a restart") {
                // A full disk at start: keep watching, act once the journal takes writes again.
                d.journal_failed(d.clock.now(), &crate::error_chain(&e));
                break;
            }
        }
        Ok((d, done_rx))
    }

    /// Takes a reloaded config's actions, policy and plans; state and the rollback in flight stay.
    pub fn reconfigure(&mut self, acting: Acting, notifier: Notifier) {
        self.acting = acting;
        let old = std::mem::replace(&mut self.notifier, notifier);
        // The old channels finish what they were sending (a few seconds), then stop.
        self.spawn(async move {
            old.flush(std::time::Duration::from_secs(3)).await;
            old.stop().await;
        });
    }

    /// Spawns a task the dispatcher owns (reaping those already done).
    pub(super) fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(task);
    }

    /// At a stop, after the running steps were given their grace: gives queued notifications
    /// `flush` to go out, journals the rest as not sent, ends every task it started (a
    /// procedure still running is cut off: the next start reports it interrupted) and waits
    /// for them.
    pub async fn stop(&mut self, flush: std::time::Duration) {
        self.notifier.flush(flush).await;
        self.notifier.stop().await;
        if self.steps_running() {
            self.tasks.abort_all();
        }
        let wait = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(flush, wait).await.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }

    /// Journals a tick's rule state changes and the decisions that changed (records: they do
    /// not wait for the disk), and logs them.
    pub fn note_tick(&self, transitions: &[Transition], changed: &[&Decision]) {
        for t in transitions {
            tracing::info!(rule = %t.rule, from = %t.from, to = %t.to, value = ?t.value, "rule state changed");
            self.ledger.journal().note_dated("transition", t);
        }
        for d in changed {
            tracing::info!(profile = %d.profile, outcome = %d.outcome, explanation = %d.explained(), "decision");
            self.ledger.journal().note_dated("decision", d);
        }
    }

    /// Whether a rollback's steps are running now (not yet verifying).
    pub fn steps_running(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.phase == Phase::Steps)
    }

    /// The dispatcher's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Where the evaluator's evidence must restart, once (a deploy, a restore point, the
    /// journalled deploy at start).
    pub fn take_restart(&mut self) -> Option<Restart> {
        self.restart.take()
    }

    /// Journals an event, then applies it to the state: nothing counts before it is durable.
    pub(super) fn record(&mut self, at: Timestamp, event: Event) -> Result<(), RecordError> {
        self.ledger.append_event(at, &event, self.term)?;
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
        if let Some(c) = self.ledger.coordinator() {
            c.step_aside();
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
        if self.ledger.append_event(now, &probe, self.term).is_err() {
            return Ok(false);
        }
        self.journal_down = None;
        self.journal_told.clear();
        let finding =
            format!("journal writable again after {}: acting resumed", crate::time::human(now.saturating_since(since)));
        tracing::warn!("{finding}");
        if let Some(c) = self.ledger.coordinator() {
            // Among replicas: this one may lead again.
            c.rejoin();
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
                if self.journal_told.insert(d.profile.clone()) {
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
        }
        if !self.leads() {
            // A follower watches; the leader acts (and journals its acts into the shared log).
            // It bakes too, so that a new leader's bake goes on where it was.
            self.remind_coord(now);
            self.tell_wanted(decisions);
            return self.watch_bake(now, decisions);
        }
        self.expire(now)?;
        self.verify_in_flight(now, decisions)?;
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
            if !self.version_refused {
                tracing::error!(%why, "the version source's reading is not a version; ignored until it is");
                self.version_refused = true;
            }
            self.on_version_unreadable(now);
            return Ok(());
        }
        self.version_refused = false;
        let previous_read = self.version_read_at.replace(now);
        self.version_polled_at = Some(now);
        if !self.leads() {
            self.observed = Some(version.to_string());
            return Ok(());
        }
        let first = self.observed.is_none();
        let changed = self.observed.as_deref() != Some(version);
        self.observed = Some(version.to_string());
        if changed && self.state.versions.current.as_deref() != Some(version) {
            let source = if first { DeploySource::FirstSight } else { DeploySource::Version };
            // Dated just after the last reading of the old version: the earliest the new one
            // could have run, so that what went wrong since is judged as the new version's.
            // A rollback's restore is dated when it is seen (its point: the first observation
            // of a new version after the steps).
            let at = match (source, previous_read) {
                (DeploySource::Version, Some(p)) if self.in_flight.is_none() => p.plus(Span(1)).min(now),
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
            self.restart = Some(Restart { at: now, predates: false, deployed: None });
            self.bake.restart();
        }
        Ok(())
    }

    /// A poll of the version source that read no version (the target down, the field missing):
    /// not a change, but the version is as known as it will be for now.
    pub fn on_version_unreadable(&mut self, now: Timestamp) {
        self.version_polled_at = Some(now);
    }

    /// `to` is deployed now (seen by the version source, or reported). Returns whether it was
    /// a change.
    pub(super) fn deployed(&mut self, now: Timestamp, to: &str, source: DeploySource) -> Result<bool, RecordError> {
        let from = self.state.versions.current.clone();
        if from.as_deref() == Some(to) {
            return Ok(false);
        }
        tracing::info!(from = ?from, to, ?source, "deploy");
        if let Some(seen) = self.observed.as_ref().filter(|seen| *seen != to && source != DeploySource::Version) {
            tracing::warn!(to, seen = %seen, "deploy reported, but the version source reads another version: it bakes only once seen");
        }
        let seen_at = self.version_read_at.filter(|seen| *seen > now);
        self.record(now, Event::Deploy(Deploy { from, to: to.to_string(), source, seen_at }))?;
        if self.in_flight.as_ref().is_some_and(|f| f.phase == Phase::Verifying) {
            self.supersede_verification(now, to)?;
        }
        self.bake.restart();
        self.predates_told.clear();
        self.rejected.retain(|(_, v)| v.as_deref() == Some(to));
        self.supersede_approvals(now, to)?;
        let predates = source != DeploySource::FirstSight && self.in_flight.is_none();
        self.restart = Some(Restart { at: now, predates, deployed: predates.then(|| to.to_string()) });
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
            self.bake.restart();
            return Ok(());
        }
        let Some(version) = self.state.versions.current_unproven().map(str::to_string) else { return Ok(()) };
        // A reported deploy the version source does not confirm has not run here: no evidence.
        if self.observed.as_ref().is_some_and(|seen| *seen != version) {
            self.bake.restart();
            return Ok(());
        }
        let plans = &self.acting.plans;
        let rules_of = |p: &str| plans.get(p).map_or(0, |p| p.rules.len());
        if let Some(since) = self.bake.observe(now, decisions, rules_of, self.acting.policy.bake)
            && self.leads()
        {
            tracing::info!(version, since = %crate::time::iso(since), "version baked: good");
            self.record(now, Event::VersionBaked(VersionBaked { version, since }))?;
        }
        Ok(())
    }

    fn decide(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        if d.outcome == Outcome::Monitor {
            self.suppressed.remove(&d.profile);
            self.predates_told.remove(&d.profile);
            return Ok(());
        }
        if d.predates_deploy() {
            return self.predates(now, d);
        }
        // An issue that began after the version source's last poll may be a new version's, not
        // yet read: wait for the next poll (at most its interval) rather than act on the old one.
        if let Some(polled) = self.version_polled_at
            && let Some(since) = self.issue_since.get(&d.profile).copied()
            && since > polled
        {
            if self.version_wait_told.insert((d.profile.clone(), since)) {
                tracing::info!(profile = %d.profile, outcome = %d.outcome, "decided; waiting for the version source's next poll to know which version this is about");
                let note = serde_json::json!({ "profile": d.profile, "outcome": d.outcome, "issue_since": since });
                self.ledger.journal().note(now, "waiting_for_version", &note);
            }
            return Ok(());
        }
        self.predates_told.remove(&d.profile);
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
        Start::from_decision(d, self.state.versions.current.clone(), level_label)
    }

    fn dry_run(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        let key = format!("{}:{}", gate::key(&d.profile, self.state.versions.current.as_deref()), d.outcome);
        if self.dry_runs.contains(&key) {
            return Ok(());
        }
        self.dry_runs.push(key.clone());
        let steps = self.steps_of(&d.profile, "rollback", self.start_of(d).level.as_deref());
        let would_run: Vec<String> = steps.iter().map(describe).collect();
        tracing::warn!(profile = %d.profile, outcome = %d.outcome, steps = ?would_run, "dry run: would act");
        let e = DryRun { profile: d.profile.clone(), outcome: d.outcome, key, explanation: d.explanation(), would_run };
        self.record(now, Event::DryRun(e))
    }

    /// Tells every channel that a profile's rollback is held back, and why.
    fn announce_suppressed(&self, profile: &str, reason: &str, explanation: &str) {
        let mut vars = crate::template::messages::blank_vars();
        vars.insert("profile".into(), profile.to_string());
        vars.insert("reason".into(), reason.to_string());
        vars.insert("explanation".into(), explanation.to_string());
        vars.insert("version_from".into(), self.state.versions.current.clone().unwrap_or_else(|| "unknown".into()));
        self.notifier.announce("rollback_suppressed", &vars);
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
        if self.suppressed.get(profile) == Some(&reason) {
            return Ok(());
        }
        tracing::warn!(profile, %outcome, reason = %reason, "decision not acted on");
        self.suppressed.insert(profile.to_string(), reason.clone());
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
                .map(|id| (id.clone(), super::vars::answer_commands(&self.acting.config_path, id)))
                .collect(),
            recent_rollbacks: super::history::recent(&self.state, 5),
            recent_escalations: self
                .state
                .escalations
                .iter()
                .map(|(at, e)| RecentEscalation { at: *at, escalation: e.clone() })
                .collect(),
            paused_until: self.state.paused_until,
            silences: self.state.silences.clone(),
            rollbacks,
            escalations_total: self.escalations,
            journal_error: self.journal_error().map(str::to_string),
            journal_dropped: self.ledger.journal().dropped(),
            standby: self.standby.clone(),
            timings: self.state.rollbacks.iter().map(|r| (r.started.profile.clone(), r.timings())).collect(),
            version: self.state.versions.current.clone(),
            version_seen: self.observed.clone(),
            deployed_at: self.state.versions.deployed_at,
            target_version: self.state.versions.target().map(str::to_string),
            last_good: self.state.versions.last_good().map(str::to_string),
        }
    }
}
