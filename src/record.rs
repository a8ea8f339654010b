//! `rollwatch record`: what a live run saw, written as a fixture that `test` and `replay` accept.
//! Every series in the window store (alerts included, as `ALERTS` series) is resampled onto the
//! evaluation grid — the last value at or before each tick — and written in promtool notation,
//! compressed into `axn` and `a+bxn` runs; each change of decision becomes an `[[expect]]`, so
//! replaying the recording checks that fixture time reproduces what wall time decided.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::fixture::Entry;
use crate::rules::{Decision, Outcome};
use crate::selector::SeriesKey;
use crate::source::exposition::format_value;
use crate::template::toml_string;
use crate::time::{Span, Timestamp};
use crate::window::{Latest, Store};

/// One recorded decision change.
#[derive(Debug, Clone, PartialEq)]
struct Expectation {
    tick: usize,
    profile: String,
    outcome: Outcome,
    firing: Vec<String>,
}

/// Collects the grid as the engine ticks.
#[derive(Debug)]
pub struct Recorder {
    interval: Span,
    ticks: usize,
    columns: BTreeMap<SeriesKey, Vec<Entry>>,
    expectations: Vec<Expectation>,
    last: BTreeMap<String, (Outcome, Vec<String>)>,
    /// The live time of the first tick: fixture time 0.
    start: Option<Timestamp>,
    /// Deploys seen, at fixture time.
    deploys: Vec<(Span, String)>,
}

impl Recorder {
    /// A recorder for ticks every `interval` (the fixture's `interval`).
    pub fn new(interval: Span) -> Recorder {
        Recorder {
            interval,
            ticks: 0,
            columns: BTreeMap::new(),
            expectations: Vec::new(),
            last: BTreeMap::new(),
            start: None,
            deploys: Vec::new(),
        }
    }

    /// Records one tick: every series' value as of `now`, and the decisions if they changed.
    pub fn observe(&mut self, store: &Store, now: Timestamp, decisions: &[Decision]) {
        self.start.get_or_insert(now);
        let k = self.ticks;
        for (key, latest) in store.latest(now) {
            let column = self.columns.entry(key.clone()).or_insert_with(|| vec![Entry::Missing; k]);
            let entry = match latest {
                Latest::Value(v) => Entry::Value(v),
                // A stale marker is written once; afterwards the series is simply missing.
                Latest::Stale if column.last().is_some_and(|e| *e != Entry::Stale && *e != Entry::Missing) => {
                    Entry::Stale
                }
                Latest::Stale | Latest::Absent => Entry::Missing,
            };
            column.push(entry);
        }
        for column in self.columns.values_mut() {
            column.resize(k + 1, Entry::Missing);
        }
        for d in decisions {
            let firing: Vec<String> = d.firing.iter().map(|r| r.rule.clone()).collect();
            let now_state = (d.outcome, firing.clone());
            if self.last.get(&d.profile) != Some(&now_state) {
                self.expectations.push(Expectation { tick: k, profile: d.profile.clone(), outcome: d.outcome, firing });
                self.last.insert(d.profile.clone(), now_state);
            }
        }
        self.ticks += 1;
    }

    /// `version` was deployed at live time `at` (the evidence restarted there). The live run
    /// applies it at its next tick, the one [`observe`](Self::observe) records next: the fixture
    /// places it within that tick's interval, so that its replay applies it at the same tick.
    /// The live offset alone would not do: the grid puts tick k at k × interval, while the live
    /// tick k came late or early of that (a loaded machine, a skipped tick).
    ///
    /// Returns where the fixture places it, as a live time: the live run restarts its evidence
    /// there too, so that live and replay read the same windows.
    pub fn deploy(&mut self, at: Timestamp, version: &str) -> Timestamp {
        let start = *self.start.get_or_insert(at);
        let next = self.ticks as i64 * self.interval.0;
        let offset = at.saturating_since(start).0.clamp(next - self.interval.0 + 1, next).max(0);
        self.deploys.push((Span(offset), version.to_string()));
        start.plus(Span(offset))
    }

    /// Ticks recorded.
    pub fn ticks(&self) -> usize {
        self.ticks
    }

    /// The fixture text; `profiles` are written as given.
    pub fn fixture(&self, profiles: &[&Path]) -> String {
        let mut out =
            String::from("# Recorded by `rollwatch record`: every series resampled onto the evaluation grid.\n");
        let list: Vec<String> = profiles.iter().map(|p| toml_string(&p.display().to_string())).collect();
        let _ = writeln!(out, "profiles = [{}]", list.join(", "));
        let _ = writeln!(out, "interval = \"{}\"\n\n[series]", self.interval);
        for (key, column) in &self.columns {
            let _ = writeln!(out, "{} = \"{}\"", toml_key(&key.to_string()), notation(column));
        }
        for (at, version) in &self.deploys {
            let _ = writeln!(out, "\n[[deploy]]\nat = \"{}ms\"\nversion = {}", at.0, toml_string(version));
        }
        let several = self.last.len() > 1;
        for e in &self.expectations {
            let _ = writeln!(out, "\n[[expect]]\nat = \"{}\"", Span(e.tick as i64 * self.interval.0));
            if several {
                let _ = writeln!(out, "profile = {}", toml_string(&e.profile));
            }
            let _ = writeln!(out, "decision = \"{}\"", e.outcome);
            if !e.firing.is_empty() {
                let firing: Vec<String> = e.firing.iter().map(|f| toml_string(f)).collect();
                let _ = writeln!(out, "firing = [{}]", firing.join(", "));
            }
        }
        out
    }
}

/// A series key as a TOML key: a literal string when it can be (no `'`, no control character),
/// else a basic string with TOML's escapes — a scraped label value may hold anything.
fn toml_key(key: &str) -> String {
    if !key.contains('\'') && !key.chars().any(char::is_control) { format!("'{key}'") } else { toml_string(key) }
}

/// Writes entries in promtool notation, runs compressed: `5x3`, `0+2x4`, `_x2`, `stale`.
pub fn notation(entries: &[Entry]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        match entries[i] {
            Entry::Missing => {
                let n = entries[i..].iter().take_while(|e| **e == Entry::Missing).count();
                parts.push(if n == 1 { "_".to_string() } else { format!("_x{n}") });
                i += n;
            }
            Entry::Stale => {
                parts.push("stale".into());
                i += 1;
            }
            Entry::Value(start) => {
                // The longest run start + step·k that the expansion reproduces exactly.
                let step = match entries.get(i + 1) {
                    Some(Entry::Value(next)) if start.is_finite() && next.is_finite() => next - start,
                    _ => 0.0,
                };
                let fits = |k: usize, e: &Entry| match e {
                    Entry::Value(v) if step == 0.0 => v.to_bits() == start.to_bits(),
                    Entry::Value(v) => start + step * k as f64 == *v,
                    _ => false,
                };
                let mut n = entries[i..].iter().enumerate().take_while(|(k, e)| fits(*k, e)).count();
                if n == 2 && step != 0.0 {
                    n = 1; // `a b` reads better than `a+bx1`
                }
                parts.push(match (n, step) {
                    (1, _) => format_value(start),
                    (_, 0.0) => format!("{}x{}", format_value(start), n - 1),
                    (_, s) if s > 0.0 => format!("{}+{}x{}", format_value(start), format_value(s), n - 1),
                    (_, s) => format!("{}-{}x{}", format_value(start), format_value(-s), n - 1),
                });
                i += n;
            }
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::notation::expand;

    #[test]
    fn notation_round_trips_through_the_fixture_parser() {
        let cases: Vec<Vec<Entry>> = vec![
            vec![Entry::Value(1.0); 5],
            (0..10).map(|k| Entry::Value(k as f64 * 2.5)).collect(),
            (0..6).map(|k| Entry::Value(100.0 - k as f64 * 3.0)).collect(),
            vec![
                Entry::Missing,
                Entry::Missing,
                Entry::Value(0.1),
                Entry::Value(0.2),
                Entry::Value(0.3),
                Entry::Stale,
                Entry::Missing,
            ],
            vec![Entry::Value(f64::INFINITY), Entry::Value(-1e-7), Entry::Value(1e21)],
        ];
        for entries in cases {
            let text = notation(&entries);
            let back = expand(&text).unwrap();
            assert_eq!(back.len(), entries.len(), "{text}");
            for (a, b) in back.iter().zip(&entries) {
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{text}");
            }
        }
        assert_eq!(notation(&[Entry::Value(3.0); 4]), "3x3");
        assert_eq!(notation(&(0..5).map(|k| Entry::Value(k as f64)).collect::<Vec<_>>()), "0+1x4");
        assert_eq!(notation(&[Entry::Missing, Entry::Value(1.0)]), "_ 1");
    }

    #[test]
    fn a_deploy_is_placed_in_the_interval_of_the_tick_that_applied_it() {
        let store = Store::new(Span::from_secs(60));
        let mut r = Recorder::new(Span(200));
        let start = Timestamp(1_000_000);
        for k in 0..16 {
            r.observe(&store, start.plus(Span(k * 200)), &[]);
        }
        // Live, tick 16 comes 3.4 s after tick 0 (ticks were skipped or late): a deploy seen just
        // before it is applied at tick 16, which the grid puts at 3.2 s.
        r.deploy(start.plus(Span(3_390)), "v2");
        // Ticks ahead of the grid (the first one came late): a deploy 2.9 s in, after tick 15,
        // is applied at tick 16 too, which follows tick 15's 3 s on the grid.
        r.deploy(start.plus(Span(2_900)), "v3");
        // On time: the live offset stands.
        r.deploy(start.plus(Span(3_150)), "v4");
        let at: Vec<i64> = r.deploys.iter().map(|(at, _)| at.0).collect();
        assert_eq!(at, [3_200, 3_001, 3_150]);
        let text = r.fixture(&[]);
        assert!(text.contains("[[deploy]]\nat = \"3200ms\"\nversion = \"v2\""), "{text}");
        // The first deploy seen before any tick is at 0.
        let mut r = Recorder::new(Span(200));
        r.deploy(start, "v1");
        assert_eq!(r.deploys[0].0, Span(0));
    }
}
