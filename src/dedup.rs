//! The messageId window: the platform redelivers with the same messageId, so a
//! message already confirmed to every target is dropped (and accepted) instead
//! of being forwarded again. An id is recorded only after its targets confirmed;
//! a duplicate that arrives while the first copy is in flight waits for it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What to do with a message id.
pub enum Claim {
    /// Not seen: forward it, then report with [`InFlight::finish`].
    Fresh(InFlight),
    /// Confirmed before, within the window: drop and accept.
    Duplicate,
    /// A copy is in flight: wait for its outcome, then claim again.
    Wait(watch::Receiver<bool>),
}

#[derive(Default)]
struct Window {
    /// Confirmed ids and when.
    done: HashMap<String, Instant>,
    /// Confirmed ids oldest first, for eviction by age and capacity.
    order: VecDeque<(String, Instant)>,
    /// Ids being forwarded now; the watch turns true when that attempt ends.
    in_flight: HashMap<String, watch::Receiver<bool>>,
}

/// A bounded (capacity) and expiring (ttl) set of confirmed message ids.
pub struct Dedup {
    window: Mutex<Window>,
    ttl: Duration,
    capacity: usize,
    /// Key a message without `messageId` by its AMQP message-id.
    amqp_message_id: bool,
}

impl Dedup {
    /// Remembers at most `capacity` ids, each for `ttl`.
    #[cfg(test)]
    pub fn new(ttl: Duration, capacity: usize) -> Arc<Dedup> {
        Dedup::keyed(ttl, capacity, false)
    }

    /// As [`Dedup::new`]; with `amqp_message_id`, a message without the
    /// `messageId` property is keyed by its AMQP message-id (generic brokers
    /// keep it on redelivery; the platform sends `messageId`).
    pub fn keyed(ttl: Duration, capacity: usize, amqp_message_id: bool) -> Arc<Dedup> {
        Arc::new(Dedup {
            window: Mutex::new(Window::default()),
            ttl,
            capacity: capacity.max(1),
            amqp_message_id,
        })
    }

    /// The id a message is known by here, if it has one.
    pub fn id_of<'e>(&self, envelope: &'e crate::envelope::Envelope) -> Option<&'e str> {
        envelope.message_id().or_else(|| {
            self.amqp_message_id
                .then(|| envelope.property("amqp.message-id"))
                .flatten()
                .filter(|id| !id.trim().is_empty())
        })
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides about one arriving message id.
    pub fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut w = self.lock();
        let now = Instant::now();
        if let Some(at) = w.done.get(id) {
            if now.duration_since(*at) < self.ttl {
                return Claim::Duplicate;
            }
            w.done.remove(id);
        }
        if let Some(rx) = w.in_flight.get(id) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        w.in_flight.insert(id.to_string(), rx);
        Claim::Fresh(InFlight {
            dedup: self.clone(),
            id: Some(id.to_string()),
            ended: tx,
        })
    }

    fn finish(&self, id: String, confirmed: bool) {
        let mut w = self.lock();
        w.in_flight.remove(&id);
        if confirmed {
            let now = Instant::now();
            w.done.insert(id.clone(), now);
            w.order.push_back((id, now));
            self.evict(&mut w, now);
        }
    }

    fn evict(&self, w: &mut Window, now: Instant) {
        while let Some((id, at)) = w.order.front().cloned() {
            let expired = now.duration_since(at) >= self.ttl;
            if !expired && w.done.len() <= self.capacity {
                break;
            }
            w.order.pop_front();
            // Only drop the map entry if it is this very record (not a newer one).
            if w.done.get(&id) == Some(&at) {
                w.done.remove(&id);
            }
        }
    }

    /// Confirmed ids currently remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().done.len()
    }
}

/// The first copy of an id being forwarded; dropping it counts as a failure.
pub struct InFlight {
    dedup: Arc<Dedup>,
    id: Option<String>,
    ended: watch::Sender<bool>,
}

impl InFlight {
    /// Records the outcome; `confirmed` = every target confirmed.
    pub fn finish(mut self, confirmed: bool) {
        if let Some(id) = self.id.take() {
            self.dedup.finish(id, confirmed);
        }
        self.ended.send_replace(true);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.dedup.finish(id, false);
            self.ended.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(d: &Arc<Dedup>, id: &str) -> InFlight {
        match d.claim(id) {
            Claim::Fresh(f) => f,
            _ => panic!("{id} should be fresh"),
        }
    }

    #[test]
    fn confirmed_ids_are_duplicates_failed_ones_are_not() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        fresh(&d, "a").finish(true);
        assert!(matches!(d.claim("a"), Claim::Duplicate));
        fresh(&d, "b").finish(false);
        fresh(&d, "b").finish(true);
        drop(fresh(&d, "c"));
        fresh(&d, "c");
    }

    #[tokio::test]
    async fn a_duplicate_in_flight_waits_for_the_first() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        let first = fresh(&d, "x");
        let Claim::Wait(mut rx) = d.claim("x") else {
            panic!("should wait")
        };
        let waiter = tokio::spawn(async move {
            let _ = rx.wait_for(|ended| *ended).await;
        });
        first.finish(true);
        waiter.await.unwrap();
        assert!(matches!(d.claim("x"), Claim::Duplicate));
    }

    #[test]
    fn capacity_and_ttl_bound_the_window() {
        let d = Dedup::new(Duration::from_secs(60), 3);
        for id in ["1", "2", "3", "4", "5"] {
            fresh(&d, id).finish(true);
        }
        assert_eq!(d.len(), 3);
        fresh(&d, "1");
        assert!(matches!(d.claim("5"), Claim::Duplicate));
        let short = Dedup::new(Duration::ZERO, 10);
        fresh(&short, "z").finish(true);
        fresh(&short, "z");
    }
}
