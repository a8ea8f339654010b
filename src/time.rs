//! Time as rollwatch sees it: a millisecond [`Timestamp`], a millisecond [`Span`], duration
//! parsing, and the [`Clock`] that live mode reads. This is the only module allowed to read the
//! system clock (see `clippy.toml`); everything below the sources takes time as a parameter so
//! that replay on fixture time and live on wall time run the same code.
//!
//! Live mode runs on a [`SteadyClock`]: rollwatch's own timeline, the wall time at start plus
//! the monotonic time elapsed since. A step of the system clock (an NTP correction, a VM
//! restored) moves neither samples nor windows, `for`, ticks, cooldowns or pauses; it shows as
//! a disagreement ([`Clock::system_ahead`]) that the engine reports.

use std::fmt;

/// Milliseconds since an origin: the Unix epoch in live mode, the first sample in a fixture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

/// A length of time in milliseconds. Never negative once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub i64);

impl Timestamp {
    /// This instant moved back by `span`, saturating instead of overflowing.
    pub fn minus(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_sub(span.0))
    }

    /// This instant moved forward by `span`, saturating instead of overflowing.
    pub fn plus(self, span: Span) -> Timestamp {
        Timestamp(self.0.saturating_add(span.0))
    }

    /// Time elapsed from `earlier` to `self`; zero when `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Span {
        Span(self.0.saturating_sub(earlier.0).max(0))
    }
}

/// Serialized as milliseconds (journal lines, JSON output).
impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        i64::deserialize(d).map(Timestamp)
    }
}

impl Span {
    pub const ZERO: Span = Span(0);

    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }

    pub fn from_secs(secs: i64) -> Span {
        Span(secs.saturating_mul(1000))
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Span {
    /// Compact human form: `8m`, `5m30s`, `1h`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0s");
        }
        let mut ms = self.0;
        if ms < 0 {
            f.write_str("-")?;
            ms = -ms;
        }
        let units = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)];
        for (name, size) in units {
            if ms >= size {
                write!(f, "{}{}", ms / size, name)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl fmt::Display for Timestamp {
    /// Fixture time prints as an offset (`t=8m`); live time is formatted by the caller.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Span(self.0))
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("bad duration {0:?}: {1} (write e.g. \"30s\", \"5m\", \"1h30m\")")]
    Syntax(String, String),
    #[error("bad duration {0:?}: finer than a millisecond")]
    SubMillisecond(String),
    #[error("bad duration {0:?}: longer than a year")]
    TooLong(String),
}

/// A span for people: `8m 3s`, `42s`, `1.5s`, `2h 5m`.
pub fn human(span: Span) -> String {
    let secs = span.0 / 1000;
    match secs {
        s if s >= 3600 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        _ if span.0 < 10_000 => format!("{:.1}s", span.0 as f64 / 1000.0),
        s => format!("{s}s"),
    }
}

/// A live timestamp (milliseconds since the epoch) as RFC 3339 UTC; `i64::MAX` is `forever`.
pub fn iso(t: Timestamp) -> String {
    if t.0 == i64::MAX {
        return "forever".into();
    }
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(t.0.max(0) as u64);
    humantime::format_rfc3339_seconds(when).to_string()
}

/// Parses a human duration (`"15s"`, `"5m"`, `"1h30m"`, `"250ms"`) with humantime, to whole
/// milliseconds. Bare numbers are rejected: a unit must be said.
pub fn parse_duration(text: &str) -> Result<Span, DurationError> {
    let trimmed = text.trim();
    let parsed =
        humantime::parse_duration(trimmed).map_err(|e| DurationError::Syntax(text.to_string(), e.to_string()))?;
    if parsed.subsec_nanos() % 1_000_000 != 0 {
        return Err(DurationError::SubMillisecond(text.to_string()));
    }
    const A_YEAR_MS: u128 = 366 * 86_400_000;
    let ms = parsed.as_millis();
    if ms > A_YEAR_MS {
        return Err(DurationError::TooLong(text.to_string()));
    }
    Ok(Span(ms as i64))
}

/// Where "now" comes from. Live mode uses [`SteadyClock`]; replay advances time itself.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;

    /// How far the system clock is ahead of this one (behind: negative), for a clock that keeps
    /// its own timeline; `None` for the others (fixture, test and tokio time).
    fn system_ahead(&self) -> Option<Span> {
        None
    }
}

/// Wall-clock time since the Unix epoch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp(since_epoch.as_millis() as i64)
    }
}

/// A disagreement between the system clock and rollwatch's timeline beyond this is reported
/// (logged and journalled when it appears or changes by as much, shown on `/status`).
pub const CLOCK_DISAGREEMENT: Span = Span(5_000);

/// rollwatch's own timeline: a starting time plus the monotonic time elapsed since (Linux's
/// `CLOCK_MONOTONIC`, which no setting of the system clock moves). It never goes back, and a
/// span measured on it is a span that passed, whatever the system clock did meanwhile.
#[derive(Debug, Clone, Copy)]
pub struct SteadyClock {
    start: std::time::Instant,
    at_start: Timestamp,
}

impl SteadyClock {
    /// A timeline at `at` now.
    #[allow(clippy::disallowed_methods)]
    pub fn starting_at(at: Timestamp) -> SteadyClock {
        SteadyClock { start: std::time::Instant::now(), at_start: at }
    }

    /// A timeline on the system clock now.
    pub fn from_system() -> SteadyClock {
        SteadyClock::starting_at(SystemClock.now())
    }

    /// Where this timeline started.
    pub fn started_at(&self) -> Timestamp {
        self.at_start
    }
}

impl Clock for SteadyClock {
    fn now(&self) -> Timestamp {
        self.at_start.plus(Span(self.start.elapsed().as_millis().min(i64::MAX as u128) as i64))
    }

    fn system_ahead(&self) -> Option<Span> {
        // The system clock first: a reading of ours taken after it is never the later one.
        let system = SystemClock.now();
        Some(Span(system.0.saturating_sub(self.now().0)))
    }
}

/// The timeline `run` keeps, once it has one: what log lines are dated by
/// ([`log_time`]), so that a log line and the journal line it explains carry the same time.
static LOG_TIMELINE: std::sync::OnceLock<SteadyClock> = std::sync::OnceLock::new();

/// Dates log lines by `clock` from now on (once per process; later calls change nothing).
pub fn date_logs_by(clock: SteadyClock) {
    let _ = LOG_TIMELINE.set(clock);
}

/// Now for a log line: rollwatch's timeline once `run` has one, the system clock before (and
/// for the other commands), as RFC 3339 UTC with milliseconds.
pub fn log_time() -> String {
    let now = LOG_TIMELINE.get().map_or_else(|| SystemClock.now(), |c| c.now());
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now.0.max(0) as u64);
    humantime::format_rfc3339_millis(when).to_string()
}

/// Where a timeline resumes after a restart, when the system clock reads `system`: where the
/// last one would be now — the system clock less the disagreement `carried` from the last run
/// (the time spent stopped as the system clock measured it) — but never before `last`, the
/// latest date journalled, so the timeline never goes back across a restart.
pub fn resume_point(system: Timestamp, carried: Span, last: Option<Timestamp>) -> Timestamp {
    let continued = Timestamp(system.0.saturating_sub(carried.0));
    last.map_or(continued, |last| continued.max(last))
}

/// Time that moves only when told (tests of code that reads a [`Clock`] but runs no timers).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn starting_at(at: Timestamp) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(at.0))
    }

    /// Moves time forward by `span`.
    pub fn advance(&self, span: Span) {
        self.0.fetch_add(span.0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Tokio's clock from a starting wall time: under a paused test runtime it moves only as tokio's
/// virtual time does, so in-process tests run minutes of engine time in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: tokio::time::Instant,
    at_start: Timestamp,
}

impl TokioClock {
    /// Starts at `at` now.
    #[allow(clippy::disallowed_methods)]
    pub fn starting_at(at: Timestamp) -> TokioClock {
        TokioClock { start: tokio::time::Instant::now(), at_start: at }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.at_start.plus(Span(self.start.elapsed().as_millis().min(i64::MAX as u128) as i64))
    }
}

/// How many moments [`next_on_grid`] spreads a period over.
pub const GRID_SLOTS: u64 = 8;

/// The next moment after now on a grid of `every` shared by the whole process (tokio's clock,
/// paused in tests), in slot `slot` of [`GRID_SLOTS`] within it: tasks of one slot go round
/// together (a fleet's coordinators, whose reads then go to etcd in one transaction), and the
/// slots spread the whole over the period (not all at one moment).
#[allow(clippy::disallowed_methods)]
pub fn next_on_grid(every: std::time::Duration, slot: u64) -> tokio::time::Instant {
    static ANCHOR: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let anchor = *ANCHOR.get_or_init(tokio::time::Instant::now);
    let now = tokio::time::Instant::now();
    let every = every.max(std::time::Duration::from_millis(1));
    let offset = every.as_nanos() * u128::from(slot % GRID_SLOTS) / u128::from(GRID_SLOTS);
    let since = now.saturating_duration_since(anchor).as_nanos();
    let rounds = since.saturating_sub(offset) / every.as_nanos() + 1;
    let after = u64::try_from(every.as_nanos().saturating_mul(rounds) + offset).unwrap_or(u64::MAX);
    anchor.checked_add(std::time::Duration::from_nanos(after)).unwrap_or(now + every)
}

/// Measures how long something took on the monotonic clock (probe durations, evaluation time).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Stopwatch {
        Stopwatch(std::time::Instant::now())
    }

    pub fn elapsed(&self) -> Span {
        Span(self.0.elapsed().as_millis().min(i64::MAX as u128) as i64)
    }

    /// Elapsed seconds with sub-millisecond precision.
    pub fn elapsed_secs(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    /// The moment `after` this stopwatch started, on the same monotonic clock.
    pub fn deadline(&self, after: std::time::Duration) -> Deadline {
        Deadline(self.0 + after)
    }
}

/// A moment on this process's monotonic clock (a lease's safe end): it keeps running while
/// the process is stopped, so a replica resumed after SIGSTOP sees its deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(std::time::Instant);

impl Deadline {
    #[allow(clippy::disallowed_methods)]
    pub fn passed(&self) -> bool {
        std::time::Instant::now() >= self.0
    }

    /// How long until it passes (zero once passed).
    #[allow(clippy::disallowed_methods)]
    pub fn remaining(&self) -> std::time::Duration {
        self.0.saturating_duration_since(std::time::Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_durations() {
        assert_eq!(parse_duration("15s"), Ok(Span(15_000)));
        assert_eq!(parse_duration("5m"), Ok(Span(300_000)));
        assert_eq!(parse_duration("1h30m"), Ok(Span(5_400_000)));
        assert_eq!(parse_duration("250ms"), Ok(Span(250)));
        assert_eq!(parse_duration("0s"), Ok(Span(0)));
    }

    #[test]
    fn rejects_bad_durations() {
        assert!(matches!(parse_duration("5"), Err(DurationError::Syntax(..))));
        assert!(matches!(parse_duration("5 minutes later"), Err(DurationError::Syntax(..))));
        assert!(matches!(parse_duration("-5m"), Err(DurationError::Syntax(..))));
        assert!(matches!(parse_duration("1us"), Err(DurationError::SubMillisecond(_))));
        assert!(matches!(parse_duration("100000y"), Err(DurationError::TooLong(_))));
    }

    #[test]
    fn spans_print_compactly() {
        assert_eq!(Span(330_000).to_string(), "5m30s");
        assert_eq!(Span(3_600_000).to_string(), "1h");
        assert_eq!(Span(0).to_string(), "0s");
        assert_eq!(Span(1_250).to_string(), "1s250ms");
    }

    #[test]
    fn a_timeline_resumes_where_it_was_and_never_before_its_last_date() {
        let hour = Span::from_secs(3600);
        // No disagreement, no journal: the system clock.
        assert_eq!(resume_point(Timestamp(10 * 3_600_000), Span::ZERO, None), Timestamp(10 * 3_600_000));
        // The system clock 2 h ahead when the last run stopped, 5 minutes ago by the system
        // clock: the timeline continues 2 h behind it (a 1 h cooldown keeps what was left).
        let last = Timestamp(10 * 3_600_000);
        let system = last.plus(hour).plus(hour).plus(Span::from_secs(300));
        assert_eq!(resume_point(system, Span(2 * hour.0), Some(last)), last.plus(Span::from_secs(300)));
        // The system clock stepped back while stopped: the journal's last date is the floor.
        assert_eq!(resume_point(last.minus(Span::from_secs(600)), Span::ZERO, Some(last)), last);
        // A step back carried from the last run: the timeline continues ahead of the system clock.
        let carried = Span(-120_000);
        assert_eq!(resume_point(last.plus(Span::from_secs(60)), carried, Some(last)), last.plus(Span::from_secs(180)));
    }

    #[test]
    fn a_steady_clock_starts_where_told_and_tells_the_system_clocks_lead() {
        let c = SteadyClock::starting_at(Timestamp(1000));
        assert!(c.now() >= Timestamp(1000) && c.now() < Timestamp(61_000));
        assert_eq!(c.started_at(), Timestamp(1000));
        // Started at 1 s after the epoch: the system clock is decades ahead.
        assert!(c.system_ahead().unwrap() > Span::from_secs(365 * 86_400));
        let now = SteadyClock::from_system();
        assert!(now.system_ahead().unwrap().0.abs() < 1000);
        assert_eq!(ManualClock::default().system_ahead(), None);
    }

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Timestamp(i64::MIN).minus(Span(5)), Timestamp(i64::MIN));
        assert_eq!(Timestamp(5).saturating_since(Timestamp(10)), Span(0));
    }
}
