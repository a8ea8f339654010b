//! The version model (DESIGN.md, "Versions"): what is deployed, since when, and what each
//! version is known to be. A version is *good* only by positive evidence — it baked (ran `bake`
//! clean) or an operator marked it — and *bad* once a rollback from it completed or an operator
//! marked it. A failed or interrupted rollback leaves every version as it was. The rollback
//! target is the most recently deployed good version other than the current one.
//!
//! ```text
//! v1 deployed ── bakes 10m clean ── good
//!    v2 deployed ── error rate > 5% ── rollback rb-1 (target v1) ── v1 seen again (restore:
//!    a deploy; v1 judged anew from here) ── rules quiet for verify_stable ── v2 bad
//! ```

use serde::Serialize;

/// The longest version accepted from outside (the hook, the version source, the CLI).
pub const MAX_VERSION_BYTES: usize = 256;

/// Whether `version` (trimmed) can be a version: 1 to [`MAX_VERSION_BYTES`] bytes, no control
/// character. Everything from outside that names a version goes through here before it is
/// recorded (and so before it reaches the shared log, which bounds its lines).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION_BYTES || version.chars().any(char::is_control) {
        let shown: String = version.chars().take(40).flat_map(char::escape_default).collect();
        return Err(format!(
            "version must be 1 to {MAX_VERSION_BYTES} printable characters, not {} bytes ({shown:?}{})",
            version.len(),
            if version.chars().count() > 40 { "…" } else { "" }
        ));
    }
    Ok(())
}

use super::event::{Mark, VersionBaked, VersionMarked};
use crate::rules::{Decision, Outcome};
use crate::time::{Span, Timestamp};

/// What a version is known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Deployed, not (yet) proven either way.
    New,
    Good,
    Bad,
}

impl std::fmt::Display for VersionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VersionState::New => "new",
            VersionState::Good => "good",
            VersionState::Bad => "bad",
        })
    }
}

/// One version as the journal tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: String,
    /// Its latest deploy.
    pub deployed_at: Timestamp,
    pub deploys: u32,
    pub state: VersionState,
    /// Why it is in that state, oldest first: `baked at …`, `rolled back by rb-3`, `marked bad by
    /// alice: …`.
    pub evidence: Vec<String>,
}

/// Every version seen, and the one deployed now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versions {
    pub current: Option<String>,
    /// When the current version was deployed.
    pub deployed_at: Option<Timestamp>,
    /// By latest deploy, oldest first.
    pub list: Vec<VersionInfo>,
}

impl Versions {
    pub fn get(&self, version: &str) -> Option<&VersionInfo> {
        self.list.iter().find(|v| v.version == version)
    }

    fn entry(&mut self, version: &str, at: Timestamp) -> &mut VersionInfo {
        let i = match self.list.iter().position(|v| v.version == version) {
            Some(i) => i,
            None => {
                self.list.push(VersionInfo {
                    version: version.to_string(),
                    deployed_at: at,
                    deploys: 0,
                    state: VersionState::New,
                    evidence: vec![],
                });
                self.list.len() - 1
            }
        };
        &mut self.list[i]
    }

    /// `to` deployed at `at`.
    pub fn deploy(&mut self, at: Timestamp, to: &str) {
        let v = self.entry(to, at);
        v.deployed_at = at;
        v.deploys += 1;
        let i = self.list.iter().position(|v| v.version == to).unwrap_or(0);
        let moved = self.list.remove(i);
        self.list.push(moved);
        self.current = Some(to.to_string());
        self.deployed_at = Some(at);
    }

    pub fn baked(&mut self, at: Timestamp, b: &VersionBaked) {
        let v = self.entry(&b.version, at);
        if v.state == VersionState::New {
            v.state = VersionState::Good;
        }
        v.evidence.push(format!("baked at {} (clean since {})", super::iso(at), super::iso(b.since)));
    }

    /// A rollback from `version` completed: it is bad.
    pub fn rolled_back(&mut self, at: Timestamp, version: &str, rollback_id: &str) {
        let v = self.entry(version, at);
        v.state = VersionState::Bad;
        v.evidence.push(format!("rolled back by {rollback_id} at {}", super::iso(at)));
    }

    pub fn marked(&mut self, at: Timestamp, m: &VersionMarked) {
        let v = self.entry(&m.version, at);
        v.state = match m.state {
            Mark::Good => VersionState::Good,
            Mark::Bad => VersionState::Bad,
        };
        v.evidence.push(format!("marked {} by {} at {}: {}", v.state, m.by, super::iso(at), m.reason));
    }

    /// The rollback target: the most recently deployed good version other than the current one.
    /// The most recently deployed version known good (the current one, when it is).
    pub fn last_good(&self) -> Option<&str> {
        self.list.iter().rev().find(|v| v.state == VersionState::Good).map(|v| v.version.as_str())
    }

    pub fn target(&self) -> Option<&str> {
        self.list
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Good && Some(&v.version) != self.current.as_ref())
            .map(|v| v.version.as_str())
    }

    /// Whether the current version still has to bake.
    pub fn current_unproven(&self) -> Option<&str> {
        let current = self.current.as_deref()?;
        (self.get(current).is_none_or(|v| v.state == VersionState::New)).then_some(current)
    }
}

/// Watches the current version run clean: every profile deciding `monitor`, none of its rules
/// pending or firing, and not every rule unknown (rules with unknown inputs neither block nor
/// count, but a profile watching nothing proves nothing).
#[derive(Debug, Clone, Default)]
pub struct Bake {
    clean_since: Option<Timestamp>,
}

impl Bake {
    /// Starts over (a deploy, a restore, a rollback).
    pub fn restart(&mut self) {
        self.clean_since = None;
    }

    /// One tick's decisions (`rules_of` gives each profile's rule count). Returns since when the
    /// version has run clean once that is `bake` long.
    pub fn observe(
        &mut self,
        now: Timestamp,
        decisions: &[Decision],
        rules_of: impl Fn(&str) -> usize,
        bake: Span,
    ) -> Option<Timestamp> {
        let clean = !decisions.is_empty()
            && decisions.iter().all(|d| {
                let rules = rules_of(&d.profile);
                d.outcome == Outcome::Monitor
                    && d.firing.is_empty()
                    && d.pending.is_empty()
                    && (rules == 0 || d.unknown.len() < rules)
            });
        if !clean {
            self.clean_since = None;
            return None;
        }
        let since = *self.clean_since.get_or_insert(now);
        (now.saturating_since(since) >= bake).then_some(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleValue;

    fn decision(outcome: Outcome, firing: &[&str], pending: &[&str], unknown: &[&str]) -> Decision {
        Decision {
            at: Timestamp(0),
            profile: "p".into(),
            outcome,
            level: None,
            path: vec![],
            by_default: outcome == Outcome::Monitor,
            firing: firing.iter().map(|r| RuleValue { rule: r.to_string(), value: None }).collect(),
            because: vec![],
            unknown: unknown.iter().map(|r| r.to_string()).collect(),
            pending: pending.iter().map(|r| r.to_string()).collect(),
            predates: vec![],
            silenced: vec![],
            coverage: vec![],
        }
    }

    const M: i64 = 60_000;

    #[test]
    fn a_version_bakes_only_after_running_clean_for_bake() {
        let mut bake = Bake::default();
        let clean = [decision(Outcome::Monitor, &[], &[], &["a"])];
        let two = |_: &str| 2;
        assert_eq!(bake.observe(Timestamp(0), &clean, two, Span(10 * M)), None);
        assert_eq!(bake.observe(Timestamp(9 * M), &clean, two, Span(10 * M)), None);
        // A pending rule starts the clock over.
        let pending = [decision(Outcome::Monitor, &[], &["b"], &[])];
        assert_eq!(bake.observe(Timestamp(9 * M + 1), &pending, two, Span(10 * M)), None);
        assert_eq!(bake.observe(Timestamp(10 * M), &clean, two, Span(10 * M)), None);
        assert_eq!(bake.observe(Timestamp(20 * M), &clean, two, Span(10 * M)), Some(Timestamp(10 * M)));
        // Every rule unknown proves nothing.
        let mut blind = Bake::default();
        let all_unknown = [decision(Outcome::Monitor, &[], &[], &["a", "b"])];
        assert_eq!(blind.observe(Timestamp(0), &all_unknown, two, Span::ZERO), None);
    }

    #[test]
    fn the_target_is_the_latest_good_version_other_than_the_current_one() {
        let mut v = Versions::default();
        v.deploy(Timestamp(1), "v1");
        v.baked(Timestamp(2), &VersionBaked { version: "v1".into(), since: Timestamp(1) });
        v.deploy(Timestamp(3), "v2");
        assert_eq!(v.target(), Some("v1"));
        assert_eq!(v.current_unproven(), Some("v2"));
        v.baked(Timestamp(4), &VersionBaked { version: "v2".into(), since: Timestamp(3) });
        v.deploy(Timestamp(5), "v3");
        assert_eq!(v.target(), Some("v2"), "the most recent good one");
        v.rolled_back(Timestamp(6), "v3", "rb-1");
        v.deploy(Timestamp(7), "v2");
        assert_eq!(v.target(), Some("v1"), "never the current one, never a bad one");
        v.marked(
            Timestamp(8),
            &VersionMarked { version: "v1".into(), state: Mark::Bad, by: "alice".into(), reason: "leaks".into() },
        );
        assert_eq!(v.target(), None);
        assert_eq!(v.get("v3").map(|x| x.state), Some(VersionState::Bad));
        assert!(v.get("v1").unwrap().evidence.last().unwrap().contains("marked bad by alice"));
    }
}
