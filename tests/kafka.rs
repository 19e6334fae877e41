//! Emulator → bridge → a real Kafka-protocol broker (tansu), consumed back
//! with a real consumer and counted exactly.

mod common;

use std::collections::HashMap;
use std::path::Path;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::tansu::{consume, Tansu};
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
    let all = tokio::task::spawn_blocking(move || consume(&address, "iot.all", 3, N as usize, 60))
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

    let expected = all
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "topic" && v.ends_with("/thing/event/property/post"))
        })
        .count();
    let address = broker.address();
    let properties =
        tokio::task::spawn_blocking(move || consume(&address, "iot.properties", 3, expected, 60))
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
