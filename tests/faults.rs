//! At-least-once under faults, with the bridge as a real process: SIGKILLed
//! mid-stream and started again, and three replicas in one consumer group
//! with one of them killed. Every messageId is counted at an independent
//! MQTT subscriber and at the emulator (accepted, outstanding); duplicates
//! are bounded by what could be unsettled at a kill (`max_in_flight`).
//!
//! CI runs 10 000 messages; `AMQP_BRIDGE_FAULTS_N=100000` (see
//! `scripts/faults.sh`) runs the long form.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::bridge_process::BridgeProcess;
use common::mosquitto::{free_port, Mosquitto};
use common::subscriber::Subscriber;
use common::*;

/// Messages per scenario.
fn n() -> u64 {
    std::env::var("AMQP_BRIDGE_FAULTS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// At most this many messages are unsettled in one process.
const MAX_IN_FLIGHT: u64 = 256;

/// Writes one bridge's config to `dir`; returns the file and its telemetry
/// address.
fn write_config(
    emulator: &amqp_bridge::emulator::Emulator,
    dir: &Path,
    client_id: &str,
    mqtt_port: u16,
) -> (PathBuf, SocketAddr) {
    let telemetry: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let source = source_yaml(
        emulator,
        dir,
        client_id,
        "  credit: 64\n  reconnect: { initial: 50ms, max: 500ms }\n",
    )
    .replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{telemetry}', summary_interval: 0s }}"),
    );
    let text = format!(
        r##"{source}sinks:
  mosquitto:
    kind: mqtt
    url: mqtt://127.0.0.1:{mqtt_port}
    client_id: {client_id}-out
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: mosquitto, topic: "out/{{messageId}}", qos: 1 }}
max_in_flight: {MAX_IN_FLIGHT}
shutdown_timeout: 5s
retry: {{ initial: 50ms, max: 500ms }}
"##
    );
    let path = dir.join(format!("{client_id}.yaml"));
    std::fs::write(&path, text).unwrap();
    (path, telemetry)
}

/// Waits until the subscriber saw `total` publishes (duplicates included).
async fn publishes(subscriber: &Subscriber, total: u64) {
    subscriber.wait_for_total(total, 300).await;
}

/// Every id 0..n arrived; returns the duplicate publishes.
fn all_arrived(subscriber: &Subscriber, n: u64) -> u64 {
    let counts = subscriber.counts();
    assert_eq!(
        counts.len() as u64,
        n,
        "distinct message ids at the subscriber"
    );
    counts.values().map(|c| u64::from(*c) - 1).sum()
}

/// No log line carries the AccessKey secret (debug logging is on).
fn no_secret_in(log: &str) {
    assert!(!log.is_empty(), "the process logged nothing");
    assert!(!log.contains(SK), "the AccessKey secret is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_sigkilled_twice_mid_stream_loses_nothing() {
    let n = n();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "faults-sub-kill", "out/#").await;
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, telemetry) = write_config(&emulator, dir.path(), "faults-kill", broker.port);
    let started = Instant::now();
    let mut bridge = BridgeProcess::start(&config, telemetry);
    bridge.ready(60).await;
    for (round, at) in [(1u64, n / 4), (2, n / 2)] {
        publishes(&subscriber, at).await;
        bridge.kill();
        bridge.restart();
        bridge.ready(60).await;
        eprintln!("kill {round} done after {at} publishes");
    }
    within(600, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    let rss_mib = rss(&bridge.scrape().await) / (1 << 20);
    bridge.stop(Duration::from_secs(10));
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (n, 0), "{stats:?}");
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() as u64 == n
    })
    .await;
    let duplicates = all_arrived(&subscriber, n);
    eprintln!(
        "bridge SIGKILLed twice: {n} messages in {elapsed:?}, {duplicates} duplicates, \
         {} unsettled at the kills, RSS at the end {rss_mib} MiB",
        stats.unsettled_at_disconnect
    );
    // What can come twice: what was unsettled when a process died.
    assert!(
        duplicates <= stats.unsettled_at_disconnect && duplicates <= 2 * MAX_IN_FLIGHT,
        "{duplicates} duplicates, {} unsettled at the kills",
        stats.unsettled_at_disconnect
    );
    no_secret_in(&bridge.log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_a_consumer_group_and_survive_one_killed() {
    let n = n();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "faults-sub-replicas", "out/#").await;
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut replicas: Vec<BridgeProcess> = (1..=3)
        .map(|i| {
            let (config, telemetry) =
                write_config(&emulator, dir.path(), &format!("replica-{i}"), broker.port);
            BridgeProcess::start(&config, telemetry)
        })
        .collect();
    for replica in &replicas {
        replica.ready(60).await;
    }
    publishes(&subscriber, n / 3).await;
    // Each replica has taken a share before one of them dies.
    for replica in &replicas {
        let received = received(&replica.scrape().await);
        assert!(
            received > 0,
            "replica at {} received nothing",
            replica.telemetry
        );
    }
    replicas[1].kill();
    within(600, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    let shares = [
        received(&replicas[0].scrape().await),
        received(&replicas[2].scrape().await),
    ];
    for replica in &mut replicas {
        replica.stop(Duration::from_secs(10));
    }
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (n, 0), "{stats:?}");
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() as u64 == n
    })
    .await;
    let duplicates = all_arrived(&subscriber, n);
    eprintln!(
        "3 replicas, one SIGKILLed: {n} messages in {elapsed:?}, {duplicates} duplicates, \
         {} unsettled at the kill, survivors received {shares:?}",
        stats.unsettled_at_disconnect
    );
    assert!(
        duplicates <= stats.unsettled_at_disconnect && duplicates <= MAX_IN_FLIGHT,
        "{duplicates} duplicates, {} unsettled at the kill",
        stats.unsettled_at_disconnect
    );
    for replica in &replicas {
        no_secret_in(&replica.log.lock().unwrap());
    }
}

/// `amqp_bridge_source_received_total` summed over connections.
fn received(metrics: &str) -> u64 {
    common::metrics::Scrape::parse(metrics).count("amqp_bridge_source_received_total", &[])
}

/// `process_resident_memory_bytes` as scraped.
fn rss(metrics: &str) -> u64 {
    common::metrics::Scrape::parse(metrics).count("process_resident_memory_bytes", &[])
}
