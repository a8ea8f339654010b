//! A fleet's `/status` and `/metrics`: every deployment on one list (its version, its verdict,
//! the rollback in flight), each linking its own page (`/status/NAME`, what `/status` is for
//! one deployment); the metrics of every deployment merged into one exposition, each sample
//! labelled `deployment="NAME"`, plus the alerts that named no known deployment.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

use super::Snapshot;
use crate::time::Timestamp;

/// The fleet at a glance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Overview {
    pub deployments: Vec<Row>,
    /// Alerts that named no known deployment, applied to none.
    pub alerts_unrouted_total: u64,
}

/// One deployment's line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub name: String,
    /// Its own page (`/status/NAME`).
    pub page: String,
    pub version: Option<String>,
    /// The gravest outcome of its profiles' latest decisions (`none` before the first tick).
    pub verdict: String,
    pub rollback_in_flight: Option<String>,
    pub paused: bool,
    /// Why its decision is held back (each profile's reason, `; `-joined), when it is.
    pub held_back: Option<String>,
    pub may_act: bool,
    /// Among replicas (`[ha]`): the replica that holds it (polls and acts on it), as known here.
    pub held_by: Option<String>,
    /// Among replicas: whether this replica holds it. One held elsewhere shows no version,
    /// verdict or hold here — what this replica last saw of it is not current (its holder's
    /// page is).
    pub held_here: Option<bool>,
    pub ticks_total: u64,
    pub at: Timestamp,
}

/// The overview of the deployments' latest snapshots.
pub fn overview(snapshots: &[(String, Arc<Snapshot>)], unrouted: u64) -> Overview {
    let deployments = snapshots
        .iter()
        .map(|(name, s)| {
            let held_by = s.ha.as_ref().and_then(|h| h.leader.as_ref()).map(|l| l.replica.clone());
            let held_here = s.ha.as_ref().map(|h| held_by.as_ref().is_none_or(|by| *by == h.replica));
            let current = held_here != Some(false);
            Row {
                name: name.clone(),
                page: format!("/status/{name}"),
                version: s.acting.version.clone().filter(|_| current),
                verdict: match s.decisions.iter().map(|d| d.outcome).max() {
                    Some(o) if current => o.to_string(),
                    _ => "none".to_string(),
                },
                rollback_in_flight: s.acting.in_flight.as_ref().map(|f| f.rollback_id.clone()).filter(|_| current),
                paused: current && s.acting.paused_until.is_some_and(|until| until > s.at),
                held_back: (current && !s.acting.suppressed.is_empty())
                    .then(|| s.acting.suppressed.values().cloned().collect::<Vec<_>>().join("; ")),
                may_act: s.may_act,
                held_by,
                held_here,
                ticks_total: s.ticks_total,
                at: s.at,
            }
        })
        .collect();
    Overview { deployments, alerts_unrouted_total: unrouted }
}

impl Overview {
    /// The page for people: a table of deployments, each linking its page; refreshes itself.
    pub fn page(&self) -> String {
        use crate::template::html;
        let mut out = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
             <meta name=\"viewport\" content=\"width=device-width\"><title>rollwatch: deployments</title>\
             <style>body{font-family:sans-serif;margin:1em}td,th{padding:.2em .8em;text-align:left}\
             .rollback{color:#b00;font-weight:bold}.consider{color:#b60}</style></head><body>\
             <h1>rollwatch: deployments</h1><table><tr><th>deployment</th><th>version</th><th>verdict</th>\
             <th>rollback in flight</th><th>acting</th><th>held by</th></tr>",
        );
        for r in &self.deployments {
            let elsewhere = r.held_here == Some(false);
            let acting = match (r.may_act, r.paused, &r.held_back) {
                _ if elsewhere => "no: held by another replica".to_string(),
                (_, true, _) => "paused".to_string(),
                (true, false, Some(why)) => format!("held back: {}", html(why)),
                (true, false, None) => "yes".to_string(),
                (false, false, _) => "no".to_string(),
            };
            let see = format!("see {}", r.held_by.as_deref().unwrap_or("its holder"));
            let _ = write!(
                out,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{acting}</td><td>{}</td></tr>",
                html(&r.page),
                html(&r.name),
                html(if elsewhere { &see } else { r.version.as_deref().unwrap_or("unknown") }),
                html(&r.verdict),
                html(if elsewhere { &see } else { &r.verdict }),
                html(r.rollback_in_flight.as_deref().unwrap_or("")),
                html(r.held_by.as_deref().unwrap_or("")),
            );
        }
        let _ = write!(
            out,
            "</table><p>Alerts naming no known deployment: {}</p></body></html>",
            self.alerts_unrouted_total
        );
        out
    }
}

/// The deployments' metrics as one exposition: each family once (its `HELP` and `TYPE`, then
/// every deployment's samples), each sample labelled with its deployment.
pub fn metrics(snapshots: &[(String, Arc<Snapshot>)], unrouted: u64) -> String {
    // Family name → (header lines, samples), in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (name, snap) in snapshots {
        let text = snap.metrics();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ").or_else(|| line.strip_prefix("# TYPE ")) {
                current = rest.split_whitespace().next().unwrap_or_default().to_string();
                let entry = families.entry(current.clone()).or_insert_with(|| {
                    order.push(current.clone());
                    (Vec::new(), Vec::new())
                });
                if !entry.0.iter().any(|l| l == line) {
                    entry.0.push(line.to_string());
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = with_label(line, name);
            let family = if current.is_empty() { sample_name(line).to_string() } else { current.clone() };
            families
                .entry(family.clone())
                .or_insert_with(|| {
                    order.push(family.clone());
                    (Vec::new(), Vec::new())
                })
                .1
                .push(sample);
        }
    }
    let mut out = String::new();
    for family in order {
        let (headers, samples) = &families[&family];
        for l in headers.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    let _ = writeln!(
        out,
        "# HELP rollwatch_alerts_unrouted_total Alerts whose routing label named no known deployment (applied to none).\n\
         # TYPE rollwatch_alerts_unrouted_total counter\nrollwatch_alerts_unrouted_total {unrouted}"
    );
    out
}

/// A sample's metric name (up to its labels or value).
fn sample_name(line: &str) -> &str {
    line.split(['{', ' ']).next().unwrap_or_default()
}

/// A sample line with `deployment="NAME"` added first among its labels. (Names are checked at
/// load: letters, digits, `-`, `_`, `.`; nothing to escape.)
fn with_label(line: &str, deployment: &str) -> String {
    let name = sample_name(line);
    let rest = &line[name.len()..];
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{deployment=\"{deployment}\"{labels}"),
        Some(labels) => format!("{name}{{deployment=\"{deployment}\",{labels}"),
        None => format!("{name}{{deployment=\"{deployment}\"}}{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_names_its_deployment_and_each_family_is_listed_once() {
        let a = Arc::new(Snapshot { ticks_total: 3, ..Snapshot::default() });
        let b = Arc::new(Snapshot { ticks_total: 5, ..Snapshot::default() });
        let text = metrics(&[("api".into(), a), ("web".into(), b)], 2);
        let ticks: Vec<&str> = text.lines().filter(|l| l.starts_with("rollwatch_ticks_total")).collect();
        assert_eq!(
            ticks,
            ["rollwatch_ticks_total{deployment=\"api\"} 3", "rollwatch_ticks_total{deployment=\"web\"} 5"],
            "{text}"
        );
        let types = text.lines().filter(|l| *l == "# TYPE rollwatch_ticks_total counter").count();
        assert_eq!(types, 1, "{text}");
        assert!(text.contains("rollwatch_alerts_unrouted_total 2"), "{text}");
        // Every sample line carries a deployment, but the unrouted count (process-wide).
        for l in text.lines().filter(|l| !l.starts_with('#') && !l.starts_with("rollwatch_alerts_unrouted_total")) {
            assert!(l.contains("deployment=\""), "{l}");
        }
    }

    /// A deployment whose rollback is held back says why on the fleet's page, escaped.
    #[test]
    fn a_held_back_deployment_says_why_on_the_fleet_page() {
        let mut held = Snapshot { may_act: true, ..Snapshot::default() };
        held.acting.suppressed.insert("api".into(), "cooldown after rb-1 until <soon>".into());
        let free = Snapshot { may_act: true, ..Snapshot::default() };
        let page = overview(&[("api".into(), Arc::new(held)), ("web".into(), Arc::new(free))], 0).page();
        assert!(page.contains("<td>held back: cooldown after rb-1 until &lt;soon&gt;</td>"), "{page}");
        assert!(page.contains("<td>yes</td>"), "{page}");
    }

    /// A deployment another replica holds shows none of what this replica last saw of it (its
    /// version then, its verdict, its hold): it names its holder.
    #[test]
    fn a_deployment_held_elsewhere_shows_nothing_stale() {
        let ha = |leader: &str| crate::coord::HaStatus {
            replica: "r2".into(),
            role: crate::coord::Role::Follower,
            leader: Some(crate::coord::Leader { replica: leader.into(), address: "http://r".into() }),
            term: None,
            error: None,
            since: None,
        };
        let mut parked = Snapshot { ha: Some(ha("r1")), ..Snapshot::default() };
        parked.acting.version = Some("v1".into());
        parked.acting.suppressed.insert("api".into(), "cooldown after rb-1".into());
        let mut mine = Snapshot { ha: Some(ha("r2")), may_act: true, ..Snapshot::default() };
        mine.acting.version = Some("v7".into());
        let o = overview(&[("api".into(), Arc::new(parked)), ("web".into(), Arc::new(mine))], 0);
        assert_eq!((o.deployments[0].held_here, o.deployments[0].version.as_deref()), (Some(false), None));
        assert_eq!(o.deployments[0].held_back, None);
        assert_eq!((o.deployments[1].held_here, o.deployments[1].version.as_deref()), (Some(true), Some("v7")));
        let page = o.page();
        assert!(page.contains("<td>see r1</td>") && !page.contains("cooldown"), "{page}");
        assert!(page.contains("no: held by another replica"), "{page}");
    }

    #[test]
    fn a_label_goes_first_whatever_the_sample_has() {
        assert_eq!(with_label("x 1", "a"), "x{deployment=\"a\"} 1");
        assert_eq!(with_label("x{} 1", "a"), "x{deployment=\"a\"} 1");
        assert_eq!(with_label("x{r=\"q\"} 1", "a"), "x{deployment=\"a\",r=\"q\"} 1");
    }
}
