//! `rollwatch run -c FILE`: the sidecar. Loads and checks the config, reads target secrets from
//! the environment, runs the engine until SIGTERM or SIGINT, then exits 0 with the journal
//! flushed. SIGHUP reloads the config (a bad one is reported and the old kept).
//! `rollwatch record` runs the same sidecar for a set time, in dry-run mode, and writes what it
//! saw as a fixture.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::engine;
use crate::record::Recorder;
use crate::time::{Clock, Span, SystemClock};

pub fn run(path: &Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    sidecar(path, None, out)
}

/// What `rollwatch record` was asked for.
#[derive(Debug)]
pub struct Recording<'a> {
    pub duration: Span,
    /// The fixture to write.
    pub output: &'a Path,
    /// Instead of the config's `listen` and `state_dir`: to record beside the running sidecar.
    pub listen: Option<std::net::SocketAddr>,
    pub state_dir: Option<std::path::PathBuf>,
    /// Where to draw what was recorded, if anywhere.
    pub svg: Option<std::path::PathBuf>,
}

/// `rollwatch record -c FILE --for D -o FIXTURE [--listen ADDR] [--state-dir DIR]`.
pub fn record(path: &Path, recording: Recording, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let (duration, output, svg) = (recording.duration, recording.output, recording.svg.clone());
    let code = sidecar(path, Some(recording), out)?;
    if code == ExitCode::SUCCESS {
        writeln!(out, "recorded {} to {}", duration, output.display())?;
        if let Some(svg) = svg {
            match crate::fixture::plot::of_fixture(output) {
                Ok(plot) => {
                    std::fs::write(&svg, plot.svg()).with_context(|| format!("writing {}", svg.display()))?;
                    writeln!(out, "plot written to {}", svg.display())?;
                }
                Err(errors) => {
                    writeln!(out, "{errors}")?;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
    Ok(code)
}

fn sidecar(path: &Path, record: Option<Recording>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut loaded = match crate::rules::deployment::load_fleet(path) {
        Ok(loaded) => loaded,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    if let Some(route_alerts_by) = loaded.route_alerts_by.take() {
        if record.is_some() {
            writeln!(
                out,
                "{}: `record` of a fleet is not built yet: record one deployment from a config of its own",
                path.display()
            )?;
            return Ok(ExitCode::FAILURE);
        }
        return fleet(loaded.deployments, route_alerts_by, out);
    }
    let crate::rules::deployment::Deployment { mut config, evaluator: ev, procedures } = loaded.deployments.remove(0);
    if let Some(r) = &record {
        if let Some(listen) = r.listen {
            config.listen = listen;
        }
        if let Some(dir) = &r.state_dir {
            config.state_dir = dir.clone();
        }
    }
    if record.is_some() {
        // A recorder beside the replicas watches alone: it never campaigns for leadership.
        config.ha = None;
        // Recording watches; the deployment's own sidecar acts. Decisions are journalled as dry runs.
        config.acting.policy.mode = crate::act::Mode::DryRun;
    }
    let targets = match config.targets(|var| std::env::var(var).ok()) {
        Ok(t) => t,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let token = match &config.api_token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(crate::secret::Secret(v)),
            _ => {
                writeln!(out, "{}: api_token_env names {var}, which is not set", config.path.display())?;
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let profiles: Vec<std::path::PathBuf> =
        ev.profiles.iter().map(|p| std::fs::canonicalize(&p.path).unwrap_or_else(|_| p.path.clone())).collect();
    let recorder = record.as_ref().map(|_| Arc::new(Mutex::new(Recorder::new(config.eval_interval))));
    // Before the listen port: a second `run` on this state_dir is told who holds it.
    let lock = match crate::journal::StateLock::take(&config.state_dir) {
        Ok(lock) => lock,
        Err(e) => {
            writeln!(out, "{}: {e}", config.path.display())?;
            if record.is_some() {
                writeln!(out, "to record beside the running sidecar, give `record` its own --state-dir and --listen")?;
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    // Orphans of exec steps become ours (Linux): nothing a step started outlives it unnoticed.
    crate::act::process::contain();
    // rollwatch's own timeline (see README, "When rollwatch is the problem"): it resumes where the
    // journal left it, never before its last date; alone, it continues the last run's timeline
    // (a step of the system clock then carried over), while replicas take etcd's clock as the
    // reference and start on the system clock.
    let last = match crate::journal::LastTimeline::read(&config.state_dir) {
        Ok(last) => last,
        Err(e) => {
            writeln!(out, "{}: {e}", config.path.display())?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let clock = crate::time::SteadyClock::starting_at(last.resume(SystemClock.now(), config.ha.is_none()));
    // Log lines dated as the journal's, whatever the system clock does meanwhile.
    crate::time::date_logs_by(clock);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        if record.is_none() {
            // One line at start, whatever the log level: where to look.
            let addr = listener.local_addr().map_or_else(|_| config.listen.to_string(), |a| a.to_string());
            writeln!(
                out,
                "rollwatch: watching {} target(s) with {}; status at http://{addr}/status; journal {}",
                targets.len(),
                ev.profiles.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
                config.state_dir.join("journal.jsonl").display()
            )?;
            out.flush()?;
        }
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let limit = record.as_ref().map(|r| r.duration);
        // The signal listeners: ended once the engine has stopped.
        let mut listeners = tokio::task::JoinSet::new();
        listeners.spawn(async move {
            match limit {
                Some(d) => tokio::select! {
                    _ = wait_for_signal() => {}
                    _ = tokio::time::sleep(d.as_std()) => {}
                },
                None => wait_for_signal().await,
            }
            tracing::info!("stopping");
            let _ = stop.send(true);
        });
        let (reload_tx, reload) = tokio::sync::mpsc::channel(1);
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            listeners.spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = reload_tx.try_send(());
                }
            });
        }
        let parts = engine::Parts {
            listener: Some(listener),
            token,
            reload: Some(reload),
            recorder: recorder.clone(),
            lock: Some(lock),
            clock: Arc::new(clock),
            ..engine::Parts::new(ev, procedures, targets)
        };
        let ran = engine::run(config, parts, shutdown).await.map_err(anyhow::Error::from);
        listeners.abort_all();
        while listeners.join_next().await.is_some() {}
        ran
    })?;
    if let (Some(r), Some(recorder)) = (record, recorder) {
        let recorder = recorder.lock().map_err(|_| anyhow::anyhow!("recorder poisoned"))?;
        // Profiles named relative to the fixture, so that it can move with them (a repository).
        let base = std::path::absolute(r.output)
            .ok()
            .and_then(|o| o.parent().map(Path::to_path_buf))
            .and_then(|dir| std::fs::canonicalize(dir).ok());
        let paths: Vec<std::path::PathBuf> = profiles
            .iter()
            .map(|p| base.as_ref().and_then(|b| pathdiff::diff_paths(p, b)).unwrap_or_else(|| p.clone()))
            .collect();
        let paths: Vec<&Path> = paths.iter().map(|p| p.as_path()).collect();
        std::fs::write(r.output, recorder.fixture(&paths))
            .with_context(|| format!("writing {}", r.output.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `run` of a fleet: each deployment's secrets, state_dir lock and timeline, then every
/// deployment's engine behind one server until SIGTERM or SIGINT; SIGHUP reloads each.
fn fleet(
    deployments: Vec<crate::rules::deployment::Deployment>,
    route_alerts_by: String,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let Some(first) = deployments.first() else { return Ok(ExitCode::FAILURE) };
    let (listen, max_connections, api_token_env) =
        (first.config.listen, first.config.max_connections, first.config.api_token_env.clone());
    let top = first.config.member.as_ref().map_or_else(|| first.config.path.clone(), |m| m.fleet.clone());
    let token = match &api_token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Some(crate::secret::Secret(v)),
            _ => {
                writeln!(out, "{}: api_token_env names {var}, which is not set", top.display())?;
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let mut ready = Vec::new();
    let mut targets_total = 0;
    for d in deployments {
        let name = d.config.member.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let targets = match d.config.targets(|var| std::env::var(var).ok()) {
            Ok(t) => t,
            Err(errors) => {
                writeln!(out, "{}", crate::config::fleet::tag(errors, &name))?;
                return Ok(ExitCode::FAILURE);
            }
        };
        targets_total += targets.len();
        let lock = match crate::journal::StateLock::take(&d.config.state_dir) {
            Ok(lock) => lock,
            Err(e) => {
                writeln!(out, "{}: deployment {name:?}: {e}", top.display())?;
                return Ok(ExitCode::FAILURE);
            }
        };
        let last = match crate::journal::LastTimeline::read(&d.config.state_dir) {
            Ok(last) => last,
            Err(e) => {
                writeln!(out, "{}: deployment {name:?}: {e}", top.display())?;
                return Ok(ExitCode::FAILURE);
            }
        };
        let clock = crate::time::SteadyClock::starting_at(last.resume(SystemClock.now(), d.config.ha.is_none()));
        ready.push((name, d, targets, lock, clock));
    }
    let shared = ready.first().is_some_and(|r| r.1.config.ha.is_some());
    crate::act::process::contain();
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().map_or_else(|_| listen.to_string(), |a| a.to_string());
        let names: Vec<&str> = ready.iter().map(|r| r.0.as_str()).collect();
        writeln!(
            out,
            "rollwatch: watching {} deployment(s) ({}) with {targets_total} target(s){}; status at http://{addr}/status; journals in each deployment's state_dir",
            names.len(),
            names.join(", "),
            if shared { " shared among replicas on etcd: this one polls only those it holds" } else { "" },
        )?;
        out.flush()?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut listeners = tokio::task::JoinSet::new();
        listeners.spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping");
            let _ = stop.send(true);
        });
        let mut reloads = Vec::new();
        let mut members = Vec::new();
        for (name, d, targets, lock, clock) in ready {
            let (reload_tx, reload) = tokio::sync::mpsc::channel(1);
            reloads.push(reload_tx);
            let parts = engine::Parts {
                reload: Some(reload),
                lock: Some(lock),
                clock: Arc::new(clock),
                ..engine::Parts::new(d.evaluator, d.procedures, targets)
            };
            members.push(engine::fleet::Member { name, config: d.config, parts });
        }
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            listeners.spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading every deployment's config");
                    for r in &reloads {
                        let _ = r.try_send(());
                    }
                }
            });
        }
        let front = engine::fleet::Front { listener, token, route_alerts_by, max_connections };
        let ran = engine::fleet::run(members, front, shutdown).await.map_err(anyhow::Error::from);
        listeners.abort_all();
        while listeners.join_next().await.is_some() {}
        ran
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process is stopped the hard way; wait forever.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
