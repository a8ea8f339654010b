//! End to end over real sockets: a loopback service whose error rate switches mid-test, polled by
//! the live engine with second-scale windows. An 8% error rate gives `rollback` within the rule's
//! window + one poll + one evaluation interval of the switch; a 3% rate gives `consider` only
//! after the sustained rule's `for`. Real sockets and a real clock: the bounds carry a stated
//! allowance for scheduling on a loaded 2-core machine, and nothing sleeps to get a result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::{counters_service, write};
use rollwatch::engine::{Parts, TickEvent};
use rollwatch::rules::Outcome;
use rollwatch::time::Stopwatch;
use tokio::sync::mpsc::UnboundedReceiver;

const WINDOW_S: f64 = 2.0;
const POLL_S: f64 = 0.2;
const EVAL_S: f64 = 0.2;
const FOR_S: f64 = 3.0;
/// Scheduling allowance for a loaded CI machine.
const SLACK_S: f64 = 1.0;

const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "2s", 20)'

[[rule]]
name = "critical"
when = 'error_rate > 0.05'

[[rule]]
name = "elevated"
when = 'error_rate > 0.01'
for = "3s"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("critical")'
then = "rollback"

[[decide]]
ask = "Is error rate > 1% (3s)?"
if = 'firing("elevated")'
then = "consider"
"#;

struct Running {
    permille: Arc<AtomicU64>,
    events: UnboundedReceiver<TickEvent>,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let permille = Arc::new(AtomicU64::new(5));
    let url = counters_service(permille.clone(), 100.0, Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = format!(
        "profiles = [\"p.toml\"]\nstate_dir = \"{}\"\neval_interval = \"200ms\"\n[[target]]\nname = \"app\"\nkind = \"prometheus\"\nurl = \"{url}\"\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
        dir.path().join("state").display()
    );
    let rollwatch::rules::deployment::Deployment { config, evaluator, procedures } =
        rollwatch::rules::deployment::load(&write(dir.path(), "rollwatch.toml", cfg)).unwrap_or_else(|e| panic!("{e}"));
    let targets = config.targets(|_| None).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let parts = Parts { events: Some(tx), ..Parts::new(evaluator, procedures, targets) };
    tokio::spawn(async move { rollwatch::engine::run(config, parts, shutdown).await });
    Running { permille, events, stop, _dir: dir }
}

/// Waits (up to `limit`) for a tick whose outcome is `want`; returns the events seen before.
async fn until(events: &mut UnboundedReceiver<TickEvent>, want: Outcome, limit: Duration) -> Option<Vec<Outcome>> {
    tokio::time::timeout(limit, async {
        let mut seen = Vec::new();
        while let Some(e) = events.recv().await {
            let outcome = e.tick.decisions[0].outcome;
            if outcome == want && !e.tick.decisions[0].unknown.contains(&"critical".to_string()) {
                return Some(seen);
            }
            seen.push(outcome);
        }
        None
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_percent_errors_roll_back_within_window_poll_and_evaluation() {
    let mut run = start().await;
    // A healthy baseline with data: 0.5% errors give monitor.
    until(&mut run.events, Outcome::Monitor, Duration::from_secs(10)).await.expect("a monitor decision with data");
    run.permille.store(80, Ordering::SeqCst);
    let switched = Stopwatch::start();
    let before = until(&mut run.events, Outcome::Rollback, Duration::from_secs(10)).await.expect("rollback");
    let took = switched.elapsed_secs();
    eprintln!("took {took:.2}s");
    assert!(took <= WINDOW_S + POLL_S + EVAL_S + SLACK_S, "rollback {took:.2}s after the switch");
    assert!(!before.contains(&Outcome::Consider), "8% is not a `consider` first: {before:?}");
    run.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_percent_errors_are_consider_only_after_for() {
    let mut run = start().await;
    until(&mut run.events, Outcome::Monitor, Duration::from_secs(10)).await.expect("a monitor decision with data");
    run.permille.store(30, Ordering::SeqCst);
    let switched = Stopwatch::start();
    let before = until(&mut run.events, Outcome::Consider, Duration::from_secs(15)).await.expect("consider");
    let took = switched.elapsed_secs();
    eprintln!("took {took:.2}s");
    assert!(took >= FOR_S, "consider {took:.2}s after the switch, before `for` ({FOR_S}s)");
    assert!(took <= FOR_S + WINDOW_S + POLL_S + EVAL_S + SLACK_S, "consider {took:.2}s after the switch");
    assert!(before.iter().all(|o| *o == Outcome::Monitor), "{before:?}");
    run.stop.send(true).unwrap();
}
