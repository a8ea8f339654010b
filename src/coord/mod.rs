//! High availability: replicas of one rollwatch elect a leader on etcd v3 and share the acting
//! log there. Every replica watches; the one holding the leader key acts.
//!
//! - **Election.** Each replica holds a lease (`ttl`) and renews it every `ttl/4`. The leader key
//!   `{key}/leader` is created in a transaction only when it does not exist, bound to the
//!   creator's lease: when a leader dies its lease expires, the key goes, and the next replica to
//!   try creates it. The key's create revision is the leader's **term**: it is new each time.
//! - **Fencing.** Every acting write is a transaction on `{key}/events/{seq}` that holds only if
//!   the leader key's create revision is still the writer's term (and the seq is unused). A
//!   replica paused past its lease (SIGSTOP, a stall, a partition) finds its next write refused.
//!   It also stops by itself: leadership counts only until `2/3 ttl` after the last renewal that
//!   succeeded, before the lease can expire at etcd.
//! - **The shared log.** Acting events, one key each, in order; followers read what is new every
//!   round and mirror it into their journal; a new leader reads it all before it acts. The leader
//!   compacts it into `{key}/snapshot` (what acting needs, trimmed by the caller's compactor) and
//!   deletes the events the snapshot holds, in one fenced transaction.

pub mod etcd;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::deploy::HaSpec;
use crate::time::{Clock, Deadline, Stopwatch, Timestamp};
use etcd::{Compare, Etcd, EtcdError, Op, prefix_end};

/// A leadership term: the leader key's create revision (etcd's fencing token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Term(pub i64);

/// Who leads, as the leader key says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Leader {
    pub replica: String,
    /// Where its endpoints are (commands and hooks are forwarded there).
    pub address: String,
}

/// What a replica is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Not yet through its first election round.
    #[default]
    Starting,
    Leader,
    Follower,
    /// etcd cannot be reached: nobody here acts.
    Unreachable,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Starting => "starting",
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Unreachable => "unreachable",
        })
    }
}

/// What `/status` and `/metrics` show of the coordination.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct HaStatus {
    /// This replica's name.
    pub replica: String,
    pub role: Role,
    /// The leader, as last seen (this replica, when it leads), and its term.
    pub leader: Option<Leader>,
    pub term: Option<i64>,
    /// Why etcd cannot be used, while it cannot.
    pub error: Option<String>,
    /// Since when the role is what it is.
    pub since: Option<Timestamp>,
}

/// What the coordinator tells the engine, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// This replica leads under `term` from now on; `log` is the whole shared log (the acting
    /// state is restored from it before anything is acted on).
    Lead { term: Term, log: Vec<Value> },
    /// Another replica leads (or none yet): this one watches.
    Follow { leader: Option<Leader> },
    /// Lines of the shared log new since the last update (followers).
    Log(Vec<Value>),
    /// The whole shared log (a follower's first read, or after a compaction it had not seen).
    Reset(Vec<Value>),
    /// etcd cannot be reached (or the lease was lost): this replica does not act.
    Unreachable { error: String },
}

/// Why an acting write was not committed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitError {
    /// This replica does not (or no longer) lead: nothing may be acted on.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// etcd did not answer: whether it took the write is unknown, so this replica stops acting.
    #[error("the shared log in etcd cannot be written: {0}")]
    Unreachable(String),
}

/// Keeps what acting needs of the shared log's lines (the caller knows the events): bounded.
pub type Compactor = Box<dyn Fn(Vec<Value>, Timestamp) -> Vec<Value> + Send + Sync>;

/// Events in the shared log beyond the snapshot before the leader compacts.
pub const COMPACT_AFTER: u64 = 256;

/// The largest snapshot written (etcd refuses requests over 1.5 MiB by default).
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

/// Where the log stands: the next seq to write, the last seq this replica has.
#[derive(Debug, Default)]
struct Cursor {
    next: u64,
    seen: u64,
    /// The snapshot's last seq, as last read.
    snapshot_upto: u64,
    /// Whether this replica has read the whole log once.
    synced: bool,
}

/// One replica's part in the election and the shared log.
pub struct Coordinator {
    etcd: Etcd,
    key: String,
    me: Leader,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    /// While leading: the term, and until when (this process's monotonic clock) it is certain.
    lead: Mutex<Option<(Term, Deadline)>>,
    /// Serializes writes to the log (so followers read it in order).
    log: tokio::sync::Mutex<Cursor>,
    status: Mutex<HaStatus>,
    compactor: Compactor,
    /// Whether this replica stands for election (not while its journal cannot be written).
    eligible: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").field("key", &self.key).field("me", &self.me).finish_non_exhaustive()
    }
}

/// A line's `seq` in the shared log (0 for a line that never was in it).
pub fn seq_of(line: &Value) -> u64 {
    line.get("seq").and_then(Value::as_u64).unwrap_or(0)
}

/// This replica's default name: the host name and the pid.
pub fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rollwatch".into());
    format!("{host}-{}", std::process::id())
}

impl Coordinator {
    /// A coordinator for `[ha]`; `listen` is this replica's address when `advertise` is unset.
    pub fn new(
        spec: &HaSpec,
        listen: std::net::SocketAddr,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
        compactor: Compactor,
    ) -> Result<Coordinator, EtcdError> {
        let ttl = Duration::from_millis(spec.ttl.0.max(2_000) as u64);
        // A request may take at most a quarter of the lease: three missed renewals still leave
        // time to stop acting before the lease can expire.
        let timeout = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(3));
        let etcd = Etcd::new(spec, env, timeout)?;
        let replica = spec.replica.clone().unwrap_or_else(default_replica);
        let address = spec.advertise.clone().unwrap_or_else(|| format!("http://{listen}"));
        let status = HaStatus { replica: replica.clone(), ..HaStatus::default() };
        Ok(Coordinator {
            etcd,
            key: spec.key.trim_end_matches('/').to_string(),
            me: Leader { replica, address },
            ttl,
            clock,
            lead: Mutex::new(None),
            log: tokio::sync::Mutex::new(Cursor::default()),
            status: Mutex::new(status),
            compactor,
            eligible: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn leader_key(&self) -> String {
        format!("{}/leader", self.key)
    }

    fn events_prefix(&self) -> String {
        format!("{}/events/", self.key)
    }

    fn event_key(&self, seq: u64) -> String {
        format!("{}{seq:020}", self.events_prefix())
    }

    fn snapshot_key(&self) -> String {
        format!("{}/snapshot", self.key)
    }

    /// This replica's name and address.
    pub fn me(&self) -> &Leader {
        &self.me
    }

    pub fn status(&self) -> HaStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this replica may act under `term` now: it leads under that term and its last
    /// renewal is recent enough that the lease cannot have expired.
    pub fn may_act(&self, term: Term) -> bool {
        let lead = *self.lead.lock().unwrap_or_else(|p| p.into_inner());
        lead.is_some_and(|(t, until)| t == term && !until.passed())
    }

    /// Whether this replica leads now (for `rollwatch_leader`).
    pub fn leading(&self) -> bool {
        let lead = *self.lead.lock().unwrap_or_else(|p| p.into_inner());
        lead.is_some_and(|(_, until)| !until.passed())
    }

    fn set_status(&self, role: Role, leader: Option<Leader>, term: Option<Term>, error: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if s.role != role {
            s.since = Some(self.clock.now());
        }
        s.role = role;
        s.leader = leader;
        s.term = term.map(|t| t.0);
        s.error = error;
    }

    fn lose(&self, why: &str) {
        let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        if lead.take().is_some() {
            tracing::error!(why, "leadership lost: not acting");
        }
    }

    /// A write of `term` was not committed: that term ends here (the next round leads again,
    /// from what etcd holds, if the key is still this replica's). A write of an older term
    /// (a procedure fenced off) leaves the current one alone.
    fn lose_term(&self, term: Term, why: &str) {
        let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        if lead.is_some_and(|(t, _)| t == term) {
            *lead = None;
            tracing::error!(why, term = term.0, "leadership lost: not acting");
        }
    }

    /// This replica cannot keep its own record (its journal fails): it stops acting, and at its
    /// next round gives up the leader key (its lease revoked) and stands for election no more,
    /// so that a healthy replica leads.
    pub fn step_aside(&self) {
        if self.eligible.swap(false, std::sync::atomic::Ordering::SeqCst) {
            tracing::error!(replica = %self.me.replica, "stepping aside: this replica does not lead while its journal fails");
        }
        let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
        *lead = None;
    }

    /// Stands for election again (its journal takes writes again).
    pub fn rejoin(&self) {
        if !self.eligible.swap(true, std::sync::atomic::Ordering::SeqCst) {
            tracing::info!(replica = %self.me.replica, "standing for election again");
        }
    }

    /// Commits one acting line to the shared log under `term`, before it counts (or runs);
    /// returns it with its `seq`. Refused when this replica no longer leads under `term`.
    pub async fn commit(&self, term: Term, mut line: Value) -> Result<Value, CommitError> {
        if !self.may_act(term) {
            let why =
                format!("term {} is over or its lease was not renewed in time (replica {})", term.0, self.me.replica);
            self.lose_term(term, &why);
            return Err(CommitError::NotLeader(why));
        }
        let mut cursor = self.log.lock().await;
        let seq = cursor.next.max(1);
        line["seq"] = json!(seq);
        let put = Op::Put { key: self.event_key(seq), value: line.to_string().into_bytes(), lease: None };
        let guard = [Compare::Created(self.leader_key(), term.0), Compare::Created(self.event_key(seq), 0)];
        match self.etcd.txn(&guard, &[put], &[Op::Get(self.leader_key())]).await {
            Ok(r) if r.succeeded => {
                cursor.next = seq + 1;
                cursor.seen = seq;
                Ok(line)
            }
            Ok(r) => {
                let holder = r.ranges.first().and_then(|kvs| kvs.first()).map_or("nobody".to_string(), |kv| {
                    serde_json::from_slice::<Leader>(&kv.value).map_or_else(
                        |_| "another replica".to_string(),
                        |l| format!("{} (term {})", l.replica, kv.create_revision),
                    )
                });
                let why = format!("etcd refused the write of term {}: the leader key is held by {holder}", term.0);
                self.lose_term(term, &why);
                Err(CommitError::NotLeader(why))
            }
            Err(e) => {
                let why = e.to_string();
                self.lose_term(term, &why);
                Err(CommitError::Unreachable(why))
            }
        }
    }

    /// The shared log after seq `after`, read at one revision: `(lines, the snapshot's last
    /// seq, whether the lines are the whole log)`. The whole log is the snapshot's lines and the
    /// events after it; it is what a first read gets, and a reader the snapshot has overtaken
    /// (a compaction deletes the events it holds in the same transaction, so the events left
    /// are exactly those after it).
    async fn read_log(&self, after: u64, first: bool) -> Result<(Vec<Value>, u64, bool), EtcdError> {
        let from = self.event_key(after + 1);
        let to = prefix_end(&self.events_prefix());
        let r = self.etcd.txn(&[], &[Op::Get(self.snapshot_key()), Op::GetRange(from, to)], &[]).await?;
        let mut ranges = r.ranges.into_iter();
        let snapshot = ranges.next().unwrap_or_default();
        let events = ranges.next().unwrap_or_default();
        let (upto, snapshot_lines) = match snapshot.first() {
            None => (0, vec![]),
            Some(kv) => {
                let v: Value = serde_json::from_slice(&kv.value)
                    .map_err(|e| EtcdError::Protocol(format!("{}: {e}", self.snapshot_key())))?;
                let upto = v.get("upto").and_then(Value::as_u64).unwrap_or(0);
                (upto, v.get("lines").and_then(Value::as_array).cloned().unwrap_or_default())
            }
        };
        let whole = first || upto > after;
        let mut lines = if whole { snapshot_lines } else { vec![] };
        for kv in events {
            match serde_json::from_slice::<Value>(&kv.value) {
                Ok(v) => lines.push(v),
                Err(e) => tracing::error!(key = %kv.key, error = %e, "unreadable line in the shared log; skipped"),
            }
        }
        Ok((lines, upto, whole))
    }

    /// One round: the lease renewed (or a new one), then the leader key tried.
    async fn round(&self, lease: &mut Option<i64>) -> Result<(Option<Term>, Option<(Leader, Term)>), EtcdError> {
        let ttl_secs = self.ttl.as_secs().max(2) as i64;
        let id = match *lease {
            Some(id) if self.etcd.keepalive(id).await?.is_some() => id,
            _ => {
                if lease.is_some() {
                    tracing::warn!(replica = %self.me.replica, "lease expired at etcd; taking a new one");
                    self.lose("the lease expired");
                }
                let id = self.etcd.grant(ttl_secs).await?;
                *lease = Some(id);
                id
            }
        };
        let key = self.leader_key();
        if !self.eligible.load(std::sync::atomic::Ordering::SeqCst) {
            // Not standing: read who leads; holding the key, give it up (the lease's revocation
            // deletes it at once).
            let holder = self.etcd.get(&key).await?;
            if holder.as_ref().is_some_and(|kv| kv.lease == id) {
                self.etcd.revoke(id).await?;
                *lease = None;
                tracing::warn!(replica = %self.me.replica, "leader key given up");
                return Ok((None, None));
            }
            let holder = holder
                .and_then(|kv| serde_json::from_slice::<Leader>(&kv.value).ok().map(|l| (l, Term(kv.create_revision))));
            return Ok((None, holder));
        }
        let me = serde_json::to_vec(&self.me).unwrap_or_default();
        let put = Op::Put { key: key.clone(), value: me, lease: Some(id) };
        let r = self.etcd.txn(&[Compare::Created(key.clone(), 0)], &[put], &[Op::Get(key)]).await?;
        if r.succeeded {
            return Ok((Some(Term(r.revision)), Some((self.me.clone(), Term(r.revision)))));
        }
        let Some(kv) = r.ranges.into_iter().next().and_then(|kvs| kvs.into_iter().next()) else {
            return Ok((None, None)); // gone between the compare and the read: next round
        };
        let term = Term(kv.create_revision);
        let holder = serde_json::from_slice::<Leader>(&kv.value).ok().map(|l| (l, term));
        if kv.lease == id {
            return Ok((Some(term), holder));
        }
        Ok((None, holder))
    }

    /// One election round outside [`run`](Self::run) (a tool, a test): the lease taken or
    /// renewed (`lease` keeps it between calls) and the leader key tried; when it is this
    /// replica's, it may commit under the term returned — without the shared log read first.
    pub async fn elect_once(&self, lease: &mut Option<i64>) -> Result<Option<Term>, EtcdError> {
        let sent = Stopwatch::start();
        let (term, _) = self.round(lease).await?;
        if let Some(term) = term {
            let (log, upto, _) = self.read_log(0, true).await?;
            let last = log.iter().map(seq_of).max().unwrap_or(0).max(upto);
            let mut cursor = self.log.lock().await;
            cursor.next = cursor.next.max(last + 1);
            *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = Some((term, sent.deadline(self.ttl * 2 / 3)));
        }
        Ok(term)
    }

    /// The etcd client (to read what replicas wrote).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Runs the election and the log's upkeep until `stop`; tells the engine on `updates`. At a
    /// stop, the lease is revoked: another replica leads at once.
    pub async fn run(self: Arc<Self>, updates: mpsc::Sender<Update>, mut stop: watch::Receiver<bool>) {
        let every = (self.ttl / 4).max(Duration::from_millis(200));
        let mut lease = None;
        let mut leading: Option<Term> = None;
        let mut following: Option<Option<Leader>> = None;
        let mut down = false;
        // Since when rounds fail: a follower waits out a blip as long as a leader is sure of
        // its lease (2/3 ttl) before it says nobody acts.
        let mut failing: Option<Stopwatch> = None;
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            first = false;
            let sent = Stopwatch::start();
            let result = match self.round(&mut lease).await {
                Ok((Some(term), _)) => self.lead_round(term, sent, &mut leading, &updates).await,
                Ok((None, holder)) => {
                    if holder.as_ref().is_some_and(|(l, _)| l.replica == self.me.replica) {
                        tracing::error!(replica = %self.me.replica, "another replica leads under this replica's name: give each its own `replica`");
                    }
                    let term = holder.as_ref().map(|(_, t)| *t);
                    let leader = holder.map(|(l, _)| l);
                    if leading.take().is_some() {
                        self.lose("another replica holds the leader key");
                    }
                    if following.as_ref() != Some(&leader) {
                        let name = leader.as_ref().map_or("nobody yet", |l| l.replica.as_str());
                        tracing::info!(replica = %self.me.replica, leader = name, "following");
                        following = Some(leader.clone());
                        let _ = updates.send(Update::Follow { leader: leader.clone() }).await;
                    }
                    self.set_status(Role::Follower, leader, term, None);
                    self.follow_round(&updates).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    down = false;
                    failing = None;
                }
                Err(e) => {
                    let error = e.to_string();
                    let failing_for = failing.get_or_insert_with(Stopwatch::start).elapsed();
                    // Leadership ends when it can no longer be sure of its lease; a follower
                    // waits as long before it calls etcd unreachable.
                    let patience = crate::time::Span((self.ttl * 2 / 3).as_millis() as i64);
                    let still = match leading {
                        Some(t) => self.may_act(t),
                        None => !down && failing_for < patience,
                    };
                    if !still {
                        if leading.take().is_some() {
                            self.lose(&error);
                        }
                        following = None;
                        // Who leads cannot be known without etcd (nobody acts meanwhile).
                        self.set_status(Role::Unreachable, None, None, Some(error.clone()));
                        if !down {
                            tracing::error!(%error, "etcd unreachable: not acting");
                            down = true;
                            let _ = updates.send(Update::Unreachable { error }).await;
                        }
                    }
                }
            }
        }
        // A stop ends leadership quietly: the lease is revoked for the next replica.
        *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(id) = lease
            && let Err(e) = self.etcd.revoke(id).await
        {
            tracing::warn!(error = %e, "could not revoke the lease at stop; it expires within the ttl");
        }
    }

    /// A round as leader: leadership extended; on a new term, the log read and handed over
    /// first; otherwise the log compacted when it has grown.
    async fn lead_round(
        &self,
        term: Term,
        sent: Stopwatch,
        leading: &mut Option<Term>,
        updates: &mpsc::Sender<Update>,
    ) -> Result<(), EtcdError> {
        let until = sent.deadline(self.ttl * 2 / 3);
        if *leading == Some(term) {
            let extended = {
                let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
                let ours = lead.is_some_and(|(t, _)| t == term);
                if ours {
                    *lead = Some((term, until));
                }
                ours
            };
            if extended {
                return self.compact(term).await;
            }
            // A write of this term was refused or unanswered: lead again from what etcd holds.
            *leading = None;
        }
        let mut cursor = self.log.lock().await;
        let (log, upto, _) = self.read_log(0, true).await?;
        let last = log.iter().map(seq_of).max().unwrap_or(0).max(upto);
        *cursor = Cursor { next: last + 1, seen: last, snapshot_upto: upto, synced: true };
        drop(cursor);
        tracing::info!(replica = %self.me.replica, term = term.0, lines = log.len(), "leading: acting state restored from etcd");
        // Leadership first, then the news: the new leader's first writes (a rollback found
        // unfinished, reported) may follow the news at once.
        *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = Some((term, until));
        *leading = Some(term);
        if updates.send(Update::Lead { term, log }).await.is_err() {
            return Ok(());
        }
        self.set_status(Role::Leader, Some(self.me.clone()), Some(term), None);
        Ok(())
    }

    /// A round as follower: what is new in the log.
    async fn follow_round(&self, updates: &mpsc::Sender<Update>) -> Result<(), EtcdError> {
        let mut cursor = self.log.lock().await;
        let (lines, upto, reset) = self.read_log(cursor.seen, !cursor.synced).await?;
        cursor.snapshot_upto = upto;
        cursor.synced = true;
        let last = lines.iter().map(seq_of).max().unwrap_or(0);
        cursor.seen = cursor.seen.max(last).max(if reset { upto } else { 0 });
        drop(cursor);
        let update = if reset { Update::Reset(lines) } else { Update::Log(lines) };
        if !matches!(&update, Update::Log(l) if l.is_empty()) {
            let _ = updates.send(update).await;
        }
        Ok(())
    }

    /// Compacts the log when it has grown past [`COMPACT_AFTER`] events: a snapshot of what the
    /// compactor keeps replaces them, fenced by `term`.
    async fn compact(&self, term: Term) -> Result<(), EtcdError> {
        let mut cursor = self.log.lock().await;
        if cursor.next.saturating_sub(cursor.snapshot_upto + 1) <= COMPACT_AFTER {
            return Ok(());
        }
        let (lines, _, _) = self.read_log(0, true).await?;
        let upto = cursor.next - 1;
        let kept = (self.compactor)(lines, self.clock.now());
        let snapshot = json!({"upto": upto, "lines": kept}).to_string();
        if snapshot.len() > MAX_SNAPSHOT_BYTES {
            tracing::error!(bytes = snapshot.len(), "shared log snapshot too large; not compacted");
            cursor.snapshot_upto = upto;
            return Ok(());
        }
        let ops = [
            Op::Put { key: self.snapshot_key(), value: snapshot.into_bytes(), lease: None },
            Op::DeleteRange(self.event_key(0), self.event_key(upto + 1)),
        ];
        let r = self.etcd.txn(&[Compare::Created(self.leader_key(), term.0)], &ops, &[]).await?;
        if r.succeeded {
            tracing::info!(upto, kept = kept.len(), "shared log compacted");
            cursor.snapshot_upto = upto;
        }
        Ok(())
    }
}
