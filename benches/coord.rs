//! The cost of high availability's fence, measured (figures in README.md, "Performance"): one
//! acting event committed to the shared log in a real etcd — a transaction guarded by the
//! leader's term, on loopback — which every acting event pays before the local journal's
//! durable append (`benches/acting.rs`). etcd is Debian's `etcd-server` (`scripts/test.sh`
//! installs it), started here on free loopback ports with its data in `TMPDIR`.
//!
//! Run: `cargo bench --bench coord`.

use std::process::{Command, Stdio};
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rollwatch::config::deploy::HaSpec;
use rollwatch::coord::Coordinator;
use rollwatch::time::{Clock, Span, Stopwatch, SystemClock};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn fenced_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (format!("http://127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
    let mut etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd is not installed: scripts/test.sh installs Debian's etcd-server");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Long enough that the leadership outlasts the measurement without renewals.
    let spec = HaSpec::plain(vec![client], "/rollwatch/bench", Span::from_secs(3600), Some("bench"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let coord = Coordinator::new(&spec, "127.0.0.1:1".parse().unwrap(), &|_| None, clock, Box::new(|l, _| l)).unwrap();
    let waiting = Stopwatch::start();
    let mut lease = None;
    let term = loop {
        if let Ok(Some(term)) = rt.block_on(coord.elect_once(&mut lease)) {
            break term;
        }
        assert!(waiting.elapsed_secs() < 20.0, "etcd did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let line = serde_json::json!({"at": 1, "event": "step_started", "rollback_id": "rb-1", "step": 2, "action": "undo", "role": "run"});
    c.bench_function("fenced commit: one acting event to etcd (loopback txn)", |b| {
        b.iter(|| rt.block_on(coord.commit(term, line.clone())).unwrap())
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
}

criterion_group!(benches, fenced_commit);
criterion_main!(benches);
