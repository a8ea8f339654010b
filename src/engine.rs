//! The live pipeline: pollers → observations → window store → evaluator on wall-clock ticks →
//! decisions, logged and journalled when they change → the dispatcher, which acts on them;
//! alerts from the webhook become `ALERTS` series; approvals, pauses and silences arrive as
//! commands; a [`Snapshot`] after every tick feeds `/status` and `/metrics`. The evaluator is the
//! same one `test` replays; only the clock and the source of samples differ. [`run`] returns once
//! shutdown is signalled, with the journal flushed and queued notifications given a moment.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::act::action::Action;
use crate::act::event::Event;
use crate::act::{Acting, CommandRequest, Dispatcher, Plan};
use crate::config::deploy::Config;
use crate::journal::{Journal, JournalError, SharedJournal};
use crate::notify::{Channel, Console, Notifier};
use crate::rules::{Evaluator, Tick};
use crate::secret::{Env, Secret, process_env};
use crate::server::{self, Shared};
use crate::source::alertmanager::Alerts;
use crate::source::poller::{http_client, run_target};
use crate::source::{Observation, SourceError, Target, TargetSeries};
use crate::status::{RECENT, RuleStatus, Snapshot, TargetStatus};
use crate::time::{Clock, Stopwatch};

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Locked(#[from] crate::journal::LockError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] SourceError),
    #[error("{0}")]
    Config(crate::diag::Diagnostics),
}

/// How long a stop waits for a running rollback's steps (Kubernetes' default grace is 30 s).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Everything the engine runs with.
pub struct Parts {
    pub evaluator: Evaluator,
    pub targets: Vec<Target>,
    pub clock: Arc<dyn Clock>,
    /// Where to serve the own endpoints (bound by the caller); `None` serves nothing.
    pub listener: Option<TcpListener>,
    /// Bearer token required on the hook, when set.
    pub token: Option<Secret>,
    /// Receives every tick (tests, the demo).
    pub events: Option<mpsc::UnboundedSender<TickEvent>>,
    /// Each message reloads the config from its file (SIGHUP): a bad new config is reported and
    /// the old one kept; rule states carry over by rule name, the window store keeps its data.
    pub reload: Option<mpsc::Receiver<()>>,
    /// Records every tick's series and decisions (`rollwatch record`).
    pub recorder: Option<Arc<std::sync::Mutex<crate::record::Recorder>>>,
    /// Where `console` channels write.
    pub console: Console,
    /// Where channel and action secrets are read (also on reload).
    pub env: Env,
    /// Approvals, pauses and silences from elsewhere than the HTTP API (tests).
    pub commands: Option<mpsc::Receiver<CommandRequest>>,
    /// The state_dir's lock, when the caller took it already (before binding the listen port).
    pub lock: Option<crate::journal::StateLock>,
}

impl Parts {
    /// The usual parts: wall-clock time, no endpoints, no token, no observers.
    pub fn new(evaluator: Evaluator, targets: Vec<Target>) -> Parts {
        Parts {
            evaluator,
            targets,
            clock: Arc::new(crate::time::SystemClock),
            listener: None,
            token: None,
            events: None,
            reload: None,
            recorder: None,
            console: Console::Stdout,
            env: process_env(),
            commands: None,
            lock: None,
        }
    }
}

/// One evaluation as the engine saw it.
#[derive(Debug, Clone)]
pub struct TickEvent {
    pub tick: Tick,
    pub at: crate::time::Timestamp,
    /// Signal values at this tick (no data as `None`).
    pub signals: Vec<(String, Option<f64>)>,
}

/// Runs until `shutdown` becomes true.
pub async fn run(mut config: Config, parts: Parts, mut shutdown: watch::Receiver<bool>) -> Result<(), EngineError> {
    let Parts {
        evaluator: mut ev,
        targets,
        clock,
        listener,
        token,
        events,
        reload,
        recorder,
        console,
        env,
        commands,
        lock,
    } = parts;
    let mut reload = reload.unwrap_or_else(|| mpsc::channel(1).1);
    let (commands_tx, mut commands) = match commands {
        Some(rx) => (mpsc::channel(1).0, rx),
        None => mpsc::channel(16),
    };
    // One process per state_dir: two would both act, and each would report the other's
    // rollbacks as interrupted.
    let _lock = match lock {
        Some(lock) => lock,
        None => crate::journal::StateLock::take(&config.state_dir)?,
    };
    let restores_state = |line: &serde_json::Value| Event::read(line).is_ok_and(|(_, e)| e.restores_state());
    crate::journal::compact(&config.state_dir, crate::journal::COMPACT_ABOVE, restores_state)?;
    let journal = SharedJournal::new(Journal::open(&config.state_dir)?);
    // Streamed, keeping the state events only: a large journal does not make a large restart.
    let history = Journal::read_back_kept(&journal.path(), restores_state)?;
    let client = http_client()?;
    let (acting, notifier) = acting_parts(&config, &ev, &env, &client, &console, &journal, &clock)?;
    let (mut dispatcher, mut procedures) =
        Dispatcher::new(acting, notifier, journal.clone(), client.clone(), clock.clone(), &history)?;
    sync_evidence(&mut dispatcher, &mut ev);
    let (obs_tx, mut observations) = crate::source::queue::queue(crate::source::queue::QUEUE_SAMPLES);
    let (stop_tasks, tasks_shutdown) = watch::channel(false);
    let (mut stop_pollers, mut pollers_shutdown) = watch::channel(false);
    let mut snapshot = Snapshot {
        targets: targets.iter().map(|t| TargetStatus { name: t.name.clone(), ..TargetStatus::default() }).collect(),
        ..Snapshot::default()
    };
    let keep = ev.metric_names().map(Arc::new);
    for mut t in targets {
        t.keep = keep.clone();
        tokio::spawn(run_target(t, client.clone(), clock.clone(), obs_tx.clone(), pollers_shutdown.clone()));
    }
    let (status_tx, status_rx) = watch::channel(Arc::new(snapshot.clone()));
    let (alerts_tx, mut alert_updates) = mpsc::channel(64);
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let server = listener.map(|listener| {
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "serving /metrics, /healthz, /status, /hooks/alertmanager");
        let shared = Shared { status: status_rx, alerts: alerts_tx.clone(), commands: commands_tx.clone(), token };
        let limits = server::Limits { max_connections: config.max_connections, ..server::Limits::default() };
        tokio::spawn(server::serve(listener, shared, tasks_shutdown.clone(), limits, refused.clone()))
    });
    drop(alerts_tx);
    drop(commands_tx);

    let names: Vec<&str> = ev.profiles.iter().map(|p| p.name.as_str()).collect();
    journal.note(clock.now(), "started", &serde_json::json!({ "profiles": names }));
    tracing::info!(profiles = ?names, state_dir = %config.state_dir.display(), "rollwatch started");

    let mut series = TargetSeries::default();
    let mut alerts = Alerts::default();
    let mut ticker = tokio::time::interval(config.eval_interval.as_std());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            Some(queued) = observations.recv() => {
                // `queued` holds its samples' room in the queue until this arm ends.
                let obs = &queued.obs;
                series.apply(obs, ev.store_mut());
                record_poll(&mut snapshot, obs);
                if let Some(version) = version_of(&config, obs) {
                    let result = off_runtime(|| dispatcher.on_version_observed(obs.at, version));
                    kept_watching(&mut dispatcher, result);
                    sync_evidence(&mut dispatcher, &mut ev);
                }
            }
            Some(updates) = alert_updates.recv() => {
                let now = clock.now();
                tracing::debug!(count = updates.len(), "alerts received");
                // Changes are journalled, not repeats: the same payload re-sent adds no line.
                let changed = alerts.update(updates, now, ev.store_mut());
                if !changed.is_empty() {
                    tracing::info!(count = changed.len(), "alerts changed");
                    let list: Vec<_> = changed.iter().map(|u| serde_json::json!({"alert": u.key.to_string(), "firing": u.firing})).collect();
                    journal.note(now, "alerts", &serde_json::json!({ "alerts": list }));
                }
            }
            _ = ticker.tick() => {
                let now = clock.now();
                alerts.refresh(now, config.alert_expiry, ev.store_mut());
                let watch = Stopwatch::start();
                let tick = ev.tick(now);
                snapshot.last_evaluation_seconds = watch.elapsed_secs();
                for t in &tick.transitions {
                    tracing::info!(rule = %t.rule, from = %t.from, to = %t.to, value = ?t.value, "rule state changed");
                    journal.note(now, "transition", t);
                }
                for (i, d) in tick.decisions.iter().enumerate() {
                    let changed = snapshot.decisions.get(i).is_none_or(|prev| prev.outcome != d.outcome || prev.explanation() != d.explanation());
                    if changed {
                        tracing::info!(profile = %d.profile, outcome = %d.outcome, explanation = %d.explanation(), "decision");
                        journal.note(now, "decision", d);
                        snapshot.recent.push_back(d.clone());
                        if snapshot.recent.len() > RECENT {
                            snapshot.recent.pop_front();
                        }
                    }
                    *snapshot.decisions_total.entry(d.profile.clone()).or_default().entry(d.outcome.to_string()).or_insert(0) += 1;
                }
                if let Some(error) = journal.failing() {
                    dispatcher.journal_failed(now, &error);
                }
                let result = off_runtime(|| dispatcher.on_tick(now, &tick.decisions));
                kept_watching(&mut dispatcher, result);
                sync_evidence(&mut dispatcher, &mut ev);
                snapshot.acting = dispatcher.status();
                if let Some(recorder) = &recorder
                    && let Ok(mut r) = recorder.lock()
                {
                    r.observe(ev.store(), now, &tick.decisions);
                }
                update_snapshot(&mut snapshot, &ev, &tick, &alerts, &series, now);
                snapshot.connections_refused = refused.load(std::sync::atomic::Ordering::Relaxed);
                let _ = status_tx.send(Arc::new(snapshot.clone()));
                if let Some(events) = &events {
                    let signals = snapshot.signals.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    let _ = events.send(TickEvent { tick, at: now, signals });
                }
            }
            Some(done) = procedures.recv() => {
                let result = off_runtime(|| dispatcher.on_done(done));
                kept_watching(&mut dispatcher, result);
                sync_evidence(&mut dispatcher, &mut ev);
                snapshot.acting = dispatcher.status();
                let _ = status_tx.send(Arc::new(snapshot.clone()));
            }
            Some((command, reply)) = commands.recv() => {
                tracing::info!(?command, "command received");
                let answer = match off_runtime(|| dispatcher.command(command)) {
                    Ok(answer) => answer,
                    Err(e) => {
                        let refused = Err(format!("not done: the journal cannot be written ({})", crate::error_chain(&e)));
                        kept_watching(&mut dispatcher, Err(e));
                        refused
                    }
                };
                sync_evidence(&mut dispatcher, &mut ev);
                snapshot.acting = dispatcher.status();
                let _ = status_tx.send(Arc::new(snapshot.clone()));
                let _ = reply.send(answer);
            }
            Some(()) = reload.recv() => {
                let now = clock.now();
                let reloaded = load_again(&config, &env).and_then(|(c, e, t)| {
                    let acting = acting_parts(&c, &e, &env, &client, &console, &journal, &clock).map_err(|err| match err {
                        EngineError::Config(d) => d,
                        other => crate::diag::Diagnostic::file(&c.path, other.to_string()).into(),
                    })?;
                    Ok((c, e, t, acting))
                });
                match reloaded {
                    Ok((new_config, new_ev, new_targets, (acting, notifier))) => {
                        dispatcher.reconfigure(acting, notifier);
                        let old = std::mem::replace(&mut ev, new_ev);
                        ev.adopt(old);
                        let _ = stop_pollers.send(true);
                        (stop_pollers, pollers_shutdown) = watch::channel(false);
                        snapshot.targets = new_targets.iter().map(|t| TargetStatus { name: t.name.clone(), ..TargetStatus::default() }).collect();
                        snapshot.decisions.clear();
                        let keep = ev.metric_names().map(Arc::new);
                        for mut t in new_targets {
                            t.keep = keep.clone();
                            tokio::spawn(run_target(t, client.clone(), clock.clone(), obs_tx.clone(), pollers_shutdown.clone()));
                        }
                        if new_config.eval_interval != config.eval_interval {
                            ticker = tokio::time::interval(new_config.eval_interval.as_std());
                            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
                        }
                        config = new_config;
                        tracing::info!(path = %config.path.display(), "config reloaded");
                        journal.note(now, "reloaded", &serde_json::json!({ "path": config.path }));
                    }
                    Err(errors) => {
                        tracing::error!(path = %config.path.display(), %errors, "config reload failed; keeping the running config");
                        journal.note(now, "reload_failed", &serde_json::json!({ "errors": errors.to_string() }));
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    if dispatcher.steps_running() {
        // Killing `kubectl rollout undo` halfway helps nobody: let the steps end first.
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "stopping: waiting for the running rollback's steps first");
        if let Ok(Some(done)) = tokio::time::timeout(SHUTDOWN_GRACE, procedures.recv()).await {
            let result = off_runtime(|| dispatcher.on_done(done));
            kept_watching(&mut dispatcher, result);
        }
    }
    let _ = stop_pollers.send(true);
    let _ = stop_tasks.send(true);
    if let Some(server) = server {
        let _ = server.await;
    }
    dispatcher.notifier().flush(std::time::Duration::from_secs(3)).await;
    dispatcher.notifier().abandon();
    let in_flight = dispatcher.status().in_flight.map(|f| f.rollback_id);
    if let Some(id) = &in_flight {
        tracing::error!(rollback = %id, "stopping with a rollback in flight: it will be reported, not re-run, at the next start");
    }
    journal.note(clock.now(), "stopped", &serde_json::json!({ "in_flight": in_flight }));
    off_runtime(|| journal.flush());
    tracing::info!("rollwatch stopped");
    Ok(())
}

/// Runs `f`, which may wait for the journal writer's fsync, without holding up the runtime's
/// other tasks (pollers, the server, the notifier): on a multi-threaded runtime they move to
/// another worker meanwhile. A current-thread runtime (tests on a paused clock) just runs it.
fn off_runtime<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The dispatcher's parts from a config: policy, actions and plans, and a started notifier.
fn acting_parts(
    config: &Config,
    ev: &Evaluator,
    env: &Env,
    client: &reqwest::Client,
    console: &Console,
    journal: &SharedJournal,
    clock: &Arc<dyn Clock>,
) -> Result<(Acting, Notifier), EngineError> {
    let spec = &config.acting;
    let unset = |errors| EngineError::Config(crate::diag::Diagnostics::of_file(&config.path, errors));
    let actions = Action::build_all(&spec.actions, env.as_ref()).map_err(unset)?;
    let channels = Channel::build_all(&spec.channels, env.as_ref()).map_err(unset)?;
    let notifier = Notifier::start(
        channels,
        spec.templates.clone(),
        client.clone(),
        console.clone(),
        Some(journal.clone()),
        clock.clone(),
    );
    let redactor = crate::secret::Redactor::new(config.secret_vars().into_iter().filter_map(|v| env(v)));
    notifier.redact_with(redactor.clone());
    let acting = Acting {
        policy: spec.policy.clone(),
        actions: Arc::new(actions),
        plans: Plan::from_evaluator(ev),
        redactor,
        config_path: std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone()),
    };
    Ok((acting, notifier))
}

/// The deployed version an observation reads, when it is of the target `version = {...}`
/// names, that target is up, and the field is there and not empty (an unreadable version is not
/// a change).
fn version_of<'a>(config: &Config, obs: &'a Observation) -> Option<&'a str> {
    let v = config.raw.version.as_ref()?.get_ref();
    if obs.target != *v.target.get_ref() || !obs.up {
        return None;
    }
    obs.strings.iter().find(|(k, _)| k == v.field.get_ref()).map(|(_, val)| val.trim()).filter(|val| !val.is_empty())
}

/// A journal that cannot be written stops acting, never watching: the dispatcher holds every
/// action back, says so on every channel, and retries each tick.
fn kept_watching(dispatcher: &mut Dispatcher, result: Result<(), JournalError>) {
    if let Err(e) = result {
        dispatcher.journal_failed(dispatcher.now(), &crate::error_chain(&e));
    }
}

/// The evaluator's evidence follows the dispatcher's deploys and restore points.
fn sync_evidence(dispatcher: &mut Dispatcher, ev: &mut Evaluator) {
    if let Some(r) = dispatcher.take_restart() {
        ev.restart_evidence(r.at, r.predates);
    }
}

/// Loads the config file again, with its evaluator and targets (secrets through `env`).
fn load_again(config: &Config, env: &Env) -> Result<(Config, Evaluator, Vec<Target>), crate::diag::Diagnostics> {
    let (new_config, ev) = crate::act::deployment::load(&config.path)?;
    let targets = new_config.targets(|var| env(var))?;
    if new_config.state_dir != config.state_dir || new_config.listen != config.listen {
        tracing::warn!("state_dir and listen changes take effect at the next restart");
    }
    Ok((new_config, ev, targets))
}

fn record_poll(snapshot: &mut Snapshot, obs: &Observation) {
    let Some(t) = snapshot.targets.iter_mut().find(|t| t.name == obs.target) else { return };
    t.up = Some(obs.up);
    t.polls_total += 1;
    t.duration_seconds = obs.duration_secs;
    t.last_error = obs.error.as_ref().map(|e| e.to_string());
    t.dropped_total += obs.dropped as u64;
    if let Some(e) = &obs.error {
        *t.errors_total.entry(e.reason().to_string()).or_insert(0) += 1;
    }
}

fn update_snapshot(
    snapshot: &mut Snapshot,
    ev: &Evaluator,
    tick: &Tick,
    alerts: &Alerts,
    series: &TargetSeries,
    now: crate::time::Timestamp,
) {
    snapshot.at = now;
    snapshot.ticks_total = ev.ticks;
    snapshot.series = ev.store().len();
    snapshot.decisions = tick.decisions.clone();
    snapshot.firing_alerts = alerts.firing();
    snapshot.signals = ev.signal_values().into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    snapshot.rules = ev
        .rule_states()
        .map(|(r, state, value)| RuleStatus {
            name: r.name.clone(),
            profile: ev.profiles[r.profile].name.clone(),
            state: state.phase().to_string(),
            value,
            severity: r.severity.clone(),
        })
        .collect();
    for t in &mut snapshot.targets {
        t.fields = series.strings.get(&t.name).map(|f| f.iter().cloned().collect()).unwrap_or_default();
    }
}
