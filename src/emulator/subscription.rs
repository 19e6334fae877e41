//! One consumer group's subscription: the queue of messages to push, the
//! redelivery schedule, the rate limit, the client limit and the counters.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fe2o3_amqp::types::messaging::{
    AmqpSequence, AmqpValue, ApplicationProperties, Body, Data, Message, Outcome,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Value};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::generator::{BodySection, MessageSource, PlatformMessage};

/// Emulator-wide counters, readable in-process by tests and printed as JSON.
#[derive(Debug, Default)]
pub struct Stats {
    pub pushed: AtomicU64,
    pub accepted: AtomicU64,
    pub released: AtomicU64,
    pub rejected: AtomicU64,
    pub modified: AtomicU64,
    pub redelivered: AtomicU64,
    /// Accepts of a message that an earlier copy already had accepted (two
    /// copies outstanding at once after an ack timeout).
    pub accepted_again: AtomicU64,
    /// Pushed and not settled when the link or connection went away.
    pub unsettled_at_disconnect: AtomicU64,
    /// Pushed at least once and not accepted yet.
    pub outstanding: AtomicI64,
    pub logins_ok: AtomicU64,
    pub logins_refused: AtomicU64,
    /// Connections closed for breaking a rule (idle timeout, no receiver,
    /// client limits).
    pub connections_refused: AtomicU64,
    /// Links refused (a second receiver or any sender).
    pub links_refused: AtomicU64,
    pub receivers_attached: AtomicU64,
}

/// A copy of [`Stats`] at one moment; the emulator's final JSON line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub pushed: u64,
    pub accepted: u64,
    pub released: u64,
    pub rejected: u64,
    pub modified: u64,
    pub redelivered: u64,
    pub accepted_again: u64,
    pub outstanding: i64,
    pub unsettled_at_disconnect: u64,
    pub logins_ok: u64,
    pub logins_refused: u64,
    pub connections_refused: u64,
    pub links_refused: u64,
    pub receivers_attached: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            pushed: get(&self.pushed),
            accepted: get(&self.accepted),
            released: get(&self.released),
            rejected: get(&self.rejected),
            modified: get(&self.modified),
            redelivered: get(&self.redelivered),
            accepted_again: get(&self.accepted_again),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            unsettled_at_disconnect: get(&self.unsettled_at_disconnect),
            logins_ok: get(&self.logins_ok),
            logins_refused: get(&self.logins_refused),
            connections_refused: get(&self.connections_refused),
            links_refused: get(&self.links_refused),
            receivers_attached: get(&self.receivers_attached),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A message waiting to be pushed, with how often it was pushed before.
#[derive(Clone, Debug)]
pub struct Pending {
    pub message: Arc<PlatformMessage>,
    pub attempts: u32,
    /// Shared by every copy of the message: set by the first accept, so a
    /// copy still queued for redelivery is dropped and a second accept is
    /// counted apart.
    pub accepted: Arc<std::sync::atomic::AtomicBool>,
}

impl Pending {
    /// The AMQP message: binary body and the platform's application properties.
    pub fn to_amqp(&self) -> Message<Body<Value>> {
        let m = &self.message;
        let mut props = ApplicationProperties::builder();
        if !m.topic_absent {
            props = props.insert("topic", SimpleValue::String(m.topic.clone()));
        }
        if let Some(id) = &m.message_id {
            props = props.insert("messageId", SimpleValue::String(id.clone()));
        }
        props = props.insert("generateTime", SimpleValue::Long(m.generate_time));
        for (k, v) in &m.extra_properties {
            props = props.insert(k.as_str(), SimpleValue::String(v.clone()));
        }
        for (k, v) in &m.typed_properties {
            props = props.insert(k.as_str(), v.clone());
        }
        let text = || Value::String(String::from_utf8_lossy(&m.body).into_owned());
        let body = match m.section {
            BodySection::Data => {
                Body::Data(std::iter::once(Data(Binary::from(m.body.to_vec()))).collect())
            }
            BodySection::Value => Body::Value(AmqpValue(text())),
            BodySection::List => Body::Value(AmqpValue(Value::List(vec![text()]))),
            BodySection::Sequence => {
                Body::Sequence(std::iter::once(AmqpSequence(vec![text()])).collect())
            }
        };
        Message::builder()
            .application_properties(props.build())
            .body(body)
            .build()
    }
}

struct Queue {
    source: Box<dyn MessageSource>,
    source_done: bool,
    ready: VecDeque<Pending>,
    delayed: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed_items: HashMap<u64, Pending>,
    delayed_seq: u64,
    accepted_unique: u64,
    accepted_ids: Vec<String>,
    clients: HashMap<String, usize>,
}

/// How far the rate limit may fall behind its schedule and catch up.
const RATE_CATCH_UP: Duration = Duration::from_millis(10);

/// Limits of the platform that the subscription enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub redeliver_after: Duration,
    /// Like the platform's 30 s ack timeout: a message pushed and not settled
    /// by then is pushed again while the first copy is still outstanding.
    pub ack_timeout: Option<Duration>,
    /// Push every message a second time right after the first, before its
    /// outcome: the ack-timeout redelivery on demand, for tests whose
    /// precondition is "a second copy while the first is unsettled".
    pub push_twice: bool,
    /// Messages per second for the whole group; `None` = as fast as credit allows.
    pub rate: Option<u32>,
    pub max_clients: usize,
    pub max_connections_per_client: usize,
}

/// A consumer group's subscription.
pub struct Subscription {
    queue: Mutex<Queue>,
    wake: Notify,
    /// While set, nothing is pushed; see [`Subscription::hold_pushes`].
    hold: std::sync::atomic::AtomicBool,
    next_slot: Mutex<Instant>,
    limits: Limits,
    stats: Arc<Stats>,
    total: Option<u64>,
    done: watch::Sender<bool>,
}

impl Subscription {
    /// `total` is the number of messages the source will produce, if known.
    pub fn new(
        source: Box<dyn MessageSource>,
        total: Option<u64>,
        limits: Limits,
        stats: Arc<Stats>,
    ) -> Self {
        Subscription {
            queue: Mutex::new(Queue {
                source,
                source_done: false,
                ready: VecDeque::new(),
                delayed: BinaryHeap::new(),
                delayed_items: HashMap::new(),
                delayed_seq: 0,
                accepted_unique: 0,
                accepted_ids: Vec::new(),
                clients: HashMap::new(),
            }),
            wake: Notify::new(),
            hold: Default::default(),
            next_slot: Mutex::new(Instant::now()),
            limits,
            stats,
            total,
            done: watch::channel(false).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves consistent data (no multi-step updates).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves once every message of a bounded source was accepted.
    pub fn done(&self) -> watch::Receiver<bool> {
        self.done.subscribe()
    }

    /// Registers one connection of `client_id`; refused past the platform's limits.
    pub fn register_client(self: &Arc<Self>, client_id: &str) -> Result<ClientGuard, String> {
        let mut q = self.lock();
        let known = q.clients.len();
        let entry = q.clients.entry(client_id.to_string()).or_insert(0);
        if *entry == 0 && known >= self.limits.max_clients {
            q.clients.remove(client_id);
            return Err(format!(
                "consumer group already has {} clients (limit {})",
                known, self.limits.max_clients
            ));
        }
        if *entry >= self.limits.max_connections_per_client {
            return Err(format!(
                "client `{client_id}` already has {} connections (limit {})",
                *entry, self.limits.max_connections_per_client
            ));
        }
        *entry += 1;
        Ok(ClientGuard {
            subscription: self.clone(),
            client_id: client_id.to_string(),
        })
    }

    async fn wait_for_rate_slot(&self) {
        let Some(rate) = self.limits.rate.filter(|r| *r > 0) else {
            return;
        };
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // tokio's timer wakes at whole milliseconds, so above 1 000 msg/s
            // slots are made up in bursts; only RATE_CATCH_UP behind, so a
            // stall (no credit) is not followed by a flood.
            let earliest = now.checked_sub(RATE_CATCH_UP).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + Duration::from_secs(1) / rate;
            slot
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
    }

    /// The next message to push. Cancel-safe: nothing is taken from the queue
    /// until the moment it is returned.
    pub async fn take(&self) -> Pending {
        self.wait_for_rate_slot().await;
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wake_at = if self.hold.load(Ordering::Relaxed) {
                // Released by `hold_pushes(false)`, which wakes every taker.
                None
            } else {
                let mut q = self.lock();
                let now = Instant::now();
                while let Some(Reverse((at, id))) = q.delayed.peek().copied() {
                    if at > now {
                        break;
                    }
                    q.delayed.pop();
                    if let Some(p) = q.delayed_items.remove(&id) {
                        q.ready.push_back(p);
                    }
                }
                while let Some(p) = q.ready.pop_front() {
                    // A redelivery of a message another copy already had accepted.
                    if !p.accepted.load(Ordering::Relaxed) {
                        return p;
                    }
                }
                if !q.source_done {
                    match q.source.next_message() {
                        Some(m) => {
                            return Pending {
                                message: Arc::new(m),
                                attempts: 0,
                                accepted: Default::default(),
                            }
                        }
                        None => q.source_done = true,
                    }
                }
                q.delayed.peek().map(|Reverse((at, _))| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Holds every push, new messages and redeliveries alike (`true`), or
    /// lets them go (`false`), so a test can prepare a fault between pushes.
    /// Not a barrier: a message a link's push loop took before the hold (one
    /// per link, waiting for credit) still goes out.
    pub fn hold_pushes(&self, hold: bool) {
        self.hold.store(hold, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// A message taken but never sent goes back to the front of the queue.
    pub fn put_back(&self, pending: Pending) {
        self.lock().ready.push_front(pending);
        self.wake.notify_waiters();
    }

    /// Records that the transfer went out; with an ack timeout, schedules
    /// the copy that goes out if this one is not settled in time.
    pub fn on_pushed(&self, pending: &Pending) {
        Stats::bump(&self.stats.pushed);
        if pending.attempts == 0 {
            self.stats.outstanding.fetch_add(1, Ordering::Relaxed);
        } else {
            Stats::bump(&self.stats.redelivered);
        }
        if self.limits.push_twice && pending.attempts == 0 {
            self.redeliver_at(Instant::now(), pending);
        }
        if let Some(timeout) = self.limits.ack_timeout {
            self.redeliver_at(Instant::now() + timeout, pending);
        }
    }

    /// Queues another copy of `pending` for `at`.
    fn redeliver_at(&self, at: Instant, pending: &Pending) {
        let mut q = self.lock();
        let id = q.delayed_seq;
        q.delayed_seq += 1;
        q.delayed.push(Reverse((at, id)));
        q.delayed_items.insert(
            id,
            Pending {
                message: Arc::clone(&pending.message),
                attempts: pending.attempts + 1,
                accepted: Arc::clone(&pending.accepted),
            },
        );
        drop(q);
        self.wake.notify_waiters();
    }

    /// Message ids accepted so far, each once, in order of acceptance.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.lock().accepted_ids.clone()
    }

    /// The clients connected now, each with its number of connections.
    pub fn clients(&self) -> Vec<(String, usize)> {
        let q = self.lock();
        q.clients.iter().map(|(id, n)| (id.clone(), *n)).collect()
    }

    /// Applies the client's outcome: accepted is done; anything else, including
    /// no outcome because the link went away, is redelivered later.
    pub fn on_outcome(&self, pending: Pending, outcome: Result<Outcome, impl std::fmt::Debug>) {
        let counter = match &outcome {
            Ok(Outcome::Accepted(_)) => {
                if pending.accepted.swap(true, Ordering::Relaxed) {
                    Stats::bump(&self.stats.accepted_again);
                    return;
                }
                Stats::bump(&self.stats.accepted);
                self.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
                let mut q = self.lock();
                q.accepted_unique += 1;
                if let Some(id) = &pending.message.message_id {
                    q.accepted_ids.push(id.clone());
                }
                if Some(q.accepted_unique) == self.total {
                    self.done.send_replace(true);
                }
                return;
            }
            Ok(Outcome::Released(_)) => &self.stats.released,
            Ok(Outcome::Rejected(_)) => &self.stats.rejected,
            Ok(Outcome::Modified(_)) => &self.stats.modified,
            Err(_) => &self.stats.unsettled_at_disconnect,
        };
        Stats::bump(counter);
        if pending.accepted.load(Ordering::Relaxed) || self.limits.ack_timeout.is_some() {
            // Another copy was accepted meanwhile, or the ack-timeout copy
            // scheduled at the push redelivers it (one more copy per push,
            // never two).
            return;
        }
        tracing::debug!(message_id = ?pending.message.message_id, ?outcome, "not accepted; will redeliver");
        self.redeliver_at(Instant::now() + self.limits.redeliver_after, &pending);
    }
}

/// Holds a client's connection slot in its group; frees it when dropped.
pub struct ClientGuard {
    subscription: Arc<Subscription>,
    client_id: String,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut q = self.subscription.lock();
        if let Some(n) = q.clients.get_mut(&self.client_id) {
            *n -= 1;
            if *n == 0 {
                q.clients.remove(&self.client_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::Generator;

    #[tokio::test]
    async fn a_rate_above_one_per_millisecond_is_kept() {
        // Waiting for every 100 µs slot on its own gave about 900 msg/s,
        // whatever the rate: tokio's timer wakes at whole milliseconds.
        let limits = Limits {
            redeliver_after: Duration::from_secs(60),
            ack_timeout: None,
            push_twice: false,
            rate: Some(10_000),
            max_clients: 64,
            max_connections_per_client: 128,
        };
        let stats = Arc::new(Stats::default());
        let subscription = Subscription::new(Box::new(Generator::new(0)), None, limits, stats);
        let started = std::time::Instant::now();
        for _ in 0..1_000 {
            subscription.take().await;
        }
        let elapsed = started.elapsed();
        // The 1 000th slot is 99.9 ms after the first: never earlier.
        assert!(elapsed >= Duration::from_millis(99), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }
}
