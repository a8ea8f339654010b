//! `rollwatch history`, `versions` and `annotate`: the rollback history with runbook 004's
//! fields (date, version_from, version_to, reason, duration, root_cause, who approved), the
//! approvals people answered, the versions and their evidence — read back from the journal —
//! and root causes appended to it.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use super::event::{Annotated, Closed, Deploy, Event, VersionBaked, VersionChanged, VersionMarked};
use super::state::State;
use super::versions::VersionInfo;
use crate::journal::{Journal, JournalError};
use crate::time::{Timestamp, human, iso};

/// One rollback, as runbook 004's history records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: String,
    pub date: String,
    pub profile: String,
    pub version_from: Option<String>,
    /// The version it rolled back to: the one seen after its steps, else (steps done) its
    /// target; none for a rollback that failed or was interrupted before one was seen.
    pub version_to: Option<String>,
    /// The version it set out to restore.
    pub target_version: Option<String>,
    pub reason: String,
    /// `completed`, `failed`, `issue_persists`, `unverified`, `interrupted`, or `in_flight`.
    pub result: String,
    pub duration_minutes: Option<f64>,
    /// The same for people: `2m 5s`.
    pub duration: Option<String>,
    /// Each run/verify step: `1 run undo: HTTP 200`.
    pub steps: Vec<String>,
    pub root_cause: Option<String>,
    pub error: Option<String>,
    /// The approval it answered, and who granted it (`auto` after `consider_auto_after`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// How long detection, the steps and the recovery took.
    #[serde(flatten)]
    pub timings: super::state::Timings,
}

/// An approval people answered (granted or rejected), or that closed otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApprovalEntry {
    pub id: String,
    pub date: String,
    pub profile: String,
    pub version: Option<String>,
    pub reason: String,
    /// `granted`, `rejected`, `expired`, `superseded`, `stale`, `cleared`, `auto`, or `open`.
    pub result: String,
    pub by: Option<String>,
    pub why: Option<String>,
}

impl Entry {
    /// `detected 1m 5s after the deploy, steps 12s, recovered in 3m` (what is known of it).
    pub fn timing_line(&self) -> Option<String> {
        let s = |secs: f64| human(crate::time::Span((secs * 1000.0) as i64));
        let t = &self.timings;
        let parts: Vec<String> = [
            t.detect_seconds.map(|d| format!("detected {} after the deploy", s(d))),
            t.held_seconds.map(|d| {
                format!(
                    "started {} after the decision (held back, waiting for the version source, or awaiting approval)",
                    s(d)
                )
            }),
            t.steps_seconds.map(|d| format!("steps {}", s(d))),
            t.recovery_seconds.map(|d| format!("recovered {} after the first sign", s(d))),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// Where it went, for people: the version seen after it; else its target `not reached` (a
    /// step failed) or `not confirmed` (no version source, its restore not shown yet, or
    /// interrupted: its step may have run to the end with nobody watching); else `?`.
    pub fn to(&self) -> String {
        match (&self.version_to, &self.target_version) {
            (Some(to), _) => to.clone(),
            (None, Some(target)) if self.result == "failed" => format!("{target} not reached"),
            (None, Some(target)) => format!("{target} not confirmed"),
            (None, None) => "?".to_string(),
        }
    }

    /// One line for people: `rb-1 api v1.2.4 → v1.2.3, completed in 2m 5s: Is error rate > 5% (…)`.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} → {}, {} in {}: {}",
            self.id,
            self.profile,
            self.version_from.as_deref().unwrap_or("?"),
            self.to(),
            self.result,
            self.duration.as_deref().unwrap_or("-"),
            self.reason
        )
    }
}

/// The acting state in the journal at `path`, as [`State::restore`] rebuilds it (a line that
/// does not fit is skipped), folded as the file streams: memory follows the state, not the file.
pub fn state(path: &Path) -> Result<State, JournalError> {
    let mut state = State::default();
    Journal::for_each_line(path, |line| {
        if let Ok((at, event)) = Event::read(&line)
            && event.restores_state()
        {
            let _ = state.apply(at, &event);
        }
    })?;
    Ok(state)
}

/// The journal lines at `path` the acting state is restored from, in two streaming passes: the
/// first finds the versions acting still knows (the last
/// [`RECENT_VERSIONS`](super::versions::RECENT_VERSIONS) deployed and those with a verdict), the
/// second keeps the state events but the version events of versions forgotten. A journal of
/// 100,000 deploys restores from the lines of a few dozen versions. (A version forgotten and
/// deployed again counts its earlier deploys here too; acting never reads the count.)
pub fn restore_lines(path: &Path) -> Result<Vec<serde_json::Value>, JournalError> {
    let known: HashSet<String> = state(path)?.versions.list().map(|v| v.version.clone()).collect();
    Journal::read_back_kept(path, |line| {
        Event::read(line).is_ok_and(|(_, e)| e.restores_state() && version_of(&e).is_none_or(|v| known.contains(v)))
    })
}

/// The version a version event is about.
fn version_of(event: &Event) -> Option<&str> {
    match event {
        Event::Deploy(Deploy { to: version, .. })
        | Event::VersionChanged(VersionChanged { to: version, .. })
        | Event::VersionBaked(VersionBaked { version, .. })
        | Event::VersionMarked(VersionMarked { version, .. }) => Some(version),
        _ => None,
    }
}

/// The history in the journal at `path`, oldest first.
pub fn read(path: &Path) -> Result<Vec<Entry>, JournalError> {
    Ok(entries(&state(path)?))
}

/// Every approval, oldest first.
pub fn approvals(state: &State) -> Vec<ApprovalEntry> {
    let closed = state.closed_approvals.iter().map(|c| (c.opened_at, &c.opened, Some(&c.closed)));
    let open = state.approvals.values().map(|(at, a)| (*at, a, None));
    let mut out: Vec<_> = closed
        .chain(open)
        .map(|(at, a, c)| ApprovalEntry {
            id: a.approval_id.clone(),
            date: iso(at),
            profile: a.profile.clone(),
            version: a.version.clone(),
            reason: a.reason.clone(),
            result: c.map_or("open".to_string(), |c| c.how.to_string()),
            by: c.and_then(|c| c.by.clone()),
            why: c.and_then(|c| c.reason.clone()),
        })
        .collect();
    out.sort_by(|a, b| a.date.cmp(&b.date).then(a.id.cmp(&b.id)));
    out
}

/// Every version seen, latest deploy last.
pub fn versions(state: &State) -> Vec<VersionInfo> {
    state.versions.list().cloned().collect()
}

pub fn entries(state: &State) -> Vec<Entry> {
    state.rollbacks.iter().map(|r| entry(state, r)).collect()
}

/// The last `n` rollbacks' entries, oldest first (built for those only: `/status` asks each tick).
pub fn recent(state: &State, n: usize) -> Vec<Entry> {
    state.rollbacks[state.rollbacks.len().saturating_sub(n)..].iter().map(|r| entry(state, r)).collect()
}

/// One rollback as history shows it.
fn entry(state: &State, r: &super::state::Rollback) -> Entry {
    let finished = r.finished.as_ref().map(|(_, f)| f);
    Entry {
        id: r.started.rollback_id.clone(),
        date: iso(r.at),
        profile: r.started.profile.clone(),
        version_from: r.started.version_from.clone(),
        // In flight, where it goes; finished, only what the version source showed after it.
        version_to: match finished {
            None => r.started.target_version.clone(),
            Some(f) => f.version_to.clone(),
        },
        target_version: r.started.target_version.clone(),
        reason: r.started.reason.clone(),
        result: finished.map_or("in_flight", |f| f.result.key()).to_string(),
        duration_minutes: finished.map(|f| (f.duration_ms as f64 / 60_000.0 * 10.0).round() / 10.0),
        duration: finished.map(|f| human(crate::time::Span(f.duration_ms))),
        steps: {
            let mut numbers = StepNumbers::default();
            r.steps_done.iter().map(|s| numbers.line(s)).collect()
        },
        root_cause: r.root_cause.clone(),
        error: finished.and_then(|f| f.error.clone()),
        approval_id: r.started.approval_id.clone(),
        approved_by: r.started.approval_id.as_ref().and_then(|id| {
            let c = state.closed_approval(id)?;
            match c.closed.how {
                Closed::Auto => Some("auto (consider_auto_after)".to_string()),
                _ => c.closed.by.clone(),
            }
        }),
        timings: r.timings(),
    }
}

/// Numbers a rollback's steps as people count them — 1, 2, … over the steps that ran (a `run`
/// and its `verify` share a number) — where the journal numbers each by its place in the
/// procedure, announcements included (the first `run` after an announcement is step 2 there).
#[derive(Debug, Default)]
pub struct StepNumbers(Vec<usize>);

impl StepNumbers {
    /// `1 run undo: ok, exit status 0`.
    pub fn line(&mut self, s: &super::event::StepEvent) -> String {
        if self.0.last() != Some(&s.step) {
            self.0.push(s.step);
        }
        let ok = if s.ok == Some(true) { "ok" } else { "FAILED" };
        format!("{} {} {}: {ok}, {}", self.0.len(), s.role, s.action, s.detail.as_deref().unwrap_or(""))
    }
}

/// Records a root cause for rollback `id` in the journal in `dir`; an unknown id is an error
/// naming the ids there are.
pub fn annotate(dir: &Path, id: &str, root_cause: &str, at: Timestamp) -> Result<(), AnnotateError> {
    let path = dir.join("journal.jsonl");
    let known = read(&path)?;
    if !known.iter().any(|e| e.id == id) {
        let ids: Vec<String> = known.into_iter().map(|e| e.id).collect();
        return Err(AnnotateError::Unknown { id: id.to_string(), known: ids });
    }
    let mut journal = Journal::open(dir)?;
    let event = Event::Annotated(Annotated { rollback_id: id.to_string(), root_cause: root_cause.to_string() });
    journal.append_event(at, &event)?;
    Ok(())
}

/// Why an annotation was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("no rollback {id:?} in the journal (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    Unknown { id: String, known: Vec<String> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::versions::RECENT_VERSIONS;
    use std::io::Write;

    /// Writes one journal line: `at`, `event` and the rest of its fields (JSON, unbraced).
    fn write_line(f: &mut std::fs::File, at: i64, event: &str, rest: &str) {
        writeln!(f, r#"{{"at":{at},"event":"{event}",{rest}}}"#).unwrap();
    }

    /// A restart restores from fewer lines what `versions` reads from all of them: the same
    /// versions, verdicts, target, rollbacks.
    #[test]
    fn a_restart_skips_forgotten_versions_lines_and_restores_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut line = |at: i64, event: &str, rest: &str| write_line(&mut f, at, event, rest);
        line(1, "deploy", r#""from":null,"to":"v0","source":"first_sight""#);
        line(2, "version_baked", r#""version":"v0","since":1"#);
        line(3, "decision", r#""profile":"p","outcome":"monitor""#);
        for i in 1..=500 {
            line(10 * i, "deploy", &format!(r#""from":"v{}","to":"v{i}","source":"hook""#, i - 1));
        }
        line(
            6000,
            "rollback_started",
            r#""rollback_id":"rb-1","profile":"p","key":"p@v500","version_from":"v500","target_version":"v0","level":null,"reason":"r","explanation":"e","firing":["x"],"approval_id":null"#,
        );
        line(
            6001,
            "rollback_finished",
            r#""rollback_id":"rb-1","result":"completed","duration_ms":1,"version_to":"v0","error":null"#,
        );
        line(6002, "deploy", r#""from":"v500","to":"v7","source":"version""#);
        drop(f);
        let full = state(&path).unwrap();
        let kept = restore_lines(&path).unwrap();
        assert!(kept.len() < 2 * RECENT_VERSIONS + 10, "{} lines kept", kept.len());
        let (restored, errors) = State::restore(&kept);
        assert!(errors.is_empty(), "{errors:?}");
        let seen = |s: &State| -> Vec<(String, String, Vec<String>)> {
            s.versions.list().map(|v| (v.version.clone(), v.state.to_string(), v.evidence.clone())).collect()
        };
        assert_eq!(seen(&restored), seen(&full));
        assert_eq!(
            (restored.versions.current.as_deref(), restored.versions.deployed_at, restored.versions.target()),
            (Some("v7"), Some(Timestamp(6002)), Some("v0"))
        );
        assert_eq!(full.versions.target(), Some("v0"));
        assert_eq!(entries(&restored), entries(&full));
        assert_eq!(full.versions.get("v500").map(|v| v.state.to_string()).as_deref(), Some("bad"));
    }

    /// A rollback whose step failed did not reach its target; one whose restore no reading
    /// showed (interrupted, or completed before it showed) did not confirm it; one in flight
    /// shows where it goes.
    #[test]
    fn a_rollback_went_to_its_target_only_as_far_as_a_reading_showed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut line = |at: i64, event: &str, rest: &str| write_line(&mut f, at, event, rest);
        line(1, "deploy", r#""from":null,"to":"v1","source":"first_sight""#);
        line(2, "deploy", r#""from":"v1","to":"v2","source":"hook""#);
        let results = ["interrupted", "failed", "completed", "unverified"];
        for (i, result) in results.iter().enumerate() {
            let id = format!("rb-{}", i + 1);
            let started = format!(
                r#""rollback_id":"{id}","profile":"p","key":"p@v2","version_from":"v2","target_version":"v1","level":null,"reason":"r","explanation":"e","firing":["x"],"approval_id":null"#
            );
            line(10 + 10 * i as i64, "rollback_started", &started);
            let finished =
                format!(r#""rollback_id":"{id}","result":"{result}","duration_ms":1,"version_to":null,"error":null"#);
            line(11 + 10 * i as i64, "rollback_finished", &finished);
        }
        let started = r#""rollback_id":"rb-5","profile":"p","key":"p@v2","version_from":"v2","target_version":"v1","level":null,"reason":"r","explanation":"e","firing":["x"],"approval_id":null"#;
        line(100, "rollback_started", started);
        drop(f);
        let to: Vec<(String, Option<String>, String)> =
            entries(&state(&path).unwrap()).iter().map(|e| (e.result.clone(), e.version_to.clone(), e.to())).collect();
        let v1 = || Some("v1".to_string());
        assert_eq!(
            to,
            vec![
                ("interrupted".into(), None, "v1 not confirmed".into()),
                ("failed".into(), None, "v1 not reached".into()),
                ("completed".into(), None, "v1 not confirmed".into()),
                ("unverified".into(), None, "v1 not confirmed".into()),
                ("in_flight".into(), v1(), "v1".into()),
            ]
        );
    }
}
