//! Leadership among replicas as the acting core holds it: the term this replica acts under, why
//! it does not act, and etcd's trouble as told (what the core does with the coordinator's news
//! is in [`standby`](super::standby)).

use std::collections::BTreeSet;

use crate::time::Timestamp;

/// Leading or following among replicas: the term this replica acts under and why it does not
/// act, etcd's trouble and what of it was told.
#[derive(Debug, Default)]
pub struct Leadership {
    /// The leadership term this replica acts under (replicas on etcd); `None` while it does not
    /// lead. Alone, always `None` and unused.
    pub(super) term: Option<crate::coord::Term>,
    /// Why this replica does not act (a follower, etcd unreachable), with replicas.
    pub(super) standby: Option<String>,
    /// Since when etcd cannot be reached, and when that was last told on the channels.
    pub(super) coord_down: Option<(Timestamp, Timestamp)>,
    /// Since when the shared log is not trusted (etcd lost data) and is being rebuilt: told
    /// once; its end told once.
    pub(super) rebuilding: Option<Timestamp>,
    /// Whether this replica tells people of the etcd outage (one replica does).
    pub(super) coord_teller: bool,
    /// Profiles whose rollback was wanted during the etcd outage, or while no replica could
    /// lead (told once each).
    pub(super) wanted_told: BTreeSet<String>,
    /// Since when no replica leads, as this follower sees it, and why this one does not stand.
    pub(super) leaderless: Option<(Timestamp, Option<String>)>,
}

impl Leadership {
    /// Alone: nothing to wait for. Among replicas: waiting for the election.
    pub fn new(shared: bool) -> Leadership {
        Leadership { standby: shared.then(|| "waiting for the election on etcd".to_string()), ..Leadership::default() }
    }
}
