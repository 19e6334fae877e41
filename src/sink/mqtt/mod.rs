//! MQTT sink (rumqttc; MQTT 3.1.1 in `v4`, MQTT 5 in `v5`). A publish resolves
//! on its PUBACK (QoS 1), PUBCOMP (QoS 2) or, for QoS 0, once written.
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were
//! requested, so requests and their waiters go into one FIFO under one lock;
//! the event loop pairs each outgoing packet id with the next waiter and each
//! acknowledgement with its packet id. On a disconnect every waiter fails
//! (Transient) and rumqttc's replay queue and buffered events are cleared under
//! the same lock, so nothing is both failed back and silently resent, and no
//! stale event is paired with a later waiter.

mod v4;
mod v5;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{Outgoing, Sink, SinkBuildError, SinkError};
use crate::backoff::Backoff;
use crate::config::{MqttSinkConfig, MqttVersion, Secret};

/// A publish the broker has not confirmed by then is failed back for a retry.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// The broker's final answer for a packet id (PUBACK, PUBCOMP, failing PUBREC).
    Answered(u16, Result<(), SinkError>),
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
    /// After a failure: drop rumqttc's replay queue (and the requests still in
    /// its channel) and its buffered events. Called with the tracker locked, so
    /// no publish can slip in between this and failing the waiters.
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
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Tracker {
    connected: bool,
    /// Requested, not yet written (no packet id yet), in request order.
    queued: VecDeque<Waiter>,
    /// Written, waiting for the broker's answer.
    by_pkid: HashMap<u16, Waiter>,
}

impl Tracker {
    fn fail_all(&mut self, reason: &str) -> usize {
        let n = self.queued.len() + self.by_pkid.len();
        for w in self
            .queued
            .drain(..)
            .chain(self.by_pkid.drain().map(|(_, w)| w))
        {
            let _ = w.done.send(Err(SinkError::Transient(reason.to_string())));
        }
        n
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
            super::mqtt_auth::check_client_id(&config.client_id).map_err(invalid)?;
            Ok(Some(super::mqtt_auth::credentials(auth, &config.client_id)))
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
            let topic = message.topic.clone().unwrap_or_default();
            if !valid_topic_name(&topic) {
                return Err(SinkError::Permanent(format!(
                    "invalid MQTT topic name `{topic}`"
                )));
            }
            // Fixed header (≤5) + topic length and text + packet id + payload;
            // MQTT 5 user properties add their text and a few bytes each.
            let properties: usize = match client {
                Client::V5(_) => message
                    .forwarded_properties(true)
                    .map(|(k, v)| k.len() + v.len() + 5)
                    .sum(),
                Client::V4(_) => 0,
            };
            let size = 5 + 2 + topic.len() + 2 + message.envelope.body.len() + properties;
            let max = limits.max_packet_size.load(Ordering::Relaxed);
            if size > max {
                return Err(SinkError::Permanent(format!(
                    "message of {size} bytes exceeds the broker's max_packet_size {max}"
                )));
            }
            let slot = limits
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| SinkError::Transient("sink closed".into()))?;
            let (done, confirmed) = oneshot::channel();
            {
                let mut t = tracker.lock().await;
                if !t.connected {
                    return Err(SinkError::Transient("not connected to the broker".into()));
                }
                client
                    .publish(topic, message.qos, message.retain, &message)
                    .await
                    .map_err(|e| SinkError::Transient(format!("cannot queue publish: {e}")))?;
                t.queued.push_back(Waiter {
                    done,
                    qos: message.qos,
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

    fn kind(&self) -> &'static str {
        "mqtt"
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
        loop {
            let event = events.next().await;
            let mut t = self.tracker.lock().await;
            match event {
                LoopEvent::Connected {
                    receive_max,
                    max_packet_size,
                } => {
                    self.apply_broker_limits(receive_max, max_packet_size);
                    t.connected = true;
                    self.ready.send_replace(true);
                    backoff.reset();
                    tracing::info!(sink = %self.name, "MQTT connected");
                }
                LoopEvent::Written(pkid) => {
                    if let Some(w) = t.queued.pop_front() {
                        if w.qos == 0 {
                            let _ = w.done.send(Ok(()));
                        } else {
                            t.by_pkid.insert(pkid, w);
                        }
                    }
                }
                LoopEvent::Answered(pkid, result) => {
                    if let Some(w) = t.by_pkid.remove(&pkid) {
                        let _ = w.done.send(result);
                    }
                }
                LoopEvent::Closed => {
                    t.fail_all("sink closing");
                    return;
                }
                LoopEvent::Other => {}
                LoopEvent::Failed(reason) => {
                    t.connected = false;
                    self.ready.send_replace(false);
                    events.reset();
                    let failed = t.fail_all(&format!("disconnected from broker: {reason}"));
                    drop(t);
                    let delay = backoff.next_delay();
                    tracing::warn!(sink = %self.name, error = %reason, failed_back = failed, retry_in = ?delay, "MQTT connection lost or refused");
                    tokio::time::sleep(delay).await;
                }
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
