//! `source.connections > 1` against the emulator and a real Mosquitto: every
//! connection logs in as `client_id-N`, the links share one in-flight bound,
//! each connection has its own metrics, and every message arrives exactly once.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::metrics::Scrape;
use common::mosquitto::Mosquitto;
use common::subscriber::Subscriber;
use common::*;

/// The per-connection series of `name` in `scrape`: connection → value.
fn by_connection(scrape: &Scrape, name: &str, with: &[(&str, &str)]) -> Vec<(String, u64)> {
    let mut values: Vec<(String, u64)> = scrape
        .matching(name, with)
        .filter_map(|(labels, value)| {
            let connection = labels.iter().find(|(k, _)| k == "connection")?;
            Some((connection.1.clone(), value as u64))
        })
        .collect();
    values.sort();
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_connections_share_max_in_flight_and_deliver_every_message_once() {
    const N: u64 = 3_000;
    // Three links with credit 8 could hold 24; the shared bound is 20.
    const CONNECTIONS: usize = 3;
    const CREDIT: u64 = 8;
    const MAX: u64 = 20;
    const _: () = assert!(CONNECTIONS as u64 * CREDIT > MAX && CREDIT < MAX);
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "conns-sub", "out/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(
        &emulator,
        dir.path(),
        "bridge-conns",
        &format!(
            "  connections: {CONNECTIONS}\n  credit: {CREDIT}\n  \
             reconnect: {{ initial: 50ms, max: 500ms }}\n"
        ),
    );
    let text = format!(
        r##"{source}sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: conns-out }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "out/{{messageId}}", qos: 1 }} ] }}
max_in_flight: {MAX}
"##,
        port = broker.port
    );
    let config = Config::parse(&text, Path::new("conns.yaml"), |_| None).expect("config parses");
    let names: Vec<String> = (0..CONNECTIONS)
        .map(|i| format!("bridge-conns-{i}"))
        .collect();

    let bridge = Bridge::start(&config).await.unwrap();
    // The emulator knows a client by the client id in its signed login: one
    // connection for each of the three ids.
    let expected: Vec<(String, usize)> = names.iter().map(|n| (n.clone(), 1)).collect();
    eventually(
        "the emulator to see one connection per client id",
        30,
        || emulator.clients() == expected,
    )
    .await;
    subscriber.wait_for_total(300, 60).await;

    broker.signal("STOP");
    // Mosquitto frozen: no slot is freed, so the links take the free slots
    // and then hold no credit. Settled state: no credit anywhere and the
    // emulator has processed every accept the bridge sent.
    let settled = |s: &Scrape| {
        let in_flight = s.count("amqp_bridge_in_flight", &[]);
        let stats = emulator.stats().snapshot();
        s.count("amqp_bridge_source_credit", &[]) == 0
            && in_flight > 0
            && stats.pushed - stats.accepted == in_flight
    };
    let mut frozen = Scrape::default();
    eventually("no credit left with Mosquitto frozen", 30, || {
        frozen = Scrape::parse(&bridge.metrics().encode());
        settled(&frozen)
    })
    .await;
    let stats = emulator.stats().snapshot();
    let in_flight = frozen.count("amqp_bridge_in_flight", &[]);
    assert_eq!(in_flight, MAX, "in flight across the three links");
    assert_eq!(
        stats.pushed - stats.accepted,
        MAX,
        "unsettled at the emulator ({stats:?})"
    );
    let received = by_connection(&frozen, "amqp_bridge_source_received_total", &[]);
    let accepted = by_connection(
        &frozen,
        "amqp_bridge_source_settlements_total",
        &[("outcome", "accepted")],
    );
    let held: Vec<(String, u64)> = received
        .iter()
        .zip(&accepted)
        .map(|((name, r), (_, a))| (name.clone(), r - a))
        .collect();
    eprintln!("frozen: received {received:?}, in flight {held:?}");
    assert_eq!(held.iter().map(|(_, n)| n).sum::<u64>(), MAX);
    broker.signal("CONT");

    within(180, "all accepted", emulator.all_accepted()).await;
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() == N as usize
    })
    .await;
    let end = Scrape::parse(&bridge.metrics().encode());
    let m = bridge.metrics().clone();
    let peak = m.in_flight_peak();
    let connections: Vec<String> = m.connections().iter().map(|c| c.name().into()).collect();
    let accepted_ids = emulator.accepted_ids();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;

    // Exact totals: every message once, nothing redelivered or retried.
    assert_eq!(
        (
            stats.pushed,
            stats.accepted,
            stats.redelivered,
            stats.outstanding
        ),
        (N, N, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.logins_ok, CONNECTIONS as u64, "{stats:?}");
    // The subscriber has exactly the accepted ids, each once.
    let counts = subscriber.counts();
    let arrived: BTreeSet<&str> = counts.keys().map(String::as_str).collect();
    let accepted_topics: BTreeSet<String> =
        accepted_ids.iter().map(|id| format!("out/{id}")).collect();
    assert_eq!(accepted_ids.len() as u64, N);
    assert_eq!(
        arrived,
        accepted_topics.iter().map(String::as_str).collect()
    );
    assert!(counts.values().all(|c| *c == 1), "an id arrived twice");
    assert!(peak <= MAX, "in-flight peak {peak} > {MAX}");
    assert_eq!((m.received(), m.accepted()), (N, N));
    assert_eq!((m.connects(), m.reconnects()), (CONNECTIONS as u64, 0));

    // Per-connection metrics: a series for each client id, each took a share.
    assert_eq!(connections, names, "connections in the bridge's metrics");
    let received = by_connection(&end, "amqp_bridge_source_received_total", &[]);
    let accepted = by_connection(
        &end,
        "amqp_bridge_source_settlements_total",
        &[("outcome", "accepted")],
    );
    eprintln!("received per connection: {received:?}");
    let labels: BTreeSet<&String> = received.iter().map(|(name, _)| name).collect();
    assert_eq!(labels, names.iter().collect(), "connection labels");
    assert!(
        received.iter().all(|(_, n)| *n > 0),
        "a connection received nothing: {received:?}"
    );
    assert_eq!(received.iter().map(|(_, n)| n).sum::<u64>(), N);
    assert_eq!(
        accepted, received,
        "each connection accepted what it received"
    );
    let connects = by_connection(&end, "amqp_bridge_source_connects_total", &[]);
    assert!(connects.iter().all(|(_, n)| *n == 1), "{connects:?}");
}
