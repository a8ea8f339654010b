//! The dispatcher routes: each tick's decisions, the deployed version's observations, finished
//! procedures and operator commands go to the part that owns them — the [`gate`](super::gate)
//! (may a rollback start?), the [`versions`](super::versions) (deploys, baking, the target),
//! [`approvals`](super::approvals), [`verify`](super::verify) (recovered, and sustained?),
//! [`commands`](super::commands) — and every change is journalled as an [`Event`] before it
//! counts, so a restart resumes the policy and never silently re-runs a rollback.
//!
//! A rollback: gate → `rollback_started` → the procedure's steps in their own task → the
//! restore point (steps' end; moved to the first observation of a new version) restarts the
//! evidence → the rules behind it, and those reading the same signals, quiet for
//! `verify_stable` → "ROLLBACK COMPLETE"; the version rolled back from is then bad.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use super::action::Action;
use super::event::*;
use super::gate::{self, Gate, Start};
use super::policy::{Mode, Policy};
use super::procedure::{Procedure, ProcedureDone};
use super::state::{Rollback, State};
use super::template::Vars;
use super::vars;
use super::verify::{Verdict, Verification, rules_to_verify};
use super::versions::Bake;
use crate::journal::{JournalError, SharedJournal};
use crate::notify::{Notifier, templates::blank_vars};
use crate::rules::{Decision, Evaluator, Outcome, Step};
use crate::time::{Clock, Span, Timestamp, human};

pub use super::commands::{Command, CommandRequest};

/// What a profile's procedures need at run time.
#[derive(Debug, Clone)]
pub struct Plan {
    pub procedures: BTreeMap<String, Vec<Step>>,
    pub consider_auto_after: Option<Span>,
    pub rules: Vec<String>,
    /// Each rule's `labels`, offered to templates as `{{labels.NAME}}`.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Each rule and the signals and selectors it reads (rules that share one verify together).
    pub reads: Vec<(String, Vec<String>)>,
}

impl Plan {
    /// Every profile's plan, from a compiled evaluator.
    pub fn from_evaluator(ev: &Evaluator) -> BTreeMap<String, Plan> {
        ev.profiles
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mine = || ev.rules.iter().filter(move |r| r.profile == i);
                let plan = Plan {
                    procedures: p.procedures.clone(),
                    consider_auto_after: p.consider_auto_after,
                    rules: mine().map(|r| r.name.clone()).collect(),
                    labels: mine().map(|r| (r.name.clone(), r.labels.clone())).collect(),
                    reads: mine().map(|r| (r.name.clone(), r.reads.clone())).collect(),
                };
                (p.name.clone(), plan)
            })
            .collect()
    }
}

/// The acting half of a config, secrets resolved.
#[derive(Debug, Clone)]
pub struct Acting {
    pub policy: Policy,
    pub actions: Arc<BTreeMap<String, Action>>,
    pub plans: BTreeMap<String, Plan>,
    /// Masks secret values in what actions print before it is journalled.
    pub redactor: crate::source::Redactor,
    /// The config file, for the commands messages tell people to run.
    pub config_path: PathBuf,
}

/// Where a rollback in flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The procedure's steps are running.
    Steps,
    /// The steps are done; waiting for the rules behind it to stay quiet.
    Verifying,
}

/// The rollback in flight.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub rollback_id: String,
    pub profile: String,
    pub started_at: Timestamp,
    pub phase: Phase,
    pub verify_until: Option<Timestamp>,
    pub version_from: Option<String>,
    pub target_version: Option<String>,
    #[serde(skip)]
    firing: Vec<String>,
    #[serde(skip)]
    post: Vec<Step>,
    #[serde(skip)]
    vars: Vars,
    #[serde(skip)]
    slow_escalated: bool,
    #[serde(skip)]
    verification: Option<Verification>,
    /// Whether the procedure runs any action (one that only announces restores nothing).
    #[serde(skip)]
    acts: bool,
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
    /// The deployed version, since when, and the current rollback target.
    pub version: Option<String>,
    pub deployed_at: Option<Timestamp>,
    pub target_version: Option<String>,
}

/// The evaluator's evidence must restart at `at` (a deploy or a restore point); `predates`
/// when it is a deploy seen while watching (rules already firing then predate it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub at: Timestamp,
    pub predates: bool,
}

/// Turns decisions into procedures.
pub struct Dispatcher {
    pub(super) acting: Acting,
    pub(super) notifier: Notifier,
    journal: SharedJournal,
    client: reqwest::Client,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) state: State,
    pub(super) in_flight: Option<InFlight>,
    done: mpsc::UnboundedSender<ProcedureDone>,
    /// Per profile, the last suppression journalled (journalled again only when it changes).
    suppressed: BTreeMap<String, String>,
    /// Per profile, since when every rule has been unknown, and whether that was notified.
    blind: BTreeMap<String, (Timestamp, bool)>,
    /// Keys already journalled as dry runs.
    dry_runs: Vec<String>,
    loop_guard_tripped: bool,
    escalations: u64,
    bake: Bake,
    /// The version source's last reading (a reading that changes is a deploy).
    observed: Option<String>,
    restart: Option<Restart>,
    /// Profiles whose pre-deploy incident was escalated (once, until its rules are seen quiet).
    predates_told: BTreeSet<String>,
    /// Per profile, since when it has decided `monitor` (approvals clear after `verify_stable`).
    pub(super) monitor_since: BTreeMap<String, Timestamp>,
    /// `(profile, version)` whose approval was rejected: not asked again until it clears.
    pub(super) rejected: BTreeSet<(String, Option<String>)>,
}

impl Dispatcher {
    /// Restores the state from the journal's `lines` and reports any rollback found started
    /// but unfinished (escalated S1, never re-run). The receiver yields finished procedures.
    pub fn new(
        acting: Acting,
        notifier: Notifier,
        journal: SharedJournal,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
        lines: &[serde_json::Value],
    ) -> Result<(Dispatcher, mpsc::UnboundedReceiver<ProcedureDone>), JournalError> {
        let (state, errors) = State::restore(lines);
        for e in errors {
            tracing::warn!(error = %e, "journal event skipped while restoring");
        }
        let (done, done_rx) = mpsc::unbounded_channel();
        let restart = state.versions.deployed_at.map(|at| Restart { at, predates: false });
        let rejected = state
            .closed_approvals
            .iter()
            .filter(|c| c.closed.how == Closed::Rejected && c.opened.version == state.versions.current)
            .map(|c| (c.opened.profile.clone(), c.opened.version.clone()))
            .collect();
        let mut d = Dispatcher {
            acting,
            notifier,
            journal,
            client,
            clock,
            state,
            in_flight: None,
            done,
            suppressed: BTreeMap::new(),
            blind: BTreeMap::new(),
            dry_runs: vec![],
            loop_guard_tripped: false,
            escalations: 0,
            bake: Bake::default(),
            observed: None,
            restart,
            predates_told: BTreeSet::new(),
            monitor_since: BTreeMap::new(),
            rejected,
        };
        let unfinished: Vec<Rollback> = d.state.unfinished().cloned().collect();
        for r in unfinished {
            d.interrupted(r)?;
        }
        Ok((d, done_rx))
    }

    /// A rollback found started but unfinished: reported S1, never re-run.
    fn interrupted(&mut self, r: Rollback) -> Result<(), JournalError> {
        let now = self.clock.now();
        let open: Vec<String> =
            r.open_steps.iter().map(|(n, action, role)| format!("step {n} {role} {action:?}")).collect();
        let last = if open.is_empty() {
            match r.steps_done.last() {
                Some(s) => format!("after step {} ({:?}) finished", s.step, s.action),
                None => "before its first step".to_string(),
            }
        } else {
            format!("during {} (started, not finished)", open.join(", "))
        };
        let error = format!("interrupted by a restart {last}; not re-run");
        self.record(
            now,
            Event::RollbackFinished(RollbackFinished {
                rollback_id: r.started.rollback_id.clone(),
                result: RollbackResult::Interrupted,
                duration_ms: now.saturating_since(r.at).0,
                version_to: None,
                error: Some(error.clone()),
            }),
        )?;
        let mut vars = vars::rollback(&self.acting, &r.started);
        vars.insert("error".into(), error.clone());
        let finding = format!("rollback {} {error}", r.started.rollback_id);
        let response = "All hands. Check the deployment by hand; rollwatch will not repeat it.";
        self.escalate(now, Severity::S1, &finding, response, &r.started.profile, Some(&r.started.rollback_id), vars)
    }

    /// Takes a reloaded config's actions, policy and plans; state and the rollback in flight stay.
    pub fn reconfigure(&mut self, acting: Acting, notifier: Notifier) {
        self.acting = acting;
        self.notifier = notifier;
    }

    /// Whether a rollback's steps are running now (not yet verifying).
    pub fn steps_running(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.phase == Phase::Steps)
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
    pub(super) fn record(&mut self, at: Timestamp, event: Event) -> Result<(), JournalError> {
        self.journal.append_event(at, &event)?;
        if let Err(e) = self.state.apply(at, &event) {
            tracing::error!(event = %event.name(), error = %e, "journalled event not applied");
        }
        Ok(())
    }

    /// One tick: expiries, verification, approvals clearing, blindness, baking, then each decision.
    pub fn on_tick(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), JournalError> {
        self.expire(now)?;
        self.verify(now, decisions)?;
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
    pub fn on_version_observed(&mut self, now: Timestamp, version: &str) -> Result<(), JournalError> {
        let first = self.observed.is_none();
        let changed = self.observed.as_deref() != Some(version);
        self.observed = Some(version.to_string());
        if changed && self.state.versions.current.as_deref() != Some(version) {
            let source = if first { DeploySource::FirstSight } else { DeploySource::Version };
            self.deployed(now, version, source)?;
        }
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        let Some(v) = &mut f.verification else { return Ok(()) };
        v.first_seen.get_or_insert_with(|| version.to_string());
        if v.version_to.is_none() && f.version_from.as_deref() != Some(version) {
            tracing::info!(rollback = %f.rollback_id, version, "restored version seen: its evidence starts here");
            v.restored(now, version);
            self.restart = Some(Restart { at: now, predates: false });
            self.bake.restart();
        }
        Ok(())
    }

    /// `to` is deployed now (seen by the version source, or reported). Returns whether it was
    /// a change.
    pub(super) fn deployed(&mut self, now: Timestamp, to: &str, source: DeploySource) -> Result<bool, JournalError> {
        let from = self.state.versions.current.clone();
        if from.as_deref() == Some(to) {
            return Ok(false);
        }
        tracing::info!(from = ?from, to, ?source, "deploy");
        self.record(now, Event::Deploy(Deploy { from, to: to.to_string(), source }))?;
        self.bake.restart();
        self.predates_told.clear();
        self.rejected.retain(|(_, v)| v.as_deref() == Some(to));
        self.supersede_approvals(now, to)?;
        let predates = source != DeploySource::FirstSight && self.in_flight.is_none();
        self.restart = Some(Restart { at: now, predates });
        Ok(true)
    }

    fn expire(&mut self, now: Timestamp) -> Result<(), JournalError> {
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

    /// Verification and the slow-rollback check of the rollback in flight.
    fn verify(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), JournalError> {
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        let slow = self.acting.policy.slow_rollback;
        if !f.slow_escalated && now.saturating_since(f.started_at) > slow {
            f.slow_escalated = true;
            let (profile, id, vars) = (f.profile.clone(), f.rollback_id.clone(), f.vars.clone());
            let finding = format!("rollback {id} has taken longer than {slow}");
            self.escalate(now, Severity::S3, &finding, "Post-mortem. Improve procedure.", &profile, Some(&id), vars)?;
        }
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        let Some(d) = decisions.iter().find(|d| d.profile == f.profile) else { return Ok(()) };
        let Some(v) = &mut f.verification else { return Ok(()) };
        let stable = self.acting.policy.verify_stable;
        let verify_for = self.acting.policy.verify_for;
        match v.observe(now, d, stable) {
            Verdict::Waiting => Ok(()),
            Verdict::Verified => self.complete(now),
            Verdict::Relapsed(rules) => {
                let finding = format!("rollback succeeded but issue persists: {} firing again", rules.join(", "));
                self.finish_unverified(now, RollbackResult::IssuePersists, finding)
            }
            Verdict::Persists(rules) => {
                let finding = format!(
                    "rollback succeeded but issue persists: {} not quiet for {stable} within {verify_for}",
                    rules.join(", ")
                );
                self.finish_unverified(now, RollbackResult::IssuePersists, finding)
            }
            Verdict::Unseen(rules) => {
                let finding = format!("rollback could not be verified: {} unknown for {verify_for}", rules.join(", "));
                self.finish_unverified(now, RollbackResult::Unverified, finding)
            }
        }
    }

    fn complete(&mut self, now: Timestamp) -> Result<(), JournalError> {
        let Some(mut f) = self.in_flight.take() else { return Ok(()) };
        let duration = now.saturating_since(f.started_at);
        let version_to = f.verification.as_ref().and_then(Verification::observed_after);
        f.vars.insert("duration".into(), human(duration));
        f.vars.insert(
            "version_to".into(),
            version_to.clone().or_else(|| f.target_version.clone()).unwrap_or_else(|| "unknown".into()),
        );
        let finished = RollbackFinished {
            rollback_id: f.rollback_id.clone(),
            result: RollbackResult::Completed,
            duration_ms: duration.0,
            version_to,
            error: None,
        };
        self.record(now, Event::RollbackFinished(finished))?;
        tracing::info!(rollback = %f.rollback_id, profile = %f.profile, duration = %duration, "ROLLBACK COMPLETE");
        for step in &f.post {
            if let Step::Announce { template, .. } = step {
                self.notifier.announce(template, &f.vars);
            }
        }
        Ok(())
    }

    fn finish_unverified(
        &mut self,
        now: Timestamp,
        result: RollbackResult,
        finding: String,
    ) -> Result<(), JournalError> {
        let Some(mut f) = self.in_flight.take() else { return Ok(()) };
        let duration = now.saturating_since(f.started_at);
        f.vars.insert("duration".into(), human(duration));
        let finished = RollbackFinished {
            rollback_id: f.rollback_id.clone(),
            result,
            duration_ms: duration.0,
            version_to: f.verification.as_ref().and_then(Verification::observed_after),
            error: Some(finding.clone()),
        };
        self.record(now, Event::RollbackFinished(finished))?;
        let response = "Deeper investigation. May need older version.";
        self.escalate(now, Severity::S2, &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
    }

    /// The procedure task ended.
    pub fn on_done(&mut self, done: ProcedureDone) -> Result<(), JournalError> {
        let now = self.clock.now();
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        if f.rollback_id != done.rollback_id {
            return Ok(());
        }
        match done.result {
            Ok(()) => {
                let verify_for = self.acting.policy.verify_for;
                f.phase = Phase::Verifying;
                f.verify_until = Some(now.plus(verify_for));
                let reads = self.acting.plans.get(&f.profile).map(|p| p.reads.clone()).unwrap_or_default();
                let rules = rules_to_verify(&f.firing, &reads);
                tracing::info!(rollback = %f.rollback_id, %verify_for, rules = ?rules, "steps done; verifying");
                let nothing_to_verify = rules.is_empty();
                f.verification = Some(Verification::new(rules, now, verify_for));
                // The restore point: the end of the steps, until a new version is seen. A
                // procedure that runs no action restored nothing: the evidence goes on.
                if f.acts {
                    self.restart = Some(Restart { at: now, predates: false });
                    self.bake.restart();
                }
                if nothing_to_verify {
                    return self.complete(now);
                }
                Ok(())
            }
            Err(failure) => {
                let Some(mut f) = self.in_flight.take() else { return Ok(()) };
                let duration = now.saturating_since(f.started_at);
                f.vars.insert("duration".into(), human(duration));
                f.vars.insert("step".into(), format!("{} ({})", failure.step, failure.action));
                f.vars.insert("error".into(), failure.error.clone());
                let finished = RollbackFinished {
                    rollback_id: f.rollback_id.clone(),
                    result: RollbackResult::Failed,
                    duration_ms: duration.0,
                    version_to: None,
                    error: Some(format!("step {} {:?}: {}", failure.step, failure.action, failure.error)),
                };
                self.record(now, Event::RollbackFinished(finished))?;
                self.notifier.announce("rollback_failed", &f.vars);
                let finding =
                    format!("rollback failed at step {} ({}): {}", failure.step, failure.action, failure.error);
                let response = "All hands. Manual intervention.";
                self.escalate(now, Severity::S1, &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
            }
        }
    }

    /// A runbook 004 finding: journalled, logged, announced on every channel.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn escalate(
        &mut self,
        now: Timestamp,
        severity: Severity,
        finding: &str,
        response: &str,
        profile: &str,
        rollback_id: Option<&str>,
        mut vars: Vars,
    ) -> Result<(), JournalError> {
        self.escalations += 1;
        tracing::error!(%severity, finding, profile, "escalation");
        let e = Escalation {
            severity,
            finding: finding.to_string(),
            response: response.to_string(),
            profile: profile.to_string(),
            rollback_id: rollback_id.map(str::to_string),
        };
        self.record(now, Event::Escalation(e))?;
        vars.insert("severity".into(), severity.to_string());
        vars.insert("finding".into(), finding.to_string());
        vars.insert("response".into(), response.to_string());
        vars.insert("profile".into(), profile.to_string());
        if let Some(id) = rollback_id {
            vars.insert("rollback_id".into(), id.to_string());
        }
        self.notifier.announce("escalation", &vars);
        Ok(())
    }

    /// Every rule of the profile unknown for longer than `blind_after` is told once per spell.
    fn watch_blindness(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        let Some(plan) = self.acting.plans.get(&d.profile) else { return Ok(()) };
        let blind = !plan.rules.is_empty() && d.unknown.len() == plan.rules.len();
        if !blind {
            if self.blind.remove(&d.profile).is_some_and(|(_, told)| told) {
                tracing::info!(profile = %d.profile, "inputs known again");
                self.record(now, Event::Sighted(Sighted { profile: d.profile.clone() }))?;
            }
            return Ok(());
        }
        let (since, told) = *self.blind.entry(d.profile.clone()).or_insert((now, false));
        let blind_for = now.saturating_since(since);
        if !told && blind_for >= self.acting.policy.blind_after {
            self.blind.insert(d.profile.clone(), (since, true));
            let mut vars = blank_vars();
            vars.insert("profile".into(), d.profile.clone());
            vars.insert("duration".into(), human(blind_for));
            vars.insert("unknown_rules".into(), d.unknown.join(", "));
            tracing::error!(profile = %d.profile, for_ = %blind_for, "blind: every rule's inputs unknown");
            let blind = Blind { profile: d.profile.clone(), since, rules: d.unknown.clone() };
            self.record(now, Event::Blind(blind))?;
            self.notifier.announce("blind", &vars);
        }
        Ok(())
    }

    /// The deployed version becomes good once it has run clean for `bake`.
    fn watch_bake(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), JournalError> {
        if self.in_flight.is_some() {
            self.bake.restart();
            return Ok(());
        }
        let Some(version) = self.state.versions.current_unproven().map(str::to_string) else { return Ok(()) };
        let plans = &self.acting.plans;
        let rules_of = |p: &str| plans.get(p).map_or(0, |p| p.rules.len());
        if let Some(since) = self.bake.observe(now, decisions, rules_of, self.acting.policy.bake) {
            tracing::info!(version, since = %crate::time::iso(since), "version baked: good");
            self.record(now, Event::VersionBaked(VersionBaked { version, since }))?;
        }
        Ok(())
    }

    fn decide(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        if d.outcome == Outcome::Monitor {
            self.suppressed.remove(&d.profile);
            self.predates_told.remove(&d.profile);
            return Ok(());
        }
        if d.predates_deploy() {
            return self.predates(now, d);
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

    /// An incident older than the deploy: rolling the new version back would not fix it.
    /// Escalated S2 once, until its rules are seen quiet.
    fn predates(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        if !self.predates_told.insert(d.profile.clone()) {
            return Ok(());
        }
        let version = self.state.versions.current.clone().unwrap_or_else(|| "unknown".into());
        let start = self.start_of(d);
        let finding = format!(
            "incident predates deploy of {version}: {} already firing before it and not seen quiet since; not rolling back",
            d.because.join(", ")
        );
        let response = "Deeper investigation: the deploy did not cause this; rolling back would not fix it.";
        let vars = vars::base(&self.acting, &start);
        self.escalate(now, Severity::S2, &finding, response, &d.profile, None, vars)
    }

    /// A rollback from a decision about the deployed version.
    pub(super) fn start_of(&self, d: &Decision) -> Start {
        let plan = self.acting.plans.get(&d.profile);
        let level_label = |r: &str| plan.and_then(|p| p.labels.get(r)).and_then(|l| l.get("level")).cloned();
        Start::from_decision(d, self.state.versions.current.clone(), level_label)
    }

    fn dry_run(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
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

    /// Journals why a decision was not acted on, once per change of reason.
    pub(super) fn suppress(
        &mut self,
        now: Timestamp,
        profile: &str,
        outcome: Outcome,
        explanation: &str,
        reason: String,
    ) -> Result<(), JournalError> {
        if self.suppressed.get(profile) == Some(&reason) {
            return Ok(());
        }
        tracing::warn!(profile, %outcome, reason = %reason, "decision not acted on");
        self.suppressed.insert(profile.to_string(), reason.clone());
        let e = Suppressed { profile: profile.to_string(), outcome, reason, explanation: explanation.to_string() };
        self.record(now, Event::Suppressed(e))
    }

    /// Starts a rollback unless the gate holds it back; says which. `approval` is the approval
    /// it answers: its id, how it closed and by whom.
    pub(super) fn try_start(
        &mut self,
        now: Timestamp,
        s: Start,
        approval: Option<(String, Closed, Option<String>)>,
    ) -> Result<Result<String, String>, JournalError> {
        let in_flight = self.in_flight.as_ref().map(|f| (f.rollback_id.as_str(), f.profile.as_str()));
        let held = match gate::gate(&self.state, &self.acting.policy, now, &s, in_flight) {
            Gate::Act => None,
            Gate::Hold(reason) => Some(reason),
            Gate::LoopGuard(finding) => {
                if !self.loop_guard_tripped {
                    self.loop_guard_tripped = true;
                    let mut vars = blank_vars();
                    vars.insert("profile".into(), s.profile.clone());
                    let response = "All hands. Something keeps failing after each rollback; decide by hand.";
                    self.escalate(now, Severity::S1, &finding, response, &s.profile, None, vars)?;
                }
                Some(finding)
            }
        };
        if let Some(reason) = held {
            self.suppress(now, &s.profile, Outcome::Rollback, &s.explanation, reason.clone())?;
            return Ok(Err(reason));
        }
        self.loop_guard_tripped = false;
        self.suppressed.remove(&s.profile);
        let id = self.state.new_rollback_id();
        let started = RollbackStarted {
            rollback_id: id.clone(),
            profile: s.profile.clone(),
            key: s.key(),
            version_from: s.version.clone(),
            target_version: self.state.versions.target().map(str::to_string),
            level: s.level.clone(),
            reason: s.reason.clone(),
            explanation: s.explanation.clone(),
            firing: s.firing.clone(),
            approval_id: approval.as_ref().map(|(a, _, _)| a.clone()),
        };
        self.record(now, Event::RollbackStarted(started.clone()))?;
        if let Some((approval_id, how, by)) = approval {
            self.record(now, Event::ApprovalClosed(ApprovalClosed { approval_id, how, by, reason: None }))?;
        }
        // Any other approval for this profile is answered by this rollback.
        let others: Vec<String> = self
            .state
            .approvals
            .values()
            .filter(|(_, a)| a.profile == s.profile)
            .map(|(_, a)| a.approval_id.clone())
            .collect();
        for approval_id in others {
            let closed = ApprovalClosed { approval_id, how: Closed::Superseded, by: None, reason: None };
            self.record(now, Event::ApprovalClosed(closed))?;
        }
        tracing::warn!(rollback = %id, profile = %s.profile, reason = %s.reason, target = ?started.target_version, "ROLLBACK IN PROGRESS");
        let vars = vars::rollback(&self.acting, &started);
        let steps = self.steps_of(&s.profile, "rollback", s.level.as_deref());
        let split = steps.iter().rposition(|s| matches!(s, Step::Run { .. })).map_or(0, |i| i + 1);
        let (main, post) = (steps[..split].to_vec(), steps[split..].to_vec());
        let acts = split > 0;
        let procedure = Procedure {
            rollback_id: id.clone(),
            steps: main,
            vars: vars.clone(),
            actions: self.acting.actions.clone(),
            redactor: self.acting.redactor.clone(),
            notifier: self.notifier.clone(),
            journal: self.journal.clone(),
            client: self.client.clone(),
            clock: self.clock.clone(),
        };
        tokio::spawn(procedure.run(self.done.clone()));
        self.in_flight = Some(InFlight {
            rollback_id: id.clone(),
            profile: s.profile,
            started_at: now,
            phase: Phase::Steps,
            verify_until: None,
            version_from: started.version_from,
            target_version: started.target_version,
            firing: s.firing,
            post,
            vars,
            slow_escalated: false,
            verification: None,
            acts,
        });
        Ok(Ok(id))
    }

    /// The steps of the profile's `outcome` procedure for `level` (steps without levels always).
    pub(super) fn steps_of(&self, profile: &str, outcome: &str, level: Option<&str>) -> Vec<Step> {
        let Some(steps) = self.acting.plans.get(profile).and_then(|p| p.procedures.get(outcome)) else { return vec![] };
        steps
            .iter()
            .filter(|s| {
                let levels = match s {
                    Step::Announce { levels, .. } | Step::Run { levels, .. } => levels,
                };
                levels.is_empty() || level.is_some_and(|l| levels.iter().any(|x| x == l))
            })
            .cloned()
            .collect()
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
            paused_until: self.state.paused_until,
            silences: self.state.silences.clone(),
            rollbacks,
            escalations_total: self.escalations,
            version: self.state.versions.current.clone(),
            deployed_at: self.state.versions.deployed_at,
            target_version: self.state.versions.target().map(str::to_string),
        }
    }
}

fn describe(s: &Step) -> String {
    match s {
        Step::Announce { template, .. } => format!("announce {template}"),
        Step::Run { action, verify: Some(v), .. } => format!("run {action} (verify {v})"),
        Step::Run { action, .. } => format!("run {action}"),
    }
}
