//! The dispatcher: turns each tick's decisions into the runbook's procedure under the policy.
//! `rollback` starts the profile's procedure (single flight, idempotency key, cooldown, loop
//! guard, pause and silences permitting; what is held back is journalled as suppressed);
//! `consider` (and every rollback in `approve` mode) opens an approval; after the steps the
//! triggering rules must stop firing within `verify_for`; failures, persisting issues, slow
//! rollbacks and blindness are escalated. State changes are journalled before they count
//! ([`State`]), so a restart resumes the policy and never silently re-runs a rollback.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::action::Action;
use super::policy::{Mode, Policy};
use super::procedure::{Procedure, ProcedureDone};
use super::state::*;
use super::template::Vars;
use crate::journal::{JournalError, SharedJournal};
use crate::notify::{Notifier, templates::blank_vars};
use crate::rules::{Decision, Evaluator, Outcome, Step};
use crate::time::{Clock, Span, Timestamp};

/// What a profile's procedures need at run time.
#[derive(Debug, Clone)]
pub struct Plan {
    pub procedures: BTreeMap<String, Vec<Step>>,
    pub consider_auto_after: Option<Span>,
    pub rules: Vec<String>,
    /// Each rule's `labels`, offered to templates as `{{labels.NAME}}`.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
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
}

/// A request from the API or the command line.
#[derive(Debug)]
pub enum Command {
    Approve { id: String },
    Pause { for_: Option<Span> },
    Resume,
    Silence { rule: String, for_: Span },
    Unsilence { rule: String },
}

/// A command with where to send its answer.
pub type CommandRequest = (Command, oneshot::Sender<Result<String, String>>);

/// The rollback in flight.
#[derive(Debug, Clone, Serialize)]
pub struct InFlight {
    pub rollback_id: String,
    pub profile: String,
    pub started_at: Timestamp,
    /// `steps` until the task reports, then `verifying` until the rules stop firing.
    pub phase: &'static str,
    pub verify_until: Option<Timestamp>,
    #[serde(skip)]
    firing: Vec<String>,
    #[serde(skip)]
    post: Vec<Step>,
    #[serde(skip)]
    vars: Vars,
    #[serde(skip)]
    slow_escalated: bool,
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
}

/// Turns decisions into procedures.
pub struct Dispatcher {
    acting: Acting,
    notifier: Notifier,
    journal: SharedJournal,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    state: State,
    in_flight: Option<InFlight>,
    done: mpsc::UnboundedSender<ProcedureDone>,
    /// Per profile, the last suppression journalled (journalled again only when it changes).
    suppressed: BTreeMap<String, String>,
    /// Per profile, since when every rule has been unknown, and whether that was notified.
    blind: BTreeMap<String, (Timestamp, bool)>,
    /// Keys already journalled as dry runs.
    dry_runs: Vec<String>,
    loop_guard_tripped: bool,
    escalations: u64,
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
        };
        let unfinished: Vec<Rollback> = d.state.unfinished().cloned().collect();
        for r in unfinished {
            let now = d.clock.now();
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
            d.record(
                now,
                "rollback_finished",
                &RollbackFinished {
                    rollback_id: r.started.rollback_id.clone(),
                    result: RollbackResult::Interrupted,
                    duration_ms: now.saturating_since(r.at).0,
                    version_to: None,
                    error: Some(error.clone()),
                },
            )?;
            let mut vars = d.vars_for(&r.started);
            vars.insert("error".into(), error.clone());
            d.escalate(
                now,
                "S1",
                &format!("rollback {} {error}", r.started.rollback_id),
                "All hands. Check the deployment by hand; rollwatch will not repeat it.",
                &r.started.profile,
                Some(&r.started.rollback_id),
                vars,
            )?;
        }
        Ok((d, done_rx))
    }

    /// Takes a reloaded config's actions, policy and plans; state and the rollback in flight stay.
    pub fn reconfigure(&mut self, acting: Acting, notifier: Notifier) {
        self.acting = acting;
        self.notifier = notifier;
    }

    /// Whether a rollback's steps are running now (not yet verifying).
    pub fn steps_running(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|f| f.phase == "steps")
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Journals an event, then applies it to the state: nothing counts before it is durable.
    fn record<T: Serialize>(&mut self, at: Timestamp, event: &str, data: &T) -> Result<(), JournalError> {
        self.journal.append(at, event, data)?;
        let value = serde_json::to_value(data).unwrap_or_default();
        if let Err(e) = self.state.apply(at, event, &value) {
            tracing::error!(event, error = %e, "journalled event not applied");
        }
        Ok(())
    }

    /// One tick: versions, expiries, verification, blindness, then each decision.
    pub fn on_tick(
        &mut self,
        now: Timestamp,
        decisions: &[Decision],
        version: Option<&str>,
    ) -> Result<(), JournalError> {
        if let Some(v) = version
            && self.state.version.as_deref() != Some(v)
        {
            tracing::info!(from = ?self.state.version, to = v, "deployed version changed");
            let change = VersionChanged { from: self.state.version.clone(), to: v.to_string() };
            self.record(now, "version_changed", &change)?;
        }
        self.expire(now)?;
        self.verify(now, decisions)?;
        for d in decisions {
            self.watch_blindness(now, d)?;
        }
        for d in decisions {
            self.decide(now, d)?;
        }
        Ok(())
    }

    fn expire(&mut self, now: Timestamp) -> Result<(), JournalError> {
        if self.state.paused_until.is_some_and(|until| until <= now) {
            tracing::info!("pause expired; acting again");
            self.record(now, "resumed", &serde_json::json!({"expired": true}))?;
        }
        let expired: Vec<String> =
            self.state.silences.iter().filter(|(_, u)| **u <= now).map(|(r, _)| r.clone()).collect();
        for rule in expired {
            self.record(now, "unsilenced", &Silenced { rule, until: None })?;
        }
        let expired: Vec<String> = self
            .state
            .approvals
            .values()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(_, a)| a.approval_id.clone())
            .collect();
        for id in expired {
            tracing::warn!(approval = %id, "approval expired unanswered");
            self.record(now, "approval_closed", &ApprovalClosed { approval_id: id, how: "expired".into() })?;
        }
        Ok(())
    }

    /// Verification and the slow-rollback check of the rollback in flight.
    fn verify(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), JournalError> {
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        if !f.slow_escalated && now.saturating_since(f.started_at) > self.acting.policy.slow_rollback {
            f.slow_escalated = true;
            let (profile, id, vars) = (f.profile.clone(), f.rollback_id.clone(), f.vars.clone());
            let finding = format!("rollback {id} has taken longer than {}", self.acting.policy.slow_rollback);
            self.escalate(now, "S3", &finding, "Post-mortem. Improve procedure.", &profile, Some(&id), vars)?;
        }
        let Some(f) = &self.in_flight else { return Ok(()) };
        let Some(until) = f.verify_until else { return Ok(()) };
        let Some(d) = decisions.iter().find(|d| d.profile == f.profile) else { return Ok(()) };
        // Verified only when each triggering rule is known not to fire: a rule whose inputs
        // are unknown (the service restarting, a target down) has not recovered, it is unseen.
        let triggering = |r: &str| f.firing.iter().any(|t| t == r);
        let still: Vec<&str> = d.firing.iter().map(|r| r.rule.as_str()).filter(|r| triggering(r)).collect();
        let unseen: Vec<&str> =
            d.unknown.iter().map(String::as_str).filter(|r| triggering(r) && !still.contains(r)).collect();
        if still.is_empty() && unseen.is_empty() {
            return self.complete(now);
        }
        if now >= until {
            let verify_for = self.acting.policy.verify_for;
            return if still.is_empty() {
                let finding = format!("rollback could not be verified: {} unknown for {verify_for}", unseen.join(", "));
                self.finish_unverified(now, RollbackResult::Unverified, finding)
            } else {
                let finding = format!("rollback succeeded but issue persists: {} still firing", still.join(", "));
                self.finish_unverified(now, RollbackResult::IssuePersists, finding)
            };
        }
        Ok(())
    }

    fn complete(&mut self, now: Timestamp) -> Result<(), JournalError> {
        let Some(mut f) = self.in_flight.take() else { return Ok(()) };
        let duration = now.saturating_since(f.started_at);
        f.vars.insert("duration".into(), human(duration));
        f.vars.insert("version_to".into(), self.state.version.clone().unwrap_or_else(|| "unknown".into()));
        let finished = RollbackFinished {
            rollback_id: f.rollback_id.clone(),
            result: RollbackResult::Completed,
            duration_ms: duration.0,
            version_to: self.state.version.clone(),
            error: None,
        };
        self.record(now, "rollback_finished", &finished)?;
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
            version_to: self.state.version.clone(),
            error: Some(finding.clone()),
        };
        self.record(now, "rollback_finished", &finished)?;
        let response = "Deeper investigation. May need older version.";
        self.escalate(now, "S2", &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
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
                f.phase = "verifying";
                f.verify_until = Some(now.plus(self.acting.policy.verify_for));
                tracing::info!(rollback = %f.rollback_id, verify_for = %self.acting.policy.verify_for, "steps done; verifying");
                if f.firing.is_empty() {
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
                self.record(now, "rollback_finished", &finished)?;
                self.notifier.announce("rollback_failed", &f.vars);
                let finding =
                    format!("rollback failed at step {} ({}): {}", failure.step, failure.action, failure.error);
                let response = "All hands. Manual intervention.";
                self.escalate(now, "S1", &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
            }
        }
    }

    /// A runbook 004 finding: journalled, logged, announced on every channel.
    #[allow(clippy::too_many_arguments)]
    fn escalate(
        &mut self,
        now: Timestamp,
        severity: &str,
        finding: &str,
        response: &str,
        profile: &str,
        rollback_id: Option<&str>,
        mut vars: Vars,
    ) -> Result<(), JournalError> {
        self.escalations += 1;
        tracing::error!(severity, finding, profile, "escalation");
        let e = Escalation {
            severity: severity.to_string(),
            finding: finding.to_string(),
            response: response.to_string(),
            profile: profile.to_string(),
            rollback_id: rollback_id.map(str::to_string),
        };
        self.record(now, "escalation", &e)?;
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
                self.record(now, "sighted", &serde_json::json!({"profile": d.profile}))?;
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
            self.record(now, "blind", &serde_json::json!({"profile": d.profile, "since": since, "rules": d.unknown}))?;
            self.notifier.announce("blind", &vars);
        }
        Ok(())
    }

    fn decide(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        let wants_approval = d.outcome == Outcome::Consider
            || (d.outcome == Outcome::Rollback && self.acting.policy.mode == Mode::Approve);
        match d.outcome {
            Outcome::Monitor => {
                self.suppressed.remove(&d.profile);
                Ok(())
            }
            _ if self.acting.policy.mode == Mode::DryRun => self.dry_run(now, d),
            _ if wants_approval => self.ask(now, d),
            _ => {
                let start = self.start_of(d);
                self.try_start(now, start, None).map(|_| ())
            }
        }
    }

    /// A rollback from a decision. The level is the decision's, else the `level` label of the
    /// first firing rule that has one (a rule can choose its tier).
    fn start_of(&self, d: &Decision) -> Start {
        let mut start = Start::from_decision(d, self.state.version.clone());
        if start.level.is_none()
            && let Some(plan) = self.acting.plans.get(&d.profile)
        {
            start.level = start.firing.iter().find_map(|r| plan.labels.get(r).and_then(|l| l.get("level")).cloned());
        }
        start
    }

    fn key(&self, profile: &str) -> String {
        format!("{profile}@{}", self.state.version.as_deref().unwrap_or("unknown"))
    }

    fn dry_run(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        let key = format!("{}:{}", self.key(&d.profile), d.outcome);
        if self.dry_runs.contains(&key) {
            return Ok(());
        }
        self.dry_runs.push(key.clone());
        let steps = self.steps_for(&d.profile, self.start_of(d).level.as_deref());
        let names: Vec<String> = steps.iter().map(describe).collect();
        tracing::warn!(profile = %d.profile, outcome = %d.outcome, steps = ?names, "dry run: would act");
        let data = serde_json::json!({"profile": d.profile, "outcome": d.outcome, "key": key,
            "explanation": d.explanation(), "would_run": names});
        self.record(now, "dry_run", &data)
    }

    /// Opens an approval for a `consider` (or any rollback in approve mode), once per profile and
    /// version; acts by itself after `consider_auto_after` when the profile sets it.
    fn ask(&mut self, now: Timestamp, d: &Decision) -> Result<(), JournalError> {
        let version = self.state.version.clone();
        let open = self.state.approvals.values().find(|(_, a)| a.profile == d.profile && a.version == version).cloned();
        if let Some((opened, a)) = open {
            let auto = self.acting.plans.get(&d.profile).and_then(|p| p.consider_auto_after);
            if self.acting.policy.mode == Mode::Auto
                && let Some(after) = auto
                && now.saturating_since(opened) >= after
            {
                tracing::warn!(approval = %a.approval_id, after = %after, "no answer; acting by consider_auto_after");
                let start = Start::from_approval(&a);
                let _held_back = self.try_start(now, start, Some((a.approval_id.clone(), "auto")))?;
            }
            return Ok(());
        }
        if self.state.with_key(&self.key(&d.profile)).is_some() && self.state.version.is_some() {
            return self.suppress(now, d, "this version was already rolled back".into());
        }
        let id = self.state.new_id("ap");
        let start = self.start_of(d);
        let opened = ApprovalOpened {
            approval_id: id.clone(),
            profile: d.profile.clone(),
            version,
            level: start.level.clone(),
            reason: start.reason.clone(),
            explanation: start.explanation.clone(),
            firing: start.firing.clone(),
            expires_at: now.plus(self.acting.policy.approval_timeout),
        };
        self.record(now, "approval_opened", &opened)?;
        tracing::warn!(approval = %id, profile = %d.profile, "rollback approval needed");
        let mut vars = self.base_vars(&start);
        vars.insert("approval_id".into(), id);
        vars.insert("expires_in".into(), human(self.acting.policy.approval_timeout));
        let consider: Vec<Step> = self.steps_of(&d.profile, "consider", start.level.as_deref());
        let announced = consider.iter().any(|s| matches!(s, Step::Announce { .. }));
        for step in consider {
            if let Step::Announce { template, .. } = step {
                self.notifier.announce(&template, &vars);
            }
        }
        if !announced {
            self.notifier.announce("rollback_approval_needed", &vars);
        }
        Ok(())
    }

    /// Journals why a decision was not acted on, once per change of reason.
    fn suppress(&mut self, now: Timestamp, d: &Decision, reason: String) -> Result<(), JournalError> {
        self.suppress_profile(now, &d.profile, d.outcome, &d.explanation(), reason)
    }

    fn suppress_profile(
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
        let data =
            serde_json::json!({"profile": profile, "outcome": outcome, "reason": reason, "explanation": explanation});
        self.record(now, "suppressed", &data)
    }

    /// Starts a rollback unless the policy holds it back; says which.
    fn try_start(
        &mut self,
        now: Timestamp,
        s: Start,
        approval: Option<(String, &str)>,
    ) -> Result<Result<String, String>, JournalError> {
        let held = self.held_back(now, &s);
        if let Some(reason) = held {
            self.suppress_profile(now, &s.profile, Outcome::Rollback, &s.explanation, reason.clone())?;
            return Ok(Err(reason));
        }
        self.suppressed.remove(&s.profile);
        let id = self.state.new_id("rb");
        let target_version = s.version.as_ref().and_then(|v| self.state.previous.get(v)).cloned();
        let started = RollbackStarted {
            rollback_id: id.clone(),
            profile: s.profile.clone(),
            key: self.key(&s.profile),
            version_from: s.version.clone(),
            target_version,
            level: s.level.clone(),
            reason: s.reason.clone(),
            explanation: s.explanation.clone(),
            firing: s.firing.clone(),
            approval_id: approval.as_ref().map(|(a, _)| a.clone()),
        };
        self.record(now, "rollback_started", &started)?;
        if let Some((approval_id, how)) = approval {
            self.record(now, "approval_closed", &ApprovalClosed { approval_id, how: how.to_string() })?;
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
            self.record(now, "approval_closed", &ApprovalClosed { approval_id, how: "superseded".into() })?;
        }
        tracing::warn!(rollback = %id, profile = %s.profile, reason = %s.reason, "ROLLBACK IN PROGRESS");
        let vars = self.vars_for(&started);
        let steps = self.steps_for(&s.profile, s.level.as_deref());
        let split = steps.iter().rposition(|s| matches!(s, Step::Run { .. })).map_or(0, |i| i + 1);
        let (main, post) = (steps[..split].to_vec(), steps[split..].to_vec());
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
            phase: "steps",
            verify_until: None,
            firing: s.firing,
            post,
            vars,
            slow_escalated: false,
        });
        Ok(Ok(id))
    }

    /// Why the policy holds a rollback back, if it does.
    fn held_back(&mut self, now: Timestamp, s: &Start) -> Option<String> {
        if let Some(f) = &self.in_flight {
            return Some(format!("rollback {} of {} is in flight", f.rollback_id, f.profile));
        }
        if s.version.is_some()
            && let Some(r) = self.state.with_key(&self.key(&s.profile))
        {
            let result = r.finished.as_ref().map_or("unfinished".to_string(), |(_, f)| f.result.to_string());
            return Some(format!(
                "version {} was already rolled back by {} ({result})",
                s.version.as_deref().unwrap_or(""),
                r.started.rollback_id
            ));
        }
        if let Some(until) = self.state.paused_until {
            return Some(if until.0 == i64::MAX {
                "paused until resumed".into()
            } else {
                format!("paused until {}", iso(until))
            });
        }
        let silenced: Vec<&String> = s.firing.iter().filter(|r| self.state.silences.contains_key(*r)).collect();
        if !s.firing.is_empty() && silenced.len() == s.firing.len() {
            let names: Vec<&str> = silenced.iter().map(|s| s.as_str()).collect();
            return Some(format!("silenced: {}", names.join(", ")));
        }
        if let Some(last) = self.state.last_of(&s.profile)
            && now.saturating_since(last.at) < self.acting.policy.cooldown
        {
            let until = last.at.plus(self.acting.policy.cooldown);
            return Some(format!("cooldown after {} until {}", last.started.rollback_id, iso(until)));
        }
        let p = &self.acting.policy;
        let recent = self.state.started_since(now.minus(p.max_rollbacks_per));
        if recent >= p.max_rollbacks as usize {
            let finding =
                format!("loop guard: {recent} rollbacks in the last {}; rollwatch stopped acting", p.max_rollbacks_per);
            if !self.loop_guard_tripped {
                self.loop_guard_tripped = true;
                let mut vars = blank_vars();
                vars.insert("profile".into(), s.profile.clone());
                let response = "All hands. Something keeps failing after each rollback; decide by hand.";
                if let Err(e) = self.escalate(now, "S1", &finding, response, &s.profile.clone(), None, vars) {
                    tracing::error!(error = %e, "cannot journal the loop guard escalation");
                }
            }
            return Some(finding);
        }
        self.loop_guard_tripped = false;
        None
    }

    /// The steps of the profile's `outcome` procedure for `level` (steps without levels always).
    fn steps_of(&self, profile: &str, outcome: &str, level: Option<&str>) -> Vec<Step> {
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

    fn steps_for(&self, profile: &str, level: Option<&str>) -> Vec<Step> {
        self.steps_of(profile, "rollback", level)
    }

    fn base_vars(&self, s: &Start) -> Vars {
        let mut v = blank_vars();
        v.insert("profile".into(), s.profile.clone());
        v.insert("outcome".into(), "rollback".into());
        v.insert("level".into(), s.level.clone().unwrap_or_else(|| "standard".into()));
        v.insert("reason".into(), s.reason.clone());
        v.insert("explanation".into(), s.explanation.clone());
        v.insert("firing".into(), s.firing.join(", "));
        v.insert("version_from".into(), s.version.clone().unwrap_or_else(|| "unknown".into()));
        v.insert("mode".into(), self.acting.policy.mode.to_string());
        // The firing rules' labels; the first rule to name a label wins.
        if let Some(plan) = self.acting.plans.get(&s.profile) {
            for rule in &s.firing {
                for (k, val) in plan.labels.get(rule).into_iter().flatten() {
                    v.entry(format!("labels.{k}")).or_insert_with(|| val.clone());
                }
            }
        }
        v
    }

    fn vars_for(&self, r: &RollbackStarted) -> Vars {
        let start = Start {
            profile: r.profile.clone(),
            version: r.version_from.clone(),
            level: r.level.clone(),
            reason: r.reason.clone(),
            explanation: r.explanation.clone(),
            firing: r.firing.clone(),
        };
        let mut v = self.base_vars(&start);
        v.insert("rollback_id".into(), r.rollback_id.clone());
        v.insert("target_version".into(), r.target_version.clone().unwrap_or_else(|| "unknown".into()));
        if let Some(a) = &r.approval_id {
            v.insert("approval_id".into(), a.clone());
        }
        v
    }

    /// A command from the API or the command line.
    pub fn command(&mut self, cmd: Command) -> Result<Result<String, String>, JournalError> {
        let now = self.clock.now();
        match cmd {
            Command::Approve { id } => {
                let Some((_, a)) = self.state.approvals.get(&id).cloned() else {
                    let open: Vec<&String> = self.state.approvals.keys().collect();
                    return Ok(Err(format!("no open approval {id:?} (open: {open:?})")));
                };
                if a.version != self.state.version {
                    self.record(
                        now,
                        "approval_closed",
                        &ApprovalClosed { approval_id: id.clone(), how: "stale".into() },
                    )?;
                    return Ok(Err(format!(
                        "stale: the deployed version changed from {} to {} since approval {id} opened; nothing done",
                        a.version.as_deref().unwrap_or("unknown"),
                        self.state.version.as_deref().unwrap_or("unknown")
                    )));
                }
                tracing::warn!(approval = %id, "approved");
                Ok(self
                    .try_start(now, Start::from_approval(&a), Some((id.clone(), "granted")))?
                    .map(|rb| format!("approval {id} granted: rollback {rb} started")))
            }
            Command::Pause { for_ } => {
                let until = for_.map(|d| now.plus(d));
                self.record(now, "paused", &Paused { until })?;
                tracing::warn!(until = ?until.map(iso), "paused: decisions are made and journalled, not acted on");
                Ok(Ok(match until {
                    Some(u) => format!("paused until {}", iso(u)),
                    None => "paused until resumed".into(),
                }))
            }
            Command::Resume => {
                if self.state.paused_until.is_none() {
                    return Ok(Ok("not paused".into()));
                }
                self.record(now, "resumed", &serde_json::json!({}))?;
                tracing::info!("resumed");
                Ok(Ok("resumed".into()))
            }
            Command::Silence { rule, for_ } => {
                let known: Vec<&str> =
                    self.acting.plans.values().flat_map(|p| p.rules.iter().map(String::as_str)).collect();
                if !known.contains(&rule.as_str()) {
                    let hint = crate::config::did_you_mean(&rule, known.iter().copied());
                    return Ok(Err(format!("no rule named {rule:?}{hint}")));
                }
                let until = now.plus(for_);
                self.record(now, "silenced", &Silenced { rule: rule.clone(), until: Some(until) })?;
                Ok(Ok(format!("{rule} silenced until {}", iso(until))))
            }
            Command::Unsilence { rule } => {
                if !self.state.silences.contains_key(&rule) {
                    return Ok(Err(format!("{rule} is not silenced")));
                }
                self.record(now, "unsilenced", &Silenced { rule: rule.clone(), until: None })?;
                Ok(Ok(format!("{rule} unsilenced")))
            }
        }
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
        }
    }
}

/// What a rollback is started from: a decision, or an approval.
struct Start {
    profile: String,
    version: Option<String>,
    level: Option<String>,
    reason: String,
    explanation: String,
    firing: Vec<String>,
}

impl Start {
    fn from_decision(d: &Decision, version: Option<String>) -> Start {
        let asked = d.path.iter().rev().find(|a| a.yes).map(|a| a.ask.trim_end_matches('?').to_string());
        // What the decision is because of: the firing rules its question read (all firing rules
        // when the tree could not say).
        let cause: Vec<&crate::rules::RuleValue> =
            d.firing.iter().filter(|r| d.because.is_empty() || d.because.contains(&r.rule)).collect();
        let values: Vec<String> =
            cause.iter().map(|r| format!("{} = {}", r.rule, crate::cli::report::maybe(r.value))).collect();
        let reason = match asked {
            Some(q) => format!("{q} ({})", values.join(", ")),
            None => values.join(", "),
        };
        Start {
            profile: d.profile.clone(),
            version,
            level: d.level.clone(),
            reason,
            explanation: d.explanation(),
            firing: cause.iter().map(|r| r.rule.clone()).collect(),
        }
    }

    fn from_approval(a: &ApprovalOpened) -> Start {
        Start {
            profile: a.profile.clone(),
            version: a.version.clone(),
            level: a.level.clone(),
            reason: a.reason.clone(),
            explanation: a.explanation.clone(),
            firing: a.firing.clone(),
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

/// A span for people: `8m 3s`, `42s`.
pub fn human(span: Span) -> String {
    let secs = span.0 / 1000;
    match secs {
        s if s >= 3600 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        _ if span.0 < 10_000 => format!("{:.1}s", span.0 as f64 / 1000.0),
        s => format!("{s}s"),
    }
}

/// A timestamp as RFC 3339 UTC (live time is milliseconds since the epoch).
pub fn iso(t: Timestamp) -> String {
    if t.0 == i64::MAX {
        return "forever".into();
    }
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.0.max(0) as u64);
    humantime::format_rfc3339_seconds(when).to_string()
}
