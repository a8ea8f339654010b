//! The own server's connection slots: at most `max_connections` open, and a newcomer is never
//! locked out by connections that only hold a slot (which needs no token). A connection is
//! *busy* while a request is in flight (its header complete, its response not yet sent) or while
//! bytes wait unread on its socket (a request arriving), and *idle* otherwise — before its first
//! request and between keep-alive requests. At the cap, the connection idle the longest makes
//! room for the next one, once it has been idle for a short grace; until then nothing more is
//! accepted and newcomers wait in the kernel's listen backlog, in order — where a real client's
//! request arrives, so that it is read as soon as it is accepted. A flood of half-open
//! connections therefore cycles through the slots no faster than `max_connections` per grace,
//! and each client gets its turn.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use crate::time::{Span, Stopwatch};

/// How long a connection stays before it may be closed for a newcomer: time for a client that
/// connected to send its request (it is then busy, and never closed for the cap).
pub const GRACE: Span = Span(250);

/// Bound on what is beyond the cap: evicted connections still ending (their descriptors not yet
/// closed: nothing more is accepted until they are), and newcomers let in over the cap by a race
/// (an idle connection chosen for eviction sent a request just then). At most
/// `max_connections + 2 × RESERVE` connections, then.
pub const RESERVE: usize = 16;

/// The open connections.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    grace: Span,
    inner: Mutex<Inner>,
    /// Told when room may have appeared: a connection ended or finished a request.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    /// An order of events: which connection became idle first.
    seq: u64,
    next_id: u64,
    open: BTreeMap<u64, Slot>,
    /// Evicted, their task not yet ended.
    closing: usize,
}

#[derive(Debug)]
struct Slot {
    /// Requests in flight.
    busy: usize,
    /// Since when it has been idle (its start, or the end of its last request): in order, and
    /// for how long.
    idle_seq: u64,
    idle: Stopwatch,
    close: Option<oneshot::Sender<()>>,
    /// The connection's socket (a second descriptor), to see whether bytes wait unread in it.
    probe: Option<std::net::TcpStream>,
}

impl Slot {
    /// Whether bytes wait unread on the socket (a request arriving, before the server read it).
    fn has_unread(&self) -> bool {
        let mut byte = [0u8; 1];
        self.probe.as_ref().is_some_and(|p| p.peek(&mut byte).is_ok_and(|n| n > 0))
    }
}

/// Whether the server may accept a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    Now,
    /// When the connection idle the longest has been idle for the grace (or sooner, if told).
    In(std::time::Duration),
    /// When a connection ends or finishes a request.
    Later,
}

/// How a newcomer was let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Under the cap.
    Free,
    /// The connection idle the longest was closed for it.
    Evicted,
    /// Over the cap, within [`RESERVE`]: the idle connection chosen had just become busy.
    Over,
}

/// A connection's slot, given back when it is dropped.
#[derive(Debug)]
pub struct Ticket {
    slots: Arc<Slots>,
    id: u64,
}

/// One request in flight on a connection, from its complete header until its response was
/// handed over whole (held by the response body).
#[derive(Debug)]
pub struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    pub fn new(max_connections: usize, grace: Span) -> Arc<Slots> {
        Arc::new(Slots {
            max: max_connections.max(1),
            grace,
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when room may have appeared. Create it before asking [`Slots::room`], so that
    /// no change in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Whether a connection may be accepted now, or when to ask again.
    pub fn room(&self) -> Room {
        let inner = self.lock();
        if inner.closing >= RESERVE || inner.open.len() >= self.max + RESERVE {
            return Room::Later;
        }
        if inner.open.len() < self.max {
            return Room::Now;
        }
        match inner.oldest_idle().map(|(_, idle)| idle) {
            Some(idle) if idle >= self.grace => Room::Now,
            Some(idle) => Room::In(Span(self.grace.0 - idle.0).as_std()),
            None => Room::Later,
        }
    }

    /// Lets a newcomer in, closing the connection idle the longest (for the grace at least) when
    /// the cap is reached; `None` when it must be refused (over the cap by [`RESERVE`] already).
    /// The receiver fires when this connection is evicted in turn.
    pub fn admit(
        self: &Arc<Slots>,
        probe: Option<std::net::TcpStream>,
    ) -> Option<(Ticket, oneshot::Receiver<()>, Admission)> {
        // Never a blocking peek (the descriptor shares the server's O_NONBLOCK; made sure here).
        let probe = probe.filter(|p| p.set_nonblocking(true).is_ok());
        let mut inner = self.lock();
        let victim = inner.oldest_idle().filter(|(_, idle)| *idle >= self.grace).map(|(id, _)| id);
        let admission = if inner.open.len() < self.max {
            Admission::Free
        } else if let Some(victim) = victim {
            if let Some(mut slot) = inner.open.remove(&victim) {
                inner.closing += 1;
                // Closed now (its client sees it at once), its task told to end.
                if let Some(probe) = slot.probe.take() {
                    let _ = probe.shutdown(std::net::Shutdown::Both);
                }
                if let Some(close) = slot.close.take() {
                    let _ = close.send(());
                }
            }
            Admission::Evicted
        } else if inner.open.len() < self.max + RESERVE {
            Admission::Over
        } else {
            return None;
        };
        let (close, closed) = oneshot::channel();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.seq += 1;
        let idle_seq = inner.seq;
        inner.open.insert(id, Slot { busy: 0, idle_seq, idle: Stopwatch::start(), close: Some(close), probe });
        Some((Ticket { slots: self.clone(), id }, closed, admission))
    }

    /// Connections open (evicted ones left out).
    pub fn open(&self) -> usize {
        self.lock().open.len()
    }
}

impl Inner {
    /// The connection idle the longest with nothing waiting to be read, and for how long.
    fn oldest_idle(&self) -> Option<(u64, Span)> {
        let mut idle: Vec<(u64, &Slot)> =
            self.open.iter().filter(|(_, s)| s.busy == 0).map(|(id, s)| (*id, s)).collect();
        idle.sort_by_key(|(_, s)| s.idle_seq);
        idle.into_iter().find(|(_, s)| !s.has_unread()).map(|(id, s)| (id, s.idle.elapsed()))
    }
}

impl Ticket {
    /// A request's header is complete: busy until the returned guard is dropped.
    pub fn busy(&self) -> Busy {
        if let Some(slot) = self.slots.lock().open.get_mut(&self.id) {
            slot.busy += 1;
        }
        Busy { slots: self.slots.clone(), id: self.id }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        if inner.open.remove(&self.id).is_none() {
            inner.closing = inner.closing.saturating_sub(1);
        }
        drop(inner);
        self.slots.changed.notify_waiters();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        inner.seq += 1;
        let seq = inner.seq;
        if let Some(slot) = inner.open.get_mut(&self.id) {
            slot.busy = slot.busy.saturating_sub(1);
            if slot.busy == 0 {
                slot.idle_seq = seq;
                slot.idle = Stopwatch::start();
            }
        }
        drop(inner);
        self.slots.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_connection_idle_longest_makes_room() {
        let slots = Slots::new(3, Span::ZERO);
        let (a, mut a_closed, _) = slots.admit(None).unwrap();
        let (b, mut b_closed, _) = slots.admit(None).unwrap();
        let (c, mut c_closed, admission) = slots.admit(None).unwrap();
        assert_eq!(admission, Admission::Free);
        // a has a request in flight; b went idle after c (its request ended later).
        let a_busy = a.busy();
        drop(b.busy());
        assert_eq!(slots.room(), Room::Now);
        let (d, mut d_closed, admission) = slots.admit(None).unwrap();
        assert_eq!(admission, Admission::Evicted);
        assert!(c_closed.try_recv().is_ok(), "c, idle since it connected, is closed");
        assert!(a_closed.try_recv().is_err() && b_closed.try_recv().is_err());
        assert_eq!(slots.open(), 3);
        drop(c);
        // Next: b (idle since its request), then d; a never while busy.
        let (_e, _, _) = slots.admit(None).unwrap();
        assert!(b_closed.try_recv().is_ok());
        let (_f, _, _) = slots.admit(None).unwrap();
        assert!(d_closed.try_recv().is_ok());
        assert!(a_closed.try_recv().is_err(), "a request in flight is never cut");
        drop(a_busy);
        drop((a, b, d));
    }

    #[test]
    fn a_newcomer_waits_for_the_grace_and_for_busy_connections() {
        let slots = Slots::new(2, Span::from_secs(3600));
        let (a, _, _) = slots.admit(None).unwrap();
        let (_b, _, _) = slots.admit(None).unwrap();
        // Both idle but within their grace: not yet.
        assert!(matches!(slots.room(), Room::In(d) if d > std::time::Duration::from_secs(3500)));
        let busy = [a.busy(), _b.busy()];
        assert_eq!(slots.room(), Room::Later, "every connection busy: when one is done");
        // A race (a chosen connection became busy): over the cap, within the reserve.
        for _ in 0..RESERVE {
            assert_eq!(slots.admit(None).unwrap().2, Admission::Over);
        }
        drop(busy);
    }

    #[test]
    fn evicted_connections_hold_off_accepting_until_they_end() {
        let slots = Slots::new(1, Span::ZERO);
        let mut tickets = Vec::new();
        for _ in 0..RESERVE {
            tickets.push(slots.admit(None).unwrap());
            assert_eq!(slots.room(), Room::Now);
        }
        tickets.push(slots.admit(None).unwrap());
        // One open, RESERVE evicted but not yet ended: accept nothing until they have.
        assert_eq!(slots.open(), 1);
        assert_eq!(slots.room(), Room::Later);
        tickets.remove(0);
        assert_eq!(slots.room(), Room::Now, "an evicted connection ended");
    }

    /// A request that arrived but was not read yet is not evicted: the silent connection is.
    #[test]
    fn a_connection_with_a_request_waiting_unread_is_not_evicted() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let slots = Slots::new(2, Span::ZERO);
        let mut sending = std::net::TcpStream::connect(addr).unwrap();
        let (first, _) = listener.accept().unwrap();
        let watch_first = first.try_clone().unwrap();
        let _silent = std::net::TcpStream::connect(addr).unwrap();
        let (second, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut sending, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Arrived: looked at (blocking) without reading it.
        let mut buf = [0u8; 4];
        assert_eq!(watch_first.peek(&mut buf).unwrap(), 4);
        let (_a, mut a_closed, _) = slots.admit(Some(first)).unwrap();
        let (_b, mut b_closed, _) = slots.admit(Some(second)).unwrap();
        let (_c, _, admission) = slots.admit(None).unwrap();
        assert_eq!(admission, Admission::Evicted);
        assert!(a_closed.try_recv().is_err(), "the oldest, but its request waits: kept");
        assert!(b_closed.try_recv().is_ok(), "the silent one made room");
    }
}
