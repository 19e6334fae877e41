//! Emulator → bridge → a real Kafka-protocol broker (tansu), consumed back
//! with a real consumer and counted exactly.

mod common;

use std::collections::HashMap;
use std::path::Path;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::tansu::{at_least, consume, distinct_keys, Tansu};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_keyed_and_with_headers() {
    const N: u64 = 10_000;
    let broker = Tansu::start();
    broker.create_topic("iot.all", 3);
    broker.create_topic("iot.properties", 3);
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-kafka", "");
    let text = format!(
        r##"{source}sinks:
  kafka:
    kind: kafka
    brokers: ["{address}"]
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: kafka, topic: iot.all, key: "{{messageId}}" }}
  - name: properties
    match: {{ topic: "/+/+/thing/event/property/post" }}
    to:
      - {{ sink: kafka, topic: iot.properties, key: "{{productKey}}.{{deviceName}}", headers: all }}
"##,
        address = broker.address()
    );
    let config = Config::parse(&text, Path::new("kafka.yaml"), |_| None).unwrap();
    let started = std::time::Instant::now();
    let bridge = Bridge::start(&config).await.unwrap();
    within(300, "all accepted", emulator.all_accepted()).await;
    eprintln!("kafka: {N} messages accepted in {:?}", started.elapsed());
    bridge.shutdown().await;
    eprintln!("kafka: shut down after {:?}", started.elapsed());
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.outstanding, stats.redelivered),
        (N, 0, 0)
    );

    let address = broker.address();
    let all = tokio::task::spawn_blocking(move || {
        consume(&address, "iot.all", 3, distinct_keys(N as usize), 60)
    })
    .await
    .unwrap();
    eprintln!("kafka: consumed after {:?}", started.elapsed());
    assert_eq!(all.len() as u64, N, "records in iot.all");
    let mut ids = HashMap::new();
    for record in &all {
        let header = |k: &str| {
            record
                .headers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let id = header("messageId").expect("messageId header");
        assert_eq!(
            record.key.as_deref(),
            Some(id.as_str()),
            "key is the messageId"
        );
        assert!(header("topic").is_some() && header("generateTime").is_some());
        *ids.entry(id).or_insert(0) += 1;
    }
    assert_eq!(ids.len() as u64, N);
    assert!(ids.values().all(|c| *c == 1), "each messageId once");

    let property_topics: Vec<&String> = all
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "topic").map(|(_, v)| v))
        .filter(|t| t.ends_with("/thing/event/property/post"))
        .collect();
    let expected = property_topics.len();
    let address = broker.address();
    let properties = tokio::task::spawn_blocking(move || {
        consume(&address, "iot.properties", 3, at_least(expected), 60)
    })
    .await
    .unwrap();
    assert_eq!(properties.len(), expected);
    for record in &properties {
        let topic = &record.headers.iter().find(|(k, _)| k == "topic").unwrap().1;
        let levels: Vec<&str> = topic.split('/').collect();
        assert_eq!(
            record.key.as_deref(),
            Some(format!("{}.{}", levels[1], levels[2]).as_str())
        );
    }
}

fn kafka_config(source: &str, brokers: &str, properties: &str, extra: &str) -> Config {
    let text = format!(
        r##"{source}sinks:
  kafka:
    kind: kafka
    brokers: ["{brokers}"]
    properties: {{ {properties} }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: kafka, topic: iot.all, key: "{{messageId}}" }} ] }}
retry: {{ initial: 100ms, max: 1s }}
{extra}"##
    );
    Config::parse(&text, Path::new("kafka.yaml"), |_| None).expect("test config parses")
}

/// Every message id at least once; returns how many extra copies there were.
fn ids_at_least_once(records: &[common::tansu::Record], n: u64) -> u64 {
    let mut ids: HashMap<String, u64> = HashMap::new();
    for r in records {
        *ids.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    assert_eq!(ids.len() as u64, n, "distinct message ids in Kafka");
    ids.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_broker_loses_nothing() {
    const N: u64 = 3_000;
    let broker = Tansu::start();
    broker.create_topic("iot.all", 2);
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_500;
        c.redeliver_after = std::time::Duration::from_millis(500);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-kafka-stop", "");
    // Short librdkafka timeouts so the freeze outlasts them: requests time out
    // and undelivered records come back as MessageTimedOut (retried by the bridge).
    // Idempotence is off here only because tansu 0.6 cannot follow it: after
    // timed-out idempotent batches librdkafka bumps the producer epoch, tansu
    // answers OutOfOrderSequenceNumber and then fences even a fresh producer
    // (ProducerFenced forever). Users keep the default (on).
    let config = kafka_config(
        &source,
        &broker.address(),
        r#""enable.idempotence": "false", "request.timeout.ms": "1000", "message.timeout.ms": "2000", "socket.timeout.ms": "1000""#,
        "",
    );
    let bridge = Bridge::start(&config).await.unwrap();
    eventually("1 000 accepted", 60, || {
        emulator.stats().snapshot().accepted >= 1_000
    })
    .await;
    broker.signal("STOP");
    let retries = || bridge.metrics().retries();
    let before = retries();
    eventually("failed sends retried during the freeze", 60, || {
        retries() > before
    })
    .await;
    // A failed send makes the sink not ready (for /readyz and sink_ready)
    // until a send gets through again.
    let not_ready = bridge.health().readiness();
    assert!(
        not_ready.not_ready.iter().any(|r| r.contains("sink")),
        "ready during the freeze: {not_ready:?}"
    );
    broker.signal("CONT");
    within(300, "all accepted", emulator.all_accepted()).await;
    assert!(
        bridge.health().readiness().is_ready(),
        "not ready after the broker came back"
    );
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let address = broker.address();
    let records = tokio::task::spawn_blocking(move || {
        consume(&address, "iot.all", 2, distinct_keys(N as usize), 60)
    })
    .await
    .unwrap();
    let extra = ids_at_least_once(&records, N);
    eprintln!("kafka freeze: {extra} duplicate records of {N}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_by_a_proxy_lose_nothing() {
    const N: u64 = 3_000;
    let proxy_port = common::mosquitto::free_port();
    let broker = Tansu::start_advertising(Some(proxy_port));
    broker.create_topic("iot.all", 2);
    let proxy = common::proxy::Proxy::start(proxy_port, broker.address().parse().unwrap()).await;
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_500;
        c.redeliver_after = std::time::Duration::from_millis(500);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-kafka-cut", "");
    let config = kafka_config(
        &source,
        &format!("127.0.0.1:{}", proxy.port),
        r#""request.timeout.ms": "2000""#,
        "",
    );
    let bridge = Bridge::start(&config).await.unwrap();
    for at in [800u64, 1_600, 2_400] {
        eventually("messages accepted", 60, || {
            emulator.stats().snapshot().accepted >= at
        })
        .await;
        proxy.cut_all();
    }
    within(300, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let address = format!("127.0.0.1:{}", proxy.port);
    let records = tokio::task::spawn_blocking(move || {
        consume(&address, "iot.all", 2, distinct_keys(N as usize), 60)
    })
    .await
    .unwrap();
    let extra = ids_at_least_once(&records, N);
    eprintln!("kafka connection cuts: {extra} duplicate records of {N}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_larger_than_allowed_is_dead_lettered() {
    let broker = Tansu::start();
    broker.create_topic("iot.all", 1);
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(5_000);
    let messages = messages_file(
        dir.path(),
        &[("/p/d/a", "small"), ("/p/d/b", &big), ("/p/d/c", "small")],
    );
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let source = source_yaml(&emulator, dir.path(), "bridge-kafka-size", "");
    let dead = dir.path().join("dead.jsonl");
    // tansu enforces no record size limit, so the producer's own limit stands in
    // for "larger than the broker accepts": librdkafka refuses it as MessageSizeTooLarge.
    let text_config = {
        let text = format!(
            r##"{source}sinks:
  kafka: {{ kind: kafka, brokers: ["{brokers}"], properties: {{ "message.max.bytes": "2000" }} }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: kafka, topic: iot.all, key: "{{messageId}}" }} ] }}
dead_letter: dead
"##,
            brokers = broker.address(),
            dead = dead.display()
        );
        Config::parse(&text, Path::new("kafka.yaml"), |_| None).unwrap()
    };
    let bridge = Bridge::start(&text_config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (3, 0));
    let address = broker.address();
    let records =
        tokio::task::spawn_blocking(move || consume(&address, "iot.all", 1, at_least(2), 30))
            .await
            .unwrap();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.payload == b"small"));
    let dead_lines = read_jsonl(&dead);
    assert_eq!(dead_lines.len(), 1);
    assert_eq!(dead_lines[0]["topic"], "/p/d/b");
    let error = dead_lines[0]["failure"]["error"].as_str().unwrap();
    assert!(error.to_lowercase().contains("too large"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_unrouted_copies_get_topic_names_kafka_accepts() {
    // Property posts fail for good (a template the message cannot fill) and
    // are dead-lettered to Kafka; lifecycle messages match no route and go
    // to Kafka with their platform topic. Neither name is legal in Kafka as
    // is (`amqp-bridge/dead-letter/…`, `/pk/dn/…`): the bridge must produce
    // `amqp-bridge.dead-letter.bad` and `a1P.d1.thing.lifecycle`.
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    for i in 0..10 {
        lines.push(format!(
            r#"{{"topic": "/a1P/d1/thing/event/property/post", "body": "p{i}", "messageId": "10000000000000000{i:02}"}}"#
        ));
        lines.push(format!(
            r#"{{"topic": "/a1P/d1/thing/lifecycle", "body": "l{i}", "messageId": "20000000000000000{i:02}"}}"#
        ));
    }
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(&messages, lines.join("\n")).unwrap();
    let broker = Tansu::start();
    broker.create_topic("amqp-bridge.dead-letter.bad", 1);
    broker.create_topic("a1P.d1.thing.lifecycle", 1);
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let source = source_yaml(&emulator, dir.path(), "bridge-kafka-names", "");
    let text = format!(
        r##"{source}sinks:
  kafka: {{ kind: kafka, brokers: ["{address}"] }}
routes:
  - name: bad
    match: {{ topic: "/+/+/thing/event/property/post" }}
    to:
      - {{ sink: kafka, topic: "iot.{{prop.missing}}", key: "{{messageId}}" }}
unrouted: {{ sink: kafka }}
dead_letter: kafka
"##,
        address = broker.address()
    );
    let config = Config::parse(&text, Path::new("kafka-names.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    let dead_lettered = bridge.metrics().dead_lettered();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.outstanding, stats.released),
        (20, 0, 0),
        "nothing released (a refused dead letter would loop)"
    );
    assert_eq!(dead_lettered, 10);
    let address = broker.address();
    let (dead, unrouted) = tokio::task::spawn_blocking(move || {
        (
            consume(&address, "amqp-bridge.dead-letter.bad", 1, at_least(10), 60),
            consume(&address, "a1P.d1.thing.lifecycle", 1, at_least(10), 60),
        )
    })
    .await
    .unwrap();
    let keys = |records: &[common::tansu::Record]| {
        let mut k: Vec<String> = records.iter().filter_map(|r| r.key.clone()).collect();
        k.sort();
        k.dedup();
        k.len()
    };
    assert_eq!(keys(&dead), 10, "dead letters keyed by messageId");
    // One dead letter per message, no duplicate: as read back, and as
    // stored (`consume` stops at tansu's high watermark, which is no record
    // count: it can stop short of a duplicate; the stored batches cannot).
    let address = broker.address();
    let stored = tokio::task::spawn_blocking(move || {
        common::tansu::stored_batches(&address, "amqp-bridge.dead-letter.bad")
    })
    .await
    .unwrap();
    let stored: i64 = stored.iter().map(|b| i64::from(b.records)).sum();
    assert_eq!(
        (dead.len(), stored),
        (10, 10),
        "dead letters read back and stored"
    );
    assert!(dead.iter().all(|r| r
        .headers
        .iter()
        .any(|(k, v)| k == "deadLetterRoute" && v == "bad")));
    assert_eq!(unrouted.len(), 10, "unrouted lifecycle copies");
    let bodies: Vec<String> = unrouted
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect();
    assert!(bodies.iter().all(|b| b.starts_with('l')), "{bodies:?}");
}
