//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/txn`, `/v3/lease/grant`, …) and the
//! HTTP client rollwatch already has. Why not the `etcd-client` crate: its build script runs
//! `protoc`, a system tool the README's two commands must not need; leases, ranges and
//! transactions are all rollwatch uses, and the gateway serves each as one JSON request. Keys and
//! values are base64 on the wire, 64-bit integers arrive as strings, and fields at their default
//! (a `false` `succeeded`, a `0` TTL) are left out — this module hides all three.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::config::deploy::HaSpec;
use crate::secret::Secret;

/// Why an etcd call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered (down, partitioned, too slow).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// An endpoint answered with an error (auth, a request it rejects).
    #[error("etcd refused the request: {0}")]
    Refused(String),
    /// An answer that is not etcd's JSON.
    #[error("etcd answered unreadably: {0}")]
    Protocol(String),
    /// The client could not be set up (a certificate file).
    #[error("[ha]: {0}")]
    Setup(String),
}

/// One key and its value as etcd keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A transaction's condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Compare {
    /// The key's create revision is this (0: the key does not exist).
    Created(String, i64),
    /// The key's last modification is at this revision (0: the key does not exist).
    Modified(String, i64),
}

/// A transaction's operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<i64>,
    },
    Get(String),
    /// Every key in `[from, to)`.
    GetRange(String, String),
    /// The last key (by name) in `[from, to)`, without its value.
    LastKey(String, String),
    DeleteRange(String, String),
}

/// The answer to a transaction: whether its conditions held, and each operation's ranges read.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    pub ranges: Vec<Vec<Kv>>,
}

/// What etcd's answers say about etcd itself: its cluster, how far its revision got, and its
/// clock. A revision lower than one already answered before the request was sent, or a new
/// cluster id, means etcd lost data (restored from an old snapshot, a wiped member, a new
/// cluster); a `Date` far from this process's clock means one of the two clocks is wrong.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub cluster_id: Option<String>,
    /// The highest revision answered.
    pub revision: i64,
    /// Set when a revision or the cluster id went back or changed (taken by the reader).
    pub went_back: Option<String>,
    /// etcd's clock at its last answer (its `Date` header, whole seconds), and since when.
    pub date: Option<(crate::time::Timestamp, crate::time::Stopwatch)>,
}

impl Observed {
    /// How far `now` (this process's clock) is ahead of etcd's (behind: negative), as of the
    /// last answer; within a second either way reads as 0 (the header has whole seconds).
    pub fn skew(&self, now: crate::time::Timestamp) -> Option<i64> {
        let (date, since) = self.date?;
        let etcd_now = date.0 + since.elapsed().0;
        let d = now.0 - etcd_now;
        Some(if d.abs() <= 1_000 { 0 } else { d })
    }
}

/// The client: every endpoint, tried in turn from the last one that answered.
pub struct Etcd {
    client: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    auth: Option<(String, Secret)>,
    token: Mutex<Option<String>>,
    timeout: Duration,
    observed: Mutex<Observed>,
    /// A sibling's calls wait for one of these permits ([`SIBLING_CALLS`], shared by the
    /// siblings of one client): a fleet's coordinators keep a few connections busy rather
    /// than one each (about 50 KB a connection).
    limit: Option<Arc<tokio::sync::Semaphore>>,
    siblings: Arc<tokio::sync::Semaphore>,
    /// The reads of this client's siblings, sent together ([`read`](Self::read)); made with
    /// the first sibling.
    together: Arc<std::sync::OnceLock<Arc<Together>>>,
    /// This client's own: its siblings' reads go through it.
    coalesced: bool,
}

/// At most this many operations go in one transaction (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// How long reads wait for others to go with them ([`Etcd::read`]): a fleet's coordinators
/// read at the same moments, so a few milliseconds gather most.
const GATHER: Duration = Duration::from_millis(10);

/// Reads of a fleet's coordinators made at about the same time, sent to etcd as one
/// transaction of up to [`MAX_TXN_OPS`] operations: one request where there were dozens, for
/// etcd and for this process. Each reader notes what the answer says of etcd (its revision,
/// cluster and clock) as if it had asked alone.
struct Together {
    /// The client that sends them (a sibling of the share's, sharing its pool and permits).
    client: Arc<Etcd>,
    queue: Mutex<Gathering>,
}

#[derive(Default)]
struct Gathering {
    waiting: Vec<Reader>,
    /// A task sends what waits (until nothing does).
    sending: bool,
}

/// A read waiting to be sent, and where its answer goes.
type Reader = (Vec<Op>, tokio::sync::oneshot::Sender<Result<Heard, EtcdError>>);

/// One reader's part of a coalesced answer, and the answer's header, endpoint and date.
struct Heard {
    ranges: Vec<Vec<Kv>>,
    revision: i64,
    seen: Seen,
}

/// What an answer said of etcd, for [`Etcd::observe`].
#[derive(Clone)]
struct Seen {
    endpoint: String,
    header: Value,
    date: Option<std::time::SystemTime>,
}

impl Together {
    /// Sends what waits, in transactions of up to [`MAX_TXN_OPS`] operations (at once, as the
    /// client's permits allow), until nothing does.
    async fn send(self: Arc<Self>) {
        loop {
            tokio::time::sleep(GATHER).await;
            let waiting = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if q.waiting.is_empty() {
                    q.sending = false;
                    return;
                }
                std::mem::take(&mut q.waiting)
            };
            let mut batches: Vec<Vec<_>> = vec![];
            let mut ops = 0;
            for w in waiting {
                if batches.is_empty() || ops + w.0.len() > MAX_TXN_OPS {
                    batches.push(vec![]);
                    ops = 0;
                }
                ops += w.0.len();
                if let Some(b) = batches.last_mut() {
                    b.push(w);
                }
            }
            for batch in batches {
                tokio::spawn(self.client.clone().send_together(batch));
            }
        }
    }
}

/// At most this many calls of a client's siblings (a fleet's coordinators) are in flight at
/// once; the client itself (the fleet's share, which keeps the replica's lease) never waits.
pub const SIBLING_CALLS: usize = 16;

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

/// The first key after every key that starts with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".into()
}

/// A 64-bit integer as the gateway writes it (a string), or as a number; absent is 0.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn kvs(range: &Value) -> Result<Vec<Kv>, EtcdError> {
    let Some(list) = range.get("kvs").and_then(Value::as_array) else { return Ok(vec![]) };
    list.iter()
        .map(|kv| {
            let decode = |field: &str| {
                B64.decode(kv.get(field).and_then(Value::as_str).unwrap_or(""))
                    .map_err(|e| EtcdError::Protocol(format!("{field} is not base64: {e}")))
            };
            Ok(Kv {
                key: String::from_utf8_lossy(&decode("key")?).into_owned(),
                value: decode("value")?,
                create_revision: int(kv.get("create_revision")),
                mod_revision: int(kv.get("mod_revision")),
                lease: int(kv.get("lease")),
            })
        })
        .collect()
}

impl Etcd {
    /// A client for `[ha]`'s endpoints: its CA and client certificate read now, its user and
    /// password from `env` (the process environment).
    pub fn new(spec: &HaSpec, env: &dyn Fn(&str) -> Option<String>, timeout: Duration) -> Result<Etcd, EtcdError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| EtcdError::Setup(format!("cannot read {}: {e}", path.display())))
        };
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(SIBLING_CALLS + 1)
            .connect_timeout(timeout)
            .user_agent(concat!("rollwatch/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &spec.ca_file {
            let cert = reqwest::Certificate::from_pem(&read(ca)?)
                .map_err(|e| EtcdError::Setup(format!("{}: not a PEM certificate: {e}", ca.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        if let Some((cert, key)) = &spec.client_cert {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                EtcdError::Setup(format!(
                    "{} and {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| {
            EtcdError::Setup(format!(
                "the TLS files (ca_file, cert_file, key_file) cannot be used: {}",
                crate::error_chain(&e)
            ))
        })?;
        let auth = match &spec.auth_env {
            None => None,
            Some((user_var, password_var)) => {
                let get =
                    |var: &str| env(var).ok_or_else(|| EtcdError::Setup(format!("[ha]: env var {var} is not set")));
                Some((get(user_var)?, Secret(get(password_var)?)))
            }
        };
        Ok(Etcd {
            client,
            endpoints: spec.etcd.iter().map(|e| e.trim_end_matches('/').to_string()).collect(),
            current: AtomicUsize::new(0),
            auth,
            token: Mutex::new(None),
            timeout,
            observed: Mutex::new(Observed::default()),
            limit: None,
            siblings: Arc::new(tokio::sync::Semaphore::new(SIBLING_CALLS)),
            together: Arc::default(),
            coalesced: false,
        })
    }

    /// Another client of the same cluster sharing this one's connection pool and TLS setup
    /// (a fleet's coordinators: one pool, not one per deployment); what it observes of etcd
    /// (revisions, the cluster id, the clock) and its auth token are its own.
    pub fn sibling(&self) -> Etcd {
        Etcd {
            client: self.client.clone(),
            endpoints: self.endpoints.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
            auth: self.auth.clone(),
            token: Mutex::new(None),
            timeout: self.timeout,
            observed: Mutex::new(Observed::default()),
            limit: Some(self.siblings.clone()),
            siblings: self.siblings.clone(),
            together: self.together.clone(),
            coalesced: true,
        }
    }

    /// Reads (`Get`, `GetRange`, `LastKey` only): one transaction's ranges, in order. A
    /// sibling's go with the others' made at about the same time ([`Together`]); a client's
    /// own, alone.
    pub async fn read(&self, ops: Vec<Op>) -> Result<TxnResult, EtcdError> {
        let reads_only = ops.iter().all(|op| matches!(op, Op::Get(_) | Op::GetRange(..) | Op::LastKey(..)));
        if !self.coalesced || !reads_only || ops.len() > MAX_TXN_OPS {
            return self.txn(&[], &ops, &[]).await;
        }
        let together = self.together.get_or_init(|| {
            let mut client = self.sibling();
            client.coalesced = false;
            client.together = Arc::default();
            Arc::new(Together { client: Arc::new(client), queue: Mutex::default() })
        });
        let before = self.observed.lock().unwrap_or_else(|p| p.into_inner()).revision;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut q = together.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.waiting.push((ops, tx));
            !std::mem::replace(&mut q.sending, true)
        };
        if start {
            tokio::spawn(together.clone().send());
        }
        let heard = rx.await.map_err(|_| EtcdError::Unreachable("the read was dropped unanswered".into()))??;
        self.observe(&heard.seen.endpoint, before, &heard.seen.header, heard.seen.date);
        Ok(TxnResult { succeeded: true, revision: heard.revision, ranges: heard.ranges })
    }

    /// Sends reads gathered together ([`Together`]) as one transaction and answers each reader
    /// its ranges. Refused whole (an etcd with a lower `--max-txn-ops`), each is sent alone.
    async fn send_together(self: Arc<Self>, batch: Vec<Reader>) {
        let all: Vec<Op> = batch.iter().flat_map(|(ops, _)| ops.iter().cloned()).collect();
        match self.txn_seen(&[], &all, &[]).await {
            Ok((r, seen)) => {
                let mut ranges = r.ranges.into_iter();
                for (ops, reply) in batch {
                    let mine: Vec<Vec<Kv>> = ranges.by_ref().take(ops.len()).collect();
                    let heard = match mine.len() == ops.len() {
                        true => Ok(Heard { ranges: mine, revision: r.revision, seen: seen.clone() }),
                        false => Err(EtcdError::Protocol("a transaction answered fewer ranges than it read".into())),
                    };
                    let _ = reply.send(heard);
                }
            }
            Err(EtcdError::Refused(e)) if batch.len() > 1 => {
                tracing::debug!(error = %e, "reads sent together refused; sending each alone");
                for (ops, reply) in batch {
                    let heard = self.txn_seen(&[], &ops, &[]).await;
                    let _ = reply.send(heard.map(|(r, seen)| Heard { ranges: r.ranges, revision: r.revision, seen }));
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One gateway call, on the endpoint that answered last, then on each other in turn.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_seen(path, body).await.map(|(v, _)| v)
    }

    /// [`call`](Self::call), with what the answer said of etcd.
    async fn call_seen(&self, path: &str, body: &Value) -> Result<(Value, Seen), EtcdError> {
        let n = self.endpoints.len().max(1);
        let first = self.current.load(Ordering::Relaxed);
        let mut last = EtcdError::Unreachable("no endpoints".into());
        for i in 0..n {
            let at = (first + i) % n;
            match self.call_at(at, path, body).await {
                Ok(v) => {
                    self.current.store(at, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e @ EtcdError::Unreachable(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn call_at(&self, at: usize, path: &str, body: &Value) -> Result<(Value, Seen), EtcdError> {
        let endpoint = &self.endpoints[at];
        for attempt in 0..2 {
            let token = self.token(endpoint).await?;
            let mut request = self.client.post(format!("{endpoint}{path}")).json(body).timeout(self.timeout);
            if let Some(token) = token {
                request = request.header(reqwest::header::AUTHORIZATION, token);
            }
            let _permit = match &self.limit {
                Some(limit) => limit.acquire().await.ok(),
                None => None,
            };
            let before = self.observed.lock().unwrap_or_else(|p| p.into_inner()).revision;
            let response = request
                .send()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {}", crate::error_chain(&e))))?;
            let status = response.status();
            let date = response
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| httpdate::parse_http_date(d).ok());
            let text = response
                .text()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {}", crate::error_chain(&e))))?;
            // A streamed answer (keepalive) is one JSON object per line.
            let first = text.lines().next().unwrap_or("");
            let value: Value = match serde_json::from_str(first) {
                Ok(v) => v,
                // etcd answers some refusals in plain text (a client certificate with a Common
                // Name while auth is on: "CommonName of client sending a request against gateway
                // will be ignored"): said as etcd said it.
                Err(_) if !status.is_success() => {
                    return Err(EtcdError::Refused(format!("{endpoint}{path} ({status}): {:.300}", text.trim())));
                }
                Err(e) => {
                    return Err(EtcdError::Protocol(format!("{endpoint}{path} ({status}): {e}: {:.200}", text)));
                }
            };
            let error = value.get("error").or_else(|| value.get("message")).filter(|_| !status.is_success());
            if let Some(error) = error {
                let text = error.as_str().map(str::to_string).unwrap_or_else(|| error.to_string());
                // An expired auth token: authenticate again, once.
                if attempt == 0 && self.auth.is_some() && text.contains("token") {
                    *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    continue;
                }
                return Err(if status.is_server_error() && text.contains("timed out") {
                    EtcdError::Unreachable(format!("{endpoint}: {text}"))
                } else {
                    EtcdError::Refused(format!("{endpoint}{path}: {text}"))
                });
            }
            if !status.is_success() {
                return Err(EtcdError::Refused(format!("{endpoint}{path}: HTTP {status}")));
            }
            self.observe(endpoint, before, &value, date);
            let header = value.get("header").or_else(|| value.get("result").and_then(|r| r.get("header")));
            let seen = Seen { endpoint: endpoint.clone(), header: json!({ "header": header }), date };
            return Ok((value, seen));
        }
        Err(EtcdError::Refused(format!("{endpoint}: authentication failed")))
    }

    /// Notes what an answer's header says of etcd (see [`Observed`]); `before` is the highest
    /// revision answered before this request was sent.
    fn observe(&self, endpoint: &str, before: i64, value: &Value, date: Option<std::time::SystemTime>) {
        let header = value.get("header").or_else(|| value.get("result").and_then(|r| r.get("header")));
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(date) = date {
            let ms = match date.duration_since(std::time::UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            };
            o.date = Some((crate::time::Timestamp(ms), crate::time::Stopwatch::start()));
        }
        let Some(header) = header else { return };
        let revision = int(header.get("revision"));
        if revision > 0 && revision < before {
            o.went_back = Some(format!(
                "{endpoint} answered at revision {revision} after revision {before}: etcd lost its data (restored from an older snapshot, wiped, or a new cluster)"
            ));
            o.revision = revision;
        } else {
            o.revision = o.revision.max(revision);
        }
        if let Some(id) = header.get("cluster_id").map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string)) {
            match &o.cluster_id {
                Some(known) if *known != id => {
                    o.went_back = Some(format!(
                        "{endpoint} belongs to cluster {id}, not {known}: etcd lost its data (a different etcd cluster: wiped or replaced), and its data is not the shared log's"
                    ));
                    o.cluster_id = Some(id);
                }
                Some(_) => {}
                None => o.cluster_id = Some(id),
            }
        }
    }

    /// How far `now` is ahead of etcd's clock as of its last answer ([`Observed::skew`]);
    /// `None` before any answer. Takes nothing (unlike [`observed`](Self::observed)).
    pub fn skew(&self, now: crate::time::Timestamp) -> Option<i64> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner()).skew(now)
    }

    /// What etcd's answers said of it so far; `went_back` is taken (reported once).
    pub fn observed(&self) -> Observed {
        let mut o = self.observed.lock().unwrap_or_else(|p| p.into_inner());
        let seen = o.clone();
        o.went_back = None;
        seen
    }

    /// The auth token, authenticating first when there is none yet.
    async fn token(&self, endpoint: &str) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.auth else { return Ok(None) };
        if let Some(t) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(Some(t));
        }
        let response = self
            .client
            .post(format!("{endpoint}/v3/auth/authenticate"))
            .json(&json!({"name": user, "password": password.0}))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {}", crate::error_chain(&e))))?;
        let status = response.status();
        let value: Value = response.json().await.map_err(|e| EtcdError::Protocol(e.to_string()))?;
        let token = value.get("token").and_then(Value::as_str).map(str::to_string).ok_or_else(|| {
            EtcdError::Refused(format!("{endpoint}: authentication as {user:?} refused ({status}): {value}"))
        })?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
        Ok(Some(token))
    }

    /// A new lease of `ttl` seconds; its id.
    pub async fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl})).await?;
        match int(v.get("ID")) {
            0 => Err(EtcdError::Protocol(format!("lease grant without an ID: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; its remaining TTL, or `None` when it has expired.
    pub async fn keepalive(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": lease.to_string()})).await?;
        let result = v.get("result").unwrap_or(&v);
        Ok(match int(result.get("TTL")) {
            ttl if ttl > 0 => Some(ttl),
            _ => None,
        })
    }

    /// Ends a lease (and deletes its keys) at once.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()})).await.map(drop)
    }

    /// The current revision of the keyspace (for tests and diagnostics).
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key.as_bytes())})).await?;
        Ok(kvs(&v)?.into_iter().next())
    }

    /// A transaction: `success` runs when every comparison holds, `failure` otherwise.
    pub async fn txn(&self, compare: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, EtcdError> {
        self.txn_seen(compare, success, failure).await.map(|(r, _)| r)
    }

    /// [`txn`](Self::txn), with what the answer said of etcd.
    async fn txn_seen(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<(TxnResult, Seen), EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::Created(key, rev) => json!({"key": b64(key.as_bytes()), "target": "CREATE",
                    "result": "EQUAL", "create_revision": rev.to_string()}),
                Compare::Modified(key, rev) => json!({"key": b64(key.as_bytes()), "target": "MOD",
                    "result": "EQUAL", "mod_revision": rev.to_string()}),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|op| match op {
                    Op::Put { key, value, lease } => {
                        let mut put = json!({"key": b64(key.as_bytes()), "value": b64(value)});
                        if let Some(l) = lease {
                            put["lease"] = json!(l.to_string());
                        }
                        json!({"request_put": put})
                    }
                    Op::Get(key) => json!({"request_range": {"key": b64(key.as_bytes())}}),
                    Op::GetRange(from, to) => {
                        json!({"request_range": {"key": b64(from.as_bytes()), "range_end": b64(to.as_bytes())}})
                    }
                    Op::LastKey(from, to) => json!({"request_range": {"key": b64(from.as_bytes()),
                        "range_end": b64(to.as_bytes()), "limit": "1", "sort_order": "DESCEND",
                        "sort_target": "KEY", "keys_only": true}}),
                    Op::DeleteRange(from, to) => {
                        json!({"request_delete_range": {"key": b64(from.as_bytes()), "range_end": b64(to.as_bytes())}})
                    }
                })
                .collect()
        };
        let body = json!({"compare": compare, "success": ops(success), "failure": ops(failure)});
        let (v, seen) = self.call_seen("/v3/kv/txn", &body).await?;
        let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let revision = int(v.get("header").and_then(|h| h.get("revision")));
        let mut ranges = vec![];
        for r in v.get("responses").and_then(Value::as_array).into_iter().flatten() {
            if let Some(range) = r.get("response_range") {
                ranges.push(kvs(range)?);
            }
        }
        Ok((TxnResult { succeeded, revision, ranges }, seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_keys_do() {
        assert_eq!(prefix_end("/rollwatch/api/events/"), "/rollwatch/api/events0");
        assert_eq!(prefix_end("a"), "b");
    }

    #[test]
    fn gateway_integers_read_as_strings_numbers_or_absent() {
        assert_eq!(int(Some(&json!("42"))), 42);
        assert_eq!(int(Some(&json!(7))), 7);
        assert_eq!(int(None), 0);
        let range = json!({"kvs": [{"key": b64(b"/k"), "value": b64(b"v"), "create_revision": "5", "mod_revision": "6", "lease": "9"}]});
        let kv = &kvs(&range).unwrap()[0];
        assert_eq!((kv.key.as_str(), kv.value.as_slice(), kv.create_revision, kv.lease), ("/k", &b"v"[..], 5, 9));
        assert!(kvs(&json!({"kvs": [{"key": "%%%"}]})).is_err());
    }
}
