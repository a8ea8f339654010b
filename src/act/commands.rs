//! Operator commands, from the API or the command line: approve and reject approvals, pause
//! and resume acting, silence rules, mark versions good or bad, report deploys. Each answers
//! with what it did, or why it did nothing; each change is journalled with who asked.

use tokio::sync::oneshot;

use super::core::Core;
use super::event::*;
use super::gate::Start;
use super::ledger::RecordError;
use crate::time::{Span, iso};

/// A request from the API or the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Approve {
        id: String,
        by: String,
    },
    Reject {
        id: String,
        by: String,
        reason: String,
    },
    Pause {
        for_: Option<Span>,
    },
    Resume,
    Silence {
        rule: String,
        for_: Span,
    },
    Unsilence {
        rule: String,
    },
    /// An operator's correction of what a version is.
    Mark {
        version: String,
        state: Mark,
        by: String,
        reason: String,
    },
    /// A pipeline (or a person) reports a deploy.
    Deployed {
        version: String,
        source: DeploySource,
    },
    /// What only people know about a rollback (among replicas: recorded by the leader).
    Annotate {
        id: String,
        root_cause: String,
    },
}

/// A command with where to send its answer.
pub type CommandRequest = (Command, oneshot::Sender<Result<String, String>>);

impl Core {
    /// Carries out a command; `Ok(Err(why))` when it was refused.
    pub fn command(&mut self, cmd: Command) -> Result<Result<String, String>, RecordError> {
        let now = self.clock.now();
        if !self.leads() {
            let why = self.lead.standby.clone().unwrap_or_default();
            return Ok(Err(format!("not done here: this replica is {why}")));
        }
        match cmd {
            Command::Approve { id, by } => {
                let Some((_, a)) = self.state.approvals.get(&id).cloned() else {
                    return Ok(Err(self.no_open_approval(&id)));
                };
                if a.version != self.state.versions.current {
                    self.close_approval(now, id.clone(), Closed::Stale, Some(by), None)?;
                    return Ok(Err(format!(
                        "stale: the deployed version changed from {} to {} since approval {id} opened; nothing done",
                        a.version.as_deref().unwrap_or("unknown"),
                        self.state.versions.current.as_deref().unwrap_or("unknown")
                    )));
                }
                tracing::warn!(approval = %id, by, "approved");
                self.announce_answer(&a, "approval_granted", &by, None);
                let started =
                    self.try_start(now, Start::from_approval(&a), Some((id.clone(), Closed::Granted, Some(by))))?;
                Ok(started.map(|rb| format!("approval {id} granted: rollback {rb} started")))
            }
            Command::Reject { id, by, reason } => {
                let Some((_, a)) = self.state.approvals.get(&id).cloned() else {
                    return Ok(Err(self.no_open_approval(&id)));
                };
                tracing::warn!(approval = %id, by, reason, "rejected");
                self.close_approval(now, id.clone(), Closed::Rejected, Some(by.clone()), Some(reason.clone()))?;
                self.announce_answer(&a, "approval_rejected", &by, Some(&reason));
                self.rejected.insert((a.profile.clone(), a.version.clone()));
                Ok(Ok(format!(
                    "approval {id} rejected by {by}; {} is not asked about again until its decision clears or the version changes",
                    a.profile
                )))
            }
            Command::Pause { for_ } => {
                let until = for_.map(|d| now.plus(d));
                self.record(now, Event::Paused(Paused { until }))?;
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
                self.record(now, Event::Resumed(Resumed::default()))?;
                tracing::info!("resumed");
                Ok(Ok("resumed".into()))
            }
            Command::Silence { rule, for_ } => {
                let known: Vec<&str> =
                    self.acting.plans.values().flat_map(|p| p.rules.iter().map(String::as_str)).collect();
                if !known.contains(&rule.as_str()) {
                    let hint = crate::diag::did_you_mean(&rule, known.iter().copied());
                    return Ok(Err(format!("no rule named {rule:?}{hint}")));
                }
                let until = now.plus(for_);
                self.record(now, Event::Silenced(Silenced { rule: rule.clone(), until: Some(until) }))?;
                Ok(Ok(format!("{rule} silenced until {}", iso(until))))
            }
            Command::Unsilence { rule } => {
                if !self.state.silences.contains_key(&rule) {
                    return Ok(Err(format!("{rule} is not silenced")));
                }
                self.record(now, Event::Unsilenced(Silenced { rule: rule.clone(), until: None }))?;
                Ok(Ok(format!("{rule} unsilenced")))
            }
            Command::Mark { version, state, by, reason } => {
                if version.trim().is_empty() {
                    return Ok(Err("say which version".into()));
                }
                // Only a version that was deployed here: a typo must not become a rollback target.
                if self.state.versions.get(&version).is_none() {
                    let known: Vec<&str> = self.state.versions.list().map(|v| v.version.as_str()).collect();
                    let hint = crate::diag::did_you_mean(&version, known.iter().copied());
                    let forgotten = match self.state.versions.forgotten() {
                        0 => String::new(),
                        n => format!(
                            "; {n} older versions without a verdict are forgotten (deployed before the last {})",
                            super::versions::RECENT_VERSIONS
                        ),
                    };
                    return Ok(Err(format!(
                        "no deploy of {version:?} is recorded{hint} (known: {}{forgotten}); nothing marked",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    )));
                }
                tracing::warn!(version, ?state, by, reason, "version marked");
                let m = VersionMarked { version: version.clone(), state, by: by.clone(), reason };
                self.record(now, Event::VersionMarked(m))?;
                let target = self.state.versions.target().unwrap_or("none").to_string();
                let state = serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string));
                Ok(Ok(format!(
                    "{version} marked {} by {by}; the rollback target is now {target}",
                    state.unwrap_or_default()
                )))
            }
            Command::Annotate { id, root_cause } => {
                if root_cause.trim().is_empty() {
                    return Ok(Err("say what the root cause was".into()));
                }
                if !self.state.rollbacks.iter().any(|r| r.started.rollback_id == id) {
                    let known: Vec<&str> =
                        self.state.rollbacks.iter().map(|r| r.started.rollback_id.as_str()).collect();
                    return Ok(Err(format!("no rollback {id:?} (known: {})", known.join(", "))));
                }
                self.record(now, Event::Annotated(Annotated { rollback_id: id.clone(), root_cause }))?;
                Ok(Ok(format!("{id}: root cause recorded")))
            }
            Command::Deployed { version, source } => {
                if version.trim().is_empty() {
                    return Ok(Err("a deploy names its version: {\"version\": \"v2\"}".into()));
                }
                if self.deployed(now, &version, source)? {
                    Ok(Ok(format!("deploy of {version} recorded; its evidence starts now")))
                } else {
                    Ok(Ok(format!("{version} is already the deployed version; nothing changed")))
                }
            }
        }
    }

    /// Tells every channel how approval `a` was answered (in its thread), and by whom.
    fn announce_answer(&mut self, a: &ApprovalOpened, template: &str, by: &str, rejection: Option<&str>) {
        let target = self.state.versions.target();
        let mut vars = super::vars::approval(&self.acting, &Start::from_approval(a), a.outcome, &a.approval_id, target);
        vars.insert("by".into(), by.to_string());
        if let Some(r) = rejection {
            vars.insert("rejection".into(), r.to_string());
        }
        self.out.announce(template, &vars);
    }

    fn no_open_approval(&self, id: &str) -> String {
        if let Some(c) = self.state.closed_approval(id) {
            let by = c.closed.by.as_deref().map(|b| format!(" by {b}")).unwrap_or_default();
            return format!("approval {id} is closed ({}{by} at {})", c.closed.how, iso(c.closed_at));
        }
        let open: Vec<&String> = self.state.approvals.keys().collect();
        format!("no open approval {id:?} (open: {open:?})")
    }
}
