//! A window's coverage: how much of its span holds data for the current evidence — "1h window:
//! 10 min of data" right after a deploy or a restart. The window store measures it
//! ([`crate::window::Store::coverage`]); this is how it is told in explanations and on
//! `/status`, and how a rule's `min_coverage` ("90%" or 0.9) is read.

use std::fmt;

use crate::time::Span;

/// One window a rule reads, and how much of it holds data.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WindowCoverage {
    pub rule: String,
    #[serde(serialize_with = "span_text")]
    pub window: Span,
    /// The window's offset as written (`"1h"`, `"deploy"`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    /// How much of it holds data (`"10m"`).
    #[serde(serialize_with = "span_text")]
    pub covered: Span,
    /// `covered / window`, from 0 to 1.
    pub share: f64,
    /// The rule's `min_coverage`, when it sets one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<f64>,
}

fn span_text<S: serde::Serializer>(span: &Span, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&span.to_string())
}

impl WindowCoverage {
    pub fn new(rule: &str, window: Span, offset: Option<String>, covered: Span, required: Option<f64>) -> Self {
        WindowCoverage { rule: rule.to_string(), window, offset, covered, share: share(window, covered), required }
    }

    /// Whether the rule requires more of this window than it holds (it is unknown then).
    pub fn too_short(&self) -> bool {
        self.required.is_some_and(|min| self.share < min)
    }
}

/// `covered / window`, 0 to 1 (a zero window is fully covered).
pub fn share(window: Span, covered: Span) -> f64 {
    if window.0 <= 0 { 1.0 } else { (covered.0.max(0) as f64 / window.0 as f64).min(1.0) }
}

impl fmt::Display for WindowCoverage {
    /// `1h window: 10 min of data`, `5m window 1h ago: 30 s of data`, and when the rule needs
    /// more: `…, under min_coverage 90%: unknown`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} window", self.window)?;
        match self.offset.as_deref() {
            Some("deploy") => f.write_str(" before the deploy")?,
            Some(offset) => write!(f, " {offset} ago")?,
            None => {}
        }
        write!(f, ": {}", amount(self.covered))?;
        if let Some(min) = self.required.filter(|_| self.too_short()) {
            write!(f, ", under min_coverage {}: unknown", percent(min))?;
        }
        Ok(())
    }
}

/// `no data`, `12 s of data`, `10 min of data`, `1 h 5 min of data`.
fn amount(covered: Span) -> String {
    let ms = covered.0.max(0);
    let secs = ms / 1000;
    let text = match secs {
        _ if ms == 0 => return "no data".into(),
        s if s < 10 && ms % 1000 != 0 => format!("{:.1} s", ms as f64 / 1000.0),
        s if s < 60 => format!("{s} s"),
        s if s < 3600 && s % 60 == 0 => format!("{} min", s / 60),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s if (s % 3600) / 60 == 0 => format!("{} h", s / 3600),
        s => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    };
    format!("{text} of data")
}

/// `90%`, `99.5%`.
pub fn percent(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 { format!("{p:.0}%") } else { format!("{p}%") }
}

/// Reads `min_coverage`: `"90%"` or a number such as `0.9`, above 0 and at most 1.
pub fn parse_min_coverage(value: &toml::Value) -> Result<f64, String> {
    let share = match value {
        toml::Value::String(text) => match text.trim().strip_suffix('%') {
            Some(number) => number.trim().parse::<f64>().map(|p| p / 100.0).map_err(|_| bad(value))?,
            None => return Err(bad(value)),
        },
        toml::Value::Float(x) => *x,
        toml::Value::Integer(n) => *n as f64,
        _ => return Err(bad(value)),
    };
    if !(share > 0.0 && share <= 1.0) {
        return Err(format!("min_coverage must be above 0% and at most 100%, not {value}"));
    }
    Ok(share)
}

fn bad(value: &toml::Value) -> String {
    format!("min_coverage must be a share such as \"90%\" or 0.9, not {value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    #[test]
    fn coverage_reads_like_a_person_says_it() {
        let c = WindowCoverage::new("burn", Span(3600 * S), None, Span(600 * S), None);
        assert_eq!(c.to_string(), "1h window: 10 min of data");
        assert!((c.share - 1.0 / 6.0).abs() < 1e-12);
        assert!(!c.too_short(), "no requirement");
        let c = WindowCoverage::new("burn", Span(3600 * S), None, Span(600 * S), Some(0.9));
        assert!(c.too_short());
        assert_eq!(c.to_string(), "1h window: 10 min of data, under min_coverage 90%: unknown");
        let c = WindowCoverage::new("p99", Span(300 * S), Some("1h".into()), Span(30_500), Some(0.05));
        assert_eq!(c.to_string(), "5m window 1h ago: 30 s of data", "enough: no note");
        let c = WindowCoverage::new("p99", Span(300 * S), Some("deploy".into()), Span(0), None);
        assert_eq!(c.to_string(), "5m window before the deploy: no data");
        assert_eq!(amount(Span(3_900 * S)), "1 h 5 min of data");
        assert_eq!(amount(Span(7_200 * S)), "2 h of data");
        assert_eq!(amount(Span(95 * S)), "1 min 35 s of data");
        assert_eq!(amount(Span(390)), "0.4 s of data", "a fraction of a second is data too");
        assert_eq!(amount(Span(12_400)), "12 s of data");
        assert_eq!(share(Span(60 * S), Span(90 * S)), 1.0, "never above 1");
    }

    #[test]
    fn min_coverage_is_a_percentage_or_a_share() {
        let v = |text: &str| toml::from_str::<toml::Table>(&format!("x = {text}")).unwrap()["x"].clone();
        assert_eq!(parse_min_coverage(&v("\"90%\"")), Ok(0.9));
        assert_eq!(parse_min_coverage(&v("\" 99.5 %\"")), Ok(0.995));
        assert_eq!(parse_min_coverage(&v("0.9")), Ok(0.9));
        assert_eq!(parse_min_coverage(&v("1")), Ok(1.0));
        for bad in ["\"0.9\"", "\"ninety%\"", "true", "[1]"] {
            let e = parse_min_coverage(&v(bad)).unwrap_err();
            assert!(e.contains("a share such as \"90%\" or 0.9"), "{bad}: {e}");
        }
        for out in ["0", "\"0%\"", "1.5", "\"150%\"", "-0.5", "nan"] {
            let e = parse_min_coverage(&v(out)).unwrap_err();
            assert!(e.contains("above 0% and at most 100%"), "{out}: {e}");
        }
        assert_eq!(percent(0.9), "90%");
        assert_eq!(percent(0.995), "99.5%");
    }
}
