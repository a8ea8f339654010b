//! The Alertmanager webhook receiver's data side: the payload (version 4) parsed strictly enough
//! to reject garbage with a message, and [`Alerts`], which turns firing alerts into
//! `ALERTS{alertname="X",...} = 1` series until Alertmanager sends them resolved (its webhook
//! default, `send_resolved`). Alertmanager re-sends a firing alert only every `repeat_interval`
//! (4 h by default), so silence is not resolution; an optional `alert_expiry` ends alerts not
//! re-sent for that long, for senders that never resolve. What no metric shows — a security
//! incident, a key feature broken — reaches the rules this way.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::selector::SeriesKey;
use crate::time::{Span, Timestamp};
use crate::window::Store;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    version: String,
    alerts: Vec<RawAlert>,
}

#[derive(Debug, Deserialize)]
struct RawAlert {
    status: String,
    labels: BTreeMap<String, String>,
}

/// One alert's news.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertUpdate {
    /// `ALERTS` with the alert's labels.
    pub key: SeriesKey,
    pub firing: bool,
}

/// Parses a webhook body; an error says what is wrong (for a 400 reply).
pub fn parse(body: &[u8]) -> Result<Vec<AlertUpdate>, String> {
    let payload: Payload =
        serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager webhook payload: {e}"))?;
    if payload.version != "4" {
        return Err(format!("unsupported webhook payload version {:?} (rollwatch reads version 4)", payload.version));
    }
    payload
        .alerts
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let firing = match a.status.as_str() {
                "firing" => true,
                "resolved" => false,
                other => return Err(format!("alert {}: status must be firing or resolved, not {other:?}", i + 1)),
            };
            if a.labels.get("alertname").is_none_or(|n| n.is_empty()) {
                return Err(format!("alert {}: no alertname label", i + 1));
            }
            let labels = a.labels.into_iter().filter(|(k, _)| k != "__name__" && valid_label(k));
            Ok(AlertUpdate { key: SeriesKey::new("ALERTS", labels), firing })
        })
        .collect()
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Firing alerts and when each was last sent.
#[derive(Debug, Default)]
pub struct Alerts {
    last_sent: HashMap<SeriesKey, Timestamp>,
}

impl Alerts {
    /// Applies a webhook's updates at `now`: firing alerts (re)start, resolved ones end.
    /// Returns the changes (a new firing alert, a firing one resolved): a re-sent alert is none.
    pub(super) fn update(&mut self, updates: Vec<AlertUpdate>, now: Timestamp, store: &mut Store) -> Vec<AlertUpdate> {
        let mut changed = Vec::new();
        for u in updates {
            if u.firing {
                if self.last_sent.insert(u.key.clone(), now).is_none() {
                    changed.push(u.clone());
                }
                store.push(&u.key, now, 1.0);
            } else if self.last_sent.remove(&u.key).is_some() {
                store.mark_stale(&u.key, now);
                changed.push(u);
            }
        }
        changed
    }

    /// Called every tick: keeps firing alerts present as 1; with an `expiry`, ends those not
    /// re-sent for that long.
    pub(super) fn refresh(&mut self, now: Timestamp, expiry: Option<Span>, store: &mut Store) {
        self.last_sent.retain(|key, sent| {
            if expiry.is_some_and(|e| now.saturating_since(*sent) > e) {
                store.mark_stale(key, now);
                false
            } else {
                store.push(key, now, 1.0);
                true
            }
        });
    }

    /// Names of the alerts firing now.
    pub fn firing(&self) -> Vec<String> {
        let mut names: Vec<String> = self.last_sent.keys().map(|k| k.to_string()).collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::window::At;

    const BODY: &str = r#"{"version":"4","groupKey":"{}:{}","status":"firing","receiver":"rollwatch","groupLabels":{},
        "commonLabels":{},"commonAnnotations":{},"externalURL":"http://am","truncatedAlerts":0,
        "alerts":[{"status":"firing","labels":{"alertname":"SecurityIncident","severity":"critical"},
        "annotations":{},"startsAt":"2026-01-01T00:00:00Z","endsAt":"0001-01-01T00:00:00Z","generatorURL":"","fingerprint":"x"}]}"#;

    #[test]
    fn parses_version_4() {
        let u = parse(BODY.as_bytes()).unwrap();
        assert_eq!(u.len(), 1);
        assert!(u[0].firing);
        assert_eq!(u[0].key.to_string(), r#"ALERTS{alertname="SecurityIncident",severity="critical"}"#);
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        assert!(parse(b"{").unwrap_err().starts_with("not an Alertmanager webhook payload"));
        assert!(parse(br#"{"version":"3","alerts":[]}"#).unwrap_err().contains("version"));
        assert!(parse(br#"{"version":"4","alerts":[{"status":"maybe","labels":{"alertname":"x"}}]}"#).is_err());
        assert!(
            parse(br#"{"version":"4","alerts":[{"status":"firing","labels":{}}]}"#).unwrap_err().contains("alertname")
        );
    }

    #[test]
    fn alerts_fire_until_resolved_or_expired() {
        let mut store = Store::new(Span(3_600_000));
        let sel = store.add_selector(Selector::parse(r#"ALERTS{alertname="SecurityIncident"}"#).unwrap());
        let mut alerts = Alerts::default();
        alerts.update(parse(BODY.as_bytes()).unwrap(), Timestamp(0), &mut store);
        assert_eq!(store.last(sel, At::new(Timestamp(0))), Some(1.0));
        // Without an expiry, an alert sent once fires until resolved: still there hours later,
        // as Alertmanager re-sends only every repeat_interval.
        for minute in 1..=240 {
            alerts.refresh(Timestamp(minute * 60_000), None, &mut store);
        }
        assert_eq!(store.last(sel, At::new(Timestamp(240 * 60_000))), Some(1.0));
        // With alert_expiry, one not re-sent for longer is gone.
        let expiry = Some(Span(300_000));
        let t = 241 * 60_000;
        alerts.update(parse(BODY.as_bytes()).unwrap(), Timestamp(t), &mut store);
        alerts.refresh(Timestamp(t + 240_000), expiry, &mut store);
        assert_eq!(store.last(sel, At::new(Timestamp(t + 240_000))), Some(1.0));
        alerts.refresh(Timestamp(t + 301_000), expiry, &mut store);
        assert_eq!(store.last(sel, At::new(Timestamp(t + 301_000))), None);
        assert!(alerts.firing().is_empty());
        // Resolved explicitly.
        alerts.update(parse(BODY.as_bytes()).unwrap(), Timestamp(t + 400_000), &mut store);
        let resolved = BODY.replace(r#""status":"firing","labels""#, r#""status":"resolved","labels""#);
        alerts.update(parse(resolved.as_bytes()).unwrap(), Timestamp(t + 410_000), &mut store);
        assert_eq!(store.last(sel, At::new(Timestamp(t + 410_000))), None);
    }
}
