//! Approvals belong to a version and a decision: `consider` (and every rollback in `approve`
//! mode) opens one for the version deployed now, once; it closes when granted (its rollback
//! starts), rejected, expired, superseded (the version changed, or another rollback of the
//! profile started), stale (answered after the version changed) or cleared (the profile decided
//! `monitor` for `verify_stable`). A rejected decision is not asked again for that version until
//! it clears.

use super::core::Core;
use super::event::*;
use super::gate::Start;
use super::ledger::RecordError;
use super::vars;
use crate::config::procedures::Step;
use crate::rules::{Decision, Outcome};
use crate::time::Timestamp;

impl Core {
    /// Opens an approval for `d` about the deployed version, once; acts by itself after the
    /// profile's `consider_auto_after` when set (in auto mode).
    pub(super) fn ask(&mut self, now: Timestamp, d: &Decision) -> Result<(), RecordError> {
        if let Some(f) = &self.in_flight {
            let reason = format!("rollback {} of {} is in flight", f.rollback_id, f.profile);
            return self.suppress(now, &d.profile, d.outcome, &d.explanation(), reason);
        }
        let version = self.state.versions.current.clone();
        if self.rejected.contains(&(d.profile.clone(), version.clone())) {
            let reason = "rejected for this version; asked again once the decision clears or the version changes";
            return self.suppress(now, &d.profile, d.outcome, &d.explanation(), reason.into());
        }
        let open = self.state.approvals.values().find(|(_, a)| a.profile == d.profile && a.version == version).cloned();
        if let Some((opened, a)) = open {
            let auto = self.acting.plans.get(&d.profile).and_then(|p| p.consider_auto_after);
            if self.acting.policy.mode == super::Mode::Auto
                && let Some(after) = auto
                && now.saturating_since(opened) >= after
            {
                tracing::warn!(approval = %a.approval_id, after = %after, "no answer; acting by consider_auto_after");
                let start = Start::from_approval(&a);
                let _held_back = self.try_start(now, start, Some((a.approval_id.clone(), Closed::Auto, None)))?;
            }
            return Ok(());
        }
        let start = self.start_of(d);
        if version.is_some()
            && let Some(r) = self.state.with_key_since_deploy(&start.key())
        {
            let reason = format!("this version was already rolled back by {}", r.started.rollback_id);
            return self.suppress(now, &d.profile, d.outcome, &d.explanation(), reason);
        }
        let id = self.state.new_approval_id();
        let opened = ApprovalOpened {
            approval_id: id.clone(),
            profile: d.profile.clone(),
            version,
            outcome: Some(d.outcome),
            level: start.level.clone(),
            reason: start.reason.clone(),
            explanation: start.explanation.clone(),
            firing: start.firing.clone(),
            expires_at: now.plus(self.acting.policy.approval_timeout),
        };
        self.record(now, Event::ApprovalOpened(opened))?;
        tracing::warn!(approval = %id, profile = %d.profile, "rollback approval needed");
        let target = self.state.versions.target().map(str::to_string);
        let vars = vars::approval(&self.acting, &start, Some(d.outcome), &id, target.as_deref());
        let consider: Vec<Step> = self.steps_of(&d.profile, "consider", start.level.as_deref());
        let announced = consider.iter().any(|s| matches!(s, Step::Announce { .. }));
        for step in consider {
            if let Step::Announce { template, .. } = step {
                self.out.announce(&template, &vars);
            }
        }
        if !announced {
            self.out.announce("rollback_approval_needed", &vars);
        }
        Ok(())
    }

    pub(super) fn expire_approvals(&mut self, now: Timestamp) -> Result<(), RecordError> {
        let expired: Vec<String> = self
            .state
            .approvals
            .values()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(_, a)| a.approval_id.clone())
            .collect();
        for id in expired {
            tracing::warn!(approval = %id, "approval expired unanswered");
            self.close_approval(now, id, Closed::Expired, None, None)?;
        }
        Ok(())
    }

    /// Approvals of a profile that has decided `monitor` for `verify_stable` close as cleared
    /// (and a rejection of its decision is forgotten).
    pub(super) fn clear_approvals(&mut self, now: Timestamp, decisions: &[Decision]) -> Result<(), RecordError> {
        let stable = self.acting.policy.verify_stable;
        for d in decisions {
            if d.outcome != Outcome::Monitor {
                self.monitor_since.remove(&d.profile);
                continue;
            }
            let since = *self.monitor_since.entry(d.profile.clone()).or_insert(now);
            if now.saturating_since(since) < stable {
                continue;
            }
            self.rejected.retain(|(p, _)| p != &d.profile);
            let cleared: Vec<String> = self
                .state
                .approvals
                .values()
                .filter(|(_, a)| a.profile == d.profile)
                .map(|(_, a)| a.approval_id.clone())
                .collect();
            for id in cleared {
                tracing::info!(approval = %id, "decision back to monitor: approval cleared");
                self.close_approval(now, id, Closed::Cleared, None, None)?;
            }
        }
        Ok(())
    }

    /// A deploy of `to` closes every approval opened for another version.
    pub(super) fn supersede_approvals(&mut self, now: Timestamp, to: &str) -> Result<(), RecordError> {
        let superseded: Vec<String> = self
            .state
            .approvals
            .values()
            .filter(|(_, a)| a.version.as_deref() != Some(to))
            .map(|(_, a)| a.approval_id.clone())
            .collect();
        for id in superseded {
            tracing::info!(approval = %id, version = to, "version changed: approval superseded");
            self.close_approval(now, id, Closed::Superseded, None, None)?;
        }
        Ok(())
    }

    pub(super) fn close_approval(
        &mut self,
        now: Timestamp,
        approval_id: String,
        how: Closed,
        by: Option<String>,
        reason: Option<String>,
    ) -> Result<(), RecordError> {
        self.record(now, Event::ApprovalClosed(ApprovalClosed { approval_id, how, by, reason }))
    }
}
