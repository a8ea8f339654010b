//! The live pipeline: pollers → observations → the evidence (window store, targets' series,
//! alerts: [`crate::source::Evidence`], held by the evaluator and written through its named
//! methods) → evaluator on ticks of rollwatch's own timeline ([`crate::time::SteadyClock`], which
//! a step of the system clock does not move) → decisions, logged and journalled when they change
//! → the dispatcher, which acts on them and returns where the evidence restarts (a deploy, a
//! restore point: applied at once, in `after_acting`); alerts from the webhook become `ALERTS`
//! series in the evidence; approvals, pauses and silences arrive as commands; a [`Snapshot`]
//! after every tick feeds `/status` and `/metrics`. The evaluator is the same one `test`
//! replays; only the clock and the source of samples differ.
//!
//! [`run`] reads like that diagram: `Engine::build` (state_dir lock, journal opened, compacted and
//! restored, acting parts, pollers, the own server), a loop whose every arm calls one named
//! method (`on_observation`, `on_alerts`, `on_tick`, `on_procedure_done`, `on_command`,
//! `on_reload`), and `Engine::stop`, which joins every task it started — pollers (one set,
//! replaced on reload), the server and its connections, the dispatcher's procedure and the
//! notifier's workers — and flushes the journal. The snapshot's upkeep lives in
//! [`crate::status`], decision journalling in the dispatcher.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::act::action::Action;
use crate::act::event::Event;
use crate::act::ledger::{Ledger, RecordError};
use crate::act::{Acted, Acting, CommandRequest, Dispatcher, Plan, Restart};
use crate::config::deploy::Config;
use crate::config::procedures::Procedures;
use crate::coord::Coordinator;
use crate::journal::{Journal, JournalError, SharedJournal};
use crate::notify::{Channel, Console, Notifier};
use crate::rules::deployment::Deployment;
use crate::rules::{Evaluator, Tick, checkpoint};
use crate::secret::{Env, Secret, process_env};
use crate::server::{self, Shared};
use crate::source::poller::{http_client, run_target};
use crate::source::{Observation, SourceError, Target};
use crate::status::Snapshot;
use crate::time::{CLOCK_DISAGREEMENT, Clock, Span, Stopwatch, Timestamp, human};

pub mod fleet;

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
    #[error(transparent)]
    Record(#[from] crate::act::ledger::RecordError),
    #[error(transparent)]
    Coordinator(#[from] crate::coord::etcd::EtcdError),
    /// One deployment of a fleet could not run.
    #[error("deployment {name:?}: {source}")]
    Deployment { name: String, source: Box<EngineError> },
}

/// How long a stop waits for a running rollback's steps (Kubernetes' default grace is 30 s).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Everything the engine runs with.
pub struct Parts {
    pub evaluator: Evaluator,
    /// Each profile's procedures, by profile name (from [`crate::rules::deployment`]).
    pub procedures: BTreeMap<String, Procedures>,
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
    /// The HTTP client for pollers, actions and notifications, when the caller shares one (a
    /// fleet's engines share the process's); `None` builds one.
    pub client: Option<reqwest::Client>,
    /// A fleet's deployment: the fleet's server reaches this engine through a [`server::Lane`]
    /// (see [`lane`]); `listener` is then `None`.
    pub served: Option<Served>,
    /// A fleet shared among replicas: what the share says this replica is to hold of this
    /// deployment ([`crate::coord::share`]). The engine runs while the deployment is held here
    /// ([`run_while_held`]).
    pub holding: Option<crate::coord::share::Member>,
    /// `evaluator` is the one this deployment's engine had when it was parked here (a fleet
    /// shared among replicas): it keeps what it saw, and the checkpoint is not read into it.
    pub resumes: bool,
    /// Alerts that came while no engine ran (a fleet's deployment parked here), each with when
    /// it came: put into the evidence at the start, oldest first, as if they had come then.
    pub alerts: Vec<(Timestamp, crate::source::alertmanager::AlertUpdate)>,
}

/// What a deployment's engine reads from a fleet's server, the other ends of its
/// [`server::Lane`]: where to publish its snapshot, its alerts, its commands, and the server's
/// count of refused connections.
pub struct Served {
    pub status: watch::Sender<Arc<Snapshot>>,
    pub alerts: mpsc::Receiver<Vec<crate::source::alertmanager::AlertUpdate>>,
    pub commands: mpsc::Receiver<CommandRequest>,
    pub refused: Arc<std::sync::atomic::AtomicU64>,
}

/// A lane for the server and what its engine reads (`Parts::served`).
pub fn lane(refused: Arc<std::sync::atomic::AtomicU64>) -> (server::Lane, Served) {
    let (status_tx, status) = watch::channel(Arc::new(Snapshot::default()));
    let (alerts, alerts_rx) = mpsc::channel(64);
    let (commands, commands_rx) = mpsc::channel(16);
    let lane = server::Lane { status, alerts, commands };
    (lane, Served { status: status_tx, alerts: alerts_rx, commands: commands_rx, refused })
}

impl Parts {
    /// The usual parts: rollwatch's own timeline from the system clock now (the sidecar resumes
    /// the journal's instead), no endpoints, no token, no observers.
    pub fn new(evaluator: Evaluator, procedures: BTreeMap<String, Procedures>, targets: Vec<Target>) -> Parts {
        Parts {
            evaluator,
            procedures,
            targets,
            clock: Arc::new(crate::time::SteadyClock::from_system()),
            listener: None,
            token: None,
            events: None,
            reload: None,
            recorder: None,
            console: Console::Stdout,
            env: process_env(),
            commands: None,
            lock: None,
            client: None,
            served: None,
            holding: None,
            resumes: false,
            alerts: Vec::new(),
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
pub async fn run(config: Config, parts: Parts, shutdown: watch::Receiver<bool>) -> Result<(), EngineError> {
    run_while_held(config, parts, shutdown).await.map(drop)
}

/// Runs until `shutdown` becomes true or — a fleet's deployment shared among replicas
/// (`Parts::holding`) — until it is parked here (another replica is to hold it, and this one
/// neither leads it nor has a rollback of it in flight): then returns, stopped, the config and
/// the parts its next engine is built from, when the deployment is held here again.
pub async fn run_while_held(
    config: Config,
    parts: Parts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Option<(Config, Parts)>, EngineError> {
    let mut engine = Engine::build(config, parts)?;
    let shared = engine.inputs.holding.is_some();
    if shared {
        // What the share says now (the fleet built this engine because of it).
        engine.on_holding();
    }
    let parked = loop {
        if shared && engine.parked() {
            break true;
        }
        tokio::select! {
            Some(queued) = engine.inputs.observations.recv() => engine.on_observation(&queued.obs),
            Some(updates) = engine.inputs.alert_updates.recv() => engine.on_alerts(updates),
            scheduled = engine.inputs.ticker.tick() => engine.on_tick(scheduled),
            Some(news) = engine.inputs.procedures.recv() => engine.on_procedure_news(news),
            Some((command, reply)) = engine.inputs.commands.recv() => engine.on_command(command, reply),
            Some(()) = engine.inputs.reload.recv() => engine.on_reload(),
            Some(update) = engine.inputs.coord_updates.recv() => engine.on_coord(update),
            Ok(()) = changed(&mut engine.inputs.holding) => engine.on_holding(),
            _ = engine.checkpoints.ticker.tick() => engine.checkpoints.write(&engine.ev, engine.clock.now()),
            _ = shutdown.changed() => break false,
        }
    };
    let kept = engine.stop(parked).await;
    Ok(parked.then_some(kept))
}

/// The pollers: one task per target, in one set, stopped together (a reload replaces them all).
struct Pollers {
    tasks: tokio::task::JoinSet<()>,
    stop: watch::Sender<bool>,
    /// Per target, a poll asked for now (besides its interval's).
    now: std::collections::HashMap<String, Arc<tokio::sync::Notify>>,
}

impl Pollers {
    /// Starts a poller per target; each reads only the metric names `keep` holds (if any).
    fn start(
        targets: Vec<Target>,
        keep: Option<Arc<std::collections::HashSet<String>>>,
        client: &reqwest::Client,
        clock: &Arc<dyn Clock>,
        queue: &crate::source::queue::Sender,
    ) -> Pollers {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut now = std::collections::HashMap::new();
        for mut t in targets {
            t.keep = keep.clone();
            let asked = Arc::new(tokio::sync::Notify::new());
            now.insert(t.name.clone(), asked.clone());
            // In the deployment's span (a fleet's log lines name their deployment).
            let poll = run_target(t, client.clone(), clock.clone(), queue.clone(), stopped.clone(), asked);
            tasks.spawn(tracing::Instrument::in_current_span(poll));
        }
        Pollers { tasks, stop, now }
    }

    /// Polls `target` now (after the poll it is making, if any), besides its interval's.
    fn poll_now(&self, target: &str) {
        if let Some(asked) = self.now.get(target) {
            asked.notify_one();
        }
    }

    /// Stops every poller and waits for them.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// What [`run`]'s loop waits on.
struct Inputs {
    observations: crate::source::queue::Receiver,
    alert_updates: mpsc::Receiver<Vec<crate::source::alertmanager::AlertUpdate>>,
    ticker: tokio::time::Interval,
    procedures: mpsc::UnboundedReceiver<crate::act::procedure::ProcedureNews>,
    commands: mpsc::Receiver<CommandRequest>,
    reload: mpsc::Receiver<()>,
    coord_updates: mpsc::Receiver<crate::coord::Update>,
    /// In a fleet shared among replicas: the share's word on this deployment.
    holding: Option<watch::Receiver<crate::coord::share::Holding>>,
}

/// The next change of `holding` (never, without one).
async fn changed<T>(holding: &mut Option<watch::Receiver<T>>) -> Result<(), watch::error::RecvError> {
    match holding {
        Some(h) => h.changed().await,
        None => std::future::pending().await,
    }
}

/// The tasks the engine started, and how to stop them: pollers (one set, replaced on reload)
/// and their queue, the own server and its refused-connection count, the coordinator's task.
struct Tasks {
    pollers: Option<Pollers>,
    /// The targets (polled again when a parked deployment comes to be held here).
    targets: Vec<Target>,
    /// Pollers a reload replaced, while they stop.
    retiring: tokio::task::JoinSet<()>,
    queue: crate::source::queue::Sender,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop_server: watch::Sender<bool>,
    refused: Arc<std::sync::atomic::AtomicU64>,
    coord_task: Option<tokio::task::JoinHandle<()>>,
    stop_coord: watch::Sender<bool>,
}

/// The running sidecar: what [`run`]'s loop reads from, and what each arm changes.
struct Engine {
    config: Config,
    ev: Evaluator,
    clock: Arc<dyn Clock>,
    env: Env,
    client: reqwest::Client,
    console: Console,
    journal: SharedJournal,
    /// Each profile's procedures (handed back at a stop, for the next engine).
    procedures: BTreeMap<String, Procedures>,
    dispatcher: Dispatcher,
    snapshot: Snapshot,
    status: watch::Sender<Arc<Snapshot>>,
    events: Option<mpsc::UnboundedSender<TickEvent>>,
    recorder: Option<Arc<std::sync::Mutex<crate::record::Recorder>>>,
    /// With `[ha]`: the coordinator, its news, its task and how to stop it.
    coord: Option<Arc<Coordinator>>,
    /// The disagreement with the system clock last reported, and since when (rollwatch's time).
    clock_said: Option<(Span, Timestamp)>,
    /// Writes what the evaluator has seen to `state_dir` every [`checkpoint::EVERY`] and on stop.
    checkpoints: Checkpoints,
    /// What the loop waits on.
    inputs: Inputs,
    /// The tasks it started (pollers, the server, the coordinator) and how to stop them.
    tasks: Tasks,
    /// What a stop hands back as it is, for the next engine of this deployment.
    kept: Kept,
}

/// What an engine holds only to hand it back at its stop ([`Engine::stop`]).
struct Kept {
    lock: crate::journal::StateLock,
    /// A fleet's deployment: its lane's ends are handed back (`Parts::served`).
    served: bool,
    /// A fleet shared among replicas: the share's client and lease.
    share: Option<crate::coord::share::Seat>,
}

impl Engine {
    /// Locks the state_dir, opens (compacting) the journal and restores the acting state from
    /// it, builds the dispatcher and the notifier, starts the pollers and the own server.
    fn build(config: Config, parts: Parts) -> Result<Engine, EngineError> {
        let Parts {
            evaluator: mut ev,
            procedures,
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
            client,
            served,
            holding,
            resumes,
            alerts: meanwhile,
        } = parts;
        let is_served = served.is_some();
        let (holding, share) = match holding {
            Some(crate::coord::share::Member { holding, seat }) => (Some(holding), Some(seat)),
            None => (None, None),
        };
        let (commands, served) = match served {
            Some(Served { status, alerts, commands, refused }) => (Some(commands), Some((status, alerts, refused))),
            None => (commands, None),
        };
        let reload = reload.unwrap_or_else(|| mpsc::channel(1).1);
        let (commands_tx, commands) = match commands {
            Some(rx) => (mpsc::channel(1).0, rx),
            None => mpsc::channel(16),
        };
        // One process per state_dir: two would both act, and each would report the other's
        // rollbacks as interrupted.
        let lock = match lock {
            Some(lock) => lock,
            None => crate::journal::StateLock::take(&config.state_dir)?,
        };
        let restores_state = |line: &serde_json::Value| Event::read(line).is_ok_and(|(_, e)| e.restores_state());
        crate::journal::compact(&config.state_dir, crate::journal::COMPACT_ABOVE, restores_state)?;
        let journal = SharedJournal::new(Journal::open(&config.state_dir)?);
        // Streamed, keeping the state events only (without the forgotten versions' deploys): a
        // large journal does not make a large restart.
        let history = crate::act::history::restore_lines(&journal.path())?;
        let client = match client {
            Some(c) => c,
            None => http_client()?,
        };
        let plans = Plan::build(&ev, &procedures);
        let (acting, notifier) = acting_parts(&config, plans, &env, &client, &console, &journal, &clock)?;
        let kept_procedures = procedures;
        // With [ha], acting events go to the shared log in etcd first (fenced by leadership).
        let coord = match &config.ha {
            Some(spec) => {
                // The loop guard counts the last `max_rollbacks`: a compaction keeps them.
                let recent = acting.policy.max_rollbacks as usize;
                let compactor: crate::coord::Compactor =
                    Box::new(move |lines, now| crate::act::ledger::compact_shared_keeping(lines, now, recent));
                let c = match (&config.member, &share) {
                    (Some(m), Some(seat)) => {
                        Coordinator::with_etcd(seat.etcd.sibling(), spec, config.listen, clock.clone(), compactor)
                            .in_fleet(&m.name, seat.lease.clone())
                    }
                    _ => Coordinator::new(spec, config.listen, env.as_ref(), clock.clone(), compactor)?,
                };
                Some(Arc::new(c.with_journal(journal.path(), &history)))
            }
            None => None,
        };
        let ledger = match &coord {
            Some(c) => Ledger::shared(journal.clone(), c.clone(), &history),
            None => Ledger::local(journal.clone()),
        };
        let (stop_coord, coord_stopped) = watch::channel(false);
        let (coord_tx, coord_updates) = mpsc::channel(64);
        let coord_task = coord.as_ref().map(|c| {
            tracing::info!(replica = %c.me().replica, address = %c.me().address, "electing on etcd");
            tokio::spawn(tracing::Instrument::in_current_span(c.clone().run(coord_tx, coord_stopped)))
        });
        let (dispatcher, procedure_news, restart) =
            Dispatcher::new(acting, notifier, ledger, client.clone(), clock.clone(), &history)?;
        // The evidence starts at the journalled deploy.
        if let Some(r) = restart {
            ev.restart_evidence(r.at, r.predates);
        }
        // What was seen before the restart, from the current deploy's evidence on. A recording
        // keeps what this run sees only.
        let checkpoints = Checkpoints::new(recorder.is_none().then(|| config.state_dir.clone()));
        if !resumes {
            checkpoints.restore(&mut ev, clock.now(), &journal);
        }
        // Shared among replicas, a deployment held here (again) was held by another replica
        // meanwhile: what this one last saw of it (kept, or its checkpoint) goes on with the
        // time since unwatched and every rule inactive.
        if resumes || holding.is_some() {
            ev.resume_after_gap(clock.now());
        }

        let (queue, observations) = crate::source::queue::queue(crate::source::queue::QUEUE_SAMPLES);
        // A fleet deployment held here again goes on from what its lane last showed (its
        // counters carry on); otherwise from nothing.
        let before = served.as_ref().map(|(status, _, _)| status.borrow().as_ref().clone()).unwrap_or_default();
        let targets_as_before = before.targets.iter().map(|t| &t.name).eq(targets.iter().map(|t| &t.name));
        let mut snapshot = Snapshot {
            deployment: config.member.as_ref().map(|m| m.name.clone()),
            may_act: dispatcher.leads(),
            ha: coord.as_ref().map(|c| c.status()),
            acting: dispatcher.status(),
            ..before
        };
        if !targets_as_before {
            snapshot.watch_targets(&targets);
        }
        snapshot.watch_thresholds(&ev);
        // Parked (a fleet's deployment another replica is to hold), nothing is polled.
        let pollers = match holding.is_some() {
            true => None,
            false => Some(Pollers::start(targets.clone(), ev.metric_names().map(Arc::new), &client, &clock, &queue)),
        };
        let (status, status_rx, alerts_tx, alert_updates, refused) = match served {
            Some((status, alerts, refused)) => {
                status.send_replace(Arc::new(snapshot.clone()));
                let rx = status.subscribe();
                (status, rx, mpsc::channel(1).0, alerts, refused)
            }
            None => {
                let (status, status_rx) = watch::channel(Arc::new(snapshot.clone()));
                let (alerts_tx, alert_updates) = mpsc::channel(64);
                (status, status_rx, alerts_tx, alert_updates, Arc::new(std::sync::atomic::AtomicU64::new(0)))
            }
        };
        let (stop_server, server_stopped) = watch::channel(false);
        let server = listener.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(?addr, "serving /metrics, /healthz, /status, /hooks/alertmanager");
            let forward = coord
                .clone()
                .map(|coord| server::Forward { leaders: server::Leaders::One(coord), client: client.clone() });
            let lane = server::Lane { status: status_rx, alerts: alerts_tx, commands: commands_tx };
            let shared = Shared { lanes: Arc::new(server::Lanes::one(lane)), token, forward };
            let limits = server::Limits { max_connections: config.max_connections, ..server::Limits::default() };
            tokio::spawn(server::serve(listener, shared, server_stopped, limits, refused.clone()))
        });

        let names: Vec<&str> = ev.profiles.iter().map(|p| p.name.as_str()).collect();
        journal.note(clock.now(), "started", &serde_json::json!({ "profiles": names }));
        tracing::info!(profiles = ?names, state_dir = %config.state_dir.display(), "rollwatch started");
        let ticker = ticker_for(config.eval_interval, recorder.is_some());
        let mut engine = Engine {
            config,
            ev,
            clock,
            env,
            client,
            console,
            journal,
            procedures: kept_procedures,
            dispatcher,
            snapshot,
            status,
            events,
            recorder,
            coord,
            clock_said: None,
            checkpoints,
            inputs: Inputs {
                observations,
                alert_updates,
                ticker,
                procedures: procedure_news,
                commands,
                reload,
                coord_updates,
                holding,
            },
            tasks: Tasks {
                pollers,
                targets,
                retiring: tokio::task::JoinSet::new(),
                queue,
                server,
                stop_server,
                refused,
                coord_task,
                stop_coord,
            },
            kept: Kept { lock, served: is_served, share },
        };
        let now = engine.clock.now();
        engine.watch_clock(now);
        for came in meanwhile.chunk_by(|a, b| a.0 == b.0) {
            engine.on_alerts_at(came.iter().map(|(_, u)| u.clone()).collect(), came[0].0);
        }
        Ok(engine)
    }

    /// Compares rollwatch's timeline with the system clock at `now`: a disagreement that
    /// appears, ends or changes by more than [`CLOCK_DISAGREEMENT`] is logged and journalled
    /// once, and saved in the state_dir for the next start (only then: a start that finds it as
    /// saved writes nothing); `/status` shows it after every tick.
    fn watch_clock(&mut self, now: Timestamp) {
        let Some(ahead) = self.clock.system_ahead() else { return };
        let starting = self.clock_said.is_none();
        let (said, _) = self.clock_said.unwrap_or((crate::journal::saved_clock(&self.config.state_dir), now));
        let moved = (ahead.0 - said.0).abs() > CLOCK_DISAGREEMENT.0;
        if starting || moved {
            let (far, side) = (human(Span(ahead.0.abs())), if ahead.0 > 0 { "ahead of" } else { "behind" });
            let disagrees = ahead.0.abs() > CLOCK_DISAGREEMENT.0;
            if starting && disagrees {
                tracing::warn!(
                    system_ahead_ms = ahead.0,
                    "rollwatch's timeline continues where it was: the system clock is {far} {side} it (a step of the system clock carried over from the last run, or the journal dated later than the system clock); cooldowns, pauses and silences keep what was left of them"
                );
            } else if disagrees {
                tracing::warn!(
                    system_ahead_ms = ahead.0,
                    "the system clock stepped: it is {far} {side} rollwatch's timeline; rollwatch keeps its own (samples, windows, `for`, cooldowns, pauses and silences are not moved); dates journalled and shown are rollwatch's"
                );
            } else if !starting {
                tracing::info!(system_ahead_ms = ahead.0, "the system clock agrees with rollwatch's timeline again");
            }
            if !starting || disagrees {
                let system = now.plus(ahead);
                let data = serde_json::json!({ "system_ahead_ms": ahead.0, "system": system, "starting": starting });
                self.journal.note(now, "clock", &data);
            }
            let dir = self.config.state_dir.clone();
            if moved && let Err(e) = off_runtime(|| crate::journal::save_clock(&dir, ahead, now)) {
                tracing::warn!(error = %crate::error_chain(&e), "cannot save the clock's disagreement for the next start");
            }
            self.clock_said = Some((ahead, now));
        }
        let since = self.clock_said.map(|(_, at)| at);
        self.snapshot.clock = Some(crate::status::ClockStatus {
            system_ahead_seconds: ahead.as_secs_f64(),
            disagrees: ahead.0.abs() > CLOCK_DISAGREEMENT.0,
            since,
        });
    }

    /// A poll: into the evidence and the snapshot; a version reading may be a deploy.
    fn on_observation(&mut self, obs: &Observation) {
        self.ev.observe(obs);
        self.snapshot.record_poll(obs);
        if let Some(version) = version_of(&self.config, obs) {
            let acted = off_runtime(|| self.dispatcher.on_version_observed(obs.at, &version));
            self.after_acting(acted);
        } else if self.config.version.as_ref().is_some_and(|v| obs.target == v.target) {
            let acted = self.dispatcher.on_version_unreadable(obs.at);
            self.after_acting(acted);
        }
    }

    /// Alerts from the hook become `ALERTS` series in the evidence; changes are journalled, not
    /// repeats.
    fn on_alerts(&mut self, updates: Vec<crate::source::alertmanager::AlertUpdate>) {
        self.on_alerts_at(updates, self.clock.now());
    }

    /// [`on_alerts`](Self::on_alerts) for alerts that came at `now`.
    fn on_alerts_at(&mut self, updates: Vec<crate::source::alertmanager::AlertUpdate>, now: Timestamp) {
        tracing::debug!(count = updates.len(), "alerts received");
        let changed = self.ev.update_alerts(updates, now);
        if !changed.is_empty() {
            tracing::info!(count = changed.len(), "alerts changed");
            let list: Vec<_> =
                changed.iter().map(|u| serde_json::json!({"alert": u.key.to_string(), "firing": u.firing})).collect();
            self.journal.note(now, "alerts", &serde_json::json!({ "alerts": list }));
        }
    }

    /// An evaluation: rules and decisions, journalled when they change, acted on, published.
    fn on_tick(&mut self, scheduled: tokio::time::Instant) {
        let now = self.clock.now();
        self.watch_clock(now);
        // A recording evaluates each tick at its scheduled time (however late it runs): the
        // fixture's grid is that schedule, so its replay reads the windows the live run read.
        let now = match self.recorder {
            Some(_) => now.minus(Span(scheduled.elapsed().as_millis().min(i64::MAX as u128) as i64)),
            None => now,
        };
        self.ev.refresh_alerts(now, self.config.alert_expiry);
        self.ev.silence(self.dispatcher.silenced(now));
        let watch = Stopwatch::start();
        let tick = self.ev.tick(now);
        self.snapshot.last_evaluation_seconds = watch.elapsed_secs();
        let changed = self.snapshot.changed_decisions(&tick.decisions);
        self.dispatcher.note_tick(&tick.transitions, &changed);
        if let Some(error) = self.journal.failing() {
            self.dispatcher.journal_failed(now, &error);
        }
        let acted = off_runtime(|| self.dispatcher.on_tick(now, &tick.decisions));
        self.after_acting(acted);
        if let Some(recorder) = &self.recorder
            && let Ok(mut r) = recorder.lock()
        {
            r.observe(self.ev.store(), now, &tick.decisions);
        }
        self.snapshot.update(&self.ev, &tick, now);
        self.publish();
        if let Some(events) = &self.events {
            let signals = self.snapshot.signals.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let _ = events.send(TickEvent { tick, at: now, signals });
        }
    }

    /// News of a procedure's steps (a step's state, a step finished, its end).
    fn on_procedure_news(&mut self, news: crate::act::procedure::ProcedureNews) {
        let acted = off_runtime(|| self.dispatcher.on_news(news));
        self.after_acting(acted);
        self.publish();
    }

    /// An operator command (approve, pause, mark, …), answered once journalled.
    fn on_command(
        &mut self,
        command: crate::act::Command,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    ) {
        tracing::info!(?command, "command received");
        let (result, rest) = off_runtime(|| self.dispatcher.command(command)).answer();
        let answer = match result {
            Ok(answer) => answer,
            Err(e) => {
                let refused = Err(match &e {
                    RecordError::Journal(_) => {
                        format!("not done: the journal cannot be written ({})", crate::error_chain(&e))
                    }
                    RecordError::Shared(_) => format!("not done: this replica no longer leads ({e}); try again"),
                });
                self.after_acting(Acted::failed(e));
                refused
            }
        };
        self.after_acting(rest);
        self.publish();
        let _ = reply.send(answer);
    }

    /// SIGHUP: the config file again. A bad one is reported and the running one kept; a good
    /// one replaces acting, the evaluator (rule states carried over) and the pollers.
    fn on_reload(&mut self) {
        let now = self.clock.now();
        let reloaded = load_again(&self.config, &self.env).and_then(|(d, t)| {
            let Deployment { config: c, evaluator: e, procedures } = d;
            let plans = Plan::build(&e, &procedures);
            let acting = acting_parts(&c, plans, &self.env, &self.client, &self.console, &self.journal, &self.clock)
                .map_err(|err| match err {
                    EngineError::Config(d) => d,
                    other => crate::diag::Diagnostic::file(&c.path, other.to_string()).into(),
                })?;
            Ok((c, e, procedures, t, acting))
        });
        match reloaded {
            Ok((config, ev, procedures, targets, (acting, notifier))) => {
                self.dispatcher.reconfigure(acting, notifier);
                self.procedures = procedures;
                let old = std::mem::replace(&mut self.ev, ev);
                self.ev.adopt(old);
                // Polling before, polling after (a parked deployment of a shared fleet stays so).
                let polling = self.tasks.pollers.is_some();
                self.retire_pollers();
                self.snapshot.watch_targets(&targets);
                self.snapshot.watch_thresholds(&self.ev);
                self.snapshot.decisions.clear();
                let keep = self.ev.metric_names().map(Arc::new);
                self.tasks.targets = targets.clone();
                if polling {
                    self.tasks.pollers =
                        Some(Pollers::start(targets, keep, &self.client, &self.clock, &self.tasks.queue));
                }
                if config.eval_interval != self.config.eval_interval {
                    self.inputs.ticker = ticker_for(config.eval_interval, self.recorder.is_some());
                }
                self.config = config;
                tracing::info!(path = %self.config.path.display(), "config reloaded");
                self.journal.note(now, "reloaded", &serde_json::json!({ "path": self.config.path }));
            }
            Err(errors) => {
                tracing::error!(path = %self.config.path.display(), %errors, "config reload failed; keeping the running config");
                self.journal.note(now, "reload_failed", &serde_json::json!({ "errors": errors.to_string() }));
            }
        }
    }

    /// The coordinator's news (leading, following, the leader's log, etcd trouble).
    fn on_coord(&mut self, update: crate::coord::Update) {
        let acted = off_runtime(|| self.dispatcher.on_coord(update));
        self.after_acting(acted);
        self.poll_or_park();
        self.publish();
    }

    /// The share's word on this deployment of a fleet shared among replicas: its coordinator
    /// stands for it (or gives it up) at once, and the targets are polled while it is to be
    /// held here or still led here.
    fn on_holding(&mut self) {
        if let Some(h) = self.inputs.holding.as_mut() {
            h.borrow_and_update();
        }
        self.assign();
        self.poll_or_park();
        self.snapshot.ha = self.coord.as_ref().map(|c| c.status());
        self.publish();
    }

    /// Tells the coordinator what the share says — but a deployment whose rollback is in flight
    /// here is kept until the rollback ends (its steps and verification are never cut short by
    /// a move; the share does not ask for it, this covers a rollback that began meanwhile).
    fn assign(&self) {
        let (Some(holding), Some(c)) = (&self.inputs.holding, &self.coord) else { return };
        let holding = holding.borrow().clone();
        let busy = self.snapshot.acting.in_flight.is_some() && self.dispatcher.leads();
        c.assign(holding.mine || busy, holding.holder);
    }

    /// Whether this fleet deployment is parked here: another replica is to hold it.
    fn parked(&self) -> bool {
        self.inputs.holding.is_some() && self.tasks.pollers.is_none()
    }

    /// Polls while this replica is to hold the deployment or still leads it; parks otherwise
    /// (the windows keep what they saw; they age out).
    fn poll_or_park(&mut self) {
        let Some(holding) = &self.inputs.holding else { return };
        let wanted = holding.borrow().mine || self.dispatcher.leads();
        match (wanted, self.tasks.pollers.is_some()) {
            (true, false) => {
                tracing::info!("held here: polling its targets");
                let keep = self.ev.metric_names().map(Arc::new);
                let targets = self.tasks.targets.clone();
                self.tasks.pollers = Some(Pollers::start(targets, keep, &self.client, &self.clock, &self.tasks.queue));
            }
            (false, true) => {
                tracing::info!("held by another replica: parked, not polling");
                self.snapshot.decisions.clear();
                self.retire_pollers();
            }
            _ => {}
        }
    }

    /// Stops the pollers without waiting for them (they are joined at the next retirement or
    /// at the engine's stop).
    fn retire_pollers(&mut self) {
        if let Some(old) = self.tasks.pollers.take() {
            while self.tasks.retiring.try_join_next().is_some() {}
            self.tasks.retiring.spawn(old.stop());
        }
    }

    /// After the dispatcher ran: a journal failure stops acting (never watching), a write the
    /// shared log refused ends this replica's leadership, and the evidence restarts where the
    /// input decided (a deploy, a restore point).
    fn after_acting(&mut self, acted: Acted) {
        match acted.result {
            Ok(()) => {}
            Err(RecordError::Journal(e)) => {
                self.dispatcher.journal_failed(self.dispatcher.now(), &crate::error_chain(&e));
            }
            // A line the shared log did not take (too large): not recorded, so not acted on;
            // the term goes on.
            Err(RecordError::Shared(e @ crate::coord::CommitError::Refused(_))) => {
                tracing::error!(error = %e, "an acting event was not recorded, and so not acted on");
            }
            Err(RecordError::Shared(e)) => self.dispatcher.stand_down(&e.to_string()),
        }
        if let Some(restart) = acted.restart {
            self.restart_evidence(restart);
        }
        if acted.read_version
            && let (Some(v), Some(pollers)) = (&self.config.version, &self.tasks.pollers)
        {
            pollers.poll_now(&v.target);
        }
        if acted.evaluate {
            // The next tick at once (the grid moves with it): no evaluation is added.
            self.inputs.ticker.reset_immediately();
        }
        self.snapshot.acting = self.dispatcher.status();
        self.assign();
        self.snapshot.ha = self.coord.as_ref().map(|c| c.status());
        self.snapshot.may_act = self.dispatcher.leads() && self.coord.as_ref().is_none_or(|c| c.leading());
    }

    /// The evidence restarts at a deploy or a restore point. A deploy seen while recording is
    /// the fixture's `[[deploy]]`, placed within the interval of the tick that applies it; the
    /// live evidence restarts where its replay will, so that both read the same windows.
    fn restart_evidence(&mut self, mut restart: Restart) {
        if let (Some(version), Some(recorder)) = (&restart.deployed, &self.recorder)
            && let Ok(mut r) = recorder.lock()
        {
            restart.at = r.deploy(restart.at, version);
        }
        self.ev.restart_evidence(restart.at, restart.predates);
    }

    /// Sends the snapshot to `/status` and `/metrics`.
    fn publish(&mut self) {
        self.snapshot.connections_refused = self.tasks.refused.load(std::sync::atomic::Ordering::Relaxed);
        let _ = self.status.send(Arc::new(self.snapshot.clone()));
    }

    /// Stops in order: the running steps get their grace, then the pollers and the server stop,
    /// notifications get a moment and the rest is journalled as not sent, every task is joined,
    /// and the journal is flushed. Hands back the config and what the next engine of this
    /// deployment is built from (`parked`: another replica holds it now; this one may again).
    async fn stop(mut self, parked: bool) -> (Config, Parts) {
        if self.dispatcher.steps_running() {
            // Killing `kubectl rollout undo` halfway helps nobody: let the steps end first.
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "stopping: waiting for the running rollback's steps first");
            let until_done = async {
                while let Some(news) = self.inputs.procedures.recv().await {
                    let done = matches!(news, crate::act::procedure::ProcedureNews::Done(_));
                    let acted = off_runtime(|| self.dispatcher.on_news(news));
                    self.after_acting(acted);
                    if done {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, until_done).await;
        }
        if let Some(pollers) = self.tasks.pollers.take() {
            pollers.stop().await;
        }
        while self.tasks.retiring.join_next().await.is_some() {}
        let now = self.clock.now();
        self.checkpoints.finish(&self.ev, now).await;
        let _ = self.tasks.stop_server.send(true);
        if let Some(server) = self.tasks.server.take() {
            let _ = server.await;
        }
        self.dispatcher.stop(std::time::Duration::from_secs(3)).await;
        // Last: the lease is revoked, so another replica leads at once.
        let _ = self.tasks.stop_coord.send(true);
        if let Some(task) = self.tasks.coord_task.take() {
            let _ = task.await;
        }
        let acting = self.dispatcher.status();
        let next = match self.coord.is_some() {
            true => "the replica that leads it next",
            false => "this sidecar at its next start",
        };
        match &acting.in_flight {
            Some(f) if f.phase == crate::act::inflight::Phase::Verifying => tracing::warn!(
                rollback = %f.rollback_id,
                "stopping while a rollback is verified (its steps are done): {next} goes on verifying it"
            ),
            Some(f) => tracing::error!(
                rollback = %f.rollback_id,
                "stopping with a rollback's steps unfinished: {next} reports it interrupted, never re-runs it"
            ),
            None => {}
        }
        let in_flight = acting.in_flight.as_ref().map(|f| f.rollback_id.clone());
        // Its page and metrics say at once that this replica acts on it no more (a fleet's
        // lane outlives its engine: the process may take a while yet to stop).
        self.snapshot.may_act = false;
        self.snapshot.acting = acting;
        self.snapshot.acting.standby = Some(match parked {
            true => "parked here: another replica holds it".to_string(),
            false => "stopped: this replica is shutting down".to_string(),
        });
        if let Some(ha) = self.snapshot.ha.as_mut() {
            ha.role = crate::coord::Role::Follower;
            if ha.leader.as_ref().is_some_and(|l| l.replica == ha.replica) {
                ha.leader = None;
            }
        }
        self.publish();
        let event = if parked { "parked" } else { "stopped" };
        self.journal.note(self.clock.now(), event, &serde_json::json!({ "in_flight": in_flight }));
        off_runtime(|| self.journal.flush());
        if parked {
            tracing::info!(
                "held by another replica: this deployment's engine stopped here until it is held here again"
            );
        } else {
            tracing::info!("rollwatch stopped");
        }
        let served = self.kept.served.then(|| Served {
            status: self.status,
            alerts: self.inputs.alert_updates,
            commands: self.inputs.commands,
            refused: self.tasks.refused,
        });
        let holding = match (self.inputs.holding, self.kept.share) {
            (Some(holding), Some(seat)) => Some(crate::coord::share::Member { holding, seat }),
            _ => None,
        };
        let parts = Parts {
            evaluator: self.ev,
            procedures: self.procedures,
            targets: self.tasks.targets,
            clock: self.clock,
            listener: None,
            token: None,
            events: self.events,
            reload: Some(self.inputs.reload),
            recorder: self.recorder,
            console: self.console,
            env: self.env,
            commands: None,
            lock: Some(self.kept.lock),
            client: Some(self.client),
            served,
            holding,
            resumes: true,
            alerts: Vec::new(),
        };
        (self.config, parts)
    }
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
    plans: BTreeMap<String, Plan>,
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
    if let Some(m) = &config.member {
        notifier.name_deployment(m.name.clone());
    }
    let acting = Acting {
        policy: spec.policy.clone(),
        actions: Arc::new(actions),
        plans,
        redactor,
        config_path: std::path::absolute(config.member.as_ref().map_or(&config.path, |m| &m.fleet))
            .unwrap_or_else(|_| config.path.clone()),
        deployment: config.member.as_ref().map(|m| m.name.clone()),
        version_source: config.version.is_some(),
    };
    Ok((acting, notifier))
}

/// The deployed version an observation reads, when it is of the target `version = {...}`
/// names, that target is up, and the field is there and not empty (an unreadable version is not
/// a change). A reading with control characters (a line break, an ANSI escape) is taken in its
/// visible form (`\n`, `\u{1b}`: [`crate::template::terminal`]), as people will see it and can
/// type it: the deploy is still seen — refusing the reading would blame the version before it
/// and roll back from that one — and every version recorded is printable. (The deploy hook
/// refuses such a version instead: it has a caller to tell.)
fn version_of<'a>(config: &Config, obs: &'a Observation) -> Option<std::borrow::Cow<'a, str>> {
    let v = config.version.as_ref()?;
    if obs.target != v.target || !obs.up {
        return None;
    }
    obs.strings
        .iter()
        .find(|(k, _)| *k == v.field)
        .map(|(_, val)| crate::template::terminal(val.trim()))
        .filter(|val| !val.is_empty())
}

/// The checkpoint of what the evaluator has seen ([`checkpoint`]): read at start, written every
/// [`checkpoint::EVERY`] off the runtime (one write at a time) and once more on stop. A failure
/// is logged once until a write succeeds again; it never stops watching.
struct Checkpoints {
    /// `None`: no checkpoint (a recording).
    dir: Option<std::path::PathBuf>,
    ticker: tokio::time::Interval,
    writing: Option<tokio::task::JoinHandle<()>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpoints {
    fn new(dir: Option<std::path::PathBuf>) -> Checkpoints {
        let mut ticker = tokio::time::interval(checkpoint::EVERY.as_std());
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick of an interval is at once; the first checkpoint is due one period on.
        ticker.reset();
        Checkpoints { dir, ticker, writing: None, failing: Arc::default() }
    }

    /// Restores the checkpoint into `ev` if it is usable; says what it did.
    fn restore(&self, ev: &mut Evaluator, now: crate::time::Timestamp, journal: &SharedJournal) {
        let Some(dir) = &self.dir else { return };
        match checkpoint::restore_at_start(dir, ev, now) {
            checkpoint::AtStart::Fresh => {}
            checkpoint::AtStart::Restored(r) => {
                let gap = crate::time::human(r.gap);
                tracing::info!(series = r.series, samples = r.samples, rules = r.rules, %gap, "checkpoint restored: windows and rule states carry over; the gap is missing data");
                let data = serde_json::json!({
                    "written_at": r.written_at, "series": r.series, "samples": r.samples, "rules": r.rules,
                    "gap_seconds": r.gap.as_secs_f64(),
                });
                journal.note(now, "checkpoint_restored", &data);
            }
            checkpoint::AtStart::Ignored(why) => {
                tracing::warn!(%why, "checkpoint not used: starting with empty windows");
                journal.note(now, "checkpoint_ignored", &serde_json::json!({ "reason": why }));
            }
        }
    }

    /// Writes a checkpoint off the runtime, unless the last one is still being written.
    fn write(&mut self, ev: &Evaluator, now: crate::time::Timestamp) {
        let Some(dir) = self.dir.clone() else { return };
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let bytes = ev.checkpoint(now);
        let failing = self.failing.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || save_reporting(&dir, &bytes, &failing)));
    }

    /// On stop: waits for a write under way, then writes the last checkpoint.
    async fn finish(&mut self, ev: &Evaluator, now: crate::time::Timestamp) {
        let Some(dir) = self.dir.clone() else { return };
        if let Some(writing) = self.writing.take() {
            let _ = writing.await;
        }
        let bytes = ev.checkpoint(now);
        off_runtime(|| save_reporting(&dir, &bytes, &self.failing));
    }
}

/// Saves a checkpoint; a failure is logged once until a save succeeds again.
fn save_reporting(dir: &std::path::Path, bytes: &[u8], failing: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    match checkpoint::save(dir, bytes) {
        Ok(()) => {
            if failing.swap(false, Ordering::Relaxed) {
                tracing::info!("checkpoint written again");
            }
            tracing::debug!(bytes = bytes.len(), "checkpoint written");
        }
        Err(e) => {
            if !failing.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot write the checkpoint: a restart now would start with empty windows");
            }
        }
    }
}

/// The evaluation ticker. A late tick is skipped (the next one reads the same data, later) —
/// except while recording, where every tick of the grid is evaluated, late or not, at its
/// scheduled time: the fixture has one column per tick of the schedule.
fn ticker_for(every: Span, recording: bool) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(every.as_std());
    ticker.set_missed_tick_behavior(if recording { MissedTickBehavior::Burst } else { MissedTickBehavior::Skip });
    ticker
}

/// Loads the config file again, with its evaluator and targets (secrets through `env`); a
/// fleet's deployment, from the fleet's file (deployments added or removed wait for a restart).
fn load_again(config: &Config, env: &Env) -> Result<(Deployment, Vec<Target>), crate::diag::Diagnostics> {
    let loaded = match &config.member {
        Some(m) => {
            crate::rules::deployment::load_selected(&m.fleet, Some(&m.name)).map_err(crate::diag::Diagnostics::from)?
        }
        None => crate::rules::deployment::load(&config.path)?,
    };
    let targets = loaded.config.targets(|var| env(var))?;
    if loaded.config.state_dir != config.state_dir
        || loaded.config.listen != config.listen
        || loaded.config.ha != config.ha
    {
        tracing::warn!("state_dir, listen and [ha] changes take effect at the next restart");
    }
    Ok((loaded, targets))
}
