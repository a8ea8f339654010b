//! Reading a health endpoint's JSON body: numeric and boolean fields become series values
//! (`checksum_ok: true` → 1), string fields (`version`) are kept as current values, nested
//! objects are flattened with `_` (`checks.db` → `checks_db`). A body that is not JSON is not an
//! error — health is the status code — it just yields no fields. Bounded: at most
//! [`MAX_FIELDS`] fields, [`MAX_DEPTH`] levels, string values cut at [`MAX_STRING`] bytes (with
//! a `…`: a cut value is never taken for what was sent — a version of that length is refused).

use serde_json::Value;

use crate::selector::metric_name;

/// Fields kept from one body; more are ignored.
pub const MAX_FIELDS: usize = 256;
/// Nesting followed; deeper objects are ignored.
pub const MAX_DEPTH: usize = 4;
/// The longest string value kept; longer ones are cut (and marked with `…`).
pub const MAX_STRING: usize = 1024;

/// What a health body says beyond its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthFields {
    /// Series name → value.
    pub numbers: Vec<(String, f64)>,
    /// Field → current value (not a window).
    pub strings: Vec<(String, String)>,
}

/// Reads a body; anything but a JSON object gives no fields.
pub fn read(body: &[u8]) -> HealthFields {
    let mut out = HealthFields::default();
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        walk("", &Value::Object(map), 0, &mut out);
    }
    out
}

fn walk(prefix: &str, value: &Value, depth: usize, out: &mut HealthFields) {
    if out.numbers.len() + out.strings.len() >= MAX_FIELDS {
        return;
    }
    match value {
        Value::Object(map) if depth < MAX_DEPTH => {
            for (k, v) in map {
                let name = if prefix.is_empty() { metric_name(k) } else { format!("{prefix}_{}", metric_name(k)) };
                walk(&name, v, depth + 1, out);
            }
        }
        Value::Number(n) if !prefix.is_empty() => {
            if let Some(f) = n.as_f64() {
                out.numbers.push((prefix.to_string(), f));
            }
        }
        Value::Bool(b) if !prefix.is_empty() => out.numbers.push((prefix.to_string(), if *b { 1.0 } else { 0.0 })),
        Value::String(s) if !prefix.is_empty() => {
            let kept = if s.len() > MAX_STRING {
                let mut end = MAX_STRING;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &s[..end])
            } else {
                s.clone()
            };
            out.strings.push((prefix.to_string(), kept));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_booleans_and_strings() {
        let f = read(br#"{"status":"ok","version":"v1.2.4","checksum_ok":true,"latency_ms":12.5,"checks":{"db":false,"queue depth":3},"tags":[1,2]}"#);
        assert_eq!(
            f.numbers,
            [
                ("checks_db".to_string(), 0.0),
                ("checks_queue_depth".to_string(), 3.0),
                ("checksum_ok".to_string(), 1.0),
                ("latency_ms".to_string(), 12.5)
            ]
        );
        assert_eq!(
            f.strings,
            [("status".to_string(), "ok".to_string()), ("version".to_string(), "v1.2.4".to_string())]
        );
    }

    #[test]
    fn a_long_string_is_cut_and_marked() {
        let body = format!(r#"{{"version":"{}"}}"#, "é".repeat(MAX_STRING));
        let f = read(body.as_bytes());
        assert!(f.strings[0].1.len() <= MAX_STRING + '…'.len_utf8() && f.strings[0].1.ends_with('…'));
    }

    #[test]
    fn non_json_and_hostile_bodies_yield_nothing_or_little() {
        assert_eq!(read(b"OK"), HealthFields::default());
        assert_eq!(read(b"\xff\xfe"), HealthFields::default());
        assert_eq!(read(b"[1,2]"), HealthFields::default());
        let many: String = format!("{{{}}}", (0..1000).map(|i| format!("\"f{i}\":{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(read(many.as_bytes()).numbers.len(), MAX_FIELDS);
        let deep = format!("{}1{}", "{\"a\":".repeat(50), "}".repeat(50));
        assert_eq!(read(deep.as_bytes()), HealthFields::default());
        assert_eq!(read(br#"{"9lives":1}"#).numbers[0].0, "_9lives");
    }
}
