//! The dispatcher: the acting [`Core`] and its [`Executor`] together, as the engine (and the
//! acting tests) drive them. Each input goes to the core, then the effects it queued go to the
//! executor, in order; the evidence restarts among them the executor hands back, and the input
//! returns them to its caller ([`Acted::restart`]; at start, [`Dispatcher::new`]), which applies
//! them to the evidence at once.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::core::Core;
pub use super::core::{ActingStatus, RecentEscalation};
use super::effect::{Asks, Restart};
use super::executor::Executor;
pub use super::inflight::Phase;
use super::ledger::{Ledger, RecordError};
use super::plan::Acting;
use super::procedure::ProcedureNews;
use crate::coord::Update;
use crate::notify::Notifier;
use crate::rules::{Decision, Transition};
use crate::time::{Clock, Timestamp};

/// Turns decisions into procedures: the core decides, the executor acts.
pub struct Dispatcher {
    core: Core,
    exec: Executor,
}

/// What an input left for its caller: its result, and where the evidence must restart when the
/// input decided so — also when it failed part way (what was recorded before the failure
/// stands).
#[derive(Debug)]
#[must_use = "a restart of the evidence must reach the evidence"]
pub struct Acted<T = ()> {
    pub result: Result<T, RecordError>,
    /// The last evidence restart the input's effects asked for: no evaluation runs between an
    /// input's restarts, so the evidence restarts once, at the last.
    pub restart: Option<Restart>,
    /// Read the version source now: a decision waits to know which version it is about.
    pub read_version: bool,
    /// Evaluate now: the version reading a decision waited for came.
    pub evaluate: bool,
}

impl<T> Acted<T> {
    fn of(result: Result<T, RecordError>, asks: Asks) -> Acted<T> {
        Acted { result, restart: asks.restart, read_version: asks.read_version, evaluate: asks.evaluate }
    }

    /// The input's result, for callers without evidence (the acting tests, benchmarks).
    pub fn result(self) -> Result<T, RecordError> {
        self.result
    }

    /// The input's result apart, and what its effects ask of the caller.
    pub fn answer(self) -> (Result<T, RecordError>, Acted) {
        let asks = Asks { restart: self.restart, read_version: self.read_version, evaluate: self.evaluate };
        (self.result, Acted::of(Ok(()), asks))
    }
}

impl Acted {
    /// An input that failed and asked nothing else.
    pub fn failed(e: RecordError) -> Acted {
        Acted::of(Err(e), Asks::default())
    }
}

impl Dispatcher {
    /// Restores the state from the journal's `lines` and reports any rollback found started
    /// but unfinished (escalated S1, never re-run). The receiver yields the procedures' news;
    /// the restart is where the evidence starts (the journalled deploy), if known.
    pub fn new(
        acting: Acting,
        notifier: Notifier,
        ledger: Ledger,
        client: reqwest::Client,
        clock: Arc<dyn Clock>,
        lines: &[serde_json::Value],
    ) -> Result<(Dispatcher, mpsc::UnboundedReceiver<ProcedureNews>, Option<Restart>), RecordError> {
        let (exec, news) = Executor::new(notifier, ledger.clone(), client, clock.clone());
        let core = Core::new(acting, ledger, clock, lines);
        let mut d = Dispatcher { core, exec };
        let restart = d.execute().restart;
        Ok((d, news, restart))
    }

    /// Hands what the core queued to the executor; returns what the effects ask of the caller.
    fn execute(&mut self) -> Asks {
        let effects = self.core.take_effects();
        if effects.is_empty() {
            return Asks::default();
        }
        self.exec.apply(effects)
    }

    /// Runs `input` on the core, then its effects (also when it failed part way).
    fn with<T>(&mut self, input: impl FnOnce(&mut Core) -> Result<T, RecordError>) -> Acted<T> {
        let result = input(&mut self.core);
        Acted::of(result, self.execute())
    }

    /// Runs an input that cannot restart the evidence (rollwatch's own failure: acting stops,
    /// what was seen stays), then its effects.
    fn without_restart(&mut self, input: impl FnOnce(&mut Core)) {
        input(&mut self.core);
        let asks = self.execute();
        debug_assert!(asks.restart.is_none(), "an input that stops acting restarted the evidence");
    }

    /// Takes a reloaded config's actions, policy, plans and channels; state and the rollback
    /// in flight stay.
    pub fn reconfigure(&mut self, acting: Acting, notifier: Notifier) {
        self.core.reconfigure(acting);
        self.exec.reconfigure(notifier);
    }

    /// At a stop: see [`Executor::stop`].
    pub async fn stop(&mut self, flush: std::time::Duration) {
        let running = self.core.steps_running();
        self.exec.stop(flush, running).await;
    }

    /// Journals a tick's rule state changes and the decisions that changed.
    pub fn note_tick(&self, transitions: &[Transition], changed: &[&Decision]) {
        self.exec.note_tick(transitions, changed);
    }

    pub fn on_tick(&mut self, now: Timestamp, decisions: &[Decision]) -> Acted {
        self.with(|c| c.on_tick(now, decisions))
    }

    pub fn on_version_observed(&mut self, now: Timestamp, version: &str) -> Acted {
        self.with(|c| c.on_version_observed(now, version))
    }

    pub fn on_version_unreadable(&mut self, now: Timestamp) -> Acted {
        self.with(|c| {
            c.on_version_unreadable(now);
            Ok(())
        })
    }

    /// News from the running procedure.
    pub fn on_news(&mut self, news: ProcedureNews) -> Acted {
        self.with(|c| c.on_news(news))
    }

    pub fn command(&mut self, cmd: super::Command) -> Acted<Result<String, String>> {
        self.with(|c| c.command(cmd))
    }

    pub fn on_coord(&mut self, update: Update) -> Acted {
        self.with(|c| c.on_coord(update))
    }

    pub fn journal_failed(&mut self, now: Timestamp, error: &str) {
        self.without_restart(|c| c.journal_failed(now, error));
    }

    pub fn stand_down(&mut self, reason: &str) {
        self.without_restart(|c| c.stand_down(reason));
    }

    pub fn journal_error(&self) -> Option<&str> {
        self.core.journal_error()
    }

    pub fn leads(&self) -> bool {
        self.core.leads()
    }

    pub fn standby(&self) -> Option<&str> {
        self.core.standby()
    }

    pub fn steps_running(&self) -> bool {
        self.core.steps_running()
    }

    pub fn now(&self) -> Timestamp {
        self.core.now()
    }

    pub fn silenced(&self, now: Timestamp) -> Vec<String> {
        self.core.silenced(now)
    }

    pub fn status(&self) -> ActingStatus {
        self.core.status()
    }

    pub fn notifier(&self) -> &Notifier {
        self.exec.notifier()
    }
}
