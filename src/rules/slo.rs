//! SLOs as rules (docs/ARCHITECTURE.md, "SLOs"): each `[[slo]]` of a profile is checked — objective,
//! period, selectors, exactly one of `errors`/`good`, a name no rule uses — at its file:line:col,
//! and generates two rules, `<name>-page` (critical) and `<name>-ticket` (warning), with the SRE
//! workbook's multi-window, multi-burn-rate conditions written in the rule language
//! (`burn_rate("name", "1h") > 14.4 && burn_rate("name", "5m") > 14.4 || …`). Those rules are
//! then compiled like any other, so `[[decide]]` reads them with `firing("availability-page")`.
//!
//! What the evaluator keeps per SLO ([`SloWatch`]) is the slots of its burn rates and budgets,
//! read after each tick for decisions ("this version burned 1.0% of the 30-day budget in
//! 12 min, burn rate 36×"), the status page and `/metrics`.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use toml::Spanned;

use crate::config::LoadedProfile;
use crate::config::raw::{RawRule, RawSlo};
use crate::diag::{Checker, Diagnostics};
use crate::expr::slo::{AlertWindow, Events, SloSpec, alert_windows, longest_window, parse_objective, window_spans};
use crate::expr::{Compiler, Expected, Names, Scope, Slots, Value};
use crate::selector::Selector;
use crate::time::{Span, parse_duration};

/// The period when none is given.
pub const DEFAULT_PERIOD: Span = Span(30 * 24 * 3_600_000);

/// One checked `[[slo]]`.
#[derive(Debug, Clone)]
pub struct Slo {
    pub spec: SloSpec,
    pub profile: usize,
    pub scope: Scope,
    /// Where its name is written.
    pub span: Range<usize>,
}

/// The SLOs of every profile, and the rules they generate (per profile, in SLO order).
#[derive(Debug, Default)]
pub struct Expanded {
    pub slos: Vec<Slo>,
    pub rules: Vec<Vec<Spanned<RawRule>>>,
    /// The rules the SLOs with errors would have generated (their errors are reported once).
    pub broken_rules: HashSet<String>,
}

impl Expanded {
    /// The SLOs by name, for the compiler.
    pub fn table(&self) -> HashMap<String, SloSpec> {
        self.slos.iter().map(|s| (s.spec.name.clone(), s.spec.clone())).collect()
    }
}

/// Checks every profile's `[[slo]]` and writes their rules; every problem is reported.
pub fn expand(profiles: &[LoadedProfile], errors: &mut Diagnostics) -> Expanded {
    let mut out = Expanded::default();
    let rule_names: HashSet<&str> =
        profiles.iter().flat_map(|p| p.raw.rule.iter().map(|r| r.get_ref().name.get_ref().as_str())).collect();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (pi, p) in profiles.iter().enumerate() {
        let mut ctx = Checker { file: &p.file, errors };
        let mut generated = Vec::new();
        for raw in &p.raw.slo {
            let raw = raw.get_ref();
            let Some(slo) = check(&mut ctx, raw, pi) else {
                let name = raw.name.get_ref();
                out.broken_rules.extend([rule_name(name, "page"), rule_name(name, "ticket")]);
                continue;
            };
            let name = &slo.spec.name;
            let item = format!("slo {name:?}");
            let here = {
                let (line, col) = p.file.position(slo.span.start);
                format!("{}:{line}:{col}", p.file.path.display())
            };
            if let Some(first) = seen.get(name) {
                ctx.err(&slo.span, Some(&item), format!("duplicate SLO name (first defined at {first})"));
                continue;
            }
            seen.insert(name.clone(), here);
            let mut clash = false;
            for taken in [name.clone(), rule_name(name, "page"), rule_name(name, "ticket")] {
                if rule_names.contains(taken.as_str()) {
                    ctx.err(
                        &slo.span,
                        Some(&item),
                        format!(
                            "the name collides with rule {taken:?} (an SLO generates {name}-page and {name}-ticket)"
                        ),
                    );
                    clash = true;
                }
            }
            if clash {
                continue;
            }
            generated.extend(rules_for(&slo));
            out.slos.push(slo);
        }
        out.rules.push(generated);
    }
    out
}

fn rule_name(slo: &str, suffix: &str) -> String {
    format!("{slo}-{suffix}")
}

/// One `[[slo]]` checked, or `None` with its errors recorded.
fn check(ctx: &mut Checker, raw: &RawSlo, profile: usize) -> Option<Slo> {
    let name = raw.name.get_ref().clone();
    let item = format!("slo {name:?}");
    let item = Some(item.as_str());
    let mut ok = true;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        ctx.err(&raw.name.span(), None, format!("an SLO needs a name of letters, digits and -_.: (got {name:?})"));
        ok = false;
    }
    let objective = parse_objective(raw.objective.get_ref()).map_err(|e| ctx.err(&raw.objective.span(), item, e)).ok();
    let period = match &raw.period {
        None => Some(DEFAULT_PERIOD),
        Some(p) => match parse_duration(p.get_ref()) {
            Ok(span) if span < longest_window() => {
                ctx.err(
                    &p.span(),
                    item,
                    format!(
                        "period {:?} is shorter than the longest alert window ({}): use a period such as \"28d\" or \"30d\"",
                        p.get_ref(),
                        longest_window()
                    ),
                );
                None
            }
            Ok(span) => Some(span),
            Err(e) => {
                ctx.err(&p.span(), item, format!("period: {e} (a period such as \"28d\" or \"30d\")"));
                None
            }
        },
    };
    let selector = |ctx: &mut Checker, field: &str, text: &Spanned<String>| -> Option<Selector> {
        Selector::parse(text.get_ref())
            .map_err(|e| ctx.err(&text.span(), item, format!("{field}: {e} in {:?}", text.get_ref())))
            .ok()
    };
    let num = match (&raw.errors, &raw.good) {
        (Some(e), None) => selector(ctx, "errors", e).map(|s| (Events::Bad, s)),
        (None, Some(g)) => selector(ctx, "good", g).map(|s| (Events::Good, s)),
        (Some(_), Some(g)) => {
            ctx.err(&g.span(), item, "give either errors (bad events) or good (good events), not both");
            None
        }
        (None, None) => {
            ctx.err(&raw.name.span(), item, "give errors = '…' (bad events) or good = '…' (good events)");
            None
        }
    };
    let den = selector(ctx, "total", &raw.total);
    let min_events = match &raw.min_events {
        None => Some(0.0),
        Some(m) if m.get_ref().is_finite() && *m.get_ref() >= 0.0 => Some(*m.get_ref()),
        Some(m) => {
            ctx.err(&m.span(), item, format!("min_events must be a number of events, 0 or more, not {}", m.get_ref()));
            None
        }
    };
    let scope = match &raw.scope {
        None => Some(Scope::Deployment),
        Some(v) => Scope::parse(v.get_ref()).or_else(|| {
            ctx.err(&v.span(), item, format!("scope must be \"deployment\" or \"environment\", not {:?}", v.get_ref()));
            None
        }),
    };
    let (Some(objective), Some(period), Some((events, num)), Some(den), Some(min_events), Some(scope), true) =
        (objective, period, num, den, min_events, scope, ok)
    else {
        return None;
    };
    Some(Slo {
        spec: SloSpec { name, objective, period, events, num, den, min_events },
        profile,
        scope,
        span: raw.name.span(),
    })
}

/// `14.4`, `6`, `0.9333333333333333`: a factor as the rule's text writes it.
fn factor_text(f: f64) -> String {
    format!("{}", (f * 1e9).round() / 1e9)
}

/// The condition of one alert: either of its rows, both windows of a row over its factor.
pub fn condition(name: &str, rows: &[AlertWindow]) -> String {
    rows.iter()
        .map(|w| {
            let f = factor_text(w.factor);
            format!("(burn_rate(\"{name}\", \"{}\") > {f} && burn_rate(\"{name}\", \"{}\") > {f})", w.long, w.short)
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The two rules an SLO generates, placed at its name.
fn rules_for(slo: &Slo) -> Vec<Spanned<RawRule>> {
    let name = &slo.spec.name;
    let windows = alert_windows(slo.spec.period);
    let at = |s: String| Spanned::new(slo.span.clone(), s);
    [crate::expr::slo::Alert::Page, crate::expr::slo::Alert::Ticket]
        .into_iter()
        .map(|alert| {
            let rows: Vec<AlertWindow> = windows.iter().copied().filter(|w| w.alert == alert).collect();
            let first = rows[0];
            let rule = RawRule {
                name: at(rule_name(name, alert.suffix())),
                when: at(condition(name, &rows)),
                for_: None,
                keep_firing_for: None,
                // No traffic is no burn, as in Prometheus (0/0 is NaN, and NaN > x is false).
                on_no_data: Some(at("ok".into())),
                severity: Some(at(alert.severity().into())),
                summary: Some(at(format!(
                    "SLO {name}: error budget burning {{{{value}}}}× over {} ({} at {}× over {} and {})",
                    first.long,
                    alert.suffix(),
                    factor_text(first.factor),
                    first.long,
                    first.short
                ))),
                value: Some(at(format!("burn_rate(\"{name}\", \"{}\")", first.long))),
                labels: [("slo".to_string(), name.clone())].into_iter().collect(),
                scope: Some(at(match slo.scope {
                    Scope::Deployment => "deployment".into(),
                    Scope::Environment => "environment".into(),
                })),
                min_coverage: None,
            };
            Spanned::new(slo.span.clone(), rule)
        })
        .collect()
}

/// What the evaluator reads of one SLO after each tick: slots of its compiled calls.
#[derive(Debug, Clone)]
pub struct SloWatch {
    pub name: String,
    pub profile: usize,
    pub objective: f64,
    pub period: Span,
    pub scope: Scope,
    pub windows: [AlertWindow; 4],
    remaining: usize,
    /// The call behind `remaining` (its window's coverage says how much of the period it saw).
    pub(super) remaining_call: usize,
    spent: usize,
    /// The burn rate over the period since the deploy (deployment scope), for "burn rate 36×".
    burn_since: usize,
    /// Each window of the table with its burn rate's slot.
    burn: Vec<(Span, usize)>,
}

/// Compiles the calls each SLO's readings need (`compiler.slos` already holds the table).
pub fn watches(slos: &[Slo], compiler: &mut Compiler) -> Vec<SloWatch> {
    let (none, no_rules) = (HashMap::new(), HashMap::new());
    let names = Names { signals: &none, rules: &no_rules, data: true, states: false, what: "an SLO reading" };
    let mut out = Vec::new();
    for slo in slos {
        let name = &slo.spec.name;
        compiler.scope = slo.scope;
        let mut call = |text: String| -> Option<(usize, usize)> {
            let c = compiler.compile(&text, &names, Expected::Number).ok()?;
            let call = *c.calls_read.first()?;
            Some((call, compiler.call_slot(call)?))
        };
        let burn: Option<Vec<(Span, usize)>> = window_spans()
            .into_iter()
            .map(|w| call(format!("burn_rate(\"{name}\", \"{w}\")")).map(|(_, s)| (w, s)))
            .collect();
        let (Some((remaining_call, remaining)), Some(spent), Some(burn_since), Some(burn)) = (
            call(format!("budget_remaining(\"{name}\")")),
            call(format!("budget_spent(\"{name}\")")).map(|(_, s)| s),
            call(format!("burn_rate(\"{name}\", \"{}\")", slo.spec.period)).map(|(_, s)| s),
            burn,
        ) else {
            continue;
        };
        out.push(SloWatch {
            name: name.clone(),
            profile: slo.profile,
            objective: slo.spec.objective,
            period: slo.spec.period,
            scope: slo.scope,
            windows: alert_windows(slo.spec.period),
            remaining,
            remaining_call,
            spent,
            burn_since,
            burn,
        });
    }
    out
}

/// One SLO's values after a tick (no data as `None`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SloReading {
    pub name: String,
    pub objective: f64,
    #[serde(serialize_with = "span_text")]
    pub period: Span,
    pub budget_remaining: Option<f64>,
    /// How much of the period `budget_remaining` is computed on, when less than the period
    /// (a young service, or data lost): its error ratio stands for the period's.
    #[serde(serialize_with = "opt_span_text", skip_serializing_if = "Option::is_none")]
    pub seen: Option<Span>,
    /// The share of the period's budget the current version spent since its deploy.
    pub budget_spent: Option<f64>,
    /// The burn rate since the deploy (over the data there is, up to the period).
    pub burn_rate_since_deploy: Option<f64>,
    pub burn_rates: Vec<BurnReading>,
}

/// A window's burn rate, with the factor of the alert row it is part of (the larger if two).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BurnReading {
    #[serde(serialize_with = "span_text")]
    pub window: Span,
    pub burn_rate: Option<f64>,
    pub factor: f64,
    pub alert: &'static str,
    /// The other row the window is part of, with its smaller factor (6h: the page's long
    /// window at 6×, and the 3-day ticket's short one at 1×).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub also: Option<AlsoRow>,
}

/// A second alert row of one window: its factor and alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlsoRow {
    pub factor: f64,
    pub alert: &'static str,
}

fn opt_span_text<S: serde::Serializer>(s: &Option<Span>, ser: S) -> Result<S::Ok, S::Error> {
    match s {
        Some(s) => ser.serialize_str(&s.to_string()),
        None => ser.serialize_none(),
    }
}

fn span_text<S: serde::Serializer>(s: &Span, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(&s.to_string())
}

fn number(slots: &Slots, slot: usize) -> Option<f64> {
    match slots.get(slot) {
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

impl SloWatch {
    /// Its values in `slots` (after a tick); `seen`: how much of the period its data covers,
    /// when less than the period.
    pub fn read(&self, slots: &Slots, seen: Option<Span>) -> SloReading {
        SloReading {
            seen,
            name: self.name.clone(),
            objective: self.objective,
            period: self.period,
            budget_remaining: number(slots, self.remaining),
            budget_spent: number(slots, self.spent),
            burn_rate_since_deploy: number(slots, self.burn_since),
            burn_rates: self
                .burn
                .iter()
                .map(|&(window, slot)| {
                    let rows = || self.windows.iter().filter(|w| w.long == window || w.short == window);
                    let row = rows().max_by(|a, b| a.factor.total_cmp(&b.factor));
                    let low = rows().min_by(|a, b| a.factor.total_cmp(&b.factor));
                    let also = match (row, low) {
                        (Some(r), Some(l)) if l.factor < r.factor => {
                            Some(AlsoRow { factor: l.factor, alert: l.alert.suffix() })
                        }
                        _ => None,
                    };
                    BurnReading {
                        window,
                        burn_rate: number(slots, slot),
                        factor: row.map_or(f64::NAN, |w| w.factor),
                        alert: row.map_or("", |w| w.alert.suffix()),
                        also,
                    }
                })
                .collect(),
        }
    }

    /// The rules it generated.
    pub fn rules(&self) -> [String; 2] {
        [rule_name(&self.name, "page"), rule_name(&self.name, "ticket")]
    }
}

/// Who burned the budget in a decision's note; [`Decision::explained_for`](super::Decision::explained_for)
/// names the version instead where it is known.
pub const SUBJECT: &str = "this version";

impl SloReading {
    /// "availability: this version burned 1.0% of the 30-day budget in 12 min, burn rate 36×;
    /// 97.9% of the budget remains" — what a decision says about an SLO whose rules fire.
    pub fn note(&self) -> String {
        let pct = |v: f64| format!("{}%", crate::template::Unit::Plain.show((v * 10_000.0).round() / 100.0));
        let mut text = format!("{}:", self.name);
        match (self.budget_spent, self.burn_rate_since_deploy) {
            (Some(spent), Some(burn)) if burn > 0.0 => {
                let elapsed = Span((spent / burn * self.period.0 as f64).round() as i64);
                text.push_str(&format!(
                    " {SUBJECT} burned {} of the {} budget in {}, burn rate {}×;",
                    pct(spent),
                    period_text(self.period),
                    crate::time::human(elapsed),
                    crate::template::Unit::Plain.show((burn * 10.0).round() / 10.0)
                ));
            }
            _ => text.push_str(" no burn since the deploy;"),
        }
        match self.budget_remaining {
            Some(r) => {
                text.push_str(&format!(" {} of the budget remains", pct(r)));
                if let Some(seen) = self.seen {
                    text.push_str(&format!(
                        " (on {} of data, not the {} period)",
                        crate::time::human(seen),
                        period_text(self.period)
                    ));
                }
            }
            None => text.push_str(" budget remaining unknown (no traffic)"),
        }
        text
    }
}

/// `30-day`, or the span as written when it is not whole days.
fn period_text(p: Span) -> String {
    const DAY: i64 = 86_400_000;
    if p.0 % DAY == 0 { format!("{}-day", p.0 / DAY) } else { p.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(text: &str) -> Result<crate::rules::Evaluator, Diagnostics> {
        let file = crate::diag::SourceFile { path: Path::new("p.toml").to_path_buf(), text: text.to_string() };
        crate::rules::load::build(&[LoadedProfile::from_source(file)?])
    }

    const SLO: &str = "[[slo]]\nname = \"availability\"\nobjective = \"99.9%\"\n\
        errors = 'req{code=~\"5..\"}'\ntotal = 'req'\n";

    #[test]
    fn the_page_rule_is_the_workbook_table() {
        let rows: Vec<AlertWindow> =
            alert_windows(DEFAULT_PERIOD).into_iter().filter(|w| w.alert == crate::expr::slo::Alert::Page).collect();
        assert_eq!(
            condition("a", &rows),
            "(burn_rate(\"a\", \"1h\") > 14.4 && burn_rate(\"a\", \"5m\") > 14.4) || \
             (burn_rate(\"a\", \"6h\") > 6 && burn_rate(\"a\", \"30m\") > 6)"
        );
        let ev = load(SLO).unwrap();
        let names: Vec<&str> = ev.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["availability-page", "availability-ticket"]);
        assert_eq!(ev.rules[0].severity, "critical");
        assert_eq!(ev.rules[1].severity, "warning");
    }

    #[test]
    fn every_mistake_is_placed() {
        let e = load(
            "[[rule]]\nname = \"lat-page\"\nwhen = 'true'\n\
             [[slo]]\nname = \"avail\"\nobjective = \"100%\"\nperiod = \"1d\"\nerrors = 'a{'\ngood = 'b'\ntotal = 'c'\n\
             [[slo]]\nname = \"lat\"\nobjective = 0.99\nperiod = \"a month\"\ntotal = 'c'\nmin_events = -1\n\
             [[rule]]\nname = \"r\"\nwhen = 'burn_rate(\"nope\", \"1h\") > 1'\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            "p.toml:6:13: slo \"avail\": objective must lie strictly between 0 and 1",
            "p.toml:7:10: slo \"avail\": period \"1d\" is shorter than the longest alert window",
            "p.toml:9:8: slo \"avail\": give either errors (bad events) or good (good events), not both",
            "p.toml:12:8: slo \"lat\": give errors = '…' (bad events) or good = '…' (good events)",
            "p.toml:14:10: slo \"lat\": period: bad duration",
            "p.toml:16:14: slo \"lat\": min_events must be a number of events",
            "p.toml:19:8: rule \"r\": burn_rate(\"nope\"): no SLO named \"nope\" is loaded",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        let e = load(&format!("{SLO}[[rule]]\nname = \"availability-ticket\"\nwhen = 'true'\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("p.toml:2:8: slo \"availability\": the name collides with rule \"availability-ticket\""),
            "{e}"
        );
        let e = load(&format!("{SLO}[[slo]]\nname = \"availability\"\nobjective = 0.9\ngood = 'x'\ntotal = 'y'\n"))
            .unwrap_err();
        assert!(e.to_string().contains("p.toml:7:8: slo \"availability\": duplicate SLO name"), "{e}");
    }

    #[test]
    fn a_bad_selector_is_placed_at_its_field() {
        let e = load("[[slo]]\nname = \"a\"\nobjective = 0.999\nerrors = 'x{'\ntotal = 'y'\n").unwrap_err();
        assert!(e.to_string().starts_with("p.toml:4:10: slo \"a\": errors:"), "{e}");
    }
}
