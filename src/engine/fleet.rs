//! A fleet in one process: one [`Engine`](super::run) per deployment, each its own task with its
//! own pollers, evaluator, acting core, journal (under `state_dir/NAME/`) and ticker, so that one
//! deployment's outage, slow target or failed step never delays another's evaluation or
//! rollback; one server in front of them all ([`server::Lanes`]), which routes commands by
//! `?deployment=NAME` and alerts by their routing label.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::{EngineError, Parts, lane, run as run_one};
use crate::config::deploy::Config;
use crate::coord::share::{Holding, Share};
use crate::secret::Secret;
use crate::server::{self, Lanes, Shared};

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
        engines.spawn(async move {
            // At every level: a fleet's warnings and errors name their deployment.
            let span = tracing::error_span!("deployment", name = %name);
            let ran = tracing::Instrument::instrument(run_one(config, parts, stop), span).await;
            (name, ran)
        });
    }
    let (stop_share, share_stopped) = watch::channel(false);
    let sharing = share.clone().map(|share| {
        let statuses: BTreeMap<_, _> = tell.iter().map(|(n, (_, status))| (n.clone(), status.clone())).collect();
        // A deployment whose rollback is in flight here is never given up.
        let busy =
            Box::new(move |name: &str| statuses.get(name).is_some_and(|s| s.borrow().acting.in_flight.is_some()));
        let tell = tell.into_iter().map(|(n, (tx, _))| (n, tx)).collect();
        tokio::spawn(share.run(tell, busy, share_stopped))
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
    let _ = stop_all.send(true);
    while let Some(joined) = engines.join_next().await {
        if let Ok(ended) = joined {
            note(ended);
        }
    }
    let _ = stop_server.send(true);
    let _ = server.await;
    // Last: this replica leaves the share (its deployments' leases are revoked by their engines).
    let _ = stop_share.send(true);
    if let Some(task) = sharing {
        let _ = task.await;
    }
    failed.map_or(Ok(()), Err)
}
