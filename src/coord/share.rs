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
//! - **The share.** Every round (a quarter of the ttl, at most a second) one transaction renews
//!   that key and reads both ranges; [`plan`] says which deployments this replica is to hold:
//!   what it holds, up to `⌈N/R⌉` of N among R replicas, claiming unheld ones in its own order
//!   (rendezvous hashing: replicas prefer different ones), giving up the excess when a replica
//!   holds fewer (one that joined) — never a deployment whose rollback is in flight — and
//!   claiming any deployment nobody has held for `2 × ttl`, whatever its share (a replica that
//!   counts but does not take its share must not leave one unwatched). Each coordinator is told
//!   ([`Coordinator::assign`]) and the engine starts or stops polling.
//! - **A dead replica.** Its leases expire within the ttl; its deployments' leader keys go with
//!   them, the next round sees them unheld and the survivors' share grown, and each is claimed
//!   by one survivor at once (the coordinator is woken, not left to its next round).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::etcd::{Etcd, EtcdError, Op, prefix_end};
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
}

#[derive(Debug, Default, Clone)]
struct Seen {
    replicas: BTreeMap<String, Leader>,
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
        let ttl = Duration::from_millis(spec.ttl.0.max(2_000) as u64);
        let timeout = (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(3));
        let etcd = Etcd::new(spec, env, timeout)?;
        let replica = spec.replica.clone().unwrap_or_else(super::default_replica);
        let address = spec.advertise.clone().unwrap_or_else(|| format!("http://{listen}"));
        Ok(Share {
            etcd,
            base: spec.key.trim_end_matches('/').to_string(),
            me: Leader { replica, address },
            ttl,
            clock,
            names,
            seen: Mutex::default(),
        })
    }

    pub fn me(&self) -> &Leader {
        &self.me
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

    /// How often the share is read: a quarter of the ttl, at most a second.
    fn every(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(1))
    }

    /// Whether this replica's clock agrees with etcd's closely enough for it to lead.
    fn clock_ok(&self) -> bool {
        self.etcd.observed().skew(self.clock.now()).is_none_or(|s| s.abs() <= MAX_SKEW.0)
    }

    /// One round: this replica's key renewed (or withdrawn, while its clock may not lead), the
    /// replicas and holders read.
    async fn round(&self, lease: &mut Option<i64>, standing: bool) -> Result<Seen, EtcdError> {
        let mine = format!("{}{}", replicas_prefix(&self.base), self.me.replica);
        let mut ops = Vec::new();
        if standing {
            let id = match *lease {
                Some(id) if self.etcd.keepalive(id).await?.is_some() => id,
                _ => {
                    let id = self.etcd.grant(self.ttl.as_secs().max(2) as i64).await?;
                    *lease = Some(id);
                    id
                }
            };
            let value = serde_json::to_vec(&self.me).unwrap_or_default();
            ops.push(Op::Put { key: mine, value, lease: Some(id) });
        } else if let Some(id) = lease.take() {
            self.etcd.revoke(id).await?;
        }
        let (replicas, leaders) = (replicas_prefix(&self.base), leaders_prefix(&self.base));
        ops.push(Op::GetRange(replicas.clone(), prefix_end(&replicas)));
        ops.push(Op::GetRange(leaders.clone(), prefix_end(&leaders)));
        let r = self.etcd.txn(&[], &ops, &[]).await?;
        let mut ranges = r.ranges.into_iter();
        let mut seen = Seen::default();
        for kv in ranges.next().unwrap_or_default() {
            if let Ok(l) = serde_json::from_slice::<Leader>(&kv.value) {
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

    /// Shares the fleet until `stop`: tells each deployment's engine (`tell`, by name) what it
    /// is to hold; `busy(name)`: whether the deployment has a rollback in flight here (never
    /// given up then). At a stop, this replica's key is withdrawn. While etcd cannot be read,
    /// each deployment stays as it was (its coordinator says what it can and cannot do).
    pub async fn run(
        self: Arc<Self>,
        tell: BTreeMap<String, watch::Sender<Holding>>,
        busy: Box<dyn Fn(&str) -> bool + Send + Sync>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut lease = None;
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        let mut unheld_since: BTreeMap<String, Stopwatch> = BTreeMap::new();
        let mut failing = false;
        let stranded_after = Span((self.ttl * 2).as_millis() as i64);
        loop {
            let standing = self.clock_ok();
            match self.round(&mut lease, standing).await {
                Ok(seen) => {
                    if failing {
                        tracing::info!("the fleet's share can be read again");
                        failing = false;
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
                    let view = View { me: &self.me.replica, replicas: &replicas, holders: &holders };
                    let next = plan(&self.names, &view, &claimed, &*busy, &stranded);
                    for n in next.difference(&claimed_and_held(&claimed, &holders, &self.me.replica)) {
                        if !holders.contains_key(n) {
                            tracing::info!(deployment = %n, "claiming: this replica is to hold it");
                        }
                    }
                    for n in self.names.iter().filter(|n| holders.get(*n) == Some(&self.me.replica)) {
                        if !next.contains(n) {
                            tracing::info!(deployment = %n, "giving up: another replica is to hold it (the fleet is shared out again)");
                        }
                    }
                    claimed = next.iter().filter(|n| !holders.contains_key(*n)).cloned().collect();
                    for (name, sender) in &tell {
                        let holding = Holding { mine: next.contains(name), holder: seen.holders.get(name).cloned() };
                        sender.send_if_modified(|h| {
                            let changed = *h != holding;
                            *h = holding;
                            changed
                        });
                    }
                    *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "the fleet's share cannot be read: every deployment stays where it is");
                        failing = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.every()) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if let Some(id) = lease
            && let Err(e) = self.etcd.revoke(id).await
        {
            tracing::warn!(error = %e, "could not withdraw this replica from the share at stop; it expires within the ttl");
        }
    }
}

fn claimed_and_held(claimed: &BTreeSet<String>, holders: &BTreeMap<String, String>, me: &str) -> BTreeSet<String> {
    let mut all = claimed.clone();
    all.extend(holders.iter().filter(|(_, h)| *h == me).map(|(n, _)| n.clone()));
    all
}

/// What a round read: this replica, the replicas up (this one among them when it may lead),
/// and each held deployment's holder.
pub struct View<'a> {
    pub me: &'a str,
    pub replicas: &'a BTreeSet<String>,
    pub holders: &'a BTreeMap<String, String>,
}

/// The deployments of `names` this replica is to hold, given what it reads (`view`), what it
/// claimed and nobody holds yet (`claimed`), which of its deployments have a rollback in flight
/// (`busy`), and which nobody has held for long (`stranded`). See the module's "The share".
pub fn plan(
    names: &[String],
    view: &View,
    claimed: &BTreeSet<String>,
    busy: &dyn Fn(&str) -> bool,
    stranded: &BTreeSet<String>,
) -> BTreeSet<String> {
    let me = view.me;
    let held = |n: &String| view.holders.get(n).map(String::as_str);
    // What it holds, and its claims still open (a claim another replica won is dropped).
    let mut mine: BTreeSet<String> =
        names.iter().filter(|n| held(n) == Some(me) || (held(n).is_none() && claimed.contains(*n))).cloned().collect();
    if !view.replicas.contains(me) {
        // It may not lead: it claims nothing (its coordinators give up what they hold).
        return mine.into_iter().filter(|n| held(n) == Some(me)).collect();
    }
    let share = names.len().div_ceil(view.replicas.len().max(1));
    // Others that hold fewer than their share can take what this one holds beyond its own.
    let mut counts: BTreeMap<&str, usize> = view.replicas.iter().map(|r| (r.as_str(), 0)).collect();
    for n in names {
        if let Some(h) = held(n)
            && let Some(c) = counts.get_mut(h)
        {
            *c += 1;
        }
    }
    let room: usize = counts.iter().filter(|(r, _)| **r != me).map(|(_, c)| share.saturating_sub(*c)).sum();
    let excess = mine.len().saturating_sub(share).min(room);
    if excess > 0 {
        // Open claims first, then held ones in this replica's order (least preferred first);
        // never one with a rollback in flight.
        let mut order: Vec<&String> = mine.iter().filter(|n| held(n) != Some(me) || !busy(n)).collect();
        order.sort_by_key(|n| (held(n) == Some(me), weight(me, n)));
        let give: Vec<String> = order.into_iter().take(excess).cloned().collect();
        for n in give {
            mine.remove(&n);
        }
    }
    let mut unheld: Vec<&String> = names.iter().filter(|n| held(n).is_none() && !mine.contains(*n)).collect();
    unheld.sort_by_key(|n| std::cmp::Reverse(weight(me, n)));
    for n in unheld {
        if mine.len() < share || stranded.contains(n) {
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
        let mut claimed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for _ in 0..50 {
            let before = holders.clone();
            for r in replicas {
                let view = View { me: r, replicas: &up, holders: &holders.clone() };
                let c = claimed.entry(r.to_string()).or_default();
                let next = plan(names, &view, c, &|_| false, &BTreeSet::new());
                holders.retain(|n, h| h != r || next.contains(n));
                for n in &next {
                    holders.entry(n.clone()).or_insert_with(|| r.to_string());
                }
                *c = next.into_iter().filter(|n| holders.get(n).is_none_or(|h| h != r)).collect();
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
        let kept = plan(&all, &view, &BTreeSet::new(), &|n| in_flight.contains(n), &BTreeSet::new());
        assert_eq!(kept.len(), 2);
        assert!(in_flight.is_subset(&kept), "{kept:?}");
        // b holds two and may not claim a third; stranded, it does.
        let holders: BTreeMap<String, String> =
            [("d000", "b"), ("d001", "b")].iter().map(|(n, h)| (n.to_string(), h.to_string())).collect();
        let view = View { me: "b", replicas: &up, holders: &holders };
        let stranded = set(&["d002"]);
        let mine = plan(&all[..3], &view, &BTreeSet::new(), &|_| false, &stranded);
        assert_eq!(mine, set(&["d000", "d001", "d002"]));
    }

    #[test]
    fn a_replica_that_may_not_lead_claims_nothing() {
        let all = names(3);
        let up = set(&["b"]);
        let holders: BTreeMap<String, String> = [("d000".to_string(), "a".to_string())].into();
        let view = View { me: "a", replicas: &up, holders: &holders };
        assert_eq!(plan(&all, &view, &set(&["d001"]), &|_| false, &set(&["d002"])), set(&["d000"]));
    }
}
