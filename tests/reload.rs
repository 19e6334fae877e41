//! Configuration reload (SIGHUP): new routes take over for new messages while
//! messages in flight finish on the routes they started with; an invalid
//! file or a change that needs a restart leaves the running configuration
//! in place. Real Mosquitto, the emulator as source, counted exactly.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use amqp_bridge::bridge::{Bridge, ReloadError};
use amqp_bridge::config::Config;
use common::bridge_process::BridgeProcess;
use common::mosquitto::{free_port, Mosquitto};
use common::subscriber::Subscriber;
use common::*;

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("reload.yaml"), |_| None).expect("test config parses")
}

/// One route that sends every message twice, to `{first}/ID` and `{second}/ID`.
fn paired(source: &str, port: u16, first: &str, second: &str) -> String {
    format!(
        r##"{source}sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: reload-out }}
routes:
  - name: pair-{first}
    match: {{ topic: "#" }}
    to:
      - {{ sink: m, topic: "{first}/{{messageId}}" }}
      - {{ sink: m, topic: "{second}/{{messageId}}" }}
"##
    )
}

/// Waits until `subscriber` has received `n` publishes.
async fn received(subscriber: &Subscriber, n: u64, what: &str) {
    let mut total = subscriber.total();
    within(60, what, total.wait_for(|t| *t >= n)).await.unwrap();
}

/// Message id → the topic prefixes it arrived under, each counted.
fn arrivals(counts: &HashMap<String, u32>) -> HashMap<String, Vec<(String, u32)>> {
    let mut by_id: HashMap<String, Vec<(String, u32)>> = HashMap::new();
    for (topic, n) in counts {
        let (prefix, id) = topic.split_once('/').expect("prefix/id");
        by_id
            .entry(id.to_string())
            .or_default()
            .push((prefix.to_string(), *n));
    }
    for prefixes in by_id.values_mut() {
        prefixes.sort();
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_replaced_under_load_lose_nothing_and_never_mix() {
    const N: u64 = 3_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "reload-sub", "#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_000;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-reload", "");
    let old = parse(&paired(&source, broker.port, "a1", "a2"));
    let new = parse(&paired(&source, broker.port, "b1", "b2"));

    let bridge = Bridge::start(&old).await.unwrap();
    received(&subscriber, 2 * N / 3, "a third of the copies").await;
    let source_before = source_state(&bridge, &emulator);
    bridge.reload(&new).expect("a routes-only change reloads");
    within(120, "all accepted", emulator.all_accepted()).await;
    // Copies of messages in flight at the reload finish on the old routes.
    subscriber.wait_for_total(2 * N, 60).await;
    assert_source_left_alone(source_before, source_state(&bridge, &emulator));
    let metrics = bridge.metrics().encode();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));

    let by_id = arrivals(&subscriber.counts());
    assert_eq!(by_id.len() as u64, N, "every message arrived");
    let (mut old_routes, mut new_routes) = (0, 0);
    for (id, prefixes) in &by_id {
        let names: Vec<&str> = prefixes.iter().map(|(p, _)| p.as_str()).collect();
        match names.as_slice() {
            ["a1", "a2"] => old_routes += 1,
            ["b1", "b2"] => new_routes += 1,
            other => panic!("message {id} forwarded by a mix of routes: {other:?}"),
        }
        assert!(
            prefixes.iter().all(|(_, n)| *n == 1),
            "message {id} arrived more than once: {prefixes:?}"
        );
    }
    eprintln!("old routes {old_routes}, new routes {new_routes}");
    assert!(old_routes >= N / 3, "{old_routes} on the old routes");
    assert!(new_routes > 0, "no message took the new routes");
    assert!(
        metrics.contains("amqp_bridge_config_reloads_total{outcome=\"applied\"} 1\n"),
        "{metrics}"
    );
    // Each route's matched counter is the number of messages the subscriber
    // saw under its topics (a reload creates the new route's series at 0).
    let matched = common::metrics::Scrape::parse(&metrics);
    let matched = |route| matched.count("amqp_bridge_route_matched_total", &[("route", route)]);
    assert_eq!(
        (matched("pair-a1"), matched("pair-b1")),
        (old_routes, new_routes),
        "matched per route"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_needs_a_restart_is_refused_and_the_old_routes_stay() {
    const N: u64 = 200;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "reload-refused-sub", "#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-reload-refused", "");
    let old = parse(&paired(&source, broker.port, "a1", "a2"));
    // New routes, but also a different dedup window and in-flight limit.
    let new = parse(&format!(
        "{}max_in_flight: 64\ndedup: {{ ttl: 1m }}\n",
        paired(&source, broker.port, "b1", "b2")
    ));
    let bridge = Bridge::start(&old).await.unwrap();
    match bridge.reload(&new) {
        Err(error @ ReloadError::NeedsRestart(_)) => {
            let text = error.to_string();
            assert!(
                text.contains("dedup") && text.contains("max_in_flight"),
                "{text}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A changed MQTT sink that keeps its client id: refused, or the old and
    // the new client would disconnect each other.
    let same_id = parse(&paired(&source, broker.port, "b1", "b2").replace(
        "client_id: reload-out",
        "client_id: reload-out, keep_alive: 7s",
    ));
    match bridge.reload(&same_id) {
        Err(error @ ReloadError::SameMqttClientId { .. }) => {
            assert!(error.to_string().contains("reload-out"), "{error}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    within(60, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(2 * N, 30).await;
    let metrics = bridge.metrics().encode();
    bridge.shutdown().await;
    emulator.shutdown().await;
    let prefixes: BTreeSet<String> = arrivals(&subscriber.counts())
        .into_values()
        .flatten()
        .map(|(prefix, _)| prefix)
        .collect();
    assert_eq!(
        prefixes,
        BTreeSet::from(["a1".to_string(), "a2".to_string()])
    );
    assert!(metrics.contains("amqp_bridge_config_reloads_total{outcome=\"refused\"} 2\n"));
    assert!(metrics.contains("amqp_bridge_config_last_reload_successful 0\n"));
}

/// A sink removed by a reload while its broker is frozen keeps the copies it
/// holds until they are confirmed, and is closed after; a sink added takes
/// copies from then on; a sink whose block did not change keeps its
/// connection (the broker sees no second connect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_added_and_removed_by_a_reload() {
    sinks_added_and_removed(false).await;
}

/// As above, but the sink is removed by the second of two reloads (the first
/// only renames the route): the messages that started before the first one
/// still hold copies on it, and it must wait for them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_removed_two_reloads_later_waits_for_the_oldest_messages() {
    sinks_added_and_removed(true).await;
}

async fn sinks_added_and_removed(two_reloads: bool) {
    const N: u64 = 600;
    const MAX_IN_FLIGHT: u64 = 50;
    let kept_broker = Mosquitto::start();
    let removed_broker = Mosquitto::start();
    let kept_sub = Subscriber::start(kept_broker.port, "reload-kept-sub", "#").await;
    let removed_sub = Subscriber::start(removed_broker.port, "reload-removed-sub", "#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-reload-sinks", "");
    // Both sinks, one route named `route` copying to each under `a/`.
    let to_both = |route: &str| {
        parse(&format!(
            r##"{source}max_in_flight: {MAX_IN_FLIGHT}
sinks:
  kept: {{ kind: mqtt, url: "mqtt://127.0.0.1:{kept}", client_id: reload-kept }}
  removed: {{ kind: mqtt, url: "mqtt://127.0.0.1:{removed}", client_id: reload-removed }}
routes:
  - {{ name: {route}, match: {{ topic: "#" }}, to: [ {{ sink: kept, topic: "a/{{messageId}}" }}, {{ sink: removed, topic: "a/{{messageId}}" }} ] }}
"##,
            kept = kept_broker.port,
            removed = removed_broker.port,
        ))
    };
    let old = to_both("old");
    let renamed = to_both("renamed");
    let new = parse(&format!(
        r##"{source}max_in_flight: {MAX_IN_FLIGHT}
sinks:
  kept: {{ kind: mqtt, url: "mqtt://127.0.0.1:{kept}", client_id: reload-kept }}
  added: {{ kind: mqtt, url: "mqtt://127.0.0.1:{kept}", client_id: reload-added }}
routes:
  - {{ name: new, match: {{ topic: "#" }}, to: [ {{ sink: kept, topic: "b/{{messageId}}" }}, {{ sink: added, topic: "c/{{messageId}}" }} ] }}
"##,
        kept = kept_broker.port,
    ));

    let bridge = Bridge::start(&old).await.unwrap();
    received(&removed_sub, 100, "100 copies at the removed sink").await;
    removed_broker.signal("STOP");
    // Every slot is taken by a message waiting for the frozen broker.
    eventually("in flight at max_in_flight", 60, || {
        bridge.metrics().in_flight() == MAX_IN_FLIGHT
    })
    .await;
    // Everything settled or in flight now started on the old plan. The two
    // sets are disjoint when nothing was settled between the reads (a copy
    // the subscriber already saw can still be in flight, its PUBACK unread
    // when Mosquitto froze, so "100 seen + 50 in flight" is no bound).
    let started_on_old_plan = loop {
        let settled = bridge.metrics().accepted();
        let in_flight = bridge.metrics().in_flight();
        if bridge.metrics().accepted() == settled {
            break settled + in_flight;
        }
    };
    let source_before = source_state(&bridge, &emulator);
    if two_reloads {
        bridge.reload(&renamed).expect("a route rename reloads");
    }
    bridge.reload(&new).expect("a sink change reloads");
    removed_broker.signal("CONT");
    within(120, "all accepted", emulator.all_accepted()).await;
    assert_source_left_alone(source_before, source_state(&bridge, &emulator));
    let metrics = bridge.metrics().encode();
    let connects = kept_broker
        .connects
        .load(std::sync::atomic::Ordering::Relaxed);
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));

    let kept = arrivals(&kept_sub.counts());
    let removed = arrivals(&removed_sub.counts());
    let (mut old_plan, mut new_plan) = (0u64, 0u64);
    for (id, prefixes) in &kept {
        let names: Vec<&str> = prefixes.iter().map(|(p, _)| p.as_str()).collect();
        match names.as_slice() {
            ["a"] => {
                old_plan += 1;
                assert_eq!(removed.get(id), Some(&vec![("a".to_string(), 1)]), "{id}");
            }
            ["b", "c"] => {
                new_plan += 1;
                assert!(!removed.contains_key(id), "{id} went to the removed sink");
            }
            other => panic!("message {id}: {other:?}"),
        }
        assert!(prefixes.iter().all(|(_, n)| *n == 1), "{id}: {prefixes:?}");
    }
    eprintln!(
        "old plan {old_plan} ({started_on_old_plan} started on it before the reload), new plan {new_plan}"
    );
    assert_eq!(old_plan + new_plan, N, "every message arrived");
    assert_eq!(removed.len() as u64, old_plan, "the removed sink's copies");
    assert!(
        old_plan >= started_on_old_plan.max(100),
        "{old_plan} on the old plan, {started_on_old_plan} started on it before the reload"
    );
    assert!(new_plan > 0);
    // The kept sink's connection and the subscriber's, then the added sink's.
    assert_eq!(connects, 3, "the kept sink reconnected");
    assert!(metrics.contains("amqp_bridge_sink_ready{sink=\"added\",kind=\"mqtt\"} 1\n"));
    assert!(!metrics.contains("amqp_bridge_sink_ready{sink=\"removed\""));
}

/// A changed source block: the old connection stops granting credit,
/// settles what it holds and closes; then the bridge connects with the new
/// settings. Nothing is lost; what arrived on credit granted before the stop
/// is released (as at shutdown) and redelivered, at most one credit window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_source_reconnects_after_settling_what_it_holds() {
    const N: u64 = 3_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "reload-source-sub", "#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_000;
        c.redeliver_after = Duration::from_millis(500);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-source-a", "");
    let old = parse(&paired(&source, broker.port, "a1", "a2"));
    // A new client id and credit; routes as they were.
    let new = parse(&paired(&source, broker.port, "a1", "a2").replace(
        "client_id: bridge-source-a",
        "client_id: bridge-source-b\n  credit: 16",
    ));
    assert_ne!(old.source, new.source);

    let bridge = Bridge::start(&old).await.unwrap();
    received(&subscriber, 2 * N / 3, "a third of the copies").await;
    let logins = emulator.stats().snapshot().logins_ok;
    bridge.reload(&new).expect("a source change reloads");
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(2 * N, 60).await;
    let metrics = bridge.metrics().encode();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    // Only late arrivals were released: every redelivery is one of them,
    // and there are at most a credit window (64) of them.
    assert_eq!(stats.redelivered, stats.released, "{stats:?}");
    assert!(stats.released <= 64, "{stats:?}");
    assert_eq!(stats.unsettled_at_disconnect, 0, "{stats:?}");
    assert_eq!(stats.logins_ok, logins + 1, "one new login");
    let by_id = arrivals(&subscriber.counts());
    assert_eq!(by_id.len() as u64, N);
    assert!(by_id
        .values()
        .all(|p| p == &vec![("a1".to_string(), 1), ("a2".to_string(), 1)]));
    assert!(
        metrics.contains("connection=\"bridge-source-b\""),
        "{metrics}"
    );
    assert!(
        !metrics.contains("connection=\"bridge-source-a\""),
        "{metrics}"
    );
}

/// The real process: SIGHUP with a broken file is refused with its
/// file:line:column and the bridge keeps running; SIGHUP with a fixed file
/// (new routes) is applied; the process ends only on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_an_invalid_file_changes_nothing() {
    let broker = Mosquitto::start();
    let new_route = Subscriber::start(broker.port, "reload-sighup-sub", "b1/#").await;
    let emulator = emulator(|c| c.count = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let at: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-sighup", "").replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{at}' }}"),
    );
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, paired(&source, broker.port, "a1", "a2")).unwrap();
    let mut bridge = BridgeProcess::start_logging(&path, at, "info");
    bridge.ready(60).await;

    // Broken: a route without `to`, at a known line.
    let broken = paired(&source, broker.port, "b1", "b2").replace("    to:\n", "    tx:\n");
    let line = broken
        .lines()
        .position(|l| l.contains("tx:"))
        .expect("the broken key")
        + 1;
    std::fs::write(&path, &broken).unwrap();
    signal(bridge.pid(), "HUP");
    eventually("the refusal logged", 30, || {
        bridge
            .log
            .lock()
            .unwrap()
            .contains("configuration reload refused")
    })
    .await;
    let log = bridge.log.lock().unwrap().clone();
    let refusal = log
        .lines()
        .find(|l| l.contains("configuration reload refused"))
        .unwrap();
    assert!(
        refusal.contains(&format!("bridge.yaml:{line}:")),
        "no file:line in {refusal}"
    );
    let scrape = bridge.scrape().await;
    assert!(scrape.contains("amqp_bridge_config_last_reload_successful 0\n"));

    std::fs::write(&path, paired(&source, broker.port, "b1", "b2")).unwrap();
    signal(bridge.pid(), "HUP");
    eventually("the reload logged", 30, || {
        bridge
            .log
            .lock()
            .unwrap()
            .contains("configuration reloaded")
    })
    .await;
    // The emulator pushes without end (count 0): the new route is in use,
    // copies arrive under its topic and its counter (created at 0 by the
    // reload) counts them.
    new_route.wait_for_total(1, 30).await;
    let scrape = bridge.scrape().await;
    assert!(scrape.contains("amqp_bridge_config_reloads_total{outcome=\"applied\"} 1\n"));
    assert!(scrape.contains("amqp_bridge_config_reloads_total{outcome=\"refused\"} 1\n"));
    let matched = common::metrics::Scrape::parse(&scrape)
        .count("amqp_bridge_route_matched_total", &[("route", "pair-b1")]);
    assert!(matched > 0, "{scrape}");
    bridge.ready(10).await;
    bridge.stop(Duration::from_secs(10));
    emulator.shutdown().await;
}

/// What a reload of routes or sinks must leave alone at the source:
/// (emulator logins, bridge connects, bridge reconnects, emulator
/// redeliveries, receiver links attached).
fn source_state(bridge: &Bridge, emulator: &amqp_bridge::emulator::Emulator) -> [u64; 5] {
    let stats = emulator.stats().snapshot();
    let metrics = bridge.metrics();
    [
        stats.logins_ok,
        metrics.connects(),
        metrics.reconnects(),
        stats.redelivered,
        stats.receivers_attached,
    ]
}

/// The source state before a routes or sinks reload and after the traffic
/// that followed it: one login, one connection, one attach, never a
/// reconnect or a redelivery, before and after alike.
fn assert_source_left_alone(before: [u64; 5], after: [u64; 5]) {
    let names = "[logins, connects, reconnects, redelivered, attached]";
    assert_eq!(before, [1, 1, 0, 0, 1], "before the reload: {names}");
    assert_eq!(after, before, "across the reload: {names}");
}
