//! The MQTT row: QoS 1 into Mosquitto. Baseline: a direct rumqttc producer
//! publishing the emulator's generated messages (bodies and topics made
//! before the clock starts) with the MQTT sink's default window of 100
//! unacknowledged publishes (rumqttc's own `inflight`; `--mqtt-window`
//! changes it on every side). Hand-written forwarder
//! (`bench_common::forwarder`): a bare receiver publishing each message
//! through one such client and accepting it on its PUBACK, credit = window.
//! Bridge: the emulator
//! → the whole bridge → an MQTT 3.1.1 sink with the same window. Each run
//! gets a fresh subscriber (QoS 1, its own topic prefix); the rate is
//! N / (time from before the producer or bridge connects to the
//! subscriber's N-th arrival).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use amqp_bridge::emulator::{Generator, MessageSource};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::oneshot;

use crate::bench_common::forwarder::forward;
use crate::bench_common::{credit, emulator, source_yaml, write_ca, BareLink};
use crate::subscriber::Subscriber;
use crate::{cpu, limit, measure_sides, Row, Run, Shortfalls, Side};

/// The MQTT sink's default window for MQTT 3.1.1 (`max_in_flight`).
const DEFAULT_WINDOW: u16 = 100;

static WINDOW: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Sets the window both sides use (`--mqtt-window`; default 100).
pub fn set_window(window: u16) {
    let _ = WINDOW.set(window);
}

/// Publishes unacknowledged at most, on both sides.
pub fn window() -> u16 {
    *WINDOW.get().unwrap_or(&DEFAULT_WINDOW)
}

/// `n` generated messages as (topic under `prefix`, body).
pub fn payloads(n: u64, prefix: &str) -> Vec<(String, Bytes)> {
    let mut generator = Generator::new(n);
    std::iter::from_fn(|| generator.next_message())
        .map(|m| (format!("{prefix}{}", m.topic), m.body))
        .collect()
}

/// A QoS 1 publisher's options: at most [`window`] publishes unacknowledged
/// (rumqttc's own `inflight`), clean session.
fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options
        .set_clean_session(true)
        .set_keep_alive(std::time::Duration::from_secs(30))
        .set_inflight(window())
        .set_max_packet_size(1 << 20, 1 << 20);
    options
}

/// A direct rumqttc producer: QoS 1 with at most [`window`] publishes
/// unacknowledged (rumqttc's own `inflight`), its event loop on a task.
pub struct Producer {
    client: AsyncClient,
    events: tokio::task::JoinHandle<u64>,
}

impl Producer {
    /// Starts connecting; `total` is the number of PUBACKs to wait for.
    pub fn connect(port: u16, client_id: &str, total: u64) -> Producer {
        let (client, mut eventloop) =
            AsyncClient::new(options(port, client_id), window() as usize * 2);
        let events = tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < total {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bench: direct MQTT producer: {e}");
                        break;
                    }
                }
            }
            acked
        });
        Producer { client, events }
    }

    /// Queues one publish; waits while rumqttc's request queue is full.
    pub async fn publish(&self, topic: String, body: Bytes) -> bool {
        self.client
            .publish_bytes(topic, QoS::AtLeastOnce, false, body)
            .await
            .is_ok()
    }

    /// Waits for every PUBACK (or the connection's failure): how many came.
    pub async fn finish(self) -> u64 {
        let acked = self.events.await.unwrap_or(0);
        let _ = self.client.try_disconnect();
        acked
    }
}

async fn direct(port: u16, n: u64, run: &str) -> Run {
    let prefix = format!("bench/direct/{run}");
    let messages = payloads(n, &prefix);
    let subscriber = Subscriber::start(port, &prefix, n, false);
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let producer = Producer::connect(port, &format!("bench-direct-{run}"), n);
    for (topic, body) in messages {
        if !producer.publish(topic, body).await {
            break;
        }
    }
    let acked = producer.finish().await;
    if acked < n {
        eprintln!("bench: direct MQTT producer: {acked} of {n} acknowledged");
    }
    let nth = subscriber.wait(limit(n)).await;
    let usage = meter.stop();
    Run {
        delivered: subscriber.count(),
        elapsed: nth.unwrap_or_else(Instant::now) - started,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// The hand-written forwarder ([`forward`]): each message published at
/// QoS 1 through one rumqttc client with the same window, accepted at the
/// source on its PUBACK. Mosquitto answers a connection's QoS 1 publishes
/// in order, so a FIFO pairs each PUBACK with its message. Counted by the
/// same kind of subscriber.
// `forward`'s submit is async twice on purpose: awaiting it queues the
// publish, the future it yields is the broker's answer.
#[allow(clippy::async_yields_async)]
async fn forwarder(port: u16, n: u64, run: &str, dir: &Path) -> Run {
    let prefix = format!("bench/forwarder/{run}");
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let subscriber = Subscriber::start(port, &prefix, n, false);
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let mut link = BareLink::attach(
        &emulator,
        &ca,
        &format!("bench-forwarder-{run}"),
        credit().max(window() as u32),
    )
    .await;
    let (client, mut eventloop) = AsyncClient::new(
        options(port, &format!("bench-forwarder-{run}")),
        window() as usize * 2,
    );
    let unacked: Arc<Mutex<VecDeque<oneshot::Sender<()>>>> = Arc::default();
    let events = tokio::spawn({
        let unacked = unacked.clone();
        async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        let next = unacked.lock().expect("FIFO").pop_front();
                        if let Some(acked) = next {
                            let _ = acked.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("bench: MQTT forwarder: {e}");
                        // No PUBACK comes now: the waiting publishes fail.
                        unacked.lock().expect("FIFO").clear();
                        return;
                    }
                }
            }
        }
    });
    let accepted = forward(&mut link, n, window() as usize, |message| {
        let client = client.clone();
        let unacked = unacked.clone();
        let topic = format!("{prefix}{}", message.topic);
        async move {
            // Queued before the publish, so its PUBACK cannot come first;
            // taken back if the publish is refused (nothing else was
            // queued meanwhile: `forward` awaits one submit at a time).
            let (acked, on_puback) = oneshot::channel();
            unacked.lock().expect("FIFO").push_back(acked);
            let queued = client
                .publish_bytes(topic, QoS::AtLeastOnce, false, message.body)
                .await
                .is_ok();
            if !queued {
                unacked.lock().expect("FIFO").pop_back();
            }
            async move { queued && on_puback.await.is_ok() }
        }
    });
    let _ = tokio::time::timeout(limit(n), accepted).await;
    let nth = subscriber.wait(limit(n)).await;
    let usage = meter.stop();
    let _ = client.try_disconnect();
    events.abort();
    link.close().await;
    emulator.shutdown().await;
    Run {
        delivered: subscriber.count(),
        elapsed: nth.unwrap_or_else(Instant::now) - started,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// The bridge's configuration: the emulator as source, one MQTT sink with
/// `max_in_flight`, every message to `prefix{topic}` at QoS 1.
pub fn bridge_yaml(
    source: &str,
    port: u16,
    client_id: &str,
    prefix: &str,
    max_in_flight: usize,
) -> String {
    format!(
        "{source}sinks:\n  mq: {{ kind: mqtt, url: 'mqtt://127.0.0.1:{port}', \
         client_id: {client_id}, max_in_flight: {max_in_flight} }}\n\
         routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: mq, topic: '{prefix}{{topic}}', qos: 1 }} ] }}\n"
    )
}

async fn bridge(port: u16, n: u64, run: &str, dir: &Path) -> Run {
    let prefix = format!("bench/bridge/{run}");
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let text = bridge_yaml(
        &source_yaml(&emulator, &ca, &format!("bench-mqtt-{run}")),
        port,
        &format!("bench-bridge-{run}"),
        &prefix,
        window() as usize,
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("bench config");
    let subscriber = Subscriber::start(port, &prefix, n, false);
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let bridge = Bridge::start(&config).await.expect("bridge starts");
    let nth = subscriber.wait(limit(n)).await;
    let elapsed = nth.unwrap_or_else(Instant::now) - started;
    let usage = meter.stop();
    let _ = tokio::time::timeout(limit(n), emulator.all_accepted()).await;
    bridge.shutdown().await;
    emulator.shutdown().await;
    Run {
        delivered: subscriber.count(),
        elapsed,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// Warm-up of N/10 on every side, then N each.
pub async fn row(n: u64, port: u16, dir: &Path, short: &mut Shortfalls) -> Row {
    let sides: [(&str, Side); 3] = [
        (
            "direct",
            Box::new(move |n, run| Box::pin(direct(port, n, run))),
        ),
        (
            "forwarder",
            Box::new(move |n, run| Box::pin(forwarder(port, n, run, dir))),
        ),
        (
            "bridge",
            Box::new(move |n, run| Box::pin(bridge(port, n, run, dir))),
        ),
    ];
    let [baseline, forwarder, bridge] = measure_sides("MQTT", n, &sides, short)
        .await
        .try_into()
        .unwrap_or_else(|_| unreachable!("three sides, three runs"));
    Row {
        name: format!(
            "MQTT QoS 1 → Mosquitto, window {} (baseline: direct rumqttc producer)",
            window()
        ),
        n,
        baseline,
        forwarder: Some(forwarder),
        bridge,
    }
}
