//! The window store: one ring buffer of samples per series, keyed by name + labels, and the
//! window aggregates the rule functions read. Pure: every call takes the time it is asked about.
//!
//! Semantics (the window store of docs/ARCHITECTURE.md):
//! - a window is `(t − w, t]`, shifted back by an optional offset;
//! - counters: a drop is a reset (the new value counts as the increase since the reset); the sample
//!   just before the window is the baseline when it is no older than the window itself, otherwise
//!   the series' first sample in the window is; rates are not extrapolated;
//! - NaN samples, stale series and empty windows are *no data* (`None`), never 0;
//! - `last`/`up` look back at most [`LOOKBACK`]; a stale marker ends a series until it is written again;
//! - retention is per series: the longest reach (window + offset) of the selectors that match it,
//!   plus a margin; a series no rule reads keeps the margin only (for status and recording,
//!   which reads each tick at its scheduled time, however late it runs). Memory is bounded by configuration, not uptime; series that have received
//!   nothing for longer than the longest retention are dropped;
//! - the store knows when it was *watched* (fed by a running rollwatch: one stretch per run,
//!   stretched by every evaluation). A window's coverage is the part of its span, from its floor
//!   and its series' first sample on, that lies in those stretches: the time rollwatch was down
//!   between two runs is missing data, and `last`/`up`/`down_for` never look back across it;
//! - a series an SLO reads keeps raw samples for the shortest window only and, beyond it,
//!   [`checkpoints`] of its running total at coarser steps: its increase over a window the raw
//!   samples do not reach is read from them.

mod checkpoints;
pub use checkpoints::{SavedLevel, SavedTotals};

use std::collections::{HashMap, VecDeque};

use checkpoints::Checkpoints;

use crate::selector::{Selector, SeriesKey};
use crate::time::{Span, Timestamp};

/// How far back `last`, `up` and `down_for` look for a latest sample, as Prometheus does.
pub const LOOKBACK: Span = Span(5 * 60 * 1000);

/// Bit pattern of a stale marker (Prometheus' `StaleNaN`): a NaN that is not data but the end of
/// a series.
const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Index of a series in the store.
pub type SeriesId = usize;
/// Index of a selector registered with [`Store::add_selector`].
pub type SelectorId = usize;

#[derive(Debug, Clone, Copy)]
struct Sample {
    t: i64,
    v: f64,
}

impl Sample {
    fn is_stale(&self) -> bool {
        self.v.to_bits() == STALE_BITS
    }
    /// Usable as data: neither NaN nor a stale marker.
    fn is_value(&self) -> bool {
        !self.v.is_nan()
    }
}

/// Kept beyond a selector's reach, so a tick that comes late still finds its data.
pub const MARGIN: Span = Span(60_000);

#[derive(Debug)]
struct Series {
    key: SeriesKey,
    /// How long this series' samples are kept (ms): the reach of the selectors matching it.
    keep: i64,
    samples: VecDeque<Sample>,
    /// Start of the current unbroken run of zero values, for `down_for`.
    zero_since: Option<i64>,
    /// Its running total at coarse steps, when an SLO reads it.
    checkpoints: Option<Box<Checkpoints>>,
}

impl Series {
    /// The latest sample at or before `end` (and at or after `floor`), if it is data and no
    /// older than [`LOOKBACK`].
    fn latest(&self, end: i64, floor: Option<i64>) -> Option<Sample> {
        let hi = self.samples.partition_point(|s| s.t <= end);
        let s = *self.samples.get(hi.checked_sub(1)?)?;
        (s.is_value() && end - s.t <= LOOKBACK.0 && floor.is_none_or(|f| s.t >= f)).then_some(s)
    }

    /// Samples with `start < t <= end`, and the one just before them.
    fn range(&self, start: i64, end: i64) -> (Option<Sample>, impl Iterator<Item = &Sample>) {
        let lo = self.samples.partition_point(|s| s.t <= start);
        let hi = self.samples.partition_point(|s| s.t <= end);
        let before = lo.checked_sub(1).and_then(|i| self.samples.get(i)).copied();
        (before, self.samples.range(lo..hi.max(lo)))
    }

    /// Counter increase over `(start, end]`, reset-aware, without extrapolation. A `floor` after
    /// `start` clips the window to samples at or after it, the first of them the baseline: no
    /// sample before the floor (another version's) counts.
    fn increase(&self, start: i64, end: i64, floor: Option<i64>) -> Option<f64> {
        if let Some(c) = &self.checkpoints {
            // The raw samples hold the baseline (or everything since the first sample): read
            // them; else the checkpoints, when they reach back to it.
            let base = floor.filter(|&f| f > start).map_or(start, |f| f - 1);
            let front = self.samples.front().map(|s| s.t);
            let raw_reaches = front.is_some_and(|t| t <= base || c.first_t().is_some_and(|f| t <= f));
            if !raw_reaches && c.reach(base) {
                return c.increase(start, end, floor);
            }
        }
        let window = end - start;
        let (start, baseline) = match floor {
            Some(f) if f > start => (f - 1, false),
            _ => (start, true),
        };
        let (before, inside) = self.range(start, end);
        let mut prev = before.filter(|b| baseline && b.is_value() && start - b.t < window).map(|b| b.v);
        let mut total = 0.0;
        let mut have = false;
        for s in inside {
            if s.is_stale() {
                prev = None;
                continue;
            }
            if !s.is_value() {
                continue;
            }
            if let Some(p) = prev {
                total += if s.v < p { s.v } else { s.v - p };
                have = true;
            }
            prev = Some(s.v);
        }
        (have && !total.is_nan()).then_some(total)
    }
}

/// Gives `s` checkpoints at `levels` (or adds the levels it lacks); new checkpoints start from
/// the raw samples the series holds.
fn checkpoint(s: &mut Series, levels: &[(i64, i64)]) {
    match s.checkpoints.as_mut() {
        Some(c) => c.add_levels(levels),
        None => {
            let mut c = Checkpoints::new(levels);
            for x in &s.samples {
                c.push(x.t, x.v, x.is_stale());
            }
            s.checkpoints = Some(Box::new(c));
        }
    }
}

/// One series as a checkpoint keeps it ([`Store::series`]).
pub struct SeriesView<'a, I> {
    pub key: &'a SeriesKey,
    /// Start of its current run of zeros.
    pub zero_since: Option<Timestamp>,
    /// Its samples, oldest first.
    pub samples: I,
    /// Its counter checkpoints, when an SLO reads it.
    pub totals: Option<SavedTotals>,
}

/// A series' state at an instant, for recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latest {
    Value(f64),
    /// Ended by a stale marker.
    Stale,
    /// Nothing within the lookback.
    Absent,
}

/// Aggregations over every sample of every matching series in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Over {
    Avg,
    Max,
    Min,
    Count,
}

/// Per-series ring buffers plus the selectors rules registered at load, with their matches kept
/// current as series come and go (so evaluation never matches labels).
#[derive(Debug)]
pub struct Store {
    series: Vec<Option<Series>>,
    free: Vec<SeriesId>,
    index: HashMap<SeriesKey, SeriesId>,
    selectors: Vec<Selector>,
    /// How far back each selector's calls read (window + offset), plus [`MARGIN`].
    reach: Vec<i64>,
    matches: Vec<Vec<SeriesId>>,
    /// Per selector, the checkpoint levels `(step, keep)` in ms of the series it matches (empty:
    /// raw samples only; shorter than `selectors` when the last ones have none).
    levels: Vec<Vec<(i64, i64)>>,
    retention: Span,
    /// Samples refused because they were older than the series' latest one.
    pub out_of_order: u64,
    /// When the store was watched, oldest first: `(from, to)` in ms, one stretch per run of
    /// rollwatch (the last one growing while `watching`). Empty: never watched (unit tests of
    /// the aggregates), so no gap is known.
    watched: VecDeque<(i64, i64)>,
    /// Whether the last stretch is this run's (evaluations stretch it) or a past run's.
    watching: bool,
}

/// At most this many stretches of watching are remembered (one per restart within the
/// retention); beyond, the oldest is forgotten — its time then counts as not covered.
pub const MAX_WATCHED: usize = 64;

impl Store {
    /// A store that keeps each series' samples for `retention` (plus the one before, as a
    /// counter baseline).
    pub fn new(retention: Span) -> Store {
        Store {
            series: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            selectors: Vec::new(),
            reach: Vec::new(),
            matches: Vec::new(),
            levels: Vec::new(),
            retention: Span(retention.0.max(LOOKBACK.0)),
            out_of_order: 0,
            watched: VecDeque::new(),
            watching: false,
        }
    }

    pub fn retention(&self) -> Span {
        self.retention
    }

    /// Registers a selector whose calls read back the store's whole retention.
    pub fn add_selector(&mut self, selector: Selector) -> SelectorId {
        let reach = self.retention;
        self.add_selector_reaching(selector, reach)
    }

    /// Registers a selector read by an SLO: the series it matches keep raw samples for `raw`
    /// (plus [`MARGIN`]) and checkpoints of their running total at each `(step, keep)` level.
    pub fn add_selector_checkpointed(&mut self, selector: Selector, raw: Span, levels: &[(Span, Span)]) -> SelectorId {
        let id = self.add_selector_reaching(selector, raw);
        let levels: Vec<(i64, i64)> = levels.iter().map(|(s, k)| (s.0, k.0)).collect();
        while self.levels.len() < id {
            self.levels.push(Vec::new());
        }
        self.levels.push(levels);
        for &sid in &self.matches[id] {
            if let Some(s) = self.series[sid].as_mut() {
                checkpoint(s, &self.levels[id]);
            }
        }
        id
    }

    /// Registers a selector (at load) whose calls read `reach` back (window + offset): the
    /// series it matches keep that much, plus [`MARGIN`]. Returns its id for the query functions.
    pub fn add_selector_reaching(&mut self, selector: Selector, reach: Span) -> SelectorId {
        let keep = reach.0.saturating_add(MARGIN.0);
        let mut matched = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            if let Some(s) = slot.as_mut().filter(|s| selector.matches(&s.key)) {
                s.keep = s.keep.max(keep);
                matched.push(id);
            }
        }
        self.selectors.push(selector);
        self.reach.push(keep);
        self.matches.push(matched);
        self.selectors.len() - 1
    }

    /// Keeps this store's samples but answers to `other`'s selectors and retention from now on —
    /// a config reload keeps the data it has; selector ids are `other`'s.
    pub fn adopt_selectors_of(&mut self, other: Store) {
        self.retention = other.retention;
        self.selectors = Vec::new();
        self.reach = Vec::new();
        self.matches = Vec::new();
        self.levels = Vec::new();
        for s in self.series.iter_mut().flatten() {
            s.keep = MARGIN.0;
        }
        for (i, (sel, keep)) in other.selectors.into_iter().zip(other.reach).enumerate() {
            let raw = Span(keep - MARGIN.0);
            match other.levels.get(i).filter(|l| !l.is_empty()) {
                Some(levels) => {
                    let levels: Vec<(Span, Span)> = levels.iter().map(|&(s, k)| (Span(s), Span(k))).collect();
                    self.add_selector_checkpointed(sel, raw, &levels);
                }
                None => {
                    self.add_selector_reaching(sel, raw);
                }
            }
        }
    }

    /// The metric names the registered selectors read; `None` when one reads any name (then
    /// nothing may be dropped before it reaches the store).
    pub fn selector_names(&self) -> Option<std::collections::HashSet<String>> {
        self.selectors.iter().map(|s| s.name.clone()).collect()
    }

    /// Bytes the samples and checkpoints of every series take (their buffers' capacity), for
    /// the memory benchmark and tests.
    pub fn sample_bytes(&self) -> usize {
        self.series
            .iter()
            .flatten()
            .map(|s| {
                s.samples.capacity() * std::mem::size_of::<Sample>()
                    + s.checkpoints.as_ref().map_or(0, |c| c.points() * std::mem::size_of::<f64>())
            })
            .sum()
    }

    /// Number of live series.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Keys of every live series (for recording and status pages).
    pub fn keys(&self) -> impl Iterator<Item = &SeriesKey> {
        self.index.keys()
    }

    /// Returns the id of `key`, creating the series if it is new.
    pub fn intern(&mut self, key: &SeriesKey) -> SeriesId {
        if let Some(&id) = self.index.get(key) {
            return id;
        }
        let series =
            Series { key: key.clone(), keep: MARGIN.0, samples: VecDeque::new(), zero_since: None, checkpoints: None };
        let id = match self.free.pop() {
            Some(id) => {
                self.series[id] = Some(series);
                id
            }
            None => {
                self.series.push(Some(series));
                self.series.len() - 1
            }
        };
        for (i, ((sel, matched), keep)) in
            self.selectors.iter().zip(self.matches.iter_mut()).zip(&self.reach).enumerate()
        {
            if sel.matches(key) {
                matched.push(id);
                if let Some(s) = self.series[id].as_mut() {
                    s.keep = s.keep.max(*keep);
                    if let Some(levels) = self.levels.get(i).filter(|l| !l.is_empty()) {
                        checkpoint(s, levels);
                    }
                }
            }
        }
        self.index.insert(key.clone(), id);
        id
    }

    /// Appends a sample. Samples older than the series' latest are dropped and counted.
    pub fn push(&mut self, key: &SeriesKey, t: Timestamp, v: f64) {
        let id = self.intern(key);
        self.push_id(id, t, v);
    }

    /// Ends a series at `t` (a target went down, a scrape lost it, a fixture said `stale`).
    pub fn mark_stale(&mut self, key: &SeriesKey, t: Timestamp) {
        if let Some(&id) = self.index.get(key) {
            self.push_id(id, t, f64::from_bits(STALE_BITS));
        }
    }

    fn push_id(&mut self, id: SeriesId, t: Timestamp, v: f64) {
        let Some(series) = self.series.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if let Some(last) = series.samples.back()
            && (t.0 < last.t || (t.0 == last.t && !last.is_stale()))
        {
            self.out_of_order += 1;
            return;
        }
        let sample = Sample { t: t.0, v };
        series.zero_since = match (sample.is_value() && v == 0.0, series.zero_since) {
            (true, Some(since)) => Some(since),
            (true, None) => Some(t.0),
            (false, _) => None,
        };
        series.samples.push_back(sample);
        if let Some(c) = series.checkpoints.as_mut() {
            c.push(sample.t, v, sample.is_stale());
        }
        let horizon = t.0.saturating_sub(series.keep);
        while series.samples.len() >= 2 && series.samples[1].t <= horizon {
            series.samples.pop_front();
        }
    }

    /// Every live series and its latest state at `now` (last sample at or before `now`).
    pub fn latest(&self, now: Timestamp) -> impl Iterator<Item = (&SeriesKey, Latest)> {
        self.series.iter().flatten().map(move |s| {
            let hi = s.samples.partition_point(|x| x.t <= now.0);
            let state = match hi.checked_sub(1).and_then(|i| s.samples.get(i)) {
                Some(x) if x.is_stale() => Latest::Stale,
                Some(x) if now.0 - x.t <= LOOKBACK.0 => Latest::Value(x.v),
                _ => Latest::Absent,
            };
            (&s.key, state)
        })
    }

    /// Drops series whose newest sample is older than the retention: memory follows the series
    /// that exist now, not every series ever seen.
    pub fn collect_garbage(&mut self, now: Timestamp) {
        let horizon = now.0.saturating_sub(self.retention.0);
        let mut dropped = Vec::new();
        for (id, slot) in self.series.iter_mut().enumerate() {
            let expired = slot.as_ref().is_some_and(|s| s.samples.back().is_none_or(|last| last.t < horizon));
            if expired && let Some(s) = slot.take() {
                self.index.remove(&s.key);
                dropped.push(id);
            }
        }
        if dropped.is_empty() {
            return;
        }
        for matched in &mut self.matches {
            matched.retain(|id| !dropped.contains(id));
        }
        self.free.extend(dropped);
    }

    /// An evaluation at `now`: this run watched the store until `now`. The first call of a run
    /// opens a stretch; stretches older than the retention are forgotten.
    pub fn watch(&mut self, now: Timestamp) {
        match self.watched.back_mut() {
            Some(last) if self.watching => last.1 = last.1.max(now.0),
            _ => {
                self.watched.push_back((now.0, now.0));
                self.watching = true;
            }
        }
        let horizon = now.0.saturating_sub(self.retention.0);
        while self.watched.len() > MAX_WATCHED || (self.watched.len() > 1 && self.watched[0].1 < horizon) {
            self.watched.pop_front();
        }
    }

    /// When the store was watched, oldest first (for a checkpoint).
    pub fn watched(&self) -> impl Iterator<Item = (Timestamp, Timestamp)> + '_ {
        self.watched.iter().map(|&(a, b)| (Timestamp(a), Timestamp(b)))
    }

    /// A new run resumes at `now` after the past runs' stretches `past` (from a checkpoint):
    /// the time between them and `now` was not watched. Stretches that are malformed, overlap
    /// or lie after `now` are dropped.
    pub fn resume(&mut self, past: impl IntoIterator<Item = (Timestamp, Timestamp)>, now: Timestamp) {
        let mut kept: VecDeque<(i64, i64)> = VecDeque::new();
        for (a, b) in past {
            let after_last = kept.back().is_none_or(|&(_, end)| a.0 > end);
            if a <= b && b < now && after_last {
                kept.push_back((a.0, b.0));
            }
        }
        self.watched = kept;
        self.watching = false;
        self.watch(now);
    }

    /// How long within `(start, end]` the store was watched (all of it when never watched).
    fn watched_between(&self, start: i64, end: i64) -> i64 {
        if end <= start {
            return 0;
        }
        if self.watched.is_empty() {
            return end - start;
        }
        self.watched.iter().map(|&(a, b)| (end.min(b) - start.max(a)).max(0)).sum()
    }

    /// The earliest sample `last`, `up` and `down_for` may read at `at`: the floor, and after a
    /// gap in watching, the start of the stretch `at.end` lies in — a value seen before
    /// rollwatch stopped says nothing about after it restarted.
    fn lookback_floor(&self, at: At) -> Option<i64> {
        let end = at.end.0;
        let stretch = self.watched.iter().rposition(|&(a, _)| a <= end);
        let resumed = stretch.filter(|&i| i > 0).map(|i| self.watched[i].0);
        match (at.floor(), resumed) {
            (Some(f), Some(r)) => Some(f.max(r)),
            (f, r) => f.or(r),
        }
    }

    /// How much of the window `len` back from `at` holds data for the selectors `sels`: the
    /// time from the window's start — or its floor, or the matching series' first sample, if
    /// later — to its end that the store was watched. No matching series: nothing.
    pub fn coverage(&self, sels: &[SelectorId], at: At, len: Span) -> Span {
        let (start, end, floor) = at.window(len);
        let from = start.max(floor.unwrap_or(i64::MIN));
        // The first sample is data from its own time on (a counter's baseline, a gauge's value).
        // Usually the first series looked at reaches back far enough.
        let mut first = i64::MAX;
        for s in sels.iter().flat_map(|&sel| self.matching(sel)) {
            let kept = s.checkpoints.as_ref().and_then(|c| c.first_t());
            first = first.min(s.samples.front().map_or(i64::MAX, |x| x.t)).min(kept.unwrap_or(i64::MAX));
            if first <= from {
                break;
            }
        }
        if first == i64::MAX {
            return Span::ZERO;
        }
        Span(self.watched_between(from.max(first), end).min(len.0))
    }

    /// Every live series with its samples `(t, v)` oldest first (stale markers as their NaN
    /// bits) and the start of its current run of zeros: what a checkpoint keeps.
    pub fn series(&self) -> impl Iterator<Item = SeriesView<'_, impl ExactSizeIterator<Item = (Timestamp, f64)> + '_>> {
        self.series.iter().flatten().map(|s| SeriesView {
            key: &s.key,
            zero_since: s.zero_since.map(Timestamp),
            samples: s.samples.iter().map(|x| (Timestamp(x.t), x.v)),
            totals: s.checkpoints.as_ref().map(|c| c.save()),
        })
    }

    /// Gives a restored series back the checkpoints an earlier run kept of it (after
    /// [`restore_series`](Self::restore_series)): its long windows reach back as they did. A
    /// series no SLO reads now takes none.
    pub fn restore_totals(&mut self, key: &SeriesKey, saved: &SavedTotals) {
        let Some(&id) = self.index.get(key) else { return };
        if let Some(c) = self.series.get_mut(id).and_then(Option::as_mut).and_then(|s| s.checkpoints.as_mut()) {
            c.adopt(saved);
        }
    }

    /// Puts a series back as a checkpoint kept it (samples oldest first; out-of-order ones are
    /// refused and counted as always); retention applies as the samples go in.
    pub fn restore_series(&mut self, key: &SeriesKey, samples: &[(Timestamp, f64)], zero_since: Option<Timestamp>) {
        let id = self.intern(key);
        for &(t, v) in samples {
            self.push_id(id, t, v);
        }
        // The run of zeros may have started before the oldest sample kept.
        if let Some(s) = self.series.get_mut(id).and_then(Option::as_mut)
            && let (Some(kept), Some(now)) = (zero_since, s.zero_since)
        {
            s.zero_since = Some(now.min(kept.0));
        }
    }

    fn matching(&self, sel: SelectorId) -> impl Iterator<Item = &Series> {
        self.matches[sel].iter().filter_map(|&id| self.series[id].as_ref())
    }

    /// Counter increase over the window `len` back from `at`, summed over matching series.
    pub fn increase(&self, sel: SelectorId, at: At, len: Span) -> Option<f64> {
        let (start, end, floor) = at.window(len);
        sum_present(self.matching(sel).map(|s| s.increase(start, end, floor)))
    }

    /// Per-second rate over the window (increase / window), summed over matching series.
    pub fn rate(&self, sel: SelectorId, at: At, len: Span) -> Option<f64> {
        let secs = len.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        self.increase(sel, at, len).map(|inc| inc / secs)
    }

    /// `increase(num) / increase(den)`; no data when the denominator's increase is 0 or below
    /// `min_den`. A numerator with no series at all counts as 0 while the denominator has data:
    /// error series commonly do not exist until the first error.
    pub fn ratio(&self, num: SelectorId, den: SelectorId, at: At, len: Span, min_den: f64) -> Option<f64> {
        let d = self.increase(den, at, len)?;
        if d <= 0.0 || d < min_den {
            return None;
        }
        let n = match self.increase(num, at, len) {
            Some(n) => n,
            None if self.matching(num).next().is_none() => 0.0,
            None => return None,
        };
        finite_or_none(n / d)
    }

    /// avg/max/min/count over all samples of all matching series in the window.
    pub fn over(&self, how: Over, sel: SelectorId, at: At, len: Span) -> Option<f64> {
        let (start, end, floor) = at.window(len);
        let start = floor.map_or(start, |f| start.max(f - 1));
        let (mut n, mut sum, mut max, mut min) = (0u64, 0.0, f64::NEG_INFINITY, f64::INFINITY);
        for series in self.matching(sel) {
            for s in series.range(start, end).1.filter(|s| s.is_value()) {
                n += 1;
                sum += s.v;
                max = max.max(s.v);
                min = min.min(s.v);
            }
        }
        if n == 0 {
            return None;
        }
        let value = match how {
            Over::Avg => sum / n as f64,
            Over::Max => max,
            Over::Min => min,
            Over::Count => n as f64,
        };
        finite_or_none(value)
    }

    /// Appends every sample of every matching series in the window to `out`, NaN dropped: a
    /// gauge's values as sampled, or with `per_interval` a counter's rate between consecutive
    /// samples (per second, a drop being a reset) — the baseline judge's samples.
    pub fn values(&self, sel: SelectorId, at: At, len: Span, per_interval: bool, out: &mut Vec<f64>) {
        let (start, end, floor) = at.window(len);
        let start = floor.map_or(start, |f| start.max(f - 1));
        for series in self.matching(sel) {
            let mut prev: Option<Sample> = None;
            for s in series.range(start, end).1 {
                if s.is_stale() {
                    prev = None;
                    continue;
                }
                if !s.is_value() {
                    continue;
                }
                if !per_interval {
                    out.push(s.v);
                    continue;
                }
                if let Some(p) = prev
                    && s.t > p.t
                {
                    let inc = if s.v < p.v { s.v } else { s.v - p.v };
                    let rate = inc / ((s.t - p.t) as f64 / 1000.0);
                    if rate.is_finite() {
                        out.push(rate);
                    }
                }
                prev = Some(*s);
            }
        }
    }

    /// A registered selector, as written.
    pub fn selector(&self, sel: SelectorId) -> Option<&Selector> {
        self.selectors.get(sel)
    }

    /// Whether any series matches `sel` now.
    pub fn has_series(&self, sel: SelectorId) -> bool {
        self.matching(sel).next().is_some()
    }

    /// Latest value (within [`LOOKBACK`]) summed over matching series.
    pub fn last(&self, sel: SelectorId, at: At) -> Option<f64> {
        let floor = self.lookback_floor(at);
        sum_present(self.matching(sel).map(|s| s.latest(at.end.0, floor).map(|s| s.v)))
    }

    /// Minimum of the latest `up` values of matching targets.
    pub fn up(&self, sel: SelectorId, at: At) -> Option<f64> {
        let floor = self.lookback_floor(at);
        self.matching(sel).filter_map(|s| s.latest(at.end.0, floor)).map(|s| s.v).reduce(f64::min)
    }

    /// Longest current run of `up == 0` among matching targets, in seconds (0 when all are up);
    /// a run counts from the floor at the earliest.
    pub fn down_for(&self, sel: SelectorId, at: At) -> Option<f64> {
        let floor = self.lookback_floor(at);
        self.matching(sel)
            .filter_map(|s| {
                let latest = s.latest(at.end.0, floor)?;
                Some(match (latest.v == 0.0, s.zero_since) {
                    (true, Some(since)) => {
                        let since = floor.map_or(since, |f| since.max(f));
                        at.end.saturating_since(Timestamp(since)).as_secs_f64()
                    }
                    _ => 0.0,
                })
            })
            .reduce(f64::max)
    }

    /// Histogram quantile from cumulative `_bucket` counters (label `le`), over the increase in
    /// the window, summed across matching series per bucket bound — PromQL's
    /// `histogram_quantile(q, sum by (le) (increase(sel[w])))`.
    pub fn quantile(&self, q: f64, sel: SelectorId, at: At, len: Span) -> Option<f64> {
        let (start, end, floor) = at.window(len);
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for series in self.matching(sel) {
            let Some(le) = parse_le(series.key.label("le")) else {
                continue;
            };
            let Some(inc) = series.increase(start, end, floor) else {
                continue;
            };
            match buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, count)) => *count += inc,
                None => buckets.push((le, inc)),
            }
        }
        bucket_quantile(q, buckets)
    }
}

/// Where a query reads: windows end at `end` (now, or now minus an offset); with a `floor`,
/// only samples at or after it count — the current version's evidence starts at its deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub end: Timestamp,
    pub since: Option<Timestamp>,
}

impl At {
    /// Everything up to `end`.
    pub fn new(end: Timestamp) -> At {
        At { end, since: None }
    }

    /// `offset` before `now`.
    pub fn ago(now: Timestamp, offset: Span) -> At {
        At::new(now.minus(offset))
    }

    /// Only samples at or after `since` (when given).
    pub fn since(self, since: Option<Timestamp>) -> At {
        At { since, ..self }
    }

    fn floor(&self) -> Option<i64> {
        self.since.map(|t| t.0)
    }

    /// `(start, end, floor)` of the window `len` back.
    fn window(&self, len: Span) -> (i64, i64, Option<i64>) {
        (self.end.0.saturating_sub(len.0), self.end.0, self.floor())
    }
}

fn sum_present(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let total = values.flatten().fold(None, |acc: Option<f64>, v| Some(acc.unwrap_or(0.0) + v))?;
    finite_or_none(total)
}

/// NaN is no data; infinities are kept (a real `+Inf` bound or value is data).
fn finite_or_none(v: f64) -> Option<f64> {
    (!v.is_nan()).then_some(v)
}

fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        _ => text.parse::<f64>().ok().filter(|v| !v.is_nan()),
    }
}

/// Prometheus' `bucketQuantile`: linear interpolation inside the bucket holding the rank; the
/// lowest bucket starts at 0 (if its bound is positive); a rank in the `+Inf` bucket returns the
/// highest finite bound. No `+Inf` bucket or no observations → no data.
fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> Option<f64> {
    if !(0.0..=1.0).contains(&q) {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.last()?.0 != f64::INFINITY || buckets.len() < 2 {
        return None;
    }
    // Counters scraped at slightly different moments can be non-monotonic; force monotonicity.
    for i in 1..buckets.len() {
        if buckets[i].1 < buckets[i - 1].1 {
            buckets[i].1 = buckets[i - 1].1;
        }
    }
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let b = buckets.iter().position(|(_, c)| *c >= rank)?;
    if b == buckets.len() - 1 {
        return Some(buckets[b - 1].0);
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return Some(buckets[0].0);
    }
    let (start, below) = if b == 0 { (0.0, 0.0) } else { (buckets[b - 1].0, buckets[b - 1].1) };
    let (end, count) = (buckets[b].0, buckets[b].1 - below);
    if count <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * ((rank - below) / count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_every_sample_or_per_interval_rates() {
        let mut store = Store::new(Span(600_000));
        let sel = store.add_selector(Selector::parse("m").unwrap());
        let key = |i: &str| SeriesKey::new("m", [("i".to_string(), i.to_string())]);
        // A gauge with a NaN: dropped. A counter with a reset and a stale marker.
        for (t, v) in [(0, 1.0), (10_000, f64::NAN), (20_000, 3.0)] {
            store.push(&key("a"), Timestamp(t), v);
        }
        let mut out = Vec::new();
        store.values(sel, At::new(Timestamp(20_000)), Span(60_000), false, &mut out);
        assert_eq!(out, vec![1.0, 3.0]);
        let mut store = Store::new(Span(600_000));
        let sel = store.add_selector(Selector::parse("m").unwrap());
        for (t, v) in [(0, 10.0), (10_000, 30.0), (20_000, 5.0), (30_000, 15.0)] {
            store.push(&key("b"), Timestamp(t), v);
        }
        store.mark_stale(&key("b"), Timestamp(40_000));
        store.push(&key("b"), Timestamp(50_000), 100.0);
        store.push(&key("b"), Timestamp(60_000), 110.0);
        out.clear();
        store.values(sel, At::new(Timestamp(60_000)), Span(120_000), true, &mut out);
        // 20 in 10 s, a reset to 5 (5 in 10 s), 10 in 10 s; the stale marker breaks the run.
        assert_eq!(out, vec![2.0, 0.5, 1.0, 1.0]);
        // The floor: only samples at or after it.
        out.clear();
        store.values(sel, At::new(Timestamp(60_000)).since(Some(Timestamp(20_000))), Span(120_000), false, &mut out);
        assert_eq!(out, vec![5.0, 15.0, 100.0, 110.0]);
        assert!(store.has_series(sel));
    }

    const S: i64 = 1000;

    fn key(s: &str) -> SeriesKey {
        SeriesKey::parse(s).unwrap()
    }

    /// A store holding `series` as (key, values every 15 s from t=0; None = missing sample).
    fn store(selector: &str, series: &[(&str, &[Option<f64>])]) -> (Store, SelectorId) {
        let (st, sels) = store_with(&[selector], series);
        (st, sels[0])
    }

    /// Selectors are registered at load, before any data arrives.
    fn store_with(selectors: &[&str], series: &[(&str, &[Option<f64>])]) -> (Store, Vec<SelectorId>) {
        let mut st = Store::new(Span(3600 * S));
        let sel = selectors.iter().map(|s| st.add_selector(Selector::parse(s).unwrap())).collect();
        for (k, values) in series {
            let k = key(k);
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    st.push(&k, Timestamp(i as i64 * 15 * S), *v);
                }
            }
        }
        (st, sel)
    }

    fn vals(v: &[f64]) -> Vec<Option<f64>> {
        v.iter().map(|x| Some(*x)).collect()
    }

    const M1: Span = Span(60 * S);

    #[test]
    fn increase_uses_the_sample_before_the_window_as_baseline() {
        let v = vals(&[0.0, 10.0, 20.0, 30.0, 40.0, 50.0]);
        let (st, sel) = store("c", &[("c", &v)]);
        // Window (15s, 75s]: samples 30,45,60,75 → 20..50 plus baseline 10 at 15s → 40.
        assert_eq!(st.increase(sel, At::new(Timestamp(75 * S)), M1), Some(40.0));
        assert_eq!(st.rate(sel, At::new(Timestamp(75 * S)), M1), Some(40.0 / 60.0));
        // At t=0 there is one sample and no baseline: no data, not 0.
        assert_eq!(st.increase(sel, At::new(Timestamp(0)), M1), None);
        // The series' first sample is its baseline.
        assert_eq!(st.increase(sel, At::new(Timestamp(30 * S)), M1), Some(20.0));
    }

    #[test]
    fn counter_resets_count_the_new_value() {
        let v = vals(&[100.0, 110.0, 5.0, 15.0]);
        let (st, sel) = store("c", &[("c", &v)]);
        // 100→110 (+10), reset to 5 (+5), 5→15 (+10).
        assert_eq!(st.increase(sel, At::new(Timestamp(45 * S)), M1), Some(25.0));
    }

    #[test]
    fn gaps_and_nan_are_skipped_and_stale_restarts_the_series() {
        let v = [Some(0.0), None, Some(f64::NAN), Some(30.0), Some(40.0)];
        let (st, sel) = store("c", &[("c", &v)]);
        assert_eq!(st.increase(sel, At::new(Timestamp(60 * S)), M1), Some(40.0));

        let mut st = Store::new(Span(3600 * S));
        let sel = st.add_selector(Selector::parse("c").unwrap());
        let k = key("c");
        st.push(&k, Timestamp(0), 100.0);
        st.mark_stale(&k, Timestamp(15 * S));
        st.push(&k, Timestamp(30 * S), 5.0);
        st.push(&k, Timestamp(45 * S), 8.0);
        // After the stale marker 5 is a new baseline, not an increase of 5 or a reset.
        assert_eq!(st.increase(sel, At::new(Timestamp(45 * S)), M1), Some(3.0));
        assert_eq!(st.last(sel, At::new(Timestamp(15 * S))), None, "stale ends the series");
        assert_eq!(st.last(sel, At::new(Timestamp(45 * S))), Some(8.0));
    }

    #[test]
    fn ratio_has_a_traffic_floor_and_no_data_for_zero_traffic() {
        let errs = vals(&[0.0, 1.0]);
        let all = vals(&[0.0, 2.0]);
        let (st, sel) =
            store_with(&[r#"r{code="500"}"#, "r"], &[(r#"r{code="500"}"#, &errs), (r#"r{code="200"}"#, &all)]);
        let (num, den) = (sel[0], sel[1]);
        let t = Timestamp(15 * S);
        // 1 error in 3 requests.
        assert_eq!(st.ratio(num, den, At::new(t), M1, 0.0), Some(1.0 / 3.0));
        assert_eq!(st.ratio(num, den, At::new(t), M1, 100.0), None, "under the floor");
        // 0/0: no traffic at all is no data.
        let flat = vals(&[5.0, 5.0]);
        let (st, sel) =
            store_with(&[r#"r{code="500"}"#, "r"], &[(r#"r{code="500"}"#, &flat), (r#"r{code="200"}"#, &flat)]);
        let (num, den) = (sel[0], sel[1]);
        assert_eq!(st.ratio(num, den, At::new(t), M1, 0.0), None);
    }

    #[test]
    fn ratio_numerator_without_series_is_zero_only_with_traffic() {
        let all = vals(&[0.0, 200.0]);
        let (st, sel) = store_with(&[r#"r{code=~"5.."}"#, "r"], &[(r#"r{code="200"}"#, &all)]);
        let (num, den) = (sel[0], sel[1]);
        assert_eq!(st.ratio(num, den, At::new(Timestamp(15 * S)), M1, 100.0), Some(0.0));
    }

    #[test]
    fn over_functions_cover_all_samples_of_all_series() {
        let a = vals(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        let b = [Some(10.0), None, Some(f64::NAN), None, Some(20.0)];
        let (st, sel) = store("g", &[(r#"g{i="a"}"#, &a), (r#"g{i="b"}"#, &b)]);
        let t = Timestamp(60 * S);
        // Window (0, 60s]: a → 2,3,4,5; b → 20 (NaN skipped).
        assert_eq!(st.over(Over::Count, sel, At::new(t), M1), Some(5.0));
        assert_eq!(st.over(Over::Avg, sel, At::new(t), M1), Some(34.0 / 5.0));
        assert_eq!(st.over(Over::Max, sel, At::new(t), M1), Some(20.0));
        assert_eq!(st.over(Over::Min, sel, At::new(t), M1), Some(2.0));
        // An offset of 45s: window (-45s, 15s] → a: 1,2; b: 10.
        assert_eq!(st.over(Over::Max, sel, At::ago(t, Span(45 * S)), M1), Some(10.0));
        // An empty window is no data.
        assert_eq!(st.over(Over::Avg, sel, At::new(Timestamp(600 * S)), M1), None);
    }

    #[test]
    fn last_sums_and_looks_back_five_minutes() {
        let (st, sel) = store("g", &[(r#"g{i="a"}"#, &vals(&[1.0, 2.0])), (r#"g{i="b"}"#, &vals(&[5.0]))]);
        assert_eq!(st.last(sel, At::new(Timestamp(15 * S))), Some(7.0));
        assert_eq!(st.last(sel, At::new(Timestamp(15 * S + LOOKBACK.0))), Some(2.0));
        assert_eq!(st.last(sel, At::new(Timestamp(16 * S + LOOKBACK.0))), None);
        assert_eq!(st.last(sel, At::ago(Timestamp(15 * S), Span(15 * S))), Some(6.0), "offset");
    }

    #[test]
    fn up_is_the_minimum_and_down_for_the_longest_run() {
        let api = vals(&[1.0, 1.0, 0.0, 0.0, 0.0]);
        let db = vals(&[1.0, 0.0, 1.0, 0.0, 0.0]);
        let (st, sel) = store("up", &[(r#"up{target="api"}"#, &api), (r#"up{target="db"}"#, &db)]);
        assert_eq!(st.up(sel, At::new(Timestamp(0))), Some(1.0));
        assert_eq!(st.up(sel, At::new(Timestamp(15 * S))), Some(0.0));
        assert_eq!(st.down_for(sel, At::new(Timestamp(60 * S))), Some(30.0), "api down since 30s, db since 45s");
        assert_eq!(st.down_for(sel, At::new(Timestamp(0))), Some(0.0));
        let (st, sel) = store("up", &[]);
        assert_eq!(st.up(sel, At::new(Timestamp(0))), None, "no target is no data");
    }

    #[test]
    fn quantile_interpolates_like_prometheus() {
        // Increases over the window: le=0.1 → 50, le=0.5 → 90, +Inf → 100.
        let b1 = vals(&[0.0, 50.0]);
        let b2 = vals(&[0.0, 90.0]);
        let b3 = vals(&[0.0, 100.0]);
        let (st, sel) = store(
            "h_bucket",
            &[(r#"h_bucket{le="0.1"}"#, &b1), (r#"h_bucket{le="0.5"}"#, &b2), (r#"h_bucket{le="+Inf"}"#, &b3)],
        );
        let t = Timestamp(15 * S);
        // rank 50 → exactly the 0.1 bucket: 0 + 0.1 * 50/50.
        assert_eq!(st.quantile(0.5, sel, At::new(t), M1), Some(0.1));
        // rank 70 → 0.1 + 0.4 * (70-50)/(90-50) = 0.3.
        let p70 = st.quantile(0.7, sel, At::new(t), M1).unwrap();
        assert!((p70 - 0.3).abs() < 1e-12, "{p70}");
        // rank 99 → in +Inf bucket: highest finite bound.
        assert_eq!(st.quantile(0.99, sel, At::new(t), M1), Some(0.5));
        // No observations → no data.
        assert_eq!(st.quantile(0.5, sel, At::new(Timestamp(0)), M1), None);
        assert_eq!(bucket_quantile(0.5, vec![(0.1, 3.0)]), None, "no +Inf bucket");
    }

    #[test]
    fn memory_is_bounded_by_retention() {
        let mut st = Store::new(Span(600 * S));
        let sel = st.add_selector(Selector::parse("g").unwrap());
        let k = key("g");
        for i in 0..100_000i64 {
            st.push(&k, Timestamp(i * S), i as f64);
        }
        let id = st.index[&k];
        let len = st.series[id].as_ref().unwrap().samples.len();
        assert!(len <= 600 + 60 + 2, "kept {len} samples (retention + margin)");
        assert_eq!(st.last(sel, At::new(Timestamp(99_999 * S))), Some(99_999.0));
        // A series that stops reporting is dropped after the retention, and can come back.
        st.collect_garbage(Timestamp((99_999 + 601) * S));
        assert!(st.is_empty());
        assert_eq!(st.last(sel, At::new(Timestamp(200_000 * S))), None);
        st.push(&k, Timestamp(200_000 * S), 1.0);
        assert_eq!(st.last(sel, At::new(Timestamp(200_000 * S))), Some(1.0));
    }

    #[test]
    fn a_reloaded_store_keeps_samples_under_new_selectors() {
        let (mut old, _) = store("g", &[(r#"g{i="a"}"#, &vals(&[1.0, 2.0])), (r#"h{i="b"}"#, &vals(&[7.0]))]);
        let mut new = Store::new(Span(60 * S));
        let h = new.add_selector(Selector::parse("h").unwrap());
        old.adopt_selectors_of(new);
        assert_eq!(old.last(h, At::new(Timestamp(15 * S))), Some(7.0));
        assert_eq!(old.retention(), LOOKBACK, "the new retention (at least the lookback)");
    }

    #[test]
    fn each_series_keeps_what_its_readers_reach() {
        let mut st = Store::new(Span(3_600 * S));
        st.add_selector_reaching(Selector::parse("short").unwrap(), Span(60 * S));
        let (short, unread) = (key("short"), key("unread"));
        for i in 0..1000i64 {
            st.push(&short, Timestamp(i * S), i as f64);
            st.push(&unread, Timestamp(i * S), i as f64);
        }
        let len = |k: &SeriesKey| st.series[st.index[k]].as_ref().unwrap().samples.len();
        assert!(len(&short) <= 60 + 60 + 2, "window + margin: {}", len(&short));
        assert!(len(&unread) <= 60 + 2, "a series no rule reads keeps the margin: {}", len(&unread));
        assert_eq!(
            st.latest(Timestamp(999 * S)).find(|(k, _)| **k == unread).map(|(_, l)| l),
            Some(Latest::Value(999.0))
        );
    }

    #[test]
    fn coverage_is_the_watched_part_of_the_window_from_its_first_sample_and_floor() {
        let mut st = Store::new(Span(3600 * S));
        let sel = st.add_selector(Selector::parse("c").unwrap());
        let k = key("c");
        let h = Span(3600 * S);
        for i in 0..=40i64 {
            st.push(&k, Timestamp(i * 15 * S), i as f64);
            st.watch(Timestamp(i * 15 * S));
        }
        // 10 minutes of a 1h window, from the first sample on.
        assert_eq!(st.coverage(&[sel], At::new(Timestamp(600 * S)), h), Span(600 * S));
        // A floor (the deploy) later than the first sample: from the floor.
        assert_eq!(st.coverage(&[sel], At::new(Timestamp(600 * S)).since(Some(Timestamp(420 * S))), h), Span(180 * S));
        // A short window is covered whole.
        assert_eq!(st.coverage(&[sel], At::new(Timestamp(600 * S)), Span(60 * S)), Span(60 * S));
        // An offset reaching before anything was seen: nothing.
        assert_eq!(st.coverage(&[sel], At::ago(Timestamp(600 * S), h), Span(60 * S)), Span::ZERO);
        // No matching series: nothing.
        let none = st.add_selector(Selector::parse("absent").unwrap());
        assert_eq!(st.coverage(&[none], At::new(Timestamp(600 * S)), h), Span::ZERO);
    }

    #[test]
    fn a_gap_in_watching_is_missing_data() {
        let mut st = Store::new(Span(3600 * S));
        let sel = st.add_selector(Selector::parse("up").unwrap());
        let k = key("up");
        // Watched from 0 to 10 min, down to 0 at 9 min; rollwatch stops.
        for i in 0..=40i64 {
            st.push(&k, Timestamp(i * 15 * S), if i >= 36 { 0.0 } else { 1.0 });
            st.watch(Timestamp(i * 15 * S));
        }
        let past: Vec<_> = st.watched().collect();
        assert_eq!(past, vec![(Timestamp(0), Timestamp(600 * S))]);
        // Restarted at 12 min: the 2 minutes between are not covered.
        st.resume(past, Timestamp(720 * S));
        st.watch(Timestamp(780 * S));
        let h = Span(3600 * S);
        assert_eq!(st.coverage(&[sel], At::new(Timestamp(780 * S)), h), Span(660 * S), "10 min + 1 min");
        // `up` does not look back across the gap: nothing seen since the restart is no data.
        assert_eq!(st.up(sel, At::new(Timestamp(780 * S))), None);
        assert_eq!(st.down_for(sel, At::new(Timestamp(780 * S))), None);
        // Before the gap it reads as it did.
        assert_eq!(st.up(sel, At::new(Timestamp(600 * S))), Some(0.0));
        // Seen down again after the restart: the down time counts from the restart, not across
        // the gap.
        st.push(&k, Timestamp(780 * S), 0.0);
        assert_eq!(st.down_for(sel, At::new(Timestamp(780 * S))), Some(60.0));
        // Without any gap, a store never watched reads as before (nothing is floored).
        let (plain, psel) = store("up", &[("up", &vals(&[1.0, 0.0]))]);
        assert_eq!(plain.up(psel, At::new(Timestamp(15 * S))), Some(0.0));
    }

    #[test]
    fn watching_is_bounded() {
        let mut st = Store::new(Span(600 * S));
        for run in 0..200i64 {
            let past: Vec<_> = st.watched().collect();
            st.resume(past, Timestamp(run * 10 * S));
            st.watch(Timestamp(run * 10 * S + 5 * S));
        }
        let kept: Vec<_> = st.watched().collect();
        assert!(kept.len() <= MAX_WATCHED, "{}", kept.len());
        assert!(kept.iter().all(|(_, b)| b.0 >= 1995 * S - 600 * S), "older than the retention: forgotten");
        // Stretches that overlap, run backwards or lie after the restart are dropped.
        st.resume(
            vec![(Timestamp(5), Timestamp(1)), (Timestamp(10), Timestamp(20)), (Timestamp(15), Timestamp(30))],
            Timestamp(25),
        );
        assert_eq!(
            st.watched().collect::<Vec<_>>(),
            vec![(Timestamp(10), Timestamp(20)), (Timestamp(25), Timestamp(25))]
        );
    }

    #[test]
    fn restored_series_read_as_they_were() {
        let mut st = Store::new(Span(3600 * S));
        let sel = st.add_selector(Selector::parse("c").unwrap());
        let k = key(r#"c{a="1"}"#);
        for i in 0..10i64 {
            st.push(&k, Timestamp(i * 15 * S), (i * 10) as f64);
        }
        st.mark_stale(&k, Timestamp(150 * S));
        let dump: Vec<_> = st.series().map(|s| (s.key.clone(), s.zero_since, s.samples.collect::<Vec<_>>())).collect();
        let mut back = Store::new(Span(3600 * S));
        let bsel = back.add_selector(Selector::parse("c").unwrap());
        for (key, z, samples) in &dump {
            back.restore_series(key, samples, *z);
        }
        let at = At::new(Timestamp(135 * S));
        assert_eq!(back.increase(bsel, at, Span(60 * S)), st.increase(sel, at, Span(60 * S)));
        assert_eq!(back.last(bsel, At::new(Timestamp(150 * S))), None, "the stale marker came back too");
        // A run of zeros that began before the oldest sample kept is restored from its start.
        let z = key("z");
        let mut zs = Store::new(Span(3600 * S));
        let zsel = zs.add_selector(Selector::parse("z").unwrap());
        zs.restore_series(&z, &[(Timestamp(100 * S), 0.0), (Timestamp(115 * S), 0.0)], Some(Timestamp(40 * S)));
        assert_eq!(zs.down_for(zsel, At::new(Timestamp(115 * S))), Some(75.0));
    }

    #[test]
    fn out_of_order_samples_are_refused_and_counted() {
        let mut st = Store::new(Span(600 * S));
        let sel = st.add_selector(Selector::parse("g").unwrap());
        let k = key("g");
        st.push(&k, Timestamp(10 * S), 1.0);
        st.push(&k, Timestamp(5 * S), 2.0);
        st.push(&k, Timestamp(10 * S), 3.0);
        assert_eq!(st.out_of_order, 2);
        assert_eq!(st.last(sel, At::new(Timestamp(10 * S))), Some(1.0));
    }
}

#[cfg(test)]
mod checkpointed_tests {
    use super::*;

    const M: i64 = 60_000;

    #[test]
    fn checkpointed_series_read_long_windows_as_raw_ones_do() {
        let mut raw = Store::new(Span(7 * 24 * 60 * M));
        let mut cp = Store::new(Span(7 * 24 * 60 * M));
        let rs = raw.add_selector_reaching(Selector::parse("c").unwrap(), Span(4 * 24 * 60 * M));
        let cs = cp.add_selector_checkpointed(
            Selector::parse("c").unwrap(),
            Span(10 * M),
            &[(Span(M), Span(72 * 60 * M + 2 * M)), (Span(60 * M), Span(30 * 24 * 60 * M))],
        );
        let k = SeriesKey::parse("c").unwrap();
        let mut v = 0.0;
        for i in 0..=(5 * 24 * 60i64) {
            v += if i % 700 < 300 { 7.0 } else { 1.0 };
            if i == 3000 {
                v = 3.0; // a reset
            }
            raw.push(&k, Timestamp(i * M), v);
            cp.push(&k, Timestamp(i * M), v);
            if i % 97 == 0 {
                for w in [5, 30, 60, 120, 360, 1440, 4320] {
                    let at = At::new(Timestamp(i * M));
                    assert_eq!(
                        cp.increase(cs, at, Span(w * M)),
                        raw.increase(rs, at, Span(w * M)),
                        "at {i} min, {w} min"
                    );
                }
            }
        }
        assert!(cp.sample_bytes() * 3 < raw.sample_bytes() * 2, "{} vs {}", cp.sample_bytes(), raw.sample_bytes());
    }
}
