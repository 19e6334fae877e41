//! MQTT sink (rumqttc; MQTT 3.1.1 in `v4`, MQTT 5 in `v5`). A publish resolves
//! on its PUBACK (QoS 1), PUBCOMP (QoS 2) or, for QoS 0, once written.
//!
//! A QoS 2 publish past a successful PUBREC waits for its PUBCOMP in a table
//! of its own: rumqttc frees the packet id at PUBREC and may give it to the
//! next publish while that PUBCOMP is still due, so the two never share an
//! entry (and a waiter is never overwritten). A connection where a waiter
//! stays unanswered past `CONFIRM_TIMEOUT` is treated as failed.
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were
//! requested, so requests and their waiters go into one FIFO under one lock;
//! the event loop pairs each outgoing packet id with the next waiter and each
//! acknowledgement with its packet id. On a disconnect every waiter fails
//! (Transient) and rumqttc's replay queue and buffered events are cleared under
//! the same lock, so nothing is both failed back and silently resent, and no
//! stale event is paired with a later waiter.

pub mod auth;
pub mod config;
pub mod topic_names;
mod v4;
mod v5;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{Destination, Outgoing, Sink, SinkBuildError, SinkError, SinkKind};
use crate::backoff::Backoff;
use crate::config::{MqttSinkConfig, MqttVersion, Secret};

/// A publish the broker has not confirmed by then is failed back for a retry,
/// and its connection is treated as stuck (reconnected). Waiting this long for
/// room in the in-flight window is a transient failure too.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the driver looks for a waiter past `CONFIRM_TIMEOUT`.
const STUCK_CHECK: Duration = Duration::from_secs(1);
/// The longest string MQTT can carry (a u16 length prefix).
const MAX_STRING: usize = 65_535;
/// The in-flight window of an MQTT 3.1.1 sink unless configured.
const DEFAULT_WINDOW_V311: usize = 100;
/// The most an MQTT 5 sink takes from the broker's receive maximum unless configured.
const DEFAULT_WINDOW_V5: usize = 1_000;
/// The MQTT protocol's packet size limit.
const MAX_PACKET: usize = 268_435_455;

/// What the two protocol adapters report from their event loops.
pub(crate) enum LoopEvent {
    /// CONNACK accepted; MQTT 5 brokers may announce their limits.
    Connected {
        receive_max: Option<u16>,
        max_packet_size: Option<u32>,
    },
    /// A publish was written with this packet id (0 for QoS 0).
    Written(u16),
    /// The broker's final answer to a written publish: PUBACK, or a PUBREC
    /// with an error reason.
    Answered(u16, Result<(), SinkError>),
    /// A successful PUBREC: the QoS 2 exchange goes on to PUBCOMP, and rumqttc
    /// may reuse the packet id from now on.
    Received(u16),
    /// PUBCOMP, the confirmation of a QoS 2 publish.
    Completed(u16, Result<(), SinkError>),
    /// The client disconnected on purpose.
    Closed,
    /// The connection failed or was refused; the driver calls `reset` next.
    Failed(String),
    Other,
}

/// One protocol's event loop, as the shared driver sees it.
pub(crate) trait EventSource: Send + 'static {
    /// The next event.
    fn next(&mut self) -> impl Future<Output = LoopEvent> + Send;
    /// After a failure: drop the connection, rumqttc's replay queue (and the
    /// requests still in its channel) and its buffered events. Called with the
    /// tracker locked, so no publish can slip in between this and failing the
    /// waiters. The next `next` connects afresh.
    fn reset(&mut self);
}

/// One protocol's client handle.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        message: &Outgoing,
    ) -> Result<(), String> {
        let payload: Bytes = message.envelope.body.clone();
        match self {
            Client::V4(c) => c
                .publish_bytes(topic, v4::qos(qos), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .publish_bytes_with_properties(
                    topic,
                    v5::qos(qos),
                    retain,
                    payload,
                    v5::properties(message),
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }

    fn try_disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

struct Waiter {
    done: oneshot::Sender<Result<(), SinkError>>,
    qos: u8,
    /// When the publish was handed to rumqttc (for the stuck check).
    since: Instant,
    /// Held until the broker answered (or the connection failed), so the
    /// window also bounds what sits in rumqttc's request channel.
    _slot: OwnedSemaphorePermit,
}

impl Waiter {
    fn resolve(self, result: Result<(), SinkError>) {
        let _ = self.done.send(result);
    }
}

#[derive(Default)]
struct Tracker {
    connected: bool,
    /// Requested, not yet written (no packet id yet), in request order.
    queued: VecDeque<Waiter>,
    /// Written, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    by_pkid: HashMap<u16, Waiter>,
    /// QoS 2 past a successful PUBREC, waiting for PUBCOMP. Apart from
    /// `by_pkid` because rumqttc hands the id to a new publish after PUBREC.
    released: HashMap<u16, Waiter>,
}

impl Tracker {
    fn fail_all(&mut self, reason: &str) -> usize {
        let n = self.queued.len() + self.by_pkid.len() + self.released.len();
        for w in self
            .queued
            .drain(..)
            .chain(self.by_pkid.drain().map(|(_, w)| w))
            .chain(self.released.drain().map(|(_, w)| w))
        {
            w.resolve(Err(SinkError::Transient(reason.to_string())));
        }
        n
    }

    /// Why the connection counts as stuck: a waiter unanswered (or unwritten)
    /// for `CONFIRM_TIMEOUT` while connected.
    fn stuck(&self, now: Instant) -> Option<String> {
        if !self.connected {
            return None;
        }
        let oldest = self
            .queued
            .front()
            .into_iter()
            .chain(self.by_pkid.values())
            .chain(self.released.values())
            .map(|w| w.since)
            .min()?;
        (now.saturating_duration_since(oldest) >= CONFIRM_TIMEOUT).then(|| {
            format!(
                "a publish stayed unconfirmed for {}s on a live connection",
                CONFIRM_TIMEOUT.as_secs()
            )
        })
    }

    /// Pairs the next requested publish with the packet id it was written with.
    /// Err: the id still belongs to an unanswered publish (never overwritten;
    /// the connection is failed instead, since its answers are now ambiguous).
    fn written(&mut self, pkid: u16) -> Result<(), String> {
        let Some(w) = self.queued.pop_front() else {
            return Ok(());
        };
        if w.qos == 0 {
            w.resolve(Ok(()));
            return Ok(());
        }
        match self.by_pkid.entry(pkid) {
            Entry::Vacant(slot) => {
                slot.insert(w);
            }
            Entry::Occupied(_) => {
                w.resolve(Err(SinkError::Transient(format!(
                    "packet id {pkid} reused while unanswered"
                ))));
                return Err(format!("packet id {pkid} reused while still unanswered"));
            }
        }
        Ok(())
    }

    /// A successful PUBREC: the publish now waits for its PUBCOMP.
    fn received(&mut self, pkid: u16) -> Result<(), String> {
        let Some(w) = self.by_pkid.remove(&pkid) else {
            return Ok(());
        };
        if self.released.contains_key(&pkid) {
            w.resolve(Err(SinkError::Transient(format!(
                "PUBREC for packet id {pkid} before the PUBCOMP of its previous use"
            ))));
            return Err(format!(
                "PUBREC for packet id {pkid} arrived before the PUBCOMP of its previous use"
            ));
        }
        self.released.insert(pkid, w);
        Ok(())
    }
}

/// Limits shared between `send` and the driver (MQTT 5 brokers announce theirs).
struct Limits {
    window: Arc<Semaphore>,
    window_size: AtomicUsize,
    max_packet_size: AtomicUsize,
}

/// A connection to one MQTT broker.
pub struct MqttSink {
    name: String,
    client: Client,
    tracker: Arc<Mutex<Tracker>>,
    limits: Arc<Limits>,
    ready: watch::Receiver<bool>,
    /// The driver; taken by `close` to wait for it.
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Username and password for the broker: Alibaba MQ for MQTT credentials when
/// `auth` is set, else the plain ones.
fn credentials(
    name: &str,
    config: &MqttSinkConfig,
) -> Result<Option<(String, Secret)>, SinkBuildError> {
    let invalid = |message: String| SinkBuildError::Invalid {
        name: name.to_string(),
        message,
    };
    match &config.auth {
        Some(auth) => {
            if config.username.is_some() || config.password.is_some() {
                return Err(invalid(
                    "give either `auth` or `username`/`password`, not both".into(),
                ));
            }
            auth::check_client_id(&config.client_id).map_err(invalid)?;
            Ok(Some(auth::credentials(auth, &config.client_id)))
        }
        None => Ok(config
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|user| {
                (
                    user.to_string(),
                    config.password.clone().unwrap_or_default(),
                )
            })),
    }
}

impl MqttSink {
    /// Starts connecting in the background; `ready()` resolves on the first CONNACK.
    pub fn start(name: &str, config: &MqttSinkConfig) -> Result<MqttSink, SinkBuildError> {
        let login = credentials(name, config)?;
        let tls = if config.url.is_tls() {
            let cert = config
                .tls
                .cert_file
                .as_deref()
                .zip(config.tls.key_file.as_deref());
            Some(
                crate::tls::client_config(config.tls.ca_file.as_deref(), cert).map_err(
                    |source| SinkBuildError::Tls {
                        name: name.to_string(),
                        source,
                    },
                )?,
            )
        } else {
            None
        };
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        // MQTT 5 without a configured window takes the broker's receive
        // maximum (announced in CONNACK), up to DEFAULT_WINDOW_V5.
        let window = config.max_in_flight.unwrap_or(match config.version {
            MqttVersion::V311 => DEFAULT_WINDOW_V311,
            MqttVersion::V5 => DEFAULT_WINDOW_V5,
        });
        // rumqttc's request channel must hold a whole window: a publish waits for
        // room there while holding the tracker lock, which the driver needs.
        let capacity = window * 2;
        let limits = Arc::new(Limits {
            window: Arc::new(Semaphore::new(window)),
            window_size: AtomicUsize::new(window),
            max_packet_size: AtomicUsize::new(config.max_packet_size),
        });
        let (ready_tx, ready) = watch::channel(false);
        let driver = Driver {
            name: name.to_string(),
            tracker: tracker.clone(),
            limits: limits.clone(),
            ready: ready_tx,
        };
        let (client, task) = match config.version {
            MqttVersion::V311 => {
                let (client, events) = v4::connect(config, login, tls, capacity);
                (Client::V4(client), tokio::spawn(driver.run(events)))
            }
            MqttVersion::V5 => {
                let (client, events) = v5::connect(config, login, tls, capacity);
                (Client::V5(client), tokio::spawn(driver.run(events)))
            }
        };
        Ok(MqttSink {
            name: name.to_string(),
            client,
            tracker,
            limits,
            ready,
            task: std::sync::Mutex::new(Some(task)),
        })
    }
}

/// MQTT topic names may not be empty or contain wildcards or NUL.
fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

impl Sink for MqttSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        let client = self.client.clone();
        let tracker = self.tracker.clone();
        let limits = self.limits.clone();
        Box::pin(async move {
            let Destination::Mqtt { topic, qos, retain } = message.destination.clone() else {
                return Err(crate::sink::wrong_destination(
                    SinkKind::Mqtt,
                    &message.destination,
                ));
            };
            if !valid_topic_name(&topic) {
                return Err(SinkError::Permanent(format!(
                    "invalid MQTT topic name `{topic}`"
                )));
            }
            let size = match &client {
                Client::V5(_) => v5::packet_size(&topic, qos, &message)?,
                Client::V4(_) => v4::packet_size(&topic, qos, &message),
            };
            let max = limits.max_packet_size.load(Ordering::Relaxed);
            if size > max {
                return Err(SinkError::Permanent(format!(
                    "message of {size} bytes exceeds the broker's max_packet_size {max}"
                )));
            }
            let slot = tokio::time::timeout(CONFIRM_TIMEOUT, limits.window.clone().acquire_owned())
                .await
                .map_err(|_| {
                    SinkError::Transient(format!(
                        "no room in the in-flight window for {}s",
                        CONFIRM_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|_| SinkError::Transient("sink closed".into()))?;
            let (done, confirmed) = oneshot::channel();
            {
                let mut t = tracker.lock().await;
                if !t.connected {
                    return Err(SinkError::Transient("not connected to the broker".into()));
                }
                client
                    .publish(topic, qos, retain, &message)
                    .await
                    .map_err(|e| SinkError::Transient(format!("cannot queue publish: {e}")))?;
                t.queued.push_back(Waiter {
                    done,
                    qos,
                    since: Instant::now(),
                    _slot: slot,
                });
            }
            match tokio::time::timeout(CONFIRM_TIMEOUT, confirmed).await {
                Ok(result) => {
                    result.unwrap_or_else(|_| Err(SinkError::Transient("sink stopped".into())))
                }
                Err(_) => Err(SinkError::Transient(format!(
                    "no broker confirmation within {}s",
                    CONFIRM_TIMEOUT.as_secs()
                ))),
            }
        })
    }

    fn kind(&self) -> crate::sink::SinkKind {
        crate::sink::SinkKind::Mqtt
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        crate::sink::until_ready(&self.ready)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.client.try_disconnect();
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(mut task) = task {
                // The driver ends once the DISCONNECT is written; a broker that
                // is away leaves it in its reconnect sleep, so bound the wait.
                if tokio::time::timeout(Duration::from_secs(2), &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                }
            }
            self.tracker.lock().await.fail_all("sink closed");
        })
    }
}

/// Runs one sink's event loop and resolves its waiters.
struct Driver {
    name: String,
    tracker: Arc<Mutex<Tracker>>,
    limits: Arc<Limits>,
    ready: watch::Sender<bool>,
}

impl Driver {
    async fn run(self, mut events: impl EventSource) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(20));
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + STUCK_CHECK, STUCK_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The poll future lives across stuck checks: it is dropped only
            // when the connection is given up (rumqttc's poll is not cancel-safe).
            let event = {
                let next = events.next();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        event = &mut next => break event,
                        _ = check.tick() => {
                            if let Some(reason) = self.tracker.lock().await.stuck(Instant::now()) {
                                break LoopEvent::Failed(reason);
                            }
                        }
                    }
                }
            };
            let mut t = self.tracker.lock().await;
            let failure = match event {
                LoopEvent::Connected {
                    receive_max,
                    max_packet_size,
                } => {
                    self.apply_broker_limits(receive_max, max_packet_size);
                    t.connected = true;
                    self.ready.send_replace(true);
                    backoff.reset();
                    tracing::info!(sink = %self.name, "MQTT connected");
                    None
                }
                LoopEvent::Written(pkid) => t.written(pkid).err(),
                LoopEvent::Answered(pkid, result) => {
                    if let Some(w) = t.by_pkid.remove(&pkid) {
                        w.resolve(result);
                    }
                    None
                }
                LoopEvent::Received(pkid) => t.received(pkid).err(),
                LoopEvent::Completed(pkid, result) => {
                    if let Some(w) = t.released.remove(&pkid) {
                        w.resolve(result);
                    }
                    None
                }
                LoopEvent::Closed => {
                    t.fail_all("sink closing");
                    return;
                }
                LoopEvent::Other => None,
                LoopEvent::Failed(reason) => Some(reason),
            };
            if let Some(reason) = failure {
                t.connected = false;
                self.ready.send_replace(false);
                events.reset();
                let failed = t.fail_all(&format!("disconnected from broker: {reason}"));
                drop(t);
                let delay = backoff.next_delay();
                tracing::warn!(sink = %self.name, error = %reason, failed_back = failed, retry_in = ?delay, "MQTT connection lost, refused or stuck");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Shrinks the window to the broker's receive maximum and adopts its
    /// packet size limit when it is smaller than the configured one.
    fn apply_broker_limits(&self, receive_max: Option<u16>, max_packet_size: Option<u32>) {
        if let Some(max) = receive_max.map(usize::from).filter(|m| *m > 0) {
            let current = self.limits.window_size.load(Ordering::Relaxed);
            if max < current {
                let removed = self.limits.window.forget_permits(current - max);
                self.limits
                    .window_size
                    .fetch_sub(removed, Ordering::Relaxed);
                tracing::info!(sink = %self.name, receive_max = max, "in-flight window reduced to the broker's receive maximum");
            }
        }
        if let Some(max) = max_packet_size.map(|m| m as usize) {
            self.limits
                .max_packet_size
                .fetch_min(max, Ordering::Relaxed);
        }
    }
}

/// Bytes an MQTT remaining-length (variable byte integer) of `len` takes.
fn varint_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// The whole packet's size from its remaining length: the fixed header's
/// first byte, the remaining-length field, the rest.
fn packet_size(remaining: usize) -> usize {
    1 + varint_len(remaining) + remaining
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(qos: u8) -> (Waiter, oneshot::Receiver<Result<(), SinkError>>) {
        let (done, rx) = oneshot::channel();
        let slot = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let w = Waiter {
            done,
            qos,
            since: Instant::now(),
            _slot: slot,
        };
        (w, rx)
    }

    /// rumqttc reuses a QoS 2 packet id once PUBREC arrived: the late PUBCOMP
    /// confirms the first publish, the new one waits for its own answer.
    #[test]
    fn a_packet_id_reused_after_pubrec_keeps_both_waiters_apart() {
        let mut t = Tracker::default();
        let (first, mut first_rx) = waiter(2);
        let (second, mut second_rx) = waiter(1);
        t.queued.push_back(first);
        t.written(7).unwrap();
        t.received(7).unwrap();
        t.queued.push_back(second);
        t.written(7).unwrap();
        t.released.remove(&7).unwrap().resolve(Ok(()));
        assert!(matches!(first_rx.try_recv(), Ok(Ok(()))));
        assert!(second_rx.try_recv().is_err(), "not answered yet");
        let refused = Err(SinkError::Permanent("NotAuthorized".into()));
        t.by_pkid.remove(&7).unwrap().resolve(refused);
        assert!(matches!(
            second_rx.try_recv(),
            Ok(Err(SinkError::Permanent(_)))
        ));
    }

    /// An id still awaiting PUBACK/PUBREC is never overwritten: the newcomer
    /// fails and the connection is failed, the first waiter stays.
    #[test]
    fn an_occupied_packet_id_is_never_overwritten() {
        let mut t = Tracker::default();
        let (first, mut first_rx) = waiter(1);
        let (second, mut second_rx) = waiter(1);
        t.queued.push_back(first);
        t.written(3).unwrap();
        t.queued.push_back(second);
        assert!(t.written(3).is_err());
        assert!(matches!(
            second_rx.try_recv(),
            Ok(Err(SinkError::Transient(_)))
        ));
        assert!(first_rx.try_recv().is_err());
        assert!(t.by_pkid.contains_key(&3));
    }

    #[test]
    fn a_waiter_past_the_confirm_timeout_makes_the_connection_stuck() {
        let mut t = Tracker {
            connected: true,
            ..Tracker::default()
        };
        let (w, _rx) = waiter(2);
        let since = w.since;
        t.queued.push_back(w);
        t.written(1).unwrap();
        t.received(1).unwrap();
        assert!(t.stuck(since + CONFIRM_TIMEOUT / 2).is_none());
        assert!(t.stuck(since + CONFIRM_TIMEOUT).is_some());
        assert_eq!(
            t.fail_all("stuck"),
            1,
            "the released waiter (and its permit) is freed"
        );
    }
}
