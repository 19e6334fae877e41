//! At-least-once under faults, with the bridge as a real process: the bridge
//! SIGKILLed mid-stream and started again, three replicas in one consumer
//! group with one of them killed, Mosquitto SIGKILLed three times, the AMQP
//! connection cut five times by a TCP proxy, and memory while Mosquitto is
//! frozen (SIGSTOP). Every messageId is counted at an independent
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
use common::proxy::Proxy;
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
    write_config_via(emulator, dir, client_id, mqtt_port, None)
}

/// As [`write_config`]; with `source_port`, the bridge reaches the emulator
/// there (a proxy) instead of at the emulator's own port.
fn write_config_via(
    emulator: &amqp_bridge::emulator::Emulator,
    dir: &Path,
    client_id: &str,
    mqtt_port: u16,
    source_port: Option<u16>,
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
    let source = match source_port {
        Some(port) => source.replace(
            &format!("amqps://localhost:{}", emulator.local_addr().port()),
            &format!("amqps://localhost:{port}"),
        ),
        None => source,
    };
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

/// Once the emulator saw every message accepted and the bridges stopped:
/// nothing outstanding at the emulator, every id at the subscriber; returns
/// the emulator's final counts and the duplicate publishes.
async fn settled_everywhere(
    emulator: amqp_bridge::emulator::Emulator,
    subscriber: &Subscriber,
    n: u64,
) -> (amqp_bridge::emulator::StatsSnapshot, u64) {
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (n, 0), "{stats:?}");
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() as u64 == n
    })
    .await;
    (stats, all_arrived(subscriber, n))
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
    let (stats, duplicates) = settled_everywhere(emulator, &subscriber, n).await;
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
    let (stats, duplicates) = settled_everywhere(emulator, &subscriber, n).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_sigkilled_three_times_loses_nothing_the_bridge_accepted() {
    let n = n();
    // Every PUBLISH the broker receives is logged (and counted by the
    // harness) before it answers PUBACK: that log, not a subscriber, is the
    // count, because a SIGKILLed broker loses what it had not persisted yet
    // (its loss, after it confirmed; the bridge's contract ends at PUBACK).
    let mut broker = Mosquitto::start_with(|_| "log_type debug\n".to_string());
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, telemetry) = write_config(&emulator, dir.path(), "faults-mqtt", broker.port);
    let started = Instant::now();
    let mut bridge = BridgeProcess::start(&config, telemetry);
    bridge.ready(60).await;
    for round in 1..=3u64 {
        let at = round * n / 4;
        eventually("the broker receiving", 300, || {
            broker.received.lock().unwrap().len() as u64 >= at
        })
        .await;
        broker.kill();
        broker.start_again();
        eprintln!("broker kill {round} after {at} received");
    }
    within(600, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    bridge.stop(Duration::from_secs(10));
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (n, 0), "{stats:?}");
    let received = broker.received_when_caught_up("sentinel").await;
    assert_eq!(
        received.len() as u64,
        n,
        "distinct topics the broker received"
    );
    eprintln!(
        "Mosquitto SIGKILLed 3 times: {n} messages in {elapsed:?}, {} redelivered by the emulator",
        stats.redelivered
    );
    no_secret_in(&bridge.log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_connection_cut_five_times_loses_nothing() {
    let n = n();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "faults-sub-cut", "out/#").await;
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let proxy = Proxy::start(0, emulator.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, telemetry) = write_config_via(
        &emulator,
        dir.path(),
        "faults-cut",
        broker.port,
        Some(proxy.port),
    );
    let started = Instant::now();
    let mut bridge = BridgeProcess::start(&config, telemetry);
    bridge.ready(60).await;
    for round in 1..=5u64 {
        publishes(&subscriber, round * n / 6).await;
        let logins = emulator.stats().snapshot().logins_ok;
        proxy.cut_all();
        // Reconnected, signed a fresh login and attached again.
        eventually("a new login after the cut", 60, || {
            emulator.stats().snapshot().logins_ok > logins
        })
        .await;
    }
    within(600, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    bridge.stop(Duration::from_secs(10));
    let passwords = emulator.passwords_seen();
    let (stats, duplicates) = settled_everywhere(emulator, &subscriber, n).await;
    assert_eq!(stats.logins_ok, 6, "one login per connection: {stats:?}");
    // Each login signed afresh: the emulator accepts 15 minutes of clock
    // skew, so a reused signature would log in too; only the passwords
    // (six, all different) show it was not.
    assert_eq!(passwords.len(), 6, "one password per login attempt");
    let distinct: std::collections::HashSet<&String> = passwords.iter().collect();
    assert_eq!(distinct.len(), 6, "a reconnect reused a signed password");
    eprintln!(
        "AMQP connection cut 5 times: {n} messages in {elapsed:?}, {duplicates} duplicates, {} unsettled at the cuts",
        stats.unsettled_at_disconnect
    );
    assert!(
        duplicates <= stats.unsettled_at_disconnect && duplicates <= 5 * MAX_IN_FLIGHT,
        "{duplicates} duplicates"
    );
    no_secret_in(&bridge.log.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_mosquitto_is_frozen() {
    let n = n();
    let stall = std::env::var("AMQP_BRIDGE_FAULTS_STALL_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5u64);
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "faults-sub-stop", "out/#").await;
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, telemetry) = write_config(&emulator, dir.path(), "faults-stop", broker.port);
    let mut bridge = BridgeProcess::start(&config, telemetry);
    bridge.ready(60).await;
    publishes(&subscriber, n / 10).await;
    broker.signal("STOP");
    // While the broker is frozen the emulator offers everything it has;
    // the bridge takes max_in_flight and grants no more credit.
    let until = Instant::now() + Duration::from_secs(stall);
    let mut peak_rss = 0;
    let mut samples = 0;
    while Instant::now() < until {
        let scrape = common::metrics::Scrape::parse(&bridge.scrape().await);
        let in_flight = scrape.count("amqp_bridge_in_flight", &[]);
        let credit = scrape.count("amqp_bridge_source_credit", &[]);
        assert!(in_flight <= MAX_IN_FLIGHT, "{in_flight} in flight");
        assert!(
            in_flight + credit <= MAX_IN_FLIGHT,
            "credit {credit} beyond the free slots ({in_flight} in flight)"
        );
        peak_rss = peak_rss.max(scrape.count("process_resident_memory_bytes", &[]));
        samples += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let in_flight =
        common::metrics::Scrape::parse(&bridge.scrape().await).count("amqp_bridge_in_flight", &[]);
    broker.signal("CONT");
    within(600, "all accepted", emulator.all_accepted()).await;
    bridge.stop(Duration::from_secs(10));
    settled_everywhere(emulator, &subscriber, n).await;
    eprintln!(
        "Mosquitto frozen {stall} s: {in_flight} in flight at the end of it, peak RSS {} MiB over {samples} samples",
        peak_rss >> 20
    );
    // The bound: the process itself (~20 MiB) plus max_in_flight messages
    // (a few hundred bytes each here) and the MQTT client's queue of them.
    assert!(peak_rss < 64 << 20, "peak RSS {} MiB", peak_rss >> 20);
}

#[cfg(feature = "rocketmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_waits_for_a_killed_rocketmq_broker_and_loses_nothing() {
    use common::rocketmq::{pull_all, Pulled, RocketMq};
    use common::tansu::{consume, distinct_keys, Tansu};
    let n = n() / 2;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "faults-sub-fan", "out/#").await;
    let kafka = tokio::task::spawn_blocking(Tansu::start).await.unwrap();
    kafka.create_topic("fan", 1);
    let mut rocketmq = tokio::task::spawn_blocking(RocketMq::start).await.unwrap();
    let emulator = emulator(|c| {
        c.count = n;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let telemetry: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let source = source_yaml(&emulator, dir.path(), "faults-fan", "").replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{telemetry}', summary_interval: 0s }}"),
    );
    let text = format!(
        r##"{source}sinks:
  mosquitto: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt}", client_id: faults-fan-out }}
  kafka: {{ kind: kafka, brokers: ["{kafka}"] }}
  rmq: {{ kind: rocketmq, name_server: {name_server}, producer_group: PG_FAN, send_timeout: 3s }}
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: mosquitto, topic: "out/{{messageId}}", qos: 1 }}
      - {{ sink: kafka, topic: fan, key: "{{messageId}}" }}
      - {{ sink: rmq, topic: fan, keys: "{{messageId}}" }}
max_in_flight: {MAX_IN_FLIGHT}
retry: {{ initial: 50ms, max: 500ms }}
"##,
        mqtt = broker.port,
        kafka = kafka.address(),
        name_server = rocketmq.name_server(),
    );
    let config = dir.path().join("fan.yaml");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let mut bridge = BridgeProcess::start(&config, telemetry);
    bridge.ready(120).await;
    publishes(&subscriber, n / 3).await;
    rocketmq = tokio::task::spawn_blocking(move || {
        rocketmq.kill_broker();
        rocketmq
    })
    .await
    .unwrap();
    // The other brokers' copies go on until max_in_flight messages wait
    // for their RocketMQ copy; then intake stops.
    let at_kill = *subscriber.total().borrow();
    eventually("intake stopped at max_in_flight", 60, || {
        futures_block_on_scrape(&bridge) >= MAX_IN_FLIGHT
    })
    .await;
    rocketmq = tokio::task::spawn_blocking(move || {
        rocketmq.start_broker();
        rocketmq
    })
    .await
    .unwrap();
    within(600, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    bridge.stop(Duration::from_secs(10));
    let (_, mqtt_duplicates) = settled_everywhere(emulator, &subscriber, n).await;
    let address = kafka.address();
    let records = tokio::task::spawn_blocking(move || {
        consume(&address, "fan", 1, distinct_keys(n as usize), 120)
    })
    .await
    .unwrap();
    let kafka_keys: std::collections::HashSet<_> =
        records.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(kafka_keys.len() as u64, n, "distinct keys in Kafka");
    let pulled = pull_all(
        &rocketmq.name_server(),
        None,
        None,
        "fan",
        "*",
        |m: &[Pulled]| {
            m.iter()
                .filter_map(|p| p.properties.get("messageId"))
                .collect::<std::collections::HashSet<_>>()
                .len() as u64
                >= n
        },
        120,
    )
    .await;
    let rocketmq_ids: std::collections::HashSet<_> = pulled
        .iter()
        .filter_map(|p| p.properties.get("messageId").cloned())
        .collect();
    assert_eq!(rocketmq_ids.len() as u64, n, "distinct ids in RocketMQ");
    eprintln!(
        "fan-out, RocketMQ broker killed at {at_kill} publishes: {n} messages in {elapsed:?}; \
         duplicates MQTT {mqtt_duplicates}, Kafka {}, RocketMQ {}",
        records.len() as u64 - n,
        pulled.len() as u64 - n
    );
    no_secret_in(&bridge.log.lock().unwrap());
}

/// `amqp_bridge_in_flight` of the bridge process, read on a helper thread
/// (for `eventually`, which takes a plain closure).
#[cfg(feature = "rocketmq")]
fn futures_block_on_scrape(bridge: &BridgeProcess) -> u64 {
    let url = url::Url::parse(&format!("http://{}/metrics", bridge.telemetry)).unwrap();
    let text = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(amqp_bridge::telemetry::http::get(&url))
    })
    .join()
    .unwrap();
    match text {
        Ok((200, body)) => {
            common::metrics::Scrape::parse(&body).count("amqp_bridge_in_flight", &[])
        }
        _ => 0,
    }
}
