//! `rollwatch demo`: a simulated deployment on loopback — a health endpoint with the deployed
//! version and a metrics endpoint — watched by the shipped SOLVEREIGN profile through the real
//! engine: the same pollers, store, evaluator, dispatcher and journal as `run`. v1.2.3 runs
//! healthy and bakes (good); v1.2.4 is deployed and its error rate climbs (0.5% → 3% → 12%). It
//! prints each tick's signals, every rule state change and the decision path; on `rollback` the
//! profile's procedure runs against the simulation — announce, `POST /rollback?to=v1.2.3` (the
//! last version that ran healthy), health and version checks — then verifies that the error
//! rules stay quiet on v1.2.3's own evidence and announces "ROLLBACK COMPLETE" with the duration
//! on a console channel. It ends by itself when the rollback completes (or fails, or after 90 s).

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::engine::{self, Parts, TickEvent};
use crate::notify::Console;
use crate::rules::Outcome;
use crate::time::Stopwatch;

/// The SOLVEREIGN profile, shipped inside the binary.
pub const PROFILE: &str = include_str!("../rules/solvereign.toml");

/// The simulated service: its counters and what is deployed.
#[derive(Debug)]
struct Sim {
    ok: f64,
    errors: f64,
    version: String,
    /// When the bad release was deployed (seconds into the demo).
    bad_since: Option<f64>,
}

/// The bad release and the one before it.
pub const BAD_VERSION: &str = "v1.2.4";
pub const GOOD_VERSION: &str = "v1.2.3";

/// When the simulation's pipeline deploys the bad release (seconds into the demo).
pub const DEPLOY_AT: f64 = 6.0;

/// The share of failing requests `secs` after the bad release was deployed.
pub fn error_share(secs: f64) -> f64 {
    match secs {
        s if s < 8.0 => 0.005,
        s if s < 16.0 => 0.03,
        _ => 0.12,
    }
}

/// The share of failing requests of a healthy version.
const HEALTHY_SHARE: f64 = 0.002;

/// Requests a second the simulated service handles.
const RPS: f64 = 200.0;

async fn serve_sim(listener: tokio::net::TcpListener, sim: Arc<Mutex<Sim>>) {
    let metrics = {
        let sim = sim.clone();
        move || {
            let sim = sim.clone();
            async move {
                let s = sim.lock().map(|s| (s.ok, s.errors)).unwrap_or_default();
                let mut body = String::from("# TYPE http_requests_total counter\n");
                let _ = writeln!(body, "http_requests_total{{code=\"200\"}} {}", s.0.floor());
                let _ = writeln!(body, "http_requests_total{{code=\"500\"}} {}", s.1.floor());
                body
            }
        }
    };
    async fn health(State(sim): State<Arc<Mutex<Sim>>>) -> String {
        let version = sim.lock().map(|s| s.version.clone()).unwrap_or_default();
        format!(r#"{{"status":"ok","version":"{version}"}}"#)
    }
    #[derive(serde::Deserialize)]
    struct To {
        to: String,
    }
    /// `POST /rollback?to=VERSION`: what `kubectl rollout undo --to-revision` does here.
    async fn rollback(State(sim): State<Arc<Mutex<Sim>>>, Query(to): Query<To>) -> (StatusCode, String) {
        if to.to != GOOD_VERSION {
            return (StatusCode::BAD_REQUEST, format!("no such revision {:?}\n", to.to));
        }
        if let Ok(mut s) = sim.lock() {
            s.version = to.to.clone();
            s.bad_since = None;
        }
        (StatusCode::OK, format!("rolled back to {}\n", to.to))
    }
    let app = Router::new()
        .route("/health/ready", get(health))
        .route("/rollback", post(rollback))
        .with_state(sim.clone())
        .route("/metrics", get(metrics));
    let _ = axum::serve(listener, app).await;
}

/// Runs the demo, writing its story to `out`.
pub async fn run(out: &mut (dyn Write + Send)) -> anyhow::Result<bool> {
    let sim = Arc::new(Mutex::new(Sim { ok: 0.0, errors: 0.0, version: GOOD_VERSION.into(), bad_since: None }));
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sim_addr = sim_listener.local_addr()?;
    // The simulation's server and traffic: stopped once the story is told.
    let mut simulation = tokio::task::JoinSet::new();
    simulation.spawn(serve_sim(sim_listener, sim.clone()));
    let clock = Stopwatch::start();
    {
        // Traffic: RPS requests a second; the pipeline deploys the bad release at DEPLOY_AT, and a
        // growing share of its requests fail.
        let sim = sim.clone();
        simulation.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            let mut deployed = false;
            loop {
                every.tick().await;
                if let Ok(mut s) = sim.lock() {
                    let now = clock.elapsed_secs();
                    if !deployed && now >= DEPLOY_AT {
                        deployed = true;
                        s.version = BAD_VERSION.into();
                        s.bad_since = Some(now);
                    }
                    let share = s.bad_since.map_or(HEALTHY_SHARE, |since| error_share(now - since));
                    s.errors += RPS / 10.0 * share;
                    s.ok += RPS / 10.0 * (1.0 - share);
                }
            }
        });
    }

    let dir = std::env::temp_dir().join(format!("rollwatch-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("solvereign.toml"), PROFILE)?;
    let config_text = format!(
        r#"profiles = ["solvereign.toml"]
state_dir = "{state}"
listen = "127.0.0.1:0"
eval_interval = "1s"
version = {{ target = "api", field = "version" }}

[[target]]
name = "api"
kind = "health"
url = "http://{sim_addr}/health/ready"
interval = "500ms"
timeout = "1s"
critical = true

[[target]]
name = "api-metrics"
kind = "prometheus"
url = "http://{sim_addr}/metrics"
interval = "500ms"
timeout = "1s"

[policy]
mode = "auto"
verify_for = "60s"
verify_stable = "5s"           # the error rules quiet this long on v1.2.3's own evidence
bake = "4s"                    # a version that ran clean this long is good (a rollback target)

[channels.console]
kind = "console"

# What the profile's rollback procedure names, bound to the simulation.
[actions.undo]
kind = "http"
method = "POST"
url = "http://{sim_addr}/rollback?to={{{{target_version}}}}"

[actions.rollout-status]
kind = "http"
method = "GET"
url = "http://{sim_addr}/health/ready"

[actions.health-ready]
kind = "http"
method = "GET"
url = "http://{sim_addr}/health/ready"

[actions.version-check]
kind = "http"
method = "GET"
url = "http://{sim_addr}/health/ready"
"#,
        state = dir.join("state").display()
    );
    let config_path: PathBuf = dir.join("rollwatch.toml");
    std::fs::write(&config_path, config_text)?;
    let crate::rules::deployment::Deployment { config, evaluator, procedures } =
        crate::rules::deployment::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let targets = config.targets(|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;

    writeln!(
        out,
        "rollwatch demo: a simulated deployment on {sim_addr} ({RPS} requests/s): {GOOD_VERSION} runs healthy, then\n\
         {BAD_VERSION} is deployed at {DEPLOY_AT} s and fails 0.5% of requests, 3% after 8 s, 12% after 16 s"
    )?;
    writeln!(
        out,
        "watched by the SOLVEREIGN profile (runbook 004): error rate > 5% → rollback, > 1% for 5 min → consider\n"
    )?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<TickEvent>();
    let (console_tx, mut console) = tokio::sync::mpsc::unbounded_channel::<String>();
    let parts =
        Parts { events: Some(tx), console: Console::Sender(console_tx), ..Parts::new(evaluator, procedures, targets) };
    let journal = config.state_dir.join("journal.jsonl");
    let engine = tokio::spawn(async move { engine::run(config, parts, shutdown).await });
    let mut completed = false;
    let mut decided = false;
    let mut last_path = String::new();
    let mut shown_version = String::new();
    let deadline = tokio::time::sleep(Duration::from_secs(90));
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => break },
            Some(message) = console.recv() => {
                let secs = clock.elapsed_secs();
                writeln!(out, "\n{secs:6.1}s  [console]")?;
                for line in message.lines() {
                    writeln!(out, "         | {line}")?;
                }
                writeln!(out)?;
                if message.contains("ROLLBACK COMPLETE") {
                    completed = true;
                    break;
                }
                if message.contains("ROLLBACK FAILED") {
                    break;
                }
                continue;
            }
            _ = &mut deadline => break,
        };
        let secs = clock.elapsed_secs();
        let version = sim.lock().map(|s| s.version.clone()).unwrap_or_default();
        if version != shown_version {
            writeln!(out, "{secs:6.1}s  version {version} deployed")?;
            shown_version = version;
        }
        for t in &event.tick.transitions {
            writeln!(
                out,
                "{secs:6.1}s  rule {} {} → {} (value {})",
                t.rule,
                t.from,
                t.to,
                crate::template::show(&t.rule, t.value)
            )?;
        }
        let error_rate = event.signals.iter().find(|(name, _)| name == "error_rate").and_then(|(_, v)| *v);
        let rate = error_rate.map(|v| format!("{:.2}%", v * 100.0)).unwrap_or_else(|| "no data".into());
        let d = &event.tick.decisions[0];
        let path = d.explanation();
        let shown = if path == last_path { String::new() } else { format!("  {path}") };
        let line = format!("{secs:6.1}s  error_rate {rate:>8}  {:<8}{shown}", d.outcome.to_string().to_uppercase());
        writeln!(out, "{}", line.trim_end())?;
        last_path = path;
        if d.outcome == Outcome::Rollback && !decided {
            decided = true;
            writeln!(out, "\nROLLBACK decided after {secs:.1}s: {}", d.explanation())?;
            let firing: Vec<String> =
                d.firing.iter().map(|r| format!("{} = {}", r.rule, crate::template::show(&r.rule, r.value))).collect();
            writeln!(out, "firing: {}", firing.join(", "))?;
            writeln!(
                out,
                "acting: the profile's rollback procedure runs against the simulation; verifying for up to 60s\n"
            )?;
        }
    }
    let _ = stop.send(true);
    let _ = engine.await;
    simulation.abort_all();
    while simulation.join_next().await.is_some() {}
    writeln!(out, "journal: {}", journal.display())?;
    if let Ok(entries) = crate::act::history::read(&journal) {
        for e in entries {
            writeln!(out, "history: {}", e.summary())?;
            for step in &e.steps {
                writeln!(out, "  step {step}")?;
            }
        }
    }
    Ok(completed)
}
