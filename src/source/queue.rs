//! The queue from the pollers to the evaluator, bounded by samples rather than messages: a
//! poll waits for room for its samples, so however many series the targets send and however
//! far the evaluator falls behind, at most [`QUEUE_SAMPLES`] samples wait in memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Observation;

/// Samples that may wait between the pollers and the evaluator (four polls at the default
/// `sample_limit`). A poll larger than this waits until the queue is empty.
pub const QUEUE_SAMPLES: usize = 4 * super::DEFAULT_SAMPLE_LIMIT;

/// One observation and its room in the queue, given back when it is dropped (applied).
#[derive(Debug)]
pub struct Queued {
    pub obs: Observation,
    _room: OwnedSemaphorePermit,
}

/// The pollers' end; cloned into each poller.
#[derive(Debug, Clone)]
pub struct Sender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// The evaluator's end.
#[derive(Debug)]
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
}

/// The evaluator's end went away.
#[derive(Debug, thiserror::Error)]
#[error("the observation queue is closed")]
pub struct Closed;

/// A queue holding at most `samples` samples (at least one; an observation with none takes one).
pub fn queue(samples: usize) -> (Sender, Receiver) {
    let capacity = samples.clamp(1, Semaphore::MAX_PERMITS);
    let room = Arc::new(Semaphore::new(capacity));
    let (tx, rx) = mpsc::unbounded_channel();
    (Sender { tx, room: room.clone(), capacity }, Receiver { rx, room, capacity })
}

impl Sender {
    /// Waits for room for `obs`'s samples, then queues it.
    pub async fn send(&self, obs: Observation) -> Result<(), Closed> {
        let wanted = obs.samples.len().clamp(1, self.capacity);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        let room = self.room.clone().acquire_many_owned(wanted).await.map_err(|_| Closed)?;
        self.tx.send(Queued { obs, _room: room }).map_err(|_| Closed)
    }
}

impl Receiver {
    /// The next observation; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Queued> {
        self.rx.recv().await
    }

    /// Samples waiting now.
    pub fn waiting(&self) -> usize {
        self.capacity - self.room.available_permits()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Pollers waiting for room stop waiting.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::SeriesKey;
    use crate::time::Timestamp;
    use std::time::Duration;

    fn obs(samples: usize) -> Observation {
        Observation {
            target: "t".into(),
            critical: false,
            at: Timestamp(0),
            up: true,
            duration_secs: 0.0,
            samples: (0..samples).map(|i| (SeriesKey::new(format!("m{i}"), vec![]), 1.0)).collect(),
            strings: vec![],
            bad_lines: 0,
            dropped: 0,
            error: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_waits_for_room_for_its_samples() {
        let (tx, mut rx) = queue(10);
        tx.send(obs(6)).await.unwrap();
        assert_eq!(rx.waiting(), 6);
        let blocked = tokio::time::timeout(Duration::from_secs(1), tx.send(obs(6))).await;
        assert!(blocked.is_err(), "6 + 6 samples exceed the queue's 10");
        tx.send(obs(4)).await.unwrap();
        let first = rx.recv().await.unwrap();
        assert_eq!(first.obs.samples.len(), 6);
        drop(first);
        tx.send(obs(6)).await.unwrap();
        assert_eq!(rx.waiting(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_larger_than_the_queue_waits_for_it_to_empty() {
        let (tx, mut rx) = queue(10);
        tx.send(obs(0)).await.unwrap();
        assert_eq!(rx.waiting(), 1, "an empty observation still takes room");
        let sending = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(obs(50)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!sending.is_finished());
        drop(rx.recv().await);
        sending.await.unwrap().unwrap();
        assert_eq!(rx.recv().await.unwrap().obs.samples.len(), 50);
        drop(rx);
        assert!(tx.send(obs(1)).await.is_err(), "closed once the evaluator is gone");
    }
}
