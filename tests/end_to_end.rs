//! Emulator → bridge → real Mosquitto, counted exactly on both sides.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use amqp_bridge::emulator::Emulator;
use common::mosquitto::Mosquitto;
use common::subscriber::Subscriber;
use common::*;

struct Setup {
    _dir: tempfile::TempDir,
    config: Config,
}

/// A bridge config: emulator source, one Mosquitto sink, `out/{messageId}`.
fn bridge_config(emulator: &Emulator, mqtt_port: u16, secret: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(
        emulator,
        dir.path(),
        "bridge-e2e",
        "  reconnect: { initial: 50ms, max: 500ms }\n",
    )
    .replace(
        &format!("access_key_secret: {SK}"),
        &format!("access_key_secret: {secret}"),
    );
    let text = format!(
        r##"{source}sinks:
  mosquitto:
    kind: mqtt
    url: mqtt://127.0.0.1:{mqtt_port}
    client_id: bridge-e2e-out
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: mosquitto, topic: "out/{{messageId}}", qos: 1 }}
shutdown_timeout: 5s
retry: {{ initial: 50ms, max: 500ms }}
{extra}"##
    );
    let config = Config::parse(&text, Path::new("e2e.yaml"), |_| None).expect("test config parses");
    Setup { _dir: dir, config }
}

/// Every one of `n` message ids arrived at least once; returns the duplicates.
fn assert_all_arrived(subscriber: &Subscriber, n: usize) -> u32 {
    let counts = subscriber.counts();
    assert_eq!(counts.len(), n, "distinct message ids at the broker");
    assert!(
        counts
            .keys()
            .all(|t| t.starts_with("out/") && t.len() == 4 + 19),
        "unexpected topics"
    );
    counts.values().map(|c| c - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_each_accepted_after_puback() {
    const N: u64 = 10_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-1", "out/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let setup = bridge_config(&emulator, broker.port, SK, "");
    let started = Instant::now();
    let bridge = Bridge::start(&setup.config).await.unwrap();
    within(180, "all accepted", emulator.all_accepted()).await;
    let elapsed = started.elapsed();
    subscriber.wait_for_total(N, 30).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(
        assert_all_arrived(&subscriber, N as usize),
        0,
        "no duplicates in a clean run"
    );
    assert_eq!(
        (
            stats.pushed,
            stats.accepted,
            stats.redelivered,
            stats.outstanding
        ),
        (N, N, 0, 0)
    );
    assert_eq!((stats.released, stats.rejected, stats.modified), (0, 0, 0));
    eprintln!(
        "throughput: {N} messages in {:.2}s = {:.0} msg/s",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_mid_stream_loses_nothing() {
    const N: u64 = 5_000;
    let mut broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-2", "out/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(500);
    })
    .await;
    let setup = bridge_config(&emulator, broker.port, SK, "");
    let bridge = Bridge::start(&setup.config).await.unwrap();
    subscriber.wait_for_total(1_000, 60).await;
    broker.stop();
    let retries_before = bridge.metrics().retries();
    // The bridge notices: sends fail and are retried while the broker is away.
    eventually("retries while the broker is down", 30, || {
        bridge.metrics().retries() > retries_before + 10
    })
    .await;
    broker.start_again();
    within(180, "all accepted", emulator.all_accepted()).await;
    let bridge_forwarded = bridge.metrics().forwarded();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(stats.outstanding, 0);
    assert_eq!(stats.accepted, N);
    // Everything the broker confirmed before it stopped was saved and is delivered now.
    let arrived = async {
        let mut total = subscriber.total();
        let _ = total
            .wait_for(|_| subscriber.counts().len() == N as usize)
            .await;
    };
    if tokio::time::timeout(Duration::from_secs(60), arrived)
        .await
        .is_err()
    {
        panic!(
            "only {} of {N} ids arrived; emulator {stats:?}; bridge forwarded {}",
            subscriber.counts().len(),
            bridge_forwarded
        );
    }
    let duplicates = assert_all_arrived(&subscriber, N as usize);
    eprintln!("duplicates after broker stop: {duplicates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_connection_dropped_mid_stream_reconnects_and_completes() {
    const N: u64 = 5_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-3", "out/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let setup = bridge_config(&emulator, broker.port, SK, "");
    let bridge = Bridge::start(&setup.config).await.unwrap();
    subscriber.wait_for_total(1_000, 60).await;
    emulator.disconnect_all();
    within(180, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let passwords = emulator.passwords_seen();
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.logins_ok, stats.logins_refused),
        (2, 0),
        "the bridge logged in once more after the drop: {stats:?}"
    );
    // A fresh signature, not the first login again: the emulator accepts
    // 15 minutes of clock skew, so only the passwords tell them apart.
    assert_eq!(passwords.len(), 2, "one password per login");
    assert!(
        passwords[0] != passwords[1],
        "the reconnect reused the signature"
    );
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() == N as usize
    })
    .await;
    let duplicates = assert_all_arrived(&subscriber, N as usize);
    eprintln!(
        "duplicates after source drop: {duplicates}; redelivered {}",
        stats.redelivered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_forced_mid_stream_attaches_again_on_the_same_connection() {
    const N: u64 = 4_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-detach", "out/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let setup = bridge_config(&emulator, broker.port, SK, "");
    let bridge = Bridge::start(&setup.config).await.unwrap();
    // Three forced detaches, each once the flow is going again.
    for round in 1..=3u64 {
        subscriber.wait_for_total(round * 1_000, 60).await;
        let attached = emulator.stats().snapshot().receivers_attached;
        emulator.detach_all();
        eventually("the receiver attached again", 30, || {
            emulator.stats().snapshot().receivers_attached > attached
        })
        .await;
    }
    within(180, "all accepted", emulator.all_accepted()).await;
    let m = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    // A detach is answered by a new attach, not a new connection.
    assert_eq!(stats.receivers_attached, 4, "{stats:?}");
    assert_eq!((stats.logins_ok, m.reconnects()), (1, 0), "{stats:?}");
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() == N as usize
    })
    .await;
    let duplicates = assert_all_arrived(&subscriber, N as usize);
    eprintln!(
        "duplicates after 3 forced detaches: {duplicates}; redelivered {}",
        stats.redelivered
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_never_connects_and_backs_off() {
    let broker = Mosquitto::start();
    let emulator = emulator(|c| c.count = 10).await;
    let setup = bridge_config(&emulator, broker.port, "not-the-secret", "");
    let bridge = Bridge::start(&setup.config).await.unwrap();
    eventually("first refusal", 30, || {
        emulator.stats().snapshot().logins_refused >= 1
    })
    .await;
    let first = Instant::now();
    eventually("fourth refusal", 30, || {
        emulator.stats().snapshot().logins_refused >= 4
    })
    .await;
    // Backoff 50ms doubling to 500ms, each delay at least half its step:
    // 3 further attempts wait at least 25 + 50 + 100 = 175 ms in total
    // (less 20 ms for when the first refusal was noticed). Without backoff
    // they would take a few TLS handshakes, well under that.
    assert!(
        first.elapsed() >= Duration::from_millis(155),
        "attempts came too fast: {:?}",
        first.elapsed()
    );
    let readiness = bridge.health().readiness();
    assert!(
        readiness
            .not_ready
            .iter()
            .any(|r| r.contains("source connection bridge-e2e")),
        "ready while the login is refused: {readiness:?}"
    );
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.logins_ok, stats.pushed), (0, 0));
    // Every refusal the emulator gave was counted, each retry a reconnect.
    assert_eq!(metrics.login_refused(), stats.logins_refused);
    assert_eq!(metrics.reconnects(), stats.logins_refused - 1);
    assert_eq!((metrics.connects(), metrics.received()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_broker_bounds_in_flight_by_max_in_flight() {
    const N: u64 = 3_000;
    const MAX: u64 = 50;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-5", "out/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let setup = bridge_config(
        &emulator,
        broker.port,
        SK,
        &format!("max_in_flight: {MAX}\n"),
    );
    let bridge = Bridge::start(&setup.config).await.unwrap();
    subscriber.wait_for_total(500, 60).await;
    broker.signal("STOP");
    // With the broker frozen, intake fills the in-flight slots and stops.
    eventually("in-flight slots full", 30, || {
        bridge.metrics().in_flight() == MAX
    })
    .await;
    let pushed = emulator.stats().snapshot().pushed;
    let accepted = emulator.stats().snapshot().accepted;
    assert!(
        pushed - accepted <= MAX,
        "{} unsettled at the source > {MAX}",
        pushed - accepted
    );
    broker.signal("CONT");
    within(180, "all accepted", emulator.all_accepted()).await;
    let peak = bridge.metrics().in_flight_peak();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert!(peak <= MAX, "in-flight peak {peak} > {MAX}");
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() == N as usize
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_stream_settles_in_flight_and_accepts_nothing_unconfirmed() {
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-6", "out/#").await;
    let emulator = emulator(|c| c.count = 0).await;
    let setup = bridge_config(&emulator, broker.port, SK, "");
    let bridge = Bridge::start(&setup.config).await.unwrap();
    subscriber.wait_for_total(2_000, 60).await;
    within(30, "shutdown", bridge.shutdown()).await;
    let emulator_ids = emulator.accepted_ids();
    let stats = emulator.shutdown().await;
    // The link stayed up while in-flight messages were confirmed and settled:
    // at most one credit window was still on the wire when it closed.
    assert!(stats.unsettled_at_disconnect <= 64, "{stats:?}");
    assert!(stats.accepted >= 2_000, "{stats:?}");
    // Nothing was accepted that the broker did not confirm: every accepted
    // id is at the subscriber (the same set, not just as many).
    let accepted = emulator_ids;
    assert_eq!(accepted.len() as u64, stats.accepted);
    eventually("every accepted id at the subscriber", 30, || {
        let seen = subscriber.counts();
        accepted
            .iter()
            .all(|id| seen.contains_key(&format!("out/{id}")))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_redelivered_while_the_first_is_in_flight_are_forwarded_once() {
    // The platform pushes an unsettled message again after its ack timeout,
    // while the first copy may still be in flight. With dedup on, the second
    // copy waits for the first and is then dropped, never published twice.
    // The precondition is made, not hoped for: Mosquitto is frozen before the
    // first push, so no PUBACK can come back, and the emulator pushes every
    // message twice; both copies of every id are then held at the bridge at
    // once, before Mosquitto is thawed.
    const N: u64 = 50;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-ack", "out/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.push_twice = true;
    })
    .await;
    emulator.hold_pushes(true);
    let setup = bridge_config(
        &emulator,
        broker.port,
        SK,
        "dedup: { ttl: 10m }\nmax_in_flight: 1000\n",
    );
    let bridge = Bridge::start(&setup.config).await.unwrap();
    eventually("the bridge attached", 60, || {
        emulator.stats().snapshot().receivers_attached == 1
    })
    .await;
    broker.signal("STOP");
    emulator.hold_pushes(false);
    // Nothing can be confirmed while Mosquitto is frozen: 2N unsettled at the
    // bridge means both copies of every id are there together.
    eventually(
        "both copies of every message held at the bridge",
        60,
        || bridge.metrics().in_flight() == 2 * N,
    )
    .await;
    let frozen = emulator.stats().snapshot();
    assert_eq!((frozen.pushed, frozen.accepted), (2 * N, 0), "{frozen:?}");
    assert_eq!(bridge.metrics().duplicates.get(), 0);
    broker.signal("CONT");
    within(120, "all accepted", emulator.all_accepted()).await;
    eventually("every second copy settled", 60, || {
        emulator.stats().snapshot().accepted_again == N
    })
    .await;
    subscriber.wait_for_total(N, 30).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert_eq!(
        (stats.redelivered, stats.accepted_again),
        (N, N),
        "{stats:?}"
    );
    assert_eq!(
        (stats.released, stats.rejected, stats.modified),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        metrics.duplicates.get(),
        N,
        "every second copy was dropped as a duplicate"
    );
    let counts = subscriber.counts();
    assert_eq!(counts.len() as u64, N);
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_drops_redelivered_duplicates_after_a_source_drop() {
    // Messages confirmed by the broker after their source connection went
    // away cannot be accepted; the source redelivers them, and dedup drops
    // every one instead of publishing it again. Made on purpose: Mosquitto is
    // frozen while N messages are in flight, the connection is cut, and the
    // redeliveries are held until every copy was confirmed.
    const N: u64 = 50;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "e2e-sub-7", "out/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(100);
    })
    .await;
    emulator.hold_pushes(true);
    let setup = bridge_config(
        &emulator,
        broker.port,
        SK,
        "dedup: { ttl: 10m, capacity: 100000 }\nmax_in_flight: 1000\n",
    );
    let bridge = Bridge::start(&setup.config).await.unwrap();
    eventually("the bridge attached", 60, || {
        emulator.stats().snapshot().receivers_attached == 1
    })
    .await;
    broker.signal("STOP");
    emulator.hold_pushes(false);
    eventually("every message in flight", 60, || {
        bridge.metrics().in_flight() == N
    })
    .await;
    emulator.hold_pushes(true);
    emulator.disconnect_all();
    eventually("the emulator saw every message unsettled", 60, || {
        emulator.stats().snapshot().unsettled_at_disconnect == N
    })
    .await;
    broker.signal("CONT");
    // Confirmed by Mosquitto, recorded by dedup, and not accepted: the link
    // they came on is gone.
    eventually(
        "every message confirmed after its link was gone",
        60,
        || bridge.metrics().unsettled() == N,
    )
    .await;
    assert_eq!(bridge.metrics().duplicates.get(), 0);
    emulator.hold_pushes(false);
    within(120, "all accepted", emulator.all_accepted()).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert_eq!(stats.redelivered, N, "{stats:?}");
    assert_eq!(
        metrics.duplicates.get(),
        N,
        "every redelivered copy was dropped as a duplicate"
    );
    eventually("every id at the subscriber", 60, || {
        subscriber.counts().len() == N as usize
    })
    .await;
    assert_eq!(
        assert_all_arrived(&subscriber, N as usize),
        0,
        "duplicates forwarded"
    );
}
