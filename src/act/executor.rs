//! The executor: applies the acting core's [`Effect`]s in order — messages to the notifier,
//! notes to the journal, procedures to their own task (whose news comes back on one channel),
//! leadership moves to the coordinator — and owns the tasks it started.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::effect::{Asks, Effect};
use super::ledger::Ledger;
use super::procedure::{Procedure, ProcedureNews};
use crate::notify::Notifier;
use crate::rules::{Decision, Transition};
use crate::time::Clock;

/// What acting does to the world, and the tasks it started.
pub struct Executor {
    notifier: Notifier,
    ledger: Ledger,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    news: mpsc::UnboundedSender<ProcedureNews>,
    /// The running procedure's task, and notifiers replaced by a reload while they flush:
    /// joined at [`stop`](Self::stop).
    tasks: tokio::task::JoinSet<()>,
}

impl Executor {
    /// An executor and the receiver of its procedures' news.
    pub fn new(
        notifier: Notifier,
        ledger: Ledger,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> (Executor, mpsc::UnboundedReceiver<ProcedureNews>) {
        let (news, news_rx) = mpsc::unbounded_channel();
        (Executor { notifier, ledger, client, clock, news, tasks: tokio::task::JoinSet::new() }, news_rx)
    }

    /// Applies `effects` in order; returns what they ask of the evidence, the pollers and the
    /// evaluator (not the executor's: the dispatcher returns it to the input's caller).
    pub fn apply(&mut self, effects: Vec<Effect>) -> Asks {
        let mut asks = Asks::default();
        for effect in effects {
            match effect {
                Effect::Announce { template, vars } => self.notifier.announce(&template, &vars),
                Effect::Note { at, kind, data } => self.ledger.journal().note(at, kind, &data),
                Effect::Start(s) => {
                    let procedure = Procedure {
                        rollback_id: s.rollback_id,
                        steps: s.steps,
                        vars: s.vars,
                        actions: s.actions,
                        redactor: s.redactor,
                        notifier: self.notifier.clone(),
                        ledger: self.ledger.clone(),
                        term: s.term,
                        client: self.client.clone(),
                        clock: self.clock.clone(),
                        news: self.news.clone(),
                    };
                    self.spawn(procedure.run());
                }
                Effect::RestartEvidence(r) => asks.restart = Some(r),
                Effect::ReadVersion => asks.read_version = true,
                Effect::Evaluate => asks.evaluate = true,
                Effect::StepAside => {
                    if let Some(c) = self.ledger.coordinator() {
                        c.step_aside();
                    }
                }
                Effect::Rejoin => {
                    if let Some(c) = self.ledger.coordinator() {
                        c.rejoin();
                    }
                }
            }
        }
        asks
    }

    /// A reloaded config's channels: the old ones finish what they were sending (a few
    /// seconds), then stop.
    pub fn reconfigure(&mut self, notifier: Notifier) {
        let old = std::mem::replace(&mut self.notifier, notifier);
        self.spawn(async move {
            old.flush(std::time::Duration::from_secs(3)).await;
            old.stop().await;
        });
    }

    /// Spawns a task the executor owns (reaping those already done).
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(tracing::Instrument::in_current_span(task));
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Journals a tick's rule state changes and the decisions that changed (records: they do
    /// not wait for the disk), and logs them.
    pub fn note_tick(&self, transitions: &[Transition], changed: &[&Decision]) {
        for t in transitions {
            tracing::info!(rule = %t.rule, from = %t.from, to = %t.to, value = ?t.value, "rule state changed");
            self.ledger.journal().note_dated("transition", t);
        }
        for d in changed {
            tracing::info!(profile = %d.profile, outcome = %d.outcome, explanation = %d.explained(), "decision");
            self.ledger.journal().note_dated("decision", d);
        }
    }

    /// At a stop, after the running steps were given their grace: gives queued notifications
    /// `flush` to go out, journals the rest as not sent, ends every task it started (a
    /// procedure still running, `steps_running`, is cut off: the next start reports it
    /// interrupted) and waits for them.
    pub async fn stop(&mut self, flush: std::time::Duration, steps_running: bool) {
        self.notifier.flush(flush).await;
        self.notifier.stop().await;
        if steps_running {
            self.tasks.abort_all();
        }
        let wait = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(flush, wait).await.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}
