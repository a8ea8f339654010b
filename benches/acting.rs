//! Speed of the acting path, measured (figures in README.md, "Performance"):
//! - one journal line appended and fsynced, directly and through the shared writer thread (what
//!   an acting event costs before it counts as done), on the disk `TMPDIR` is on;
//! - group commit: 100 notes (decisions, notification results) and one durable append behind
//!   them — one write and one fsync for all 101 lines;
//! - the dispatcher's share of a tick when nothing is to be done (5 profiles deciding `monitor`);
//! - rendering the "ROLLBACK IN PROGRESS" template with Slack escaping;
//! - reading the versions back from a journal of 10,000 and of 100,000 deploys (what `versions`
//!   and `history` do before they print, and a restart before it acts): linear, so ten times
//!   the deploys take ten times as long.
//!
//! Run: `cargo bench --bench acting`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rollwatch::act::{Acting, Dispatcher, Plan, Policy};
use rollwatch::journal::{Journal, SharedJournal};
use rollwatch::notify::{Console, Notifier, Templates};
use rollwatch::rules::{Decision, Outcome};
use rollwatch::template::messages::blank_vars;
use rollwatch::time::{SystemClock, Timestamp};

fn journal(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut j = Journal::open(dir.path()).unwrap();
    let event = serde_json::json!({"rollback_id": "rb-1", "step": 2, "action": "undo", "role": "run"});
    c.bench_function("journal append + fsync", |b| {
        b.iter(|| j.append(Timestamp(1), "step_started", black_box(&event)).unwrap())
    });
    drop(j);
    let shared = SharedJournal::new(Journal::open(dir.path()).unwrap());
    c.bench_function("shared journal: durable append (writer thread + fsync)", |b| {
        b.iter(|| shared.append(Timestamp(1), "step_started", black_box(&event)).unwrap())
    });
    let decision = serde_json::json!({"profile": "solvereign", "outcome": "monitor", "path": []});
    c.bench_function("shared journal: 100 notes + 1 durable append (group commit)", |b| {
        b.iter(|| {
            for _ in 0..100 {
                shared.note(Timestamp(1), "decision", black_box(&decision));
            }
            shared.append(Timestamp(1), "step_started", black_box(&event)).unwrap()
        })
    });
}

fn dispatcher(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _guard = runtime.enter();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedJournal::new(Journal::open(dir.path()).unwrap());
    let clock = Arc::new(SystemClock);
    let client = reqwest::Client::new();
    let notifier = Notifier::start(vec![], Templates::default(), client.clone(), Console::Stdout, None, clock.clone());
    let names = ["solvereign", "mdm", "piforge", "mycelia", "mace"];
    let plans = names
        .iter()
        .map(|p| {
            let rules = (0..10).map(|i| format!("{p}-rule-{i}")).collect();
            (
                p.to_string(),
                Plan {
                    procedures: BTreeMap::new(),
                    consider_auto_after: None,
                    rules,
                    labels: BTreeMap::new(),
                    reads: vec![],
                    environment: vec![],
                    summaries: BTreeMap::new(),
                },
            )
        })
        .collect();
    let acting = Acting {
        policy: Policy::default(),
        actions: Arc::new(BTreeMap::new()),
        plans,
        redactor: Default::default(),
        config_path: "rollwatch.toml".into(),
        deployment: None,
        version_source: false,
    };
    let ledger = rollwatch::act::ledger::Ledger::local(shared);
    let (mut d, _done, _) = Dispatcher::new(acting, notifier, ledger, client, clock, &[]).unwrap();
    let decisions: Vec<Decision> = names.iter().map(|p| Decision::new(Timestamp(1), p, Outcome::Monitor)).collect();
    d.on_version_observed(Timestamp(1), "v1").result().unwrap();
    d.on_tick(Timestamp(1), &decisions).result().unwrap();
    c.bench_function("dispatcher tick, 5 profiles, nothing to do", |b| {
        b.iter(|| d.on_tick(Timestamp(2), black_box(&decisions)).result().unwrap())
    });
}

fn template(c: &mut Criterion) {
    let t = Templates::default();
    let mut vars = blank_vars();
    vars.insert("reason".into(), "Is error rate > 5% (error-rate-critical = 0.0812) <@here> & co".into());
    c.bench_function("render rollback_in_progress for Slack", |b| {
        b.iter(|| t.render("rollback_in_progress", black_box(&vars), rollwatch::template::Escape::Slack).unwrap())
    });
}

/// A journal of `n` deploys through the hook, each a new version, as the sidecar writes them.
fn deploys(dir: &std::path::Path, n: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join(format!("{n}.jsonl"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, r#"{{"at":1,"event":"deploy","from":null,"to":"v1","source":"hook"}}"#).unwrap();
    for i in 2..=n {
        writeln!(f, r#"{{"at":{i},"event":"deploy","from":"v{}","to":"v{i}","source":"hook"}}"#, i - 1).unwrap();
    }
    path
}

fn versions(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("versions read back");
    group.sample_size(10);
    for n in [10_000, 100_000] {
        let path = deploys(dir.path(), n);
        group.bench_function(format!("{n} deploys"), |b| {
            b.iter(|| rollwatch::act::history::state(black_box(&path)).unwrap().versions.current)
        });
    }
    group.finish();
}

criterion_group!(benches, journal, dispatcher, template, versions);
criterion_main!(benches);
