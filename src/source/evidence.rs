//! The evidence: everything rollwatch has seen of the deployment, in one owner — the window store
//! (every series' samples), the targets' series (up or down, and the string fields of their
//! health bodies), the alerts firing from the hook, and where the deployed version's evidence
//! starts (its deploy, or a rollback's restore point).
//!
//! Sources write to it only through its own methods: a poll's [`observe`](Evidence::observe),
//! an alert update ([`update_alerts`](Evidence::update_alerts)), the alerts' upkeep each tick
//! ([`refresh_alerts`](Evidence::refresh_alerts)), a fixture's [`sample`](Evidence::sample) and
//! [`stale`](Evidence::stale) mark, a checkpoint's series. The evaluator that reads it
//! (`rules::Evaluator`, which holds it: its rules' selectors are registered in this store) marks
//! each evaluation ([`watch`](Evidence::watch)) and moves where the version's evidence starts
//! ([`restart`](Evidence::restart), with its own rule states) — nothing else writes it.

use std::collections::HashMap;

use super::alertmanager::{AlertUpdate, Alerts};
use super::{Observation, TargetSeries};
use crate::selector::SeriesKey;
use crate::time::{Span, Timestamp};
use crate::window::{SavedTotals, Store};

/// How often the store drops series that stopped reporting.
const GC_EVERY: Span = Span(60_000);

/// The window store, the targets' series, the firing alerts, and where the version's evidence
/// starts.
#[derive(Debug)]
pub struct Evidence {
    store: Store,
    targets: TargetSeries,
    alerts: Alerts,
    /// Where the current version's evidence starts (its deploy, or a rollback's restore point).
    since: Option<Timestamp>,
    /// When the store next drops series that stopped reporting.
    next_gc: Timestamp,
}

impl Evidence {
    /// The evidence kept in `store` (its selectors registered): nothing seen yet.
    pub fn new(store: Store) -> Evidence {
        Evidence {
            store,
            targets: TargetSeries::default(),
            alerts: Alerts::default(),
            since: None,
            next_gc: Timestamp(i64::MIN),
        }
    }

    /// The window store, to read.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the current version's evidence starts, if a deploy is known.
    pub fn since(&self) -> Option<Timestamp> {
        self.since
    }

    /// The latest string fields of each target that is up (`version`), by target.
    pub fn fields(&self) -> &HashMap<String, Vec<(String, String)>> {
        &self.targets.strings
    }

    /// Names of the alerts firing now.
    pub fn firing_alerts(&self) -> Vec<String> {
        self.alerts.firing()
    }

    /// A poll: its samples into the store; a target down, or a series gone from its scrape,
    /// ends its series (stale), so they read as unknown.
    pub fn observe(&mut self, obs: &Observation) {
        self.targets.apply(obs, &mut self.store);
    }

    /// An Alertmanager webhook's updates at `now`: firing alerts (re)start, resolved ones end.
    /// Returns the changes (a re-sent alert is none).
    pub fn update_alerts(&mut self, updates: Vec<AlertUpdate>, now: Timestamp) -> Vec<AlertUpdate> {
        self.alerts.update(updates, now, &mut self.store)
    }

    /// Each tick, before the evaluation: firing alerts stay present as 1; with an `expiry`,
    /// those not re-sent for that long end.
    pub fn refresh_alerts(&mut self, now: Timestamp, expiry: Option<Span>) {
        self.alerts.refresh(now, expiry, &mut self.store);
    }

    /// A fixture's sample.
    pub fn sample(&mut self, key: &SeriesKey, at: Timestamp, value: f64) {
        self.store.push(key, at, value);
    }

    /// A fixture's stale marker: the series ends at `at`.
    pub fn stale(&mut self, key: &SeriesKey, at: Timestamp) {
        self.store.mark_stale(key, at);
    }

    /// A checkpoint's series put back (samples oldest first), with the running totals an
    /// earlier run kept of it (an SLO's long windows), when given.
    pub fn restore_series(
        &mut self,
        key: &SeriesKey,
        samples: &[(Timestamp, f64)],
        zero_since: Option<Timestamp>,
        totals: Option<&SavedTotals>,
    ) {
        self.store.restore_series(key, samples, zero_since);
        if let Some(totals) = totals {
            self.store.restore_totals(key, totals);
        }
    }

    /// A checkpoint's watched stretches: this run resumes at `now` after them (the time
    /// between is not watched).
    pub fn resume(&mut self, past: impl IntoIterator<Item = (Timestamp, Timestamp)>, now: Timestamp) {
        self.store.resume(past, now);
    }

    /// An evaluation at `now`: the store was watched until `now`; every [`GC_EVERY`], series
    /// that stopped reporting are dropped.
    pub fn watch(&mut self, now: Timestamp) {
        self.store.watch(now);
        if now >= self.next_gc {
            self.store.collect_garbage(now);
            self.next_gc = now.plus(GC_EVERY);
        }
    }

    /// The deployed version's evidence starts at `at` (called by the evaluator, which restarts
    /// its rule states with it).
    pub fn restart(&mut self, at: Timestamp) {
        self.since = Some(at);
    }

    /// A config reload: takes over `old`'s samples, targets' series, alerts and evidence start,
    /// answering to this evidence's selectors and retention from now on.
    pub fn adopt(&mut self, old: Evidence) {
        let fresh = std::mem::replace(&mut self.store, old.store);
        self.store.adopt_selectors_of(fresh);
        self.targets = old.targets;
        self.alerts = old.alerts;
        self.since = old.since;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::window::At;

    fn obs(at: i64, up: bool) -> Observation {
        Observation {
            target: "api".into(),
            critical: false,
            at: Timestamp(at),
            up,
            duration_secs: 0.01,
            samples: vec![(SeriesKey::new("m", [("target".to_string(), "api".to_string())]), 5.0)],
            strings: vec![("version".into(), "v1".into())],
            bad_lines: 0,
            dropped: 0,
            error: None,
        }
    }

    #[test]
    fn sources_write_through_its_methods_and_a_reload_keeps_it() {
        let mut store = Store::new(Span(600_000));
        let m = store.add_selector(Selector::parse(r#"m{target="api"}"#).unwrap());
        let mut ev = Evidence::new(store);
        ev.observe(&obs(0, true));
        assert_eq!(ev.store().last(m, At::new(Timestamp(0))), Some(5.0));
        assert_eq!(ev.fields()["api"], vec![("version".to_string(), "v1".to_string())]);
        let alert =
            AlertUpdate { key: SeriesKey::new("ALERTS", [("alertname".to_string(), "X".to_string())]), firing: true };
        assert_eq!(ev.update_alerts(vec![alert.clone()], Timestamp(0)).len(), 1);
        assert!(ev.update_alerts(vec![alert], Timestamp(1000)).is_empty(), "a re-sent alert is no change");
        ev.restart(Timestamp(500));

        // A reload: new selectors, the same data.
        let mut store = Store::new(Span(600_000));
        let alerts = store.add_selector(Selector::parse(r#"ALERTS{alertname="X"}"#).unwrap());
        let mut reloaded = Evidence::new(store);
        reloaded.adopt(ev);
        assert_eq!(reloaded.since(), Some(Timestamp(500)));
        assert_eq!(reloaded.firing_alerts(), vec![r#"ALERTS{alertname="X"}"#.to_string()]);
        reloaded.refresh_alerts(Timestamp(2000), None);
        assert_eq!(reloaded.store().last(alerts, At::new(Timestamp(2000))), Some(1.0));
        reloaded.observe(&obs(3000, false));
        assert!(reloaded.fields().is_empty(), "a target down has no fields");
        reloaded.refresh_alerts(Timestamp(3000), Some(Span(1000)));
        assert!(reloaded.firing_alerts().is_empty(), "expired");
    }
}
