//! SLO memory and replay (figures in README.md, "Performance"; issue 21, item 5):
//! - memory: a 30-day SLO over 100 counter series polled every second for 3 simulated days,
//!   evaluated every 15 s: the window store's bytes per series (its buffers' capacity) and the
//!   heap the whole process holds per series (a counting allocator), both against 100 KB;
//! - replay: a 30-day fixture at 1-minute samples (43,200 ticks) through one SLO, from its text
//!   (parsing and expanding included), against 1 s.
//!
//! Run: `cargo bench --bench slo`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use rollwatch::config::LoadedProfile;
use rollwatch::diag::SourceFile;
use rollwatch::fixture::{Fixture, run};
use rollwatch::rules::load;
use rollwatch::selector::SeriesKey;
use rollwatch::time::{Stopwatch, Timestamp};

/// The system allocator, counting the bytes held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SLO: &str = "[[slo]]\nname = \"availability\"\nobjective = \"99.9%\"\nperiod = \"30d\"\n\
    errors = 'http_requests_total{code=\"500\"}'\ntotal = 'http_requests_total'\n\
    [[decide]]\nask = \"Page?\"\nif = 'firing(\"availability-page\")'\nthen = \"rollback\"\n";

fn memory() {
    const SERIES: usize = 100;
    const DAYS: i64 = 3;
    let file = SourceFile { path: PathBuf::from("slo.toml"), text: SLO.into() };
    let before = HELD.load(Ordering::Relaxed);
    let mut ev = load::build(&[LoadedProfile::from_source(file).expect("parse")]).expect("compile");
    let keys: Vec<SeriesKey> = (0..SERIES)
        .map(|i| {
            let code = if i % 10 == 0 { "500" } else { "200" };
            SeriesKey::parse(&format!("http_requests_total{{code=\"{code}\",pod=\"p{i}\"}}")).unwrap()
        })
        .collect();
    let clock = Stopwatch::start();
    let mut value = 0.0;
    for s in 0..DAYS * 86_400 {
        value += 3.0;
        let t = Timestamp(s * 1000);
        for k in &keys {
            ev.sample(k, t, value);
        }
        if s % 15 == 0 {
            ev.tick(t);
        }
    }
    let held = HELD.load(Ordering::Relaxed) - before;
    let store = ev.store().sample_bytes();
    println!(
        "slo memory: {SERIES} series polled every second for {DAYS} days ({} samples) in {:.1} s: \
         window store {:.1} KB per series, whole heap {:.1} KB per series (limit 100 KB)",
        SERIES as i64 * DAYS * 86_400,
        clock.elapsed_secs(),
        store as f64 / SERIES as f64 / 1024.0,
        held as f64 / SERIES as f64 / 1024.0
    );
    assert!(held / SERIES <= 100 * 1024, "over 100 KB per series");
    let readings = ev.slo_readings(Timestamp(DAYS * 86_400_000));
    println!("  burn rates: {:?}", readings[0].1.burn_rates.iter().map(|b| b.burn_rate).collect::<Vec<_>>());
}

fn replay() {
    let dir = std::env::temp_dir().join(format!("rollwatch-slo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slo.toml"), SLO).unwrap();
    let minutes = 30 * 1440;
    // 1000 requests a minute; 2 errors a minute, then a burn of 20 for the last two hours.
    let errors = format!("0+2x{} {}+20x119", minutes - 120, 2 * (minutes - 120) + 20);
    let ok = format!("0+998x{} {}+980x119", minutes - 120, 998 * (minutes - 120) + 980);
    let text = format!(
        "profiles = [\"slo.toml\"]\ninterval = \"1m\"\n[series]\n'http_requests_total{{code=\"500\"}}' = \"{errors}\"\n\
         'http_requests_total{{code=\"200\"}}' = \"{ok}\"\n[[expect]]\nat = \"{}m\"\nfiring = [\"availability-page\"]\n",
        minutes - 1
    );
    let path = dir.join("thirty-days.toml");
    std::fs::write(&path, &text).unwrap();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let clock = Stopwatch::start();
        let (fixture, mut ev) = Fixture::load(&path).expect("fixture");
        let report = run(&fixture, &mut ev, |_, _, _| {});
        best = best.min(clock.elapsed_secs());
        assert!(report.passed(), "{:?}", report.failures);
        assert_eq!(report.ticks, minutes as u64 + 1);
    }
    println!(
        "slo replay: 30 days at 1-minute samples ({} ticks), one SLO: {best:.3} s (best of 3; limit 1 s)",
        minutes + 1
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(best < 1.0, "replay over 1 s");
}

fn main() {
    replay();
    memory();
}
