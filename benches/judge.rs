//! Cost of the baseline judge (figures in README.md, "Performance"; issue 22, goal < 50 µs):
//! - the Mann-Whitney test alone on 2 × 400 samples with ties;
//! - one whole `higher(...)` comparison through an evaluator tick: 2 series × 400 samples read
//!   from the window store, ranked and tested, the rule stepped and the decision made;
//! - Fisher's exact test on a million requests per side.
//!
//! Run: `cargo bench --bench judge`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use rollwatch::config::LoadedProfile;
use rollwatch::diag::SourceFile;
use rollwatch::expr::judge::{fisher_greater, mann_whitney_greater};
use rollwatch::rules::load;
use rollwatch::selector::SeriesKey;
use rollwatch::time::Timestamp;

const N: usize = 400;

/// 400 latencies per side, rounded to the millisecond (so there are ties), the candidate 10%
/// slower.
fn samples() -> (Vec<f64>, Vec<f64>) {
    let wave =
        |i: usize, scale: f64| ((0.1 + 0.02 * ((i * 7919) % 97) as f64 / 97.0) * scale * 1000.0).round() / 1000.0;
    ((0..N).map(|i| wave(i, 1.1)).collect(), (0..N).map(|i| wave(i + 13, 1.0)).collect())
}

fn judge(c: &mut Criterion) {
    let (cand, base) = samples();
    let mut scratch = Vec::new();
    c.bench_function("Mann-Whitney U, 2 x 400 samples", |b| {
        b.iter(|| black_box(mann_whitney_greater(black_box(&cand), black_box(&base), &mut scratch)))
    });

    let text = r#"
[[rule]]
name = "canary-latency"
when = 'higher("latency_seconds{track=\"canary\"}", "latency_seconds{track=\"stable\"}", "100m", 0.05)'

[[decide]]
ask = "Canary slower?"
if = 'firing("canary-latency")'
then = "rollback"
"#;
    let file = SourceFile { path: PathBuf::from("bench.toml"), text: text.into() };
    let mut ev = load::build(&[LoadedProfile::from_source(file).expect("parse")]).expect("compile");
    let key = |track: &str| SeriesKey::new("latency_seconds", [("track".to_string(), track.to_string())]);
    let (canary, stable) = (key("canary"), key("stable"));
    for i in 0..N {
        let t = Timestamp(i as i64 * 15_000);
        ev.sample(&canary, t, cand[i]);
        ev.sample(&stable, t, base[i]);
    }
    let now = Timestamp((N as i64 - 1) * 15_000);
    let tick = ev.tick(now);
    assert_eq!(tick.decisions[0].outcome.to_string(), "rollback", "the bench compares what it says: {tick:?}");
    c.bench_function("higher(): one tick, 2 series x 400 samples from the store", |b| {
        b.iter(|| black_box(ev.tick(now)))
    });

    c.bench_function("Fisher's exact test, 1M requests per side", |b| {
        b.iter(|| black_box(fisher_greater(black_box(2_300), 1_000_000, black_box(2_000), 1_000_000)))
    });
}

criterion_group!(benches, judge);
criterion_main!(benches);
