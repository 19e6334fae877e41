//! Bad input from the source, end to end: bodies that are not UTF-8, empty,
//! 1 MiB and 16 MiB; missing and empty properties; a non-JSON body where a
//! route and a template read JSON; topics MQTT cannot take (`+`, `#`, NUL,
//! a 70 000-byte level); application properties of every AMQP type. Each is
//! counted and routed (forwarded, dead-lettered or unrouted), never a panic,
//! never accepted without its copies confirmed.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::mosquitto::Mosquitto;
use common::subscriber::Subscriber;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_and_routed_never_lost() {
    let long_level = "l".repeat(70_000);
    let typed = json!({
        "b": {"bool": true}, "ub": {"ubyte": 255}, "us": {"ushort": 65535},
        "ui": {"uint": 4294967295u64}, "ul": {"ulong": 18446744073709551615u64},
        "by": {"byte": -128}, "sh": {"short": -32768}, "in": {"int": -2147483648i64},
        "lo": {"long": -9223372036854775808i64}, "fl": {"float": 1.5}, "do": {"double": -2.25},
        "ch": {"char": "é"}, "ts": {"timestamp": 1700000000000i64},
        "uu": {"uuid": "01234567-89ab-cdef-0123-456789abcdef"},
        "bi": {"binary": "AAEC/w=="}, "sy": {"symbol": "sym"}, "nu": {"null": null}
    });
    // (messageId, message, where it must end up)
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "not-utf8",
            json!({"topic": "/pk/d1/thing/event/property/post", "body_base64": "//79AA=="}),
            "mqtt",
        ),
        (
            "empty",
            json!({"topic": "/pk/d1/thing/event/property/post", "body": ""}),
            "mqtt",
        ),
        (
            "one-mib",
            json!({"topic": "/pk/d1/thing/event/property/post", "body_size": 1 << 20}),
            "mqtt",
        ),
        (
            "sixteen-mib",
            json!({"topic": "/pk/d1/thing/event/property/post", "body_size": 16 << 20}),
            "dead",
        ),
        ("no-topic", json!({"topic": null, "body": "{}"}), "unrouted"),
        (
            "empty-props",
            json!({"topic": "/pk/d1/thing/event/property/post", "body": "{}", "properties": {"region": ""}}),
            "mqtt",
        ),
        (
            "not-json",
            json!({"topic": "/pk/d1/json/post", "body": "not json at all"}),
            "dead",
        ),
        (
            "plus",
            json!({"topic": "/pk/d+1/thing/event/property/post", "body": "{}"}),
            "dead",
        ),
        (
            "hash",
            json!({"topic": "/pk/d#/thing/event/property/post", "body": "{}"}),
            "dead",
        ),
        (
            "nul",
            json!({"topic": "/pk/d\u{0}1/thing/event/property/post", "body": "{}"}),
            "dead",
        ),
        (
            "long-level",
            json!({"topic": format!("/pk/{long_level}/x"), "body": "{}"}),
            "dead",
        ),
        (
            "typed",
            json!({"topic": "/pk/d1/thing/event/property/post", "body": "{}", "typed_properties": typed}),
            "mqtt",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<serde_json::Value> = cases
        .iter()
        .map(|(id, message, _)| {
            let mut message = message.clone();
            message["messageId"] = json!(id);
            message
        })
        .collect();
    let messages = messages_file_lines(dir.path(), &lines);
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "bad-input-sub", "in/#").await;
    let emulator = emulator(|c| {
        c.messages = Some(messages.clone());
        // Nothing may need a redelivery: each message settles once.
        c.redeliver_after = Duration::from_secs(600);
    })
    .await;
    let all = dir.path().join("all.jsonl");
    let dead = dir.path().join("dead.jsonl");
    let unrouted = dir.path().join("unrouted.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-bad-input", "");
    let text = format!(
        r##"{source}sinks:
  mqtt: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: bad-input-out, max_packet_size: 8388608 }}
  all: {{ kind: file, path: {all} }}
  dead: {{ kind: file, path: {dead} }}
  unrouted: {{ kind: file, path: {unrouted} }}
routes:
  - name: json
    final: true
    match: {{ topic: "/+/+/json/#" }}
    to:
      - {{ sink: all }}
      - {{ sink: mqtt, topic: "in/json/{{json.value}}" }}
  - name: everything
    match: {{ topic: "#" }}
    to:
      - {{ sink: all }}
      - {{ sink: mqtt, topic: "in/{{deviceName}}/{{messageId}}" }}
  - name: only-json
    match: {{ topic: "#", json: {{ kind: t }} }}
    to:
      - {{ sink: mqtt, topic: "never/{{messageId}}" }}
unrouted: {{ sink: unrouted }}
dead_letter: dead
"##,
        port = broker.port,
        all = all.display(),
        dead = dead.display(),
        unrouted = unrouted.display(),
    );
    let config = Config::parse(&text, Path::new("bad.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    let to_mqtt = cases.iter().filter(|(_, _, fate)| *fate == "mqtt").count() as u64;
    subscriber.wait_for_total(to_mqtt, 60).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    let n = cases.len() as u64;
    assert_eq!(
        (
            stats.accepted,
            stats.outstanding,
            stats.released,
            stats.rejected
        ),
        (n, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(
        (
            metrics.received(),
            metrics.accepted(),
            metrics.undecodable()
        ),
        (n, n, 0)
    );

    let ids_in = |path: &Path| -> HashMap<String, serde_json::Value> {
        read_jsonl(path)
            .into_iter()
            .map(|l| (l["messageId"].as_str().unwrap_or_default().to_string(), l))
            .collect()
    };
    let all_lines = ids_in(&all);
    let dead_lines = ids_in(&dead);
    let unrouted_lines = ids_in(&unrouted);
    let mqtt = subscriber.counts();
    for (id, _, fate) in &cases {
        match *fate {
            "mqtt" => assert!(
                mqtt.keys().any(|t| t.ends_with(&format!("/{id}"))),
                "{id} not at the MQTT broker: {:?}",
                mqtt.keys().collect::<Vec<_>>()
            ),
            "dead" => {
                let line = dead_lines
                    .get(*id)
                    .unwrap_or_else(|| panic!("{id} not dead-lettered"));
                assert_eq!(line["failure"]["sink"], "mqtt", "{id}: {line}");
                assert!(line["failure"]["error"].is_string());
            }
            "unrouted" => assert!(unrouted_lines.contains_key(*id), "{id} not unrouted"),
            other => unreachable!("{other}"),
        }
        if *fate != "unrouted" {
            assert!(
                all_lines.contains_key(*id),
                "{id} not in the file of all messages"
            );
        }
    }
    assert_eq!(dead_lines.len(), 6, "dead letters: {:?}", dead_lines.keys());
    // A body that is not UTF-8 is kept byte for byte, as Base64.
    assert_eq!(all_lines["not-utf8"]["body_base64"], "//79AA==");
    assert_eq!(
        all_lines["sixteen-mib"]["body"].as_str().map(str::len),
        Some(16 << 20)
    );
    // Every AMQP type arrives as text.
    let p = &all_lines["typed"]["properties"];
    for (key, want) in [
        ("b", "true"),
        ("ub", "255"),
        ("ul", "18446744073709551615"),
        ("by", "-128"),
        ("lo", "-9223372036854775808"),
        ("fl", "1.5"),
        ("do", "-2.25"),
        ("ch", "é"),
        ("ts", "1700000000000"),
        ("uu", "01234567-89ab-cdef-0123-456789abcdef"),
        ("bi", "AAEC/w=="),
        ("sy", "sym"),
        ("nu", ""),
    ] {
        assert_eq!(p[key], want, "property {key}: {p}");
    }
    assert!(
        !mqtt.keys().any(|t| t.starts_with("never/")),
        "a JSON predicate matched a non-JSON body"
    );
}
