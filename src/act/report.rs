//! `rollwatch report`: the runbook's incident report for one rollback, filled from the journal —
//! severity, level, versions, durations (the rollback's and the users'), verification, the
//! escalations, the root cause (`annotate`) and a timeline from the deploy to the verdict.
//! Pure: it reads journal lines and the rules' severities; the command reads the journal.

use std::collections::BTreeMap;

use serde::Serialize;

use super::event::{Event, RollbackStarted};
use crate::template::markdown;
use crate::time::{Span, Timestamp, human, iso};

/// One rollback's incident report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub rollback_id: String,
    pub profile: String,
    /// The highest severity among the rules behind the decision (`critical`, `warning`, `info`).
    pub severity: Option<String>,
    /// The procedure level run (`fast`, `full`, …).
    pub level: Option<String>,
    pub reason: String,
    pub explanation: String,
    pub rules: Vec<String>,
    /// The version rolled back from, and to.
    pub version_from: Option<String>,
    pub target_version: Option<String>,
    pub version_to: Option<String>,
    /// `completed`, `failed`, `issue_persists`, `unverified`, `interrupted`, or `in_flight`.
    pub result: String,
    pub error: Option<String>,
    pub started_at: Timestamp,
    /// Rollback start to its end (verification included).
    pub duration_seconds: Option<f64>,
    /// From the first sign of the issue (a rule behind the decision pending or firing) to the
    /// verified recovery; to the end of the rollback when it was not verified.
    pub user_impact_seconds: Option<f64>,
    /// Each step: `1 run undo: ok, exit status 0`.
    pub steps: Vec<String>,
    pub escalations: Vec<String>,
    pub approved_by: Option<String>,
    pub root_cause: Option<String>,
    pub timeline: Vec<Moment>,
    /// A fleet's deployment it was of (set by the caller, who knows the config).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Moment {
    pub at: Timestamp,
    pub what: String,
}

/// Why no report could be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no rollback {id:?} in the journal (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    Unknown { id: String, known: Vec<String> },
}

/// Severities from most to least severe.
const SEVERITY_ORDER: &[&str] = &["critical", "warning", "info"];

/// The report for rollback `id` from the journal's `lines` (in order); `severities` maps rule
/// names to their severity.
pub fn incident(
    lines: &[serde_json::Value],
    id: &str,
    severities: &BTreeMap<String, String>,
) -> Result<Incident, ReportError> {
    let events: Vec<(Timestamp, Event)> = lines.iter().filter_map(|l| Event::read(l).ok()).collect();
    let Some((start_at, started)) = events.iter().find_map(|(at, e)| match e {
        Event::RollbackStarted(s) if s.rollback_id == id => Some((*at, s.clone())),
        _ => None,
    }) else {
        let known = events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::RollbackStarted(s) => Some(s.rollback_id.clone()),
                _ => None,
            })
            .collect();
        return Err(ReportError::Unknown { id: id.to_string(), known });
    };
    let mut timeline = Vec::new();
    let at_of = |l: &serde_json::Value| Timestamp(l["at"].as_i64().unwrap_or(0));

    // The deploy of the version rolled back from: where the incident starts.
    let deployed = events.iter().rev().find_map(|(at, e)| match e {
        Event::Deploy(d) if *at <= start_at && Some(&d.to) == started.version_from.as_ref() => Some((*at, d)),
        _ => None,
    });
    let since = deployed.map_or(Timestamp(i64::MIN), |(at, _)| at);
    if let Some((at, d)) = deployed {
        let from = d.from.as_deref().map(|f| format!(" over {f}")).unwrap_or_default();
        timeline.push(Moment { at, what: format!("deployment of {}{from} ({})", d.to, source_name(&d.source)) });
    }
    // The first sign: a rule behind the decision going pending or firing after the deploy.
    let detected = lines.iter().find(|l| {
        l["event"] == "transition"
            && at_of(l) >= since
            && at_of(l) <= start_at
            && l["rule"].as_str().is_some_and(|r| started.firing.iter().any(|f| f == r))
            && (l["to"] == "pending" || l["to"] == "firing")
    });
    if let Some(l) = detected {
        let rule = l["rule"].as_str().unwrap_or("?");
        let value = l["value"]
            .as_f64()
            .map(|v| format!(" (value {})", crate::template::show(rule, Some(v))))
            .unwrap_or_default();
        timeline.push(Moment {
            at: at_of(l),
            what: format!(
                "issue detected: rule {} {}{value}",
                l["rule"].as_str().unwrap_or("?"),
                l["to"].as_str().unwrap_or("?")
            ),
        });
    }
    let decided = lines.iter().find(|l| {
        l["event"] == "decision"
            && l["profile"] == started.profile.as_str()
            && l["outcome"] != "monitor"
            && at_of(l) >= since
            && at_of(l) <= start_at
    });
    if let Some(l) = decided {
        timeline.push(Moment {
            at: at_of(l),
            what: format!("decision: {} — {}", l["outcome"].as_str().unwrap_or("?"), started.explanation),
        });
    }

    let mut steps = Vec::new();
    let mut escalations = Vec::new();
    let mut finished = None;
    let mut root_cause = None;
    let mut approved_by = None;
    let mut last_step_at = None;
    let mut numbers = super::history::StepNumbers::default();
    for (at, e) in &events {
        match e {
            Event::ApprovalOpened(a) if Some(&a.approval_id) == started.approval_id.as_ref() => {
                timeline.push(Moment { at: *at, what: format!("approval {} requested", a.approval_id) });
            }
            Event::ApprovalClosed(c) if Some(&c.approval_id) == started.approval_id.as_ref() => {
                let by = c.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
                approved_by = c.by.clone();
                timeline.push(Moment { at: *at, what: format!("approval {} {}{by}", c.approval_id, c.how) });
            }
            Event::RollbackStarted(s) if s.rollback_id == id => {
                let level = s.level.as_deref().map(|l| format!(", level {l}")).unwrap_or_default();
                let target = s.target_version.as_deref().map(|t| format!(" to {t}")).unwrap_or_default();
                timeline.push(Moment { at: *at, what: format!("rollback {id} initiated{target}{level}") });
            }
            Event::StepFinished(s) if s.rollback_id == id => {
                let line = numbers.line(s);
                timeline.push(Moment { at: *at, what: format!("step {line}") });
                steps.push(line);
                last_step_at = Some(*at);
            }
            Event::Escalation(x) if x.rollback_id.as_deref() == Some(id) => {
                let line = format!("{}: {}", x.severity, x.finding);
                timeline.push(Moment { at: *at, what: format!("escalation {line}") });
                escalations.push(line);
            }
            Event::RollbackFinished(f) if f.rollback_id == id => {
                if let Some(steps_at) = last_step_at {
                    timeline.insert(
                        timeline.iter().position(|m| m.at > steps_at).unwrap_or(timeline.len()),
                        Moment { at: steps_at, what: "rollback complete (steps done)".into() },
                    );
                }
                let what = match f.result.key() {
                    "completed" => format!(
                        "verification complete: recovered{}",
                        f.version_to.as_deref().map(|v| format!(", {v} running")).unwrap_or_default()
                    ),
                    other => format!(
                        "rollback ended: {other}{}",
                        f.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                };
                timeline.push(Moment { at: *at, what });
                finished = Some((*at, f.clone()));
            }
            Event::Annotated(a) if a.rollback_id == id => root_cause = Some(a.root_cause.clone()),
            // Every hold between the issue and the rollback (cooldown, pause, silence, …).
            Event::Suppressed(x) if x.profile == started.profile && *at >= since && *at <= start_at => {
                timeline.push(Moment { at: *at, what: format!("held back: {}", x.reason) });
            }
            // A deploy while the rollback ran or was verified (it supersedes the verification).
            Event::Deploy(d) if *at > start_at && finished.is_none() => {
                timeline.push(Moment { at: *at, what: format!("deployment of {} ({})", d.to, source_name(&d.source)) });
            }
            _ => {}
        }
    }
    timeline.sort_by_key(|m| m.at);

    let severity = severity_of(&started, severities);
    let end = finished.as_ref().map(|(at, _)| *at);
    let impact_from = detected.map(at_of).or(decided.map(at_of)).unwrap_or(start_at);
    Ok(Incident {
        rollback_id: id.to_string(),
        profile: started.profile.clone(),
        severity,
        level: started.level.clone(),
        reason: started.reason.clone(),
        explanation: started.explanation.clone(),
        rules: started.firing.clone(),
        version_from: started.version_from.clone(),
        target_version: started.target_version.clone(),
        version_to: finished.as_ref().and_then(|(_, f)| f.version_to.clone()),
        result: finished.as_ref().map_or("in_flight", |(_, f)| f.result.key()).to_string(),
        error: finished.as_ref().and_then(|(_, f)| f.error.clone()),
        started_at: start_at,
        duration_seconds: finished.as_ref().map(|(_, f)| f.duration_ms as f64 / 1000.0),
        user_impact_seconds: end.map(|end| end.saturating_since(impact_from).0 as f64 / 1000.0),
        steps,
        escalations,
        approved_by,
        root_cause,
        timeline,
        deployment: None,
    })
}

fn source_name(source: &super::event::DeploySource) -> String {
    serde_json::to_value(source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// The most severe of the deciding rules' severities.
fn severity_of(started: &RollbackStarted, severities: &BTreeMap<String, String>) -> Option<String> {
    started
        .firing
        .iter()
        .filter_map(|r| severities.get(r))
        .min_by_key(|s| SEVERITY_ORDER.iter().position(|o| o == s).unwrap_or(SEVERITY_ORDER.len()))
        .cloned()
}

impl Incident {
    /// The report as Markdown, after runbook 002's template. Every value is escaped
    /// ([`markdown`]): a version, a root cause or an error shows as the text it is and never
    /// becomes HTML, a heading, a table row or a line of its own.
    pub fn markdown(&self) -> String {
        let dash = |v: &Option<String>| v.as_deref().map_or_else(|| "—".into(), markdown);
        let secs = |s: Option<f64>| s.map_or("—".to_string(), |s| human(Span((s * 1000.0) as i64)));
        let result = markdown(&self.result.replace('_', " "));
        let mut out = format!("# Rollback Incident Report: {}\n\n", markdown(&self.rollback_id));
        out.push_str(&format!("**Date**: {}  \n", iso(self.started_at)));
        out.push_str(&format!("**Profile**: {}  \n", markdown(&self.profile)));
        out.push_str(&format!("**Severity**: {}  \n", dash(&self.severity)));
        out.push_str(&format!("**Rollback level**: {}  \n", dash(&self.level)));
        out.push_str(&format!("**Result**: {result}\n\n"));
        out.push_str("## Issue Description\n\n");
        out.push_str(&format!(
            "{}\n\nDecision: {}\n\nRules: {}\n\n",
            markdown(&self.reason),
            markdown(&self.explanation),
            markdown(&self.rules.join(", "))
        ));
        out.push_str("## Root Cause\n\n");
        out.push_str(&format!(
            "{}\n\n",
            self.root_cause.as_deref().map_or_else(
                // In a code span, where escapes are not read: the id is rollwatch's own (`rb-N`).
                || {
                    let deployment = self.deployment.as_ref().map(|d| format!(" --deployment {d}")).unwrap_or_default();
                    format!(
                        "Not recorded yet (`rollwatch annotate -c FILE{deployment} {} --root-cause ...`).",
                        self.rollback_id
                    )
                },
                markdown
            )
        ));
        out.push_str("## Rollback Details\n\n");
        out.push_str(&format!("- **Previous version**: {}\n", dash(&self.version_from)));
        out.push_str(&format!("- **Target version**: {}\n", dash(&self.target_version)));
        out.push_str(&format!("- **Version after**: {}\n", dash(&self.version_to)));
        out.push_str(&format!("- **Duration**: {}\n", secs(self.duration_seconds)));
        out.push_str(&format!("- **User impact duration**: {}\n", secs(self.user_impact_seconds)));
        if let Some(by) = &self.approved_by {
            out.push_str(&format!("- **Approved by**: {}\n", markdown(by)));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!("- **Error**: {}\n", markdown(e)));
        }
        out.push_str("\n## Verification Results\n\n");
        for s in &self.steps {
            out.push_str(&format!("- step {}\n", markdown(s)));
        }
        out.push_str(&format!("- verdict: {result}\n"));
        if !self.escalations.is_empty() {
            out.push_str("\n## Escalations\n\n");
            for e in &self.escalations {
                out.push_str(&format!("- {}\n", markdown(e)));
            }
        }
        out.push_str("\n## Timeline\n\n");
        for m in &self.timeline {
            out.push_str(&format!("- {} {}\n", clock_time(m.at), markdown(&m.what)));
        }
        out
    }
}

/// `HH:MM:SS` (UTC) of a timestamp.
fn clock_time(at: Timestamp) -> String {
    let iso = iso(at);
    iso.get(11..19).unwrap_or(&iso).to_string()
}
