//! The arithmetic of an SLO (docs/ARCHITECTURE.md, "SLOs"): its error budget, the SRE workbook's
//! multi-window, multi-burn-rate table (Sloth's `google-30d`) with factors derived from the
//! budget shares and the period, and the resolution its counters are kept at — raw samples for
//! the shortest window, checkpoints at a coarser step beyond it. Pure: no store, no clock.

use crate::selector::Selector;
use crate::time::Span;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// The severity of the rule an alert window belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alert {
    /// `<name>-page`, severity critical.
    Page,
    /// `<name>-ticket`, severity warning.
    Ticket,
}

impl Alert {
    pub fn suffix(self) -> &'static str {
        match self {
            Alert::Page => "page",
            Alert::Ticket => "ticket",
        }
    }

    pub fn severity(self) -> &'static str {
        match self {
            Alert::Page => "critical",
            Alert::Ticket => "warning",
        }
    }
}

/// One row of the table: alert when the burn rate exceeds `factor` over both `long` and `short`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertWindow {
    pub alert: Alert,
    pub long: Span,
    pub short: Span,
    /// The share of the period's budget spent in `long` at exactly `factor`.
    pub share: f64,
    /// `share × period ÷ long`: 14.4 for 2% in 1h of 30 days.
    pub factor: f64,
}

/// The workbook's rows as `(alert, long, short, budget share)`: page on 2% of the budget in an
/// hour or 5% in six hours, ticket on 10% in a day or 10% in three days.
pub const TABLE: [(Alert, Span, Span, f64); 4] = [
    (Alert::Page, Span(HOUR), Span(5 * MINUTE), 0.02),
    (Alert::Page, Span(6 * HOUR), Span(30 * MINUTE), 0.05),
    (Alert::Ticket, Span(24 * HOUR), Span(2 * HOUR), 0.10),
    (Alert::Ticket, Span(72 * HOUR), Span(6 * HOUR), 0.10),
];

/// The table's rows for `period`, factors derived from it (28 days: 13.44, 5.6, 2.8, 0.93).
pub fn alert_windows(period: Span) -> [AlertWindow; 4] {
    TABLE.map(|(alert, long, short, share)| AlertWindow {
        alert,
        long,
        short,
        share,
        factor: share * period.0 as f64 / long.0 as f64,
    })
}

/// Every window of the table, shortest first, without repeats (5m, 30m, 1h, 2h, 6h, 1d, 3d).
pub fn window_spans() -> Vec<Span> {
    let mut spans: Vec<Span> = TABLE.iter().flat_map(|(_, l, s, _)| [*l, *s]).collect();
    spans.sort();
    spans.dedup();
    spans
}

/// The shortest window of the table: raw samples are kept for it.
pub fn shortest_window() -> Span {
    TABLE.iter().map(|(_, _, s, _)| *s).min().unwrap_or(Span(5 * MINUTE))
}

/// The longest alert window: fine checkpoints reach back this far.
pub fn longest_window() -> Span {
    TABLE.iter().map(|(_, l, _, _)| *l).max().unwrap_or(Span(72 * HOUR))
}

/// Checkpoints per period at the coarse step (30 days: one an hour).
pub const COARSE_POINTS: i64 = 720;
/// Checkpoints per shortest window at the fine step (5 minutes: one a minute).
pub const FINE_PER_SHORTEST: i64 = 5;

/// How an SLO's counters are kept: raw samples for `raw` (twice the shortest window, as every
/// window function keeps), then reset-corrected checkpoints every `step` for `keep`, level by
/// level, finest first. Memory per series is then about `raw ÷ poll interval` samples plus
/// `keep ÷ step` numbers per level, whatever the poll rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolution {
    pub raw: Span,
    pub levels: [(Span, Span); 2],
}

impl Resolution {
    pub fn for_period(period: Span) -> Resolution {
        let fine = Span((shortest_window().0 / FINE_PER_SHORTEST).max(1000));
        let coarse = Span((period.0 / COARSE_POINTS).max(fine.0));
        Resolution {
            raw: Span(2 * shortest_window().0),
            levels: [(fine, Span(longest_window().0 + 2 * fine.0)), (coarse, Span(period.0 + 2 * coarse.0))],
        }
    }
}

/// An objective as written: `"99.9%"` or `0.999`, strictly between 0 and 1.
pub fn parse_objective(value: &toml::Value) -> Result<f64, String> {
    let (v, shown) = match value {
        toml::Value::Float(f) => (*f, f.to_string()),
        toml::Value::Integer(i) => (*i as f64, i.to_string()),
        toml::Value::String(s) => match s.trim().strip_suffix('%') {
            // "99.9e-2" is read as the decimal 0.999 is: the same float as `objective = 0.999`.
            Some(p) => (
                p.trim().parse::<f64>().and_then(|_| format!("{}e-2", p.trim()).parse::<f64>()).unwrap_or(f64::NAN),
                format!("{s:?}"),
            ),
            None => (f64::NAN, format!("{s:?}")),
        },
        other => (f64::NAN, other.to_string()),
    };
    if v.is_nan() {
        return Err(format!("objective must be a share such as \"99.9%\" or 0.999, not {shown}"));
    }
    if !(v > 0.0 && v < 1.0) {
        return Err(format!("objective must lie strictly between 0 and 1 (0% and 100%), not {shown}"));
    }
    Ok(v)
}

/// Which counter an SLO names besides its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Events {
    /// `errors = '…'`: bad events.
    Bad,
    /// `good = '…'`: good events (bad = total − good).
    Good,
}

/// An SLO as the rule language reads it (`burn_rate("name", "1h")`).
#[derive(Debug, Clone)]
pub struct SloSpec {
    pub name: String,
    pub objective: f64,
    pub period: Span,
    pub events: Events,
    /// The bad (or good) events' selector.
    pub num: Selector,
    /// All events.
    pub den: Selector,
    /// A traffic floor: a burn-rate window with fewer events is no data.
    pub min_events: f64,
}

impl SloSpec {
    /// `1 − objective`: the share of events that may fail.
    pub fn budget(&self) -> f64 {
        1.0 - self.objective
    }
}

/// The parameters a window call of an SLO carries (copied into it, so evaluation needs no table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SloParams {
    pub budget: f64,
    pub events: Events,
    pub min_events: f64,
    pub period: Span,
    pub resolution: Resolution,
}

impl SloParams {
    pub fn of(slo: &SloSpec) -> SloParams {
        SloParams {
            budget: slo.budget(),
            events: slo.events,
            min_events: slo.min_events,
            period: slo.period,
            resolution: Resolution::for_period(slo.period),
        }
    }

    /// The bad-event ratio from the two increases (`num` bad or good as `events` says).
    pub fn bad_ratio(&self, num: f64, den: f64) -> f64 {
        match self.events {
            Events::Bad => num / den,
            Events::Good => 1.0 - num / den,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_budget_shares_and_the_period() {
        let f: Vec<f64> = alert_windows(Span(30 * 24 * HOUR)).iter().map(|w| w.factor).collect();
        let want = [14.4, 6.0, 3.0, 1.0];
        for (got, want) in f.iter().zip(want) {
            assert!((got - want).abs() < 1e-9, "{f:?}");
        }
        let f28: Vec<f64> = alert_windows(Span(28 * 24 * HOUR)).iter().map(|w| w.factor).collect();
        assert!((f28[0] - 13.44).abs() < 1e-9 && (f28[1] - 5.6).abs() < 1e-9, "{f28:?}");
        assert!((f28[3] - 0.1 * 28.0 / 3.0).abs() < 1e-9, "{f28:?}");
    }

    #[test]
    fn objectives_are_shares_strictly_inside_0_and_1() {
        assert_eq!(parse_objective(&toml::Value::String("99.9%".into())), Ok(0.999), "the same float as 0.999");
        assert_eq!(parse_objective(&toml::Value::Float(0.995)), Ok(0.995));
        for bad in [toml::Value::String("100%".into()), toml::Value::Float(1.0), toml::Value::Integer(0)] {
            assert!(parse_objective(&bad).unwrap_err().contains("strictly between"), "{bad}");
        }
        assert!(parse_objective(&toml::Value::String("three nines".into())).unwrap_err().contains("such as"));
    }

    #[test]
    fn the_resolution_is_a_minute_to_three_days_then_an_hour_to_thirty() {
        let r = Resolution::for_period(Span(30 * 24 * HOUR));
        assert_eq!(r.raw, Span(10 * MINUTE));
        assert_eq!(r.levels[0].0, Span(MINUTE));
        assert_eq!(r.levels[0].1, Span(72 * HOUR + 2 * MINUTE));
        assert_eq!(r.levels[1].0, Span(HOUR));
        assert_eq!(window_spans().len(), 7);
    }
}
