//! Series identity and PromQL-style selectors: [`SeriesKey`] (a metric name plus sorted labels)
//! and [`Selector`] (`name{l="v",l!="v",l=~"re",l!~"re"}`, regexes fully anchored as in PromQL).
//! Both are parsed once, at load; matching a series against a compiled selector does no parsing.

use std::fmt;

use regex::Regex;

/// A series' identity: metric name and labels sorted by label name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub name: String,
    /// Sorted by label name, no duplicates, no empty values (an empty label is an absent one).
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    /// Builds a key, sorting labels and dropping empty values as Prometheus does.
    pub fn new(name: impl Into<String>, labels: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut labels: Vec<(String, String)> = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        SeriesKey { name: name.into(), labels }
    }

    /// The value of label `name`, `""` when absent (PromQL semantics).
    pub fn label(&self, name: &str) -> &str {
        if name == "__name__" {
            return &self.name;
        }
        self.labels.binary_search_by(|(k, _)| k.as_str().cmp(name)).map(|i| self.labels[i].1.as_str()).unwrap_or("")
    }

    /// Parses a series written as in a fixture: `name{l="v",...}`, equality matchers only.
    pub fn parse(text: &str) -> Result<SeriesKey, SelectorError> {
        let sel = Selector::parse(text)?;
        let name = sel
            .name
            .clone()
            .ok_or_else(|| SelectorError { column: 1, message: "a series needs a metric name".into() })?;
        let mut labels = Vec::new();
        for m in &sel.matchers {
            if m.op != MatchOp::Equal {
                return Err(SelectorError {
                    column: 1,
                    message: format!("a series takes only `=` labels, found `{}{}`", m.label, m.op),
                });
            }
            if m.label == "__name__" {
                return Err(SelectorError {
                    column: 1,
                    message: "a series names its metric before `{`, not as __name__".into(),
                });
            }
            if labels.iter().any(|(k, _): &(String, String)| k == &m.label) {
                return Err(SelectorError { column: 1, message: format!("label {:?} given twice", m.label) });
            }
            labels.push((m.label.clone(), m.value.clone()));
        }
        Ok(SeriesKey::new(name, labels))
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}=\"{}\"", escape_label_value(v))?;
        }
        f.write_str("}")
    }
}

/// Makes any text a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`): other characters become `_`,
/// and a leading digit gets a `_` in front (`checks.db` → `checks_db`, `9lives` → `_9lives`).
pub fn metric_name(text: &str) -> String {
    let mut out: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' }).collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// Escapes a label value for the text formats: `\`, `"` and newline.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A label matcher's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl fmt::Display for MatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        })
    }
}

/// One `label op "value"` term, its regex compiled (and anchored) at parse time.
#[derive(Debug, Clone)]
pub struct LabelMatcher {
    pub label: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl LabelMatcher {
    fn matches(&self, actual: &str) -> bool {
        match self.op {
            MatchOp::Equal => actual == self.value,
            MatchOp::NotEqual => actual != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(actual)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(actual)),
        }
    }
}

/// A compiled series selector.
#[derive(Debug, Clone)]
pub struct Selector {
    pub name: Option<String>,
    pub matchers: Vec<LabelMatcher>,
    /// The text it was parsed from, for messages and de-duplication.
    pub text: String,
}

/// A selector that failed to parse; `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad selector at column {column}: {message}")]
pub struct SelectorError {
    pub column: usize,
    pub message: String,
}

impl Selector {
    /// Parses `name{l="v",...}`, `name`, or `{l="v"}`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut p = Parser { chars: text.chars().collect(), pos: 0 };
        let sel = p.selector(text)?;
        p.skip_ws();
        if p.pos < p.chars.len() {
            return Err(p.err(format!("unexpected {:?} after the selector", p.chars[p.pos])));
        }
        Ok(sel)
    }

    /// A selector for one metric name with one equality matcher.
    pub fn for_label(name: &str, label: &str, value: &str) -> Selector {
        Selector {
            name: Some(name.to_string()),
            matchers: vec![LabelMatcher {
                label: label.to_string(),
                op: MatchOp::Equal,
                value: value.to_string(),
                regex: None,
            }],
            text: format!("{name}{{{label}=\"{}\"}}", escape_label_value(value)),
        }
    }

    /// Whether the series is selected.
    pub fn matches(&self, key: &SeriesKey) -> bool {
        if let Some(name) = &self.name
            && name != &key.name
        {
            return false;
        }
        self.matchers.iter().all(|m| m.matches(key.label(&m.label)))
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn err(&self, message: impl Into<String>) -> SelectorError {
        SelectorError { column: self.pos + 1, message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn ident(&mut self, allow_colon: bool) -> Option<String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic()
                || c == '_'
                || (allow_colon && c == ':')
                || (self.pos > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        (self.pos > start).then(|| self.chars[start..self.pos].iter().collect())
    }

    fn selector(&mut self, text: &str) -> Result<Selector, SelectorError> {
        self.skip_ws();
        let name = self.ident(true);
        self.skip_ws();
        let mut matchers = Vec::new();
        if self.peek() == Some('{') {
            self.pos += 1;
            loop {
                self.skip_ws();
                if self.peek() == Some('}') {
                    self.pos += 1;
                    break;
                }
                matchers.push(self.matcher()?);
                self.skip_ws();
                match self.peek() {
                    Some(',') => self.pos += 1,
                    Some('}') => {}
                    Some(c) => return Err(self.err(format!("expected `,` or `}}`, found {c:?}"))),
                    None => return Err(self.err("unclosed `{`")),
                }
            }
        } else if name.is_none() {
            return Err(match self.peek() {
                Some(c) => self.err(format!("expected a metric name or `{{`, found {c:?}")),
                None => self.err("empty selector"),
            });
        }
        if name.is_none() && matchers.iter().all(|m| m.matches("")) {
            return Err(SelectorError {
                column: 1,
                message: "a selector without a metric name needs a matcher that does not match the empty string".into(),
            });
        }
        Ok(Selector { name, matchers, text: text.trim().to_string() })
    }

    fn matcher(&mut self) -> Result<LabelMatcher, SelectorError> {
        let label = self.ident(false).ok_or_else(|| match self.peek() {
            Some(c) => self.err(format!("expected a label name, found {c:?}")),
            None => self.err("unclosed `{`"),
        })?;
        self.skip_ws();
        let op = match (self.peek(), self.chars.get(self.pos + 1).copied()) {
            (Some('='), Some('~')) => MatchOp::Regex,
            (Some('!'), Some('=')) => MatchOp::NotEqual,
            (Some('!'), Some('~')) => MatchOp::NotRegex,
            (Some('='), _) => MatchOp::Equal,
            _ => return Err(self.err(format!("expected =, !=, =~ or !~ after label {label:?}"))),
        };
        self.pos += if op == MatchOp::Equal { 1 } else { 2 };
        self.skip_ws();
        let value_col = self.pos;
        let value = self.string()?;
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                Some(Regex::new(&format!("^(?:{value})$")).map_err(|e| SelectorError {
                    column: value_col + 1,
                    message: format!("bad regex {value:?} for label {label:?}: {}", last_line(&e.to_string())),
                })?)
            }
            _ => None,
        };
        Ok(LabelMatcher { label, op, value, regex })
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        let quote = match self.peek() {
            Some(q @ ('"' | '\'' | '`')) => q,
            Some(c) => return Err(self.err(format!("expected a quoted value, found {c:?}"))),
            None => return Err(self.err("expected a quoted value")),
        };
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated string")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') if quote != '`' => {
                    self.pos += 1;
                    let escaped = match self.peek() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('\\') => '\\',
                        Some('"') => '"',
                        Some('\'') => '\'',
                        // Regex escapes such as `\.` or `\d` pass through to the regex engine.
                        Some(c) => {
                            out.push('\\');
                            c
                        }
                        None => return Err(self.err("unterminated string")),
                    };
                    out.push(escaped);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }
}

/// The regex crate's messages span several lines; the last non-empty one says what is wrong.
fn last_line(s: &str) -> String {
    s.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> SeriesKey {
        SeriesKey::parse(s).unwrap()
    }

    #[test]
    fn parses_series_keys_and_sorts_labels() {
        let k = key(r#"http_requests_total{code="500", method="GET"}"#);
        assert_eq!(k.name, "http_requests_total");
        assert_eq!(k.label("code"), "500");
        assert_eq!(k.label("missing"), "");
        assert_eq!(key(r#"m{b="1",a="2"}"#).to_string(), r#"m{a="2",b="1"}"#);
        assert_eq!(key("job:errors:rate5m").name, "job:errors:rate5m");
        assert_eq!(key("m{}").labels.len(), 0);
    }

    #[test]
    fn label_values_keep_commas_equals_braces_and_escapes() {
        let k = key(r#"q{queue="a,b=c}",path="x\"y\\z\n"}"#);
        assert_eq!(k.label("queue"), "a,b=c}");
        assert_eq!(k.label("path"), "x\"y\\z\n");
        assert_eq!(SeriesKey::parse(&k.to_string()).unwrap(), k);
    }

    #[test]
    fn matchers_follow_promql() {
        let s = Selector::parse(r#"http_requests_total{code=~"5..",method!="HEAD",path!~"/health.*"}"#).unwrap();
        assert!(s.matches(&key(r#"http_requests_total{code="503",method="GET",path="/api"}"#)));
        assert!(!s.matches(&key(r#"http_requests_total{code="5000",method="GET"}"#)), "regex is anchored");
        assert!(!s.matches(&key(r#"http_requests_total{code="500",method="HEAD"}"#)));
        assert!(!s.matches(&key(r#"http_requests_total{code="500",path="/healthz"}"#)));
        assert!(!s.matches(&key(r#"other{code="500"}"#)));
        let absent = Selector::parse(r#"up{critical="true"}"#).unwrap();
        assert!(!absent.matches(&key(r#"up{target="a"}"#)));
        let any = Selector::parse(r#"{__name__=~"up|x"}"#).unwrap();
        assert!(any.matches(&key("x")));
    }

    #[test]
    fn bad_selectors_say_where() {
        let e = Selector::parse(r#"m{code=~"5(("}"#).unwrap_err();
        assert!(e.message.contains("bad regex"), "{e}");
        assert_eq!(e.column, 9);
        let e = Selector::parse(r#"m{code="5""#).unwrap_err();
        assert!(e.message.contains("unclosed"), "{e}");
        let e = Selector::parse(r#"m{code}"#).unwrap_err();
        assert_eq!(e.column, 7);
        assert!(Selector::parse("").is_err());
        assert!(Selector::parse(r#"{a=~".*"}"#).is_err());
        assert!(Selector::parse("m x").is_err());
        assert!(SeriesKey::parse(r#"m{a=~"x"}"#).is_err());
        assert!(SeriesKey::parse(r#"m{a="1",a="2"}"#).is_err());
    }
}
