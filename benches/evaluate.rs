//! Speed of the core, measured (figures in README.md, "Performance"):
//! - one evaluation tick over 10,000 series and 1,000 rules (2,000 window calls), with and
//!   without the 10,000 sample pushes a live tick receives;
//! - a replay of a 24-hour fixture at 15 s resolution (5,760 ticks) through the SOLVEREIGN
//!   profile, including loading and expanding the fixture;
//! - the checkpoint of 10,000 series holding an hour at 15 s each (2.4 million samples):
//!   encoding it (the engine's share every 30 s) and restoring it into a fresh evaluator (a
//!   restart's share).
//!
//! Run: `cargo bench --bench evaluate`.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use rollwatch::config::LoadedProfile;
use rollwatch::diag::SourceFile;
use rollwatch::fixture::{Fixture, run};
use rollwatch::rules::{Evaluator, load};
use rollwatch::selector::SeriesKey;
use rollwatch::time::Timestamp;

const SERVICES: usize = 1000;
const CODES: [&str; 5] = ["200", "201", "404", "500", "503"];
const METHODS: [&str; 2] = ["GET", "POST"];
const STEP_MS: i64 = 15_000;

/// 1,000 rules, one per service: its 5xx ratio over a minute above 5%.
fn big_profile() -> Evaluator {
    let mut text = String::new();
    for s in 0..SERVICES {
        text.push_str(&format!(
            "[[rule]]\nname = \"errors-s{s}\"\nwhen = 'ratio(\"http_requests_total{{service=\\\"s{s}\\\",code=~\\\"5..\\\"}}\", \"http_requests_total{{service=\\\"s{s}\\\"}}\", \"1m\", 10) > 0.05'\nfor = \"2m\"\n\n"
        ));
    }
    text.push_str("[[decide]]\nask = \"Any service failing?\"\nif = 'firing(\"errors-s0\") || firing(\"errors-s1\")'\nthen = \"rollback\"\n");
    let file = SourceFile { path: PathBuf::from("bench.toml"), text };
    load::build(&[LoadedProfile::from_source(file).expect("parse")]).expect("compile")
}

/// 10,000 series: services × codes × methods.
fn keys() -> Vec<SeriesKey> {
    let mut keys = Vec::with_capacity(SERVICES * CODES.len() * METHODS.len());
    for s in 0..SERVICES {
        for code in CODES {
            for method in METHODS {
                let labels = [("service", format!("s{s}")), ("code", code.to_string()), ("method", method.to_string())];
                keys.push(SeriesKey::new("http_requests_total", labels.map(|(k, v)| (k.to_string(), v))));
            }
        }
    }
    keys
}

fn push_all(ev: &mut Evaluator, keys: &[SeriesKey], k: i64) {
    let t = Timestamp(k * STEP_MS);
    for (i, key) in keys.iter().enumerate() {
        ev.sample(key, t, (k * (1 + i as i64 % 7)) as f64);
    }
}

fn tick(c: &mut Criterion) {
    let keys = keys();
    assert_eq!(keys.len(), 10_000);
    let mut ev = big_profile();
    assert_eq!(ev.rules.len(), 1_000);
    for k in 0..20 {
        push_all(&mut ev, &keys, k);
        ev.tick(Timestamp(k * STEP_MS));
    }
    let mut k = 20;
    c.bench_function("tick: 10k series, 1k rules (evaluate only)", |b| {
        b.iter(|| black_box(ev.tick(Timestamp(k * STEP_MS))))
    });
    c.bench_function("tick: 10k series, 1k rules (10k pushes + evaluate)", |b| {
        b.iter(|| {
            k += 1;
            push_all(&mut ev, &keys, k);
            black_box(ev.tick(Timestamp(k * STEP_MS)))
        })
    });
}

/// A day of SOLVEREIGN traffic at 15 s: 0.5% errors, an hour of 1.2%, a latency histogram, the
/// health target, memory gauges.
fn day_fixture() -> SourceFile {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let n = 24 * 60 * 4; // samples - 1
    let bad_from = 12 * 60 * 4;
    let bad = 60 * 4;
    let errs_before = 5 * bad_from;
    let errs_bad_end = errs_before + 12 * bad;
    let text = format!(
        r#"profiles = ["{profile}"]
interval = "15s"

[series]
'http_requests_total{{code="500"}}' = "0+5x{bad_from} {b1}+12x{bad_m1} {b2}+5x{rest}"
'http_requests_total{{code="200"}}' = "0+995x{n}"
'http_request_duration_seconds_bucket{{le="0.1"}}' = "0+990x{n}"
'http_request_duration_seconds_bucket{{le="0.5"}}' = "0+999x{n}"
'http_request_duration_seconds_bucket{{le="+Inf"}}' = "0+1000x{n}"
'up{{target="api"}}' = "1x{n}"
'node_memory_MemAvailable_bytes' = "400x{n}"
'node_memory_MemTotal_bytes' = "1000x{n}"

[[expect]]
at = "12h"
decision = "monitor"
"#,
        profile = root.join("rules/solvereign.toml").display(),
        b1 = errs_before + 12,
        bad_m1 = bad - 1,
        b2 = errs_bad_end + 5,
        rest = n - bad_from - bad - 1,
    );
    SourceFile { path: root.join("fixtures/bench-day.toml"), text }
}

fn replay(c: &mut Criterion) {
    let file = day_fixture();
    let (fixture, mut ev) = Fixture::from_source(file.clone()).unwrap_or_else(|e| panic!("{e}"));
    let report = run(&fixture, &mut ev, |_, _, _| {});
    assert_eq!(report.ticks, 5761);
    assert!(report.passed(), "{:?}", report.failures);
    let mut group = c.benchmark_group("replay");
    group.sample_size(10);
    group.bench_function("24h at 15s, SOLVEREIGN (load + 5,761 ticks)", |b| {
        b.iter(|| {
            let (fixture, mut ev) = Fixture::from_source(file.clone()).expect("load");
            black_box(run(&fixture, &mut ev, |_, _, _| {}))
        })
    });
    group.finish();
}

/// One rule reading every series over an hour: each keeps an hour (and more) of samples.
fn hour_profile() -> Evaluator {
    let text = "[[rule]]\nname = \"traffic\"\nwhen = 'rate(\"http_requests_total\", \"1h\") > 0'\n".to_string();
    let file = SourceFile { path: PathBuf::from("hour.toml"), text };
    load::build(&[LoadedProfile::from_source(file).expect("parse")]).expect("compile")
}

fn checkpoint(c: &mut Criterion) {
    let keys = keys();
    let mut ev = hour_profile();
    for k in 0..240 {
        push_all(&mut ev, &keys, k);
        if k % 4 == 0 {
            ev.tick(Timestamp(k * STEP_MS));
        }
    }
    let now = Timestamp(240 * STEP_MS);
    let bytes = ev.checkpoint(now);
    let samples: usize = ev.store().series().map(|s| s.samples.len()).sum();
    assert_eq!(samples, 2_400_000);
    eprintln!(
        "checkpoint: {} bytes for {samples} samples ({:.1} bytes a sample)",
        bytes.len(),
        bytes.len() as f64 / samples as f64
    );
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(10);
    group.bench_function("encode 10k series x 240 samples", |b| b.iter(|| black_box(ev.checkpoint(now))));
    group.bench_function("restore 10k series x 240 samples", |b| {
        b.iter(|| {
            let mut fresh = hour_profile();
            black_box(fresh.restore(&bytes, now).expect("restore"))
        })
    });
    group.finish();
}

criterion_group!(benches, tick, replay, checkpoint);
criterion_main!(benches);
