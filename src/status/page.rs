//! `/status` for people: one self-contained HTML page (no script from elsewhere, nothing
//! fetched, works offline), refreshing itself every 5 seconds, readable on a phone. Per profile
//! the verdict with its path, the deployed and last good versions; each signal with its value
//! and a sparkline of its recent evaluations against its rules' thresholds; the rules with state,
//! for how long and value; the rollback in flight, open approvals with the exact commands,
//! recent rollbacks and escalations; targets with the age of their last good poll and last error.
//! Numbers are written for people ([`crate::template::Unit`]); `/status` as JSON keeps them raw.

use std::fmt::Write;

use super::Snapshot;
use crate::act::procedure::StepState;
use crate::template::{Unit, html as esc, show};
use crate::time::{Span, Timestamp, human, iso};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0 auto;padding:0 12px 24px;max-width:980px;color:#222}\
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.4em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse;width:100%;font-size:.92em}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top}\
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;color:#fff;font-weight:bold}\
.rollback{background:#c0392b}.consider{background:#d68910}.monitor{background:#27ae60}\
.firing{color:#c0392b;font-weight:bold}.pending{color:#b7950b;font-weight:bold}.unknown{color:#7f8c8d;font-weight:bold}.down{color:#c0392b;font-weight:bold}\
.alert{background:#fdecea;border:1px solid #c0392b;padding:6px 10px;border-radius:4px}code{background:#f4f4f4;padding:1px 4px}\
@media (max-width:600px){td,th{padding:2px 3px}.wide{display:none}}";

impl Snapshot {
    /// The page at this snapshot.
    pub fn page(&self) -> String {
        let now = self.at;
        let a = &self.acting;
        let mut p = String::new();
        let _ = write!(
            p,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <meta http-equiv=\"refresh\" content=\"5\"><title>rollwatch{}</title><style>{STYLE}</style></head><body>\
             <h1>rollwatch{} <small>at {}</small></h1>",
            self.deployment.as_deref().map(|d| format!(": {}", esc(d))).unwrap_or_default(),
            self.deployment
                .as_deref()
                .map(|d| format!(": {} <small><a href=\"/status\">all deployments</a></small>", esc(d)))
                .unwrap_or_default(),
            esc(&iso(now))
        );
        // A fleet's deployment another replica holds: this page is what this replica last saw.
        if self.deployment.is_some()
            && let Some(ha) = &self.ha
            && let Some(l) = ha.leader.as_ref().filter(|l| l.replica != ha.replica)
        {
            let _ = write!(
                p,
                "<p class=\"alert\" id=\"parked\"><b>NOT HELD HERE</b>: replica {} holds this deployment \
                 (<a href=\"{}/status/{}\">its page</a>); what follows is what this replica saw when it \
                 last held it, not current.</p>",
                esc(&l.replica),
                esc(&l.address),
                esc(self.deployment.as_deref().unwrap_or_default())
            );
        }
        if let Some(e) = &a.journal_error {
            let _ = write!(
                p,
                "<p class=\"alert\" id=\"journal-error\"><b>NOT ACTING: journal unwritable</b> — {}</p>",
                esc(e)
            );
        }
        if let Some(c) = self.clock.filter(|c| c.disagrees) {
            let ahead = (c.system_ahead_seconds * 1000.0) as i64;
            let _ = write!(
                p,
                "<p class=\"alert\" id=\"clock\"><b>CLOCK</b>: the system clock is {} {} rollwatch's timeline{}. \
                 rollwatch keeps its own: samples, windows, <code>for</code>, cooldowns, pauses and silences are \
                 not moved by a step of the system clock; the dates shown and journalled are rollwatch's.</p>",
                human(Span(ahead.abs())),
                if ahead > 0 { "ahead of" } else { "behind" },
                c.since.map(|t| format!(" (since {})", esc(&iso(t)))).unwrap_or_default(),
            );
        }
        if let Some(until) = a.paused_until {
            let until = if until.0 == i64::MAX { "resumed".to_string() } else { iso(until) };
            let _ = write!(p, "<p class=\"alert\"><b>PAUSED</b> until {}</p>", esc(&until));
        }
        // Silences: a silenced rule is read as not firing by the decision trees.
        if !a.silences.is_empty() {
            p.push_str("<p id=\"silences\"><b>SILENCED</b> (the trees go on without them):");
            for (rule, until) in &a.silences {
                let _ = write!(p, " <b>{}</b> until {};", esc(rule), esc(&crate::act::gate::until_text(*until)));
            }
            p.push_str("</p>");
        }
        // Held back: why each profile's decision is not acted on.
        for (profile, reason) in &a.suppressed {
            let _ = write!(p, "<p class=\"alert suppressed\"><b>HELD BACK</b> {}: {}</p>", esc(profile), esc(reason));
        }
        // Replicas: this one's role and who leads.
        if let Some(ha) = &self.ha {
            let leader = ha
                .leader
                .as_ref()
                .map_or("nobody".to_string(), |l| format!("{} ({})", esc(&l.replica), esc(&l.address)));
            let class = if matches!(ha.role, crate::coord::Role::Unreachable | crate::coord::Role::Rebuilding) {
                " class=\"alert\""
            } else {
                ""
            };
            let _ = write!(
                p,
                "<p id=\"replica\"{class}>replica <b>{}</b>: <b id=\"role\">{}</b>{} · leader <b id=\"leader\">{leader}</b>{}</p>",
                esc(&ha.replica),
                ha.role,
                ha.since.map(|t| format!(" for {}", ago(now, t))).unwrap_or_default(),
                ha.error.as_deref().map(|e| format!(" — {}", esc(e))).unwrap_or_default(),
            );
        }
        // Versions.
        let _ = write!(
            p,
            "<p id=\"versions\">mode <b>{}</b> · deployed <b id=\"version\">{}</b>{} · last good <b id=\"last-good\">{}</b> · rollback target <b id=\"target\">{}</b></p>",
            esc(&a.mode),
            esc(a.version.as_deref().unwrap_or("unknown")),
            a.deployed_at.map(|t| format!(" since {} ({} ago)", esc(&iso(t)), ago(now, t))).unwrap_or_default()
                + &a.version_seen
                    .as_deref()
                    .filter(|seen| a.version.as_deref() != Some(*seen))
                    .map(|seen| format!(
                        " (the version source reads <b id=\"version-seen\">{}</b>: not recorded yet)",
                        esc(seen)
                    ))
                    .unwrap_or_default(),
            esc(a.last_good.as_deref().unwrap_or("none yet")),
            esc(a.target_version.as_deref().unwrap_or("none")),
        );
        // Verdicts.
        p.push_str("<h2>Verdict</h2><table id=\"decisions\">");
        for d in &self.decisions {
            let values: Vec<String> = d
                .firing
                .iter()
                .map(|r| format!("{} = {}", esc(&r.rule), esc(&self.rule_value(&r.rule, r.value))))
                .collect();
            let _ = write!(
                p,
                "<tr><td><b>{}</b></td><td><span class=\"verdict {o}\">{o}</span>{}</td><td>{}{}{}</td></tr>",
                esc(&d.profile),
                a.in_flight
                    .as_ref()
                    .filter(|f| f.profile == d.profile)
                    .map(|f| format!(" <span class=\"verdict rollback\">{} {}</span>", esc(&f.rollback_id), f.phase))
                    .unwrap_or_default(),
                esc(&d.explained_for(a.version.as_deref())),
                if values.is_empty() { String::new() } else { format!("<br>firing: {}", values.join(", ")) },
                if d.unknown.is_empty() {
                    String::new()
                } else {
                    format!("<br>no data for: {}", esc(&d.unknown.join(", ")))
                },
                o = d.outcome,
            );
        }
        p.push_str("</table>");
        // Signals with sparklines (none: no table — an SLO-only profile reads no signal).
        if !self.signals.is_empty() {
            p.push_str("<h2>Signals</h2><table id=\"signals\"><tr><th>signal</th><th>now</th><th>recent</th><th class=\"wide\">thresholds</th></tr>");
            for (name, value) in &self.signals {
                let unit = self.unit(name);
                let history =
                    self.signal_history.get(name).map(|h| h.iter().copied().collect::<Vec<_>>()).unwrap_or_default();
                let thresholds = self.thresholds.get(name).map(Vec::as_slice).unwrap_or_default();
                let listed: Vec<String> = thresholds
                    .iter()
                    .map(|(rule, cmp, v)| format!("{} {} {}", esc(rule), esc(cmp), unit.show(*v)))
                    .collect();
                let _ = write!(
                    p,
                    "<tr class=\"signal\" data-signal=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"wide\">{}</td></tr>",
                    esc(name),
                    esc(name),
                    value.map(|v| unit.show(v)).unwrap_or_else(|| "no data".into()),
                    sparkline(&history, thresholds),
                    listed.join("<br>")
                );
            }
            p.push_str("</table>");
        }
        // SLOs: budget remaining, burn rate per alert window against its factor, budget sparkline.
        if !self.slos.is_empty() {
            p.push_str("<h2>SLOs</h2><table id=\"slos\"><tr><th>SLO</th><th>budget remaining</th><th>budget</th><th class=\"wide\">burn rate (alert factor)</th></tr>");
            for s in &self.slos {
                let r = &s.reading;
                let pct = |v: f64| format!("{}%", crate::template::number((v * 10_000.0).round() / 100.0));
                let history: Vec<Option<f64>> = s.budget_history.iter().copied().collect();
                let burns: Vec<String> = r
                    .burn_rates
                    .iter()
                    .map(|b| {
                        // Over the lower factor of the window's rows: that row's alert is over.
                        let lowest = b.also.as_ref().map_or(b.factor, |a| a.factor);
                        let over = b.burn_rate.is_some_and(|v| v > lowest);
                        let factor = |f: f64| crate::template::number((f * 100.0).round() / 100.0);
                        let also =
                            b.also.as_ref().map(|a| format!(", {}× {}", factor(a.factor), a.alert)).unwrap_or_default();
                        format!(
                            "<span class=\"{}\">{}: {} ({}× {}{also})</span>",
                            if over { "over" } else { "under" },
                            b.window,
                            b.burn_rate
                                .map(|v| format!("{}×", crate::template::number((v * 100.0).round() / 100.0)))
                                .unwrap_or_else(|| "no data".into()),
                            factor(b.factor),
                            b.alert
                        )
                    })
                    .collect();
                let _ = write!(
                    p,
                    "<tr class=\"slo\" data-slo=\"{}\"><td>{} ({} over {})</td><td>{}</td><td>{}</td><td class=\"wide\">{}</td></tr>",
                    esc(&r.name),
                    esc(&r.name),
                    pct(r.objective),
                    r.period,
                    r.budget_remaining.map(pct).unwrap_or_else(|| "no data".into()),
                    sparkline(&history, &[]),
                    burns.join("<br>")
                );
            }
            p.push_str("</table>");
        }
        // Rules.
        p.push_str("<h2>Rules</h2><table id=\"rules\"><tr><th>rule</th><th>state</th><th>for</th><th>value</th></tr>");
        for r in &self.rules {
            let coverage: String =
                r.coverage.iter().map(|c| format!("<br><small>{}</small>", esc(&c.to_string()))).collect();
            // Unknown is said as unknown: the state it holds meanwhile is not a verdict.
            let state = if r.unknown {
                let missing = if r.no_data.is_empty() {
                    String::new()
                } else {
                    format!(", no data for {}", esc(&r.no_data.join(", ")))
                };
                format!("<td class=\"unknown\">unknown <small>(holds {}{missing})</small></td>", esc(&r.state))
            } else {
                format!("<td class=\"{s}\">{s}</td>", s = esc(&r.state))
            };
            let _ = write!(
                p,
                "<tr class=\"rule\" data-rule=\"{}\"><td>{}{coverage}</td>{state}<td>{}</td><td>{}</td></tr>",
                esc(&r.name),
                esc(&r.name),
                r.since.map(|t| ago(now, t)).unwrap_or_default(),
                esc(&r.value.map(|v| r.unit.show(v)).unwrap_or_else(|| "no data".into())),
            );
        }
        p.push_str("</table>");
        // Acting: in flight, approvals, history, escalations.
        p.push_str("<h2>Acting</h2>");
        match &a.in_flight {
            Some(f) => {
                let _ = write!(
                    p,
                    "<p id=\"in-flight\">rollback <b>{}</b> of {} ({} → {}): <b>{}</b>, started {} ago{}</p>",
                    esc(&f.rollback_id),
                    esc(&f.profile),
                    esc(f.version_from.as_deref().unwrap_or("?")),
                    esc(f.target_version.as_deref().unwrap_or("?")),
                    f.phase,
                    ago(now, f.started_at),
                    f.verify_until.map(|t| format!("; verifying until {}", esc(&iso(t)))).unwrap_or_default()
                );
                p.push_str("<ol id=\"steps\">");
                for step in &f.steps {
                    let mark = match step.state {
                        StepState::Waiting => "waiting",
                        StepState::Running => "running…",
                        StepState::Done => "done",
                        StepState::Failed => "FAILED",
                    };
                    let _ = write!(p, "<li class=\"step\">{} — {mark}</li>", esc(&step.what));
                }
                p.push_str("</ol>");
            }
            // A replica that does not act knows the leader's rollback from the shared log.
            None => {
                match a.recent_rollbacks.iter().rfind(|r| r.result == "in_flight").filter(|_| a.standby.is_some()) {
                    Some(r) => {
                        let _ = write!(
                            p,
                            "<p id=\"in-flight\">rollback <b>{}</b> of {} ({} → {}) in flight <b>on the leader</b> since {}; steps recorded: {}</p>",
                            esc(&r.id),
                            esc(&r.profile),
                            esc(r.version_from.as_deref().unwrap_or("?")),
                            esc(&r.to()),
                            esc(&r.date),
                            if r.steps.is_empty() { "none yet".to_string() } else { esc(&r.steps.join("; ")) },
                        );
                    }
                    None => p.push_str("<p>no rollback in flight</p>"),
                }
            }
        }
        for ap in &a.approvals {
            let (approve, reject) = a.approval_commands.get(&ap.approval_id).cloned().unwrap_or_default();
            let _ = write!(
                p,
                "<p class=\"alert approval\">approval <b>{}</b> needed for {} ({}): {}<br>grant: <code>{}</code><br>reject: <code>{}</code></p>",
                esc(&ap.approval_id),
                esc(&ap.profile),
                esc(ap.version.as_deref().unwrap_or("?")),
                esc(&ap.reason),
                esc(&approve),
                esc(&reject)
            );
        }
        p.push_str("<table id=\"history\"><tr><th>rollback</th><th>when</th><th>versions</th><th>result</th><th class=\"wide\">reason</th></tr>");
        for e in a.recent_rollbacks.iter().rev() {
            let _ = write!(
                p,
                "<tr class=\"rollback-row\"><td>{}</td><td>{}</td><td>{} → {}</td><td>{}{}</td><td class=\"wide\">{}</td></tr>",
                esc(&e.id),
                esc(&e.date),
                esc(e.version_from.as_deref().unwrap_or("?")),
                esc(&e.to()),
                esc(&e.result.replace('_', " ")),
                e.duration.as_deref().map(|d| format!(" in {}", esc(d))).unwrap_or_default(),
                esc(&e.reason)
            );
        }
        p.push_str("</table>");
        if !a.recent_escalations.is_empty() {
            p.push_str("<h2>Escalations</h2><ul id=\"escalations\">");
            for e in a.recent_escalations.iter().rev() {
                let _ = write!(
                    p,
                    "<li>{} ago — <b>{}</b>: {}</li>",
                    ago(now, e.at),
                    e.escalation.severity,
                    esc(&e.escalation.finding)
                );
            }
            p.push_str("</ul>");
        }
        // Targets.
        p.push_str("<h2>Targets</h2><table id=\"targets\"><tr><th>target</th><th>state</th><th>last good poll</th><th class=\"wide\">last error</th></tr>");
        for t in &self.targets {
            let state = match t.up {
                Some(true) => "<span>up</span>",
                Some(false) => "<span class=\"down\">DOWN</span>",
                None => "<span>not polled yet</span>",
            };
            let _ = write!(
                p,
                "<tr><td>{}</td><td>{state}</td><td>{}</td><td class=\"wide\">{}</td></tr>",
                esc(&t.name),
                t.last_ok_at.map(|at| format!("{} ago", ago(now, at))).unwrap_or_else(|| "never".into()),
                esc(t.last_error.as_deref().unwrap_or(""))
            );
        }
        p.push_str("</table></body></html>\n");
        p
    }
}

impl Snapshot {
    /// What a signal measures (its name's guess when the profile did not say).
    fn unit(&self, signal: &str) -> Unit {
        self.units.get(signal).copied().unwrap_or_else(|| Unit::of(signal))
    }

    /// A rule's value as people read it, in the rule's unit.
    fn rule_value(&self, rule: &str, value: Option<f64>) -> String {
        match self.rules.iter().find(|r| r.name == rule) {
            Some(r) => value.map(|v| r.unit.show(v)).unwrap_or_else(|| "no data".into()),
            None => show(rule, value),
        }
    }
}

/// An inline SVG sparkline of `values` (gaps where there was no data), with the thresholds as
/// dashed lines.
fn sparkline(values: &[Option<f64>], thresholds: &[(String, String, f64)]) -> String {
    const W: f64 = 160.0;
    const H: f64 = 32.0;
    let known: Vec<f64> = values.iter().flatten().copied().chain(thresholds.iter().map(|t| t.2)).collect();
    let mut out = format!(
        "<svg class=\"sparkline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\">"
    );
    // Nothing seen: said, not an empty box (or thresholds over nothing).
    if values.iter().all(Option::is_none) {
        let _ = write!(out, "<text x=\"2\" y=\"20\" font-size=\"11\" fill=\"#7f8c8d\">no data</text></svg>");
        return out;
    }
    let lo = known.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = known.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi - lo < 1e-12 { (lo - 1.0, hi + 1.0) } else { (lo, hi) };
    let n = values.len().max(2) as f64 - 1.0;
    let x = |i: usize| 1.0 + i as f64 / n * (W - 2.0);
    let y = |v: f64| 2.0 + (hi - v) / (hi - lo) * (H - 4.0);
    for (_, _, v) in thresholds {
        let _ = write!(
            out,
            "<line x1=\"0\" y1=\"{0:.1}\" x2=\"{W}\" y2=\"{0:.1}\" stroke=\"#8e44ad\" stroke-dasharray=\"3 2\"/>",
            y(*v)
        );
    }
    let mut run = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, out: &mut String| {
        match run.as_slice() {
            [] => {}
            // A lone reading between gaps is a dot: a one-point line draws nothing.
            [(x, y)] => {
                let _ = write!(out, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2\" fill=\"#2471a3\"/>");
            }
            points => {
                let points: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = write!(
                    out,
                    "<polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"1.5\" points=\"{}\"/>",
                    points.join(" ")
                );
            }
        }
        run.clear();
    };
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => run.push((x(i), y(*v))),
            None => flush(&mut run, &mut out),
        }
    }
    flush(&mut run, &mut out);
    out.push_str("</svg>");
    out
}

/// How long ago `then` was at `now`, for people.
fn ago(now: Timestamp, then: Timestamp) -> String {
    human(Span(now.0.saturating_sub(then.0).max(0)))
}
