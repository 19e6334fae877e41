//! The generic `amqp` source against a real RabbitMQ 3.10 (AMQP 1.0 plugin):
//! messages sent by an independent AMQP 1.0 client are bridged to Mosquitto,
//! acknowledged only after the PUBACK; a wrong password backs off.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::mosquitto::Mosquitto;
use common::rabbitmq::RabbitMq;
use common::subscriber::Subscriber;
use common::*;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message, Properties};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Connection, Sender, Session};

const QUEUE: &str = "/queue/iot";

fn config(rabbit: &RabbitMq, password: &str, mqtt_port: u16, extra: &str) -> Config {
    let text = format!(
        r##"source:
  kind: amqp
  url: amqp://127.0.0.1:{port}
  address: {QUEUE}
  username: guest
  password: {password}
  container_id: bridge-rabbit
  credit: 100
  reconnect: {{ initial: 100ms, max: 1s }}
sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt_port}", client_id: rabbit-out }}
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: m, topic: "iot/{{messageId}}", qos: 1 }}
max_in_flight: 200
telemetry: {{ listen: "127.0.0.1:0", summary_interval: 0s }}
{extra}"##,
        port = rabbit.port
    );
    Config::parse(&text, Path::new("amqp.yaml"), |_| None).expect("test config parses")
}

/// Sends `ids` into the queue from an independent AMQP 1.0 client, each with
/// application property `messageId` and a subject, waiting for every outcome.
async fn send(rabbit: &RabbitMq, ids: std::ops::Range<u64>) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}", rabbit.port);
    let mut connection = Connection::open("test-sender", url.as_str())
        .await
        .expect("sender connects");
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "test-sender-link", QUEUE)
        .await
        .expect("sender attaches");
    for id in ids {
        let message = Message::builder()
            .properties(Properties::builder().subject("devices/telemetry").build())
            .application_properties(
                ApplicationProperties::builder()
                    .insert("messageId", id.to_string())
                    .build(),
            )
            .data(Binary::from(format!("{{\"n\":{id}}}").into_bytes()))
            .build();
        let outcome = sender.send(message).await.expect("sent");
        outcome
            .accepted_or_else(|o| o)
            .expect("accepted by RabbitMQ");
    }
    sender.detach().await.ok();
    session.end().await.ok();
    connection.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_reach_mosquitto_and_the_queue_ends_empty() {
    const N: u64 = 10_000;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub", "iot/#").await;
    let bridge = Bridge::start(&config(&rabbit, "guest", broker.port, ""))
        .await
        .unwrap();
    let started = Instant::now();
    within(300, "all sent", send(&rabbit, 0..N)).await;
    subscriber.wait_for_total(N, 300).await;
    eventually("every message accepted at RabbitMQ", 60, || {
        bridge.metrics().accepted() >= N
    })
    .await;
    let elapsed = started.elapsed();
    bridge.shutdown().await;
    let counts = subscriber.counts();
    let missing: Vec<u64> = (0..N)
        .filter(|id| !counts.contains_key(&format!("iot/{id}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let depth = tokio::task::spawn_blocking(move || {
        let depth = rabbit.queue_depth("iot");
        drop(rabbit);
        depth
    })
    .await
    .unwrap();
    assert_eq!(
        depth,
        (0, 0),
        "queue iot (ready, unacknowledged) at the end"
    );
    eprintln!("{N} messages RabbitMQ → bridge → Mosquitto in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_backoff() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let broker = Mosquitto::start();
    let bridge = Bridge::start(&config(&rabbit, "not-the-password", broker.port, ""))
        .await
        .unwrap();
    eventually("a refused login", 30, || {
        bridge.metrics().login_refused() >= 1
    })
    .await;
    let first = bridge.metrics().login_refused();
    // RabbitMQ answers a wrong password only after about 3 s; count over 12 s.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let refused = bridge.metrics().login_refused() - first;
    let text = bridge.metrics().encode();
    let connects = bridge.metrics().connects();
    let attached = bridge
        .metrics()
        .connections()
        .iter()
        .any(|c| c.is_attached());
    bridge.shutdown().await;
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
    // It keeps trying (backoff 100ms doubling to 1s, plus RabbitMQ's own
    // 3 s delay), but never in a hot loop.
    assert!(
        (2..=12).contains(&refused),
        "{refused} refused logins in 12 s"
    );
    assert!(
        text.contains("amqp_bridge_source_login_refused_total{connection=\"bridge-rabbit\"}"),
        "{text}"
    );
    assert_eq!(connects, 0, "never connected");
    assert!(!attached, "never attached");
}
