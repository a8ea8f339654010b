//! The version model (README, "Versions"; its place: docs/ARCHITECTURE.md): what is deployed, since when, and what each
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

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// The longest version accepted from outside (the hook, the version source, the CLI).
pub const MAX_VERSION_BYTES: usize = 256;

/// Whether `version` (trimmed) can be a version: 1 to [`MAX_VERSION_BYTES`] bytes, no control
/// character. Everything from outside that names a version goes through here before it is
/// recorded (and so before it reaches the shared log, which bounds its lines).
pub fn check_version(version: &str) -> Result<(), String> {
    if version.is_empty() || version.len() > MAX_VERSION_BYTES || version.chars().any(char::is_control) {
        let shown: String = version.chars().take(40).flat_map(char::escape_default).collect();
        // A value the health reader cut (it ends in `…`) was longer than what is left of it.
        let cut = crate::source::health::MAX_STRING;
        let size = if version.ends_with('…') && version.len() > cut {
            format!("over {cut} bytes")
        } else {
            format!("{} bytes", version.len())
        };
        return Err(format!(
            "version must be 1 to {MAX_VERSION_BYTES} printable characters, not {size} ({shown:?}{})",
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

/// The versions most recently deployed that keep all they are known by. An older version keeps
/// its verdict — good or bad, its deploys and the evidence line that gave the verdict — and one
/// without a verdict is forgotten: acting never needs it again (it is no rollback target, and
/// deployed again it is new again). Memory follows the versions with a verdict, not the deploys.
pub const RECENT_VERSIONS: usize = 50;

/// One version as the journal tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionInfo {
    pub version: String,
    /// Its latest deploy.
    pub deployed_at: Timestamp,
    pub deploys: u32,
    pub state: VersionState,
    /// Why it is in that state, oldest first: `baked at …`, `rolled back by rb-3`, `marked bad by
    /// alice: …`. Of a version deployed before the last [`RECENT_VERSIONS`], only the line that
    /// gave its verdict.
    pub evidence: Vec<String>,
    /// Which line of `evidence` gave `state` (none while new): what compaction keeps.
    #[serde(skip)]
    verdict: Option<usize>,
}

impl VersionInfo {
    fn new(version: &str, at: Timestamp) -> VersionInfo {
        VersionInfo {
            version: version.to_string(),
            deployed_at: at,
            deploys: 0,
            state: VersionState::New,
            evidence: vec![],
            verdict: None,
        }
    }

    /// Records `line` as evidence; with `state`, as the line that gave that state.
    fn note(&mut self, line: String, state: Option<VersionState>) {
        if let Some(state) = state {
            self.state = state;
            self.verdict = Some(self.evidence.len());
        }
        self.evidence.push(line);
    }

    /// Drops every evidence line but the verdict's.
    fn compact(&mut self) {
        if self.evidence.len() > 1 {
            let verdict = self.verdict.and_then(|i| self.evidence.get(i).cloned());
            self.evidence = verdict.into_iter().collect();
            self.verdict = (!self.evidence.is_empty()).then_some(0);
        }
    }
}

/// Every version known, and the one deployed now. Each change costs a lookup and a look at the
/// [`RECENT_VERSIONS`]th latest: 100,000 deploys restore in linear time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Versions {
    pub current: Option<String>,
    /// When the current version was deployed.
    pub deployed_at: Option<Timestamp>,
    /// Versions by their place in the deploy order (a deploy moves a version to the end).
    order: BTreeMap<u64, VersionInfo>,
    /// Each version's place in `order`.
    place: HashMap<String, u64>,
    /// The places of the good versions (for the rollback target, without a scan).
    good: BTreeSet<u64>,
    /// The next place.
    next: u64,
    /// Versions without a verdict forgotten (deployed before the last [`RECENT_VERSIONS`]).
    forgotten: u64,
}

impl Versions {
    pub fn get(&self, version: &str) -> Option<&VersionInfo> {
        self.order.get(self.place.get(version)?)
    }

    /// Every version known, by latest deploy, oldest first.
    pub fn list(&self) -> impl DoubleEndedIterator<Item = &VersionInfo> + ExactSizeIterator {
        self.order.values()
    }

    /// How many versions without a verdict were forgotten.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// The version's entry, created (as the latest) when it is not known.
    fn entry(&mut self, version: &str, at: Timestamp) -> &mut VersionInfo {
        let place = match self.place.get(version) {
            Some(&place) => place,
            None => self.push(VersionInfo::new(version, at)),
        };
        self.order.get_mut(&place).expect("every place is in the order")
    }

    /// Puts `v` last in the order, then compacts the version that became the
    /// ([`RECENT_VERSIONS`] + 1)th latest. Returns its place.
    fn push(&mut self, v: VersionInfo) -> u64 {
        let place = self.next;
        self.next += 1;
        if v.state == VersionState::Good {
            self.good.insert(place);
        }
        self.place.insert(v.version.clone(), place);
        self.order.insert(place, v);
        self.compact_beyond_recent();
        place
    }

    fn compact_beyond_recent(&mut self) {
        let Some((&place, old)) = self.order.iter_mut().rev().nth(RECENT_VERSIONS) else { return };
        if old.state != VersionState::New {
            old.compact();
        } else if self.current.as_ref() != Some(&old.version) {
            let old = self.order.remove(&place).expect("just seen");
            self.place.remove(&old.version);
            self.forgotten += 1;
        }
    }

    /// Keeps the index of good versions in step with the state of the version at `place`.
    fn track(&mut self, place: u64) {
        match self.order.get(&place).map(|v| v.state) {
            Some(VersionState::Good) => self.good.insert(place),
            _ => self.good.remove(&place),
        };
    }

    /// `to` deployed at `at`.
    pub fn deploy(&mut self, at: Timestamp, to: &str) {
        let mut v = match self.place.remove(to) {
            Some(place) => {
                self.good.remove(&place);
                self.order.remove(&place).expect("every place is in the order")
            }
            None => VersionInfo::new(to, at),
        };
        v.deployed_at = at;
        v.deploys += 1;
        self.current = Some(to.to_string());
        self.deployed_at = Some(at);
        self.push(v);
    }

    pub fn baked(&mut self, at: Timestamp, b: &VersionBaked) {
        let v = self.entry(&b.version, at);
        let state = (v.state == VersionState::New).then_some(VersionState::Good);
        v.note(format!("baked at {} (clean since {})", super::iso(at), super::iso(b.since)), state);
        self.retrack(&b.version);
    }

    /// A rollback from `version` completed: it is bad.
    pub fn rolled_back(&mut self, at: Timestamp, version: &str, rollback_id: &str) {
        let v = self.entry(version, at);
        v.note(format!("rolled back by {rollback_id} at {}", super::iso(at)), Some(VersionState::Bad));
        self.retrack(version);
    }

    /// A rollback from `version` for the environment's sake completed (every rule behind it
    /// judges the environment): the version keeps its state — the fault was not its own.
    pub fn restored_for_the_environment(&mut self, at: Timestamp, version: &str, rollback_id: &str) {
        let v = self.entry(version, at);
        v.evidence.push(format!(
            "rolled back by {rollback_id} at {} for the environment (not its own fault: not marked bad)",
            super::iso(at)
        ));
    }

    pub fn marked(&mut self, at: Timestamp, m: &VersionMarked) {
        let v = self.entry(&m.version, at);
        let state = match m.state {
            Mark::Good => VersionState::Good,
            Mark::Bad => VersionState::Bad,
        };
        v.note(format!("marked {state} by {} at {}: {}", m.by, super::iso(at), m.reason), Some(state));
        self.retrack(&m.version);
    }

    fn retrack(&mut self, version: &str) {
        if let Some(&place) = self.place.get(version) {
            self.track(place);
        }
    }

    /// The most recently deployed version known good (the current one, when it is).
    pub fn last_good(&self) -> Option<&str> {
        let place = self.good.last()?;
        self.order.get(place).map(|v| v.version.as_str())
    }

    /// The rollback target: the most recently deployed good version other than the current one.
    pub fn target(&self) -> Option<&str> {
        self.good
            .iter()
            .rev()
            .filter_map(|place| self.order.get(place))
            .find(|v| Some(&v.version) != self.current.as_ref())
            .map(|v| v.version.as_str())
    }

    /// Whether the current version still has to bake.
    pub fn current_unproven(&self) -> Option<&str> {
        let current = self.current.as_deref()?;
        (self.get(current).is_none_or(|v| v.state == VersionState::New)).then_some(current)
    }
}

/// What the version source reads: its last reading (a reading that changes is a deploy), when
/// it was last read and polled, whether a reading was refused (told once), and the bake of the
/// deployed version.
#[derive(Debug, Default)]
pub struct Sighting {
    /// The version source's last reading.
    pub observed: Option<String>,
    /// Whether the version source's last reading was refused (told once).
    pub refused: bool,
    /// When the version source was last read, and last polled at all (read or not): a decision
    /// about an issue that began after the last poll waits for the next one, which says what
    /// version the issue is about.
    pub read_at: Option<Timestamp>,
    pub polled_at: Option<Timestamp>,
    /// The latest start of an issue whose decision waits for a poll of the version source after
    /// it (the source was asked at once; the poll that comes asks for an evaluation at once).
    pub waiting: Option<Timestamp>,
    /// Since when this replica's acting watches (its start, or its engine's at a takeover): a
    /// version first seen was deployed then at the latest, as far as its evidence goes.
    pub watching_since: Option<Timestamp>,
    /// A rollback completed while the version source still read the version rolled back from:
    /// until when it is read every few seconds for the restore, and that version.
    pub restore_unseen: Option<(Timestamp, String)>,
    pub bake: Bake,
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
            firing: firing.iter().map(|r| RuleValue { rule: r.to_string(), value: None }).collect(),
            unknown: unknown.iter().map(|r| r.to_string()).collect(),
            pending: pending.iter().map(|r| r.to_string()).collect(),
            ..Decision::new(Timestamp(0), "p", outcome)
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

    #[test]
    fn versions_before_the_last_recent_keep_their_verdict_or_are_forgotten() {
        let mut v = Versions::default();
        let mark = |version: &str, state: Mark| VersionMarked {
            version: version.into(),
            state,
            by: "alice".into(),
            reason: "seen".into(),
        };
        v.deploy(Timestamp(1), "good");
        v.baked(Timestamp(2), &VersionBaked { version: "good".into(), since: Timestamp(1) });
        v.marked(Timestamp(3), &mark("good", Mark::Good));
        v.deploy(Timestamp(4), "bad");
        v.marked(Timestamp(5), &mark("bad", Mark::Bad));
        v.baked(Timestamp(6), &VersionBaked { version: "bad".into(), since: Timestamp(4) });
        v.deploy(Timestamp(7), "rolled");
        v.rolled_back(Timestamp(8), "rolled", "rb-1");
        v.deploy(Timestamp(9), "plain");
        assert_eq!(v.get("bad").unwrap().evidence.len(), 2, "recent versions keep every line");
        for i in 0..1000 {
            v.deploy(Timestamp(10 + i), &format!("n{i}"));
        }
        assert_eq!(v.list().len(), 3 + RECENT_VERSIONS, "the verdicts and the last {RECENT_VERSIONS}");
        assert_eq!(v.forgotten(), 1 + 1000 - RECENT_VERSIONS as u64);
        assert!(v.get("plain").is_none() && v.get("n0").is_none());
        // Each old verdict keeps the line that gave it.
        assert_eq!(v.get("good").unwrap().evidence, vec!["marked good by alice at 1970-01-01T00:00:00Z: seen"]);
        assert_eq!(v.get("bad").unwrap().evidence, vec!["marked bad by alice at 1970-01-01T00:00:00Z: seen"]);
        assert_eq!(v.get("rolled").map(|r| (r.state, r.evidence.len())), Some((VersionState::Bad, 1)));
        assert_eq!(
            (v.target(), v.last_good()),
            (Some("good"), Some("good")),
            "an old good version is still the target"
        );
        let order: Vec<&str> = v.list().take(4).map(|i| i.version.as_str()).collect();
        assert_eq!(order, ["good", "bad", "rolled", "n950"], "by latest deploy");
        // A forgotten version deployed again is new again; an old good one deployed again is
        // still good, now the latest.
        v.deploy(Timestamp(2000), "plain");
        assert_eq!(v.get("plain").map(|p| (p.state, p.deploys)), Some((VersionState::New, 1)));
        assert_eq!(v.current_unproven(), Some("plain"));
        v.deploy(Timestamp(2001), "good");
        assert_eq!(v.get("good").map(|g| (g.state, g.deploys)), Some((VersionState::Good, 2)));
        assert_eq!((v.target(), v.last_good(), v.current_unproven()), (None, Some("good"), None));
        assert_eq!(v.list().last().map(|l| l.version.as_str()), Some("good"));
    }
}
