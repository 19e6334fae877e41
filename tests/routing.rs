//! Fan-out to several sinks and dead letters, end to end with the emulator,
//! a real Mosquitto and real files.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::mosquitto::Mosquitto;
use common::subscriber::Subscriber;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_to_mqtt_and_file_and_dead_letter_template_failures() {
    const N: u64 = 600;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "routing-sub", "copy/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let copies = dir.path().join("copies.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-routing", "");
    let text = format!(
        r##"{source}sinks:
  mqtt: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt}", client_id: routing-out }}
  copies: {{ kind: file, path: {copies} }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - name: everything
    match: {{ topic: "#" }}
    to:
      - {{ sink: mqtt, topic: "copy/{{messageId}}" }}
      - {{ sink: copies }}
  - name: by-region
    match: {{ topic: "/+/+/thing/event/property/post" }}
    to:
      - {{ sink: mqtt, topic: "region/{{prop.region}}/{{deviceName}}" }}
dead_letter: dead
"##,
        mqtt = broker.port,
        copies = copies.display(),
        dead = dead.display(),
    );
    let config = Config::parse(&text, Path::new("routing.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(N, 30).await;
    let forwarded = bridge.metrics().forwarded();
    let dead_lettered = bridge.metrics().dead_lettered();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.outstanding, stats.released),
        (N, 0, 0)
    );
    // Forwarded counts the confirmed target copies only, not dead letters.
    assert_eq!(forwarded, 2 * N, "one MQTT and one file copy each");

    // Every message once on MQTT and once in the copies file.
    let counts = subscriber.counts();
    assert_eq!(counts.len(), N as usize);
    assert!(counts.values().all(|c| *c == 1));
    let copy_lines = read_jsonl(&copies);
    assert_eq!(copy_lines.len(), N as usize);
    let ids: HashMap<_, _> = copy_lines
        .iter()
        .map(|l| (l["messageId"].as_str().unwrap().to_string(), l))
        .collect();
    assert_eq!(ids.len(), N as usize);
    for topic in counts.keys() {
        assert!(
            ids.contains_key(topic.trim_start_matches("copy/")),
            "{topic} not in file"
        );
    }
    let first = &copy_lines[0];
    assert!(
        first["body"].as_str().unwrap().starts_with('{'),
        "body kept as text: {first}"
    );
    assert!(first["properties"]["generateTime"].is_string());

    // The property posts could not fill {prop.region}: dead-lettered with the reason.
    let property_posts = copy_lines
        .iter()
        .filter(|l| {
            l["topic"]
                .as_str()
                .unwrap()
                .ends_with("/thing/event/property/post")
        })
        .count();
    assert!(property_posts > 0);
    let dead_lines = read_jsonl(&dead);
    assert_eq!(dead_lines.len(), property_posts);
    assert_eq!(dead_lettered as usize, property_posts);
    for line in &dead_lines {
        assert_eq!(line["failure"]["route"], "by-region");
        assert_eq!(line["failure"]["sink"], "mqtt");
        let error = line["failure"]["error"].as_str().unwrap();
        assert!(
            error.contains("region/{prop.region}/{deviceName}") && error.contains("`region`"),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_status_messages_are_filtered_per_device() {
    let dir = tempfile::tempdir().unwrap();
    // Arrival order d1: 03, 01, 02, 04; d2: 02, 01. One message in flight at a
    // time (credit 1, max_in_flight 1), so arrival order is processing order.
    let messages = dir.path().join("status.jsonl");
    let lines = [
        status("d1", 3, "offline"),
        status("d1", 1, "online"),
        status("d2", 2, "online"),
        status("d1", 2, "offline"),
        status("d2", 1, "offline"),
        status("d1", 4, "online"),
    ];
    std::fs::write(&messages, lines.join("\n")).unwrap();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "status-sub", "status/#").await;
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let source = source_yaml(&emulator, dir.path(), "bridge-status", "  credit: 1\n");
    let text = format!(
        r##"{source}sinks:
  mqtt: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt}", client_id: status-out }}
routes:
  - name: status
    match: {{ topic: "/as/mqtt/status/#" }}
    order_by: time
    to:
      - {{ sink: mqtt, topic: "status/{{deviceName}}/{{json.utcTime}}" }}
max_in_flight: 1
"##,
        mqtt = broker.port,
    );
    let config = Config::parse(&text, Path::new("status.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(3, 30).await;
    let stale = bridge.metrics().stale_status.get();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (6, 0));
    assert_eq!(
        stale, 3,
        "d1@01, d1@02 and d2@01 are older than what was forwarded"
    );
    let mut forwarded: Vec<_> = subscriber.counts().into_keys().collect();
    forwarded.sort();
    assert_eq!(
        forwarded,
        [
            "status/d1/2026-11-22T00:00:03.000Z",
            "status/d1/2026-11-22T00:00:04.000Z",
            "status/d2/2026-11-22T00:00:02.000Z"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_sink_holds_its_messages_while_the_other_keeps_receiving() {
    const N: u64 = 2_000;
    let healthy = Mosquitto::start();
    // Debug logging: the broker logs each PUBLISH it received (see below).
    let mut broken = Mosquitto::start_with(|_| "log_type debug\n".to_string());
    let healthy_sub = Subscriber::start(healthy.port, "fanout-a", "a/#").await;
    let broken_sub = Subscriber::start(broken.port, "fanout-b", "b/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = std::time::Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-fanout", "");
    let text = format!(
        r##"{source}sinks:
  a: {{ kind: mqtt, url: "mqtt://127.0.0.1:{a}", client_id: fanout-out-a }}
  b: {{ kind: mqtt, url: "mqtt://127.0.0.1:{b}", client_id: fanout-out-b }}
routes:
  - name: both
    match: {{ topic: "#" }}
    to:
      - {{ sink: a, topic: "a/{{messageId}}" }}
      - {{ sink: b, topic: "b/{{messageId}}" }}
max_in_flight: 200
retry: {{ initial: 50ms, max: 500ms }}
"##,
        a = healthy.port,
        b = broken.port,
    );
    let config = Config::parse(&text, Path::new("fanout.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    broken_sub.wait_for_total(300, 60).await;
    broken.stop();
    let retries = || bridge.metrics().retries();
    let retries_at_stop = retries();
    // Sink `b` fails and is retried, while `a` confirms the copies in flight:
    // `a` ends up with messages `b` does not have.
    eventually("sink b failing while sink a receives", 30, || {
        retries() >= retries_at_stop + 10 && healthy_sub.counts().len() > broken_sub.counts().len()
    })
    .await;
    // No message is accepted at the source without its `b` copy confirmed:
    // every id accepted so far had its `b` copy received by the broker
    // before it stopped. Its log says which (a PUBLISH is logged when it is
    // received, before the PUBACK), and no `b` copy can join that log while
    // it is down; the wait is only for the log reader to reach its end.
    assert!(!emulator.accepted_ids().is_empty(), "nothing was accepted");
    eventually(
        "every id accepted with sink b down to have its `b` copy in the broker's log",
        30,
        || {
            let accepted = emulator.accepted_ids();
            let received = broken.received.lock().unwrap();
            accepted
                .iter()
                .all(|id| received.contains(&format!("b/{id}")))
        },
    )
    .await;
    broken.start_again();
    within(180, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    for (name, sub) in [("a", &healthy_sub), ("b", &broken_sub)] {
        let arrived = async {
            let mut total = sub.total();
            let _ = total.wait_for(|_| sub.counts().len() == N as usize).await;
        };
        let ok = tokio::time::timeout(std::time::Duration::from_secs(60), arrived)
            .await
            .is_ok();
        assert!(ok, "sink {name}: {} of {N} ids", sub.counts().len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_missing_message_ids_are_never_taken_for_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    // Six messages without a usable id (empty, blank, missing) between two
    // with one; dedup on. Each must be forwarded, none dropped as a duplicate.
    let mut lines = Vec::new();
    for (i, id) in ["\"\"", "\" \"", "null", "\"\"", "null", "\"\""]
        .iter()
        .enumerate()
    {
        lines.push(format!(
            r#"{{"topic": "/pk/dn{i}/thing/event/property/post", "body": "m{i}", "messageId": {id}}}"#
        ));
    }
    lines.push(r#"{"topic": "/pk/dnA/thing/event/property/post", "body": "a", "messageId": "1000000000000000001"}"#.into());
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(&messages, lines.join("\n")).unwrap();
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let out = dir.path().join("out.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-empty-ids", "");
    let text = format!(
        r##"{source}sinks:
  out: {{ kind: file, path: {out} }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: out }} ] }}
dedup: {{ ttl: 10m }}
"##,
        out = out.display(),
    );
    let config = Config::parse(&text, Path::new("empty-ids.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    let duplicates = bridge.metrics().duplicates.get();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (7, 0));
    assert_eq!(
        duplicates, 0,
        "a message without an id was dropped as a duplicate"
    );
    let bodies: Vec<String> = read_jsonl(&out)
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = bodies.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["a", "m0", "m1", "m2", "m3", "m4", "m5"],
        "{bodies:?}"
    );
}

/// One platform status message (replay format) of device `dn` at second `sec`.
fn status(dn: &str, sec: u32, state: &str) -> String {
    format!(
        r#"{{"topic":"/as/mqtt/status/a1P/{dn}","body":{{"status":"{state}","productKey":"a1P","deviceName":"{dn}","utcTime":"2026-11-22T00:00:{sec:02}.000Z","time":"2026-11-22 08:00:{sec:02}.000"}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_newer_status_does_not_hide_an_older_one() {
    // The newer status A (t2) is refused by the broker (MQTT 5, ACL) and
    // dead-lettered; the older B (t1) arrives after it. B was never
    // overtaken by a delivered status, so it must be tried and (refused
    // too) dead-lettered — never dropped as stale and accepted unsent.
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("status.jsonl");
    std::fs::write(
        &messages,
        [status("d1", 2, "offline"), status("d1", 1, "online")].join("\n"),
    )
    .unwrap();
    let broker = Mosquitto::start_with(|dir| {
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic readwrite allowed/#\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
        format!("acl_file {}", acl.display())
    });
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-status-dl", "  credit: 1\n");
    let text = format!(
        r##"{source}sinks:
  mqtt: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{mqtt}", client_id: status-dl-out }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - name: status
    match: {{ topic: "/as/mqtt/status/#" }}
    order_by: time
    to:
      - {{ sink: mqtt, topic: "denied/{{deviceName}}", qos: 1 }}
dead_letter: dead
max_in_flight: 1
"##,
        mqtt = broker.port,
        dead = dead.display(),
    );
    let config = Config::parse(&text, Path::new("status-dl.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    let stale = bridge.metrics().stale_status.get();
    let dead_lettered = bridge.metrics().dead_lettered();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (2, 0));
    assert_eq!(stale, 0, "B was dropped as stale behind an undelivered A");
    assert_eq!(dead_lettered, 2);
    let times: Vec<String> = read_jsonl(&dead)
        .iter()
        .map(|l| {
            let body: serde_json::Value =
                serde_json::from_str(l["body"].as_str().unwrap()).unwrap();
            body["utcTime"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        times,
        ["2026-11-22T00:00:02.000Z", "2026-11-22T00:00:01.000Z"],
        "both statuses dead-lettered, in arrival order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_many_in_flight_the_retained_status_is_each_devices_newest() {
    // Many devices, each with statuses in shuffled order, and 64 messages in
    // flight: statuses of one device go one at a time, and none older than a
    // delivered one is sent, so the retained status is always the newest.
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("status.jsonl");
    let mut lines = Vec::new();
    for round in 0..6u32 {
        for d in 0..20 {
            // Seconds 1..=6 in an order that differs per device.
            let sec = (round * 7 + d * 3) % 6 + 1;
            lines.push(status(
                &format!("d{d}"),
                sec,
                if sec % 2 == 0 { "offline" } else { "online" },
            ));
        }
    }
    std::fs::write(&messages, lines.join("\n")).unwrap();
    let broker = Mosquitto::start();
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let source = source_yaml(&emulator, dir.path(), "bridge-status-many", "");
    let text = format!(
        r##"{source}sinks:
  mqtt: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt}", client_id: status-many-out }}
routes:
  - name: status
    match: {{ topic: "/as/mqtt/status/#" }}
    order_by: time
    to:
      - {{ sink: mqtt, topic: "status/{{deviceName}}", qos: 1, retain: true }}
max_in_flight: 64
"##,
        mqtt = broker.port,
    );
    let config = Config::parse(&text, Path::new("status-many.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (120, 0));
    // A fresh subscriber gets each device's retained status at once.
    let port = broker.port;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "status/#"])
            .args(["-C", "20", "-W", "10", "-F", "%t %p"])
            .output()
            .expect("mosquitto_sub (./scripts/install-test-deps.sh installs it)")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut newest = std::collections::BTreeMap::new();
    for line in text.lines() {
        let (topic, payload) = line.split_once(' ').unwrap();
        let body: serde_json::Value = serde_json::from_str(payload).unwrap();
        newest.insert(
            topic.to_string(),
            body["utcTime"].as_str().unwrap().to_string(),
        );
    }
    assert_eq!(newest.len(), 20, "one retained status per device: {text}");
    for (topic, time) in &newest {
        assert_eq!(
            time, "2026-11-22T00:00:06.000Z",
            "{topic} retained an older status"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_sequence_and_list_bodies_are_forwarded_as_text_or_rejected_and_counted() {
    // Other AMQP 1.0 sources may send amqp-value or amqp-sequence sections.
    // A string value is forwarded as its text; a list or a sequence has no
    // byte form a consumer could read: rejected at the source and counted,
    // never forwarded as debug text.
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"topic": "/pk/d1/thing/event/property/post", "body": "as-data", "section": "data"}"#,
        r#"{"topic": "/pk/d1/thing/event/property/post", "body": "as-value", "section": "value"}"#,
        r#"{"topic": "/pk/d1/thing/event/property/post", "body": "in-a-list", "section": "list"}"#,
        r#"{"topic": "/pk/d1/thing/event/property/post", "body": "in-a-sequence", "section": "sequence"}"#,
    ];
    let messages = dir.path().join("messages.jsonl");
    std::fs::write(&messages, lines.join("\n")).unwrap();
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let out = dir.path().join("out.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-sections", "");
    let text = format!(
        "{source}sinks:\n  out: {{ kind: file, path: {out} }}\n\
         routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: out }} ] }}\n",
        out = out.display(),
    );
    let config = Config::parse(&text, Path::new("sections.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    eventually("two accepted and two rejected", 30, || {
        let s = emulator.stats().snapshot();
        s.accepted == 2 && s.rejected == 2
    })
    .await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    emulator.shutdown().await;
    assert_eq!((metrics.undecodable(), metrics.rejected()), (2, 2));
    let mut bodies: Vec<String> = read_jsonl(&out)
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["as-data", "as-value"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_messages_get_the_configured_outcome_without_a_dead_letter_sink() {
    // A template a message cannot fill is a permanent failure. With no
    // dead-letter sink the message gets `undeliverable_outcome`; the default
    // (released) is covered by the pipeline's tests of the dead-letter path.
    for (outcome, rejected, modified) in [("rejected", 1, 0), ("modified", 0, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"topic": "/pk/d1/thing/event/property/post", "body": "fills", "properties": {"region": "eu"}}"#,
            r#"{"topic": "/pk/d2/thing/event/property/post", "body": "cannot fill"}"#,
        ];
        let messages = dir.path().join("messages.jsonl");
        std::fs::write(&messages, lines.join("\n")).unwrap();
        // No redelivery within the test: each outcome is given exactly once.
        let emulator = emulator(|c| {
            c.messages = Some(messages.clone());
            c.redeliver_after = Duration::from_secs(600);
        })
        .await;
        let out = dir.path().join("out.jsonl");
        let source = source_yaml(
            &emulator,
            dir.path(),
            &format!("bridge-{outcome}"),
            &format!("  undeliverable_outcome: {outcome}\n"),
        );
        let text = format!(
            "{source}sinks:\n  out: {{ kind: file, path: {out} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: out, topic: \"r/{{prop.region}}\" }} ] }}\n",
            out = out.display(),
        );
        let config = Config::parse(&text, Path::new("undeliverable.yaml"), |_| None).unwrap();
        let bridge = Bridge::start(&config).await.unwrap();
        eventually(&format!("one accepted and one {outcome}"), 30, || {
            let s = emulator.stats().snapshot();
            s.accepted == 1 && s.rejected + s.modified >= 1
        })
        .await;
        let metrics = bridge.metrics().clone();
        bridge.shutdown().await;
        let stats = emulator.shutdown().await;
        assert_eq!(
            (
                stats.accepted,
                stats.rejected,
                stats.modified,
                stats.released
            ),
            (1, rejected, modified, 0),
            "{outcome}: {stats:?}"
        );
        assert_eq!(
            (
                metrics.accepted(),
                metrics.rejected(),
                metrics.modified(),
                metrics.released()
            ),
            (1, rejected, modified, 0),
            "{outcome}"
        );
        assert_eq!(metrics.undecodable(), 0);
        let bodies: Vec<String> = read_jsonl(&out)
            .iter()
            .map(|l| l["body"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(bodies, ["fills"], "{outcome}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_running_past_max_elapsed_release_even_with_undeliverable_rejected() {
    // `undeliverable_outcome` is for messages that cannot be delivered, not
    // for a broker that is down: a copy still failing after
    // retry.max_elapsed (no dead-letter sink) is released for redelivery.
    let mut broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "routing-sub-gaveup", "g/#").await;
    let emulator = emulator(|c| {
        c.count = 200;
        c.redeliver_after = Duration::from_millis(200);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(
        &emulator,
        dir.path(),
        "bridge-gaveup",
        "  undeliverable_outcome: rejected\n",
    );
    let text = format!(
        "{source}sinks:\n  m: {{ kind: mqtt, url: \"mqtt://127.0.0.1:{port}\", client_id: gaveup-out }}\n\
         routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: \"g/{{messageId}}\", qos: 1 }} ] }}\n\
         retry: {{ initial: 20ms, max: 50ms, max_elapsed: 300ms }}\n",
        port = broker.port,
    );
    let config = Config::parse(&text, Path::new("gaveup.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    subscriber.wait_for_total(20, 30).await;
    broker.kill();
    eventually("copies given up and released", 30, || {
        emulator.stats().snapshot().released >= 1
    })
    .await;
    broker.start_again();
    within(120, "all accepted", emulator.all_accepted()).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.rejected, stats.modified),
        (200, 0, 0),
        "{stats:?}"
    );
    assert_eq!((metrics.rejected(), metrics.modified()), (0, 0));
    assert!(metrics.released() >= 1);
}

/// The null sink (`kind: blackhole`; benchmarks and tests, cargo feature `blackhole-sink`) confirms
/// every copy: each message accepted, counted as forwarded, none dead.
#[cfg(feature = "blackhole-sink")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_null_sink_confirms_every_copy() {
    const N: u64 = 500;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-null", "");
    let config = Config::parse(
        &format!(
            "{source}sinks:\n  none: {{ kind: blackhole }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: none }} ] }}\n"
        ),
        Path::new("null.yaml"),
        |_| None,
    )
    .unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    let forwarded = bridge.metrics().forwarded();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert_eq!(forwarded, N);
}

/// A route with a JSON predicate takes exactly the messages whose body has
/// the fields and values it names, end to end (the negative cases alone, as
/// in bad_input.rs, would pass with a predicate that never holds); the
/// others fall through to the next route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_predicate_routes_exactly_the_bodies_it_matches() {
    use serde_json::json;
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    let topic = "/pk/dn/thing/event/property/post";
    let mut lines = Vec::new();
    let mut hot = BTreeSet::new();
    for i in 0..60u32 {
        let kind = if i % 2 == 0 { "t" } else { "u" };
        let value = 30 + i % 4;
        let id = format!("json-{i:02}");
        if kind == "t" && value <= 31 {
            hot.insert(id.clone());
        }
        lines.push(json!({
            "messageId": id, "topic": topic,
            "body": {"kind": kind, "items": {"T": {"value": value}}}
        }));
    }
    // Bodies it must pass over: not JSON, a field missing, `kind` not a
    // scalar, an array.
    for (id, body) in [
        ("not-json", json!("kind: t")),
        ("no-items", json!({"kind": "t"})),
        (
            "kind-object",
            json!({"kind": {"t": 1}, "items": {"T": {"value": 30}}}),
        ),
        (
            "array",
            json!([{"kind": "t", "items": {"T": {"value": 30}}}]),
        ),
    ] {
        lines.push(json!({"messageId": id, "topic": topic, "body": body}));
    }
    let all: BTreeSet<String> = lines
        .iter()
        .map(|l| l["messageId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((hot.len(), all.len()), (15, 64), "test bug");
    let messages = messages_file_lines(dir.path(), &lines);
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "json-sub", "#").await;
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let source = source_yaml(&emulator, dir.path(), "bridge-json", "");
    let text = format!(
        r##"{source}sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: json-out }}
routes:
  - name: hot
    final: true
    match: {{ topic: "#", json: {{ kind: t, items.T.value: [30, 31] }} }}
    to: [ {{ sink: m, topic: "hot/{{messageId}}" }} ]
  - name: rest
    match: {{ topic: "#" }}
    to: [ {{ sink: m, topic: "rest/{{messageId}}" }} ]
"##,
        port = broker.port,
    );
    let config = Config::parse(&text, Path::new("json.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(all.len() as u64, 30).await;
    let metrics = common::metrics::Scrape::parse(&bridge.metrics().encode());
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (64, 0), "{stats:?}");
    let counts = subscriber.counts();
    assert!(counts.values().all(|n| *n == 1), "a copy arrived twice");
    let under = |prefix: &str| -> BTreeSet<String> {
        counts
            .keys()
            .filter_map(|t| t.strip_prefix(prefix).map(str::to_string))
            .collect()
    };
    assert_eq!(under("hot/"), hot, "the messages the predicate matched");
    let rest: BTreeSet<String> = all.difference(&hot).cloned().collect();
    assert_eq!(under("rest/"), rest, "the messages it passed over");
    assert_eq!(
        metrics.count("amqp_bridge_route_matched_total", &[("route", "hot")]),
        15
    );
}
