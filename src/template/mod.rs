//! Templates: `{{name}}` placeholders filled from [`Vars`], each value escaped for where it goes
//! (a message for people, Slack, a JSON body, a URL, a header, a single argv element: see
//! [`escape`], which also escapes for terminals, Markdown and TOML). Rendering never re-reads its
//! output, so a value can never become a placeholder, an extra argument or shell code. Numbers
//! are written as people read them ([`number`]).

use std::collections::BTreeMap;

pub mod escape;
pub mod messages;

use escape::escape_into;
pub use escape::{Escape, header, html, markdown, terminal, toml_string};

/// The values a template may name.
pub type Vars = BTreeMap<String, String>;

/// A placeholder the template names but the values lack, or an unclosed one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown placeholder {{{{{0}}}}}")]
    Unknown(String),
    #[error("unclosed placeholder after {0:?}")]
    Unclosed(String),
}

/// The placeholder names a template uses, in order (for load-time checks).
pub fn placeholders(text: &str) -> Result<Vec<&str>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed(rest[start..].chars().take(20).collect()));
        };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// A template's own text: every `{{name}}` left out (for checking what the config wrote, apart
/// from the values filled in later).
pub fn own_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start + 2..].find("}}") else { break };
        out.push_str(&rest[..start]);
        rest = &rest[start + 2 + end + 2..];
    }
    out.push_str(rest);
    out
}

/// Fills every `{{name}}` from `vars`, escaping each value; text outside placeholders is kept.
pub fn render(text: &str, vars: &Vars, escape: Escape) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError::Unclosed(rest[start..].chars().take(20).collect()));
        };
        let name = after[..end].trim();
        let value = match vars.get(name) {
            Some(v) => v.as_str(),
            // A label no firing rule carries reads empty.
            None if name.starts_with("labels.") => "",
            None => return Err(TemplateError::Unknown(name.to_string())),
        };
        escape_into(&mut out, value, escape);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A number as people read it: `0.052`, `1200`, `3.5e-7`, `NaN`.
pub fn number(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v == v.trunc() && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    if v.abs() < 1e-4 {
        return format!("{v:.3e}");
    }
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `0.052` or `no data`.
pub fn maybe(v: Option<f64>) -> String {
    v.map(number).unwrap_or_else(|| "no data".into())
}

/// A number for a person: at most 4 decimals, no trailing zeros (`0.0792`, `1200`).
pub fn short(v: f64) -> String {
    if !v.is_finite() {
        return number(v);
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".to_string() } else { s.to_string() }
}

/// A named value (a rule's, a signal's) as a person reads it, or `no data`.
pub fn show(name: &str, value: Option<f64>) -> String {
    value.map(|v| Unit::of(name).show(v)).unwrap_or_else(|| "no data".into())
}

/// What a value measures. [`Unit::of`] guesses it from a name (`error_rate`/`memory_ratio` are
/// shares, `*_seconds`/`latency`/`duration` are times, the rest plain numbers); a profile's
/// compiler knows better from the expression (`quantile` of a `_seconds` histogram is a time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Share,
    Seconds,
    Plain,
}

impl Unit {
    pub fn of(name: &str) -> Unit {
        let n = name.to_ascii_lowercase();
        // Times first: "duration" contains "ratio".
        if ["seconds", "latency", "duration"].iter().any(|w| n.contains(w)) {
            Unit::Seconds
        } else if ["rate", "ratio", "share", "fraction"].iter().any(|w| n.contains(w)) {
            Unit::Share
        } else {
            Unit::Plain
        }
    }

    /// `v` as a person reads it: a share as a percentage (`7.92%`), seconds as a duration
    /// (`350ms`, `1.25s`, `2m 30s`), anything else with at most 4 decimals.
    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Share if (0.0..=1.0).contains(&v) => format!("{}%", short((v * 100.0 * 100.0).round() / 100.0)),
            Unit::Seconds if (0.0..1.0).contains(&v) => format!("{}ms", short((v * 1000.0).round())),
            Unit::Seconds if (60.0..1e12).contains(&v) => crate::time::human(crate::time::Span((v * 1000.0) as i64)),
            Unit::Seconds if v.is_finite() && v >= 0.0 => format!("{}s", short((v * 100.0).round() / 100.0)),
            _ => short(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn fills_placeholders_and_keeps_the_rest() {
        let v = vars(&[("version", "v1.2.3"), ("profile", "api")]);
        assert_eq!(render("roll {{profile}} to {{ version }}!", &v, Escape::None).unwrap(), "roll api to v1.2.3!");
        assert_eq!(render("no placeholders", &v, Escape::None).unwrap(), "no placeholders");
    }

    #[test]
    fn a_value_is_never_read_as_a_placeholder() {
        let v = vars(&[("a", "{{b}}"), ("b", "secret")]);
        assert_eq!(render("{{a}}", &v, Escape::None).unwrap(), "{{b}}");
    }

    #[test]
    fn values_read_as_people_read_them() {
        assert_eq!(short(0.07916666666666666), "0.0792");
        assert_eq!(short(-0.00001), "0");
        assert_eq!(Unit::of("error_rate").show(0.07916666666666666), "7.92%");
        assert_eq!(Unit::of("p99_latency_seconds").show(0.35), "350ms");
        assert_eq!(Unit::of("request_duration").show(1.2549), "1.25s");
        assert_eq!(Unit::Seconds.show(150.0), "2m 30s");
        assert_eq!(Unit::Seconds.show(0.0247), "25ms");
        assert_eq!(Unit::of("memory_used").show(1234.56789), "1234.5679");
        assert_eq!(Unit::of("error_rate").show(3.0), "3", "not a share: plain");
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        let v = vars(&[]);
        assert_eq!(render("x {{nope}}", &v, Escape::None), Err(TemplateError::Unknown("nope".into())));
        assert!(matches!(render("x {{nope", &v, Escape::None), Err(TemplateError::Unclosed(_))));
        assert_eq!(placeholders("{{a}} and {{ b }}").unwrap(), vec!["a", "b"]);
        assert_eq!(own_text("to {{a}} and {{ b }}!"), "to  and !");
        assert_eq!(own_text("x {{nope"), "x {{nope");
    }

    #[test]
    fn values_are_escaped_for_their_channel() {
        let v = vars(&[("x", "<@here> & \"q\"\n")]);
        assert_eq!(render("{{x}}", &v, Escape::Slack).unwrap(), "&lt;@here&gt; &amp; \"q\"\\n");
        assert_eq!(
            render("a\n{{x}}", &v, Escape::Text).unwrap(),
            "a\n<@here> & \"q\"\\n",
            "the template's own lines stay"
        );
        assert_eq!(render("{{x}}", &v, Escape::Header).unwrap(), "<@here> & \"q\"%0A");
        assert_eq!(render("{\"t\":\"{{x}}\"}", &v, Escape::Json).unwrap(), r#"{"t":"<@here> & \"q\"\n"}"#);
        assert_eq!(render("?v={{x}}", &v, Escape::Url).unwrap(), "?v=%3C%40here%3E%20%26%20%22q%22%0A");
    }
}
