//! The processes of `exec` steps, and that none outlives its step. Each step runs in its own
//! process group and carries a marker in its environment (`ROLLWATCH_STEP`, inherited by what it
//! starts). At the end of every step — success, failure or timeout — [`Tracked::end`] ends what
//! is left: the group, every process marked as the step's, and their descendants. A process that
//! leaves the group with `setsid` escapes a group kill; on Linux `rollwatch run` makes itself the
//! *child subreaper* ([`contain`]), so such a process, orphaned, becomes rollwatch's child: it is
//! found (by its marker, or, with the marker cleared, as an orphan born while steps ran), killed,
//! reaped, and named in the step's detail and the log.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that marks a step's processes: `ROLLWATCH_STEP=<rollwatch pid>-<n>`.
pub const STEP_MARKER: &str = "ROLLWATCH_STEP";

/// How many sweeps [`Tracked::end`] makes before it gives up on a process that does not die
/// (one in uninterruptible sleep): 50 × 10 ms.
const SWEEPS: usize = 50;
const SWEEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether [`contain`] made this process the reaper of its steps' orphans.
static CONTAINED: OnceLock<bool> = OnceLock::new();

/// The step programs running now (tokio owns and reaps them: never reaped here).
static RUNNING: Mutex<Running> = Mutex::new(Running { pids: BTreeSet::new(), since: None });

static NEXT_STEP: AtomicU64 = AtomicU64::new(1);

struct Running {
    pids: BTreeSet<u32>,
    /// When (clock ticks after boot) the first program ran since `pids` was last empty: an
    /// orphan born since then, with no marker, came from one of those steps.
    since: Option<u64>,
}

/// Makes this process the child subreaper (Linux), once: orphans of steps' processes become its
/// children rather than init's, so a process that left its step's group is still found. Only
/// `rollwatch run` calls it — a process that starts other children itself (a test harness) must
/// not adopt and reap them. Returns whether containment is on.
pub fn contain() -> bool {
    *CONTAINED.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            match rustix::process::set_child_subreaper(rustix::process::Pid::from_raw(1)) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot become the child subreaper: a step's process that calls setsid and clears its environment may outlive the step");
                    false
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            tracing::warn!("no child subreaper on this platform: a step's process that calls setsid may outlive the step");
            false
        }
    })
}

fn contained() -> bool {
    CONTAINED.get().copied().unwrap_or(false)
}

fn running() -> std::sync::MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// A step's identity: its group (the program's pid) and its marker.
#[derive(Debug)]
pub struct Tracked {
    pgid: u32,
    marker: String,
    ended: bool,
}

/// A process a step left running, ended by [`Tracked::end`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub pid: u32,
    pub name: String,
}

/// Starts `command` as a step: in its own process group, marked, and registered as running.
pub fn spawn(command: &mut tokio::process::Command) -> std::io::Result<(tokio::process::Child, Tracked)> {
    let marker = format!("{}-{}", std::process::id(), NEXT_STEP.fetch_add(1, Ordering::Relaxed));
    command.env(STEP_MARKER, &marker).process_group(0).kill_on_drop(true);
    // Spawned and registered under the lock: a sweep never mistakes it for an orphan to reap.
    let mut running = running();
    let child = command.spawn()?;
    let Some(pid) = child.id() else {
        return Err(std::io::Error::other("the program ended before it could be tracked"));
    };
    if running.pids.is_empty() {
        running.since = read_stat(pid).map(|p| p.started);
    }
    running.pids.insert(pid);
    Ok((child, Tracked { pgid: pid, marker, ended: false }))
}

impl Tracked {
    /// Ends every process the step left: its group, its marked processes, their descendants
    /// (and, under [`contain`], with no other step running, orphans born while steps ran). Call
    /// it once the program itself has been waited for. Returns what was still running.
    pub async fn end(mut self) -> Vec<Leftover> {
        self.ended = true;
        let mut found = Vec::new();
        for _ in 0..SWEEPS {
            if self.sweep(&mut found) == 0 {
                break;
            }
            tokio::time::sleep(SWEEP_PAUSE).await;
        }
        if !found.is_empty() {
            let names: Vec<String> = found.iter().map(|l| format!("{} (pid {})", l.name, l.pid)).collect();
            tracing::warn!(step = %self.marker, left = %names.join(", "), "ended processes the step left running");
        }
        found
    }

    /// One pass: finds the step's processes, kills the live ones (adding new ones to `found`),
    /// reaps those that became this process's children. Returns how many were alive.
    fn sweep(&self, found: &mut Vec<Leftover>) -> usize {
        let procs = scan();
        let me = std::process::id();
        let mut running = running();
        running.pids.remove(&self.pgid);
        let orphans_since = if contained() && running.pids.is_empty() { running.since } else { None };
        let mine = attribute(&procs, self.pgid, me, orphans_since, &running.pids, |pid| has_marker(pid, &self.marker));
        let mut alive = 0;
        for p in procs.iter().filter(|p| mine.contains(&p.pid)) {
            if p.zombie {
                if p.ppid == me {
                    reap(p.pid);
                }
                continue;
            }
            alive += 1;
            kill(p.pid);
            if !found.iter().any(|l| l.pid == p.pid) {
                found.push(Leftover { pid: p.pid, name: p.name.clone() });
            }
        }
        kill_group(self.pgid);
        if contained() {
            // Orphans that ended by themselves: reaped, or they stay zombies.
            for p in procs.iter().filter(|p| p.zombie && p.ppid == me && !running.pids.contains(&p.pid)) {
                reap(p.pid);
            }
        }
        alive
    }
}

impl Drop for Tracked {
    /// A step cut off (its task dropped at shutdown) still ends its processes: one pass.
    fn drop(&mut self) {
        if !self.ended {
            let mut found = Vec::new();
            self.sweep(&mut found);
        }
    }
}

/// What the step detail says about what it left: `""`, or `; ended 2 processes it left running:
/// sleep (pid 12), sh (pid 13)`.
pub fn describe(left: &[Leftover]) -> String {
    if left.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = left.iter().take(5).map(|l| format!("{} (pid {})", l.name, l.pid)).collect();
    if left.len() > 5 {
        names.push(format!("and {} more", left.len() - 5));
    }
    let n = left.len();
    format!("; ended {n} process{} it left running: {}", if n == 1 { "" } else { "es" }, names.join(", "))
}

/// One process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub name: String,
    pub zombie: bool,
    pub ppid: u32,
    pub pgrp: u32,
    /// Clock ticks after boot.
    pub started: u64,
}

/// Parses one `/proc/PID/stat` line; `None` if it is not one.
pub fn parse_stat(line: &str) -> Option<Proc> {
    let (head, rest) = line.rsplit_once(')')?;
    let (pid, name) = head.split_once(" (")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) session(6) … starttime(22).
    Some(Proc {
        pid: pid.trim().parse().ok()?,
        name: name.to_string(),
        zombie: matches!(*fields.first()?, "Z" | "X"),
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        started: fields.get(19)?.parse().ok()?,
    })
}

/// Which of `procs` belong to the step whose group is `pgid`: its group, the processes `marked`
/// as its own, their descendants, and — when `orphans_since` is given — this process's children
/// it did not start as steps (`registered`) born since then, and theirs. Pure, for tests.
pub fn attribute(
    procs: &[Proc],
    pgid: u32,
    me: u32,
    orphans_since: Option<u64>,
    registered: &BTreeSet<u32>,
    marked: impl Fn(u32) -> bool,
) -> BTreeSet<u32> {
    let eligible = |p: &&Proc| p.pid > 1 && p.pid != me && !registered.contains(&p.pid);
    let mut mine: BTreeSet<u32> = procs
        .iter()
        .filter(eligible)
        .filter(|p| {
            p.pgrp == pgid
                || orphans_since.is_some_and(|since| p.ppid == me && p.started >= since)
                || (!p.zombie && marked(p.pid))
        })
        .map(|p| p.pid)
        .collect();
    // Descendants, to a fixed point (a process tree is shallow: a few rounds).
    loop {
        let more: Vec<u32> = procs
            .iter()
            .filter(eligible)
            .filter(|p| mine.contains(&p.ppid) && !mine.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        if more.is_empty() {
            return mine;
        }
        mine.extend(more);
    }
}

#[cfg(target_os = "linux")]
fn read_stat(pid: u32) -> Option<Proc> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(not(target_os = "linux"))]
fn read_stat(_pid: u32) -> Option<Proc> {
    None
}

/// Every process of the machine (Linux `/proc`; nothing elsewhere: the group kill alone).
fn scan() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(read_stat).collect()
}

/// Whether process `pid` was started with `ROLLWATCH_STEP=marker` in its environment.
fn has_marker(pid: u32, marker: &str) -> bool {
    let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { return false };
    let wanted = format!("{STEP_MARKER}={marker}");
    environ.split(|b| *b == 0).any(|entry| entry == wanted.as_bytes())
}

fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    // Never 0 (our own group), 1 (init; as a group: everyone) or a negative number.
    if pid <= 1 { None } else { rustix::process::Pid::from_raw(i32::try_from(pid).ok()?) }
}

fn kill(pid: u32) {
    if let Some(p) = pid_of(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

fn kill_group(pgid: u32) {
    if let Some(p) = pid_of(pgid) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

fn reap(pid: u32) {
    if let Some(p) = pid_of(pid) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: u32, ppid: u32, pgrp: u32, started: u64) -> Proc {
        Proc { pid, name: format!("p{pid}"), zombie: false, ppid, pgrp, started }
    }

    #[test]
    fn a_stat_line_is_parsed_even_with_spaces_and_parens_in_the_name() {
        let line = "4242 (my (odd) prog) S 100 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10\n";
        let p = parse_stat(line).unwrap();
        assert_eq!(
            p,
            Proc { pid: 4242, name: "my (odd) prog".into(), zombie: false, ppid: 100, pgrp: 4242, started: 98765 }
        );
        let z = parse_stat("7 (sh) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0").unwrap();
        assert!(z.zombie);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn a_step_owns_its_group_its_marked_processes_and_their_descendants() {
        let me = 10;
        let procs = vec![
            proc(1, 0, 1, 0),
            proc(me, 1, me, 0),
            proc(50, me, 50, 100), // the step's program (registered: never the sweep's)
            proc(51, 50, 50, 101), // in the group
            proc(52, me, 52, 102), // setsid, orphaned to us, marked
            proc(53, 52, 52, 103), // its child
            proc(60, me, 60, 104), // another step's program
            proc(61, 60, 60, 105), // in that other group
            proc(70, me, 70, 106), // setsid, environment cleared, orphaned to us
            proc(80, 1, 80, 50),   // unrelated
        ];
        let registered = BTreeSet::from([50, 60]);
        let marked = |pid| pid == 52;
        let mine = attribute(&procs, 50, me, None, &registered, marked);
        assert_eq!(mine, BTreeSet::from([51, 52, 53]));
        // No other step running: orphans born since the steps began are ours too.
        let alone = attribute(&procs, 50, me, Some(100), &BTreeSet::new(), marked);
        assert_eq!(alone, BTreeSet::from([50, 51, 52, 53, 60, 61, 70]));
        // …but not one older than the first step (adopted from elsewhere).
        let later = attribute(&procs, 50, me, Some(105), &BTreeSet::new(), |_| false);
        assert_eq!(later, BTreeSet::from([50, 51, 70]));
    }

    #[test]
    fn leftovers_are_described_in_one_clause() {
        assert_eq!(describe(&[]), "");
        let one = [Leftover { pid: 7, name: "sleep".into() }];
        assert_eq!(describe(&one), "; ended 1 process it left running: sleep (pid 7)");
        let many: Vec<Leftover> = (1..=7).map(|pid| Leftover { pid, name: "sh".into() }).collect();
        assert_eq!(
            describe(&many),
            "; ended 7 processes it left running: sh (pid 1), sh (pid 2), sh (pid 3), sh (pid 4), sh (pid 5), and 2 more"
        );
    }
}
