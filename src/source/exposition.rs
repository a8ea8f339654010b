//! rollwatch's own parser for the Prometheus text exposition format (0.0.4, and the sample lines
//! of OpenMetrics): counters, gauges, histograms and summaries are all sample lines; names may
//! contain `:`; label values keep `,` `=` `}` and have `\\` `\"` `\n` decoded; values include
//! `NaN` and `±Inf`; an optional millisecond timestamp is kept.
//!
//! Lenient by design: a bad line is skipped and counted (with the first few reasons kept for the
//! log), never fails the whole scrape and never panics — one odd metric must not blind a rollback
//! decision. prometheus-parse 0.2.5 was measured to drop `:` names and `m{} 8`, mangle label
//! values with `,` `=` `}`, and not decode escapes (DEPENDENCIES.md), hence this module.

use std::borrow::Cow;

use crate::selector::SeriesKey;

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub key: SeriesKey,
    pub value: f64,
    /// The exposition's own timestamp (ms since the epoch), when it gave one.
    pub timestamp_ms: Option<i64>,
}

/// A line that was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What a scrape yielded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// How many lines were skipped as malformed.
    pub bad_lines: usize,
    /// The first [`KEPT_REASONS`] of them, for the log.
    pub first_bad: Vec<BadLine>,
}

/// How many bad-line reasons are kept; the rest are only counted.
pub const KEPT_REASONS: usize = 5;

/// A sample borrowed from the body: nothing is allocated unless a label value has escapes.
/// Consumers that already know the series (the store, on every scrape after the first) look it
/// up from this without building an owned key.
#[derive(Debug)]
pub struct SampleRef<'a, 'l> {
    pub name: &'a str,
    /// In the order written; no duplicate names.
    pub labels: &'l [(&'a str, Cow<'a, str>)],
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl SampleRef<'_, '_> {
    /// An owned sample (labels sorted, empty values dropped).
    pub fn to_sample(&self) -> Sample {
        let labels = self.labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Sample { key: SeriesKey::new(self.name, labels), value: self.value, timestamp_ms: self.timestamp_ms }
    }
}

/// Parses a whole exposition body into owned samples.
pub fn parse(body: &[u8]) -> Exposition {
    let mut samples = Vec::new();
    let (bad_lines, first_bad) = parse_each(body, |s| samples.push(s.to_sample()));
    Exposition { samples, bad_lines, first_bad }
}

/// Parses a body, handing each good sample to `visit`; returns the bad-line count and the first
/// [`KEPT_REASONS`] reasons.
pub fn parse_each(body: &[u8], mut visit: impl FnMut(&SampleRef<'_, '_>)) -> (usize, Vec<BadLine>) {
    let mut bad_lines = 0;
    let mut first_bad = Vec::new();
    let mut labels = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let trimmed = trim_start(line);
        if trimmed.is_empty() {
            continue;
        }
        if trimmed[0] == b'#' {
            if trimmed == b"# EOF" {
                break;
            }
            continue;
        }
        labels.clear();
        match parse_line(trimmed, &mut labels) {
            Ok((name, value, timestamp_ms)) => visit(&SampleRef { name, labels: &labels, value, timestamp_ms }),
            Err(reason) => {
                bad_lines += 1;
                if first_bad.len() < KEPT_REASONS {
                    first_bad.push(BadLine { line: i + 1, reason });
                }
            }
        }
    }
    (bad_lines, first_bad)
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    &s[n..]
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn name(&mut self, colon: bool) -> Option<&'a str> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            let ok = b.is_ascii_alphabetic()
                || b == b'_'
                || (colon && b == b':')
                || (self.pos > start && b.is_ascii_digit());
            if !ok {
                break;
            }
            self.pos += 1;
        }
        // Only ASCII was accepted, so this cannot fail.
        std::str::from_utf8(&self.s[start..self.pos]).ok().filter(|n| !n.is_empty())
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` decoded; borrowed when it has no
    /// escapes.
    fn quoted(&mut self) -> Result<Cow<'a, str>, String> {
        if self.peek() != Some(b'"') {
            return Err("expected `\"` before a label value".into());
        }
        self.pos += 1;
        let plain = self.take_while(|b| b != b'"' && b != b'\\');
        if self.peek() == Some(b'"') {
            self.pos += 1;
            return std::str::from_utf8(plain).map(Cow::Borrowed).map_err(|_| "label value is not UTF-8".to_string());
        }
        let mut bytes = plain.to_vec();
        loop {
            let chunk = self.take_while(|b| b != b'"' && b != b'\\');
            bytes.extend_from_slice(chunk);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return String::from_utf8(bytes)
                        .map(Cow::Owned)
                        .map_err(|_| "label value is not UTF-8".to_string());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b'n') => bytes.push(b'\n'),
                        Some(b'\\') => bytes.push(b'\\'),
                        Some(b'"') => bytes.push(b'"'),
                        Some(other) => bytes.extend_from_slice(&[b'\\', other]),
                        None => return Err("unterminated label value".into()),
                    }
                    self.pos += 1;
                }
                _ => return Err("unterminated label value".into()),
            }
        }
    }
}

/// One sample line: its name, value and timestamp; its labels go into `labels`.
type Parsed<'a> = (&'a str, f64, Option<i64>);

fn parse_line<'a>(line: &'a [u8], labels: &mut Vec<(&'a str, Cow<'a, str>)>) -> Result<Parsed<'a>, String> {
    let mut c = Cursor { s: line, pos: 0 };
    let name = c.name(true).ok_or("expected a metric name")?;
    c.skip_blanks();
    if c.peek() == Some(b'{') {
        c.pos += 1;
        loop {
            c.skip_blanks();
            if c.peek() == Some(b'}') {
                c.pos += 1;
                break;
            }
            let label = c.name(false).ok_or("expected a label name")?;
            c.skip_blanks();
            if c.peek() != Some(b'=') {
                return Err(format!("expected `=` after label {label:?}"));
            }
            c.pos += 1;
            c.skip_blanks();
            let value = c.quoted()?;
            if labels.iter().any(|(k, _)| *k == label) {
                return Err(format!("label {label:?} given twice"));
            }
            labels.push((label, value));
            c.skip_blanks();
            match c.peek() {
                Some(b',') => c.pos += 1,
                Some(b'}') => {}
                _ => return Err("expected `,` or `}` after a label".into()),
            }
        }
    }
    c.skip_blanks();
    let value = parse_value(c.take_while(|b| b != b' ' && b != b'\t'))?;
    c.skip_blanks();
    let timestamp_ms = match if c.peek() == Some(b'#') { &b""[..] } else { c.take_while(|b| b != b' ' && b != b'\t') } {
        b"" => None,
        t => Some(parse_timestamp(t)?),
    };
    c.skip_blanks();
    // OpenMetrics exemplars (`# {...} v`) follow the sample; anything else is garbage.
    if c.pos < line.len() && line[c.pos] != b'#' {
        return Err("unexpected text after the value and timestamp".into());
    }
    Ok((name, value, timestamp_ms))
}

/// A value as the text format writes it: `NaN`, `+Inf`, `-Inf`, or the shortest decimal that
/// reads back to the same float (also valid in fixture notation).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

fn parse_value(text: &[u8]) -> Result<f64, String> {
    let s = std::str::from_utf8(text).map_err(|_| "value is not UTF-8")?;
    match s {
        "" => Err("missing value".into()),
        "NaN" | "nan" => Ok(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        _ if s.bytes().all(|b| b.is_ascii_digit() || b"+-.eE_".contains(&b)) => {
            s.parse::<f64>().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

fn parse_timestamp(text: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(text).map_err(|_| "timestamp is not UTF-8")?;
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    // OpenMetrics writes seconds with a fraction.
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs.abs() < 9.2e15 => Ok((secs * 1000.0).round() as i64),
        _ => Err(format!("bad timestamp {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample {
        let e = parse(line.as_bytes());
        assert_eq!(e.bad_lines, 0, "{:?}", e.first_bad);
        assert_eq!(e.samples.len(), 1);
        e.samples.into_iter().next().unwrap()
    }

    #[test]
    fn counters_gauges_histograms_summaries() {
        let body = "\
# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000
http_requests_total{method=\"post\",code=\"400\"}    3 1395066363000
# TYPE node_memory_MemAvailable_bytes gauge
node_memory_MemAvailable_bytes 4.2e+09
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le=\"0.05\"} 24054
http_request_duration_seconds_bucket{le=\"+Inf\"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile=\"0.99\"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
";
        let e = parse(body.as_bytes());
        assert_eq!(e.bad_lines, 0);
        assert_eq!(e.samples.len(), 10);
        assert_eq!(e.samples[0].key.label("code"), "200");
        assert_eq!(e.samples[0].timestamp_ms, Some(1395066363000));
        assert_eq!(e.samples[1].value, 3.0);
        assert_eq!(e.samples[2].value, 4.2e9);
        assert_eq!(e.samples[4].key.label("le"), "+Inf");
        assert_eq!(e.samples[7].key.label("quantile"), "0.99");
    }

    #[test]
    fn the_cases_prometheus_parse_gets_wrong() {
        // Names with `:` (recording rules).
        assert_eq!(one("job:errors:rate5m{job=\"api\"} 0.5").key.name, "job:errors:rate5m");
        // Empty label set.
        let s = one("m{} 8");
        assert_eq!((s.key.name.as_str(), s.key.labels.len(), s.value), ("m", 0, 8.0));
        // Label values holding `,` `=` `}`.
        let s = one("q{queue=\"a,b\",expr=\"x=y}\"} 1");
        assert_eq!(s.key.label("queue"), "a,b");
        assert_eq!(s.key.label("expr"), "x=y}");
        // Escapes decoded.
        let s = one(r#"m{path="C:\\dir",msg="say \"hi\"\nbye"} 1"#);
        assert_eq!(s.key.label("path"), "C:\\dir");
        assert_eq!(s.key.label("msg"), "say \"hi\"\nbye");
    }

    #[test]
    fn special_values_timestamps_and_openmetrics() {
        assert!(one("m NaN").value.is_nan());
        assert_eq!(one("m +Inf").value, f64::INFINITY);
        assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
        assert_eq!(one("m 1 -5").timestamp_ms, Some(-5));
        assert_eq!(one("m 1 1700000000.250").timestamp_ms, Some(1_700_000_000_250));
        assert_eq!(one("m{a=\"b\",} 2").key.label("a"), "b", "trailing comma");
        assert_eq!(one("m 3 # {trace_id=\"x\"} 1").value, 3.0, "exemplar ignored");
        assert_eq!(one("m 3\r").value, 3.0, "CRLF");
        let e = parse(b"a 1\n# EOF\nb 2\n");
        assert_eq!(e.samples.len(), 1, "# EOF ends an OpenMetrics body");
    }

    #[test]
    fn bad_lines_are_skipped_and_counted_never_fatal() {
        let body = b"good 1\nbad{ 1\nm{a=b} 1\n{a=\"b\"} 1\nm one\nm 1 2 3\nm{a=\"1\",a=\"2\"} 1\nm{a=\"\xff\"} 1\nm\nalso_good 2\n";
        let e = parse(body);
        assert_eq!(e.samples.iter().map(|s| s.key.name.as_str()).collect::<Vec<_>>(), ["good", "also_good"]);
        assert_eq!(e.bad_lines, 8);
        assert_eq!(e.first_bad.len(), KEPT_REASONS);
        assert_eq!(e.first_bad[0], BadLine { line: 2, reason: "expected a label name".into() });
        assert_eq!(e.first_bad[1], BadLine { line: 3, reason: "expected `\"` before a label value".into() });
    }

    const ALPHABET: &[u8] = b"m{}=\",\\ 1.eE+-#\nNaI:_a\xff";

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut state = 7u64;
        for _ in 0..2000 {
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    ALPHABET[(state >> 33) as usize % ALPHABET.len()]
                })
                .collect();
            let _ = parse(&bytes);
        }
    }
}
