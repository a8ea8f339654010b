//! One rollback's life: the gate's answer, `rollback_started`, the procedure's steps in their own
//! task, the restore point, verification against the restored version's evidence, and how it
//! ends — completed (the version rolled back from is then bad), failed (S1), issue persists or
//! unverified (S2), slow (S3), or interrupted by a restart (S1, never re-run).

use super::core::Core;
use super::effect::{Effect, Restart, StartSteps};
use super::event::*;
use super::gate::{self, Gate, Start};
use super::inflight::{InFlight, Phase};
use super::ledger::RecordError;
use super::procedure::{ProcedureDone, ProcedureNews, StepState, progress};
use super::state::Rollback;
use super::vars;
use super::verify::{Verdict, Verification, rules_to_verify};
use crate::config::procedures::Step;
use crate::rules::{Decision, Outcome};
use crate::template::messages::blank_vars;
use crate::time::{Span, Timestamp, human};

/// While a rollback is verified and its restored version not yet seen, the version source is
/// read at once after the steps, then at least this often.
const RESTORE_READ_EVERY: Span = Span(2_000);

impl Core {
    /// A rollback found started but unfinished: reported S1, never re-run.
    /// `by` says what interrupted it (`a restart`, `a change of leader`).
    pub(super) fn interrupted(&mut self, r: Rollback, by: &str) -> Result<(), RecordError> {
        let now = self.clock.now();
        // Steps as people count them (`history`'s numbers): 1, 2, … over the steps that ran.
        let number = |step: usize| {
            r.steps_done.iter().map(|s| s.step).filter(|s| *s < step).collect::<std::collections::BTreeSet<_>>().len()
                + 1
        };
        let open: Vec<String> =
            r.open_steps.iter().map(|(n, action, role)| format!("step {} {role} {action:?}", number(*n))).collect();
        let last = if open.is_empty() {
            match r.steps_done.last() {
                Some(s) => format!("after step {} ({:?}) finished", number(s.step), s.action),
                None => "before its first step".to_string(),
            }
        } else {
            // Its start is on record; whether it ran is not (a leader may have stopped between
            // the record and the start, and then never starts it).
            format!("during {} (its start recorded, its end not: it may or may not have run)", open.join(", "))
        };
        let error = format!("interrupted by {by} {last}; not re-run");
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

    /// A rollback a predecessor left unfinished: when every step of its procedure finished
    /// and succeeded (it was only verifying), this replica verifies it from now on — nothing is
    /// left to run, so nothing is re-run; otherwise it is [`interrupted`](Self::interrupted).
    pub(super) fn resume_or_interrupted(&mut self, r: Rollback, by: &str) -> Result<(), RecordError> {
        let now = self.clock.now();
        let steps = self.steps_of(&r.started.profile, "rollback", r.started.level.as_deref());
        let split = steps.iter().rposition(|s| matches!(s, Step::Run { .. })).map_or(0, |i| i + 1);
        let (main, post) = (steps[..split].to_vec(), steps[split..].to_vec());
        let expected: usize = main
            .iter()
            .map(|s| match s {
                Step::Run { verify, .. } => 1 + usize::from(verify.is_some()),
                Step::Announce { .. } => 0,
            })
            .sum();
        let all_done = split > 0
            && r.open_steps.is_empty()
            && r.steps_done.len() == expected
            && r.steps_done.iter().all(|s| s.ok == Some(true));
        if !all_done || self.in_flight.is_some() {
            return self.interrupted(r, by);
        }
        tracing::warn!(rollback = %r.started.rollback_id, by, "rollback left verifying: every step done; verifying it here");
        let mut progress = progress(&main);
        for p in &mut progress {
            p.state = StepState::Done;
        }
        let verify_for = self.acting.policy.verify_for;
        let reads = self.acting.plans.get(&r.started.profile).map(|p| p.reads.clone()).unwrap_or_default();
        let rules = rules_to_verify(&r.started.firing, &reads);
        let nothing_to_verify = rules.is_empty();
        self.in_flight = Some(InFlight {
            rollback_id: r.started.rollback_id.clone(),
            profile: r.started.profile.clone(),
            started_at: r.at,
            phase: Phase::Verifying,
            verify_until: Some(now.plus(verify_for)),
            version_from: r.started.version_from.clone(),
            target_version: r.started.target_version.clone(),
            firing: r.started.firing.clone(),
            post,
            vars: vars::rollback(&self.acting, &r.started),
            slow_escalated: false,
            verification: Some(Verification::new(rules, now, verify_for)),
            acts: true,
            steps: progress,
        });
        if nothing_to_verify {
            return self.complete(now);
        }
        Ok(())
    }

    /// Verification and the slow-rollback check of the rollback in flight.
    pub(super) fn verify_in_flight(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), RecordError> {
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
        // The restored version is read as soon as it shows: a version source on a long interval
        // would leave the restore point (and the version deployed now) unknown meanwhile.
        let unread = |p: Timestamp| p < v.restore_at || now.saturating_since(p) >= RESTORE_READ_EVERY;
        if v.version_to.is_none() && self.acting.version_source && self.seen.polled_at.is_none_or(unread) {
            self.out.push(Effect::ReadVersion);
        }
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

    /// After a rollback completed before its restore showed: the version source is read every
    /// [`RESTORE_READ_EVERY`] until it shows another version (or `verify_for` has passed).
    pub(super) fn read_restore(&mut self, now: Timestamp) {
        let Some((until, _)) = &self.seen.restore_unseen else { return };
        if now >= *until {
            self.seen.restore_unseen = None;
        } else if self.seen.polled_at.is_none_or(|p| now.saturating_since(p) >= RESTORE_READ_EVERY) {
            self.out.push(Effect::ReadVersion);
        }
    }

    pub(super) fn complete(&mut self, now: Timestamp) -> Result<(), RecordError> {
        let Some(mut f) = self.in_flight.take() else { return Ok(()) };
        let duration = now.saturating_since(f.started_at);
        // What the version source shows after the steps — unless it still shows the version
        // rolled back from (a rollout not finished yet): that is not what was restored.
        let seen = f.verification.as_ref().and_then(Verification::observed_after);
        let still_from = self.acting.version_source && seen.is_some() && seen == f.version_from;
        let version_to = seen.filter(|_| !still_from);
        if still_from && let Some(from) = &f.version_from {
            // Read on for the restore a while (a rollout not finished): `read_restore`.
            self.seen.restore_unseen = Some((now.plus(self.acting.policy.verify_for), from.clone()));
        }
        f.vars.insert("duration".into(), human(duration));
        let target = f.target_version.as_deref().unwrap_or("unknown");
        let told = match &version_to {
            Some(v) => v.clone(),
            None if still_from => format!(
                "{target} (not shown by the version source yet: it still reads {})",
                f.version_from.as_deref().unwrap_or("?")
            ),
            None => target.to_string(),
        };
        f.vars.insert("version_to".into(), told);
        let finished = RollbackFinished {
            rollback_id: f.rollback_id.clone(),
            result: RollbackResult::Completed,
            duration_ms: duration.0,
            version_to,
            error: None,
        };
        if let Err(e) = self.record(now, Event::RollbackFinished(finished)) {
            self.in_flight = Some(f); // not finished until it is on record: tried again next tick
            return Err(e);
        }
        tracing::info!(rollback = %f.rollback_id, profile = %f.profile, duration = %duration, "ROLLBACK COMPLETE");
        for step in &f.post {
            if let Step::Announce { template, .. } = step {
                self.out.announce(template, &f.vars);
            }
        }
        Ok(())
    }

    /// `to` was deployed while the rollback in flight was verifying and it is neither the
    /// version rolled back from nor the one restored: the verification ends "superseded" —
    /// neither complete nor failed — told on every channel.
    pub(super) fn supersede_verification(&mut self, now: Timestamp, to: &str) -> Result<(), RecordError> {
        let Some(f) = &self.in_flight else { return Ok(()) };
        let Some(v) = &f.verification else { return Ok(()) };
        // With a version source, the first new version after the steps is the restore itself.
        if v.version_to.is_none() && self.seen.polled_at.is_some() {
            return Ok(());
        }
        let restored = v.version_to.as_deref().or(f.target_version.as_deref());
        if f.version_from.as_deref() == Some(to) || restored == Some(to) {
            return Ok(());
        }
        let Some(mut f) = self.in_flight.take() else { return Ok(()) };
        let duration = now.saturating_since(f.started_at);
        f.vars.insert("duration".into(), human(duration));
        let restored = f.verification.as_ref().and_then(Verification::observed_after);
        let finding = format!(
            "rollback {} superseded by deploy of {to} during verification{}: neither complete nor failed",
            f.rollback_id,
            restored.as_deref().map(|v| format!(" ({v} had been restored)")).unwrap_or_default()
        );
        let finished = RollbackFinished {
            rollback_id: f.rollback_id.clone(),
            result: RollbackResult::Superseded,
            duration_ms: duration.0,
            version_to: restored,
            error: Some(format!("superseded by deploy of {to}")),
        };
        if let Err(e) = self.record(now, Event::RollbackFinished(finished)) {
            self.in_flight = Some(f);
            return Err(e);
        }
        tracing::warn!(rollback = %f.rollback_id, to, "verification superseded by a deploy");
        let response = format!("None from rollwatch: {to} is judged on its own evidence from its deploy on.");
        self.escalate(now, Severity::Notice, &finding, &response, &f.profile, Some(&f.rollback_id), f.vars)
    }

    pub(super) fn finish_unverified(
        &mut self,
        now: Timestamp,
        result: RollbackResult,
        finding: String,
    ) -> Result<(), RecordError> {
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
        if let Err(e) = self.record(now, Event::RollbackFinished(finished)) {
            self.in_flight = Some(f);
            return Err(e);
        }
        let response = "Deeper investigation. May need older version.";
        self.escalate(now, Severity::S2, &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
    }

    /// News from the procedure task, each applied once: a step's state (for `/status`), a
    /// step journalled as finished (the task journalled it: the state learns it here), its end.
    pub fn on_news(&mut self, news: ProcedureNews) -> Result<(), RecordError> {
        match news {
            ProcedureNews::Step { rollback_id, step, state } => {
                if let Some(f) = self.in_flight.as_mut().filter(|f| f.rollback_id == rollback_id)
                    && let Some(p) = f.steps.get_mut(step.saturating_sub(1))
                {
                    p.state = state;
                }
                Ok(())
            }
            ProcedureNews::Finished { at, event } => {
                if let Err(e) = self.state.apply(at, &Event::StepFinished(event)) {
                    tracing::warn!(error = %e, "a finished step not applied");
                }
                Ok(())
            }
            ProcedureNews::Done(done) => self.on_done(done),
        }
    }

    /// The procedure task ended.
    fn on_done(&mut self, done: ProcedureDone) -> Result<(), RecordError> {
        let now = self.clock.now();
        let Some(f) = &mut self.in_flight else { return Ok(()) };
        if f.rollback_id != done.rollback_id {
            return Ok(());
        }
        if let Some(r) = self.state.rollbacks.iter_mut().rev().find(|r| r.started.rollback_id == done.rollback_id) {
            r.steps_at.get_or_insert(now);
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
                    self.out.push(Effect::RestartEvidence(Restart { at: now, predates: false, deployed: None }));
                    self.seen.bake.restart();
                    // The restored version, read now (then while verifying: `verify_in_flight`).
                    if self.acting.version_source {
                        self.out.push(Effect::ReadVersion);
                    }
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
                self.out.announce("rollback_failed", &f.vars);
                let finding =
                    format!("rollback failed at step {} ({}): {}", failure.step, failure.action, failure.error);
                let response = "All hands. Manual intervention.";
                self.escalate(now, Severity::S1, &finding, response, &f.profile, Some(&f.rollback_id), f.vars)
            }
        }
    }

    /// Starts a rollback unless the gate holds it back; says which. `approval` is the approval
    /// it answers: its id, how it closed and by whom.
    pub(super) fn try_start(
        &mut self,
        now: Timestamp,
        s: Start,
        approval: Option<(String, Closed, Option<String>)>,
    ) -> Result<Result<String, String>, RecordError> {
        if let Some((_, error)) = &self.journal_down {
            return Ok(Err(format!("journal unwritable: not acting ({error})")));
        }
        let in_flight = self.in_flight.as_ref().map(|f| (f.rollback_id.as_str(), f.profile.as_str()));
        let held = match gate::gate(&self.state, &self.acting.policy, now, &s, in_flight) {
            Gate::Act => None,
            Gate::Hold(reason) => Some(reason),
            Gate::LoopGuard(finding) => {
                // Once, until a rollback starts — across a restart or a change of leader too.
                if !self.told.loop_guard && !self.state.escalated_since_last_rollback(&s.profile, &finding) {
                    self.told.loop_guard = true;
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
        // Known before anything starts, said once (and escalated once), never started: a
        // profile with no rollback procedure (nothing would run), and a procedure that names
        // {{target_version}} with no good version to go to (it would fail at its step).
        let no_procedure = self.steps_of(&s.profile, "rollback", s.level.as_deref()).is_empty();
        let no_target = !no_procedure
            && self.state.versions.target().is_none()
            && self.needs_target(&s.profile, s.level.as_deref());
        if no_procedure || no_target {
            let current = self.state.versions.current.as_deref().unwrap_or("the current one");
            let reason = if no_procedure {
                format!("no [[procedure.rollback]] in profile {:?}: nothing to run — roll back by hand", s.profile)
            } else {
                format!("no rollback target: no good version other than {current} is known")
            };
            if self.state.suppressed.get(&s.profile) != Some(&reason) {
                self.suppress(now, &s.profile, Outcome::Rollback, &s.explanation, reason.clone())?;
                let mut vars = blank_vars();
                vars.insert("profile".into(), s.profile.clone());
                let response = if no_procedure {
                    "Roll back by hand; give the profile a [[procedure.rollback]] for rollwatch to do it."
                } else {
                    "Roll back by hand to a version you know is good, or mark one good (`rollwatch mark VERSION good`)."
                };
                self.escalate(now, Severity::S1, &reason, response, &s.profile, None, vars)?;
            }
            return Ok(Err(reason));
        }
        self.told.loop_guard = false;
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
            deployed_at: self.state.versions.deployed_at,
            issue_since: self.issue_since.get(&s.profile).copied(),
            decided_at: self.decided_since.get(&s.profile).copied(),
            environment: self.acting.plans.get(&s.profile).is_some_and(|p| p.judges_the_environment(&s.firing)),
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
        tracing::warn!(rollback = %id, profile = %s.profile, reason = %s.reason, target = started.target_version.as_deref().unwrap_or("none known"), "ROLLBACK IN PROGRESS");
        let vars = vars::rollback(&self.acting, &started);
        let steps = self.steps_of(&s.profile, "rollback", s.level.as_deref());
        let split = steps.iter().rposition(|s| matches!(s, Step::Run { .. })).map_or(0, |i| i + 1);
        let (main, post) = (steps[..split].to_vec(), steps[split..].to_vec());
        let acts = split > 0;
        let progress = progress(&main);
        self.out.push(Effect::Start(Box::new(StartSteps {
            rollback_id: id.clone(),
            steps: main,
            vars: vars.clone(),
            actions: self.acting.actions.clone(),
            redactor: self.acting.redactor.clone(),
            term: self.lead.term,
        })));
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
            steps: progress,
        });
        Ok(Ok(id))
    }

    /// Whether the profile's rollback steps for `level` name `{{target_version}}`.
    fn needs_target(&self, profile: &str, level: Option<&str>) -> bool {
        let names_target =
            |t: &&str| crate::template::placeholders(t).is_ok_and(|names| names.contains(&"target_version"));
        self.steps_of(profile, "rollback", level).iter().any(|step| match step {
            Step::Run { action, verify, .. } => std::iter::once(action)
                .chain(verify)
                .any(|a| self.acting.actions.get(a).is_some_and(|x| x.templates().iter().any(names_target))),
            Step::Announce { .. } => false,
        })
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
}
