//! Telling people what went wrong: runbook 004's escalations (S1 failed, S2 persists or an
//! incident older than the deploy, S3 slow) journalled and announced on every channel, and
//! blindness — every rule's inputs unknown for `blind_after` — which is never all-clear.

use std::collections::BTreeSet;

use super::core::Core;
use super::event::*;
use super::ledger::RecordError;
use super::vars;
use crate::rules::Decision;
use crate::template::Vars;
use crate::template::messages::blank_vars;
use crate::time::{Timestamp, human};

impl Core {
    /// Tells every channel of rollwatch's own trouble (its journal, etcd) — about every profile
    /// and no rollback, and not recordable as an escalation while it lasts.
    pub(super) fn announce_own(&mut self, severity: Severity, finding: &str, response: &str) {
        let mut vars = blank_vars();
        vars.insert("severity".into(), severity.to_string());
        vars.insert("finding".into(), finding.to_string());
        vars.insert("response".into(), response.to_string());
        vars.insert("profile".into(), self.acting.plans.keys().cloned().collect::<Vec<_>>().join(", "));
        vars.insert("rollback_id".into(), "none".into());
        self.out.announce("escalation", &vars);
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
    ) -> Result<(), RecordError> {
        let e = Escalation {
            severity,
            finding: finding.to_string(),
            response: response.to_string(),
            profile: profile.to_string(),
            rollback_id: rollback_id.map(str::to_string),
        };
        // Recorded first: an escalation a fenced replica could not record is neither logged
        // nor sent by it (the leader raises its own).
        self.record(now, Event::Escalation(e))?;
        self.escalations += 1;
        // Logged at the level of its severity: a notice (acting resumed, etcd back) is news,
        // not an error.
        match severity {
            Severity::S1 | Severity::S2 => tracing::error!(%severity, finding, profile, "escalation"),
            Severity::S3 => tracing::warn!(%severity, finding, profile, "escalation"),
            Severity::Notice => tracing::info!(%severity, finding, profile, "escalation"),
        }
        vars.insert("severity".into(), severity.to_string());
        vars.insert("finding".into(), finding.to_string());
        vars.insert("response".into(), response.to_string());
        vars.insert("profile".into(), profile.to_string());
        if let Some(id) = rollback_id {
            vars.insert("rollback_id".into(), id.to_string());
        }
        self.out.announce("escalation", &vars);
        Ok(())
    }

    /// Every rule of the profile unknown for longer than `blind_after` is told once per spell.
    pub(super) fn watch_blindness(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        let Some(plan) = self.acting.plans.get(&d.profile) else { return Ok(()) };
        let blind = !plan.rules.is_empty() && d.unknown.len() == plan.rules.len();
        if !blind {
            if self.told.blind.remove(&d.profile).is_some_and(|(_, told)| told) {
                tracing::info!(profile = %d.profile, "inputs known again");
                self.record(now, Event::Sighted(Sighted { profile: d.profile.clone() }))?;
            }
            return Ok(());
        }
        let (since, told) = *self.told.blind.entry(d.profile.clone()).or_insert((now, false));
        let blind_for = now.saturating_since(since);
        if !told && blind_for >= self.acting.policy.blind_after {
            self.told.blind.insert(d.profile.clone(), (since, true));
            let mut vars = blank_vars();
            vars.insert("profile".into(), d.profile.clone());
            vars.insert("duration".into(), human(blind_for));
            vars.insert("unknown_rules".into(), d.unknown.join(", "));
            tracing::error!(profile = %d.profile, for_ = %blind_for, "blind: every rule's inputs unknown");
            let blind = Blind { profile: d.profile.clone(), since, rules: d.unknown.clone() };
            self.record(now, Event::Blind(blind))?;
            self.out.announce("blind", &vars);
        }
        Ok(())
    }

    /// The profiles already told, by an escalation in the journal since the current deploy,
    /// that their incident predates it: a restart does not tell them again.
    pub(super) fn predates_told(state: &super::state::State) -> BTreeSet<String> {
        let Some(version) = &state.versions.current else { return BTreeSet::new() };
        let prefix = predates_finding(version);
        state
            .escalations
            .iter()
            .filter(|(at, e)| e.finding.starts_with(&prefix) && state.versions.deployed_at.is_none_or(|d| *at >= d))
            .map(|(_, e)| e.profile.clone())
            .collect()
    }

    /// An incident older than the deploy: rolling the new version back would not fix it.
    /// Escalated S2 once, until its rules are seen quiet.
    pub(super) fn predates(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        if !self.told.predates.insert(d.profile.clone()) {
            return Ok(());
        }
        let version = self.state.versions.current.clone().unwrap_or_else(|| "unknown".into());
        let start = self.start_of(d);
        let finding = format!(
            "{}{} already firing before it and not seen quiet since; not rolling back",
            predates_finding(&version),
            d.because.join(", ")
        );
        let response = "Deeper investigation: the deploy did not cause this; rolling back would not fix it.";
        let vars = vars::base(&self.acting, &start);
        self.escalate(now, Severity::S2, &finding, response, &d.profile, None, vars)
    }
}

/// How an "incident predates deploy" escalation's finding begins, for `version`.
fn predates_finding(version: &str) -> String {
    format!("incident predates deploy of {version}: ")
}
