//! The journal: `state_dir/journal.jsonl`, one JSON object per line, each line written whole and
//! fsynced before the event it records counts as done. Reading back drops a torn last line (a
//! crash mid-write) with a warning. [`SharedJournal`] lets the engine, the dispatcher's procedure
//! task and the notifier append to one file through one writer thread that commits in groups;
//! the dispatcher restores its state from [`Journal::read_back_kept`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::time::{Span, Timestamp};

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

/// A record that carries its own `at` (a decision, a rule transition): written once.
#[derive(Serialize)]
struct Dated<'a, T: Serialize> {
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
        if let Some(keep) = torn_tail(&file).map_err(io)? {
            let len = file.metadata().map_err(io)?.len();
            tracing::warn!(path = %path.display(), bytes = len - keep, "dropping a torn last journal line");
            file.set_len(keep).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(Journal { path, file })
    }

    /// Whether the journal's path still names the file open here (same device and inode).
    fn path_is_open_file(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(p), Ok(f)) => p.dev() == f.dev() && p.ino() == f.ino(),
            _ => false,
        }
    }

    /// Opens the file again (after a failed write): a state_dir repaired by remounting it is
    /// written again, not the old read-only mount the open file still points to.
    fn reopen(&mut self) -> Result<(), JournalError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        *self = Journal::open(dir)?;
        Ok(())
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
        line.push(b'\n');
        self.write_batch(&line)
    }

    /// Writes whole lines (each ending in a newline) with one fsync; on failure the file is cut
    /// back to where it was.
    fn write_batch(&mut self, lines: &[u8]) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { path: self.path.clone(), source };
        let before = self.file.metadata().map_err(io)?.len();
        let written = self.file.write_all(lines).and_then(|()| self.file.sync_data());
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
        let mut out = Vec::new();
        each_line(path, |v| {
            if keep(&v) {
                out.push(v);
            }
        })?;
        Ok(out)
    }

    /// Streams the file to `f`, one line at a time (unparsable lines skipped with a warning): for
    /// a reader that folds the lines into something smaller, with no copy of the file in memory.
    pub fn for_each_line(path: &Path, f: impl FnMut(serde_json::Value)) -> Result<(), JournalError> {
        each_line(path, f)
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

/// Calls `f` with each line of the file, read in pages (a missing file has none); unparsable
/// lines are skipped with a warning.
fn each_line(path: &Path, mut f: impl FnMut(serde_json::Value)) -> Result<(), JournalError> {
    use std::io::BufRead;
    let io = |source| JournalError::Io { path: path.to_path_buf(), source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let mut reader = io::BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
            return Ok(());
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(text) {
            Ok(v) => f(v),
            Err(e) => {
                tracing::warn!(path = %path.display(), line = number, error = %e, "skipping an unreadable journal line")
            }
        }
    }
}

/// Where a file whose last byte is not a newline should be cut (just after its last newline),
/// reading backwards from the end in pages: nothing near the file's size is read into memory.
fn torn_tail(file: &File) -> io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut page = vec![0u8; 1 << 16];
    while end > 0 {
        let start = end.saturating_sub(page.len() as u64);
        let chunk = &mut page[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(None);
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64 + 1));
        }
        end = start;
    }
    Ok((len > 0).then_some(0))
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
    // Streamed into the new file: memory stays a page, whatever the journal's size.
    let fresh = dir.join("journal.jsonl.new");
    let mut out = io::BufWriter::new(File::create(&fresh).map_err(io)?);
    let (mut kept, mut failed) = (0usize, None);
    each_line(&path, |line| {
        if failed.is_none() && keep(&line) {
            let written =
                serde_json::to_writer(&mut out, &line).map_err(io::Error::other).and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => kept += 1,
                Err(e) => failed = Some(e),
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    let f = out.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&path, dir.join("journal.1.jsonl")).map_err(io)?;
    std::fs::rename(&fresh, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    tracing::warn!(path = %path.display(), kept, "journal rotated to journal.1.jsonl; state events carried over");
    Ok(true)
}

/// Lines waiting for the writer; beyond it, records that may be lost ([`SharedJournal::note`])
/// are dropped and counted. Durable appends are always queued: each caller waits for its own
/// fsync, so there are never more of them than callers.
pub const QUEUE_LINES: usize = 4096;

/// At most this many bytes go into one write and one fsync.
const BATCH_BYTES: usize = 1 << 20;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Request {
    /// A whole serialized line (no newline yet) and, for a durable append, who waits for it.
    Line(Vec<u8>, Option<Reply>),
    /// Answered once every line queued before it is written.
    Flush(Reply),
}

/// One journal shared by the tasks that write to it. Appends go to one writer thread, off the
/// async runtime, which commits in groups: every line waiting is written in one write and made
/// durable with one fsync. The thread runs while lines come (it ends after [`LINGER`] without
/// one, and starts again with the next): an idle journal — most of a fleet's — has none. A durable append ([`append_event`](Self::append_event)) returns once
/// its line is fsynced; a [`note`](Self::note) does not wait. The writer remembers whether the
/// last write failed (a full or read-only disk), for `/status` and for the dispatcher, which
/// stops acting while it cannot record.
#[derive(Clone)]
pub struct SharedJournal {
    queue: Queue,
    failing: Arc<Mutex<Option<String>>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    path: PathBuf,
}

impl std::fmt::Debug for SharedJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedJournal").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The requests waiting for the writer, counted. Not `sync_channel(QUEUE_LINES)`: its array
/// of slots is allocated whole at once (196 KB a journal, most of a fleet's memory, one journal
/// per deployment); this channel allocates as lines wait and frees as they are written.
#[derive(Clone)]
struct Queue {
    tx: std::sync::mpsc::Sender<Request>,
    waiting: Arc<AtomicUsize>,
    /// Who writes what is queued (`None`: the caller reads the [`Requests`] itself, in tests).
    writer: Option<Arc<Writer>>,
}

/// How long the writer thread waits for another line before it ends.
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

impl Queue {
    fn new() -> (Queue, Requests) {
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        (Queue { tx, waiting: waiting.clone(), writer: None }, Requests { rx, waiting })
    }

    /// Queues a request whatever is waiting; false when the writer is gone.
    fn send(&self, request: Request) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.send(request).is_ok();
        self.wake();
        sent
    }

    /// Queues a request unless [`QUEUE_LINES`] wait already; false when it was not queued.
    fn offer(&self, request: Request) -> bool {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= QUEUE_LINES {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let sent = self.tx.send(request).is_ok();
        self.wake();
        sent
    }

    /// Starts the writer thread unless it runs.
    fn wake(&self) {
        let Some(writer) = &self.writer else { return };
        if writer.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let w = writer.clone();
        if let Err(e) =
            std::thread::Builder::new().name("journal".into()).spawn(move || w.write_while_waiting(w.linger))
        {
            // No thread to be had: the caller writes (and waits for the disk) itself.
            tracing::error!(error = %e, "cannot start the journal writer thread: writing on the caller's thread");
            writer.write_while_waiting(std::time::Duration::ZERO);
        }
    }
}

/// The writer's side of a journal: what is queued, the file, the last write's error, and
/// whether a thread writes now.
struct Writer {
    requests: Mutex<Requests>,
    journal: Mutex<Journal>,
    failing: Arc<Mutex<Option<String>>>,
    running: std::sync::atomic::AtomicBool,
    /// How long its thread waits for another line ([`LINGER`]).
    linger: std::time::Duration,
}

impl Writer {
    /// Writes what comes until nothing has come for `linger` (or every sender is gone); a
    /// line queued as it ends is written by it or by the thread its sender starts.
    fn write_while_waiting(&self, linger: std::time::Duration) {
        loop {
            let waiting = {
                let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
                let mut journal = self.journal.lock().unwrap_or_else(|p| p.into_inner());
                write_groups(&mut journal, &requests, &self.failing, linger);
                requests.waiting.clone()
            };
            self.running.store(false, Ordering::SeqCst);
            if waiting.load(Ordering::SeqCst) == 0 || self.running.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

/// The writer's end of a [`Queue`].
struct Requests {
    rx: std::sync::mpsc::Receiver<Request>,
    waiting: Arc<AtomicUsize>,
}

impl Requests {
    fn taken(&self, request: Request) -> Request {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        request
    }

    /// The next request, waiting at most `linger` for it.
    fn recv(&self, linger: std::time::Duration) -> Option<Request> {
        self.rx.recv_timeout(linger).ok().map(|r| self.taken(r))
    }

    fn try_recv(&self) -> Option<Request> {
        self.rx.try_recv().ok().map(|r| self.taken(r))
    }
}

impl SharedJournal {
    /// The journal, written by a thread of its own while lines come.
    pub fn new(journal: Journal) -> SharedJournal {
        SharedJournal::lingering(journal, LINGER)
    }

    fn lingering(journal: Journal, linger: std::time::Duration) -> SharedJournal {
        let (mut queue, requests) = Queue::new();
        let failing: Arc<Mutex<Option<String>>> = Arc::default();
        let path = journal.path.clone();
        queue.writer = Some(Arc::new(Writer {
            requests: Mutex::new(requests),
            journal: Mutex::new(journal),
            failing: failing.clone(),
            running: std::sync::atomic::AtomicBool::new(false),
            linger,
        }));
        SharedJournal { queue, failing, dropped: Arc::default(), path }
    }

    /// The last write's error, while writes fail.
    pub fn failing(&self) -> Option<String> {
        self.failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Notes dropped because the writer fell behind by [`QUEUE_LINES`].
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends one serde-tagged event and waits until it is durable (see
    /// [`Journal::append_event`]). Blocks the calling thread: async code calls it from
    /// `spawn_blocking` or `block_in_place`.
    pub fn append_event<T: Serialize>(&self, at: Timestamp, event: &T) -> Result<(), JournalError> {
        let line = serde_json::to_vec(&Tagged { at, event }).map_err(|e| self.error(io::Error::other(e)))?;
        self.durable(line)
    }

    /// [`append_event`](Self::append_event) for async code: the task waits, its thread does not.
    pub async fn append_event_async<T: Serialize>(&self, at: Timestamp, event: &T) -> Result<(), JournalError> {
        let line = serde_json::to_vec(&Tagged { at, event }).map_err(|e| self.error(io::Error::other(e)))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = Request::Line(line, Some(Box::new(move |r| drop(tx.send(r)))));
        if !self.queue.send(request) {
            return self.settle(None);
        }
        self.settle(rx.await.ok())
    }

    /// Appends one whole line (already carrying its `at` and `event`) and waits until it is
    /// durable: a copy of a line recorded elsewhere (the shared log of replicas).
    pub fn append_line(&self, line: &serde_json::Value) -> Result<(), JournalError> {
        let line = serde_json::to_vec(line).map_err(|e| self.error(io::Error::other(e)))?;
        self.durable(line)
    }

    /// Appends one event under the name `event` and waits until it is durable.
    pub fn append<T: Serialize>(&self, at: Timestamp, event: &str, data: &T) -> Result<(), JournalError> {
        let line = serde_json::to_vec(&Line { at, event, data }).map_err(|e| self.error(io::Error::other(e)))?;
        self.durable(line)
    }

    /// Queues a record whose loss must not stop the caller (a notification result, an alert
    /// change) and returns at once; a failed write is logged by the writer and shows in
    /// [`failing`](Self::failing).
    pub fn note<T: Serialize>(&self, at: Timestamp, event: &str, data: &T) {
        self.queue_note(event, serde_json::to_vec(&Line { at, event, data }));
    }

    /// [`note`](Self::note) for a record that carries its own `at` (a decision, a transition):
    /// the line has one `at`, the record's.
    pub fn note_dated<T: Serialize>(&self, event: &str, data: &T) {
        self.queue_note(event, serde_json::to_vec(&Dated { event, data }));
    }

    fn queue_note(&self, event: &str, line: Result<Vec<u8>, serde_json::Error>) {
        let line = match line {
            Ok(line) => line,
            Err(e) => return tracing::error!(error = %e, event, "cannot serialize a journal record"),
        };
        if !self.queue.offer(Request::Line(line, None)) {
            let before = self.dropped.fetch_add(1, Ordering::Relaxed);
            if before.is_power_of_two() || before == 0 {
                tracing::error!(dropped = before + 1, event, "journal writer behind: record dropped");
            }
        }
    }

    /// Waits until every line queued so far is written (at a stop).
    pub fn flush(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.queue.send(Request::Flush(Box::new(move |r| drop(tx.send(r))))) {
            let _ = rx.recv();
        }
    }

    pub fn path(&self) -> PathBuf {
        self.path.clone()
    }

    fn durable(&self, line: Vec<u8>) -> Result<(), JournalError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply: Reply = Box::new(move |r| drop(tx.send(r)));
        if !self.queue.send(Request::Line(line, Some(reply))) {
            return self.settle(None);
        }
        self.settle(rx.recv().ok())
    }

    /// The writer's answer to a durable append (`None`: the writer is gone).
    fn settle(&self, answer: Option<Result<(), String>>) -> Result<(), JournalError> {
        match answer {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.error(io::Error::other(e))),
            None => Err(self.error(io::Error::other("the journal writer has stopped"))),
        }
    }

    fn error(&self, source: io::Error) -> JournalError {
        JournalError::Io { path: self.path.clone(), source }
    }
}

/// The writer thread: waits for a line, takes every other line already waiting (up to
/// [`BATCH_BYTES`]), writes them whole with one fsync, answers each waiter, and records the
/// outcome in `failing`. Ends when no line came for `linger` or every sender is gone,
/// returning how many writes it made.
fn write_groups(
    journal: &mut Journal,
    requests: &Requests,
    failing: &Mutex<Option<String>>,
    linger: std::time::Duration,
) -> usize {
    let mut commits = 0;
    while let Some(first) = requests.recv(linger) {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Line(mut line, reply) => {
                    line.push(b'\n');
                    batch.extend_from_slice(&line);
                    waiters.extend(reply);
                }
                Request::Flush(reply) => flushes.push(reply),
            }
            if batch.len() >= BATCH_BYTES {
                break;
            }
            next = requests.try_recv();
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            commits += 1;
            let failed_before = failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some();
            // After a failure, or when the path no longer names the open file (the state_dir
            // was remounted, the file moved), the file is opened again by its path.
            let reopened = if failed_before || !journal.path_is_open_file() { journal.reopen() } else { Ok(()) };
            reopened.and_then(|()| journal.write_batch(&batch))
        };
        if let Err(e) = &result {
            tracing::error!(error = %crate::error_chain(e), lines = bytecount(&batch), "cannot write to the journal");
        }
        if !batch.is_empty() {
            *failing.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                result.as_ref().err().map(|e| crate::error_chain(e));
        }
        // Waiters get the cause; their error names the path again.
        let outcome = result.map_err(|JournalError::Io { source, .. }| source.to_string());
        for reply in waiters.into_iter().chain(flushes) {
            reply(outcome.clone());
        }
    }
    commits
}

fn bytecount(batch: &[u8]) -> usize {
    batch.iter().filter(|&&b| b == b'\n').count()
}

/// The file beside the journal that carries, across a restart, how far the system clock was
/// ahead of rollwatch's timeline (see [`crate::time::SteadyClock`]).
pub const CLOCK_FILE: &str = "clock.json";

/// What a `state_dir` says of the last run's timeline.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastTimeline {
    /// The latest date among the journal's last lines.
    pub last: Option<Timestamp>,
    /// How far the system clock was ahead of the timeline when the last run last said
    /// ([`CLOCK_FILE`]; behind: negative).
    pub system_ahead: Span,
}

impl LastTimeline {
    /// Reads the journal's tail and [`CLOCK_FILE`] in `dir`. An unreadable clock file counts as
    /// no disagreement, with a warning; an unreadable journal is an error.
    pub fn read(dir: &Path) -> Result<LastTimeline, JournalError> {
        let path = dir.join("journal.jsonl");
        let last = last_date(&path).map_err(|source| JournalError::Io { path, source })?;
        Ok(LastTimeline { last, system_ahead: saved_clock(dir) })
    }

    /// Where the timeline resumes when the system clock reads `system`: the last run's timeline
    /// continued (`carry`: the disagreement kept) or the system clock, never before the journal's
    /// last date (see [`crate::time::resume_point`]).
    pub fn resume(&self, system: Timestamp, carry: bool) -> Timestamp {
        crate::time::resume_point(system, if carry { self.system_ahead } else { Span::ZERO }, self.last)
    }
}

/// The disagreement [`CLOCK_FILE`] in `dir` holds: none when there is no file, or with a warning
/// when it cannot be read.
pub fn saved_clock(dir: &Path) -> Span {
    let clock = dir.join(CLOCK_FILE);
    let read = std::fs::read(&clock).and_then(|bytes| {
        serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    });
    match read {
        Ok(v) => Span(v["system_ahead_ms"].as_i64().unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Span::ZERO,
        Err(e) => {
            tracing::warn!(path = %clock.display(), error = %e, "unreadable; taking the system clock as right");
            Span::ZERO
        }
    }
}

/// Writes [`CLOCK_FILE`] whole (a new file, fsynced, renamed over the old): how far the system
/// clock is ahead of the timeline at `at`.
pub fn save_clock(dir: &Path, system_ahead: Span, at: Timestamp) -> Result<(), JournalError> {
    let path = dir.join(CLOCK_FILE);
    let io = |source| JournalError::Io { path: path.clone(), source };
    let fresh = dir.join(format!("{CLOCK_FILE}.new"));
    let text = serde_json::json!({ "system_ahead_ms": system_ahead.0, "at": at }).to_string();
    let mut f = File::create(&fresh).map_err(io)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&fresh, &path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// The latest `at` among the journal's last whole lines, read backwards in pages until one
/// has a date (at most 4 MiB): the journal is not read whole for it.
fn last_date(path: &Path) -> io::Result<Option<Timestamp>> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 1 << 16;
    const MOST: u64 = 1 << 22;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let (mut start, mut tail) = (len, Vec::new());
    loop {
        let from = start.saturating_sub(PAGE);
        let mut page = vec![0u8; (start - from) as usize];
        file.read_exact_at(&mut page, from)?;
        page.extend_from_slice(&tail);
        (tail, start) = (page, from);
        // Whole lines: all of them from the file's start, else those after the first newline.
        let whole = match (start, tail.iter().position(|&b| b == b'\n')) {
            (0, _) => &tail[..],
            (_, Some(i)) => &tail[i + 1..],
            (_, None) => &[][..],
        };
        let latest = whole
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("at").and_then(|a| a.as_i64()))
            .max();
        if latest.is_some() || start == 0 || len - start >= MOST {
            return Ok(latest.map(Timestamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_timeline_is_the_tails_latest_date_and_the_saved_disagreement() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(LastTimeline::read(dir.path()).unwrap(), LastTimeline::default());
        let mut j = Journal::open(dir.path()).unwrap();
        // More than a page of lines; the latest date is not the last line's (a dated record).
        for i in 0..2000 {
            j.append(Timestamp(i), "decision", &serde_json::json!({"outcome": "monitor", "pad": "x".repeat(40)}))
                .unwrap();
        }
        j.append(Timestamp(5000), "decision", &serde_json::json!({})).unwrap();
        j.append(Timestamp(4000), "notified", &serde_json::json!({})).unwrap();
        save_clock(dir.path(), Span(-120_000), Timestamp(4000)).unwrap();
        let last = LastTimeline::read(dir.path()).unwrap();
        assert_eq!(last, LastTimeline { last: Some(Timestamp(5000)), system_ahead: Span(-120_000) });
        // Carried: the system clock 120 s behind, so the timeline continues 120 s ahead of it.
        assert_eq!(last.resume(Timestamp(10_000), true), Timestamp(130_000));
        assert_eq!(last.resume(Timestamp(10_000), false), Timestamp(10_000));
        assert_eq!(last.resume(Timestamp(1_000), false), Timestamp(5000));
        // One line longer than a page: still found.
        j.append(Timestamp(9000), "decision", &serde_json::json!({"pad": "y".repeat(200_000)})).unwrap();
        assert_eq!(LastTimeline::read(dir.path()).unwrap().last, Some(Timestamp(9000)));
        std::fs::write(dir.path().join(CLOCK_FILE), "{torn").unwrap();
        assert_eq!(LastTimeline::read(dir.path()).unwrap().system_ahead, Span::ZERO);
    }

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
    fn notes_beyond_the_queue_are_refused_and_durable_lines_always_wait() {
        let (queue, requests) = Queue::new();
        let offered = (0..QUEUE_LINES + 10).filter(|_| queue.offer(Request::Line(Vec::new(), None))).count();
        assert_eq!(offered, QUEUE_LINES, "notes beyond {QUEUE_LINES} waiting are refused");
        assert!(queue.send(Request::Line(Vec::new(), None)), "a durable line is queued however many wait");
        assert!(requests.try_recv().is_some() && requests.try_recv().is_some());
        assert!(queue.offer(Request::Line(Vec::new(), None)), "a line written makes room for a note");
        assert!(!queue.offer(Request::Line(Vec::new(), None)));
        drop(requests);
        assert!(!queue.send(Request::Line(Vec::new(), None)), "the writer gone: not queued");
    }

    #[test]
    fn lines_waiting_together_are_written_with_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let path = journal.path().to_path_buf();
        let (queue, requests) = Queue::new();
        let (answers_tx, answers) = std::sync::mpsc::channel();
        for i in 0..100 {
            let line = serde_json::to_vec(&serde_json::json!({"at": i, "event": "decision"})).unwrap();
            let tx = answers_tx.clone();
            let reply: Option<Reply> = (i % 10 == 0).then(|| Box::new(move |r| drop(tx.send(r))) as Reply);
            assert!(queue.send(Request::Line(line, reply)));
        }
        drop(queue);
        drop(answers_tx);
        let failing = Mutex::new(None);
        let mut journal = journal;
        assert_eq!(
            write_groups(&mut journal, &requests, &failing, LINGER),
            1,
            "one write, one fsync for 100 waiting lines"
        );
        assert_eq!(answers.iter().filter(Result::is_ok).count(), 10, "every durable append answered Ok");
        let back = Journal::read_back(&path).unwrap();
        let order: Vec<i64> = back.iter().map(|l| l["at"].as_i64().unwrap()).collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>(), "in the order queued");
        assert!(failing.lock().unwrap().is_none());
    }

    #[test]
    fn the_writer_thread_ends_when_idle_and_starts_again_with_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::lingering(Journal::open(dir.path()).unwrap(), std::time::Duration::from_millis(20));
        let writer = shared.queue.writer.clone().unwrap();
        assert!(!writer.running.load(Ordering::SeqCst), "no thread before the first line");
        shared.append(Timestamp(1), "paused", &serde_json::json!({})).unwrap();
        let waited = crate::time::Stopwatch::start();
        while writer.running.load(Ordering::SeqCst) {
            assert!(waited.elapsed_secs() < 10.0, "the writer thread never ended");
            std::thread::yield_now();
        }
        shared.append(Timestamp(2), "resumed", &serde_json::json!({})).unwrap();
        shared.note(Timestamp(3), "decision", &serde_json::json!({}));
        shared.flush();
        let back = Journal::read_back(&shared.path()).unwrap();
        let events: Vec<_> = back.iter().map(|l| l["event"].as_str().unwrap().to_string()).collect();
        assert_eq!(events, ["paused", "resumed", "decision"]);
    }

    #[test]
    fn shared_appends_from_many_threads_are_whole_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::new(Journal::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let j = shared.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        j.note(Timestamp(i), "decision", &serde_json::json!({"thread": t}));
                        j.append(Timestamp(i), "paused", &serde_json::json!({"thread": t, "i": i})).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        shared.flush();
        let back = Journal::read_back(&shared.path()).unwrap();
        assert_eq!(back.len(), 800);
        for t in 0..8 {
            let mine: Vec<i64> = back
                .iter()
                .filter(|l| l["thread"] == t && l["event"] == "paused")
                .map(|l| l["i"].as_i64().unwrap())
                .collect();
            assert_eq!(mine, (0..50).collect::<Vec<_>>(), "thread {t}'s durable appends in order");
        }
        assert_eq!(shared.dropped(), 0);
        assert!(shared.failing().is_none());
    }

    #[test]
    fn a_record_with_its_own_time_has_one_at() {
        #[derive(Serialize)]
        struct Decision {
            at: Timestamp,
            outcome: &'static str,
        }
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::new(Journal::open(dir.path()).unwrap());
        shared.note_dated("decision", &Decision { at: Timestamp(7), outcome: "monitor" });
        shared.note(Timestamp(8), "alerts", &serde_json::json!({"alerts": []}));
        shared.flush();
        let text = std::fs::read_to_string(shared.path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"event":"decision","at":7,"outcome":"monitor"}"#);
        assert_eq!(lines[1], r#"{"at":8,"event":"alerts","alerts":[]}"#);
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
    fn a_journal_moved_away_is_written_at_its_path_again() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedJournal::new(Journal::open(dir.path()).unwrap());
        shared.append(Timestamp(1), "paused", &serde_json::json!({})).unwrap();
        std::fs::rename(shared.path(), dir.path().join("moved.jsonl")).unwrap();
        shared.append(Timestamp(2), "resumed", &serde_json::json!({})).unwrap();
        let back = Journal::read_back(&shared.path()).unwrap();
        assert_eq!(back.len(), 1, "the new file at the path: {back:?}");
        assert_eq!(back[0]["event"], "resumed");
    }

    #[test]
    fn a_torn_tail_longer_than_a_page_is_cut_at_the_last_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        j.append(Timestamp(1), "started", &serde_json::json!({})).unwrap();
        let path = j.path().to_path_buf();
        drop(j);
        let whole = std::fs::metadata(&path).unwrap().len();
        let torn = format!("{{\"at\":2,\"event\":\"decision\",\"pad\":\"{}", "x".repeat(200_000));
        OpenOptions::new().append(true).open(&path).unwrap().write_all(torn.as_bytes()).unwrap();
        Journal::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        // A file that is one torn line is emptied.
        std::fs::write(&path, "x".repeat(70_000)).unwrap();
        Journal::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
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
