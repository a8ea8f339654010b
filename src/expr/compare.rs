//! The baseline judge's calls against the window store: what `higher`/`lower`/`ratio_higher`
//! read (samples, per-interval rates, counts) for the candidate and the baseline, what a
//! `"deploy"` baseline keeps at the deploy, and the [`Verdict`] the statistics of [`super::judge`]
//! give.

use super::eval::Truth;
use super::functions::{Call, CallOf};
use super::judge::{Figures, Verdict, judge_ratios, judge_samples};
use crate::time::{Span, Timestamp};
use crate::window::{At, SelectorId, Store};

/// What a `"deploy"` baseline read just before the deploy, kept until the next one: the samples
/// are gone from the store long before the version stops being judged (the checkpoint carries
/// it across a restart).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    Samples(Vec<f64>),
    Counts { bad: f64, total: f64 },
}

/// Buffers reused across ticks, so a comparison allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Scratch {
    ranks: Vec<(f64, bool)>,
    candidate: Vec<f64>,
    baseline: Vec<f64>,
}

/// Bad and total events over the window; a bad selector without any series counts 0 while the
/// total has data (error series commonly appear with the first error).
fn counts(store: &Store, bad: SelectorId, total: SelectorId, at: At, window: Span) -> Option<(f64, f64)> {
    let total = store.increase(total, at, window)?;
    let bad = match store.increase(bad, at, window) {
        Some(b) => b,
        None if !store.has_series(bad) => 0.0,
        None => return None,
    };
    Some((bad, total))
}

impl Call {
    /// For a judge whose baseline is `"deploy"`: the candidate's own evidence over the window
    /// just before `deploy` (`[deploy − window, deploy)`). `None` for any other call.
    pub fn baseline_at(&self, store: &Store, deploy: Timestamp) -> Option<Baseline> {
        // A deploy is dated when the new version could first have run: a sample at that very
        // time is already the new version's.
        let at = At::new(Timestamp(deploy.0 - 1));
        match *self {
            CallOf::Judge { cand, base: None, window, per_interval, .. } => {
                let mut out = Vec::new();
                store.values(cand, at, window, per_interval, &mut out);
                Some(Baseline::Samples(out))
            }
            CallOf::RatioJudge { cand_bad, cand_total, base: None, window, .. } => {
                let (bad, total) = counts(store, cand_bad, cand_total, at, window)?;
                Some(Baseline::Counts { bad, total })
            }
            _ => None,
        }
    }

    /// A judge's verdict at `now` (deployment-scoped calls read from `since` on, the baseline
    /// selector over the same span); `before_deploy` is what [`Call::baseline_at`] kept at the
    /// deploy, for a `"deploy"` baseline. `None` for any other call.
    pub fn judge(
        &self,
        store: &Store,
        now: Timestamp,
        since: Option<Timestamp>,
        before_deploy: Option<&Baseline>,
        scratch: &mut Scratch,
    ) -> Option<Verdict> {
        let at = At::new(now).since(since);
        let no_data = |side| (Truth::Unknown, Figures::NoData { side });
        let (truth, figures, tolerance, confidence, deploy) = match *self {
            CallOf::Judge { direction, cand, base, window, tolerance, confidence, per_interval, unit } => {
                scratch.candidate.clear();
                store.values(cand, at, window, per_interval, &mut scratch.candidate);
                let baseline = match (base, before_deploy) {
                    (Some(sel), _) => {
                        scratch.baseline.clear();
                        store.values(sel, at, window, per_interval, &mut scratch.baseline);
                        Some(scratch.baseline.as_slice())
                    }
                    (None, Some(Baseline::Samples(kept))) => Some(kept.as_slice()),
                    (None, _) => None,
                };
                let (truth, figures) = match baseline {
                    Some(b) => {
                        judge_samples(direction, &scratch.candidate, b, tolerance, confidence, unit, &mut scratch.ranks)
                    }
                    None => no_data("baseline (no deploy known)"),
                };
                (truth, figures, tolerance, confidence, base.is_none())
            }
            CallOf::RatioJudge { cand_bad, cand_total, base, window, tolerance, confidence } => {
                let candidate = counts(store, cand_bad, cand_total, at, window);
                let baseline = match (base, before_deploy) {
                    (Some((b, t)), _) => counts(store, b, t, at, window),
                    (None, Some(Baseline::Counts { bad, total })) => Some((*bad, *total)),
                    (None, _) => None,
                };
                let (truth, figures) = match (candidate, baseline) {
                    (Some(c), Some(b)) => judge_ratios(c, b, tolerance, confidence),
                    (None, _) => no_data("candidate"),
                    (_, None) => no_data("baseline"),
                };
                (truth, figures, tolerance, confidence, base.is_none())
            }
            _ => return None,
        };
        Some(Verdict { truth, figures, confidence, tolerance, before_deploy: deploy })
    }
}

/// What the evaluator keeps for its judge calls, by call index: each one's last verdict and the
/// `"deploy"` baseline kept at the current deploy.
#[derive(Debug, Default)]
pub struct Judgements {
    verdicts: Vec<Option<Verdict>>,
    baselines: Vec<Option<Baseline>>,
    scratch: Scratch,
}

impl Judgements {
    /// Room for `calls` calls.
    pub fn new(calls: usize) -> Judgements {
        Judgements { verdicts: vec![None; calls], baselines: vec![None; calls], scratch: Scratch::default() }
    }

    /// Keeps what call `i` reads just before a deploy at `at` (judge calls with a `"deploy"`
    /// baseline; nothing for any other).
    pub fn keep_baseline(&mut self, i: usize, call: &Call, store: &Store, at: Timestamp) {
        if let Some(slot) = self.baselines.get_mut(i) {
            *slot = call.baseline_at(store, at);
        }
    }

    /// Judges call `i` at `now` (see [`Call::judge`]), keeps the verdict and returns its truth.
    pub fn judge(&mut self, i: usize, call: &Call, store: &Store, now: Timestamp, since: Option<Timestamp>) -> Truth {
        let baseline = self.baselines.get(i).and_then(Option::as_ref);
        let verdict = call.judge(store, now, since, baseline, &mut self.scratch);
        let truth = verdict.as_ref().map_or(Truth::Unknown, |v| v.truth);
        if let Some(slot) = self.verdicts.get_mut(i) {
            *slot = verdict;
        }
        truth
    }

    /// The `"deploy"` baselines kept, by call index.
    pub fn baselines(&self) -> impl Iterator<Item = (usize, &Baseline)> {
        self.baselines.iter().enumerate().filter_map(|(i, b)| Some((i, b.as_ref()?)))
    }

    /// Puts back the `"deploy"` baseline call `i` kept (from a checkpoint).
    pub fn restore_baseline(&mut self, i: usize, baseline: Baseline) {
        if let Some(slot) = self.baselines.get_mut(i) {
            *slot = Some(baseline);
        }
    }

    /// Call `i`'s verdict on the last tick.
    pub fn verdict(&self, i: usize) -> Option<&Verdict> {
        self.verdicts.get(i)?.as_ref()
    }
}
