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
//! - **Trust.** etcd can lose its data (restored from an old snapshot, a wiped member, a new
//!   cluster): the term starts again and the log is empty, and acting on that would forget every
//!   cooldown, pause and rollback in flight. The log has an **epoch** key, created once the log is
//!   known whole; every round reads it with the log's last seq. A missing epoch, a revision or
//!   cluster id going back, or a log that ends before this replica's own journal means the log
//!   cannot be trusted: nobody acts, a **rebuild** key is written, every replica merges its
//!   journal's lines into the log, and after a quiet period (`2 × ttl`) the leader closes the
//!   rebuild with a new epoch and acts from the merged log. A brand-new log goes the same way
//!   (nobody can tell it from a lost one).
//! - **Clocks.** A replica whose clock disagrees with etcd's (its `Date`) by more than
//!   [`MAX_SKEW`] does not stand for election: its records would be misdated.
//! - **Steps.** What runs outside etcd (a step's program or call) starts only while the lease is
//!   certain for longer than a margin (`ttl / 4`), and only within that margin of its commit:
//!   a stall between the two ends in "not started", never in a late start.

pub mod etcd;
pub mod share;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::config::deploy::HaSpec;
use crate::time::{Clock, Deadline, Span, Stopwatch, Timestamp, human};
use etcd::{Compare, Etcd, EtcdError, Kv, Op, prefix_end};

/// A leadership term: the leader key's create revision (etcd's fencing token), and which of
/// this process's terms it is — etcd that lost its data hands the same revisions out again, and
/// a procedure of the old term must not pass for one of the new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Term(pub i64, pub u64);

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
    /// etcd's shared log cannot be trusted (it lost data, or is new) and is being rebuilt from
    /// the replicas' journals: nobody acts.
    Rebuilding,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Starting => "starting",
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Unreachable => "unreachable",
            Role::Rebuilding => "rebuilding",
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
    /// Another replica leads (or none yet): this one watches. `not_standing`: why this replica
    /// does not stand for election (its clock too far from etcd's), while it does not — sent
    /// again when that changes, so that a replica left alone and unable to lead can say so.
    Follow { leader: Option<Leader>, not_standing: Option<String> },
    /// Lines of the shared log new since the last update (followers).
    Log(Vec<Value>),
    /// The whole shared log (a follower's first read, or after a compaction it had not seen).
    Reset(Vec<Value>),
    /// etcd cannot be reached (or the lease was lost): this replica does not act. `tell`:
    /// this replica is the one to tell people (the last leader, or a follower whose last
    /// leader does not answer) — one page, not one per replica.
    Unreachable { error: String, tell: bool },
    /// The shared log cannot be trusted; nobody acts until it is rebuilt. `lost`: etcd lost
    /// data this replica knew (told on every channel), not a new log.
    Distrust { why: String, lost: bool },
    /// A fleet's deployment this replica led is given to another replica by the share (a
    /// planned move, not a fault): this replica stops acting on it.
    HandedOver,
}

/// Whom this replica follows (nobody yet: `None`), and why it does not stand, as last told.
type Following = (Option<Leader>, Option<String>);

/// Why an acting write was not committed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommitError {
    /// This replica does not (or no longer) lead: nothing may be acted on.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// etcd did not answer: whether it took the write is unknown, so this replica stops acting.
    #[error("the shared log in etcd cannot be written: {0}")]
    Unreachable(String),
    /// The line was not written (too large, or etcd refused the request itself): nothing it
    /// records may run, but the term goes on.
    #[error("the shared log did not take the line: {0}")]
    Refused(String),
}

/// Keeps what acting needs of the shared log's lines (the caller knows the events): bounded.
pub type Compactor = Box<dyn Fn(Vec<Value>, Timestamp) -> Vec<Value> + Send + Sync>;

/// Events in the shared log beyond the snapshot before the leader compacts.
pub const COMPACT_AFTER: u64 = 256;

/// The largest snapshot written (etcd refuses requests over 1.5 MiB by default).
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024;

/// The largest line committed to the shared log: every value in it from outside is bounded far
/// below (a version: 256 bytes), so a larger line is refused here, before etcd refuses it.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The largest disagreement between a replica's clock and etcd's for it to lead.
pub const MAX_SKEW: Span = Span(30_000);

/// What the shared log looks like, read with each election round.
#[derive(Debug, Default)]
struct LogView {
    /// The epoch key's value (absent: the log is new or lost).
    epoch: Option<String>,
    /// The rebuild in progress.
    rebuild: Option<Kv>,
    /// The last seq the log holds (its compacted part's or its last event's).
    last_seq: u64,
}

/// One rebuild: its key's create revision and value (etcd that lost its data hands the same
/// revisions out again; the value says who started it, when).
type RebuildId = (i64, Vec<u8>);

/// Whether this replica trusts the shared log.
#[derive(Debug, Default)]
struct Trust {
    /// The epoch its view of the log is from.
    epoch: Option<String>,
    /// Why it does not trust the log now.
    distrust: Option<String>,
    /// The rebuild in progress, and since when this replica saw it.
    rebuild: Option<(RebuildId, Stopwatch)>,
    /// The rebuild this replica's journal is merged into.
    merged: Option<RebuildId>,
}

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
    /// Where this deployment's log lives (`{key}`, or `{key}/deployments/NAME` in a fleet).
    key: String,
    /// The leader key: `{key}/leader`, or `{key}/leaders/NAME` in a fleet (one range holds every
    /// deployment's holder: [`share`]).
    leader_key: String,
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
    /// Why this replica's clock keeps it from leading (too far from etcd's), while it does.
    skewed: Mutex<Option<String>>,
    /// This replica's journal (its lines of the shared log rebuild a lost one), and the highest
    /// seq of the shared log it holds.
    journal: Option<std::path::PathBuf>,
    journal_seq: Arc<std::sync::atomic::AtomicU64>,
    trust: Mutex<Trust>,
    /// How many terms this process has led (see [`Term`]).
    terms: std::sync::atomic::AtomicU64,
    /// In a fleet shared among replicas: whether this replica is to hold this deployment
    /// ([`share`] says), and who holds it as the share last read; woken when that changes.
    assigned: Mutex<Assigned>,
    wake: tokio::sync::Notify,
    /// In a fleet shared among replicas: the replica's lease, kept by the share, to which the
    /// leader key is bound (none: a lease of its own, renewed every round).
    shared_lease: Option<Arc<share::SharedLease>>,
}

/// What the fleet's share says of one deployment here (see [`Coordinator::assign`]).
#[derive(Debug, Clone)]
struct Assigned {
    /// Stand for its leader key (always, alone with one deployment).
    mine: bool,
    /// Who holds it, as the share last read (a parked coordinator reads nothing itself).
    holder: Option<(Leader, Term)>,
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

/// How long one request to etcd may take: at most a quarter of the lease (three missed
/// renewals still leave time to stop acting before the lease can expire).
pub fn request_timeout(spec: &HaSpec) -> Duration {
    (lease_ttl(spec) / 4).clamp(Duration::from_millis(250), Duration::from_secs(3))
}

/// The lease's time to live `[ha]` asks for (never under 2 s).
pub fn lease_ttl(spec: &HaSpec) -> Duration {
    Duration::from_millis(spec.ttl.0.max(2_000) as u64)
}

/// Who this replica is among replicas: its `replica` name (default: the host name and the pid)
/// and where the others reach it (`advertise`, default: its `listen` address).
pub fn identity(spec: &HaSpec, listen: std::net::SocketAddr) -> Leader {
    let replica = spec.replica.clone().unwrap_or_else(default_replica);
    let address = spec.advertise.clone().unwrap_or_else(|| format!("http://{listen}"));
    Leader { replica, address }
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
        let etcd = Etcd::new(spec, env, request_timeout(spec))?;
        Ok(Coordinator::with_etcd(etcd, spec, listen, clock, compactor))
    }

    /// A coordinator on a client of its own (a fleet's: [`Etcd::sibling`] of the share's).
    pub fn with_etcd(
        etcd: Etcd,
        spec: &HaSpec,
        listen: std::net::SocketAddr,
        clock: Arc<dyn Clock>,
        compactor: Compactor,
    ) -> Coordinator {
        let ttl = lease_ttl(spec);
        let me = identity(spec, listen);
        let status = HaStatus { replica: me.replica.clone(), ..HaStatus::default() };
        let key = spec.key.trim_end_matches('/').to_string();
        Coordinator {
            etcd,
            leader_key: format!("{key}/leader"),
            key,
            me,
            ttl,
            clock,
            lead: Mutex::new(None),
            log: tokio::sync::Mutex::new(Cursor::default()),
            status: Mutex::new(status),
            compactor,
            eligible: std::sync::atomic::AtomicBool::new(true),
            skewed: Mutex::new(None),
            journal: None,
            journal_seq: Arc::default(),
            trust: Mutex::new(Trust::default()),
            terms: std::sync::atomic::AtomicU64::new(0),
            assigned: Mutex::new(Assigned { mine: true, holder: None }),
            wake: tokio::sync::Notify::new(),
            shared_lease: None,
        }
    }

    /// One deployment of a fleet shared among replicas ([`share`]): its log under
    /// `{key}/deployments/NAME`, its leader key `{key}/leaders/NAME` bound to the replica's
    /// `lease` (kept alive by the share: a round renews nothing, and leadership counts only
    /// while that lease is certain), and it stands for it only while the share assigns it here
    /// ([`assign`](Self::assign)) — parked otherwise, it asks etcd nothing. It gives the key up
    /// by deleting it (fenced by its term), not by revoking the lease its other keys share.
    pub fn in_fleet(mut self, name: &str, lease: Arc<share::SharedLease>) -> Coordinator {
        let base = self.key.clone();
        self.key = share::deployment_key(&base, name);
        self.leader_key = share::leader_key(&base, name);
        self.assigned = Mutex::new(Assigned { mine: false, holder: None });
        self.shared_lease = Some(lease);
        self
    }

    /// Gives up the leader key held under `term` (a fleet's deployment: the lease is shared).
    async fn give_up(&self, term: i64) -> Result<(), EtcdError> {
        share::give_up(&self.etcd, &self.leader_key(), term).await
    }

    /// What the share says now: whether this replica is to hold the deployment, and who holds
    /// it as read (the holder's term, the leader key's create revision). A change wakes the
    /// coordinator at once: a dead replica's deployment is taken over without waiting a round.
    pub fn assign(&self, mine: bool, holder: Option<(Leader, i64)>) {
        let mut a = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
        let woke = a.mine != mine;
        a.mine = mine;
        a.holder = holder.map(|(l, t)| (l, Term(t, 0)));
        drop(a);
        if woke {
            self.wake.notify_one();
        }
    }

    /// This deployment's slot on the fleet's grid of rounds ([`crate::time::next_on_grid`]):
    /// from its name, so that a replica's coordinators spread over the period in a few groups.
    fn grid_slot(&self) -> u64 {
        self.leader_key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    fn assigned(&self) -> Assigned {
        self.assigned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This replica's journal: its lines of the shared log (with their `seq`) rebuild the log
    /// when etcd loses it, and a log that ends before them is not trusted.
    pub fn with_journal(mut self, path: std::path::PathBuf, lines: &[Value]) -> Coordinator {
        let seq = lines.iter().map(seq_of).max().unwrap_or(0);
        self.journal_seq.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
        self.journal = Some(path);
        self
    }

    /// The highest seq of the shared log in this replica's journal (kept by the ledger).
    pub fn journal_seq(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.journal_seq.clone()
    }

    fn epoch_key(&self) -> String {
        format!("{}/epoch", self.key)
    }

    fn rebuild_key(&self) -> String {
        format!("{}/rebuild", self.key)
    }

    /// The compacted part's last seq (beside the snapshot, small enough to read every round).
    fn compacted_key(&self) -> String {
        format!("{}/compacted", self.key)
    }

    /// How long a rebuild stays open for every replica to merge its journal.
    fn quiet(&self) -> Duration {
        self.ttl * 2
    }

    /// The margin a step needs: the lease certain for longer, its commit younger.
    pub fn step_margin(&self) -> Duration {
        self.ttl / 4
    }

    /// How long this replica's lead under `term` is certain for yet (zero once it is not);
    /// `None` when it does not lead under `term`.
    pub fn lease_left(&self, term: Term) -> Option<Duration> {
        let lead = *self.lead.lock().unwrap_or_else(|p| p.into_inner());
        match lead {
            Some((t, until)) if t == term => Some(self.certain_until(until).map_or(Duration::ZERO, |u| u.remaining())),
            _ => None,
        }
    }

    /// Whether a step whose start was committed under `term` (the commit sent at `committed`)
    /// may start now: this replica still leads under `term`, its lease is certain for longer
    /// than [`step_margin`](Self::step_margin), and the commit is younger than it. Checked
    /// immediately before the step starts; a stall in between ends in "not started".
    pub fn may_start(&self, term: Term, committed: Stopwatch) -> Result<(), String> {
        let margin = self.step_margin();
        let ms = |d: Duration| human(Span(d.as_millis() as i64));
        match self.lease_left(term) {
            Some(left) => {
                let age = committed.elapsed();
                if left <= margin {
                    Err(format!(
                        "the lease of term {} is certain for {} more, less than the margin of {}",
                        term.0,
                        ms(left),
                        ms(margin)
                    ))
                } else if age.as_std() > margin {
                    Err(format!(
                        "its start was committed {} ago, more than the margin of {}: a stall between the commit and the start",
                        human(age),
                        ms(margin)
                    ))
                } else {
                    Ok(())
                }
            }
            _ => Err(format!("term {} is over: another replica may lead", term.0)),
        }
    }

    fn leader_key(&self) -> String {
        self.leader_key.clone()
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
    /// The lease's time to live: an election is over within it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn me(&self) -> &Leader {
        &self.me
    }

    pub fn status(&self) -> HaStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Until when a term whose round said `until` is certain: then, and in a shared fleet no
    /// later than the replica's lease as the share renews it now (read at each check: the share
    /// renews it more often than a deployment's round comes); `None` once that lease is not.
    fn certain_until(&self, until: crate::time::Deadline) -> Option<crate::time::Deadline> {
        match &self.shared_lease {
            None => Some(until),
            Some(shared) => shared.current().map(|(_, lease)| lease.min(until)),
        }
    }

    /// Whether this replica may act under `term` now: it leads under that term and its last
    /// renewal is recent enough that the lease cannot have expired.
    pub fn may_act(&self, term: Term) -> bool {
        let lead = *self.lead.lock().unwrap_or_else(|p| p.into_inner());
        lead.is_some_and(|(t, until)| t == term && self.certain_until(until).is_some_and(|u| !u.passed()))
    }

    /// Whether this replica leads now (for `rollwatch_leader`).
    pub fn leading(&self) -> bool {
        let lead = *self.lead.lock().unwrap_or_else(|p| p.into_inner());
        lead.is_some_and(|(_, until)| self.certain_until(until).is_some_and(|u| !u.passed()))
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
        let value = line.to_string().into_bytes();
        if value.len() > MAX_LINE_BYTES {
            let event = line.get("event").and_then(Value::as_str).unwrap_or("?").to_string();
            return Err(CommitError::Refused(format!(
                "a {event} line of {} bytes is over the limit of {MAX_LINE_BYTES}",
                value.len()
            )));
        }
        let put = Op::Put { key: self.event_key(seq), value, lease: None };
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
            // etcd answered that it did not take the request: nothing was written, the lease
            // stands.
            Err(EtcdError::Refused(why)) => Err(CommitError::Refused(why)),
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

    /// What every round reads of the log besides the leader key: the epoch, the rebuild, the
    /// compacted part's last seq and the last event's key.
    fn view_ops(&self) -> [Op; 4] {
        let events = self.events_prefix();
        [
            Op::Get(self.epoch_key()),
            Op::Get(self.rebuild_key()),
            Op::Get(self.compacted_key()),
            Op::LastKey(events.clone(), prefix_end(&events)),
        ]
    }

    fn view(&self, ranges: &[Vec<Kv>]) -> LogView {
        let first = |i: usize| ranges.get(i).and_then(|r| r.first());
        let compacted = first(2)
            .and_then(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
            .and_then(|v| v.get("upto").and_then(Value::as_u64))
            .unwrap_or(0);
        let last_event = first(3)
            .and_then(|kv| kv.key.strip_prefix(&self.events_prefix()).and_then(|n| n.parse::<u64>().ok()))
            .unwrap_or(0);
        LogView {
            epoch: first(0).map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            rebuild: first(1).cloned(),
            last_seq: compacted.max(last_event),
        }
    }

    /// The leader key as it is and the log's view, read (among a fleet's reads of the moment).
    async fn read_leader(&self) -> Result<(Option<Kv>, LogView), EtcdError> {
        let mut reads = vec![Op::Get(self.leader_key())];
        reads.extend(self.view_ops());
        let r = self.etcd.read(reads).await?;
        let view = self.view(&r.ranges[1.min(r.ranges.len())..]);
        Ok((r.ranges.into_iter().next().and_then(|kvs| kvs.into_iter().next()), view))
    }

    /// Whether this replica's clock is within [`MAX_SKEW`] of etcd's (as of etcd's last
    /// answer); told once when it stops or starts being.
    fn clock_ok(&self) -> bool {
        let skew = self.etcd.skew(self.clock.now());
        let why = skew.filter(|s| s.abs() > MAX_SKEW.0).map(|s| {
            format!(
                "this replica's clock is {} {} etcd's (more than {} apart): it does not lead",
                human(Span(s.abs())),
                if s > 0 { "ahead of" } else { "behind" },
                human(MAX_SKEW)
            )
        });
        let mut skewed = self.skewed.lock().unwrap_or_else(|p| p.into_inner());
        match (&*skewed, &why) {
            (None, Some(w)) => tracing::error!(replica = %self.me.replica, "{w}"),
            (Some(_), None) => {
                tracing::warn!(replica = %self.me.replica, "this replica's clock agrees with etcd's again: standing for election")
            }
            _ => {}
        }
        *skewed = why;
        skewed.is_none()
    }

    /// Whether this replica stands for the leader key now: its journal takes writes, the share
    /// assigns it the deployment (always, alone), and its clock agrees with etcd's.
    fn standing(&self) -> bool {
        self.eligible.load(std::sync::atomic::Ordering::SeqCst) & self.assigned().mine & self.clock_ok()
    }

    /// One round: the lease renewed (or a new one), then the leader key tried; with it, the
    /// log's view.
    #[allow(clippy::type_complexity)]
    async fn round(
        &self,
        lease: &mut Option<i64>,
        held: Option<Term>,
    ) -> Result<(Option<Term>, Option<(Leader, Term)>, LogView), EtcdError> {
        let ttl_secs = self.ttl.as_secs().max(2) as i64;
        // Without a lease of its own yet, a round only reads.
        let mut may_stand = true;
        let id = match (&self.shared_lease, *lease) {
            (Some(shared), _) => match shared.current() {
                Some((id, _)) => id,
                // Not standing, or etcd's clock not seen yet by this coordinator (this round
                // sees it: a replica whose clock is wrong must learn it), it only reads — no key
                // can be bound to lease 0.
                None if !self.standing() || self.etcd.skew(self.clock.now()).is_none() => {
                    may_stand = false;
                    0
                }
                None => return Err(EtcdError::Unreachable("this replica's lease on etcd is not certain".into())),
            },
            (None, Some(id)) if self.etcd.keepalive(id).await?.is_some() => id,
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
        let view_ops = self.view_ops();
        // After the renewal, as ever: its answer is what says etcd's clock.
        let standing = may_stand && self.standing();
        if !standing {
            // Not standing: read who leads; holding the key, give it up (the lease's revocation
            // deletes it at once).
            let (holder, view) = self.read_leader().await?;
            if let Some(kv) = holder.as_ref().filter(|kv| kv.lease == id) {
                let planned = self.shared_lease.is_some() && !self.assigned().mine;
                if planned {
                    // A move of a shared fleet's deployment, planned: not an error.
                    *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!(replica = %self.me.replica, "giving this deployment up: another replica is to hold it (the fleet is shared out again)");
                } else {
                    self.lose("not standing for election");
                }
                match self.shared_lease {
                    Some(_) => self.give_up(kv.create_revision).await?,
                    None => {
                        self.etcd.revoke(id).await?;
                        *lease = None;
                    }
                }
                if !planned {
                    tracing::warn!(replica = %self.me.replica, "leader key given up");
                }
                return Ok((None, None, view));
            }
            let holder = holder.and_then(|kv| {
                serde_json::from_slice::<Leader>(&kv.value).ok().map(|l| (l, Term(kv.create_revision, 0)))
            });
            return Ok((None, holder, view));
        }
        // A fleet's deployment held at the last round: whether it still is, read (among the
        // fleet's reads of the moment: one transaction for many deployments); the key gone,
        // it stands for it again below.
        if held.is_some() && self.shared_lease.is_some() {
            let (holder, view) = self.read_leader().await?;
            if let Some(kv) = holder {
                let term = Term(kv.create_revision, 0);
                let holder = serde_json::from_slice::<Leader>(&kv.value).ok().map(|l| (l, term));
                return Ok(((kv.lease == id).then_some(term), holder, view));
            }
        }
        let me = serde_json::to_vec(&self.me).unwrap_or_default();
        let put = Op::Put { key: key.clone(), value: me, lease: Some(id) };
        let mut success = vec![put];
        success.extend(self.view_ops());
        let mut failure = vec![Op::Get(key.clone())];
        failure.extend(view_ops);
        let r = self.etcd.txn(&[Compare::Created(key.clone(), 0)], &success, &failure).await?;
        if r.succeeded {
            let view = self.view(&r.ranges);
            return Ok((Some(Term(r.revision, 0)), Some((self.me.clone(), Term(r.revision, 0))), view));
        }
        let view = self.view(&r.ranges[1.min(r.ranges.len())..]);
        let Some(kv) = r.ranges.into_iter().next().and_then(|kvs| kvs.into_iter().next()) else {
            return Ok((None, None, view)); // gone between the compare and the read: next round
        };
        let term = Term(kv.create_revision, 0);
        let holder = serde_json::from_slice::<Leader>(&kv.value).ok().map(|l| (l, term));
        if kv.lease == id {
            return Ok((Some(term), holder, view));
        }
        Ok((None, holder, view))
    }

    /// Whether the shared log can be trusted this round (see the module's "Trust"): `Ok(None)`
    /// when it can, else why not and whether it lost data this replica knew. Starts a rebuild,
    /// merges this replica's journal into one, and — holding the leader key under `term` after
    /// the quiet period — closes it.
    async fn check_trust(
        &self,
        term: Option<Term>,
        view: &LogView,
        local: u64,
    ) -> Result<Result<bool, (String, bool)>, EtcdError> {
        let went_back = self.etcd.observed().went_back;
        if let Some(rebuild) = &view.rebuild {
            let what: Value = serde_json::from_slice(&rebuild.value).unwrap_or_default();
            let why = what.get("why").and_then(Value::as_str).unwrap_or("the shared log is new").to_string();
            let by = what.get("by").and_then(Value::as_str).unwrap_or("a replica").to_string();
            let id: RebuildId = (rebuild.create_revision, rebuild.value.clone());
            let (since, merged) = {
                let mut t = self.trust.lock().unwrap_or_else(|p| p.into_inner());
                if t.rebuild.as_ref().is_none_or(|(r, _)| *r != id) {
                    t.rebuild = Some((id.clone(), Stopwatch::start()));
                }
                let since = t.rebuild.as_ref().map(|(_, s)| *s).unwrap_or_else(Stopwatch::start);
                (since, t.merged.as_ref() == Some(&id))
            };
            // A new log is routine (said as information); one rebuilt after a loss is not.
            let lost = !why.starts_with("a new shared log");
            if !merged && self.merge(rebuild.create_revision, lost).await? {
                self.trust.lock().unwrap_or_else(|p| p.into_inner()).merged = Some(id.clone());
            }
            let merged = self.trust.lock().unwrap_or_else(|p| p.into_inner()).merged.as_ref() == Some(&id);
            if let Some(term) = term
                && merged
                && since.elapsed().as_std() >= self.quiet()
                && self.close_rebuild(term, rebuild.create_revision, lost).await?
            {
                return Ok(Ok(true));
            }
            return Ok(Err((
                format!("{why}; rebuilding the shared state from the replicas' journals (started by {by})"),
                lost,
            )));
        }
        let known = self.trust.lock().unwrap_or_else(|p| p.into_inner()).epoch.clone();
        let loss = match (&view.epoch, went_back) {
            (_, Some(back)) => Some(back),
            (None, None) if local > 0 || known.is_some() => Some(format!(
                "etcd holds no shared log, but this replica's journal holds its lines up to seq {local}: etcd lost its data (wiped, restored from an older snapshot, or a new cluster)"
            )),
            (None, None) => None,
            (Some(_), None) if view.last_seq < local => Some(format!(
                "the shared log in etcd ends at seq {}, but this replica's journal holds seq {local}: etcd lost data (restored from an older snapshot?)",
                view.last_seq
            )),
            (Some(_), None) => None,
        };
        if loss.is_some() || view.epoch.is_none() {
            let lost = loss.is_some();
            let why = loss.unwrap_or_else(|| "a new shared log: waiting for every replica's journal".into());
            self.start_rebuild(&why).await?;
            return Ok(Err((why, lost)));
        }
        let mut t = self.trust.lock().unwrap_or_else(|p| p.into_inner());
        let new_epoch = t.epoch != view.epoch;
        t.epoch = view.epoch.clone();
        t.rebuild = None;
        Ok(Ok(new_epoch))
    }

    /// Marks the shared log untrusted: the rebuild key (unless one is open) and no epoch.
    async fn start_rebuild(&self, why: &str) -> Result<(), EtcdError> {
        let value = json!({"by": self.me.replica, "why": why, "at": self.clock.now().0}).to_string();
        let ops = [
            Op::Put { key: self.rebuild_key(), value: value.into_bytes(), lease: None },
            Op::DeleteRange(self.epoch_key(), format!("{}\0", self.epoch_key())),
        ];
        let r = self.etcd.txn(&[Compare::Created(self.rebuild_key(), 0)], &ops, &[]).await?;
        if r.succeeded && why.starts_with("a new shared log") {
            // The first start on a new key: expected, not a fault.
            tracing::info!(replica = %self.me.replica, why, "a new shared log: nobody acts until the replicas' journals are merged into it (a few seconds)");
        } else if r.succeeded {
            tracing::error!(replica = %self.me.replica, why, "the shared log is not trusted: nobody acts until it is rebuilt from the replicas' journals");
        }
        Ok(())
    }

    /// Merges this replica's journal lines of the shared log into it (rebuild `rebuild`): the
    /// union by seq, compacted, written as the snapshot. Whether it is merged (nothing to add,
    /// or written). `lost`: a rebuild after etcd lost data (a new log's is routine).
    async fn merge(&self, rebuild: i64, lost: bool) -> Result<bool, EtcdError> {
        let Some(path) = self.journal.clone() else { return Ok(true) };
        let read =
            tokio::task::spawn_blocking(move || crate::journal::Journal::read_back_kept(&path, |l| seq_of(l) > 0))
                .await;
        let mine = match read {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "this replica's journal cannot be read for the rebuild; trying again");
                return Ok(false);
            }
            Err(e) => {
                tracing::error!(error = %e, "reading this replica's journal for the rebuild failed; trying again");
                return Ok(false);
            }
        };
        let events = self.events_prefix();
        let r = self
            .etcd
            .txn(
                &[],
                &[
                    Op::Get(self.snapshot_key()),
                    Op::GetRange(events.clone(), prefix_end(&events)),
                    Op::Get(self.compacted_key()),
                ],
                &[],
            )
            .await?;
        let mut by_seq = std::collections::BTreeMap::new();
        if let Some(kv) = r.ranges.first().and_then(|k| k.first())
            && let Ok(v) = serde_json::from_slice::<Value>(&kv.value)
        {
            for line in v.get("lines").and_then(Value::as_array).cloned().unwrap_or_default() {
                by_seq.insert(seq_of(&line), line);
            }
        }
        for kv in r.ranges.get(1).into_iter().flatten() {
            if let Ok(line) = serde_json::from_slice::<Value>(&kv.value) {
                by_seq.insert(seq_of(&line), line);
            }
        }
        let compacted_rev = r.ranges.get(2).and_then(|k| k.first()).map_or(0, |kv| kv.mod_revision);
        let mut added = 0;
        for line in mine {
            let seq = seq_of(&line);
            if seq > 0 && !by_seq.contains_key(&seq) {
                by_seq.insert(seq, line);
                added += 1;
            }
        }
        if added == 0 {
            return Ok(true);
        }
        let upto = by_seq.keys().next_back().copied().unwrap_or(0);
        let kept = (self.compactor)(by_seq.into_values().collect(), self.clock.now());
        let snapshot = json!({"upto": upto, "lines": kept}).to_string();
        if snapshot.len() > MAX_SNAPSHOT_BYTES {
            tracing::error!(bytes = snapshot.len(), "rebuilt shared log too large to write; merging nothing");
            return Ok(true);
        }
        let ops = [
            Op::Put { key: self.snapshot_key(), value: snapshot.into_bytes(), lease: None },
            Op::Put { key: self.compacted_key(), value: json!({"upto": upto}).to_string().into_bytes(), lease: None },
            Op::DeleteRange(self.event_key(0), self.event_key(upto + 1)),
        ];
        let guard =
            [Compare::Created(self.rebuild_key(), rebuild), Compare::Modified(self.compacted_key(), compacted_rev)];
        let r = self.etcd.txn(&guard, &ops, &[]).await?;
        if r.succeeded && lost {
            tracing::warn!(replica = %self.me.replica, added, upto, "this replica's journal merged into the shared log");
        } else if r.succeeded {
            tracing::info!(replica = %self.me.replica, added, upto, "this replica's journal merged into the new shared log");
        }
        Ok(r.succeeded)
    }

    /// Closes rebuild `rebuild` as the leader of `term`: a new epoch. Whether it closed.
    /// `lost`: a rebuild after etcd lost data (a new log's is routine).
    async fn close_rebuild(&self, term: Term, rebuild: i64, lost: bool) -> Result<bool, EtcdError> {
        let epoch = json!({"by": self.me.replica, "term": term.0, "at": self.clock.now().0}).to_string();
        let ops = [
            Op::DeleteRange(self.rebuild_key(), format!("{}\0", self.rebuild_key())),
            Op::Put { key: self.epoch_key(), value: epoch.clone().into_bytes(), lease: None },
        ];
        let guard = [Compare::Created(self.leader_key(), term.0), Compare::Created(self.rebuild_key(), rebuild)];
        let r = self.etcd.txn(&guard, &ops, &[]).await?;
        if r.succeeded && lost {
            tracing::warn!(replica = %self.me.replica, term = term.0, "shared log rebuilt: a new epoch");
        } else if r.succeeded {
            tracing::info!(replica = %self.me.replica, term = term.0, "new shared log opened: a new epoch");
        }
        if r.succeeded {
            let mut t = self.trust.lock().unwrap_or_else(|p| p.into_inner());
            t.epoch = Some(epoch);
            t.rebuild = None;
        }
        Ok(r.succeeded)
    }

    /// One election round outside [`run`](Self::run) (a tool, a test): the lease taken or
    /// renewed (`lease` keeps it between calls) and the leader key tried; when it is this
    /// replica's, it may commit under the term returned — without the shared log read first.
    pub async fn elect_once(&self, lease: &mut Option<i64>) -> Result<Option<Term>, EtcdError> {
        let sent = Stopwatch::start();
        let (term, _, _) = self.round(lease, None).await?;
        let term = term.map(|t| Term(t.0, self.terms.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1));
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
        let mut following: Option<Following> = None;
        let mut down = false;
        // Since when rounds fail: a follower waits out a blip as long as a leader is sure of
        // its lease (2/3 ttl) before it says nobody acts.
        let mut failing: Option<Stopwatch> = None;
        let mut first = true;
        // The term under which the last round found this replica holding the leader key (it may
        // hold it before it leads: the log is read first).
        let mut held: Option<Term> = None;
        loop {
            if !first {
                // A fleet's coordinators go round together (their reads then go to etcd
                // together: [`Etcd::read`]); one deployment's, every `every` from its last.
                let next = match self.shared_lease {
                    Some(_) => tokio::time::sleep_until(crate::time::next_on_grid(every, self.grid_slot())),
                    None => tokio::time::sleep(every),
                };
                tokio::select! {
                    _ = next => {}
                    _ = self.wake.notified() => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            first = false;
            // A fleet's deployment that another replica is to hold: parked, it asks etcd
            // nothing (its lease given up), and follows the holder the share read.
            let assigned = self.assigned();
            if !assigned.mine && leading.is_none() {
                if let Some(id) = lease.take()
                    && let Err(e) = self.etcd.revoke(id).await
                {
                    tracing::debug!(error = %e, "could not revoke a parked deployment's lease; it expires within the ttl");
                }
                // Its key still bound to this replica's lease (a term that ended on an error):
                // given up, or nobody else could take the deployment.
                if let Some((l, term)) = &assigned.holder
                    && l.replica == self.me.replica
                    && self.shared_lease.is_some()
                    && let Err(e) = self.give_up(term.0).await
                {
                    tracing::warn!(error = %e, "could not give up the leader key of a deployment held by another replica now");
                }
                let leader = assigned.holder.as_ref().map(|(l, _)| l.clone());
                let now_following = (leader.clone(), None);
                if following.as_ref() != Some(&now_following) {
                    following = Some(now_following);
                    let _ = updates.send(Update::Follow { leader: leader.clone(), not_standing: None }).await;
                }
                self.set_status(Role::Follower, leader, assigned.holder.map(|(_, t)| t), None);
                down = false;
                failing = None;
                continue;
            }
            let sent = Stopwatch::start();
            // Read before the round: a line this replica commits meanwhile is in the log too.
            let local = self.journal_seq.load(std::sync::atomic::Ordering::SeqCst);
            let result = match self.round(&mut lease, held).await {
                Ok((term, holder, view)) => {
                    held = term;
                    match self.check_trust(term, &view, local).await {
                        Err(e) => Err(e),
                        Ok(Err((why, lost))) => {
                            // Nobody acts on a log that cannot be trusted: not even its leader.
                            if leading.take().is_some() {
                                self.lose(&why);
                            }
                            let told = {
                                let mut t = self.trust.lock().unwrap_or_else(|p| p.into_inner());
                                let told = t.distrust.is_some();
                                t.distrust = Some(why.clone());
                                told
                            };
                            if !told {
                                following = None;
                                let _ = updates.send(Update::Distrust { why: why.clone(), lost }).await;
                            }
                            let leader = holder.as_ref().map(|(l, _)| l.clone());
                            // A replica whose clock keeps it from leading cannot close the rebuild
                            // either: it says why, as a follower that may not stand does (and so
                            // tells a wanted rollback that nobody acts on, when nobody leads).
                            let skew = self.skewed.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            if let Some(skew) = &skew {
                                let now_following = (leader.clone(), Some(skew.clone()));
                                if following.as_ref() != Some(&now_following) {
                                    following = Some(now_following);
                                    let update =
                                        Update::Follow { leader: leader.clone(), not_standing: Some(skew.clone()) };
                                    let _ = updates.send(update).await;
                                }
                            }
                            let error = match skew {
                                Some(skew) => format!("{why}; {skew}"),
                                None => why,
                            };
                            self.set_status(Role::Rebuilding, leader, holder.map(|(_, t)| t), Some(error));
                            Ok(())
                        }
                        Ok(Ok(new_epoch)) => {
                            let was_distrusted =
                                self.trust.lock().unwrap_or_else(|p| p.into_inner()).distrust.take().is_some();
                            if new_epoch || was_distrusted {
                                // A log rebuilt (or first seen): read whole, lead anew from it.
                                leading = None;
                                following = None;
                                self.log.lock().await.synced = false;
                            }
                            self.act_on_round(term, holder, sent, &mut leading, &mut following, &updates).await
                        }
                    }
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
                        let was_leader = leading.take().is_some();
                        if was_leader {
                            self.lose(&error);
                        }
                        let last_leader = following.take().and_then(|(l, _)| l);
                        // Who leads cannot be known without etcd (nobody acts meanwhile).
                        self.set_status(Role::Unreachable, None, None, Some(error.clone()));
                        if !down {
                            tracing::error!(%error, "etcd unreachable: not acting");
                            down = true;
                            // One replica tells people: the last leader, or a follower whose
                            // last leader does not answer either.
                            let tell = was_leader
                                || match &last_leader {
                                    Some(l) if l.replica != self.me.replica => !self.peer_answers(&l.address).await,
                                    _ => true,
                                };
                            let _ = updates.send(Update::Unreachable { error, tell }).await;
                        }
                    }
                }
            }
        }
        // A stop ends leadership quietly: the lease is revoked (a fleet's deployment: its key
        // deleted, led or only held — the replica's lease lives on) for the next replica.
        *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if let (Some(_), Some(term)) = (&self.shared_lease, leading.or(held))
            && let Err(e) = self.give_up(term.0).await
        {
            tracing::warn!(error = %e, "could not give the leader key up at stop; it goes with this replica's lease");
        }
        if let Some(id) = lease
            && let Err(e) = self.etcd.revoke(id).await
        {
            tracing::warn!(error = %e, "could not revoke the lease at stop; it expires within the ttl");
        }
    }

    /// Whether the replica at `address` answers `/healthz` (within a second).
    async fn peer_answers(&self, address: &str) -> bool {
        let Ok(client) = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(1)).build() else {
            return false;
        };
        let url = format!("{}/healthz", address.trim_end_matches('/'));
        client.get(url).send().await.is_ok_and(|r| r.status().is_success())
    }

    /// A round whose log is trusted: lead under `term`, or follow `holder`.
    async fn act_on_round(
        &self,
        term: Option<Term>,
        holder: Option<(Leader, Term)>,
        sent: Stopwatch,
        leading: &mut Option<Term>,
        following: &mut Option<Following>,
        updates: &mpsc::Sender<Update>,
    ) -> Result<(), EtcdError> {
        if let Some(term) = term {
            return self.lead_round(term, sent, leading, updates).await;
        }
        if self.shared_lease.is_some() && !self.assigned().mine && leading.take().is_some() {
            // The share gave the deployment to another replica, and this one gave its key up:
            // planned, not a loss (the next round follows whoever claims it).
            *following = None;
            let _ = updates.send(Update::HandedOver).await;
            self.set_status(Role::Follower, None, None, None);
            return Ok(());
        }
        if holder.as_ref().is_some_and(|(l, _)| l.replica == self.me.replica) {
            tracing::error!(replica = %self.me.replica, "another replica leads under this replica's name: give each its own `replica`");
        }
        let term = holder.as_ref().map(|(_, t)| *t);
        let leader = holder.map(|(l, _)| l);
        if leading.take().is_some() {
            self.lose("another replica holds the leader key");
        }
        let error = self.skewed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now_following = (leader.clone(), error.clone());
        if following.as_ref() != Some(&now_following) {
            let name = leader.as_ref().map_or("nobody yet", |l| l.replica.as_str());
            tracing::info!(replica = %self.me.replica, leader = name, "following");
            *following = Some(now_following);
            let _ = updates.send(Update::Follow { leader: leader.clone(), not_standing: error.clone() }).await;
        }
        self.set_status(Role::Follower, leader, term, error);
        self.follow_round(updates).await
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
        if self.certain_until(until).is_none() {
            return Err(EtcdError::Unreachable("this replica's lease on etcd is not certain".into()));
        }
        // The term as this process numbers it: the same while it goes on, new otherwise.
        let term = match *leading {
            Some(t) if t.0 == term.0 => t,
            _ => Term(term.0, self.terms.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1),
        };
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
        // Where a test makes winning a lead slow (FAILPOINTS `before-lead=return(MS)`, waited
        // without holding up the runtime): it is then certain for a moment only.
        if let Some(ms) = fail::eval("before-lead", |ms| ms.and_then(|ms| ms.parse::<u64>().ok()).unwrap_or(0)) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
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
            Op::Put { key: self.compacted_key(), value: json!({"upto": upto}).to_string().into_bytes(), lease: None },
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
