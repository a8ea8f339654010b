//! What rollwatch has seen, kept across its own restart: the window store's series (as much as
//! their retention keeps), when the store was watched, the rule states (pending `for` timers
//! included) and where the current version's evidence started. [`encode`] is pure; [`save`]
//! writes `state_dir/checkpoint.bin` atomically (a temporary file, fsync, rename, fsync of the
//! directory) — the engine does so every [`EVERY`] and on stop — and [`restore_at_start`] reads
//! it back when it is recent.
//!
//! Format, little-endian: the magic `RWCKPT` and a format number (u16); the header's length
//! (u32) and the header, JSON (times, watched stretches, rule states); the number of series
//! (u64); per series its name and labels (u32-length strings, a u32 label count), the start of
//! its run of zeros (i64, `i64::MIN` for none), its sample count (u64), then the first sample's
//! time (i64) and each later one's as a LEB128 delta, each value as its f64 bits (stale markers
//! and NaN kept as they are); last an FNV-1a 64 hash of everything before it. About ten bytes a
//! sample — the store's own size, bounded by the same retention and sample limits. A file that
//! does not check out is refused whole; reading never allocates more than the file holds.
//!
//! The header also carries what each judge call with a `"deploy"` baseline kept at the current
//! deploy (samples or counts, by the call as written), put back when the evidence starts at the
//! same deploy: the samples before a deploy older than the window are no longer in the store.
//!
//! Restoring invents nothing: the time between the checkpoint and the restart was not watched,
//! so it is missing data in every window's coverage, and `last`/`up`/`down_for` do not look
//! back across it. Rule states come back by rule name — a deployment's rules only when the
//! checkpoint's evidence started at the same deploy as now (a deploy in between restarted
//! them). A pending `for` keeps the time it had been pending, and the gap does not count:
//! `since` moves forward by the gap, so the gap never brings a rule closer to firing. A firing
//! rule stays firing (as with `on_no_data = "keep"`); a `keep_firing_for` countdown goes on
//! through the gap.

use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Evaluator, RuleState};
use crate::expr::{Baseline, Offset, Scope, Value};
use crate::selector::SeriesKey;
use crate::time::{Span, Timestamp};
use crate::window::{LOOKBACK, SavedLevel, SavedTotals};

/// The checkpoint's file name in `state_dir`.
pub const FILE: &str = "checkpoint.bin";
/// Written there first, then renamed.
const TMP: &str = "checkpoint.bin.tmp";
/// How often the running engine writes one (and once more on stop).
pub const EVERY: Span = Span(30_000);
/// A larger file is not read (it could not have been written from a store this process holds).
pub const MAX_BYTES: u64 = 1 << 30;

const MAGIC: &[u8; 6] = b"RWCKPT";
const FORMAT: u16 = 2;
/// The format before counter checkpoints were kept (read still: its series get none).
const FORMAT_1: u16 = 1;
/// The smallest a sample can be encoded in (one delta byte, eight value bytes).
const MIN_SAMPLE_BYTES: usize = 9;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    written_at: i64,
    evidence_since: Option<i64>,
    ticks: u64,
    watched: Vec<(i64, i64)>,
    rules: Vec<SavedRule>,
    /// What each judge call with a `"deploy"` baseline kept at the current deploy, by the call
    /// as written: the store no longer holds the samples before a deploy older than its window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    baselines: Vec<(String, Baseline)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedRule {
    name: String,
    state: SavedState,
    value: Option<f64>,
    #[serde(default)]
    predated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
enum SavedState {
    Inactive,
    Pending { since: i64 },
    Firing { since: i64, active_since: i64, clearing_since: Option<i64> },
}

impl From<RuleState> for SavedState {
    fn from(s: RuleState) -> SavedState {
        match s {
            RuleState::Inactive => SavedState::Inactive,
            RuleState::Pending { since } => SavedState::Pending { since: since.0 },
            RuleState::Firing { since, active_since, clearing_since } => SavedState::Firing {
                since: since.0,
                active_since: active_since.0,
                clearing_since: clearing_since.map(|t| t.0),
            },
        }
    }
}

impl From<SavedState> for RuleState {
    fn from(s: SavedState) -> RuleState {
        match s {
            SavedState::Inactive => RuleState::Inactive,
            SavedState::Pending { since } => RuleState::Pending { since: Timestamp(since) },
            SavedState::Firing { since, active_since, clearing_since } => RuleState::Firing {
                since: Timestamp(since),
                active_since: Timestamp(active_since),
                clearing_since: clearing_since.map(Timestamp),
            },
        }
    }
}

/// Why a checkpoint was not used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestoreError {
    #[error("corrupt checkpoint: {0}")]
    Corrupt(String),
    #[error("checkpoint written {} ago, longer than the longest window ({}): nothing in it is still read", crate::time::human(*age), max)]
    TooOld { age: Span, max: Span },
    #[error("checkpoint dated {} after now (the clock went back?): its samples would hide new ones", crate::time::human(*ahead))]
    Ahead { ahead: Span },
}

fn corrupt(what: impl Into<String>) -> RestoreError {
    RestoreError::Corrupt(what.into())
}

/// What a restore brought back.
#[derive(Debug, Clone, PartialEq)]
pub struct Restored {
    pub written_at: Timestamp,
    pub series: usize,
    pub samples: u64,
    /// Rules whose state came back.
    pub rules: usize,
    /// From the last evaluation the checkpoint saw to now: missing data.
    pub gap: Span,
}

/// The checkpoint of `ev` at `now`.
pub fn encode(ev: &Evaluator, now: Timestamp) -> Vec<u8> {
    let store = ev.store();
    let header = Header {
        written_at: now.0,
        evidence_since: ev.evidence_since().map(|t| t.0),
        ticks: ev.ticks,
        watched: store.watched().map(|(a, b)| (a.0, b.0)).collect(),
        rules: ev
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| SavedRule {
                name: r.name.clone(),
                state: ev.states[i].into(),
                value: ev.values[i].filter(|v| v.is_finite()),
                predated: ev.predated[i],
            })
            .collect(),
        baselines: ev.judgements.baselines().map(|(i, b)| (ev.call_key(i), b.clone())).collect(),
    };
    // Plain data: serializing it cannot fail; if it did, the file would be refused at start.
    let json = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(64 + json.len() + store.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let count_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut count = 0u64;
    for s in store.series() {
        let (key, zero_since, samples) = (s.key, s.zero_since, s.samples);
        count += 1;
        put_str(&mut out, &key.name);
        out.extend_from_slice(&(key.labels.len() as u32).to_le_bytes());
        for (k, v) in &key.labels {
            put_str(&mut out, k);
            put_str(&mut out, v);
        }
        out.extend_from_slice(&zero_since.map_or(i64::MIN, |t| t.0).to_le_bytes());
        out.extend_from_slice(&(samples.len() as u64).to_le_bytes());
        let mut previous = None;
        for (t, v) in samples {
            match previous {
                None => out.extend_from_slice(&t.0.to_le_bytes()),
                Some(p) => put_varint(&mut out, t.0.saturating_sub(p).max(0) as u64),
            }
            previous = Some(t.0);
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        put_totals(&mut out, s.totals.as_ref());
    }
    out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
    let hash = fnv1a(&out);
    out.extend_from_slice(&hash.to_le_bytes());
    out
}

/// A series' counter checkpoints (format 2): a flag, then its running total, the last value
/// (a flag and its bits), the first and last sample times, and per level its step, first grid
/// index, whether it was trimmed, and its points.
fn put_totals(out: &mut Vec<u8>, totals: Option<&SavedTotals>) {
    let Some(t) = totals else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&t.total.to_bits().to_le_bytes());
    out.push(u8::from(t.prev.is_some()));
    out.extend_from_slice(&t.prev.unwrap_or(0.0).to_bits().to_le_bytes());
    out.extend_from_slice(&t.first_t.unwrap_or(i64::MIN).to_le_bytes());
    out.extend_from_slice(&t.last_t.to_le_bytes());
    out.extend_from_slice(&(t.levels.len() as u32).to_le_bytes());
    for l in &t.levels {
        out.extend_from_slice(&l.step.to_le_bytes());
        out.extend_from_slice(&l.first_k.to_le_bytes());
        out.push(u8::from(l.trimmed));
        out.extend_from_slice(&(l.points.len() as u64).to_le_bytes());
        for p in &l.points {
            out.extend_from_slice(&p.to_bits().to_le_bytes());
        }
    }
}

/// Reads what [`put_totals`] wrote, every length checked against what is left.
fn take_totals(rest: &mut &[u8]) -> Result<Option<SavedTotals>, RestoreError> {
    match take(rest, 1)?[0] {
        0 => return Ok(None),
        1 => {}
        _ => return Err(corrupt("a series' checkpoint flag is neither 0 nor 1")),
    }
    let total = f64::from_bits(take_u64(rest)?);
    let has_prev = take(rest, 1)?[0] == 1;
    let prev = f64::from_bits(take_u64(rest)?);
    let first_t = Some(take_i64(rest)?).filter(|&t| t != i64::MIN);
    let last_t = take_i64(rest)?;
    let count = take_u32(rest)? as usize;
    if count > rest.len() / 25 {
        return Err(corrupt("more checkpoint levels than bytes"));
    }
    let mut levels = Vec::with_capacity(count);
    for _ in 0..count {
        let step = take_i64(rest)?;
        let first_k = take_i64(rest)?;
        let trimmed = take(rest, 1)?[0] == 1;
        let n = take_u64(rest)?;
        if n > (rest.len() / 8) as u64 {
            return Err(corrupt("more checkpoints than bytes"));
        }
        let points = (0..n).map(|_| take_u64(rest).map(f64::from_bits)).collect::<Result<Vec<_>, _>>()?;
        if step <= 0 {
            return Err(corrupt("a checkpoint level's step is not positive"));
        }
        levels.push(SavedLevel { step, first_k, trimmed, points });
    }
    Ok(Some(SavedTotals { total, prev: has_prev.then_some(prev), first_t, last_t, levels }))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// FNV-1a, 64 bits: enough to tell a torn or damaged file from a whole one.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A checkpoint read back in full (tests, and the check before anything is restored).
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub written_at: Timestamp,
    pub evidence_since: Option<Timestamp>,
    pub ticks: u64,
    pub watched: Vec<(Timestamp, Timestamp)>,
    /// `(rule, state, value)`.
    pub rules: Vec<(String, RuleState, Option<f64>)>,
    pub series: Vec<SavedSeries>,
}

/// One series as kept.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedSeries {
    pub key: SeriesKey,
    pub zero_since: Option<Timestamp>,
    pub samples: Vec<(Timestamp, f64)>,
    /// Its counter checkpoints (an SLO read it).
    pub totals: Option<SavedTotals>,
}

/// Reads a whole checkpoint (every series in memory: for tests and tools; a restore streams).
pub fn decode(bytes: &[u8]) -> Result<Decoded, RestoreError> {
    let mut reader = Reader::new(bytes)?;
    let h = &reader.header;
    let mut out = Decoded {
        written_at: Timestamp(h.written_at),
        evidence_since: h.evidence_since.map(Timestamp),
        ticks: h.ticks,
        watched: h.watched.iter().map(|&(a, b)| (Timestamp(a), Timestamp(b))).collect(),
        rules: h.rules.iter().map(|r| (r.name.clone(), r.state.into(), r.value)).collect(),
        series: vec![],
    };
    let mut samples = Vec::new();
    while let Some((key, zero_since, totals)) = reader.next_series(&mut samples)? {
        out.series.push(SavedSeries { key, zero_since, samples: std::mem::take(&mut samples), totals });
    }
    Ok(out)
}

/// A series read back, beside its samples: its key, the start of its run of zeros, its counter
/// checkpoints.
type SeriesHead = (SeriesKey, Option<Timestamp>, Option<SavedTotals>);

/// Reads the series of a checkpoint one at a time, every length checked against what is left.
struct Reader<'a> {
    header: Header,
    /// Whether series carry their counter checkpoints (format 2 on).
    totals: bool,
    rest: &'a [u8],
    left: u64,
}

impl<'a> Reader<'a> {
    /// Checks the magic, the format and the hash, and reads the header.
    fn new(bytes: &'a [u8]) -> Result<Reader<'a>, RestoreError> {
        if bytes.len() < MAGIC.len() + 2 + 4 + 8 + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a rollwatch checkpoint"));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(tail.try_into().unwrap_or_default()) {
            return Err(corrupt("its checksum does not match (torn or damaged)"));
        }
        let mut rest = &body[MAGIC.len()..];
        let format = u16::from_le_bytes(take(&mut rest, 2)?.try_into().unwrap_or_default());
        if format != FORMAT && format != FORMAT_1 {
            return Err(corrupt(format!("format {format}, this rollwatch reads formats {FORMAT_1} and {FORMAT}")));
        }
        let len = take_u32(&mut rest)? as usize;
        let header: Header =
            serde_json::from_slice(take(&mut rest, len)?).map_err(|e| corrupt(format!("header: {e}")))?;
        let left = take_u64(&mut rest)?;
        Ok(Reader { header, totals: format >= FORMAT, rest, left })
    }

    /// The next series (its samples into `samples`, cleared first), or `None` after the last.
    fn next_series(&mut self, samples: &mut Vec<(Timestamp, f64)>) -> Result<Option<SeriesHead>, RestoreError> {
        samples.clear();
        if self.left == 0 {
            return match self.rest.is_empty() {
                true => Ok(None),
                false => Err(corrupt("bytes after the last series")),
            };
        }
        self.left -= 1;
        let rest = &mut self.rest;
        let name = take_str(rest)?;
        let labels = take_u32(rest)? as usize;
        if labels > rest.len() / 8 {
            return Err(corrupt("more labels than bytes"));
        }
        let mut pairs = Vec::with_capacity(labels);
        for _ in 0..labels {
            pairs.push((take_str(rest)?, take_str(rest)?));
        }
        let zero_since = Some(take_i64(rest)?).filter(|&t| t != i64::MIN).map(Timestamp);
        let n = take_u64(rest)?;
        if n > (rest.len() / MIN_SAMPLE_BYTES) as u64 {
            return Err(corrupt("more samples than bytes"));
        }
        samples.reserve(n as usize);
        let mut t = 0i64;
        for i in 0..n {
            t = match i {
                0 => take_i64(rest)?,
                _ => {
                    let delta = i64::try_from(take_varint(rest)?).map_err(|_| corrupt("sample time out of range"))?;
                    t.checked_add(delta).ok_or_else(|| corrupt("sample time out of range"))?
                }
            };
            samples.push((Timestamp(t), f64::from_bits(take_u64(rest)?)));
        }
        let totals = if self.totals { take_totals(rest)? } else { None };
        Ok(Some((SeriesKey::new(name, pairs), zero_since, totals)))
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], RestoreError> {
    if rest.len() < n {
        return Err(corrupt("it ends early"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, RestoreError> {
    Ok(u32::from_le_bytes(take(rest, 4)?.try_into().unwrap_or_default()))
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, RestoreError> {
    Ok(u64::from_le_bytes(take(rest, 8)?.try_into().unwrap_or_default()))
}

fn take_i64(rest: &mut &[u8]) -> Result<i64, RestoreError> {
    Ok(i64::from_le_bytes(take(rest, 8)?.try_into().unwrap_or_default()))
}

fn take_str(rest: &mut &[u8]) -> Result<String, RestoreError> {
    let len = take_u32(rest)? as usize;
    String::from_utf8(take(rest, len)?.to_vec()).map_err(|_| corrupt("a series name or label is not UTF-8"))
}

fn take_varint(rest: &mut &[u8]) -> Result<u64, RestoreError> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = take(rest, 1)?[0];
        n |= ((b & 0x7f) as u64).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(corrupt("a sample time's delta is too long"))
}

impl Evaluator {
    /// The checkpoint of this evaluator at `now` (see [`encode`]).
    pub fn checkpoint(&self, now: Timestamp) -> Vec<u8> {
        encode(self, now)
    }

    /// The longest span any rule reads back, window plus offset (at least [`LOOKBACK`]): a
    /// checkpoint older than this holds nothing a window still reads.
    pub fn longest_window(&self) -> Span {
        self.calls
            .iter()
            .map(|(c, _, _)| {
                let offset = match c.offset() {
                    Offset::Ago(span) => span,
                    Offset::Deploy => Span::ZERO,
                };
                Span(c.window().unwrap_or(LOOKBACK).0.saturating_add(offset.0))
            })
            .fold(LOOKBACK, Span::max)
    }

    /// Restores a checkpoint into this evaluator, fresh from its profiles with its evidence
    /// already started where the journal says (the current deploy), at `now`: every series,
    /// the watched stretches (the gap since is missing data) and the rule states, as the module
    /// documentation says. The whole file is checked before anything changes: a checkpoint
    /// refused leaves the evaluator as it was.
    pub fn restore(&mut self, bytes: &[u8], now: Timestamp) -> Result<Restored, RestoreError> {
        let mut check = Reader::new(bytes)?;
        let written_at = Timestamp(check.header.written_at);
        if written_at > now {
            return Err(RestoreError::Ahead { ahead: written_at.saturating_since(now) });
        }
        let (age, max) = (now.saturating_since(written_at), self.longest_window());
        if age > max {
            return Err(RestoreError::TooOld { age, max });
        }
        let mut samples = Vec::new();
        while check.next_series(&mut samples)?.is_some() {
            if samples.last().is_some_and(|(t, _)| *t > written_at) {
                return Err(corrupt("a sample dated after the checkpoint"));
            }
        }

        let mut reader = Reader::new(bytes)?;
        let mut restored = Restored { written_at, series: 0, samples: 0, rules: 0, gap: Span::ZERO };
        while let Some((key, zero_since, totals)) = reader.next_series(&mut samples)? {
            restored.series += 1;
            restored.samples += samples.len() as u64;
            let totals = totals.as_ref().filter(|totals| totals.last_t <= written_at.0);
            self.evidence.restore_series(&key, &samples, zero_since, totals);
        }
        let header = reader.header;
        let watched: Vec<(Timestamp, Timestamp)> =
            header.watched.iter().map(|&(a, b)| (Timestamp(a), Timestamp(b))).collect();
        let last_seen = watched.last().map_or(written_at, |&(_, b)| b.min(written_at));
        restored.gap = now.saturating_since(last_seen);
        self.evidence.resume(watched, now);

        let same_evidence = header.evidence_since.map(Timestamp) == self.evidence_since();
        for saved in header.rules {
            let Some(i) = self.rules.iter().position(|r| r.name == saved.name) else { continue };
            let rule = &self.rules[i];
            if rule.scope == Scope::Deployment && !same_evidence {
                continue;
            }
            let state = match RuleState::from(saved.state) {
                // The gap does not count towards `for`: pending as long as before the stop.
                RuleState::Pending { since } => RuleState::Pending { since: since.plus(restored.gap).min(now) },
                state => state,
            };
            self.states[i] = state;
            self.values[i] = saved.value;
            self.predated[i] = saved.predated && same_evidence;
            self.slots.set(rule.firing_slot, Value::Boolean(state.is_firing()));
            self.slots.set(rule.pending_slot, Value::Boolean(state.is_pending()));
            restored.rules += 1;
        }
        self.ticks = self.ticks.max(header.ticks);
        // `"deploy"` offsets read the window before the deploy: the restored samples hold it.
        if let Some(at) = self.evidence_since() {
            self.take_deploy_values(at);
        }
        // A judge's "deploy" baseline as kept at the deploy, when it is the same deploy (the
        // restored samples may no longer reach back before it).
        if same_evidence {
            self.restore_baselines(header.baselines);
        }
        Ok(restored)
    }
}

/// What [`restore_at_start`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum AtStart {
    /// No checkpoint: a first start, or a state_dir without one.
    Fresh,
    Restored(Restored),
    /// A checkpoint was there but not used (start fresh), with why.
    Ignored(String),
}

/// Reads `dir`'s checkpoint into `ev` at `now`, if there is a usable one. Never fails: an
/// unreadable, corrupt, old or future checkpoint is reported and the evaluator starts fresh.
pub fn restore_at_start(dir: &Path, ev: &mut Evaluator, now: Timestamp) -> AtStart {
    match load(dir) {
        Ok(None) => AtStart::Fresh,
        Ok(Some(bytes)) => match ev.restore(&bytes, now) {
            Ok(restored) => AtStart::Restored(restored),
            Err(e) => AtStart::Ignored(e.to_string()),
        },
        Err(e) => AtStart::Ignored(format!("cannot read {}: {e}", dir.join(FILE).display())),
    }
}

/// The checkpoint's bytes in `dir`, `None` when there is none. Only a regular file of at most
/// [`MAX_BYTES`] is read.
pub fn load(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let path = dir.join(FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"));
    }
    if meta.len() > MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} bytes, more than the {MAX_BYTES} a checkpoint may have", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(&path)?.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Writes `bytes` as `dir`'s checkpoint, atomically: a temporary file written and fsynced, then
/// renamed over the old one and the directory fsynced. A crash leaves the old checkpoint or
/// the new one, never a part; a failure (a full disk) removes the temporary file.
pub fn save(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(TMP);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(FILE))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoadedProfile;
    use crate::diag::SourceFile;
    use crate::rules::slo;

    const S: i64 = 1000;

    /// Errors over a 1-minute ratio pending for 10 minutes; an environment gauge.
    const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("req{code=\"500\"}", "req", "1m")'

[[rule]]
name = "errors"
when = 'error_rate > 0.05'
for = "10m"

[[rule]]
name = "node-memory"
scope = "environment"
when = 'last("mem") > 0.9'
"#;

    fn evaluator() -> Evaluator {
        let file = SourceFile { path: "p.toml".into(), text: PROFILE.to_string() };
        super::super::load::build(&[LoadedProfile::from_source(file).unwrap()]).unwrap()
    }

    fn key(s: &str) -> SeriesKey {
        SeriesKey::parse(s).unwrap()
    }

    /// `ev` fed 10% errors and memory at 95%, every 15 s from `from` to `to`, evaluated each time.
    fn feed(ev: &mut Evaluator, from: i64, to: i64) {
        let (ok, bad, mem) = (key(r#"req{code="200"}"#), key(r#"req{code="500"}"#), key("mem"));
        let mut t = from;
        while t <= to {
            let n = (t / (15 * S)) as f64;
            ev.sample(&ok, Timestamp(t), 90.0 * n);
            ev.sample(&bad, Timestamp(t), 10.0 * n);
            ev.sample(&mem, Timestamp(t), 0.95);
            ev.tick(Timestamp(t));
            t += 15 * S;
        }
    }

    #[test]
    fn a_checkpoint_decodes_to_what_was_encoded() {
        let mut ev = evaluator();
        ev.restart_evidence(Timestamp(0), false);
        feed(&mut ev, 0, 300 * S);
        ev.stale(&key("mem"), Timestamp(300 * S + 1));
        let bytes = encode(&ev, Timestamp(301 * S));
        let d = decode(&bytes).unwrap();
        assert_eq!(d.written_at, Timestamp(301 * S));
        assert_eq!(d.evidence_since, Some(Timestamp(0)));
        assert_eq!(d.ticks, 21);
        assert_eq!(d.watched, vec![(Timestamp(0), Timestamp(300 * S))]);
        let errors = d.rules.iter().find(|r| r.0 == "errors").unwrap();
        assert_eq!(errors.1, RuleState::Pending { since: Timestamp(15 * S) }, "true from the second tick");
        assert!(errors.2.is_some_and(|v| (v - 0.1).abs() < 1e-9));
        // Every series, every sample as the store holds it (NaN bits included).
        let bits = |samples: &[(Timestamp, f64)]| samples.iter().map(|(t, v)| (t.0, v.to_bits())).collect::<Vec<_>>();
        assert_eq!(d.series.len(), 3);
        for s in ev.store().series() {
            let kept = d.series.iter().find(|k| k.key == *s.key).unwrap();
            assert_eq!(kept.zero_since, s.zero_since);
            assert_eq!(bits(&kept.samples), bits(&s.samples.collect::<Vec<_>>()), "{}", s.key);
        }
        let mem = d.series.iter().find(|s| s.key.name == "mem").unwrap();
        assert!(mem.samples.last().unwrap().1.is_nan(), "the stale marker is kept");
        let bad = d.series.iter().find(|s| s.key.label("code") == "500").unwrap();
        assert_eq!(bad.samples.last(), Some(&(Timestamp(300 * S), 200.0)));
        // About ten bytes a sample, not JSON's forty.
        let samples: usize = d.series.iter().map(|s| s.samples.len()).sum();
        assert!(bytes.len() < 1000 + samples * 11, "{} bytes for {samples} samples", bytes.len());
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_whole_and_never_panics() {
        let mut ev = evaluator();
        feed(&mut ev, 0, 120 * S);
        let bytes = encode(&ev, Timestamp(121 * S));
        for cut in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Every single-byte change is caught by the hash (or the magic).
        for i in (0..bytes.len()).step_by(7) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x41;
            let mut fresh = evaluator();
            assert!(fresh.restore(&bad, Timestamp(130 * S)).is_err(), "byte {i} changed");
            assert_eq!(fresh.store().len(), 0, "nothing restored from a refused file");
        }
        // Hostile content with a valid hash: lengths beyond the file, huge counts.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mut body = bytes[..bytes.len() - 8].to_vec();
            let at = 16 + (rng as usize % (body.len() - 16));
            body[at] = (rng >> 32) as u8;
            if rng.is_multiple_of(3) {
                body.truncate(at + 1);
            }
            let hash = fnv1a(&body);
            body.extend_from_slice(&hash.to_le_bytes());
            let _ = decode(&body);
            let _ = evaluator().restore(&body, Timestamp(130 * S));
        }
        let e = decode(b"not a checkpoint at all, just text").unwrap_err();
        assert_eq!(e.to_string(), "corrupt checkpoint: not a rollwatch checkpoint");
    }

    #[test]
    fn a_restart_keeps_windows_and_pending_time_but_not_the_gap() {
        let mut ev = evaluator();
        ev.restart_evidence(Timestamp(0), false);
        feed(&mut ev, 0, 300 * S);
        let bytes = encode(&ev, Timestamp(300 * S));

        // Restarted 60 s later: same deploy (the journal's).
        let mut back = evaluator();
        back.restart_evidence(Timestamp(0), false);
        let r = back.restore(&bytes, Timestamp(360 * S)).unwrap();
        assert_eq!((r.series, r.rules, r.gap), (3, 2, Span(60 * S)));
        // Pending since 15 s, for 285 s before the stop: still 285 s, the gap not counted.
        assert_eq!(back.state("errors"), Some(RuleState::Pending { since: Timestamp(75 * S) }));
        assert!(back.state("node-memory").unwrap().is_firing());
        // The windows hold what was seen before, less the gap.
        let errors = back.rules.iter().find(|r| r.name == "errors").unwrap().clone();
        feed(&mut back, 375 * S, 375 * S);
        assert!(back.state("errors").unwrap().is_pending());
        let cov = back.rule_coverage(&errors, Timestamp(375 * S));
        assert_eq!(cov.len(), 1, "{cov:?}");
        assert_eq!(cov[0].covered, Span(15 * S), "the 1m window (315s, 375s]: only the 15 s since the restart");
        // It fires 10 minutes of watched pending time after 15 s: 600 − 285 = 315 s after the restart.
        feed(&mut back, 390 * S, 660 * S);
        assert!(back.state("errors").unwrap().is_pending(), "at 660 s: 585 s pending");
        feed(&mut back, 675 * S, 675 * S);
        assert!(back.state("errors").unwrap().is_firing(), "at 675 s: 600 s pending");
    }

    /// A fleet's deployment held here again after another replica held it: the evaluator kept
    /// goes on with its samples, the time it was parked unwatched, every rule inactive again.
    #[test]
    fn a_deployment_held_again_starts_its_rules_again_and_does_not_count_the_gap_as_watched() {
        let mut ev = evaluator();
        ev.restart_evidence(Timestamp(0), false);
        feed(&mut ev, 0, 300 * S);
        assert!(ev.state("errors").unwrap().is_pending() && ev.state("node-memory").unwrap().is_firing());

        ev.resume_after_gap(Timestamp(400 * S));
        assert_eq!(ev.state("errors"), Some(RuleState::Inactive), "a state from before says nothing of now");
        assert_eq!(ev.state("node-memory"), Some(RuleState::Inactive));
        let errors = ev.rules.iter().find(|r| r.name == "errors").unwrap().clone();
        feed(&mut ev, 415 * S, 415 * S);
        let cov = ev.rule_coverage(&errors, Timestamp(415 * S));
        assert_eq!(cov[0].covered, Span(15 * S), "the 1m window (355s, 415s]: only the 15 s since it was held again");
        // What is seen from now on fires again; `for` counts from now.
        assert_eq!(ev.state("errors"), Some(RuleState::Pending { since: Timestamp(415 * S) }));
        assert!(ev.state("node-memory").unwrap().is_firing());
    }

    /// An SLO's long windows keep only checkpoints of their counters beyond the shortest
    /// window: a restart keeps those too, so the 1-day and 3-day burn rates read as before.
    #[test]
    fn a_restart_keeps_an_slo_s_long_windows() {
        let slo = "[[slo]]\nname = \"availability\"\nobjective = \"99.9%\"\n\
                   errors = 'req{code=\"500\"}'\ntotal = 'req'\n";
        let build = || {
            let file = SourceFile { path: "slo.toml".into(), text: slo.to_string() };
            super::super::load::build(&[LoadedProfile::from_source(file).unwrap()]).unwrap()
        };
        const MIN: i64 = 60 * S;
        let (ok, bad) = (key(r#"req{code="200"}"#), key(r#"req{code="500"}"#));
        let mut ev = build();
        ev.restart_evidence(Timestamp(0), false);
        // Two days at one sample a minute: 0.5% errors the first day, none the second.
        let end = 2 * 24 * 60;
        let (mut good, mut errors) = (0.0, 0.0);
        for m in 0..=end {
            good += 1000.0;
            errors += if m <= 24 * 60 { 5.0 } else { 0.0 };
            ev.sample(&ok, Timestamp(m * MIN), good);
            ev.sample(&bad, Timestamp(m * MIN), errors);
        }
        let now = Timestamp(end * MIN);
        ev.tick(now);
        let before = ev.slo_readings(now);
        let rate = |r: &[(usize, slo::SloReading)], w: &str| {
            let w = crate::time::parse_duration(w).unwrap();
            r[0].1.burn_rates.iter().find(|b| b.window == w).and_then(|b| b.burn_rate)
        };
        assert!(rate(&before, "3d").is_some_and(|r| r > 1.0), "{before:?}");
        let bytes = encode(&ev, now);
        let d = decode(&bytes).unwrap();
        assert!(d.series.iter().all(|s| s.totals.is_some()), "the counters' checkpoints are kept");

        let mut back = build();
        back.restart_evidence(Timestamp(0), false);
        back.restore(&bytes, now).unwrap();
        back.tick(now);
        let after = back.slo_readings(now);
        for w in ["1d", "3d", "6h", "1h"] {
            let (b, a) = (rate(&before, w), rate(&after, w));
            assert!(b.is_some() && a.is_some_and(|a| (a - b.unwrap()).abs() < 1e-9), "{w}: {b:?} before, {a:?} after");
        }
        assert_eq!(after[0].1.budget_remaining, before[0].1.budget_remaining);
        // Without them (a format-1 checkpoint), the 3-day window would reach the raw samples only.
        let mut fresh = build();
        fresh.restart_evidence(Timestamp(0), false);
        let d1 = decode(&bytes).unwrap();
        for s in &d1.series {
            fresh.evidence.restore_series(&s.key, &s.samples, s.zero_since, None);
        }
        fresh.tick(now);
        assert_ne!(rate(&fresh.slo_readings(now), "3d"), rate(&before, "3d"), "the test sees what checkpoints add");
    }

    #[test]
    fn a_deploy_since_the_checkpoint_restarts_the_deployment_s_rules_only() {
        let mut ev = evaluator();
        ev.restart_evidence(Timestamp(0), false);
        feed(&mut ev, 0, 300 * S);
        let bytes = encode(&ev, Timestamp(300 * S));
        let mut back = evaluator();
        back.restart_evidence(Timestamp(310 * S), false);
        let r = back.restore(&bytes, Timestamp(320 * S)).unwrap();
        assert_eq!(r.rules, 1, "the environment's rule only");
        assert_eq!(back.state("errors"), Some(RuleState::Inactive));
        assert!(back.state("node-memory").unwrap().is_firing());
        assert_eq!(back.store().len(), 3, "the samples come back all the same (windows start at the deploy)");
    }

    /// A judge's `"deploy"` baseline outlives the samples it was read from, across a restart.
    #[test]
    fn a_restart_keeps_a_judge_s_deploy_baseline() {
        let judge = || {
            let text = "[[rule]]\nname = \"slower\"\nwhen = 'higher(\"latency_seconds\", \"deploy\", \"1m\")'\n";
            let file = SourceFile { path: "p.toml".into(), text: text.to_string() };
            super::super::load::build(&[LoadedProfile::from_source(file).unwrap()]).unwrap()
        };
        let mut ev = judge();
        let lat = key("latency_seconds");
        let jitter = |i: i64| [0.9, 0.95, 1.0, 1.05, 1.1][(i % 5) as usize];
        // 100 ms until the deploy at 5 min, 200 ms after it, a sample a second, until 10 min.
        for i in 0..600i64 {
            if i == 300 {
                ev.restart_evidence(Timestamp(i * S), true);
            }
            ev.sample(&lat, Timestamp(i * S), if i < 300 { 0.1 } else { 0.2 } * jitter(i));
            ev.tick(Timestamp(i * S));
        }
        assert!(ev.state("slower").unwrap().is_firing());
        let bytes = encode(&ev, Timestamp(599 * S));
        // Restarted a little later on the same deploy: the samples before it are long gone.
        let mut back = judge();
        back.restart_evidence(Timestamp(300 * S), false);
        back.restore(&bytes, Timestamp(600 * S)).unwrap();
        back.sample(&lat, Timestamp(600 * S), 0.2);
        let d = back.tick(Timestamp(600 * S)).decisions.remove(0);
        assert!(
            d.judged[0].starts_with("slower: candidate mean 200ms vs before the deploy 100ms (+100")
                && d.judged[0].contains("Mann-Whitney p = "),
            "{:?}",
            d.judged
        );
        // Without the kept baseline (a checkpoint from before this was kept), it is unknown.
        let mut fresh = judge();
        fresh.restart_evidence(Timestamp(300 * S), false);
        fresh.restore(&back_without_baselines(&bytes), Timestamp(600 * S)).unwrap();
        fresh.sample(&lat, Timestamp(600 * S), 0.2);
        let d = fresh.tick(Timestamp(600 * S)).decisions.remove(0);
        assert!(d.unknown.contains(&"slower".to_string()), "{d:?}");
    }

    /// The same checkpoint with its header's kept baselines removed (and the hash made right).
    fn back_without_baselines(bytes: &[u8]) -> Vec<u8> {
        let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[12..12 + len]).unwrap();
        assert!(header["baselines"].as_array().is_some_and(|b| b.len() == 1), "{header}");
        header.as_object_mut().unwrap().remove("baselines");
        let json = serde_json::to_vec(&header).unwrap();
        let mut out = bytes[..8].to_vec();
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&bytes[12 + len..bytes.len() - 8]);
        let hash = fnv1a(&out);
        out.extend_from_slice(&hash.to_le_bytes());
        out
    }

    #[test]
    fn an_old_or_future_checkpoint_is_not_used() {
        let mut ev = evaluator();
        feed(&mut ev, 0, 60 * S);
        let bytes = encode(&ev, Timestamp(60 * S));
        let mut back = evaluator();
        // The longest window here is `last`'s 5 minutes of lookback.
        assert_eq!(back.longest_window(), LOOKBACK);
        let e = back.restore(&bytes, Timestamp(60 * S + LOOKBACK.0 + 1)).unwrap_err();
        assert!(matches!(e, RestoreError::TooOld { .. }), "{e}");
        let e = back.restore(&bytes, Timestamp(59 * S)).unwrap_err();
        assert!(matches!(e, RestoreError::Ahead { .. }), "{e}");
        assert_eq!(back.store().len(), 0);
        assert!(back.restore(&bytes, Timestamp(60 * S + LOOKBACK.0)).is_ok());
    }

    #[test]
    fn save_replaces_the_file_atomically_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), b"first").unwrap();
        save(dir.path(), b"second").unwrap();
        assert_eq!(load(dir.path()).unwrap().as_deref(), Some(&b"second"[..]));
        assert!(!dir.path().join(TMP).exists());
        let mut ev = evaluator();
        assert!(
            matches!(restore_at_start(dir.path(), &mut ev, Timestamp(0)), AtStart::Ignored(why) if why.contains("not a rollwatch checkpoint"))
        );
        std::fs::remove_file(dir.path().join(FILE)).unwrap();
        std::fs::create_dir(dir.path().join(FILE)).unwrap();
        assert!(
            matches!(restore_at_start(dir.path(), &mut ev, Timestamp(0)), AtStart::Ignored(why) if why.contains("not a regular file"))
        );
        assert!(save(dir.path(), b"x").is_err(), "a directory in the way: an error, not a panic");
        assert!(!dir.path().join(TMP).exists(), "the temporary file is removed");
    }
}
