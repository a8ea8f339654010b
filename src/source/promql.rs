//! Reading an instant-query response from a Prometheus-compatible `/api/v1/query`: a `vector`
//! gives one sample per element (its labels; the metric name from `__name__`, else the target's
//! name), a `scalar` one sample named after the target. Error responses, other result types and
//! unparsable values are errors — never a silent zero.

use serde::Deserialize;

use crate::selector::{SeriesKey, metric_name};

#[derive(Debug, Deserialize)]
struct Response {
    status: String,
    data: Option<Data>,
    error: Option<String>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct VectorElement {
    metric: std::collections::BTreeMap<String, String>,
    value: (f64, String),
}

/// Why a query response was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromqlError {
    #[error("query failed: {0}")]
    Api(String),
    #[error("not a query API response: {0}")]
    Format(String),
    #[error("result type {0:?} is not supported (use an instant vector or scalar)")]
    ResultType(String),
}

/// Samples from a response body; `target` names results without a `__name__`.
pub fn read(body: &[u8], target: &str) -> Result<Vec<(SeriesKey, f64)>, PromqlError> {
    let r: Response = serde_json::from_slice(body).map_err(|e| PromqlError::Format(e.to_string()))?;
    if r.status != "success" {
        let kind = r.error_type.unwrap_or_default();
        return Err(PromqlError::Api(format!("{kind}: {}", r.error.unwrap_or_default())));
    }
    let data = r.data.ok_or_else(|| PromqlError::Format("no data".into()))?;
    let fallback = metric_name(target);
    match data.result_type.as_str() {
        "vector" => {
            let elements: Vec<VectorElement> =
                serde_json::from_value(data.result).map_err(|e| PromqlError::Format(e.to_string()))?;
            elements
                .into_iter()
                .map(|e| {
                    let mut labels = e.metric;
                    let name = labels.remove("__name__").unwrap_or_else(|| fallback.clone());
                    Ok((SeriesKey::new(name, labels), value(&e.value.1)?))
                })
                .collect()
        }
        "scalar" => {
            let (_, v): (f64, String) =
                serde_json::from_value(data.result).map_err(|e| PromqlError::Format(e.to_string()))?;
            Ok(vec![(SeriesKey::new(fallback, []), value(&v)?)])
        }
        other => Err(PromqlError::ResultType(other.to_string())),
    }
}

fn value(text: &str) -> Result<f64, PromqlError> {
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text.parse().map_err(|_| PromqlError::Format(format!("bad sample value {text:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_and_scalars() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","job":"app"},"value":[1700000000.1,"1"]},
            {"metric":{"job":"db"},"value":[1700000000.1,"NaN"]}]}}"#;
        let s = read(body, "error-ratio").unwrap();
        assert_eq!(s[0].0.to_string(), r#"up{job="app"}"#);
        assert_eq!(s[0].1, 1.0);
        assert_eq!(s[1].0.to_string(), r#"error_ratio{job="db"}"#);
        assert!(s[1].1.is_nan());
        let scalar =
            read(br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"0.25"]}}"#, "q").unwrap();
        assert_eq!(scalar, vec![(SeriesKey::new("q", []), 0.25)]);
    }

    #[test]
    fn errors_are_errors() {
        let e = read(br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#, "q").unwrap_err();
        assert_eq!(e, PromqlError::Api("bad_data: parse error at char 5".into()));
        assert!(matches!(read(b"<html>", "q"), Err(PromqlError::Format(_))));
        let m = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(read(m, "q").unwrap_err(), PromqlError::ResultType("matrix".into()));
        let bad = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#;
        assert!(matches!(read(bad, "q"), Err(PromqlError::Format(_))));
    }
}
