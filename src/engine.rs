//! The live pipeline: pollers → observations → window store → evaluator on wall-clock ticks →
//! decisions, logged and journalled when they change. The evaluator is the same one `test`
//! replays; only the clock and the source of samples differ. `run(…, shutdown)` returns once
//! shutdown is signalled, with the journal flushed.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::config::deploy::Config;
use crate::journal::{Journal, JournalError};
use crate::rules::{Evaluator, Tick};
use crate::source::poller::{http_client, run_target};
use crate::source::{SourceError, Target, TargetSeries};
use crate::time::Clock;

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] SourceError),
}

/// Runs until `shutdown` becomes true. `events`, when given, receives every tick (tests, demo).
pub async fn run(
    config: &Config,
    mut ev: Evaluator,
    targets: Vec<Target>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
    events: Option<mpsc::UnboundedSender<Tick>>,
) -> Result<(), EngineError> {
    let mut journal = Journal::open(&config.state_dir)?;
    let client = http_client()?;
    let (tx, mut rx) = mpsc::channel(1024);
    let (stop_pollers, pollers_shutdown) = watch::channel(false);
    for t in targets {
        tokio::spawn(run_target(t, client.clone(), clock.clone(), tx.clone(), pollers_shutdown.clone()));
    }
    drop(tx);
    let names: Vec<&str> = ev.profiles.iter().map(|p| p.name.as_str()).collect();
    journal.append(clock.now(), "started", &serde_json::json!({ "profiles": names }))?;
    tracing::info!(profiles = ?names, state_dir = %config.state_dir.display(), "rollwatch started");

    let mut series = TargetSeries::default();
    let mut ticker = tokio::time::interval(config.eval_interval.as_std());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last: Vec<Option<(String, String)>> = vec![None; ev.profiles.len()];
    loop {
        tokio::select! {
            Some(obs) = rx.recv() => series.apply(&obs, ev.store_mut()),
            _ = ticker.tick() => {
                let now = clock.now();
                let tick = ev.tick(now);
                for t in &tick.transitions {
                    tracing::info!(rule = %t.rule, from = %t.from, to = %t.to, value = ?t.value, "rule state changed");
                    journal.append(now, "transition", t)?;
                }
                for (i, d) in tick.decisions.iter().enumerate() {
                    let summary = (d.outcome.to_string(), d.explanation());
                    if last[i].as_ref() != Some(&summary) {
                        tracing::info!(profile = %d.profile, outcome = %d.outcome, explanation = %summary.1, "decision");
                        journal.append(now, "decision", d)?;
                        last[i] = Some(summary);
                    }
                }
                if let Some(events) = &events {
                    let _ = events.send(tick);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = stop_pollers.send(true);
    journal.append(clock.now(), "stopped", &serde_json::json!({}))?;
    tracing::info!("rollwatch stopped");
    Ok(())
}
