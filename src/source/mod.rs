//! Sources: what the poller reads and how it lands in the window store.
//!
//! - [`exposition`]: the Prometheus text format parser (pure, fuzzed, benchmarked).
//! - [`health`]: a health endpoint's JSON body → fields.
//! - [`poller`]: one task per target — interval, jitter, hard timeout, capped body — yielding an
//!   [`Observation`] per poll; a failed poll is data (`up=0` with its reason), never a crash.
//! - [`TargetSeries`] (here): applies observations to the store, marking a target's series stale
//!   while it is down, so they read as *unknown*, never stale-but-healthy.
//! - [`evidence`]: the one owner of what was seen — the window store, the targets' series, the
//!   firing alerts, where the version's evidence starts; sources write to it through its methods.
//!
//! - [`queue`]: pollers → evaluator, bounded by samples.
//! - [`promql`]: the `/api/v1/query` response → samples.
//! - [`alertmanager`]: webhook payloads → `ALERTS` series.

pub mod alertmanager;
pub mod evidence;
pub mod exposition;
pub mod health;
pub mod poller;
pub mod promql;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::secret::Secret;
use crate::selector::SeriesKey;
use crate::time::{Span, Timestamp};
use crate::window::Store;
pub use evidence::Evidence;
pub use poller::{probe, run_target};

/// Default cap on a response body: the read stops there; nothing larger is buffered.
pub const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;

/// How a target authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    Bearer(Secret),
    Basic { username: String, password: Secret },
}

/// What kind of target, with its address.
#[derive(Debug, Clone, PartialEq, Hash)]
pub enum TargetKind {
    /// HTTP GET; up = a 2xx status within the timeout; JSON fields become series.
    Health { url: String },
    /// A Prometheus text exposition; every sample becomes a series.
    Prometheus { url: String },
    /// A TCP connect check.
    Tcp { address: String },
    /// An instant query against a Prometheus-compatible `/api/v1/query` (Prometheus, Thanos,
    /// Mimir, VictoriaMetrics); each result element becomes a series.
    Promql { url: String, query: String },
}

/// One target to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub interval: Span,
    pub timeout: Span,
    /// Adds `critical="true"` to its `up` and `probe_duration_seconds`.
    pub critical: bool,
    pub max_body: usize,
    pub auth: Option<Auth>,
    /// The metric names the loaded rules read (none: keep every series). Others are dropped
    /// as they are parsed — counted, never stored: a target with 600,000 series costs parse
    /// time, not memory.
    pub keep: Option<Arc<HashSet<String>>>,
    /// At most this many samples kept from one poll; more rejects the poll whole (the target
    /// is then unknown for it, never down).
    pub sample_limit: usize,
}

/// The default `sample_limit` (Prometheus' name).
pub const DEFAULT_SAMPLE_LIMIT: usize = 100_000;

/// Why a poll failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("no answer within {0}")]
    Timeout(Span),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("body larger than max_body ({0} bytes); read stopped there")]
    BodyTooLarge(usize),
    #[error("body is not UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    #[error("malformed exposition: {bad} bad lines and no sample (line {line}: {reason})")]
    Malformed { bad: usize, line: usize, reason: String },
    #[error("request failed: {0}")]
    Http(String),
    /// rollwatch could not poll for a reason of its own (no file descriptor left): the target's
    /// state is unknown for this poll, never down.
    #[error("rollwatch's own fault, not the target's: {0}")]
    Own(String),
    /// More samples than `sample_limit` (after dropping series no rule reads): the poll is
    /// rejected whole, and the target is unknown for it.
    #[error("{0} samples, more than sample_limit ({1}): poll rejected")]
    SampleLimit(usize, usize),
}

impl SourceError {
    /// A short stable name for counting failures by reason in rollwatch's own metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Status(_) => "status",
            SourceError::Timeout(_) => "timeout",
            SourceError::Connect(_) => "connect",
            SourceError::BodyTooLarge(_) => "body_too_large",
            SourceError::NotUtf8(_) => "not_utf8",
            SourceError::Malformed { .. } => "malformed",
            SourceError::Http(_) => "http",
            SourceError::Own(_) => "own",
            SourceError::SampleLimit(..) => "sample_limit",
        }
    }

    /// Whether the poll ran out of time (the client's timeout or rollwatch's own).
    pub fn is_timeout(&self) -> bool {
        matches!(self, SourceError::Timeout(_))
    }

    /// Whether the poll says nothing about the target (rollwatch's own fault or limit): its
    /// state is unknown for the poll, never down.
    pub fn is_unknown(&self) -> bool {
        matches!(self, SourceError::Own(_) | SourceError::SampleLimit(..))
    }

    /// An error whose cause is rollwatch's own process (file descriptors or memory exhausted):
    /// `Own`; anything else as `other` says.
    pub fn own_or(e: &(dyn std::error::Error + 'static), other: impl FnOnce() -> SourceError) -> SourceError {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<std::io::Error>()
                && matches!(io.raw_os_error(), Some(EMFILE | ENFILE | ENOMEM | ENOBUFS))
            {
                return SourceError::Own(crate::error_chain(e));
            }
            cause = c.source();
        }
        other()
    }
}

// Linux errno values for resources of rollwatch's own process or host.
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// The result of one poll of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub target: String,
    pub critical: bool,
    pub at: Timestamp,
    pub up: bool,
    /// Seconds the probe took.
    pub duration_secs: f64,
    /// Scraped series, each carrying `target="NAME"`, and their values.
    pub samples: Vec<(SeriesKey, f64)>,
    /// String fields of a health body (`version`).
    pub strings: Vec<(String, String)>,
    /// Exposition lines skipped as malformed (the scrape still counted).
    pub bad_lines: usize,
    /// Series dropped as they were parsed because no rule reads them.
    pub dropped: usize,
    pub error: Option<SourceError>,
}

/// Writes observations into the store; remembers each target's series so that when a target
/// goes down, or a series disappears from its scrape, the series is ended (stale) rather than
/// left holding its last healthy value.
#[derive(Debug, Default)]
pub struct TargetSeries {
    seen: HashMap<String, HashSet<SeriesKey>>,
    /// Latest string fields per target (`version`).
    pub strings: HashMap<String, Vec<(String, String)>>,
}

impl TargetSeries {
    /// Writes `obs` into `store` (for [`Evidence::observe`]).
    pub(in crate::source) fn apply(&mut self, obs: &Observation, store: &mut Store) {
        let mut labels = vec![("target".to_string(), obs.target.clone())];
        if obs.critical {
            labels.push(("critical".to_string(), "true".to_string()));
        }
        if obs.error.as_ref().is_some_and(SourceError::is_unknown) {
            // Unknown, not down: rollwatch's own failure is no evidence against the target.
            store.mark_stale(&SeriesKey::new("up", labels), obs.at);
            for key in self.seen.get(&obs.target).into_iter().flatten() {
                store.mark_stale(key, obs.at);
            }
            return;
        }
        store.push(&SeriesKey::new("up", labels.clone()), obs.at, if obs.up { 1.0 } else { 0.0 });
        store.push(&SeriesKey::new("probe_duration_seconds", labels), obs.at, obs.duration_secs);

        let now: HashSet<SeriesKey> = obs
            .samples
            .iter()
            .map(|(key, v)| {
                store.push(key, obs.at, *v);
                key.clone()
            })
            .collect();
        let before = self.seen.insert(obs.target.clone(), now).unwrap_or_default();
        let current = &self.seen[&obs.target];
        for gone in before.iter().filter(|k| !current.contains(*k)) {
            store.mark_stale(gone, obs.at);
        }
        if obs.up {
            self.strings.insert(obs.target.clone(), obs.strings.clone());
        } else {
            self.strings.remove(&obs.target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::Selector;
    use crate::window::At;

    fn obs(at: i64, up: bool, samples: &[(&str, f64)]) -> Observation {
        Observation {
            target: "api".into(),
            critical: true,
            at: Timestamp(at),
            up,
            duration_secs: 0.01,
            samples: samples
                .iter()
                .map(|(k, v)| (SeriesKey::new(*k, [("target".to_string(), "api".to_string())]), *v))
                .collect(),
            strings: vec![("version".into(), "v1".into())],
            bad_lines: 0,
            dropped: 0,
            error: None,
        }
    }

    #[test]
    fn series_of_a_down_target_become_unknown() {
        let mut store = Store::new(Span(600_000));
        let m = store.add_selector(Selector::parse(r#"m{target="api"}"#).unwrap());
        let up = store.add_selector(Selector::parse(r#"up{critical="true"}"#).unwrap());
        let mut ts = TargetSeries::default();
        ts.apply(&obs(0, true, &[("m", 5.0)]), &mut store);
        assert_eq!(store.last(m, At::new(Timestamp(0))), Some(5.0));
        assert_eq!(store.up(up, At::new(Timestamp(0))), Some(1.0));
        assert_eq!(ts.strings["api"][0].1, "v1");
        ts.apply(&obs(1000, false, &[]), &mut store);
        assert_eq!(store.last(m, At::new(Timestamp(1000))), None, "unknown, not the last healthy value");
        assert_eq!(store.up(up, At::new(Timestamp(1000))), Some(0.0));
        assert!(!ts.strings.contains_key("api"));
        ts.apply(&obs(2000, true, &[("m", 6.0)]), &mut store);
        assert_eq!(store.last(m, At::new(Timestamp(2000))), Some(6.0));
    }

    #[test]
    fn rollwatch_s_own_failure_is_unknown_not_down() {
        let mut store = Store::new(Span(600_000));
        let m = store.add_selector(Selector::parse(r#"m{target="api"}"#).unwrap());
        let up = store.add_selector(Selector::parse(r#"up{target="api"}"#).unwrap());
        let mut ts = TargetSeries::default();
        ts.apply(&obs(0, true, &[("m", 5.0)]), &mut store);
        let emfile = std::io::Error::from_raw_os_error(24);
        let e = SourceError::own_or(&emfile, || SourceError::Connect("x".into()));
        assert_eq!(e.reason(), "own");
        let refused = std::io::Error::from_raw_os_error(111);
        assert_eq!(SourceError::own_or(&refused, || SourceError::Connect("x".into())).reason(), "connect");
        let failed = Observation { error: Some(e), ..obs(1000, false, &[]) };
        ts.apply(&failed, &mut store);
        assert_eq!(store.up(up, At::new(Timestamp(1000))), None, "unknown, not up = 0");
        assert_eq!(store.last(m, At::new(Timestamp(1000))), None);
    }

    #[test]
    fn secrets_do_not_print() {
        let auth = Auth::Basic { username: "u".into(), password: Secret("hunter2".into()) };
        assert!(!format!("{auth:?}").contains("hunter2"));
    }
}
