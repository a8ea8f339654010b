//! Polling one target: [`probe`] does one poll under a hard timeout and reads at most
//! `max_body` bytes; [`run_target`] repeats it on the target's interval (with a per-target
//! jitter, skipped ticks not replayed) in its own task, so a slow target never delays another.
//! Parsing stays pure ([`super::exposition`], [`super::health`]).

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use super::{Auth, Observation, SourceError, Target, TargetKind, exposition, health};
use crate::error_chain;
use crate::selector::SeriesKey;
use crate::time::{Clock, Span, Stopwatch};

/// A client for polling: rustls with ring, no proxies from the environment, no redirects beyond
/// a few. Installs the ring crypto provider if none is installed yet.
pub fn http_client() -> Result<reqwest::Client, SourceError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("rollwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SourceError::Http(e.to_string()))
}

/// Polls `target` once.
pub async fn probe(client: &reqwest::Client, target: &Target, clock: &dyn Clock) -> Observation {
    let at = clock.now();
    let watch = Stopwatch::start();
    let result = match tokio::time::timeout(target.timeout.as_std(), fetch(client, target)).await {
        Ok(result) => result,
        Err(_) => Err(SourceError::Timeout(target.timeout)),
    };
    // A timeout noticed a whole timeout late: rollwatch itself was too busy to read the answer
    // in time (its scheduling lag exceeded the timeout) — no evidence against the target.
    let result = match result {
        Err(e) if e.is_timeout() && watch.elapsed().0 >= target.timeout.0.saturating_mul(2) => {
            Err(SourceError::Own(format!(
                "the {} timeout was noticed after {}: rollwatch was overloaded ({e})",
                target.timeout,
                watch.elapsed()
            )))
        }
        other => other,
    };
    let mut obs = Observation {
        target: target.name.clone(),
        critical: target.critical,
        at,
        up: false,
        duration_secs: watch.elapsed_secs(),
        samples: Vec::new(),
        strings: Vec::new(),
        bad_lines: 0,
        dropped: 0,
        error: None,
    };
    let result = result.and_then(|f| {
        if f.samples.len() > target.sample_limit {
            Err(SourceError::SampleLimit(f.samples.len(), target.sample_limit))
        } else {
            Ok(f)
        }
    });
    match result {
        Ok(Fetched { samples, strings, bad_lines, dropped }) => {
            obs.up = true;
            obs.samples = samples;
            obs.strings = strings;
            obs.bad_lines = bad_lines;
            obs.dropped = dropped;
        }
        Err(e) => {
            tracing::warn!(target = %target.name, reason = e.reason(), error = %e, "poll failed");
            obs.error = Some(e);
        }
    }
    obs
}

struct Fetched {
    samples: Vec<(SeriesKey, f64)>,
    strings: Vec<(String, String)>,
    bad_lines: usize,
    dropped: usize,
}

async fn fetch(client: &reqwest::Client, target: &Target) -> Result<Fetched, SourceError> {
    let url = match &target.kind {
        TargetKind::Tcp { address } => {
            tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| SourceError::own_or(&e, || SourceError::Connect(e.to_string())))?;
            return Ok(Fetched { samples: vec![], strings: vec![], bad_lines: 0, dropped: 0 });
        }
        TargetKind::Health { url } | TargetKind::Prometheus { url } => url.clone(),
        TargetKind::Promql { url, query } => {
            let mut u = reqwest::Url::parse(&format!("{}/api/v1/query", url.trim_end_matches('/')))
                .map_err(|e| SourceError::Http(format!("bad url {url:?}: {e}")))?;
            u.query_pairs_mut().append_pair("query", query);
            u.to_string()
        }
    };
    let mut request = client.get(&url).timeout(target.timeout.as_std());
    request = match &target.auth {
        None => request,
        Some(Auth::Bearer(token)) => request.bearer_auth(&token.0),
        Some(Auth::Basic { username, password }) => request.basic_auth(username, Some(&password.0)),
    };
    if matches!(target.kind, TargetKind::Prometheus { .. }) {
        request = request.header(reqwest::header::ACCEPT, "text/plain;version=0.0.4;q=1,*/*;q=0.1");
    }
    let response = request.send().await.map_err(|e| classify(e, target.timeout))?;
    let status = response.status();
    // A failed PromQL query answers 4xx/5xx with a JSON error worth reading.
    if !status.is_success() && !matches!(target.kind, TargetKind::Promql { .. }) {
        return Err(SourceError::Status(status.as_u16()));
    }
    let body = read_capped(response, target.max_body, target.timeout).await?;
    match &target.kind {
        TargetKind::Promql { .. } => {
            let samples = super::promql::read(&body, &target.name).map(|s| with_target(s, &target.name)).map_err(
                |e| match e {
                    super::promql::PromqlError::Api(msg) if !status.is_success() => {
                        SourceError::Http(format!("HTTP {}: {msg}", status.as_u16()))
                    }
                    other => SourceError::Http(other.to_string()),
                },
            )?;
            let before = samples.len();
            let samples: Vec<_> = samples.into_iter().filter(|(k, _)| kept(target, &k.name)).collect();
            let dropped = before - samples.len();
            Ok(Fetched { samples, strings: vec![], bad_lines: 0, dropped })
        }
        TargetKind::Health { .. } => {
            let fields = health::read(&body);
            let target_label = [("target".to_string(), target.name.clone())];
            let samples =
                fields.numbers.into_iter().map(|(name, v)| (SeriesKey::new(name, target_label.clone()), v)).collect();
            Ok(Fetched { samples, strings: fields.strings, bad_lines: 0, dropped: 0 })
        }
        _ => {
            if let Err(e) = std::str::from_utf8(&body) {
                return Err(SourceError::NotUtf8(e.valid_up_to()));
            }
            // Borrowed parsing: each sample's key is built once, target label included.
            let mut samples = Vec::new();
            let (mut dropped, mut wanted) = (0, 0usize);
            let (bad_lines, first_bad) = exposition::parse_each(&body, |s| {
                if !kept(target, s.name) {
                    dropped += 1;
                    return;
                }
                // Past the limit the poll is rejected anyway: stop building keys.
                wanted += 1;
                if wanted > target.sample_limit {
                    return;
                }
                let labels = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "target")
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .chain(std::iter::once(("target".to_string(), target.name.clone())));
                samples.push((SeriesKey::new(s.name, labels), s.value));
            });
            if samples.is_empty() && bad_lines > 0 {
                let first =
                    first_bad.first().cloned().unwrap_or(exposition::BadLine { line: 0, reason: String::new() });
                return Err(SourceError::Malformed { bad: bad_lines, line: first.line, reason: first.reason });
            }
            if bad_lines > 0 {
                tracing::debug!(target = %target.name, bad = bad_lines, first = ?first_bad.first(), "skipped bad exposition lines");
            }
            if wanted > target.sample_limit {
                return Err(SourceError::SampleLimit(wanted, target.sample_limit));
            }
            Ok(Fetched { samples, strings: vec![], bad_lines, dropped })
        }
    }
}

/// Whether the rules read series named `name` (every name, when the target keeps all).
fn kept(target: &Target, name: &str) -> bool {
    target.keep.as_ref().is_none_or(|names| names.contains(name))
}

/// Adds (or overrides) the `target` label on each sample's key.
fn with_target(samples: Vec<(SeriesKey, f64)>, target: &str) -> Vec<(SeriesKey, f64)> {
    samples
        .into_iter()
        .map(|(key, v)| {
            let labels = key.labels.into_iter().filter(|(k, _)| k != "target");
            (SeriesKey::new(key.name, labels.chain(std::iter::once(("target".to_string(), target.to_string())))), v)
        })
        .collect()
}

fn classify(e: reqwest::Error, timeout: Span) -> SourceError {
    SourceError::own_or(&e, || classify_target(&e, timeout))
}

fn classify_target(e: &reqwest::Error, timeout: Span) -> SourceError {
    if e.is_timeout() {
        SourceError::Timeout(timeout)
    } else if e.is_connect() {
        SourceError::Connect(error_chain(&e))
    } else {
        SourceError::Http(error_chain(&e))
    }
}

/// Reads the body, stopping (with an error) past `max` bytes: nothing larger is buffered.
async fn read_capped(mut response: reqwest::Response, max: usize, timeout: Span) -> Result<Vec<u8>, SourceError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(SourceError::BodyTooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, timeout))? {
        if body.len() + chunk.len() > max {
            return Err(SourceError::BodyTooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A stable offset in `[0, interval)` from the target's name and address, so that targets with
/// the same interval do not all poll at the same instant — nor a fleet's deployments, whose
/// targets share names, nor the deployments a replica takes over at once (as Prometheus spreads
/// its scrapes by hashing each target).
pub fn jitter(target: &Target) -> Span {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    target.name.hash(&mut h);
    target.kind.hash(&mut h);
    let spread = target.interval.0.max(1) as u64;
    Span((h.finish() % spread) as i64)
}

/// The first poll comes within this (or the interval, when shorter): a target polled every
/// 10 minutes is not unknown for up to 10 minutes after a start or a takeover.
pub const FIRST_POLL_WITHIN: Span = Span(5_000);

/// Where a target's first poll comes after its poller starts: its [`jitter`] folded into
/// [`FIRST_POLL_WITHIN`]; later polls follow every interval from there.
pub fn first_offset(target: &Target) -> Span {
    Span(jitter(target).0 % target.interval.0.clamp(1, FIRST_POLL_WITHIN.0))
}

/// Polls `target` every interval, and whenever `now` is notified, until `shutdown` turns true
/// or the receiver is gone.
pub async fn run_target(
    target: Target,
    client: reqwest::Client,
    clock: Arc<dyn Clock>,
    tx: super::queue::Sender,
    mut shutdown: watch::Receiver<bool>,
    now: Arc<tokio::sync::Notify>,
) {
    tokio::select! {
        _ = tokio::time::sleep(first_offset(&target).as_std()) => {}
        _ = now.notified() => {}
        _ = shutdown.changed() => return,
    }
    let mut ticker = tokio::time::interval(target.interval.as_std());
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        // A poll asked for while one was being made is made after it (the permit waits).
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
            _ = now.notified() => {}
        }
        let obs = tokio::select! {
            obs = probe(&client, &target, clock.as_ref()) => obs,
            _ = shutdown.changed() => return,
        };
        // Waits while the evaluator is behind by the queue's samples; shutdown still ends it.
        tokio::select! {
            sent = tx.send(obs) => if sent.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(name: &str, url: &str) -> Target {
        Target {
            name: name.into(),
            kind: super::super::TargetKind::Health { url: url.into() },
            interval: Span::from_secs(5),
            timeout: Span::from_secs(2),
            critical: false,
            max_body: 1 << 20,
            auth: None,
            keep: None,
            sample_limit: super::super::DEFAULT_SAMPLE_LIMIT,
        }
    }

    /// A fleet's deployments name their targets alike: their offsets still spread over the
    /// interval (500 health checks taken over at once must not poll in one burst).
    #[test]
    fn targets_of_one_name_at_different_addresses_spread_over_the_interval() {
        let offsets: Vec<i64> =
            (0..500).map(|i| jitter(&health("api", &format!("http://sim/d{i}/health"))).0).collect();
        assert!(offsets.iter().all(|o| (0..5_000).contains(o)));
        let seconds: std::collections::BTreeSet<i64> = offsets.iter().map(|o| o / 1_000).collect();
        assert_eq!(seconds.len(), 5, "every second of the interval has some: {seconds:?}");
        let same = offsets.iter().filter(|o| **o == offsets[0]).count();
        assert!(same < 5, "{same} of 500 at one offset");
        assert_eq!(jitter(&health("api", "http://a")), jitter(&health("api", "http://a")), "stable");
    }

    /// A target on a long interval is first polled within seconds of its poller's start (at
    /// start, or a takeover), still spread: nothing is unknown for its whole interval.
    #[test]
    fn a_long_interval_is_first_polled_within_seconds_and_still_spread() {
        let offsets: Vec<i64> = (0..500)
            .map(|i| {
                let mut t = health("version", &format!("http://sim/d{i}/version"));
                t.interval = Span::from_secs(3_600);
                first_offset(&t).0
            })
            .collect();
        assert!(offsets.iter().all(|o| (0..FIRST_POLL_WITHIN.0).contains(o)), "{offsets:?}");
        let seconds: std::collections::BTreeSet<i64> = offsets.iter().map(|o| o / 1_000).collect();
        assert_eq!(seconds.len(), 5, "spread over the first 5 s: {seconds:?}");
        let short = health("api", "http://sim/d1/health");
        assert_eq!(first_offset(&short), jitter(&short), "an interval of 5 s keeps its offset");
    }
}
