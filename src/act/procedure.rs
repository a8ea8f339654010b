//! One rollback's steps, run in their own task so the engine keeps evaluating meanwhile: each
//! `run` (and its `verify`) is journalled as started, run, and journalled as finished — the
//! finished line fsynced before the next step begins. Announcements are queued, never awaited.
//! The first failed step ends the procedure.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::action::Action;
use super::event::{Event, Role, StepEvent};
use super::steps::Step;
use crate::journal::SharedJournal;
use crate::notify::Notifier;
use crate::template::Vars;
use crate::time::Clock;

/// A step that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub step: usize,
    pub action: String,
    pub error: String,
}

/// What the task reports when it ends.
#[derive(Debug)]
pub struct ProcedureDone {
    pub rollback_id: String,
    pub result: Result<(), StepFailure>,
}

/// Everything a procedure task needs.
pub struct Procedure {
    pub rollback_id: String,
    /// The steps before verification (everything up to the last `run`).
    pub steps: Vec<Step>,
    pub vars: Vars,
    pub actions: Arc<BTreeMap<String, Action>>,
    /// Applied to each action's output and detail before they are journalled or logged.
    pub redactor: crate::secret::Redactor,
    pub notifier: Notifier,
    pub journal: SharedJournal,
    pub client: reqwest::Client,
    pub clock: Arc<dyn Clock>,
}

impl Procedure {
    /// Runs the steps in order and reports on `done`.
    pub async fn run(self, done: mpsc::UnboundedSender<ProcedureDone>) {
        let result = self.steps().await;
        let _ = done.send(ProcedureDone { rollback_id: self.rollback_id.clone(), result });
    }

    async fn steps(&self) -> Result<(), StepFailure> {
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            match step {
                Step::Announce { template, .. } => self.notifier.announce(template, &self.vars),
                Step::Run { action, verify, .. } => {
                    self.one(n, action, Role::Run).await?;
                    if let Some(v) = verify {
                        self.one(n, v, Role::Verify).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn one(&self, step: usize, name: &str, role: Role) -> Result<(), StepFailure> {
        let fail = |error: String| StepFailure { step, action: name.to_string(), error };
        let action = self.actions.get(name).ok_or_else(|| fail(format!("no action named {name:?}")))?;
        // An explicit target must be known: an undo "to the previous version" run twice flips
        // back to the bad one.
        let names_target =
            |t: &&str| crate::template::placeholders(t).is_ok_and(|names| names.contains(&"target_version"));
        if action.templates().iter().any(names_target) && self.vars.get("target_version").is_none_or(|v| v == "unknown")
        {
            return Err(fail("the step names {{target_version}} but no last-good version is recorded".into()));
        }
        let mut event = StepEvent {
            rollback_id: self.rollback_id.clone(),
            step,
            action: name.to_string(),
            role,
            ok: None,
            detail: None,
            output: None,
            duration_ms: None,
        };
        self.journal
            .append_event_async(self.clock.now(), &Event::StepStarted(event.clone()))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(rollback = %self.rollback_id, step, action = name, %role, "step started");
        let mut result = action.run(&self.vars, &self.client).await;
        result.output = super::action::redact_and_cap(&self.redactor, &result.output);
        result.detail = super::action::redact_and_cap(&self.redactor, &result.detail);
        event.ok = Some(result.ok);
        event.detail = Some(result.detail.clone());
        event.output = Some(result.output.clone());
        event.duration_ms = Some(result.duration_ms);
        self.journal
            .append_event_async(self.clock.now(), &Event::StepFinished(event.clone()))
            .await
            .map_err(|e| fail(e.to_string()))?;
        if result.ok {
            tracing::info!(rollback = %self.rollback_id, step, action = name, %role, detail = %result.detail, "step succeeded");
            Ok(())
        } else {
            tracing::error!(rollback = %self.rollback_id, step, action = name, %role, detail = %result.detail, "step failed");
            Err(fail(result.detail))
        }
    }
}
