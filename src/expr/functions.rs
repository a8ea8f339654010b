//! The window functions of the rule language (the README's table, "Profiles: the rule language"): their signatures, argument
//! checking at load, and evaluation against the [`Store`]. A call's arguments must be literals;
//! they are parsed once, into a [`Call`] holding registered selector ids and spans.

use std::collections::HashMap;

use super::judge::{CONFIDENCE, Direction, TOLERANCE};
use super::slo::{SloParams, SloSpec};
use crate::diag::did_you_mean;
use crate::selector::Selector;
use crate::template::Unit;
use crate::time::Timestamp;
use crate::time::{Span, parse_duration};
use crate::window::{At, LOOKBACK, Over, SelectorId, Store};

/// Every function name the rule language adds to evalexpr's builtins.
pub const FUNCTION_NAMES: &[&str] = &[
    "rate",
    "increase",
    "ratio",
    "avg_over",
    "max_over",
    "min_over",
    "count_over",
    "last",
    "quantile",
    "up",
    "down_for",
    "firing",
    "pending",
    "burn_rate",
    "budget_remaining",
    "budget_spent",
    "higher",
    "lower",
    "ratio_higher",
];

/// The baseline judge's functions: true, false or unknown, never a number.
pub const JUDGE_FUNCTION_NAMES: &[&str] = &["higher", "lower", "ratio_higher"];

/// The functions that read an SLO by name (`burn_rate("availability", "1h")`).
pub const SLO_FUNCTION_NAMES: &[&str] = &["burn_rate", "budget_remaining", "budget_spent"];

/// What an SLO call computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SloFn {
    /// The bad-event ratio over the window ÷ (1 − objective).
    BurnRate,
    /// 1 − the period's bad-event ratio ÷ (1 − objective), on the data there is up to the
    /// period: the service's budget, whatever the version (negative when overspent).
    BudgetRemaining,
    /// The share of the period's budget the current version has spent since its deploy: its
    /// burn rate since the deploy × (time since the deploy ÷ period).
    BudgetSpent,
}

/// evalexpr builtins allowed in rules (pure math; no string or assignment functions).
pub const BUILTIN_NAMES: &[&str] = &[
    "min",
    "max",
    "floor",
    "round",
    "ceil",
    "if",
    "math::abs",
    "math::sqrt",
    "math::ln",
    "math::log",
    "math::log2",
    "math::log10",
    "math::exp",
    "math::pow",
];

/// A literal argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(String),
    Num(f64),
}

impl Arg {
    fn describe(&self) -> String {
        match self {
            Arg::Str(s) => format!("the string {s:?}"),
            Arg::Num(n) => format!("the number {n}"),
        }
    }
}

/// How far back a window is shifted: by a span (`"1h"`), or to just before the current
/// version's deploy (`"deploy"`: the same window over the previous version's evidence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    Ago(Span),
    Deploy,
}

impl Offset {
    pub const NONE: Offset = Offset::Ago(Span::ZERO);

    pub fn is_zero(&self) -> bool {
        *self == Offset::NONE
    }

    /// How far back beyond its window the offset reads (a deploy offset's value is taken once,
    /// at the deploy, so it needs no more than the window itself).
    fn reach(&self) -> Span {
        match self {
            Offset::Ago(span) => *span,
            Offset::Deploy => Span::ZERO,
        }
    }
}

/// Whose evidence a rule reads. A deployment's rules judge the version deployed now: their
/// windows start at its deploy. An environment's rules (node memory, a storage backend,
/// external alerts) are not about the version: they keep their full history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scope {
    #[default]
    Deployment,
    Environment,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "deployment" => Some(Scope::Deployment),
            "environment" => Some(Scope::Environment),
            _ => None,
        }
    }
}

/// A window function call with its arguments checked, generic over how selectors are held:
/// [`CallSpec`] as written (parsed selectors), [`Call`] ready to evaluate (registered ids).
#[derive(Debug, Clone)]
pub enum CallOf<S> {
    Rate {
        sel: S,
        window: Span,
        offset: Offset,
    },
    Increase {
        sel: S,
        window: Span,
        offset: Offset,
    },
    Ratio {
        num: S,
        den: S,
        window: Span,
        min_den: f64,
        offset: Offset,
    },
    Over {
        how: Over,
        sel: S,
        window: Span,
        offset: Offset,
    },
    Last {
        sel: S,
        offset: Offset,
    },
    Quantile {
        q: f64,
        sel: S,
        window: Span,
        offset: Offset,
    },
    Up {
        sel: S,
    },
    DownFor {
        sel: S,
    },
    /// An SLO's burn rate or budget; `window` is the period for the budget functions.
    Slo {
        what: SloFn,
        num: S,
        den: S,
        window: Span,
        params: SloParams,
    },
    /// `higher`/`lower`: the candidate's samples against the baseline's (`None`: the
    /// candidate's own, just before its deploy). `per_interval`: a counter, compared by its
    /// per-interval rates; `unit`: what its samples measure.
    Judge {
        direction: Direction,
        cand: S,
        base: Option<S>,
        window: Span,
        tolerance: f64,
        confidence: f64,
        per_interval: bool,
        unit: Unit,
    },
    /// `ratio_higher`: bad/total counts against the baseline's (`None`: before the deploy).
    RatioJudge {
        cand_bad: S,
        cand_total: S,
        base: Option<(S, S)>,
        window: Span,
        tolerance: f64,
        confidence: f64,
    },
}

/// A call as written, selectors parsed but not yet registered.
pub type CallSpec = CallOf<Selector>;
/// A call ready to evaluate: selectors registered with the store.
pub type Call = CallOf<SelectorId>;

impl<S> CallOf<S> {
    /// The same call with each selector converted by `f` (in argument order).
    pub fn map<T>(self, mut f: impl FnMut(S) -> T) -> CallOf<T> {
        match self {
            CallOf::Rate { sel, window, offset } => CallOf::Rate { sel: f(sel), window, offset },
            CallOf::Increase { sel, window, offset } => CallOf::Increase { sel: f(sel), window, offset },
            CallOf::Ratio { num, den, window, min_den, offset } => {
                let num = f(num);
                CallOf::Ratio { num, den: f(den), window, min_den, offset }
            }
            CallOf::Over { how, sel, window, offset } => CallOf::Over { how, sel: f(sel), window, offset },
            CallOf::Last { sel, offset } => CallOf::Last { sel: f(sel), offset },
            CallOf::Quantile { q, sel, window, offset } => CallOf::Quantile { q, sel: f(sel), window, offset },
            CallOf::Up { sel } => CallOf::Up { sel: f(sel) },
            CallOf::DownFor { sel } => CallOf::DownFor { sel: f(sel) },
            CallOf::Slo { what, num, den, window, params } => {
                let num = f(num);
                CallOf::Slo { what, num, den: f(den), window, params }
            }
            CallOf::Judge { direction, cand, base, window, tolerance, confidence, per_interval, unit } => {
                let cand = f(cand);
                CallOf::Judge {
                    direction,
                    cand,
                    base: base.map(&mut f),
                    window,
                    tolerance,
                    confidence,
                    per_interval,
                    unit,
                }
            }
            CallOf::RatioJudge { cand_bad, cand_total, base, window, tolerance, confidence } => {
                let (cand_bad, cand_total) = (f(cand_bad), f(cand_total));
                let base = base.map(|(b, t)| {
                    let b = f(b);
                    (b, f(t))
                });
                CallOf::RatioJudge { cand_bad, cand_total, base, window, tolerance, confidence }
            }
        }
    }
}

fn signature(name: &str) -> &'static str {
    match name {
        "rate" | "increase" => "(selector, window[, offset])",
        "ratio" => "(numerator, denominator, window[, min_den][, offset])",
        "avg_over" | "max_over" | "min_over" | "count_over" => "(selector, window[, offset])",
        "last" => "(selector[, offset])",
        "quantile" => "(q, bucket_selector, window[, offset])",
        "up" | "down_for" => "(target_or_selector)",
        "burn_rate" => "(\"slo-name\", window)",
        "budget_remaining" | "budget_spent" => "(\"slo-name\")",
        "higher" | "lower" => "(candidate, baseline_or_\"deploy\", window[, tolerance[, confidence]])",
        "ratio_higher" => {
            "(candidate_bad, candidate_total, baseline_bad, baseline_total, window[, tolerance[, confidence]])"
        }
        _ => "(\"rule-name\")",
    }
}

struct Args<'a> {
    name: &'a str,
    args: &'a [Arg],
}

impl Args<'_> {
    fn wrong_type(&self, i: usize, wanted: &str) -> String {
        format!(
            "argument {} of {}{} must be {wanted}, got {}",
            i + 1,
            self.name,
            signature(self.name),
            self.args[i].describe()
        )
    }

    fn string(&self, i: usize, wanted: &str) -> Result<&str, String> {
        match &self.args[i] {
            Arg::Str(s) => Ok(s),
            Arg::Num(_) => Err(self.wrong_type(i, wanted)),
        }
    }

    /// A compared selector: the candidate's own series — `"deploy"` is a baseline only.
    fn candidate(&self, i: usize) -> Result<Selector, String> {
        match &self.args[i] {
            Arg::Str(s) if s.trim().eq_ignore_ascii_case("deploy") => Err(format!(
                "argument {} of {}: \"deploy\" names a baseline, not a candidate: give the candidate's selector here",
                i + 1,
                self.name
            )),
            _ => self.selector(i),
        }
    }

    fn selector(&self, i: usize) -> Result<Selector, String> {
        let text = self.string(i, "a selector string such as \"http_requests_total{code=~\\\"5..\\\"}\"")?;
        Selector::parse(text).map_err(|e| format!("argument {} of {}: {e} in {text:?}", i + 1, self.name))
    }

    fn duration(&self, i: usize, what: &str) -> Result<Span, String> {
        let text = self.string(i, &format!("a {what} string such as \"5m\""))?;
        parse_duration(text).map_err(|e| format!("argument {} of {}: {e}", i + 1, self.name))
    }

    fn window(&self, i: usize) -> Result<Span, String> {
        let w = self.duration(i, "window")?;
        if w.is_zero() {
            return Err(format!("argument {} of {}: a window must be longer than 0s", i + 1, self.name));
        }
        Ok(w)
    }

    fn offset(&self, i: usize) -> Result<Offset, String> {
        match self.args.get(i) {
            None => Ok(Offset::NONE),
            Some(Arg::Str(s)) if s == "deploy" => Ok(Offset::Deploy),
            Some(_) => match self.duration(i, "offset (or \"deploy\")")? {
                span if span.is_zero() => Err(format!(
                    "argument {} of {}: an offset must be longer than 0s (or leave it out)",
                    i + 1,
                    self.name
                )),
                span => Ok(Offset::Ago(span)),
            },
        }
    }

    /// A baseline selector, or `"deploy"` (`None`): the candidate's own evidence before it.
    /// `"Deploy"` is not a metric someone meant: refused with the word it is close to.
    fn baseline(&self, i: usize) -> Result<Option<Selector>, String> {
        match &self.args[i] {
            Arg::Str(s) if s == "deploy" => Ok(None),
            Arg::Str(s) if s.trim().eq_ignore_ascii_case("deploy") => Err(format!(
                "argument {} of {}: {s:?} is not a baseline; did you mean \"deploy\" (the version's own evidence before its deploy)?",
                i + 1,
                self.name
            )),
            Arg::Str(_) => self.selector(i).map(Some),
            Arg::Num(_) => Err(self.wrong_type(i, "a baseline selector string, or \"deploy\"")),
        }
    }

    /// The judge's optional `tolerance` (≥ 0) and `confidence` (strictly between 0 and 1) at
    /// `i` and `i + 1`.
    fn judge_params(&self, i: usize) -> Result<(f64, f64), String> {
        let tolerance = match self.args.get(i) {
            None => TOLERANCE,
            Some(_) => self.number(i, "a tolerance (a number: 0.25 is 25% of the baseline)")?,
        };
        if tolerance < 0.0 {
            return Err(format!(
                "argument {} of {}: the tolerance must not be negative, got {tolerance}",
                i + 1,
                self.name
            ));
        }
        let confidence = match self.args.get(i + 1) {
            None => CONFIDENCE,
            Some(_) => self.number(i + 1, "a confidence between 0 and 1 (0.98)")?,
        };
        if !(confidence > 0.0 && confidence < 1.0) {
            return Err(format!(
                "argument {} of {}: the confidence must lie strictly between 0 and 1 (0.98 is 98%), got {confidence}",
                i + 2,
                self.name
            ));
        }
        Ok((tolerance, confidence))
    }

    fn number(&self, i: usize, wanted: &str) -> Result<f64, String> {
        match &self.args[i] {
            Arg::Num(n) if n.is_finite() => Ok(*n),
            _ => Err(self.wrong_type(i, wanted)),
        }
    }

    fn arity(&self, min: usize, max: usize) -> Result<(), String> {
        let n = self.args.len();
        if n < min || n > max {
            let count = if min == max { format!("{min}") } else { format!("{min} to {max}") };
            return Err(format!(
                "{}{} takes {count} argument{}, got {n}",
                self.name,
                signature(self.name),
                if max == 1 { "" } else { "s" }
            ));
        }
        Ok(())
    }

    /// `up("api")` means the target named api; a string with `{` is a selector over `up`.
    fn target(&self, i: usize) -> Result<Selector, String> {
        let text = self.string(i, "a target name or an `up{...}` selector")?;
        if !text.contains('{') {
            let plain = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if !plain {
                return Err(format!("argument 1 of {}: {text:?} is neither a target name nor a selector", self.name));
            }
            return Ok(Selector::for_label("up", "target", text));
        }
        let mut sel = self.selector(i)?;
        match sel.name.as_deref() {
            None => sel.name = Some("up".into()),
            Some("up") => {}
            Some(other) => {
                return Err(format!("argument 1 of {}: selects {other:?}; it reads `up` series only", self.name));
            }
        }
        Ok(sel)
    }
}

impl CallOf<Selector> {
    /// Checks a window function's arguments (`name` is one of [`FUNCTION_NAMES`] other than
    /// `firing`/`pending`).
    pub fn parse(name: &str, args: &[Arg]) -> Result<CallSpec, String> {
        let a = Args { name, args };
        let over = |how| -> Result<CallSpec, String> {
            a.arity(2, 3)?;
            Ok(CallOf::Over { how, sel: a.selector(0)?, window: a.window(1)?, offset: a.offset(2)? })
        };
        match name {
            "rate" | "increase" => {
                a.arity(2, 3)?;
                let (sel, window, offset) = (a.selector(0)?, a.window(1)?, a.offset(2)?);
                Ok(if name == "rate" {
                    CallOf::Rate { sel, window, offset }
                } else {
                    CallOf::Increase { sel, window, offset }
                })
            }
            "ratio" => {
                a.arity(3, 5)?;
                let (num, den, window) = (a.selector(0)?, a.selector(1)?, a.window(2)?);
                let (min_den, offset) = match args.get(3) {
                    None => (0.0, Offset::NONE),
                    Some(Arg::Num(_)) => (a.number(3, "a traffic floor (number)")?, a.offset(4)?),
                    Some(Arg::Str(_)) if args.len() == 4 => (0.0, a.offset(3)?),
                    Some(Arg::Str(_)) => return Err(a.wrong_type(3, "a traffic floor (number)")),
                };
                if min_den < 0.0 {
                    return Err(format!("argument 4 of ratio: the traffic floor must not be negative, got {min_den}"));
                }
                Ok(CallOf::Ratio { num, den, window, min_den, offset })
            }
            "avg_over" => over(Over::Avg),
            "max_over" => over(Over::Max),
            "min_over" => over(Over::Min),
            "count_over" => over(Over::Count),
            "last" => {
                a.arity(1, 2)?;
                Ok(CallOf::Last { sel: a.selector(0)?, offset: a.offset(1)? })
            }
            "quantile" => {
                a.arity(3, 4)?;
                let q = a.number(0, "a quantile between 0 and 1")?;
                if !(0.0..=1.0).contains(&q) {
                    return Err(format!("argument 1 of quantile must lie between 0 and 1, got {q}"));
                }
                Ok(CallOf::Quantile { q, sel: a.selector(1)?, window: a.window(2)?, offset: a.offset(3)? })
            }
            "up" | "down_for" => {
                a.arity(1, 1)?;
                let sel = a.target(0)?;
                Ok(if name == "up" { CallOf::Up { sel } } else { CallOf::DownFor { sel } })
            }
            "higher" | "lower" => {
                a.arity(3, 5)?;
                let cand = a.candidate(0)?;
                let base = a.baseline(1)?;
                let (window, (tolerance, confidence)) = (a.window(2)?, a.judge_params(3)?);
                let counter = |n: &str| ["_total", "_count", "_sum", "_bucket"].iter().any(|s| n.ends_with(s));
                let per_interval = cand.name.as_deref().is_some_and(counter);
                let unit = match (per_interval, cand.name.as_deref()) {
                    (false, Some(n)) => Unit::of(n),
                    _ => Unit::Plain,
                };
                let direction = if name == "higher" { Direction::Higher } else { Direction::Lower };
                Ok(CallOf::Judge { direction, cand, base, window, tolerance, confidence, per_interval, unit })
            }
            "ratio_higher" => {
                a.arity(5, 7)?;
                let (cand_bad, cand_total) = (a.candidate(0)?, a.candidate(1)?);
                let base = match (a.baseline(2)?, a.baseline(3)?) {
                    (Some(b), Some(t)) => Some((b, t)),
                    (None, None) => None,
                    _ => {
                        return Err(
                            "ratio_higher: \"deploy\" as the baseline goes in both baseline arguments (3 and 4)"
                                .to_string(),
                        );
                    }
                };
                let (window, (tolerance, confidence)) = (a.window(4)?, a.judge_params(5)?);
                Ok(CallOf::RatioJudge { cand_bad, cand_total, base, window, tolerance, confidence })
            }
            other => Err(format!("{other} is not a window function")),
        }
    }

    /// Checks an SLO function's arguments (`name` is one of [`SLO_FUNCTION_NAMES`]) against
    /// the SLOs loaded.
    pub fn parse_slo(name: &str, args: &[Arg], slos: &HashMap<String, SloSpec>) -> Result<CallSpec, String> {
        let a = Args { name, args };
        let what = match name {
            "burn_rate" => {
                a.arity(2, 2)?;
                SloFn::BurnRate
            }
            "budget_remaining" => {
                a.arity(1, 1)?;
                SloFn::BudgetRemaining
            }
            _ => {
                a.arity(1, 1)?;
                SloFn::BudgetSpent
            }
        };
        let slo_name = a.string(0, "an SLO's name (a string)")?;
        let Some(slo) = slos.get(slo_name) else {
            return Err(format!(
                "{name}({slo_name:?}): no SLO named {slo_name:?} is loaded{}",
                did_you_mean(slo_name, slos.keys().map(String::as_str))
            ));
        };
        let window = match what {
            SloFn::BurnRate => a.window(1)?,
            _ => slo.period,
        };
        if window > slo.period {
            return Err(format!(
                "argument 2 of {name}: the window {window} is longer than the SLO's period {}",
                slo.period
            ));
        }
        Ok(CallOf::Slo { what, num: slo.num.clone(), den: slo.den.clone(), window, params: SloParams::of(slo) })
    }

    /// A key that is equal for calls that compute the same thing (they share one slot).
    pub fn key(&self) -> String {
        format!("{:?}", self.clone().map(|sel| sel.text))
    }

    /// The selectors' texts, as written (what a rule reads, for verification).
    pub fn selector_texts(&self) -> Vec<String> {
        let mut texts = Vec::new();
        self.clone().map(|sel| texts.push(sel.text));
        texts
    }

    /// How far back this call reads: the store must retain at least this much.
    pub fn reach(&self) -> Span {
        let windowed = |w: Span, o: Offset| Span(o.reach().0 + 2 * w.0);
        match self {
            CallOf::Rate { window, offset, .. }
            | CallOf::Increase { window, offset, .. }
            | CallOf::Ratio { window, offset, .. }
            | CallOf::Over { window, offset, .. }
            | CallOf::Quantile { window, offset, .. } => windowed(*window, *offset),
            CallOf::Last { offset, .. } => Span(offset.reach().0 + LOOKBACK.0),
            CallOf::Up { .. } | CallOf::DownFor { .. } => LOOKBACK,
            // What the store's retention must span; the series themselves keep raw samples
            // for the shortest window only and checkpoints beyond (see `register`).
            CallOf::Slo { params, .. } => params.period,
            CallOf::Judge { window, .. } | CallOf::RatioJudge { window, .. } => windowed(*window, Offset::NONE),
        }
    }

    /// What the call's value measures, when the function says (`ratio`: a share, `down_for`: a
    /// time, `rate`: a count per second) or the series it reads do (`quantile` of
    /// `…_seconds_bucket`, `max_over` of a `…_seconds` gauge); `None` when neither does.
    pub fn unit(&self) -> Option<Unit> {
        let named = |sel: &Selector| sel.name.as_deref().map(|n| Unit::of(n.strip_suffix("_bucket").unwrap_or(n)));
        match self {
            CallOf::Ratio { .. } => Some(Unit::Share),
            CallOf::Slo { what: SloFn::BurnRate, .. } => Some(Unit::Plain),
            CallOf::Slo { .. } => Some(Unit::Share),
            CallOf::DownFor { .. } => Some(Unit::Seconds),
            CallOf::Rate { .. } | CallOf::Increase { .. } | CallOf::Up { .. } => Some(Unit::Plain),
            CallOf::Over { how: Over::Count, .. } => Some(Unit::Plain),
            CallOf::Over { sel, .. } | CallOf::Last { sel, .. } | CallOf::Quantile { sel, .. } => named(sel),
            // True or false, not a number.
            CallOf::Judge { .. } | CallOf::RatioJudge { .. } => None,
        }
    }

    /// Registers the selectors with the store.
    pub fn register(self, store: &mut Store) -> Call {
        if let CallOf::Slo { params, .. } = &self {
            let res = params.resolution;
            return self.map(|sel| store.add_selector_checkpointed(sel, res.raw, &res.levels));
        }
        let reach = self.reach();
        self.map(|sel| store.add_selector_reaching(sel, reach))
    }
}

impl<S> CallOf<S> {
    /// The call's window, for the functions that read one.
    pub fn window(&self) -> Option<Span> {
        match self {
            CallOf::Rate { window, .. }
            | CallOf::Increase { window, .. }
            | CallOf::Ratio { window, .. }
            | CallOf::Over { window, .. }
            | CallOf::Quantile { window, .. }
            | CallOf::Slo { window, .. }
            | CallOf::Judge { window, .. }
            | CallOf::RatioJudge { window, .. } => Some(*window),
            CallOf::Last { .. } | CallOf::Up { .. } | CallOf::DownFor { .. } => None,
        }
    }

    /// Whether this is a baseline judge's call (a truth, not a number).
    pub fn is_judge(&self) -> bool {
        matches!(self, CallOf::Judge { .. } | CallOf::RatioJudge { .. })
    }

    /// The call's offset (`up`/`down_for` have none).
    pub fn offset(&self) -> Offset {
        match self {
            CallOf::Rate { offset, .. }
            | CallOf::Increase { offset, .. }
            | CallOf::Ratio { offset, .. }
            | CallOf::Over { offset, .. }
            | CallOf::Last { offset, .. }
            | CallOf::Quantile { offset, .. } => *offset,
            CallOf::Up { .. }
            | CallOf::DownFor { .. }
            | CallOf::Slo { .. }
            | CallOf::Judge { .. }
            | CallOf::RatioJudge { .. } => Offset::NONE,
        }
    }
}

impl CallOf<SelectorId> {
    /// Where the call reads at `now`. Without an offset it reads only samples at or after
    /// `since` (the current version's evidence); an offset of a span reads the past as it was;
    /// the `"deploy"` offset reads the window ending at `deploy` (none known: nowhere).
    fn at(&self, now: Timestamp, since: Option<Timestamp>, deploy: Option<Timestamp>) -> Option<At> {
        if let CallOf::Slo { what: SloFn::BudgetRemaining, .. } = self {
            return Some(At::new(now));
        }
        Some(match self.offset() {
            Offset::Ago(span) if span.is_zero() => At::new(now).since(since),
            Offset::Ago(span) => At::ago(now, span),
            Offset::Deploy => At::new(deploy?),
        })
    }

    /// How much of the call's window holds data at `now` (`since` and `deploy` as for
    /// `eval`): `(window, covered)`. `None` for calls without a window (`last`,
    /// `up`, `down_for`) and for a `"deploy"` offset with no deploy known.
    pub fn coverage(
        &self,
        store: &Store,
        now: Timestamp,
        since: Option<Timestamp>,
        deploy: Option<Timestamp>,
    ) -> Option<(Span, Span)> {
        let window = self.window()?;
        let at = self.at(now, since, deploy)?;
        // At most two selectors (a ratio's), without allocating.
        let (mut sels, mut n) = ([0; 2], 0);
        self.clone().map(|sel| {
            if let Some(slot) = sels.get_mut(n) {
                *slot = sel;
                n += 1;
            }
        });
        Some((window, store.coverage(&sels[..n], at, window)))
    }

    /// The call's value at `now`; `None` is no data. `since` and `deploy` as for `at`.
    pub fn eval(
        &self,
        store: &Store,
        now: Timestamp,
        since: Option<Timestamp>,
        deploy: Option<Timestamp>,
    ) -> Option<f64> {
        let at = self.at(now, since, deploy)?;
        match *self {
            CallOf::Rate { sel, window, .. } => store.rate(sel, at, window),
            CallOf::Increase { sel, window, .. } => store.increase(sel, at, window),
            CallOf::Ratio { num, den, window, min_den, .. } => store.ratio(num, den, at, window, min_den),
            CallOf::Over { how, sel, window, .. } => store.over(how, sel, at, window),
            CallOf::Last { sel, .. } => store.last(sel, at),
            CallOf::Quantile { q, sel, window, .. } => store.quantile(q, sel, at, window),
            CallOf::Up { sel } => store.up(sel, at),
            CallOf::DownFor { sel } => store.down_for(sel, at),
            CallOf::Slo { what, num, den, window, params } => {
                let floor = if what == SloFn::BurnRate { params.min_events } else { 0.0 };
                let bad = params.bad_ratio(store.ratio(num, den, at, window, floor)?, 1.0);
                let burn = bad / params.budget;
                match what {
                    SloFn::BurnRate => Some(burn),
                    SloFn::BudgetRemaining => Some(1.0 - burn),
                    SloFn::BudgetSpent => {
                        let covered = store.coverage(&[den], at, window);
                        Some(burn * covered.0 as f64 / window.0 as f64)
                    }
                }
            }
            // Judged by `judge`, not valued.
            CallOf::Judge { .. } | CallOf::RatioJudge { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Arg {
        Arg::Str(x.into())
    }

    #[test]
    fn arity_and_types_are_checked() {
        let e = CallSpec::parse("rate", &[s("m")]).unwrap_err();
        assert_eq!(e, "rate(selector, window[, offset]) takes 2 to 3 arguments, got 1");
        let e = CallSpec::parse("rate", &[Arg::Num(1.0), s("1m")]).unwrap_err();
        assert!(e.starts_with("argument 1 of rate(selector, window[, offset]) must be a selector string"), "{e}");
        let e = CallSpec::parse("rate", &[s("m"), s("5 mins ago")]).unwrap_err();
        assert!(e.contains("bad duration"), "{e}");
        let e = CallSpec::parse("rate", &[s("m"), s("0s")]).unwrap_err();
        assert!(e.contains("longer than 0s"), "{e}");
        let e = CallSpec::parse("quantile", &[Arg::Num(1.5), s("h_bucket"), s("5m")]).unwrap_err();
        assert!(e.contains("between 0 and 1"), "{e}");
        let e = CallSpec::parse("rate", &[s(r#"m{a=~"("}"#), s("1m")]).unwrap_err();
        assert!(e.contains("bad regex"), "{e}");
        let e = CallSpec::parse("up", &[s("node_load1{x=\"1\"}")]).unwrap_err();
        assert!(e.contains("reads `up` series only"), "{e}");
    }

    #[test]
    fn ratio_tells_a_floor_from_an_offset() {
        let floor = CallSpec::parse("ratio", &[s("a"), s("b"), s("1m"), Arg::Num(100.0)]).unwrap();
        assert!(matches!(floor, CallOf::Ratio { min_den, offset, .. } if min_den == 100.0 && offset.is_zero()));
        let offset = CallSpec::parse("ratio", &[s("a"), s("b"), s("1m"), s("1h")]).unwrap();
        assert!(
            matches!(offset, CallOf::Ratio { min_den, offset, .. } if min_den == 0.0 && offset == Offset::Ago(Span(3_600_000)))
        );
        let both = CallSpec::parse("ratio", &[s("a"), s("b"), s("1m"), Arg::Num(5.0), s("1h")]).unwrap();
        assert!(matches!(both, CallOf::Ratio { min_den, .. } if min_den == 5.0));
    }

    #[test]
    fn up_takes_a_target_name_or_a_selector() {
        let CallOf::Up { sel } = CallSpec::parse("up", &[s("api")]).unwrap() else { panic!() };
        assert_eq!(sel.text, r#"up{target="api"}"#);
        let CallOf::DownFor { sel } = CallSpec::parse("down_for", &[s(r#"{critical="true"}"#)]).unwrap() else {
            panic!()
        };
        assert_eq!(sel.name.as_deref(), Some("up"));
    }
}
