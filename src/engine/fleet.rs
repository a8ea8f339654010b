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
    for m in members {
        let (l, served) = lane(refused.clone());
        lanes.insert(m.name.clone(), l);
        let parts = Parts { served: Some(served), listener: None, client: Some(client.clone()), ..m.parts };
        let stop = all_stop.clone();
        let name = m.name;
        let config = m.config;
        engines.spawn(async move {
            let span = tracing::info_span!("deployment", name = %name);
            let ran = tracing::Instrument::instrument(run_one(config, parts, stop), span).await;
            (name, ran)
        });
    }
    let shared =
        Shared { lanes: Arc::new(Lanes::fleet(lanes, front.route_alerts_by)), token: front.token, forward: None };
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
    failed.map_or(Ok(()), Err)
}
