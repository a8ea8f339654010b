//! rollwatch's own endpoints (axum): `/healthz`, `/metrics` and `/status` read the latest
//! [`Snapshot`]; `POST /hooks/alertmanager` takes an Alertmanager webhook (version 4) and hands
//! its alerts to the engine; `POST /hooks/deploy` (`{"version": "v2"}`) reports a deploy;
//! `POST /approve/{id}[?by=]`, `/reject/{id}?reason=[&by=]`, `/pause[?for=D]`, `/resume`,
//! `/silence/{rule}?for=D`, `/unsilence/{rule}`, `/annotate/{id}?root_cause=` and `/versions/{version}/mark?state=good|bad&reason=`
//! are commands to the dispatcher. A bearer token
//! protects every POST when configured. Among replicas (`[ha]`) a POST to a replica that
//! does not lead is sent on to the leader ([`to_leader`]). The token (and `run` refuses to listen beyond loopback without one):
//! a forged alert or approval must not roll back production. [`serve`] holds connections to
//! [`Limits`]: a header timeout, an idle timeout, and a cap at which idle connections make room
//! for newcomers ([`slots`]), so connections that only hold a slot never lock out a command.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, watch};

use crate::act::{Command, CommandRequest};
use crate::secret::Secret;
use crate::source::alertmanager::{self, AlertUpdate};
use crate::status::Snapshot;

pub mod slots;

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    /// The deployments served: one, or a fleet's several.
    pub lanes: Arc<Lanes>,
    pub token: Option<Secret>,
    /// With `[ha]`: requests that change state are sent on to the leader.
    pub forward: Option<Forward>,
}

/// One deployment's engine, as the server reaches it: its snapshot, its alerts, its commands.
#[derive(Clone)]
pub struct Lane {
    pub status: watch::Receiver<Arc<Snapshot>>,
    pub alerts: mpsc::Sender<Vec<AlertUpdate>>,
    pub commands: mpsc::Sender<CommandRequest>,
}

/// The deployments this process serves: one unnamed (a `rollwatch.toml` without
/// `deployments`), or a fleet's, by name, with the label that routes alerts among them.
pub struct Lanes {
    lanes: std::collections::BTreeMap<String, Lane>,
    /// `Some(label)` in a fleet.
    route_by: Option<String>,
    /// Alerts that named no known deployment (applied to none).
    unrouted: std::sync::atomic::AtomicU64,
    /// The unknown deployment names already logged (bounded).
    told: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

/// At most this many unknown deployment names are remembered as logged.
const TOLD_CAP: usize = 1024;

impl Lanes {
    /// One deployment, as before fleets: every alert and command is its.
    pub fn one(lane: Lane) -> Lanes {
        Lanes {
            lanes: [(String::new(), lane)].into(),
            route_by: None,
            unrouted: Default::default(),
            told: Default::default(),
        }
    }

    /// A fleet's deployments by name; alerts go to the one their label `route_by` names.
    pub fn fleet(lanes: std::collections::BTreeMap<String, Lane>, route_by: String) -> Lanes {
        Lanes { lanes, route_by: Some(route_by), unrouted: Default::default(), told: Default::default() }
    }

    /// The lane a request names (`deployment`), or why not: a fleet of several needs a name;
    /// one deployment without a name takes none.
    pub fn lane(&self, name: Option<&str>) -> Result<&Lane, (StatusCode, String)> {
        let names = || self.lanes.keys().cloned().collect::<Vec<_>>().join(", ");
        match (name.filter(|n| !n.is_empty()), &self.route_by) {
            (None, _) if self.lanes.len() == 1 => Ok(self.lanes.values().next().expect("one lane")),
            (None, _) => Err((
                StatusCode::BAD_REQUEST,
                format!("say which deployment: ?deployment=NAME (or \"deployment\" in the body), one of {}", names()),
            )),
            (Some(n), None) => Err((
                StatusCode::NOT_FOUND,
                format!("no deployment named {n:?}: this rollwatch watches one deployment, without a name"),
            )),
            (Some(n), Some(_)) => self.lanes.get(n).ok_or_else(|| {
                let hint = crate::diag::did_you_mean(n, self.lanes.keys().map(String::as_str));
                (StatusCode::NOT_FOUND, format!("no deployment named {n:?}{hint} (deployments: {})", names()))
            }),
        }
    }

    /// Alerts split among the deployments their routing label names; those naming no known
    /// deployment are counted, logged once per name, and applied to none. One deployment
    /// without a name takes every alert.
    pub fn route(&self, updates: Vec<AlertUpdate>) -> Vec<(&Lane, Vec<AlertUpdate>)> {
        let Some(label) = &self.route_by else {
            return self.lanes.values().next().map(|l| (l, updates)).into_iter().collect();
        };
        let mut routed: std::collections::BTreeMap<&str, Vec<AlertUpdate>> = Default::default();
        for u in updates {
            let name = u.key.label(label).to_string();
            match self.lanes.get_key_value(&name) {
                Some((key, _)) => routed.entry(key.as_str()).or_default().push(u),
                None => {
                    self.unrouted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
                    if told.len() < TOLD_CAP && told.insert(name.clone()) {
                        tracing::warn!(
                            label = %label,
                            deployment = %crate::template::terminal(&name),
                            alert = %u.key,
                            "an alert names no known deployment: applied to none (counted in rollwatch_alerts_unrouted_total)"
                        );
                    }
                }
            }
        }
        routed.into_iter().filter_map(|(n, u)| self.lanes.get(n).map(|l| (l, u))).collect()
    }

    /// Whether this serves a fleet (named deployments).
    pub fn is_fleet(&self) -> bool {
        self.route_by.is_some()
    }

    /// Alerts applied to no deployment so far.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The deployments by name, with their latest snapshots.
    pub fn snapshots(&self) -> Vec<(String, Arc<Snapshot>)> {
        self.lanes.iter().map(|(n, l)| (n.clone(), l.status.borrow().clone())).collect()
    }
}

/// How a replica that does not act sends commands and hooks on to the one that does.
#[derive(Clone)]
pub struct Forward {
    pub leaders: Leaders,
    pub client: reqwest::Client,
}

/// Who acts, among replicas: the leader of the one deployment, or each deployment's holder in
/// a fleet shared among replicas.
#[derive(Clone)]
pub enum Leaders {
    One(Arc<crate::coord::Coordinator>),
    Fleet(Arc<crate::coord::share::Share>),
}

/// Marks a request one replica sent on to another (it is not sent on again).
pub const FORWARDED_BY: &str = "x-rollwatch-forwarded-by";

/// How long a follower waits for the leader's answer, per try (two tries: within the CLI's 10 s).
const FORWARD_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(4);

/// The largest body a replica sends on (axum's own limit for the hooks).
const FORWARD_LIMIT: usize = 2 * 1024 * 1024;

/// The routes.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/status/{name}", get(deployment_status))
        .route("/hooks/alertmanager", post(hook))
        .route("/hooks/deploy", post(deploy_hook))
        .route("/approve/{id}", post(approve))
        .route("/reject/{id}", post(reject))
        .route("/versions/{version}/mark", post(mark))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/silence/{rule}", post(silence))
        .route("/unsilence/{rule}", post(unsilence))
        .route("/annotate/{id}", post(annotate))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), to_leader))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), authorize))
        .with_state(shared)
}

/// Every POST is checked ([`unauthorized`]) before its body is read: a caller without the token
/// cannot hold a connection busy by sending a body slowly.
async fn authorize(State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.method() == axum::http::Method::POST
        && let Some(denied) = unauthorized(&s, req.headers())
    {
        return denied;
    }
    next.run(req).await
}

/// Among replicas, a request that changes state (a command, a deploy, alerts) goes to the
/// replica that acts on its deployment, whichever replica it reached (behind a Service it
/// reaches any): a replica that does not act checks it as it would its own, sends it on once
/// and answers with the actor's reply — a command is applied once, by the replica that acts.
/// Alerts are also applied where they arrive; in a shared fleet they go to every replica (an
/// alert may name deployments held by several), each applying those of its own deployments.
/// Without an actor (an election under way, etcd down): 503, try again.
async fn to_leader(State(s): State<Shared>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(f) = s.forward.clone() else { return next.run(req).await };
    if req.method() != axum::http::Method::POST {
        return next.run(req).await;
    }
    let alerts = req.uri().path() == "/hooks/alertmanager";
    let named = Query::<Which>::try_from_uri(req.uri()).ok().and_then(|q| q.0.deployment);
    if matches!(f.leaders, Leaders::One(_)) && f.acts_here(&s, None) {
        return next.run(req).await;
    }
    if let Some(denied) = unauthorized(&s, req.headers()) {
        return denied;
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORWARD_LIMIT).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response();
    };
    let local = || next.run(axum::extract::Request::from_parts(parts.clone(), axum::body::Body::from(bytes.clone())));
    let me = f.me();
    if alerts && let Leaders::Fleet(share) = &f.leaders {
        let answer = local().await;
        if !forwarded {
            for peer in share.peers() {
                let request = f.request(&peer.address, &path, &parts.headers, &me, bytes.clone());
                tokio::spawn(async move {
                    if let Err(e) = request.send().await {
                        tracing::warn!(replica = %peer.replica, error = %crate::error_chain(&e), "alerts not passed on to a replica: it applies them when Alertmanager sends them again");
                    }
                });
            }
        }
        return answer;
    }
    // A fleet's deploy hook names its deployment in the body.
    let named = named.or_else(|| serde_json::from_slice::<DeployBody>(&bytes).ok().and_then(|b| b.deployment));
    if f.acts_here(&s, named.as_deref()) || s.lanes.lane(named.as_deref()).is_err() {
        return local().await;
    }
    if forwarded {
        if alerts {
            return local().await;
        }
        let text = format!("replica {me} does not act on it either (its holder is changing): try again\n");
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    }
    let Some(leader) = f.leader(named.as_deref()) else {
        if alerts {
            let _ = local().await;
        }
        let text = format!("no replica acts on it now{}: nothing done, try again\n", f.why_none());
        return (StatusCode::SERVICE_UNAVAILABLE, text).into_response();
    };
    // Two tries at most, each short: a leader stalled (stopped, overloaded) must not hold the
    // caller — the second try goes to whoever leads by then.
    let mut leader = leader;
    for attempt in 0..2 {
        let request = f.request(&leader.address, &path, &parts.headers, &me, bytes.clone());
        match request.send().await {
            Ok(r) => {
                if alerts {
                    let _ = local().await;
                }
                let code = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let text = r.text().await.unwrap_or_default();
                return (code, [("x-rollwatch-leader", leader.replica)], text).into_response();
            }
            Err(e) if !alerts && f.acts_here(&s, named.as_deref()) => {
                // This replica came to lead while it waited: it answers itself.
                tracing::info!(error = %e, "the old leader did not answer; this replica leads now and answers");
                return local().await;
            }
            Err(e) => {
                let next = f.leader(named.as_deref()).filter(|l| *l != leader);
                if attempt == 0
                    && let Some(next) = next
                {
                    leader = next;
                    continue;
                }
                if alerts {
                    let _ = local().await;
                }
                // Refused before it was sent: nothing done. Sent and unanswered: unknown.
                let text = if e.is_connect() {
                    format!(
                        "the leader {} at {} cannot be reached ({}): nothing done; try again\n",
                        leader.replica,
                        leader.address,
                        crate::error_chain(&e)
                    )
                } else {
                    format!(
                        "the leader {} at {} did not answer within {} s ({}): whether it applied the request is unknown (its /status shows what it did); try again\n",
                        leader.replica,
                        leader.address,
                        FORWARD_ATTEMPT.as_secs(),
                        crate::error_chain(&e)
                    )
                };
                return (StatusCode::SERVICE_UNAVAILABLE, [("x-rollwatch-leader", leader.replica)], text)
                    .into_response();
            }
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, "no replica answered: try again\n").into_response()
}

impl Forward {
    /// This replica's name.
    fn me(&self) -> String {
        match &self.leaders {
            Leaders::One(c) => c.me().replica.clone(),
            Leaders::Fleet(share) => share.me().replica.clone(),
        }
    }

    /// Whether this replica acts on the deployment named (`None`: the only one).
    fn acts_here(&self, s: &Shared, name: Option<&str>) -> bool {
        match &self.leaders {
            Leaders::One(c) => c.leading(),
            Leaders::Fleet(_) => s.lanes.lane(name).is_ok_and(|l| l.status.borrow().may_act),
        }
    }

    /// Who acts on the deployment named, when another replica does, as last seen.
    fn leader(&self, name: Option<&str>) -> Option<crate::coord::Leader> {
        let me = self.me();
        let leader = match &self.leaders {
            Leaders::One(c) => c.status().leader,
            Leaders::Fleet(share) => name.and_then(|n| share.holder(n)),
        };
        leader.filter(|l| l.replica != me)
    }

    /// Why nobody acts, when the coordinator knows (etcd's error).
    fn why_none(&self) -> String {
        match &self.leaders {
            Leaders::One(c) => c.status().error.map(|e| format!(" ({e})")).unwrap_or_default(),
            Leaders::Fleet(_) => String::new(),
        }
    }

    /// The request sent on to the replica at `address`, marked as sent on by `me`.
    fn request(
        &self,
        address: &str,
        path: &str,
        headers: &HeaderMap,
        me: &str,
        body: Bytes,
    ) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(format!("{}{path}", address.trim_end_matches('/')))
            .header(FORWARDED_BY, me)
            .timeout(FORWARD_ATTEMPT)
            .body(body);
        for name in [header::CONTENT_TYPE, header::AUTHORIZATION] {
            if let Some(v) = headers.get(&name) {
                request = request.header(name, v);
            }
        }
        request
    }
}

/// How much of rollwatch the own server may use, and how a flood of connections that send
/// nothing is kept from locking out the operator: at most `max_connections` open (so a flood
/// cannot take the file descriptors the pollers need), the one idle the longest closed to let a
/// newcomer in ([`slots`]); a request's header must arrive within `header_timeout` — the first
/// request's from the connection's start, each next one's from the end of the last response (the
/// idle keep-alive timeout); and a connection lives at most `connection_lifetime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: std::time::Duration,
    pub connection_lifetime: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: std::time::Duration::from_secs(5),
            connection_lifetime: std::time::Duration::from_secs(30),
        }
    }
}

/// Serves until `shutdown` turns true, within `limits`. Connections closed for the cap (an
/// idle one evicted for a newcomer, or a newcomer refused when every slot is busy) are counted
/// in `refused`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
    refused: Arc<std::sync::atomic::AtomicU64>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let app = router(shared);
    let slots = slots::Slots::new(limits.max_connections, slots::GRACE);
    // Every connection's task, reaped as they end and cut off at shutdown.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // At the cap with no connection idle for the grace yet, newcomers wait in the kernel's
        // backlog (in order: a client's request arrives there, and is read once accepted).
        let changed = slots.changed();
        let room = slots.room();
        let accept = async {
            match room {
                slots::Room::Now => return listener.accept().await.map(Some),
                slots::Room::In(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = changed => {}
                    }
                }
                slots::Room::Later => changed.await,
            }
            // Asked again.
            Ok(None)
        };
        let accepted = tokio::select! {
            a = accept => a,
            Some(_) = connections.join_next() => continue,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok(None) => continue,
            Ok(Some((stream, _))) => stream,
            Err(e) => {
                // Out of file descriptors (or the like): back off; the pollers come first.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A second descriptor of the socket, for the slots to see whether a request waits in it.
        let probe = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok().map(std::net::TcpStream::from);
        let Some((ticket, evicted, admission)) = slots.admit(probe) else {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("connection refused: over the cap by the reserve");
            drop(stream);
            continue;
        };
        tracing::debug!(?admission, open = slots.open(), "connection admitted");
        if admission == slots::Admission::Evicted {
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let ticket = Arc::new(ticket);
        let app = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            // The header is complete: busy until the response was handed over whole.
            let busy = ticket.busy();
            let response = hyper::service::Service::call(&app, req);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| WhileSending { body, _busy: busy }))
            }
        });
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                ended = tokio::time::timeout(limits.connection_lifetime, connection) => match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "connection ended"),
                    Err(_) => tracing::debug!("connection cut at its lifetime"),
                },
                _ = evicted => tracing::debug!("connection evicted"),
            }
        });
        // The new connection's task first: a request already sent is read before the next
        // newcomer could evict it.
        tokio::task::yield_now().await;
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A response body that keeps its connection busy (not to be evicted) until it was sent.
struct WhileSending {
    body: axum::body::Body,
    _busy: slots::Busy,
}

impl hyper::body::Body for WhileSending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    let text = if s.lanes.is_fleet() {
        crate::status::fleet::metrics(&s.lanes.snapshots(), s.lanes.unrouted())
    } else {
        s.lanes.snapshots().first().map(|(_, snap)| snap.metrics()).unwrap_or_default()
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// Whether a browser asks (for the HTML page rather than JSON).
fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"))
}

/// JSON for machines; a small HTML page when a browser asks. A fleet's lists its deployments,
/// each linking its own (`/status/NAME`).
async fn status(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if s.lanes.is_fleet() {
        let list = crate::status::fleet::overview(&s.lanes.snapshots(), s.lanes.unrouted());
        if wants_html(&headers) {
            return Html(list.page()).into_response();
        }
        return axum::Json(list).into_response();
    }
    match s.lanes.lane(None) {
        Ok(lane) => one_status(lane, &headers),
        Err((code, text)) => (code, format!("{text}\n")).into_response(),
    }
}

/// `/status/NAME`: one deployment's page (what `/status` is for one deployment).
async fn deployment_status(State(s): State<Shared>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    match s.lanes.lane(Some(&name)) {
        Ok(lane) => one_status(lane, &headers),
        Err((code, text)) => (code, format!("{text}\n")).into_response(),
    }
}

/// One deployment's status, JSON or HTML.
fn one_status(lane: &Lane, headers: &HeaderMap) -> Response {
    let snap = lane.status.borrow().clone();
    if !wants_html(headers) {
        return axum::Json(snap.as_ref().clone()).into_response();
    }
    let page = snap.page();
    Html(page).into_response()
}

/// Whether the request says its body is `application/json`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// `Some(refusal)` unless the request may change state: with a configured token, it must carry
/// it (401); without one (loopback only), it must be `application/json` (a browser page cannot
/// send that cross-site without a preflight) and come from no foreign `Origin` (403) — a web page
/// must not pause rollwatch or forge an alert.
fn unauthorized(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest).trim_end_matches('/');
        if origin_host != host {
            return Some(
                (StatusCode::FORBIDDEN, format!("cross-origin request from {origin} refused\n")).into_response(),
            );
        }
    }
    let Some(token) = s.token.as_ref() else {
        if !is_json(headers) {
            return Some(
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "send Content-Type: application/json (the CLI does)\n")
                    .into_response(),
            );
        }
        return None;
    };
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.0.as_bytes())) {
        None
    } else {
        Some((StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response())
    }
}

/// Which deployment a command is for: `?deployment=NAME` (needed when there are several).
#[derive(serde::Deserialize)]
struct Which {
    deployment: Option<String>,
}

/// Hands a command to the deployment's engine and answers with its reply.
async fn command(s: &Shared, headers: &HeaderMap, which: &Which, cmd: Command) -> Response {
    if let Some(denied) = unauthorized(s, headers) {
        return denied;
    }
    let lane = match s.lanes.lane(which.deployment.as_deref()) {
        Ok(lane) => lane,
        Err((code, text)) => return (code, format!("{text}\n")).into_response(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if lane.commands.send((cmd, tx)).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(text)) => (StatusCode::OK, format!("{text}\n")).into_response(),
        Ok(Err(text)) => (StatusCode::CONFLICT, format!("{text}\n")).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

#[derive(serde::Deserialize)]
struct For {
    #[serde(rename = "for")]
    for_: Option<String>,
}

/// The `?for=` duration, if given; a malformed one is the caller's 400.
fn span_of(q: &For) -> Result<Option<crate::time::Span>, String> {
    q.for_.as_deref().map(crate::time::parse_duration).transpose().map_err(|e| format!("for: {e}"))
}

fn bad_request(s: &Shared, headers: &HeaderMap, message: String) -> Response {
    unauthorized(s, headers).unwrap_or_else(|| (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response())
}

/// Who answers, and why: `?by=alice&reason=...` (`by` defaults to `api`).
#[derive(serde::Deserialize)]
struct Answer {
    by: Option<String>,
    reason: Option<String>,
    state: Option<String>,
}

impl Answer {
    fn by(&self) -> String {
        self.by.clone().filter(|b| !b.trim().is_empty()).unwrap_or_else(|| "api".into())
    }
}

async fn approve(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<Answer>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    command(&s, &headers, &w, Command::Approve { id, by: q.by() }).await
}

async fn reject(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<Answer>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    match q.reason.clone().filter(|r| !r.trim().is_empty()) {
        Some(reason) => command(&s, &headers, &w, Command::Reject { id, by: q.by(), reason }).await,
        None => bad_request(&s, &headers, "say why: ?reason=...".into()),
    }
}

async fn mark(
    State(s): State<Shared>,
    Path(version): Path<String>,
    Query(q): Query<Answer>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    let Some(state) = q.state.as_deref().and_then(crate::act::event::Mark::parse) else {
        return bad_request(&s, &headers, "state must be good or bad: ?state=good&reason=...".into());
    };
    match q.reason.clone().filter(|r| !r.trim().is_empty()) {
        Some(reason) => command(&s, &headers, &w, Command::Mark { version, state, by: q.by(), reason }).await,
        None => bad_request(&s, &headers, "say why: ?reason=...".into()),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    version: String,
    /// In a fleet: which deployment (`{"deployment": "api", "version": "v2"}`).
    #[serde(default)]
    deployment: Option<String>,
    /// `hook` (a pipeline, the default) or `command` (`rollwatch deployed`).
    #[serde(default)]
    source: Option<String>,
}

/// `POST /hooks/deploy` with `{"version": "v2"}` as `application/json`.
async fn deploy_hook(State(s): State<Shared>, Query(w): Query<Which>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = unauthorized(&s, &headers) {
        return denied;
    }
    if !is_json(&headers) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "send the deploy as application/json: {\"version\": \"v2\"}\n")
            .into_response();
    }
    match parse_deploy(&body) {
        Ok((version, source)) => {
            // A fleet's deploy names its deployment in the body (or as ?deployment=).
            let named = serde_json::from_slice::<DeployBody>(&body).ok().and_then(|b| b.deployment);
            let w = Which { deployment: named.or(w.deployment) };
            command(&s, &headers, &w, Command::Deployed { version, source }).await
        }
        Err(message) => (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    }
}

/// A deploy hook's body: `{"version": "v2"}` (optionally `"source": "hook" | "command"`), the
/// version 1 to 256 printable characters. An error says what is wrong (for a 400 reply).
pub fn parse_deploy(body: &[u8]) -> Result<(String, crate::act::event::DeploySource), String> {
    let parsed: DeployBody =
        serde_json::from_slice(body).map_err(|e| format!("not a deploy: {e} (send {{\"version\": \"v2\"}})"))?;
    let source = match parsed.source.as_deref() {
        None | Some("hook") => crate::act::event::DeploySource::Hook,
        Some("command") => crate::act::event::DeploySource::Command,
        Some(other) => return Err(format!("source must be hook or command, not {other:?}")),
    };
    let version = parsed.version.trim().to_string();
    crate::act::versions::check_version(&version)?;
    Ok((version, source))
}

async fn pause(State(s): State<Shared>, Query(q): Query<For>, Query(w): Query<Which>, headers: HeaderMap) -> Response {
    match span_of(&q) {
        Ok(for_) => command(&s, &headers, &w, Command::Pause { for_ }).await,
        Err(e) => bad_request(&s, &headers, e),
    }
}

async fn resume(State(s): State<Shared>, Query(w): Query<Which>, headers: HeaderMap) -> Response {
    command(&s, &headers, &w, Command::Resume).await
}

async fn silence(
    State(s): State<Shared>,
    Path(rule): Path<String>,
    Query(q): Query<For>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    match span_of(&q) {
        Ok(Some(for_)) => command(&s, &headers, &w, Command::Silence { rule, for_ }).await,
        Ok(None) => bad_request(&s, &headers, "say how long: ?for=30m".into()),
        Err(e) => bad_request(&s, &headers, e),
    }
}

#[derive(serde::Deserialize)]
struct RootCause {
    root_cause: Option<String>,
}

async fn annotate(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<RootCause>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    match q.root_cause.filter(|r| !r.trim().is_empty()) {
        Some(root_cause) => command(&s, &headers, &w, Command::Annotate { id, root_cause }).await,
        None => bad_request(&s, &headers, "say what the root cause was: ?root_cause=...".into()),
    }
}

async fn unsilence(
    State(s): State<Shared>,
    Path(rule): Path<String>,
    Query(w): Query<Which>,
    headers: HeaderMap,
) -> Response {
    command(&s, &headers, &w, Command::Unsilence { rule }).await
}

async fn hook(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(denied) = unauthorized(&s, &headers) {
        return denied;
    }
    match alertmanager::parse(&body) {
        Ok(updates) => {
            let n = updates.len();
            let routed = s.lanes.route(updates);
            let applied: usize = routed.iter().map(|(_, u)| u.len()).sum();
            for (lane, updates) in routed {
                if lane.alerts.send(updates).await.is_err() {
                    return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
                }
            }
            let alerts = if n == 1 { "alert" } else { "alerts" };
            let text = if applied == n {
                format!("accepted {n} {alerts}\n")
            } else {
                let unknown = n - applied;
                let names = if unknown == 1 { "names" } else { "name" };
                format!("accepted {applied} of {n} {alerts} ({unknown} {names} no known deployment)\n")
            };
            (StatusCode::OK, text).into_response()
        }
        Err(message) => (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with short timeouts and a cap of `max`; returns its address and the shutdown.
    async fn start(max: usize) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_status_tx, status) = watch::channel(Arc::new(Snapshot::default()));
        let (alerts, _) = mpsc::channel(1);
        let (commands, _) = mpsc::channel(1);
        let lanes = Arc::new(Lanes::one(Lane { status, alerts, commands }));
        let shared = Shared { lanes, token: None, forward: None };
        let limits = Limits {
            max_connections: max,
            header_timeout: Duration::from_millis(300),
            connection_lifetime: Duration::from_secs(30),
        };
        let (stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, shared, shutdown, limits, Arc::default()));
        (addr, stop)
    }

    /// Reads until the server closes the connection (end of stream or reset); panics after 5 s.
    async fn closed_by_server(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return got,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => panic!("still open after 5 s; read {:?}", String::from_utf8_lossy(&got)),
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_sends_no_header_is_closed_and_so_is_an_idle_keep_alive() {
        let (addr, _stop) = start(8).await;
        let watch = crate::time::Stopwatch::start();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(closed_by_server(&mut silent).await.is_empty());
        let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        closed_by_server(&mut partial).await;
        // After a response, the next request's header has the same time: the idle timeout.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let text = String::from_utf8(closed_by_server(&mut idle).await).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("ok\n"), "{text}");
        assert!(watch.elapsed_secs() < 4.0, "the timeouts are 300 ms: {}", watch.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_connections_beyond_the_cap_never_keep_a_request_out() {
        let (addr, _stop) = start(4).await;
        // Three times the cap, opened and held (the oldest are evicted as more arrive).
        let mut held = Vec::new();
        for _ in 0..12 {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for i in 0..20 {
            let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
            let text = String::from_utf8(closed_by_server(&mut sock).await).unwrap();
            assert!(text.starts_with("HTTP/1.1 200 OK"), "request {i}: {text:?}");
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
    }

    /// A lane whose receivers are dropped (only routing is looked at).
    fn lane() -> Lane {
        let (_status_tx, status) = watch::channel(Arc::new(Snapshot::default()));
        Lane { status, alerts: mpsc::channel(1).0, commands: mpsc::channel(1).0 }
    }

    fn alert(labels: &[(&str, &str)]) -> AlertUpdate {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        AlertUpdate { key: crate::selector::SeriesKey::new("ALERTS", labels), firing: true }
    }

    #[test]
    fn a_fleet_names_its_deployment_and_one_deployment_needs_no_name() {
        let one = Lanes::one(lane());
        assert!(one.lane(None).is_ok());
        assert_eq!(one.lane(Some("api")).err().map(|e| e.0), Some(StatusCode::NOT_FOUND));
        let two = Lanes::fleet([("api".to_string(), lane()), ("web".to_string(), lane())].into(), "deployment".into());
        let (code, text) = two.lane(None).err().unwrap();
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(text.contains("one of api, web"), "{text}");
        assert!(two.lane(Some("web")).is_ok());
        assert_eq!(two.lane(Some("db")).err().map(|e| e.0), Some(StatusCode::NOT_FOUND));
        // A fleet of one needs no name either.
        let single = Lanes::fleet([("api".to_string(), lane())].into(), "deployment".into());
        assert!(single.lane(None).is_ok());
    }

    #[test]
    fn alerts_are_routed_by_their_label_and_the_rest_counted_never_applied_to_all() {
        let lanes = Lanes::fleet([("api".to_string(), lane()), ("web".to_string(), lane())].into(), "service".into());
        let updates = vec![
            alert(&[("alertname", "A"), ("service", "web")]),
            alert(&[("alertname", "B"), ("service", "api")]),
            alert(&[("alertname", "C"), ("service", "web")]),
            alert(&[("alertname", "D"), ("service", "db")]),
            alert(&[("alertname", "E"), ("deployment", "api")]),
        ];
        let routed = lanes.route(updates);
        let sizes: Vec<usize> = routed.iter().map(|(_, u)| u.len()).collect();
        assert_eq!(sizes, [1, 2], "api gets B, web gets A and C");
        assert_eq!(lanes.unrouted(), 2, "D names an unknown deployment, E none (by this label)");
        // One deployment without a name takes every alert, routing label or not.
        let one = Lanes::one(lane());
        assert_eq!(one.route(vec![alert(&[("alertname", "A"), ("deployment", "x")])]).len(), 1);
        assert_eq!(one.unrouted(), 0);
    }

    #[tokio::test]
    async fn a_post_without_its_token_is_refused_before_its_body_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_status_tx, status) = watch::channel(Arc::new(Snapshot::default()));
        let (alerts, _) = mpsc::channel(1);
        let (commands, _) = mpsc::channel(1);
        let token = Some(Secret("t".into()));
        let lanes = Arc::new(Lanes::one(Lane { status, alerts, commands }));
        let shared = Shared { lanes, token, forward: None };
        let (_stop, shutdown) = watch::channel(false);
        tokio::spawn(serve(listener, shared, shutdown, Limits::default(), Arc::default()));
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        // A body announced and never sent: the answer comes anyway.
        sock.write_all(b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
            .await
            .unwrap();
        let text = String::from_utf8(closed_by_server(&mut sock).await).unwrap();
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    }
}
