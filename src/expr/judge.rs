//! The baseline judge's statistics (README, "Baseline judge"): is a candidate worse than its
//! baseline? Pure functions over samples and counts, and the [`Verdict`] a decision explains.
//!
//! - Samples (latency-like): a one-sided Mann-Whitney U test, normal approximation with the tie
//!   correction and the continuity correction (what SciPy's `mannwhitneyu(method="asymptotic")`
//!   computes), significant at the confidence *and* a difference of means above a tolerance.
//! - Counts (error ratios): Fisher's exact test, one-sided — the hypergeometric tail of the
//!   candidate's bad events given both totals — significant *and* the candidate's ratio above
//!   (1 + tolerance) × the baseline's. Never a rank test on sparse per-interval counts.
//! - Too few samples (or events) is unknown; NaN samples are dropped before anything is counted.

use statrs::distribution::{Discrete, Hypergeometric};

use super::eval::Truth;
use crate::template::{Unit, short};

/// `tolerance` when none is given: a difference of means of 25% of the baseline's.
pub const TOLERANCE: f64 = 0.25;
/// `confidence` when none is given: p < 0.02.
pub const CONFIDENCE: f64 = 0.98;
/// Fewer valid samples than this on either side: unknown.
pub const MIN_SAMPLES: usize = 10;
/// A total that grew by fewer events than this on either side: unknown.
pub const MIN_EVENTS: f64 = 100.0;

/// Which way is worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `higher`: latency, errors, memory.
    Higher,
    /// `lower`: throughput, success.
    Lower,
}

/// A Mann-Whitney U test of "x tends to be greater than y".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MannWhitney {
    /// U of x: the number of (x, y) pairs with x > y, ties counting one half.
    pub u: f64,
    /// One-sided p-value (normal approximation, tie- and continuity-corrected); 1 when every
    /// value is the same.
    pub p: f64,
}

/// One-sided Mann-Whitney U test that `x` is stochastically greater than `y`. Values must not
/// be NaN (the caller drops them). `ranks` is scratch space, reused across calls.
pub fn mann_whitney_greater(x: &[f64], y: &[f64], ranks: &mut Vec<(f64, bool)>) -> MannWhitney {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    ranks.clear();
    ranks.extend(x.iter().map(|&v| (v, true)));
    ranks.extend(y.iter().map(|&v| (v, false)));
    ranks.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n = ranks.len();
    let (mut rank_sum_x, mut ties) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && ranks[j].0 == ranks[i].0 {
            j += 1;
        }
        // Positions i..j share the average of ranks i+1..=j.
        let rank = (i + 1 + j) as f64 / 2.0;
        let t = (j - i) as f64;
        ties += t * t * t - t;
        rank_sum_x += rank * ranks[i..j].iter().filter(|r| r.1).count() as f64;
        i = j;
    }
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let total = n1 + n2;
    let variance = n1 * n2 / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    if n1 == 0.0 || n2 == 0.0 || variance <= 0.0 {
        return MannWhitney { u, p: 1.0 };
    }
    let z = (u - n1 * n2 / 2.0 - 0.5) / variance.sqrt();
    MannWhitney { u, p: statrs::function::erf::erfc(z / std::f64::consts::SQRT_2) / 2.0 }
}

/// One-sided Fisher's exact test that the first group's share of bad events is greater than
/// the second's: P(X ≥ a_bad) for X hypergeometric with both totals' events and bad events.
/// Counts are whole events; `None` when they do not make a table (bad above total).
pub fn fisher_greater(a_bad: u64, a_total: u64, b_bad: u64, b_total: u64) -> Option<f64> {
    if a_bad > a_total || b_bad > b_total {
        return None;
    }
    let population = a_total.checked_add(b_total)?;
    let bad = a_bad + b_bad;
    let h = Hypergeometric::new(population, bad, a_total).ok()?;
    let (lo, hi) = (a_total.saturating_sub(population - bad), bad.min(a_total));
    if a_bad <= lo {
        return Some(1.0);
    }
    // Sum the smaller tail outward from its edge, where terms only shrink, and stop once they no
    // longer change the sum: a few hundred terms even for millions of events.
    let mode = ((a_total + 1) as f64 * (bad + 1) as f64 / (population + 2) as f64).floor() as u64;
    let tail = |range: &mut dyn Iterator<Item = u64>| {
        let mut sum = 0.0;
        for k in range {
            let term = h.ln_pmf(k).exp();
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        sum
    };
    let p = if a_bad > mode { tail(&mut (a_bad..=hi)) } else { 1.0 - tail(&mut (lo..a_bad).rev()) };
    Some(p.clamp(0.0, 1.0))
}

/// What a comparison found, with the figures that explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub truth: Truth,
    pub figures: Figures,
    pub confidence: f64,
    pub tolerance: f64,
    /// Whether the baseline is the version's own evidence before its deploy.
    pub before_deploy: bool,
}

/// The numbers behind a verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Figures {
    /// `higher`/`lower`: samples and their means; `p` is `None` when too few samples.
    Samples {
        direction: Direction,
        unit: Unit,
        candidate: usize,
        baseline: usize,
        candidate_mean: f64,
        baseline_mean: f64,
        p: Option<f64>,
    },
    /// `ratio_higher`: bad and total events; `p` is `None` when too few events.
    Ratios { candidate_bad: f64, candidate_total: f64, baseline_bad: f64, baseline_total: f64, p: Option<f64> },
    /// A side had no data at all (no matching series, or the deploy's window is unknown).
    NoData { side: &'static str },
}

/// Judges samples (NaN already dropped).
pub fn judge_samples(
    direction: Direction,
    candidate: &[f64],
    baseline: &[f64],
    tolerance: f64,
    confidence: f64,
    unit: Unit,
    scratch: &mut Vec<(f64, bool)>,
) -> (Truth, Figures) {
    let mean = |v: &[f64]| if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 };
    let (cm, bm) = (mean(candidate), mean(baseline));
    let enough = candidate.len() >= MIN_SAMPLES && baseline.len() >= MIN_SAMPLES;
    let p = enough.then(|| match direction {
        Direction::Higher => mann_whitney_greater(candidate, baseline, scratch).p,
        Direction::Lower => mann_whitney_greater(baseline, candidate, scratch).p,
    });
    let figures = Figures::Samples {
        direction,
        unit,
        candidate: candidate.len(),
        baseline: baseline.len(),
        candidate_mean: cm,
        baseline_mean: bm,
        p,
    };
    let Some(p) = p else { return (Truth::Unknown, figures) };
    let difference = match direction {
        Direction::Higher => cm - bm,
        Direction::Lower => bm - cm,
    };
    let worse = p < 1.0 - confidence && difference > tolerance * bm.abs();
    (if worse { Truth::True } else { Truth::False }, figures)
}

/// Judges bad/total event counts (counter increases over the window).
pub fn judge_ratios(
    (cand_bad, cand_total): (f64, f64),
    (base_bad, base_total): (f64, f64),
    tolerance: f64,
    confidence: f64,
) -> (Truth, Figures) {
    let whole = |v: f64| v.max(0.0).round() as u64;
    let enough = cand_total >= MIN_EVENTS && base_total >= MIN_EVENTS;
    let p = if enough {
        fisher_greater(whole(cand_bad), whole(cand_total), whole(base_bad), whole(base_total))
    } else {
        None
    };
    let figures = Figures::Ratios {
        candidate_bad: cand_bad,
        candidate_total: cand_total,
        baseline_bad: base_bad,
        baseline_total: base_total,
        p,
    };
    let Some(p) = p else { return (Truth::Unknown, figures) };
    let (cr, br) = (cand_bad / cand_total, base_bad / base_total);
    let worse = p < 1.0 - confidence && cr > (1.0 + tolerance) * br;
    (if worse { Truth::True } else { Truth::False }, figures)
}

/// `4e-15`, `0.0123`: a p-value as people read it.
pub fn p_value(p: f64) -> String {
    if p < 1e-4 { format!("{p:.0e}") } else { short(p) }
}

/// `40%`, `2.5%`, `0.33%`: a tenth of a percent, a hundredth under 1%.
fn percent(x: f64) -> String {
    let scale = if x.abs() < 0.01 { 10_000.0 } else { 1000.0 };
    format!("{}%", short((x * scale).round() / (scale / 100.0)))
}

impl Verdict {
    /// The baseline's figure, as [`Verdict::candidate`].
    pub fn baseline(&self) -> Option<f64> {
        let v = match self.figures {
            Figures::Samples { baseline_mean, .. } => baseline_mean,
            Figures::Ratios { baseline_bad, baseline_total, .. } => baseline_bad / baseline_total,
            Figures::NoData { .. } => return None,
        };
        v.is_finite().then_some(v)
    }

    /// The candidate's figure: its mean, or its ratio of bad events (a judge rule's value).
    pub fn candidate(&self) -> Option<f64> {
        let v = match self.figures {
            Figures::Samples { candidate_mean, .. } => candidate_mean,
            Figures::Ratios { candidate_bad, candidate_total, .. } => candidate_bad / candidate_total,
            Figures::NoData { .. } => return None,
        };
        v.is_finite().then_some(v)
    }

    /// `candidate mean 140ms vs baseline 100ms (+40%), Mann-Whitney p = 4e-15, 98% needed`.
    pub fn note(&self) -> String {
        let baseline = if self.before_deploy { "before the deploy" } else { "baseline" };
        let needed = format!("{} needed", percent(self.confidence));
        match &self.figures {
            Figures::NoData { side } => format!("no data for the {side}"),
            Figures::Samples { candidate, baseline: b, p: None, .. } => {
                format!("too few samples: candidate {candidate}, {baseline} {b} (at least {MIN_SAMPLES} each)")
            }
            Figures::Samples { unit, candidate_mean, baseline_mean, p: Some(p), .. } => {
                let change = match *baseline_mean {
                    0.0 => String::new(),
                    b => {
                        let d = (candidate_mean - b) / b.abs();
                        format!(" ({}{})", if d >= 0.0 { "+" } else { "" }, percent(d))
                    }
                };
                format!(
                    "candidate mean {} vs {baseline} {}{change}, Mann-Whitney p = {}, {needed}",
                    unit.show(*candidate_mean),
                    unit.show(*baseline_mean),
                    p_value(*p)
                )
            }
            Figures::Ratios { candidate_total, baseline_total, p: None, .. } => format!(
                "too few events: candidate {}, {baseline} {} (at least {MIN_EVENTS} each)",
                short(candidate_total.round()),
                short(baseline_total.round())
            ),
            Figures::Ratios { candidate_bad, candidate_total, baseline_bad, baseline_total, p: Some(p) } => {
                let (cr, br) = (candidate_bad / candidate_total, baseline_bad / baseline_total);
                let times =
                    if br > 0.0 { format!(" (×{})", short((cr / br * 10.0).round() / 10.0)) } else { String::new() };
                format!(
                    "candidate {} ({} of {}) vs {baseline} {} ({} of {}){times}, Fisher p = {}, {needed}",
                    percent(cr),
                    short(candidate_bad.round()),
                    short(candidate_total.round()),
                    percent(br),
                    short(baseline_bad.round()),
                    short(baseline_total.round()),
                    p_value(*p)
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_data_is_never_higher() {
        let x = [1.0; 20];
        let mut s = Vec::new();
        assert_eq!(mann_whitney_greater(&x, &x, &mut s).p, 1.0);
        let (t, _) = judge_samples(Direction::Higher, &x, &x, 0.0, 0.98, Unit::Plain, &mut s);
        assert_eq!(t, Truth::False);
        let v: Vec<f64> = (0..30).map(f64::from).collect();
        let (t, _) = judge_samples(Direction::Higher, &v, &v, 0.0, 0.98, Unit::Plain, &mut s);
        assert_eq!(t, Truth::False);
    }

    #[test]
    fn too_few_samples_or_events_is_unknown() {
        let mut s = Vec::new();
        let (t, f) = judge_samples(Direction::Higher, &[9.0; 9], &[1.0; 30], 0.25, 0.98, Unit::Plain, &mut s);
        assert_eq!(t, Truth::Unknown);
        assert!(matches!(f, Figures::Samples { p: None, .. }));
        assert_eq!(judge_ratios((50.0, 99.0), (0.0, 1000.0), 0.25, 0.98).0, Truth::Unknown);
    }

    #[test]
    fn mirror_and_tolerance() {
        let mut s = Vec::new();
        let low: Vec<f64> = (0..20).map(|i| 100.0 + f64::from(i)).collect();
        let high: Vec<f64> = (0..20).map(|i| 200.0 + f64::from(i)).collect();
        assert_eq!(judge_samples(Direction::Higher, &high, &low, 0.25, 0.98, Unit::Plain, &mut s).0, Truth::True);
        assert_eq!(judge_samples(Direction::Lower, &low, &high, 0.25, 0.98, Unit::Plain, &mut s).0, Truth::True);
        assert_eq!(judge_samples(Direction::Lower, &high, &low, 0.25, 0.98, Unit::Plain, &mut s).0, Truth::False);
        // Significant but only ~90% above: not above a tolerance of 100%.
        assert_eq!(judge_samples(Direction::Higher, &high, &low, 1.0, 0.98, Unit::Plain, &mut s).0, Truth::False);
    }

    #[test]
    fn fisher_tails_add_up() {
        // Symmetric table: P(X >= a) + P(X <= a - 1) = 1.
        let p = fisher_greater(5, 100, 5, 100).unwrap();
        assert!(p > 0.5 && p < 0.7, "{p}");
        assert_eq!(fisher_greater(0, 100, 5, 100), Some(1.0));
        assert_eq!(fisher_greater(101, 100, 5, 100), None);
        // Millions of events stay fast and finite.
        let p = fisher_greater(2_000, 1_000_000, 1_000, 1_000_000).unwrap();
        assert!(p < 1e-50, "{p}");
    }

    /// Relative error, with p-values below 1e-300 all equal.
    fn close(ours: f64, theirs: f64, tolerance: f64) -> bool {
        (ours - theirs).abs() <= tolerance * theirs.abs().max(1e-300)
    }

    /// The p-values against SciPy's, computed offline (scripts/judge-reference.py) and kept in
    /// tests/data/judge-reference.json: no statistics package at test time.
    #[test]
    fn p_values_match_the_reference_table() {
        let table: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/judge-reference.json")).expect("reference table");
        let num = |v: &serde_json::Value| v.as_f64().expect("number");
        let list = |v: &serde_json::Value| v.as_array().expect("array").iter().map(num).collect::<Vec<f64>>();
        let mut scratch = Vec::new();
        let cases = table["mann_whitney"].as_array().expect("mann_whitney");
        assert!(cases.len() >= 10);
        for case in cases {
            let name = case["name"].as_str().unwrap_or_default();
            let (x, y) = (list(&case["x"]), list(&case["y"]));
            let greater = mann_whitney_greater(&x, &y, &mut scratch);
            let less = mann_whitney_greater(&y, &x, &mut scratch);
            assert_eq!(greater.u, num(&case["u"]), "{name}: U");
            assert!(
                close(greater.p, num(&case["p_greater"]), 1e-9),
                "{name}: p {} vs {}",
                greater.p,
                case["p_greater"]
            );
            assert!(close(less.p, num(&case["p_less"]), 1e-9), "{name}: p(less) {} vs {}", less.p, case["p_less"]);
        }
        let cases = table["fisher"].as_array().expect("fisher");
        assert!(cases.len() >= 10);
        for case in cases {
            let name = case["name"].as_str().unwrap_or_default();
            let int = |k: &str| case[k].as_u64().expect("count");
            let p = fisher_greater(int("a_bad"), int("a_total"), int("b_bad"), int("b_total")).expect("a table");
            assert!(close(p, num(&case["p_greater"]), 1e-6), "{name}: p {p} vs {}", case["p_greater"]);
        }
    }

    #[test]
    fn notes_read_like_the_issue() {
        let v = Verdict {
            truth: Truth::True,
            figures: Figures::Samples {
                direction: Direction::Higher,
                unit: Unit::Seconds,
                candidate: 40,
                baseline: 40,
                candidate_mean: 0.14,
                baseline_mean: 0.1,
                p: Some(4e-15),
            },
            confidence: 0.98,
            tolerance: 0.25,
            before_deploy: false,
        };
        assert_eq!(v.note(), "candidate mean 140ms vs baseline 100ms (+40%), Mann-Whitney p = 4e-15, 98% needed");
    }
}
