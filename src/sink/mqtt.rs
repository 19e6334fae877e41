//! MQTT sink (rumqttc, MQTT 3.1.1). A publish resolves on its PUBACK (QoS 1),
//! PUBCOMP (QoS 2) or, for QoS 0, once written to the socket.
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were
//! requested, so requests and their waiters go into one FIFO under one lock;
//! the event loop pairs each outgoing packet id with the next waiter and each
//! PUBACK/PUBCOMP with its packet id. On a disconnect every waiter fails
//! (Transient) and rumqttc's own replay queue is cleared under the same lock,
//! so nothing is both failed back and silently resent.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing as Out, Packet, QoS,
};
use tokio::sync::{oneshot, watch, Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::{Outgoing, Sink, SinkBuildError, SinkError};
use crate::backoff::Backoff;
use crate::config::MqttSinkConfig;

/// A publish the broker has not confirmed by then is failed back for a retry.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The MQTT protocol's packet size limit.
const MAX_PACKET: usize = 268_435_455;

struct Waiter {
    done: oneshot::Sender<Result<(), SinkError>>,
    qos: QoS,
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct Tracker {
    connected: bool,
    /// Requested, not yet written (no packet id yet), in request order.
    queued: VecDeque<Waiter>,
    /// Written, waiting for PUBACK/PUBCOMP.
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

/// A connection to one MQTT broker.
pub struct MqttSink {
    name: String,
    client: AsyncClient,
    tracker: Arc<Mutex<Tracker>>,
    window: Arc<Semaphore>,
    max_packet_size: usize,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl MqttSink {
    /// Starts connecting in the background; `ready()` resolves on the first CONNACK.
    pub fn start(name: &str, config: &MqttSinkConfig) -> Result<MqttSink, SinkBuildError> {
        let mut options = MqttOptions::new(
            config.client_id.clone(),
            config.url.host(),
            config.url.port(),
        );
        options
            .set_keep_alive(config.keep_alive.0.max(Duration::from_secs(1)))
            .set_clean_session(true)
            .set_inflight(u16::MAX)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = config.username.as_deref().filter(|u| !u.is_empty()) {
            let password = config
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default();
            options.set_credentials(user, password);
        }
        if config.url.is_tls() {
            let cert = config
                .tls
                .cert_file
                .as_deref()
                .zip(config.tls.key_file.as_deref());
            let tls = crate::tls::client_config(config.tls.ca_file.as_deref(), cert).map_err(
                |source| SinkBuildError::Tls {
                    name: name.to_string(),
                    source,
                },
            )?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, eventloop) = AsyncClient::new(options, config.max_in_flight * 2);
        let tracker = Arc::new(Mutex::new(Tracker::default()));
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(drive(
            name.to_string(),
            eventloop,
            tracker.clone(),
            ready_tx,
        ));
        Ok(MqttSink {
            name: name.to_string(),
            client,
            tracker,
            window: Arc::new(Semaphore::new(config.max_in_flight)),
            max_packet_size: config.max_packet_size,
            ready,
            task,
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
        let window = self.window.clone();
        let max_packet_size = self.max_packet_size;
        Box::pin(async move {
            let topic = message.topic.unwrap_or_default();
            if !valid_topic_name(&topic) {
                return Err(SinkError::Permanent(format!(
                    "invalid MQTT topic name `{topic}`"
                )));
            }
            // Fixed header (≤5) + topic length and text + packet id + payload.
            let size = 5 + 2 + topic.len() + 2 + message.envelope.body.len();
            if size > max_packet_size {
                return Err(SinkError::Permanent(format!(
                    "message of {size} bytes exceeds the broker's max_packet_size {max_packet_size}"
                )));
            }
            let qos = match message.qos {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                _ => QoS::ExactlyOnce,
            };
            let slot = window
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
                    .publish_bytes(topic, qos, message.retain, message.envelope.body.clone())
                    .await
                    .map_err(|e| SinkError::Transient(format!("cannot queue publish: {e}")))?;
                t.queued.push_back(Waiter {
                    done,
                    qos,
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

    fn ready(&self) -> BoxFuture<'_, ()> {
        let mut ready = self.ready.clone();
        Box::pin(async move {
            let _ = ready.wait_for(|r| *r).await;
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while !self.task.is_finished() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            self.task.abort();
            self.tracker.lock().await.fail_all("sink closed");
        })
    }
}

async fn drive(
    name: String,
    mut eventloop: EventLoop,
    tracker: Arc<Mutex<Tracker>>,
    ready: watch::Sender<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(20));
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code == ConnectReturnCode::Success {
                    tracker.lock().await.connected = true;
                    ready.send_replace(true);
                    backoff.reset();
                    tracing::info!(sink = %name, "MQTT connected");
                }
            }
            Ok(Event::Outgoing(Out::Publish(pkid))) => {
                let mut t = tracker.lock().await;
                if let Some(w) = t.queued.pop_front() {
                    if w.qos == QoS::AtMostOnce {
                        let _ = w.done.send(Ok(()));
                    } else {
                        t.by_pkid.insert(pkid, w);
                    }
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(w) = tracker.lock().await.by_pkid.remove(&ack.pkid) {
                    let _ = w.done.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                if let Some(w) = tracker.lock().await.by_pkid.remove(&comp.pkid) {
                    let _ = w.done.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Out::Disconnect)) => {
                tracker.lock().await.fail_all("sink closing");
                return;
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::RequestsDone) => return,
            Err(e) => {
                let failed = {
                    let mut t = tracker.lock().await;
                    t.connected = false;
                    // Drop rumqttc's replay queue too: with a clean session it would
                    // not be resent, and every waiter is failed back for a retry.
                    eventloop.clean();
                    eventloop.pending.clear();
                    // An Outgoing::Publish event is queued before its write; if
                    // the write failed it is still buffered and would be paired
                    // with the next waiter after reconnecting.
                    eventloop.state.events.clear();
                    eventloop.state.collision = None;
                    t.fail_all(&format!("disconnected from broker: {e}"))
                };
                let delay = backoff.next_delay();
                tracing::warn!(sink = %name, error = %e, failed_back = failed, retry_in = ?delay, "MQTT connection lost or refused");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
