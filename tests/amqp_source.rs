//! The generic `amqp` source against a real RabbitMQ 3.10 (AMQP 1.0 plugin):
//! messages sent by an independent AMQP 1.0 client are bridged to Mosquitto,
//! acknowledged only after the PUBACK; a wrong password backs off.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use amqp_bridge::telemetry::Metrics;
use common::mosquitto::Mosquitto;
use common::rabbitmq::RabbitMq;
use common::subscriber::Subscriber;
use common::*;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Data, Message, Properties};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Connection, Sender, Session};

const QUEUE: &str = "/queue/iot";

/// A bridge from the test queue to Mosquitto; `topic` is the route's filter.
fn config(rabbit: &RabbitMq, password: &str, mqtt_port: u16, topic: &str, extra: &str) -> Config {
    parse(&yaml(
        rabbit,
        password,
        mqtt_port,
        topic,
        "iot/{messageId}",
        "",
        extra,
    ))
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("amqp.yaml"), |_| None).expect("test config parses")
}

/// The bridge's YAML: `filter` is the route's topic filter, `target` its
/// MQTT topic template, `source_extra` more source keys (each line indented
/// two spaces), `extra` more top-level keys.
fn yaml(
    rabbit: &RabbitMq,
    password: &str,
    mqtt_port: u16,
    filter: &str,
    target: &str,
    source_extra: &str,
    extra: &str,
) -> String {
    format!(
        r##"source:
  kind: amqp
  url: amqp://127.0.0.1:{port}
  address: {QUEUE}
  username: guest
  password: {password}
  container_id: bridge-rabbit
  credit: 100
  reconnect: {{ initial: 100ms, max: 1s }}
{source_extra}sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt_port}", client_id: rabbit-out }}
routes:
  - name: all
    match: {{ topic: "{filter}" }}
    to:
      - {{ sink: m, topic: "{target}", qos: 1 }}
max_in_flight: 200
telemetry: {{ listen: "127.0.0.1:0", summary_interval: 0s }}
{extra}"##,
        port = rabbit.port
    )
}

/// Sends `ids` into the queue from an independent AMQP 1.0 client, each with
/// application property `messageId` and, if given, a subject; waits for every
/// outcome.
async fn send(rabbit: &RabbitMq, ids: std::ops::Range<u64>, subject: Option<&str>) {
    send_built(rabbit, ids, |id, message| {
        message.properties = Some(Properties {
            subject: subject.map(str::to_string),
            ..Default::default()
        });
        message.application_properties = Some(
            ApplicationProperties::builder()
                .insert("messageId", id.to_string())
                .build(),
        );
    })
    .await
}

/// Sends `ids` into the queue, each message with the body `{"n":ID}` and the
/// sections `build` gives it; waits for RabbitMQ to accept each.
async fn send_built(
    rabbit: &RabbitMq,
    ids: std::ops::Range<u64>,
    build: impl Fn(u64, &mut Message<Data>),
) {
    send_built_to(rabbit, QUEUE, ids, build).await
}

/// As [`send_built`], to `address`.
async fn send_built_to(
    rabbit: &RabbitMq,
    address: &str,
    ids: std::ops::Range<u64>,
    build: impl Fn(u64, &mut Message<Data>),
) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}", rabbit.port);
    let mut connection = Connection::open("test-sender", url.as_str())
        .await
        .expect("sender connects");
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "test-sender-link", address)
        .await
        .expect("sender attaches");
    for id in ids {
        let mut message = Message::builder()
            .data(Binary::from(format!("{{\"n\":{id}}}").into_bytes()))
            .build();
        build(id, &mut message);
        let outcome = sender.send(message).await.expect("sent");
        outcome
            .accepted_or_else(|o| o)
            .expect("accepted by RabbitMQ");
    }
    sender.detach().await.ok();
    session.end().await.ok();
    connection.close().await.ok();
}

/// The queue's (ready, unacknowledged) once it is empty or after 10 s (the
/// last settlements may still be on their way); stops the node.
async fn final_depth(rabbit: RabbitMq) -> (u64, u64) {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let depth = rabbit.queue_depth("iot");
            if depth == (0, 0) || Instant::now() > deadline {
                return depth;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_reach_mosquitto_and_the_queue_ends_empty() {
    const N: u64 = 10_000;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub", "iot/#").await;
    // No `topic` property: the subject is the routing topic.
    let bridge = Bridge::start(&config(&rabbit, "guest", broker.port, "devices/+", ""))
        .await
        .unwrap();
    let started = Instant::now();
    within(
        300,
        "all sent",
        send(&rabbit, 0..N, Some("devices/telemetry")),
    )
    .await;
    subscriber.wait_for_total(N, 300).await;
    eventually("every message accepted at RabbitMQ", 60, || {
        bridge.metrics().accepted() >= N
    })
    .await;
    let elapsed = started.elapsed();
    let m = bridge.metrics().clone();
    bridge.shutdown().await;
    // Steady flow, nothing failing: each message received and accepted once.
    assert_eq!((m.received(), m.accepted()), (N, N), "(received, accepted)");
    eprintln!(
        "end: received {}, accepted {}, released {}, unsettled {}, reconnects {}",
        m.received(),
        m.accepted(),
        m.released(),
        m.unsettled(),
        m.reconnects()
    );
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
    let depth = final_depth(rabbit).await;
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
    let bridge = Bridge::start(&config(&rabbit, "not-the-password", broker.port, "#", ""))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_stopped_mid_stream_leaves_the_backlog_in_the_queue() {
    const FIRST: u64 = 1_000;
    const BACKLOG: u64 = 2_000;
    const MAX_IN_FLIGHT: u64 = 200;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let mut broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub-stop", "iot/#").await;
    // No subject either: the source address is the routing topic.
    let bridge = Bridge::start(&config(
        &rabbit,
        "guest",
        broker.port,
        "/queue/#",
        "retry: { initial: 100ms, max: 1s }\n",
    ))
    .await
    .unwrap();
    within(120, "first batch sent", send(&rabbit, 0..FIRST, None)).await;
    subscriber.wait_for_total(FIRST, 120).await;
    eventually("the first batch accepted", 60, || {
        bridge.metrics().accepted() == FIRST
    })
    .await;
    broker.stop();
    within(
        120,
        "backlog sent",
        send(&rabbit, FIRST..FIRST + BACKLOG, None),
    )
    .await;
    // Intake stops at max_in_flight: the rest waits in the queue, ready.
    eventually("max_in_flight taken", 60, || {
        bridge.metrics().in_flight() == MAX_IN_FLIGHT
    })
    .await;
    let rabbit = std::sync::Arc::new(rabbit);
    let expected = (BACKLOG - MAX_IN_FLIGHT, MAX_IN_FLIGHT);
    let depth = queue_depth_becomes(&rabbit, expected, 30).await;
    let m = bridge.metrics();
    assert_eq!(
        depth,
        expected,
        "(ready, unacknowledged) while Mosquitto is down; bridge received {}, in flight {}",
        m.received(),
        m.in_flight()
    );
    assert_eq!(
        m.received(),
        FIRST + MAX_IN_FLIGHT,
        "no transfer beyond the credit"
    );
    let scrape = common::metrics::Scrape::parse(&m.encode());
    assert_eq!(
        scrape.sum("amqp_bridge_source_credit", &[]),
        0.0,
        "no credit while slots are full"
    );
    broker.start_again();
    subscriber.wait_for_total(FIRST + BACKLOG, 300).await;
    let depth = queue_depth_becomes(&rabbit, (0, 0), 60).await;
    assert_eq!(
        depth,
        (0, 0),
        "queue iot (ready, unacknowledged) at the end"
    );
    eventually("every message accepted", 60, || {
        bridge.metrics().accepted() == FIRST + BACKLOG
    })
    .await;
    let m = bridge.metrics().clone();
    bridge.shutdown().await;
    // Credit refilled only once used up (`credit_refill: used_up`, the
    // default for kind amqp): RabbitMQ 3.10 never overran it, so the link
    // never failed and nothing came twice.
    assert_eq!(m.received(), FIRST + BACKLOG, "each message received once");
    assert_eq!(m.unsettled(), 0, "every outcome given");
    assert_eq!(m.reconnects(), 0, "the connection held");
    let counts = subscriber.counts();
    let missing: Vec<u64> = (0..FIRST + BACKLOG)
        .filter(|id| !counts.contains_key(&format!("iot/{id}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let rabbit = std::sync::Arc::into_inner(rabbit).expect("no other owner");
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}

/// Polls the test queue's (ready, unacknowledged) until it equals `want` or
/// `secs` pass (RabbitMQ's counts trail its deliveries); returns the last.
async fn queue_depth_becomes(
    rabbit: &std::sync::Arc<RabbitMq>,
    want: (u64, u64),
    secs: u64,
) -> (u64, u64) {
    queue_depth_of(rabbit, "iot", want, secs).await
}

/// As [`queue_depth_becomes`], for any queue.
async fn queue_depth_of(
    rabbit: &std::sync::Arc<RabbitMq>,
    queue: &'static str,
    want: (u64, u64),
    secs: u64,
) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = rabbit.clone();
        let depth = tokio::task::spawn_blocking(move || r.queue_depth(queue))
            .await
            .unwrap();
        if depth == want || Instant::now() >= deadline {
            return depth;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// 100 messages, the odd ones without the `device` property their route's
/// topic needs (a permanent failure), no dead-letter sink, the queue with a
/// dead-letter policy into queue `iot-dead`: returns the bridge's metrics
/// and (ready, unacknowledged) of `iot` and `iot-dead` once `iot` is empty.
async fn undeliverable_run(
    outcome: &str,
) -> (std::sync::Arc<Metrics>, Subscriber, (u64, u64), (u64, u64)) {
    const N: u64 = 100;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    // Dead letters go through the default exchange to queue iot-dead,
    // declared by attaching to it.
    rabbit.set_policy(
        "dlx",
        "^iot$",
        r#"{"dead-letter-exchange":"","dead-letter-routing-key":"iot-dead"}"#,
    );
    declare_queue(&rabbit, "/queue/iot-dead").await;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub-dead", "iot/#").await;
    let config = parse(&yaml(
        &rabbit,
        "guest",
        broker.port,
        "#",
        "iot/{prop.device}/{messageId}",
        &format!("  undeliverable_outcome: {outcome}\n"),
        "",
    ));
    let bridge = Bridge::start(&config).await.unwrap();
    send_built(&rabbit, 0..N, |id, message| {
        let mut properties = ApplicationProperties::builder().insert("messageId", id.to_string());
        if id % 2 == 0 {
            properties = properties.insert("device", format!("d{id}"));
        }
        message.application_properties = Some(properties.build());
    })
    .await;
    subscriber.wait_for_total(N / 2, 60).await;
    let rabbit = std::sync::Arc::new(rabbit);
    let main = queue_depth_becomes(&rabbit, (0, 0), 30).await;
    // RabbitMQ moves dead letters asynchronously: wait for all of them.
    let dead = queue_depth_of(&rabbit, "iot-dead", (N / 2, 0), 30).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    (metrics, subscriber, main, dead)
}

/// Declares a queue by attaching a receiver to it (RabbitMQ's `/queue/NAME`
/// declares a missing queue).
async fn declare_queue(rabbit: &RabbitMq, address: &str) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}", rabbit.port);
    let mut connection = Connection::open("test-declare", url.as_str())
        .await
        .expect("connects");
    let mut session = Session::begin(&mut connection).await.unwrap();
    let receiver = fe2o3_amqp::Receiver::attach(&mut session, "test-declare", address)
        .await
        .expect("receiver attaches");
    receiver.close().await.ok();
    session.end().await.ok();
    connection.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_rejected_goes_to_the_dead_letter_exchange() {
    // `undeliverable_outcome: rejected`: RabbitMQ dead-letters a rejected
    // message. (`modified` is not tested here: RabbitMQ 3.10 requeues it, see
    // README.)
    let (m, subscriber, main, dead) = undeliverable_run("rejected").await;
    assert_eq!(main, (0, 0), "queue iot (ready, unacknowledged) at the end");
    assert_eq!(
        dead,
        (50, 0),
        "queue iot-dead holds the 50 undeliverable ones"
    );
    assert_eq!(
        (
            m.accepted(),
            m.rejected(),
            m.released(),
            m.modified(),
            m.unsettled()
        ),
        (50, 50, 0, 0, 0),
        "(accepted, rejected, released, modified, unsettled)"
    );
    let counts = subscriber.counts();
    assert_eq!(counts.len(), 50);
    for id in (0..100).step_by(2) {
        assert_eq!(counts.get(&format!("iot/d{id}/{id}")), Some(&1), "id {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_properties_and_annotations_route_fill_templates_travel_and_dedup() {
    use fe2o3_amqp::types::messaging::{MessageAnnotations, MessageId};
    use fe2o3_amqp::types::primitives::{Symbol, Value};
    const N: u64 = 20;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub-meta", "meta/#").await;
    let dir = tempfile::tempdir().unwrap();
    let copies = dir.path().join("copies.jsonl");
    let text = format!(
        r##"source:
  kind: amqp
  url: amqp://127.0.0.1:{port}
  address: {QUEUE}
  username: guest
  password: guest
  container_id: bridge-meta
  # RabbitMQ 3.10 does not apply JMS selectors; the attach must still work.
  selector: "color = 'red'"
sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt}", client_id: meta-out }}
  f: {{ kind: file, path: {copies} }}
routes:
  - name: json
    match: {{ topic: "devices/#", properties: {{ amqp.content-type: application/json }} }}
    to:
      - {{ sink: m, topic: "meta/{{amqp.subject}}/{{annotation.x-opt-tenant}}/{{amqp.message-id}}", qos: 1 }}
      - {{ sink: f }}
unrouted: accept
dedup: {{ amqp_message_id: true }}
telemetry: {{ listen: "127.0.0.1:0", summary_interval: 0s }}
"##,
        port = rabbit.port,
        mqtt = broker.port,
        copies = copies.display(),
    );
    let bridge = Bridge::start(&parse(&text)).await.unwrap();
    // Every message twice with the same AMQP message-id and no application
    // properties at all; one in four is text/plain (unrouted, accepted).
    let build = |id: u64, message: &mut Message<Data>| {
        message.properties = Some(Properties {
            message_id: Some(MessageId::String(format!("m-{id}"))),
            subject: Some(format!("devices/d{}", id % 2)),
            correlation_id: Some(MessageId::Ulong(id)),
            content_type: Some(Symbol::from(if id % 4 == 3 {
                "text/plain"
            } else {
                "application/json"
            })),
            ..Default::default()
        });
        message.message_annotations = Some(
            MessageAnnotations::builder()
                .insert(
                    Symbol::from("x-opt-tenant"),
                    Value::String(format!("t{}", id % 2)),
                )
                .build(),
        );
    };
    send_built(&rabbit, 0..N, build).await;
    send_built(&rabbit, 0..N, build).await;
    eventually("every delivery accepted", 60, || {
        bridge.metrics().accepted() == 2 * N
    })
    .await;
    let m = bridge.metrics().clone();
    bridge.shutdown().await;
    let routed: Vec<u64> = (0..N).filter(|id| id % 4 != 3).collect();
    assert_eq!(
        m.duplicates.get(),
        N,
        "each second copy dropped by its AMQP message-id"
    );
    let counts = subscriber.counts();
    assert_eq!(counts.len(), routed.len(), "{counts:?}");
    for id in &routed {
        let topic = format!("meta/devices/d{}/t{}/m-{id}", id % 2, id % 2);
        assert_eq!(counts.get(&topic), Some(&1), "{topic} in {counts:?}");
    }
    let lines = read_jsonl(&copies);
    assert_eq!(lines.len(), routed.len());
    for line in &lines {
        let p = &line["properties"];
        let id: u64 = p["amqp.correlation-id"].as_str().unwrap().parse().unwrap();
        assert_eq!(p["amqp.message-id"], format!("m-{id}"));
        assert_eq!(p["amqp.subject"], format!("devices/d{}", id % 2));
        assert_eq!(p["amqp.content-type"], "application/json");
        assert_eq!(p["annotation.x-opt-tenant"], format!("t{}", id % 2));
        // The routing topic came from the subject.
        assert_eq!(line["topic"], format!("devices/d{}", id % 2));
    }
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_killed_and_restarted_mid_stream_loses_nothing() {
    use fe2o3_amqp::types::messaging::Header;
    const N: u64 = 3_000;
    let mut rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    // Durable messages in a durable queue survive the crash. `/queue/iot`
    // would declare the queue non-durable (and refuse a durable one):
    // `/amq/queue/iot` names the existing queue.
    rabbit.declare_durable_queue("iot");
    const DURABLE: &str = "/amq/queue/iot";
    send_built_to(&rabbit, DURABLE, 0..N, |id, message| {
        message.header = Some(Header {
            durable: true,
            ..Default::default()
        });
        message.application_properties = Some(
            ApplicationProperties::builder()
                .insert("messageId", id.to_string())
                .build(),
        );
    })
    .await;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "rabbit-sub-restart", "iot/#").await;
    let text = yaml(
        &rabbit,
        "guest",
        broker.port,
        "#",
        "iot/{messageId}",
        "",
        "",
    )
    .replace(&format!("address: {QUEUE}"), &format!("address: {DURABLE}"));
    let bridge = Bridge::start(&parse(&text)).await.unwrap();
    subscriber.wait_for_total(N / 4, 120).await;
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.kill();
        rabbit
    })
    .await
    .unwrap();
    let at_kill = *subscriber.total().borrow();
    assert!(
        at_kill < N,
        "killed mid-stream: {at_kill} of {N} had arrived"
    );
    rabbit = tokio::task::spawn_blocking(move || {
        rabbit.start_again();
        rabbit
    })
    .await
    .unwrap();
    subscriber.wait_for_total(N, 300).await;
    let rabbit = std::sync::Arc::new(rabbit);
    let depth = queue_depth_becomes(&rabbit, (0, 0), 60).await;
    assert_eq!(
        depth,
        (0, 0),
        "queue iot (ready, unacknowledged) at the end"
    );
    let m = bridge.metrics().clone();
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
    // Duplicates: a crashed RabbitMQ 3.10 forgets the acks of its last
    // moments (measured: all of them), so what was delivered before the kill
    // may come again, plus what was in flight then (max_in_flight, 200).
    let publishes: u64 = counts.values().map(|c| *c as u64).sum();
    let duplicates = publishes - N;
    eprintln!(
        "restart: {N} ids, {at_kill} before the kill, {duplicates} duplicate publishes, received {}, accepted {}, unsettled {}, reconnects {}",
        m.received(),
        m.accepted(),
        m.unsettled(),
        m.reconnects()
    );
    assert!(m.reconnects() >= 1, "the bridge reconnected");
    assert!(
        duplicates <= at_kill + 200,
        "{duplicates} duplicates, {at_kill} delivered before the kill"
    );
    assert_eq!(
        m.received(),
        m.accepted() + m.unsettled() + m.released(),
        "every delivery settled or lost with its link"
    );
    let rabbit = std::sync::Arc::into_inner(rabbit).expect("no other owner");
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}

/// A bridge reaching `rabbit` over TLS, trusting `ca`; `login` is the SASL
/// part of the source block, `client` the client certificate and key.
fn tls_yaml(
    rabbit: &RabbitMq,
    mqtt_port: u16,
    ca: &Path,
    login: &str,
    client: Option<(&Path, &Path)>,
    alt_tls: bool,
) -> String {
    let client = client
        .map(|(cert, key)| {
            format!(
                "    cert_file: {}\n    key_file: {}\n",
                cert.display(),
                key.display()
            )
        })
        .unwrap_or_default();
    format!(
        r##"source:
  kind: amqp
  url: amqps://localhost:{port}
  address: {QUEUE}
  container_id: bridge-tls
  alt_tls_establishment: {alt_tls}
{login}  tls:
    ca_file: {ca}
{client}  reconnect: {{ initial: 100ms, max: 500ms }}
sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt_port}", client_id: tls-out }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "iot/{{messageId}}", qos: 1 }} ] }}
telemetry: {{ listen: "127.0.0.1:0", summary_interval: 0s }}
"##,
        port = rabbit.tls_port,
        ca = ca.display(),
    )
}

/// Forwards `ids` from the queue over the bridge's TLS connection, each
/// exactly once. (RabbitMQ 3.10 does not list AMQP 1.0 connections in
/// `list_connections`, so the login is shown by what it refuses.)
async fn forwarded_over_tls(
    rabbit: &RabbitMq,
    mqtt_port: u16,
    text: &str,
    ids: std::ops::Range<u64>,
) {
    let n = ids.end - ids.start;
    let subscriber = Subscriber::start(mqtt_port, "tls-sub", "iot/#").await;
    let bridge = Bridge::start(&parse(text)).await.unwrap();
    send(rabbit, ids.clone(), None).await;
    subscriber.wait_for_total(n, 60).await;
    eventually("every message accepted", 30, || {
        bridge.metrics().accepted() == n
    })
    .await;
    bridge.shutdown().await;
    let counts = subscriber.counts();
    assert_eq!(counts.len() as u64, n);
    assert!(ids
        .clone()
        .all(|id| counts.get(&format!("iot/{id}")) == Some(&1)));
}

/// Runs the bridge on `text` as a process until it logged `attempts` failed
/// connection attempts, and checks that each failed for `reason` (a text of
/// its log line) and that it never connected.
async fn never_connects(text: &str, attempts: usize, reason: &str) {
    let dir = tempfile::tempdir().unwrap();
    let at: std::net::SocketAddr = format!("127.0.0.1:{}", common::mosquitto::free_port())
        .parse()
        .unwrap();
    let text = text.replace("listen: \"127.0.0.1:0\"", &format!("listen: \"{at}\""));
    assert!(text.contains(&at.to_string()), "{text}");
    let config = dir.path().join("refused.yaml");
    std::fs::write(&config, text).unwrap();
    let mut bridge = common::bridge_process::BridgeProcess::start(&config, at);
    let failures = bridge
        .logged("source connection failed", attempts, 30)
        .await;
    let scrape = common::metrics::Scrape::parse(&bridge.scrape().await);
    bridge.stop(Duration::from_secs(10));
    for line in &failures {
        assert!(line.contains(reason), "not `{reason}`: {line}");
    }
    let connects = scrape.count("amqp_bridge_source_connects_total", &[]);
    assert_eq!(connects, 0, "connected anyway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_plain_and_with_sasl_external_and_refusals() {
    let pki = common::pki::Pki::new("bridge-client");
    let (rabbit, pki) = tokio::task::spawn_blocking(move || (RabbitMq::start_tls(&pki), pki))
        .await
        .unwrap();
    let broker = Mosquitto::start();
    let plain = "  username: guest\n  password: guest\n";
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));

    // TLS straight away (RabbitMQ's TLS listener), SASL PLAIN.
    let text = tls_yaml(&rabbit, broker.port, &pki.ca, plain, None, true);
    forwarded_over_tls(&rabbit, broker.port, &text, 0..300).await;

    // SASL EXTERNAL: the client certificate's common name is the user.
    let text = tls_yaml(
        &rabbit,
        broker.port,
        &pki.ca,
        "  sasl: external\n",
        client,
        true,
    );
    forwarded_over_tls(&rabbit, broker.port, &text, 300..600).await;

    // ...so a certificate from the same CA for a user RabbitMQ does not
    // know is refused at login.
    let (cert, key) = pki.client("nobody");
    let text = tls_yaml(
        &rabbit,
        broker.port,
        &pki.ca,
        "  sasl: external\n",
        Some((&cert, &key)),
        true,
    );
    let bridge = Bridge::start(&parse(&text)).await.unwrap();
    eventually("a refused login", 30, || {
        bridge.metrics().login_refused() >= 2
    })
    .await;
    assert_eq!(bridge.metrics().connects(), 0);
    bridge.shutdown().await;

    // A broker certificate from another CA is refused.
    let other = common::pki::Pki::new("other");
    never_connects(
        &tls_yaml(&rabbit, broker.port, &other.ca, plain, None, true),
        3,
        // BadSignature: both test CAs have the same name, so rustls takes
        // the trusted one for the issuer and the signature does not match.
        "TLS handshake with localhost failed: invalid peer certificate: BadSignature",
    )
    .await;

    // RabbitMQ 3.10 does not speak the AMQP TLS header on either listener:
    // `alt_tls_establishment: false` cannot connect to it.
    never_connects(
        &tls_yaml(&rabbit, broker.port, &pki.ca, plain, None, false),
        3,
        "localhost did not answer the AMQP TLS header as expected",
    )
    .await;

    let (ready, unacked) = rabbit.queue_depth("iot");
    assert_eq!((ready, unacked), (0, 0));
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}
