//! What the acting core asks of the world: its decisions as [`Effect`]s — announce a message,
//! journal a note, start a procedure's steps, restart the evaluator's evidence, step aside or
//! rejoin among replicas. The core queues them in [`Effects`]; the
//! [`Executor`](super::executor::Executor) applies them in order. Acting events are the one
//! exception: the core records them itself through the [`Ledger`](super::ledger::Ledger), because
//! an event counts only once it is durable and what follows in the core depends on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::action::Action;
use crate::config::procedures::Step;
use crate::template::Vars;
use crate::time::Timestamp;

/// The evaluator's evidence must restart at `at` (a deploy or a restore point); `predates`
/// when it is a deploy seen while watching (rules already firing then predate it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    pub at: Timestamp,
    pub predates: bool,
    /// The version deployed, when the restart is a deploy seen while watching (what a recording
    /// writes as its fixture's `[[deploy]]`).
    pub deployed: Option<String>,
}

/// A rollback's steps to run in their own task.
#[derive(Debug, Clone)]
pub struct StartSteps {
    pub rollback_id: String,
    /// The steps before verification (everything up to the last `run`).
    pub steps: Vec<Step>,
    pub vars: Vars,
    pub actions: Arc<BTreeMap<String, Action>>,
    /// Applied to each action's output and detail before they are journalled or logged.
    pub redactor: crate::secret::Redactor,
    /// The leadership term the rollback started under (replicas).
    pub term: Option<crate::coord::Term>,
}

/// One thing the core decided should happen outside it.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Tell every channel: a template and its values.
    Announce { template: String, vars: Vars },
    /// A journal note (not an acting event: it does not wait for the disk).
    Note { at: Timestamp, kind: &'static str, data: serde_json::Value },
    /// Run a rollback's steps.
    Start(Box<StartSteps>),
    /// Restart the evidence: not the executor's to apply — the input returns it to its caller
    /// ([`Acted::restart`](super::dispatch::Acted::restart)).
    RestartEvidence(Restart),
    /// Among replicas: leave the leadership to another (this one cannot keep its record).
    StepAside,
    /// Among replicas: stand for the leadership again.
    Rejoin,
    /// Read the version source now: a decision waits to know which version its issue is about
    /// (returned to the input's caller, [`Acted::read_version`](super::dispatch::Acted::read_version)).
    ReadVersion,
    /// Evaluate now: the version reading a decision waited for came (returned to the input's
    /// caller, [`Acted::evaluate`](super::dispatch::Acted::evaluate)).
    Evaluate,
}

/// What an input's effects ask of the evidence, the pollers and the evaluator: not the
/// executor's to apply, it hands them back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Asks {
    /// The last evidence restart asked for: no evaluation runs between an input's restarts, so
    /// the evidence restarts once, at the last.
    pub restart: Option<Restart>,
    pub read_version: bool,
    pub evaluate: bool,
}

/// The effects queued by one input, in order.
#[derive(Debug, Default)]
pub struct Effects(Vec<Effect>);

impl Effects {
    pub fn announce(&mut self, template: &str, vars: &Vars) {
        self.0.push(Effect::Announce { template: template.to_string(), vars: vars.clone() });
    }

    pub fn note(&mut self, at: Timestamp, kind: &'static str, data: serde_json::Value) {
        self.0.push(Effect::Note { at, kind, data });
    }

    pub fn push(&mut self, effect: Effect) {
        self.0.push(effect);
    }

    /// Every effect queued so far, oldest first; the queue is left empty.
    pub fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
