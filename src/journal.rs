//! The journal: `state_dir/journal.jsonl`, one JSON object per line, each line written whole and
//! fsynced before the event it records counts as done. Reading back drops a torn last line (a
//! crash mid-write) with a warning. [`SharedJournal`] lets the engine, the dispatcher's procedure
//! task and the notifier append to one file; the dispatcher restores its state from [`Journal::read_back`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::time::Timestamp;

/// An append-only JSONL file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    at: Timestamp,
    event: &'a str,
    #[serde(flatten)]
    data: &'a T,
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    at: Timestamp,
    #[serde(flatten)]
    event: &'a T,
}

/// Why the journal could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl Journal {
    /// Opens (creating) `dir/journal.jsonl` for appending; creates `dir` if needed. A torn last
    /// line (a crash mid-write: no final newline) is cut off with a warning, so that new lines
    /// start whole and the file keeps reading back whole.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        let path = dir.join("journal.jsonl");
        let io = |source| JournalError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io)?;
        let bytes = std::fs::read(&path).map_err(io)?;
        if bytes.last().is_some_and(|&b| b != b'\n') {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(path = %path.display(), bytes = bytes.len() - keep, "dropping a torn last journal line");
            file.set_len(keep as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(Journal { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as one line, then fsyncs: when this returns Ok the event is durable.
    pub fn append<T: Serialize>(&mut self, at: Timestamp, event: &str, data: &T) -> Result<(), JournalError> {
        let line = serde_json::to_vec(&Line { at, event, data })
            .map_err(|e| JournalError::Io { path: self.path.clone(), source: io::Error::other(e) })?;
        self.write_line(line)
    }

    /// Writes one whole line and fsyncs it; a write that fails (a full disk) is cut back off, so
    /// the file never keeps half a line in the middle.
    fn write_line(&mut self, mut line: Vec<u8>) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { path: self.path.clone(), source };
        line.push(b'\n');
        let before = self.file.metadata().map_err(io)?.len();
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let _ = self.file.set_len(before);
            return Err(io(e));
        }
        Ok(())
    }

    /// Appends one serde-tagged event (its tag is the `event` field) as one line, then fsyncs.
    pub fn append_event<T: Serialize>(&mut self, at: Timestamp, event: &T) -> Result<(), JournalError> {
        let line = serde_json::to_vec(&Tagged { at, event })
            .map_err(|e| JournalError::Io { path: self.path.clone(), source: io::Error::other(e) })?;
        self.write_line(line)
    }

    /// Streams the file, keeping only the lines `keep` accepts: memory follows what is kept (the
    /// state events), not the file's size. Unparsable lines are skipped with a warning.
    pub fn read_back_kept(
        path: &Path,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>, JournalError> {
        use std::io::BufRead;
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(JournalError::Io { path: path.to_path_buf(), source }),
        };
        let mut reader = io::BufReader::with_capacity(1 << 16, file);
        let mut out = Vec::new();
        let mut line = Vec::new();
        let mut number = 0;
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
            if n == 0 {
                break;
            }
            number += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.is_empty() {
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(v) if keep(&v) => out.push(v),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = number, error = %e, "skipping an unreadable journal line")
                }
            }
        }
        Ok(out)
    }

    /// Reads every whole line back; a torn or unparsable last line is dropped with a warning,
    /// an unparsable line elsewhere is skipped with a warning (nothing else is lost).
    pub fn read_back(path: &Path) -> Result<Vec<serde_json::Value>, JournalError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(JournalError::Io { path: path.to_path_buf(), source }),
        };
        let mut out = Vec::new();
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice(line) {
                Ok(v) => out.push(v),
                Err(e) if i == last => {
                    tracing::warn!(path = %path.display(), error = %e, "dropping a torn last journal line");
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "skipping an unreadable journal line")
                }
            }
        }
        Ok(out)
    }
}

/// The exclusive lock on a `state_dir`: one rollwatch process acts from one journal. Held until
/// dropped; the file names the holder's pid.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why a `state_dir` could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is in use by another rollwatch (pid {holder}): one process per state_dir")]
    Held { path: PathBuf, holder: String },
    #[error("cannot lock {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl StateLock {
    /// Takes `dir/lock` (creating `dir`), or says which process holds it.
    pub fn take(dir: &Path) -> Result<StateLock, LockError> {
        let path = dir.join("lock");
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file =
            OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_string();
                let holder = if holder.is_empty() { "unknown".to_string() } else { holder };
                return Err(LockError::Held { path, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // The pid is for people; a full disk must not keep rollwatch from starting to watch.
        let named =
            file.set_len(0).and_then(|()| write!(file, "{}", std::process::id())).and_then(|()| file.sync_data());
        if let Err(e) = named {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the pid into the state_dir lock");
        }
        Ok(StateLock { _file: file })
    }
}

/// Past this size, [`compact`] rotates the journal at start.
pub const COMPACT_ABOVE: u64 = 64 * 1024 * 1024;

/// When `dir/journal.jsonl` is larger than `max_bytes`: moves it to `journal.1.jsonl` (replacing
/// an older one) and starts a new journal holding every line `keep` accepts — the acting events
/// that restore cooldowns, approvals, pauses, silences, versions and the whole rollback
/// history — in order.
/// Decisions, transitions, notifications and suppressions stay in the rotated file. The new file
/// is written and fsynced before the rename, so a crash leaves one whole journal or the other.
/// Returns whether it rotated.
pub fn compact(dir: &Path, max_bytes: u64, keep: impl Fn(&serde_json::Value) -> bool) -> Result<bool, JournalError> {
    let path = dir.join("journal.jsonl");
    let io = |source| JournalError::Io { path: path.clone(), source };
    match std::fs::metadata(&path) {
        Ok(m) if m.len() > max_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    }
    let lines = Journal::read_back(&path)?;
    let mut kept = Vec::new();
    for line in lines.iter().filter(|l| keep(l)) {
        kept.extend(serde_json::to_vec(line).map_err(|e| io(io::Error::other(e)))?);
        kept.push(b'\n');
    }
    let fresh = dir.join("journal.jsonl.new");
    let mut f = File::create(&fresh).map_err(io)?;
    f.write_all(&kept).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&path, dir.join("journal.1.jsonl")).map_err(io)?;
    std::fs::rename(&fresh, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    tracing::warn!(path = %path.display(), kept = kept.len(), "journal rotated to journal.1.jsonl; state events carried over");
    Ok(true)
}

/// One journal shared by the tasks that write to it; each append is whole and fsynced. It
/// remembers whether the last write failed (a full or read-only disk), for `/status` and for
/// the dispatcher, which stops acting while it cannot record.
#[derive(Debug, Clone)]
pub struct SharedJournal(Arc<Mutex<Journal>>, Arc<Mutex<Option<String>>>);

impl SharedJournal {
    pub fn new(journal: Journal) -> SharedJournal {
        SharedJournal(Arc::new(Mutex::new(journal)), Arc::default())
    }

    fn track<T>(&self, result: Result<T, JournalError>) -> Result<T, JournalError> {
        let mut failing = self.1.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *failing = result.as_ref().err().map(|e| crate::error_chain(e));
        result
    }

    /// The last write's error, while writes fail.
    pub fn failing(&self) -> Option<String> {
        self.1.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// See [`Journal::append_event`].
    pub fn append_event<T: Serialize>(&self, at: Timestamp, event: &T) -> Result<(), JournalError> {
        let mut j = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = j.append_event(at, event);
        drop(j);
        self.track(result)
    }

    /// See [`Journal::append`].
    pub fn append<T: Serialize>(&self, at: Timestamp, event: &str, data: &T) -> Result<(), JournalError> {
        let mut j = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = j.append(at, event, data);
        drop(j);
        self.track(result)
    }

    /// Appends, logging (not returning) a failure: for records whose loss must not stop the
    /// caller (a notification result).
    pub fn note<T: Serialize>(&self, at: Timestamp, event: &str, data: &T) {
        if let Err(e) = self.append(at, event, data) {
            tracing::error!(error = %e, event, "cannot write to the journal");
        }
    }

    pub fn path(&self) -> PathBuf {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_back_keeps_only_what_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        for i in 0..1000 {
            j.append(Timestamp(i), "decision", &serde_json::json!({"outcome": "monitor"})).unwrap();
        }
        j.append(Timestamp(1000), "paused", &serde_json::json!({"until": null})).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{torn").unwrap();
        let kept = Journal::read_back_kept(&path, |l| l["event"] != "decision").unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0]["event"], "paused");
    }

    #[test]
    fn a_state_dir_is_locked_by_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let lock = StateLock::take(dir.path()).unwrap();
        let e = StateLock::take(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("in use by another rollwatch (pid {})", std::process::id())), "{e}");
        drop(lock);
        StateLock::take(dir.path()).unwrap();
    }

    #[test]
    fn appends_whole_lines_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(&dir.path().join("state")).unwrap();
        j.append(Timestamp(1), "started", &serde_json::json!({"version": "1"})).unwrap();
        j.append(Timestamp(2), "decision", &serde_json::json!({"outcome": "rollback"})).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"at\":3,\"event\":\"deci").unwrap();
        let back = Journal::read_back(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1]["outcome"], "rollback");
        assert_eq!(back[0]["event"], "started");
        assert_eq!(back[0]["at"], 1);
        // Opening again cuts the torn tail, so the next line starts whole.
        let mut j = Journal::open(&dir.path().join("state")).unwrap();
        j.append(Timestamp(4), "started", &serde_json::json!({})).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(Journal::read_back(&path).unwrap().len(), 3);
    }

    #[test]
    fn compaction_rotates_and_keeps_what_restores_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(Timestamp(1), "version_changed", &serde_json::json!({"from": null, "to": "v1"})).unwrap();
        for i in 0..100 {
            j.append(Timestamp(2 + i), "decision", &serde_json::json!({"outcome": "monitor"})).unwrap();
        }
        j.append(Timestamp(200), "paused", &serde_json::json!({"until": null})).unwrap();
        drop(j);
        let keep = |l: &serde_json::Value| l["event"] != "decision";
        assert!(!compact(dir.path(), 1 << 20, keep).unwrap(), "small journals stay");
        assert!(compact(dir.path(), 100, keep).unwrap());
        let back = Journal::read_back(&dir.path().join("journal.jsonl")).unwrap();
        let events: Vec<&str> = back.iter().map(|l| l["event"].as_str().unwrap()).collect();
        assert_eq!(events, vec!["version_changed", "paused"]);
        assert_eq!(back[1]["at"], 200);
        assert_eq!(Journal::read_back(&dir.path().join("journal.1.jsonl")).unwrap().len(), 102);
    }
}
