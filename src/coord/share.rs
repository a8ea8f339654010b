//! A fleet shared among replicas (`deployments = [...]` with `[ha]`): every deployment is held
//! by exactly one replica, which polls its targets and acts on it; the others park it.
//!
//! - **Who holds what.** Each deployment has its own leader key, `{key}/leaders/NAME`, bound to
//!   the lease of its holder's coordinator for it ([`Coordinator::in_fleet`]), and its own shared
//!   log under `{key}/deployments/NAME/`: the election, the fencing of every acting write and
//!   step, and the log's trust are a one-deployment `[ha]`'s, deployment by deployment — a move
//!   from one replica to another is a change of leader, fenced like one.
//! - **Who is up.** Each replica keeps `{key}/replicas/NAME` (its address) on a lease of its own
//!   while its clock agrees with etcd's (one that may not lead counts for nobody's share).
//! - **The share.** Every round (a quarter of the ttl, at most half a second) one transaction renews
//!   that key and reads both ranges; [`plan`] says which deployments this replica is to hold:
//!   what it holds, up to `⌈N/R⌉` of N among R replicas; each unheld deployment goes to the
//!   replica with room that prefers it most (rendezvous hashing), so that every replica reading
//!   the same view makes the same claims and none race; the excess is given up when a replica
//!   holds fewer (one that joined) — never a deployment whose rollback is in flight — and
//!   claiming any deployment nobody has held for `2 × ttl`, whatever its share (a replica that
//!   counts but does not take its share must not leave one unwatched). For its first ttl a
//!   replica claims nothing, so that replicas started together see each other before they
//!   claim (one that saw itself alone would claim the whole fleet). Each coordinator is told
//!   ([`Coordinator::assign`]) and the engine starts or stops polling.
//! - **etcd out of reach.** While the share cannot be read, each deployment stays where it is;
//!   after a ttl, every replica watches every deployment (nobody can tell who watches what),
//!   and each coordinator says that etcd cannot be reached and that nobody acts, until etcd
//!   answers and each deployment goes back to one replica.
//! - **A replica that stops** first withdraws its key ([`Phase::Leaving`]): the others' share
//!   grows at once, and they take each deployment as its engine here stops and gives its key
//!   up, not once the last one has (a rollback in flight is let finish, its key kept).
//! - **A dead replica.** Its leases expire within the ttl; its deployments' leader keys go with
//!   them, the next round sees them unheld and the survivors' share grown, and each is claimed
//!   by one survivor at once (the coordinator is woken, not left to its next round).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::etcd::{Compare, Etcd, EtcdError, Op, prefix_end};
use super::{Leader, MAX_SKEW};
use crate::config::deploy::HaSpec;
use crate::time::{Clock, Span, Stopwatch};

/// A fleet deployment's shared log and its keys.
pub fn deployment_key(base: &str, name: &str) -> String {
    format!("{base}/deployments/{name}")
}

/// A fleet deployment's leader key.
pub fn leader_key(base: &str, name: &str) -> String {
    format!("{}{name}", leaders_prefix(base))
}

fn leaders_prefix(base: &str) -> String {
    format!("{base}/leaders/")
}

fn replicas_prefix(base: &str) -> String {
    format!("{base}/replicas/")
}

/// What the share says of one deployment to its engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Holding {
    /// This replica is to hold it (poll, stand for its leader key, act).
    pub mine: bool,
    /// Who holds it as last read, with the leader key's create revision (its term).
    pub holder: Option<(Leader, i64)>,
}

/// What a deployment's engine gets of the share: its word on the deployment, and this
/// replica's seat in it.
pub struct Member {
    pub holding: watch::Receiver<Holding>,
    pub seat: Seat,
}

/// This replica's seat in the share, for a deployment's coordinator: a client of the cluster
/// (the share's connection pool), this replica's lease, and the fleet's key.
pub struct Seat {
    pub etcd: Etcd,
    pub lease: Arc<SharedLease>,
    /// The fleet's key in etcd (`[ha] key`).
    pub base: String,
}

impl Seat {
    /// Gives up the leader key of `name` held under `term` (its create revision): a key this
    /// replica holds for a deployment that no engine here stands for.
    pub async fn give_up(&self, name: &str, term: i64) -> Result<(), EtcdError> {
        give_up(&self.etcd, &leader_key(&self.base, name), term).await
    }
}

/// Deletes the leader key `key` if it is still the one created under `term` (fenced: a key
/// another replica created since is left alone).
pub async fn give_up(etcd: &Etcd, key: &str, term: i64) -> Result<(), EtcdError> {
    let end = format!("{key}\0");
    etcd.txn(&[Compare::Created(key.to_string(), term)], &[Op::DeleteRange(key.to_string(), end)], &[]).await.map(drop)
}

/// This replica's lease, which the share keeps alive: its key in `{key}/replicas/` and every
/// leader key it holds are bound to it, so that one renewal keeps them all and a dead replica's
/// keys all go at once. Read by each deployment's coordinator ([`Coordinator::in_fleet`]).
#[derive(Debug, Default)]
pub struct SharedLease(Mutex<Option<(i64, crate::time::Deadline)>>);

impl SharedLease {
    /// The lease and until when it is certain (two thirds of the ttl after the renewal was
    /// sent: it cannot have expired at etcd before), while it is.
    pub fn current(&self) -> Option<(i64, crate::time::Deadline)> {
        let lease = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        lease.filter(|(_, until)| !until.passed())
    }

    fn set(&self, lease: Option<(i64, crate::time::Deadline)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = lease;
    }
}

/// Where this replica is in the share, as the fleet tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    /// Taking its share of the fleet.
    #[default]
    Sharing,
    /// Stopping: its key is withdrawn at once, so that the others' share grows and they take
    /// what it lets go without waiting for its last deployment to stop; its lease is kept
    /// alive for the deployments whose rollback is still in flight here (their keys are bound
    /// to it).
    Leaving,
    /// Stopped: its lease is revoked.
    Stopped,
}

/// This replica's part in sharing a fleet.
pub struct Share {
    etcd: Etcd,
    base: String,
    me: Leader,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    names: Vec<String>,
    /// As last read: the replicas up, and each deployment's holder.
    seen: Mutex<Seen>,
    lease: Arc<SharedLease>,
}

#[derive(Debug, Default, Clone)]
struct Seen {
    replicas: BTreeMap<String, Leader>,
    /// Each replica's lease: one incarnation of it (a replica restarted has a new one).
    leases: BTreeMap<String, i64>,
    holders: BTreeMap<String, (Leader, i64)>,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share").field("base", &self.base).field("me", &self.me).finish_non_exhaustive()
    }
}

impl Share {
    /// The share of the deployments `names` for the replica `[ha]` describes.
    pub fn new(
        spec: &HaSpec,
        listen: std::net::SocketAddr,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
        names: Vec<String>,
    ) -> Result<Share, EtcdError> {
        let etcd = Etcd::new(spec, env, super::request_timeout(spec))?;
        Ok(Share {
            etcd,
            base: spec.key.trim_end_matches('/').to_string(),
            me: super::identity(spec, listen),
            ttl: super::lease_ttl(spec),
            clock,
            names,
            seen: Mutex::default(),
            lease: Arc::default(),
        })
    }

    pub fn me(&self) -> &Leader {
        &self.me
    }

    /// What one deployment's engine needs of the share: a client of the same cluster (one
    /// connection pool) and this replica's lease.
    pub fn member(&self, holding: watch::Receiver<Holding>) -> Member {
        let seat = Seat { etcd: self.etcd.sibling(), lease: self.lease.clone(), base: self.base.clone() };
        Member { holding, seat }
    }

    /// Who holds `name`, as last read.
    pub fn holder(&self, name: &str) -> Option<Leader> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).holders.get(name).map(|(l, _)| l.clone())
    }

    /// The other replicas up, as last read.
    pub fn peers(&self) -> Vec<Leader> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.replicas.values().filter(|l| l.replica != self.me.replica).cloned().collect()
    }

    /// How often the share is read: a quarter of the ttl, at most half a second.
    fn every(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(200), Duration::from_millis(500))
    }

    /// Whether this replica's clock agrees with etcd's closely enough for it to lead.
    fn clock_ok(&self) -> bool {
        self.etcd.skew(self.clock.now()).is_none_or(|s| s.abs() <= MAX_SKEW.0)
    }

    /// Says once when this replica's clock keeps it out of the share, and when it is back.
    fn tell_clock(&self, standing: bool, told: &mut bool) {
        if standing == *told {
            if standing {
                tracing::warn!(replica = %self.me.replica, "this replica's clock agrees with etcd's again: it takes its share of the fleet");
            } else {
                let skew = self.etcd.skew(self.clock.now()).unwrap_or(0);
                tracing::error!(
                    replica = %self.me.replica,
                    "this replica's clock is {} {} etcd's (more than {} apart): it holds no deployment of the fleet; it watches only those nobody holds, to say that it cannot act",
                    crate::time::human(Span(skew.abs())),
                    if skew > 0 { "ahead of" } else { "behind" },
                    crate::time::human(MAX_SKEW)
                );
            }
            *told = !standing;
        }
    }

    /// One round: this replica's key renewed (or withdrawn, while its clock may not lead), the
    /// replicas and holders read.
    async fn round(&self, lease: &mut Option<i64>, standing: bool) -> Result<Seen, EtcdError> {
        let mine = self.replica_key();
        let mut ops = Vec::new();
        if standing {
            let sent = Stopwatch::start();
            let id = match *lease {
                Some(id) if self.etcd.keepalive(id).await?.is_some() => id,
                _ => {
                    if lease.is_some() {
                        tracing::warn!(replica = %self.me.replica, "this replica's lease expired at etcd: every deployment it held is given up; taking a new one");
                        self.lease.set(None);
                    }
                    let id = self.etcd.grant(self.ttl.as_secs().max(2) as i64).await?;
                    *lease = Some(id);
                    id
                }
            };
            self.lease.set(Some((id, sent.deadline(self.ttl * 2 / 3))));
            let value = serde_json::to_vec(&self.me).unwrap_or_default();
            ops.push(Op::Put { key: mine, value, lease: Some(id) });
        } else if let Some(id) = lease.take() {
            self.lease.set(None);
            self.etcd.revoke(id).await?;
        }
        self.read_with(ops).await
    }

    /// `ops`, then the replicas up and the holders read, in one transaction.
    async fn read_with(&self, mut ops: Vec<Op>) -> Result<Seen, EtcdError> {
        let (replicas, leaders) = (replicas_prefix(&self.base), leaders_prefix(&self.base));
        ops.push(Op::GetRange(replicas.clone(), prefix_end(&replicas)));
        ops.push(Op::GetRange(leaders.clone(), prefix_end(&leaders)));
        let r = self.etcd.txn(&[], &ops, &[]).await?;
        let mut ranges = r.ranges.into_iter();
        let mut seen = Seen::default();
        for kv in ranges.next().unwrap_or_default() {
            if let Ok(l) = serde_json::from_slice::<Leader>(&kv.value) {
                seen.leases.insert(l.replica.clone(), kv.lease);
                seen.replicas.insert(l.replica.clone(), l);
            }
        }
        for kv in ranges.next().unwrap_or_default() {
            let Some(name) = kv.key.strip_prefix(&leaders) else { continue };
            if let Ok(l) = serde_json::from_slice::<Leader>(&kv.value) {
                seen.holders.insert(name.to_string(), (l, kv.create_revision));
            }
        }
        Ok(seen)
    }

    /// This replica's key in `{key}/replicas/`.
    fn replica_key(&self) -> String {
        format!("{}{}", replicas_prefix(&self.base), self.me.replica)
    }

    /// A round while this replica leaves ([`Phase::Leaving`]): its lease renewed (never a new
    /// one), its key withdrawn once (`withdrawn`), who holds what read (commands that reach
    /// it meanwhile are sent on to the holders).
    async fn leave_round(&self, lease: &mut Option<i64>, withdrawn: &mut bool) -> Result<(), EtcdError> {
        if let Some(id) = *lease {
            let sent = Stopwatch::start();
            if self.etcd.keepalive(id).await?.is_some() {
                self.lease.set(Some((id, sent.deadline(self.ttl * 2 / 3))));
            } else {
                *lease = None;
                self.lease.set(None);
            }
        }
        let mut ops = vec![];
        if !*withdrawn {
            let mine = self.replica_key();
            ops.push(Op::DeleteRange(mine.clone(), format!("{mine}\0")));
        }
        let seen = self.read_with(ops).await?;
        if !std::mem::replace(withdrawn, true) {
            tracing::info!(replica = %self.me.replica, "leaving the share: the other replicas take what this one lets go");
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        Ok(())
    }

    /// Shares the fleet until [`Phase::Stopped`]: tells each deployment's engine (`tell`, by
    /// name) what it is to hold; `busy(name)`: whether the deployment has a rollback in flight
    /// here (never given up then). While [`Phase::Leaving`], it only withdraws this replica's
    /// key and keeps its lease alive (the engines are stopping); at the stop, the lease is
    /// revoked. While etcd cannot be read, each deployment stays as it was (its coordinator
    /// says what it can and cannot do).
    pub async fn run(
        self: Arc<Self>,
        tell: BTreeMap<String, watch::Sender<Holding>>,
        busy: Box<dyn Fn(&str) -> bool + Send + Sync>,
        mut phase: watch::Receiver<Phase>,
    ) {
        let mut lease = None;
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let mut unheld_since: BTreeMap<String, Stopwatch> = BTreeMap::new();
        // Since when the share cannot be read, and whether every deployment is watched here
        // because of it.
        let mut failing: Option<Stopwatch> = None;
        let mut watching_all = false;
        let stranded_after = Span((self.ttl * 2).as_millis() as i64);
        let mut skew_told = false;
        // For its first ttl a replica claims nothing: replicas started together see each other
        // first (one that saw itself alone would claim the whole fleet, then give most of it
        // up). A replica that restarts loses nothing by it: the deployments it held stay bound
        // to its old lease for as long.
        let started = Stopwatch::start();
        let mut warming = true;
        // Since when each replica (each incarnation of it) is seen: one seen for less than a
        // ttl claims nothing yet, so nothing is given up to it before then (or its share would
        // go unwatched until it claims).
        let mut first_seen: BTreeMap<(String, i64), Stopwatch> = BTreeMap::new();
        let mut withdrawn = false;
        loop {
            let now = *phase.borrow_and_update();
            match now {
                Phase::Stopped => break,
                Phase::Leaving => {
                    if let Err(e) = self.leave_round(&mut lease, &mut withdrawn).await {
                        tracing::warn!(error = %e, "leaving the share: etcd did not answer; trying again");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.every()) => {}
                        changed = phase.changed() => if changed.is_err() { break },
                    }
                    continue;
                }
                Phase::Sharing => {}
            }
            let standing = self.clock_ok();
            self.tell_clock(standing, &mut skew_told);
            match self.round(&mut lease, standing).await {
                Ok(seen) => {
                    if failing.take().is_some() {
                        tracing::info!("the fleet's share can be read again: each deployment goes back to one replica");
                        watching_all = false;
                    }
                    let holders: BTreeMap<String, String> =
                        seen.holders.iter().map(|(n, (l, _))| (n.clone(), l.replica.clone())).collect();
                    unheld_since.retain(|n, _| !holders.contains_key(n));
                    for n in &self.names {
                        if !holders.contains_key(n) {
                            unheld_since.entry(n.clone()).or_insert_with(Stopwatch::start);
                        }
                    }
                    let stranded: BTreeSet<String> = unheld_since
                        .iter()
                        .filter(|(_, since)| since.elapsed() > stranded_after)
                        .map(|(n, _)| n.clone())
                        .collect();
                    let mut replicas: BTreeSet<String> = seen.replicas.keys().cloned().collect();
                    if standing {
                        replicas.insert(self.me.replica.clone());
                    } else {
                        replicas.remove(&self.me.replica);
                    }
                    first_seen.retain(|(r, lease), _| seen.leases.get(r) == Some(lease));
                    for (r, lease) in &seen.leases {
                        first_seen.entry((r.clone(), *lease)).or_insert_with(Stopwatch::start);
                    }
                    let settled: BTreeSet<String> = replicas
                        .iter()
                        .filter(|r| {
                            **r == self.me.replica
                                || seen
                                    .leases
                                    .get(*r)
                                    .and_then(|l| first_seen.get(&((*r).clone(), *l)))
                                    .is_some_and(|since| since.elapsed().as_std() >= self.ttl)
                        })
                        .cloned()
                        .collect();
                    let view = View { me: &self.me.replica, replicas: &replicas, holders: &holders };
                    let mut next = plan(&self.names, &view, &*busy, &stranded);
                    if settled.len() < replicas.len() {
                        // Kept until the replicas that joined claim: what the share among the
                        // settled ones keeps here.
                        let view = View { me: &self.me.replica, replicas: &settled, holders: &holders };
                        let keep = plan(&self.names, &view, &*busy, &stranded);
                        next.extend(keep.into_iter().filter(|n| holders.get(n) == Some(&self.me.replica)));
                    }
                    if warming && started.elapsed().as_std() < self.ttl {
                        next.retain(|n| holders.get(n) == Some(&self.me.replica));
                    } else if std::mem::take(&mut warming) {
                        tracing::info!(replicas = replicas.len(), "taking this replica's share of the fleet");
                    }
                    for n in next.iter().filter(|n| !holders.contains_key(*n) && !claimed.contains(*n)) {
                        tracing::info!(deployment = %n, "claiming: this replica is to hold it");
                    }
                    for n in self.names.iter().filter(|n| holders.get(*n) == Some(&self.me.replica)) {
                        if !next.contains(n) {
                            tracing::info!(deployment = %n, "giving up: another replica is to hold it (the fleet is shared out again)");
                        }
                    }
                    claimed = next.iter().filter(|n| !holders.contains_key(*n)).cloned().collect();
                    tell_each(&tell, |name| Holding {
                        mine: next.contains(name),
                        holder: seen.holders.get(name).cloned(),
                    });
                    *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
                }
                Err(e) => {
                    let since = failing.get_or_insert_with(|| {
                        tracing::warn!(error = %e, "the fleet's share cannot be read: every deployment stays where it is for now");
                        Stopwatch::start()
                    });
                    // Nobody can tell who watches what: every replica watches every deployment
                    // (polls and evaluates; each coordinator says etcd cannot be reached and
                    // nobody acts) until etcd answers — never a deployment left unwatched.
                    if !watching_all && since.elapsed().as_std() > self.ttl {
                        tracing::error!(error = %e, "the fleet's share cannot be read for longer than the ttl: watching every deployment here, acting on none until etcd answers");
                        watching_all = true;
                        let holders = self.seen.lock().unwrap_or_else(|p| p.into_inner()).holders.clone();
                        tell_each(&tell, |name| Holding { mine: true, holder: holders.get(name).cloned() });
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every()) => {}
                changed = phase.changed() => if changed.is_err() { break },
            }
        }
        self.lease.set(None);
        if let Some(id) = lease
            && let Err(e) = self.etcd.revoke(id).await
        {
            tracing::warn!(error = %e, "could not withdraw this replica from the share at stop; it expires within the ttl");
        }
    }
}

/// Tells each deployment's engine what the share says of it (only a change wakes it).
fn tell_each(tell: &BTreeMap<String, watch::Sender<Holding>>, holding: impl Fn(&str) -> Holding) {
    for (name, sender) in tell {
        let holding = holding(name);
        sender.send_if_modified(|h| {
            let changed = *h != holding;
            *h = holding;
            changed
        });
    }
}

/// What a round read: this replica, the replicas up (this one among them when it may lead),
/// and each held deployment's holder.
pub struct View<'a> {
    pub me: &'a str,
    pub replicas: &'a BTreeSet<String>,
    pub holders: &'a BTreeMap<String, String>,
}

/// The deployments of `names` this replica is to hold, given what it reads (`view`), which of
/// its deployments have a rollback in flight (`busy`), and which nobody has held for long
/// (`stranded`). See the module's "The share". Every replica reading the same view computes the
/// same claims: each unheld deployment goes to the replica with room that prefers it most, so
/// replicas claiming at once do not race for the same ones.
pub fn plan(
    names: &[String],
    view: &View,
    busy: &dyn Fn(&str) -> bool,
    stranded: &BTreeSet<String>,
) -> BTreeSet<String> {
    let me = view.me;
    let held = |n: &String| view.holders.get(n).map(String::as_str);
    let mut mine: BTreeSet<String> = names.iter().filter(|n| held(n) == Some(me)).cloned().collect();
    if !view.replicas.contains(me) {
        // It may not lead (its clock): it claims nothing — but watches what nobody has held
        // for long, to say that it cannot act (its coordinators give up what they hold).
        mine.extend(names.iter().filter(|n| held(n).is_none() && stranded.contains(*n)).cloned());
        return mine;
    }
    let share = names.len().div_ceil(view.replicas.len().max(1));
    let mut counts: BTreeMap<&str, usize> = view.replicas.iter().map(|r| (r.as_str(), 0)).collect();
    for n in names {
        if let Some(h) = held(n)
            && let Some(c) = counts.get_mut(h)
        {
            *c += 1;
        }
    }
    // What it holds beyond its share, others that hold fewer can take: given up in this
    // replica's order (least preferred first), never one with a rollback in flight.
    let room: usize = counts.iter().filter(|(r, _)| **r != me).map(|(_, c)| share.saturating_sub(*c)).sum();
    let excess = mine.len().saturating_sub(share).min(room);
    if excess > 0 {
        let mut order: Vec<&String> = mine.iter().filter(|n| !busy(n)).collect();
        order.sort_by_key(|n| weight(me, n));
        let give: Vec<String> = order.into_iter().take(excess).cloned().collect();
        for n in give {
            mine.remove(&n);
        }
    }
    // Each unheld deployment to the replica with room that prefers it most.
    let mut room: BTreeMap<&str, usize> = counts.iter().map(|(r, c)| (*r, share.saturating_sub(*c))).collect();
    for n in names.iter().filter(|n| held(n).is_none()) {
        let to = room.iter().filter(|(_, left)| **left > 0).max_by_key(|(r, _)| weight(r, n)).map(|(r, _)| *r);
        if let Some(r) = to {
            room.entry(r).and_modify(|left| *left -= 1);
        }
        if to == Some(me) || stranded.contains(n) {
            mine.insert(n.clone());
        }
    }
    mine
}

/// This replica's preference for a deployment (rendezvous hashing: FNV-1a of both names), the
/// same in every replica and every build, so that replicas claiming at once prefer different
/// deployments.
fn weight(replica: &str, deployment: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica.bytes().chain([0]).chain(deployment.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i:03}")).collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Rounds of every replica in turn until nothing changes: each replica's plan, then its
    /// coordinators win what nobody holds (first come) and give up what it no longer wants.
    fn settle(names: &[String], replicas: &[&str], holders: &mut BTreeMap<String, String>) {
        let up = set(replicas);
        for _ in 0..50 {
            let before = holders.clone();
            for r in replicas {
                let view = View { me: r, replicas: &up, holders: &holders.clone() };
                let next = plan(names, &view, &|_| false, &BTreeSet::new());
                holders.retain(|n, h| h != r || next.contains(n));
                for n in &next {
                    holders.entry(n.clone()).or_insert_with(|| r.to_string());
                }
            }
            if *holders == before {
                return;
            }
        }
        panic!("the share does not settle: {holders:?}");
    }

    fn counts(holders: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for h in holders.values() {
            *c.entry(h.clone()).or_default() += 1;
        }
        c
    }

    #[test]
    fn replicas_starting_together_hold_every_deployment_once_and_evenly() {
        let all = names(100);
        let mut holders = BTreeMap::new();
        settle(&all, &["a", "b", "c"], &mut holders);
        assert_eq!(holders.len(), 100);
        let c = counts(&holders);
        assert!(c.values().all(|n| *n <= 34 + 1), "{c:?}");
        assert_eq!(c.len(), 3, "{c:?}");
    }

    #[test]
    fn a_replica_alone_holds_everything_and_one_that_joins_gets_a_fair_share() {
        let all = names(10);
        let mut holders = BTreeMap::new();
        settle(&all, &["a"], &mut holders);
        assert_eq!(counts(&holders), [("a".to_string(), 10)].into());
        settle(&all, &["a", "b"], &mut holders);
        assert_eq!(counts(&holders), [("a".to_string(), 5), ("b".to_string(), 5)].into());
    }

    #[test]
    fn a_dead_replicas_deployments_are_taken_over_by_the_survivors() {
        let all = names(9);
        let mut holders = BTreeMap::new();
        settle(&all, &["a", "b", "c"], &mut holders);
        holders.retain(|_, h| h != "c"); // c's leases expired
        settle(&all, &["a", "b"], &mut holders);
        assert_eq!(holders.len(), 9);
        assert!(counts(&holders).values().all(|n| *n <= 5 + 1));
    }

    #[test]
    fn a_deployment_in_flight_is_never_given_up_and_a_stranded_one_is_claimed_beyond_the_share() {
        let all = names(4);
        let holders: BTreeMap<String, String> = all.iter().map(|n| (n.clone(), "a".to_string())).collect();
        let up = set(&["a", "b"]);
        let view = View { me: "a", replicas: &up, holders: &holders };
        // Two to give up; the two it prefers least are both in flight: it gives up the others.
        let mut order = all.clone();
        order.sort_by_key(|n| weight("a", n));
        let in_flight = set(&[order[0].as_str(), order[1].as_str()]);
        let kept = plan(&all, &view, &|n| in_flight.contains(n), &BTreeSet::new());
        assert_eq!(kept.len(), 2);
        assert!(in_flight.is_subset(&kept), "{kept:?}");
        // b holds two and may not claim a third; stranded, it does.
        let holders: BTreeMap<String, String> =
            [("d000", "b"), ("d001", "b")].iter().map(|(n, h)| (n.to_string(), h.to_string())).collect();
        let view = View { me: "b", replicas: &up, holders: &holders };
        let stranded = set(&["d002"]);
        let mine = plan(&all[..3], &view, &|_| false, &stranded);
        assert_eq!(mine, set(&["d000", "d001", "d002"]));
    }

    #[test]
    fn a_replica_that_may_not_lead_claims_nothing_but_watches_what_nobody_holds() {
        let all = names(3);
        let up = set(&["b"]);
        let holders: BTreeMap<String, String> = [("d000".to_string(), "a".to_string())].into();
        let view = View { me: "a", replicas: &up, holders: &holders };
        assert_eq!(plan(&all, &view, &|_| false, &BTreeSet::new()), set(&["d000"]));
        // Nobody has held d002 for long: it watches it (to say it cannot act).
        assert_eq!(plan(&all, &view, &|_| false, &set(&["d002"])), set(&["d000", "d002"]));
    }

    #[test]
    fn replicas_reading_the_same_view_claim_disjoint_deployments() {
        let all = names(60);
        let up = set(&["a", "b", "c"]);
        let holders = BTreeMap::new();
        let claims: Vec<BTreeSet<String>> = ["a", "b", "c"]
            .iter()
            .map(|r| plan(&all, &View { me: r, replicas: &up, holders: &holders }, &|_| false, &BTreeSet::new()))
            .collect();
        assert_eq!(claims.iter().map(BTreeSet::len).sum::<usize>(), 60);
        assert!(claims.iter().all(|c| c.len() == 20), "{claims:?}");
    }
}
