//! Counter checkpoints at coarse steps: what a long window of an SLO needs instead of every raw
//! sample (docs/ARCHITECTURE.md, "SLOs"). A counter's increase over a window needs only its value at the
//! window's edges, so a series read by an SLO keeps, besides its raw samples for the shortest
//! window, its reset-corrected running total at each multiple of a step (one level per step,
//! finest first, each kept for its own span). Memory then follows the steps, not the poll rate.
//!
//! Point `k` of a level is the running total as of the last sample at or before `k × step`. A
//! value between two points is interpolated linearly (exact on the grid); before the series'
//! first sample the total is 0, its first sample being its baseline as for raw windows.

use std::collections::VecDeque;

#[derive(Debug, Clone)]
struct Level {
    step: i64,
    /// How many points are kept (`keep ÷ step`, plus one).
    cap: usize,
    /// Grid index of `points[0]`.
    first_k: i64,
    points: VecDeque<f64>,
    /// Whether points were dropped (or never taken) at the front: the level then does not
    /// reach back to the series' first sample.
    trimmed: bool,
}

impl Level {
    fn new(step: i64, keep: i64) -> Level {
        let cap = (keep / step.max(1)) as usize + 1;
        // Exactly `cap`: the buffer never grows (a full one drops its oldest before it takes one).
        Level { step: step.max(1), cap, first_k: 0, points: VecDeque::with_capacity(cap), trimmed: false }
    }

    /// Grid time of the next point to write.
    fn next_k(&self) -> i64 {
        self.first_k + self.points.len() as i64
    }
}

/// One series' running total and its checkpoints.
/// A series' checkpoints as a restart keeps them (see `rules::checkpoint`): its running total
/// and each level's points.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedTotals {
    pub total: f64,
    pub prev: Option<f64>,
    pub first_t: Option<i64>,
    pub last_t: i64,
    pub levels: Vec<SavedLevel>,
}

/// One level of [`SavedTotals`]: its step, the grid index of its first point, whether it
/// reaches back to the series' first sample, and its points.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedLevel {
    pub step: i64,
    pub first_k: i64,
    pub trimmed: bool,
    pub points: Vec<f64>,
}

#[derive(Debug, Clone)]
pub(super) struct Checkpoints {
    /// Reset-corrected increase since the first sample.
    total: f64,
    /// The last value, to tell a reset; `None` after a stale marker (the next value is a new
    /// baseline).
    prev: Option<f64>,
    first_t: Option<i64>,
    last_t: i64,
    levels: Vec<Level>,
}

impl Checkpoints {
    /// Checkpoints at each `(step, keep)` in ms.
    pub(super) fn new(levels: &[(i64, i64)]) -> Checkpoints {
        let mut c = Checkpoints { total: 0.0, prev: None, first_t: None, last_t: i64::MIN, levels: Vec::new() };
        c.add_levels(levels);
        c
    }

    /// Adds the levels it lacks (a step it has keeps the longer span); a level added to a
    /// series already running does not reach back before now.
    pub(super) fn add_levels(&mut self, levels: &[(i64, i64)]) {
        for &(step, keep) in levels {
            if let Some(l) = self.levels.iter_mut().find(|l| l.step == step) {
                let cap = Level::new(step, keep).cap;
                if cap > l.cap {
                    l.points.reserve_exact(cap - l.points.len());
                    l.cap = cap;
                }
                continue;
            }
            let mut level = Level::new(step, keep);
            if self.first_t.is_some() {
                level.first_k = self.last_t.div_euclid(level.step) + 1;
                level.trimmed = true;
            }
            self.levels.push(level);
        }
        self.levels.sort_by_key(|l| l.step);
    }

    /// What a restart keeps.
    pub(super) fn save(&self) -> SavedTotals {
        SavedTotals {
            total: self.total,
            prev: self.prev,
            first_t: self.first_t,
            last_t: self.last_t,
            levels: self
                .levels
                .iter()
                .map(|l| SavedLevel {
                    step: l.step,
                    first_k: l.first_k,
                    trimmed: l.trimmed,
                    points: l.points.iter().copied().collect(),
                })
                .collect(),
        }
    }

    /// Takes over what an earlier run kept, when it is not behind what this one holds (the
    /// samples restored before it rebuilt the short end). Levels keep this run's steps and
    /// spans: a saved level with a step no longer read is dropped, one with too many points
    /// keeps its latest, a level new to this run starts at the saved end.
    pub(super) fn adopt(&mut self, saved: &SavedTotals) {
        if saved.first_t.is_none() || saved.last_t < self.last_t || !saved.total.is_finite() {
            return;
        }
        self.total = saved.total;
        self.prev = saved.prev;
        self.first_t = saved.first_t;
        self.last_t = saved.last_t;
        for l in &mut self.levels {
            let Some(s) = saved.levels.iter().find(|s| s.step == l.step) else {
                l.points.clear();
                l.first_k = saved.last_t.div_euclid(l.step) + 1;
                l.trimmed = true;
                continue;
            };
            let skip = s.points.len().saturating_sub(l.cap);
            l.points.clear();
            l.points.extend(s.points[skip..].iter().copied());
            l.first_k = s.first_k + skip as i64;
            l.trimmed = s.trimmed || skip > 0;
        }
    }

    /// The series' first sample, if any.
    pub(super) fn first_t(&self) -> Option<i64> {
        self.first_t
    }

    /// Numbers held, for memory accounting.
    pub(super) fn points(&self) -> usize {
        self.levels.iter().map(|l| l.points.capacity()).sum()
    }

    /// Takes a sample (a stale marker as NaN with `stale`).
    pub(super) fn push(&mut self, t: i64, v: f64, stale: bool) {
        if self.first_t.is_none() {
            if stale || v.is_nan() {
                return;
            }
            self.first_t = Some(t);
            self.last_t = t;
            self.prev = Some(v);
            for l in &mut self.levels {
                l.first_k = t.div_euclid(l.step) + i64::from(t.rem_euclid(l.step) != 0);
            }
            return;
        }
        if t < self.last_t {
            return;
        }
        // Grid points from the last sample up to (not including) this one hold the total so far.
        for l in &mut self.levels {
            let upto = (t - 1).div_euclid(l.step); // last grid index before t
            let missing = upto - l.next_k() + 1;
            if missing > l.cap as i64 {
                l.points.clear();
                l.first_k = upto + 1 - l.cap as i64;
                l.trimmed = true;
            }
            while l.next_k() <= upto {
                if l.points.len() >= l.cap {
                    l.points.pop_front();
                    l.first_k += 1;
                    l.trimmed = true;
                }
                l.points.push_back(self.total);
            }
        }
        self.last_t = t;
        if stale {
            self.prev = None;
            return;
        }
        if v.is_nan() {
            return;
        }
        if let Some(p) = self.prev {
            self.total += if v < p { v } else { v - p };
        }
        self.prev = Some(v);
    }

    /// Whether the checkpoints reach back to `x`.
    pub(super) fn reach(&self, x: i64) -> bool {
        self.first_t.is_some_and(|f| x < f) || self.levels.iter().any(|l| !l.trimmed || l.first_k * l.step <= x)
    }

    /// The running total as of `x`: `None` before the first sample, or where no level reaches.
    fn total_at(&self, x: i64) -> Option<f64> {
        let first = self.first_t?;
        if x < first {
            return None;
        }
        if x >= self.last_t {
            return Some(self.total);
        }
        for l in &self.levels {
            let k = x.div_euclid(l.step);
            let lower = if k >= l.first_k {
                match l.points.get((k - l.first_k) as usize) {
                    Some(&v) => (k * l.step, v),
                    None => continue,
                }
            } else if !l.trimmed {
                (first, 0.0)
            } else {
                continue;
            };
            let upper = match l.points.get((k + 1 - l.first_k) as usize) {
                Some(&v) if k + 1 >= l.first_k => ((k + 1) * l.step, v),
                _ => (self.last_t, self.total),
            };
            if upper.0 <= lower.0 {
                return Some(lower.1);
            }
            let share = (x - lower.0) as f64 / (upper.0 - lower.0) as f64;
            return Some(lower.1 + (upper.1 - lower.1) * share.clamp(0.0, 1.0));
        }
        None
    }

    /// The increase over `(start, end]`; with a `floor` after `start`, from the floor on. No
    /// data when the series has nothing after the baseline or the checkpoints do not reach it.
    pub(super) fn increase(&self, start: i64, end: i64, floor: Option<i64>) -> Option<f64> {
        let first = self.first_t?;
        let base = floor.filter(|&f| f > start).unwrap_or(start);
        if end < first || self.last_t.min(end) <= base.max(first) {
            return None;
        }
        let at_end = self.total_at(end)?;
        let at_base = if base < first { 0.0 } else { self.total_at(base)? };
        Some((at_end - at_base).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;

    #[test]
    fn on_the_grid_the_increase_is_exact_and_resets_count() {
        let mut c = Checkpoints::new(&[(M, 60 * M)]);
        // +10 a minute, reset at 30 min to 5.
        for i in 0..=40i64 {
            let v = if i < 30 { 10.0 * i as f64 } else { 5.0 + 10.0 * (i - 30) as f64 };
            c.push(i * M, v, false);
        }
        assert_eq!(c.increase(10 * M, 20 * M, None), Some(100.0));
        // 20→29: 90, reset to 5 counts 5, then 30→40: 100.
        assert_eq!(c.increase(20 * M, 40 * M, None), Some(195.0));
        // Before the first sample: the first sample is the baseline.
        assert_eq!(c.increase(-10 * M, 5 * M, None), Some(50.0));
        // A floor: from it on.
        assert_eq!(c.increase(0, 40 * M, Some(35 * M)), Some(50.0));
        // Between grid points: interpolated.
        assert_eq!(c.increase(10 * M + M / 2, 20 * M, None), Some(95.0));
        assert_eq!(c.increase(40 * M, 41 * M, None), None, "nothing after the baseline");
    }

    #[test]
    fn stale_markers_restart_the_baseline_and_old_points_are_dropped() {
        let mut c = Checkpoints::new(&[(M, 10 * M)]);
        c.push(0, 100.0, false);
        c.push(M, 110.0, false);
        c.push(2 * M, f64::NAN, true);
        c.push(3 * M, 5.0, false);
        c.push(4 * M, 8.0, false);
        assert_eq!(c.increase(0, 4 * M, None), Some(13.0));
        for i in 5..=100i64 {
            c.push(i * M, 8.0 + i as f64, false);
        }
        assert!(c.points() <= 32, "{}", c.points());
        assert!(!c.reach(50 * M), "dropped");
        assert_eq!(c.increase(50 * M, 100 * M, None), None, "not reached: no data rather than a wrong answer");
        assert_eq!(c.increase(95 * M, 100 * M, None), Some(5.0));
    }

    #[test]
    fn a_long_gap_does_not_fill_more_points_than_kept() {
        let mut c = Checkpoints::new(&[(1000, 10_000)]);
        c.push(0, 1.0, false);
        c.push(1_000_000_000, 2.0, false);
        assert!(c.points() <= 32);
        assert_eq!(c.increase(1_000_000_000 - 5000, 1_000_000_000, None), Some(1.0));
    }
}
