//! `rollwatch history` and `annotate`: the rollback history with runbook 004's fields (date,
//! version_from, version_to, reason, duration, root_cause), read back from the journal, and
//! root causes appended to it.

use std::path::Path;

use serde::Serialize;

use super::dispatch::iso;
use super::state::{Annotated, State};
use crate::journal::{Journal, JournalError};
use crate::time::Timestamp;

/// One rollback, as runbook 004's history records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub id: String,
    pub date: String,
    pub profile: String,
    pub version_from: Option<String>,
    pub version_to: Option<String>,
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
}

impl Entry {
    /// One line for people: `rb-1 api v1.2.4 → v1.2.3, completed in 2m 5s: Is error rate > 5% (…)`.
    pub fn summary(&self) -> String {
        format!(
            "{} {} {} → {}, {} in {}: {}",
            self.id,
            self.profile,
            self.version_from.as_deref().unwrap_or("?"),
            self.version_to.as_deref().unwrap_or("?"),
            self.result,
            self.duration.as_deref().unwrap_or("-"),
            self.reason
        )
    }
}

/// The history in the journal at `path`, oldest first.
pub fn read(path: &Path) -> Result<Vec<Entry>, JournalError> {
    let lines = Journal::read_back(path)?;
    let (state, _) = State::restore(&lines);
    Ok(entries(&state))
}

pub fn entries(state: &State) -> Vec<Entry> {
    state
        .rollbacks
        .iter()
        .map(|r| {
            let finished = r.finished.as_ref().map(|(_, f)| f);
            Entry {
                id: r.started.rollback_id.clone(),
                date: iso(r.at),
                profile: r.started.profile.clone(),
                version_from: r.started.version_from.clone(),
                version_to: finished.and_then(|f| f.version_to.clone()).or_else(|| r.started.target_version.clone()),
                reason: r.started.reason.clone(),
                result: finished.map_or("in_flight", |f| f.result.key()).to_string(),
                duration_minutes: finished.map(|f| (f.duration_ms as f64 / 60_000.0 * 10.0).round() / 10.0),
                duration: finished.map(|f| super::dispatch::human(crate::time::Span(f.duration_ms))),
                steps: r
                    .steps_done
                    .iter()
                    .map(|s| {
                        let ok = if s.ok == Some(true) { "ok" } else { "FAILED" };
                        format!("{} {} {}: {ok}, {}", s.step, s.role, s.action, s.detail.as_deref().unwrap_or(""))
                    })
                    .collect(),
                root_cause: r.root_cause.clone(),
                error: finished.and_then(|f| f.error.clone()),
            }
        })
        .collect()
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
    journal.append(at, "annotated", &Annotated { rollback_id: id.to_string(), root_cause: root_cause.to_string() })?;
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
