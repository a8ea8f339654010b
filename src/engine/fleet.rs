//! A fleet in one process: one [`Engine`](super::run) per deployment, each its own task with its
//! own pollers, evaluator, acting core, journal (under `state_dir/NAME/`) and ticker, so that one
//! deployment's outage, slow target or failed step never delays another's evaluation or
//! rollback; one server in front of them all ([`server::Lanes`]), which routes commands by
//! `?deployment=NAME` and alerts by their routing label. Shared among replicas, a deployment
//! has an engine here only while it is held here ([`slot`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{EngineError, Parts, lane, run as run_one, run_while_held};
use crate::config::deploy::Config;
use crate::coord::share::{Holding, Phase, Share};
use crate::coord::{HaStatus, Role};
use crate::secret::Secret;
use crate::selector::SeriesKey;
use crate::server::{self, Lanes, Shared};
use crate::source::alertmanager::AlertUpdate;
use crate::status::Snapshot;
use crate::time::Timestamp;

/// One deployment of the fleet, ready to run.
pub struct Member {
    pub name: String,
    pub config: Config,
    pub parts: Parts,
}

/// What the fleet's server needs.
pub struct Front {
    pub listener: TcpListener,
    /// Bearer token required on every POST, when set.
    pub token: Option<Secret>,
    /// The alert label that names a deployment.
    pub route_alerts_by: String,
    pub max_connections: usize,
}

/// Runs every deployment and the server until `shutdown` becomes true. A deployment that
/// cannot start (its state_dir, its journal) stops the others and is the error.
pub async fn run(members: Vec<Member>, front: Front, mut shutdown: watch::Receiver<bool>) -> Result<(), EngineError> {
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // One client (one connection pool, one TLS configuration) for every deployment.
    let client = crate::source::poller::http_client()?;
    let (stop_all, all_stop) = watch::channel(false);
    let mut lanes = BTreeMap::new();
    let mut engines = tokio::task::JoinSet::new();
    // With [ha], the deployments are shared out among the replicas.
    let share = match members.first().and_then(|m| m.config.ha.clone().map(|ha| (ha, m))) {
        Some((ha, m)) => {
            let names = members.iter().map(|m| m.name.clone()).collect();
            let share = Share::new(&ha, m.config.listen, m.parts.env.as_ref(), m.parts.clock.clone(), names)?;
            tracing::info!(replica = %share.me().replica, address = %share.me().address, "sharing the fleet among replicas on etcd");
            Some(Arc::new(share))
        }
        None => None,
    };
    let mut tell = BTreeMap::new();
    for m in members {
        let (l, served) = lane(refused.clone());
        let holding = share.as_ref().map(|share| {
            let (tx, rx) = watch::channel(Holding::default());
            tell.insert(m.name.clone(), (tx, l.status.clone()));
            share.member(rx)
        });
        lanes.insert(m.name.clone(), l);
        let parts = Parts { served: Some(served), listener: None, client: Some(client.clone()), holding, ..m.parts };
        let stop = all_stop.clone();
        let name = m.name;
        let config = m.config;
        let me = share.as_ref().map(|s| s.me().replica.clone());
        engines.spawn(async move {
            // At every level: a fleet's warnings and errors name their deployment.
            let span = tracing::error_span!("deployment", name = %name);
            let ran = match me {
                Some(me) => tracing::Instrument::instrument(slot(config, parts, me, stop), span).await,
                None => tracing::Instrument::instrument(run_one(config, parts, stop), span).await,
            };
            (name, ran)
        });
    }
    let (share_phase, phase) = watch::channel(Phase::Sharing);
    let sharing = share.clone().map(|share| {
        let statuses: BTreeMap<_, _> = tell.iter().map(|(n, (_, status))| (n.clone(), status.clone())).collect();
        // A deployment whose rollback is in flight here is never given up.
        let busy =
            Box::new(move |name: &str| statuses.get(name).is_some_and(|s| s.borrow().acting.in_flight.is_some()));
        let tell = tell.into_iter().map(|(n, (tx, _))| (n, tx)).collect();
        tokio::spawn(share.run(tell, busy, phase))
    });
    let forward = share.map(|share| server::Forward { leaders: server::Leaders::Fleet(share), client: client.clone() });
    let shared = Shared { lanes: Arc::new(Lanes::fleet(lanes, front.route_alerts_by)), token: front.token, forward };
    let (stop_server, server_stopped) = watch::channel(false);
    let limits = server::Limits { max_connections: front.max_connections, ..server::Limits::default() };
    let server = tokio::spawn(server::serve(front.listener, shared, server_stopped, limits, refused));
    let mut failed: Option<EngineError> = None;
    let mut note = |(name, ran): (String, Result<(), EngineError>)| {
        if let Err(e) = ran {
            tracing::error!(deployment = %name, error = %crate::error_chain(&e), "deployment stopped");
            failed.get_or_insert(EngineError::Deployment { name, source: Box::new(e) });
        }
    };
    tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => {}
        Some(Ok(ended)) = engines.join_next() => note(ended),
    }
    // This replica leaves the share first: the others take what each engine lets go as it
    // stops, not once the last one (a rollback in flight) has.
    let _ = share_phase.send(Phase::Leaving);
    let _ = stop_all.send(true);
    while let Some(joined) = engines.join_next().await {
        if let Ok(ended) = joined {
            note(ended);
        }
    }
    let _ = stop_server.send(true);
    let _ = server.await;
    // Last: this replica's lease is revoked (each engine gave up its deployment's key).
    let _ = share_phase.send(Phase::Stopped);
    if let Some(task) = sharing {
        let _ = task.await;
    }
    failed.map_or(Ok(()), Err)
}

/// At most this many alerts are kept for a deployment parked here (the latest news of each);
/// beyond it, new alerts are not kept, and that is said once.
pub const PARKED_ALERTS: usize = 10_000;

/// One deployment of a fleet shared among replicas, for as long as the fleet runs: an engine
/// while the deployment is held here, none while it is parked here — then its lane shows who
/// holds it, keeps the alerts that come meanwhile for the engine that holds it here next, and
/// answers a command that reaches it with who holds the deployment. Memory and work follow
/// the deployments held here, not the fleet.
async fn slot(
    config: Config,
    mut parts: Parts,
    me: String,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let mut config = config;
    loop {
        let Some(alerts) = parked(&config, &mut parts, &me, &mut stop).await else { return Ok(()) };
        parts.alerts = alerts;
        // Boxed: the engine's state is allocated while it runs, not kept in every slot's task
        // (about 34 KB each) while its deployment is parked.
        match Box::pin(run_while_held(config, parts, stop.clone())).await? {
            Some((c, p)) => (config, parts) = (c, p),
            None => return Ok(()),
        }
    }
}

/// Waits, with no engine, until the share says this replica is to hold the deployment; returns
/// the alerts that came meanwhile (oldest first), or `None` at the fleet's stop.
async fn parked(
    config: &Config,
    parts: &mut Parts,
    me: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Vec<(Timestamp, AlertUpdate)>> {
    let name = config.member.as_ref().map_or("", |m| m.name.as_str());
    let (Some(member), Some(served)) = (parts.holding.as_mut(), parts.served.as_mut()) else { return Some(Vec::new()) };
    let mut kept = Meanwhile::default();
    loop {
        let holding = member.holding.borrow_and_update().clone();
        if holding.mine {
            return Some(kept.oldest_first());
        }
        show_parked(&served.status, &holding, me, parts.clock.now());
        // Its leader key still bound to this replica (an engine's give-up at its stop failed):
        // given up here, fenced by its term, or nobody else could take the deployment.
        let stuck = holding.holder.as_ref().filter(|(l, _)| l.replica == me).map(|(_, term)| *term);
        if let Some(term) = stuck
            && let Err(e) = member.seat.give_up(name, term).await
        {
            tracing::warn!(error = %e, "could not give up the leader key of a deployment parked here; trying again");
        }
        tokio::select! {
            changed = member.holding.changed() => changed.ok()?,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)), if stuck.is_some() => {}
            Some(updates) = served.alerts.recv() => kept.keep(updates, parts.clock.now()),
            Some((_, reply)) = served.commands.recv() => {
                let _ = reply.send(Err(not_held_here(name, me, &holding)));
            }
            _ = stop.wait_for(|s| *s) => return None,
        }
    }
}

/// The alerts that came for a deployment parked here: the latest news of each, with when it
/// came; at most [`PARKED_ALERTS`].
#[derive(Default)]
struct Meanwhile {
    alerts: BTreeMap<SeriesKey, (Timestamp, bool)>,
    full_told: bool,
}

impl Meanwhile {
    fn keep(&mut self, updates: Vec<AlertUpdate>, now: Timestamp) {
        for u in updates {
            if self.alerts.len() >= PARKED_ALERTS && !self.alerts.contains_key(&u.key) {
                if !std::mem::replace(&mut self.full_told, true) {
                    tracing::warn!(
                        kept = PARKED_ALERTS,
                        "parked here: too many alerts to keep for this deployment; newer ones are not kept (its holder has them)"
                    );
                }
                continue;
            }
            self.alerts.insert(u.key, (now, u.firing));
        }
    }

    /// What was kept, oldest first.
    fn oldest_first(self) -> Vec<(Timestamp, AlertUpdate)> {
        let mut alerts: Vec<_> =
            self.alerts.into_iter().map(|(key, (at, firing))| (at, AlertUpdate { key, firing })).collect();
        alerts.sort_by_key(|(at, _)| *at);
        alerts
    }
}

/// The lane of a deployment parked here: what it showed last, with who holds it now; nothing
/// decided here, and nothing this replica may do.
fn show_parked(status: &watch::Sender<Arc<Snapshot>>, holding: &Holding, me: &str, now: Timestamp) {
    status.send_if_modified(|s| {
        let ha = HaStatus {
            replica: me.to_string(),
            role: Role::Follower,
            leader: holding.holder.as_ref().map(|(l, _)| l.clone()),
            term: holding.holder.as_ref().map(|(_, t)| *t),
            error: None,
            since: s.ha.as_ref().filter(|h| h.role == Role::Follower).and_then(|h| h.since).or(Some(now)),
        };
        let holder = match &holding.holder {
            Some((l, _)) if l.replica != me => format!("replica {} ({}) holds it", l.replica, l.address),
            _ => "no replica holds it at the moment".to_string(),
        };
        let standby = Some(format!(
            "parked here: {holder}; this page shows what this replica saw when it last held it, if it did (its holder's page is current)"
        ));
        if s.ha.as_ref() == Some(&ha) && !s.may_act && s.decisions.is_empty() && s.acting.standby == standby {
            return false;
        }
        let mut parked = s.as_ref().clone();
        parked.ha = Some(ha);
        parked.may_act = false;
        parked.decisions.clear();
        parked.acting.standby = standby;
        parked.at = now;
        *s = Arc::new(parked);
        true
    });
}

/// Why a command that reached a deployment parked here is not done (the server forwards
/// commands to the holder it knows; this one came before the share was read, or meanwhile).
fn not_held_here(name: &str, me: &str, holding: &Holding) -> String {
    match &holding.holder {
        Some((l, _)) if l.replica != me => format!(
            "not done here: deployment {name:?} is held by replica {} ({}), not by this one ({me}); send it there",
            l.replica, l.address
        ),
        _ => format!(
            "not done: no replica holds deployment {name:?} at the moment (the fleet is being shared out); try again in a few seconds"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::Leader;

    fn alert(name: &str, firing: bool) -> AlertUpdate {
        let key = SeriesKey::new("ALERTS", [("alertname".to_string(), name.to_string())]);
        AlertUpdate { key, firing }
    }

    #[test]
    fn alerts_kept_while_parked_are_the_latest_of_each_oldest_first_and_bounded() {
        let mut kept = Meanwhile::default();
        kept.keep(vec![alert("A", true), alert("B", true)], Timestamp(1_000));
        kept.keep(vec![alert("A", false)], Timestamp(5_000));
        let back = kept.oldest_first();
        assert_eq!(back, vec![(Timestamp(1_000), alert("B", true)), (Timestamp(5_000), alert("A", false))]);

        let mut full = Meanwhile::default();
        full.keep((0..PARKED_ALERTS + 5).map(|i| alert(&format!("a{i}"), true)).collect(), Timestamp(1));
        full.keep(vec![alert("a0", false)], Timestamp(2));
        let back = full.oldest_first();
        assert_eq!(back.len(), PARKED_ALERTS, "no more than {PARKED_ALERTS}");
        assert_eq!(back.last(), Some(&(Timestamp(2), alert("a0", false))), "news of one kept still counts");
    }

    #[test]
    fn a_command_to_a_parked_deployment_says_who_holds_it() {
        let holder = |replica: &str| Holding {
            mine: false,
            holder: Some((Leader { replica: replica.into(), address: "http://10.0.0.2:9464".into() }, 7)),
        };
        let said = not_held_here("api", "r1", &holder("r2"));
        assert!(said.contains("held by replica r2 (http://10.0.0.2:9464)") && said.contains("send it there"), "{said}");
        let said = not_held_here("api", "r1", &Holding::default());
        assert!(said.contains("no replica holds deployment \"api\""), "{said}");
        let said = not_held_here("api", "r1", &holder("r1"));
        assert!(said.contains("no replica holds"), "a key of this replica's that no engine here stands for: {said}");
    }
}
