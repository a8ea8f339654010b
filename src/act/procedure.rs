//! One rollback's steps, run in their own task so the engine keeps evaluating meanwhile: each
//! `run` (and its `verify`) is journalled as started, run, and journalled as finished — the
//! finished line fsynced before the next step begins. Announcements are queued, never awaited.
//! The first failed step ends the procedure.

use std::collections::BTreeMap;

use serde::Serialize;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::action::Action;
use super::event::{Event, Role, StepEvent};
use crate::config::procedures::Step;
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

/// What a procedure task reports, in order, on its one channel: where each step is, each step
/// journalled as finished, and its end. The core applies each once (the only path by which a
/// step's result reaches the acting state).
#[derive(Debug)]
pub enum ProcedureNews {
    /// Step `step` (from 1) is now in `state`.
    Step {
        rollback_id: String,
        step: usize,
        state: StepState,
    },
    /// A step's `run` or `verify` journalled as finished at `at`.
    Finished {
        at: crate::time::Timestamp,
        event: StepEvent,
    },
    Done(ProcedureDone),
}

/// One step of a procedure in flight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepProgress {
    pub step: usize,
    /// `announce rollback_in_progress`, `run undo (verify check)`.
    pub what: String,
    pub state: StepState,
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Waiting,
    Running,
    Done,
    Failed,
}

/// Every step of `steps`, waiting.
pub fn progress(steps: &[Step]) -> Vec<StepProgress> {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| StepProgress {
            step: i + 1,
            what: crate::config::procedures::describe(s),
            state: StepState::Waiting,
        })
        .collect()
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
    pub ledger: super::ledger::Ledger,
    /// The leadership term the rollback started under (replicas): a step is recorded, and so
    /// run, only while that term lasts.
    pub term: Option<crate::coord::Term>,
    pub client: reqwest::Client,
    pub clock: Arc<dyn Clock>,
    /// Where the task reports ([`ProcedureNews`]).
    pub news: mpsc::UnboundedSender<ProcedureNews>,
}

impl Procedure {
    /// Runs the steps in order, reporting each on the news channel, and then its end.
    pub async fn run(self) {
        let result = self.steps().await;
        let _ = self.news.send(ProcedureNews::Done(ProcedureDone { rollback_id: self.rollback_id.clone(), result }));
    }

    fn set(&self, step: usize, state: StepState) {
        let _ = self.news.send(ProcedureNews::Step { rollback_id: self.rollback_id.clone(), step, state });
    }

    async fn steps(&self) -> Result<(), StepFailure> {
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            self.set(n, StepState::Running);
            match step {
                Step::Announce { template, .. } => self.notifier.announce(template, &self.vars),
                Step::Run { action, verify, .. } => {
                    let ran = match self.one(n, action, Role::Run).await {
                        Ok(()) => match verify {
                            Some(v) => self.one(n, v, Role::Verify).await,
                            None => Ok(()),
                        },
                        failed => failed,
                    };
                    if let Err(e) = ran {
                        self.set(n, StepState::Failed);
                        return Err(e);
                    }
                }
            }
            self.set(n, StepState::Done);
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
        // A lead just won or renewed late is certain for a moment only: wait for the next
        // renewal rather than commit a step that could not start.
        self.ledger.await_certain(self.term).await;
        let committed = crate::time::Stopwatch::start();
        self.ledger
            .append_event_async(self.clock.now(), &Event::StepStarted(event.clone()), self.term)
            .await
            .map_err(|e| fail(e.to_string()))?;
        // Where a test stalls a replica between the commit and the start (FAILPOINTS).
        fail::fail_point!("after-step-commit");
        // Fencing reaches only as far as etcd: the step itself starts only while the lease is
        // certain for longer than a margin, and only within it of the commit.
        if let Err(why) = self.ledger.may_start(self.term, committed) {
            let why = format!("not started: {why}");
            tracing::error!(rollback = %self.rollback_id, step, action = name, %role, why, "step not started");
            self.ledger.journal().note(
                self.clock.now(),
                "step_not_started",
                &serde_json::json!({"rollback_id": self.rollback_id, "step": step, "action": name, "role": role, "why": why}),
            );
            return Err(fail(why));
        }
        tracing::info!(rollback = %self.rollback_id, step, action = name, %role, "step started");
        let mut result = action.run(&self.vars, &self.client).await;
        result.output = super::action::redact_and_cap(&self.redactor, &result.output);
        result.detail = super::action::redact_and_cap(&self.redactor, &result.detail);
        event.ok = Some(result.ok);
        event.detail = Some(result.detail.clone());
        event.output = Some(result.output.clone());
        event.duration_ms = Some(result.duration_ms);
        let at = self.clock.now();
        self.ledger
            .append_event_async(at, &Event::StepFinished(event.clone()), self.term)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let _ = self.news.send(ProcedureNews::Finished { at, event: event.clone() });
        if result.ok {
            tracing::info!(rollback = %self.rollback_id, step, action = name, %role, detail = %result.detail, "step succeeded");
            Ok(())
        } else {
            tracing::error!(rollback = %self.rollback_id, step, action = name, %role, detail = %result.detail, "step failed");
            Err(fail(result.detail))
        }
    }
}
