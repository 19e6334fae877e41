//! The MQTT sink against real Mosquitto: QoS levels, refused logins, packet
//! size limits.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::mosquitto::Mosquitto;
use common::subscriber::Subscriber;
use common::*;

fn config(source: &str, sinks_and_routes: &str) -> Config {
    Config::parse(
        &format!("{source}{sinks_and_routes}"),
        Path::new("mqtt.yaml"),
        |_| None,
    )
    .expect("test config parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_each_deliver_every_message() {
    const N: u64 = 1_000;
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "qos-sub", "q/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-qos", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: qos-out }}
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: m, topic: "q/0/{{messageId}}", qos: 0 }}
      - {{ sink: m, topic: "q/1/{{messageId}}", qos: 1 }}
      - {{ sink: m, topic: "q/2/{{messageId}}", qos: 2 }}
"##,
            port = broker.port
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(3 * N, 30).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let counts = subscriber.counts();
    for qos in 0..3 {
        let prefix = format!("q/{qos}/");
        let arrived = counts
            .iter()
            .filter(|(t, _)| t.starts_with(&prefix))
            .count();
        assert_eq!(arrived as u64, N, "QoS {qos}");
    }
    assert!(counts.values().all(|c| *c == 1), "each copy exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mqtt_login_keeps_the_source_detached_and_backs_off() {
    let broker = Mosquitto::start_with(|dir| {
        let passwords = common::mosquitto::password_file(dir, "bridge", "right-password");
        format!(
            "allow_anonymous false\npassword_file {}",
            passwords.display()
        )
    });
    let emulator = emulator(|c| c.count = 10).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-refused", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: refused-out, username: bridge, password: wrong-password }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "x/{{messageId}}" }} ] }}
"##,
            port = broker.port
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    let refusals = || broker.refusals.load(Ordering::Relaxed);
    eventually("the broker refusing the login", 30, || refusals() >= 1).await;
    let first = Instant::now();
    eventually("further login attempts", 30, || refusals() >= 3).await;
    // Backoff from 100 ms, each delay at least half its step: 50 + 100 ms.
    assert!(
        first.elapsed() >= Duration::from_millis(130),
        "attempts too fast: {:?}",
        first.elapsed()
    );
    // The source is attached only after every sink is ready: nothing was taken.
    assert_eq!(emulator.stats().snapshot().logins_ok, 0);
    bridge.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_max_packet_size_is_dead_lettered_with_its_reason() {
    let broker = Mosquitto::start_with(|_| "max_packet_size 300".to_string());
    let subscriber = Subscriber::start(broker.port, "size-sub", "s/#").await;
    let dir = tempfile::tempdir().unwrap();
    let big = "x".repeat(1_000);
    let messages = messages_file(
        dir.path(),
        &[
            ("/p/d/small", "hello"),
            ("/p/d/big", &big),
            ("/p/d/small2", "bye"),
        ],
    );
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-size", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: size-out, max_packet_size: 300 }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "s/{{topic[2]}}" }} ] }}
dead_letter: dead
"##,
            port = broker.port,
            dead = dead.display()
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    within(60, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(2, 30).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (3, 0));
    let mut arrived: Vec<_> = subscriber.counts().into_keys().collect();
    arrived.sort();
    assert_eq!(arrived, ["s/small", "s/small2"]);
    let dead_lines = read_jsonl(&dead);
    assert_eq!(dead_lines.len(), 1);
    assert_eq!(dead_lines[0]["topic"], "/p/d/big");
    let error = dead_lines[0]["failure"]["error"].as_str().unwrap();
    assert!(error.contains("max_packet_size 300"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_test_ca_and_password_login() {
    const N: u64 = 500;
    let tls_port = common::mosquitto::free_port();
    let mut ca_path = None;
    let broker = Mosquitto::start_with(|dir| {
        ca_path = Some(common::make_certs(dir));
        let passwords = common::mosquitto::password_file(dir, "bridge", "tls-password");
        format!(
            "allow_anonymous false\npassword_file {pw}\nlistener {tls_port} 127.0.0.1\n\
             cafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n",
            pw = passwords.display(),
            d = dir.display()
        )
    });
    let ca_path = ca_path.unwrap();
    // The subscriber uses the plain listener; the bridge the TLS one.
    let subscriber = Subscriber::start_as(
        broker.port,
        "tls-sub",
        "t/#",
        Some(("bridge", "tls-password")),
    )
    .await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-tls", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m:
    kind: mqtt
    url: "mqtts://localhost:{tls_port}"
    client_id: tls-out
    username: bridge
    password: tls-password
    tls: {{ ca_file: {ca} }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "t/{{messageId}}" }} ] }}
"##,
            ca = ca_path.display()
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(N, 30).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert_eq!(subscriber.counts().len(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_three_times_loses_nothing() {
    const N: u64 = 20_000;
    const MAX_IN_FLIGHT: u64 = 512;
    // Save sessions every second so a SIGKILLed broker comes back knowing the
    // subscriber (and what was queued for it at the last save).
    let mut broker = Mosquitto::start_with(|_| "autosave_interval 1\nlog_type debug".to_string());
    let subscriber = Subscriber::start(broker.port, "kill-sub", "k/#").await;
    eventually("mosquitto saving its store", 10, || broker.store_saved()).await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(300);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-kill", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: kill-out }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "k/{{messageId}}" }} ] }}
max_in_flight: {MAX_IN_FLIGHT}
retry: {{ initial: 50ms, max: 500ms }}
"##,
            port = broker.port
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    for (round, at) in [3_000u64, 8_000, 13_000].into_iter().enumerate() {
        subscriber.wait_for_total(at, 120).await;
        broker.kill();
        let retries = || bridge.metrics().retries();
        let before = retries();
        let what = format!("round {round}: retries while the broker is dead");
        eventually(&what, 30, || retries() >= before + 5).await;
        broker.start_again();
    }
    within(300, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    // The bridge's part: every message was delivered to the broker (its log
    // shows each PUBLISH received) before the source got its accept.
    let received = broker.received_when_caught_up("k/sentinel").await;
    assert_eq!(
        received.len(),
        N as usize,
        "distinct messages the broker received"
    );
    // The broker's part: a SIGKILL loses what it had acknowledged but not yet
    // passed on or saved; that is Mosquitto's durability, not the bridge's.
    let total_before = subscriber.counts().len();
    let mut total = subscriber.total();
    within(
        60,
        "sentinel",
        total.wait_for(|_| subscriber.counts().contains_key("k/sentinel")),
    )
    .await
    .unwrap();
    let counts = subscriber.counts();
    assert!(counts
        .keys()
        .all(|t| t == "k/sentinel" || received.contains(t)));
    let lost_by_broker = received.iter().filter(|t| !counts.contains_key(*t)).count();
    eprintln!("of {N}: all received by the broker; {lost_by_broker} lost inside the SIGKILLed broker ({total_before} ids before the sentinel)");
    assert!(
        lost_by_broker < N as usize / 100,
        "{lost_by_broker} messages missing at the subscriber"
    );
    let duplicates: u32 = subscriber.counts().values().map(|c| c - 1).sum();
    eprintln!("3 SIGKILLs in {N} messages: {duplicates} duplicates at the subscriber");
    // Each kill can make the bridge resend at most what was in flight.
    assert!(
        u64::from(duplicates) <= 3 * MAX_IN_FLIGHT,
        "{duplicates} duplicates"
    );
}

/// A real MQTT 5 subscriber that keeps each publish's topic and user properties.
async fn v5_subscriber(
    port: u16,
    filter: &str,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>,
    tokio::task::JoinHandle<()>,
) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("v5-sub", "127.0.0.1", port), 100);
    client
        .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (subscribed_tx, mut subscribed) = tokio::sync::watch::channel(false);
    let task_seen = seen.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed_tx.send_replace(true);
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    let props = p.properties.map(|p| p.user_properties).unwrap_or_default();
                    task_seen.lock().unwrap().push((topic, props));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    within(10, "SUBACK", subscribed.wait_for(|s| *s))
        .await
        .unwrap();
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_carries_properties_and_dead_letters_refused_publishes() {
    const N: u64 = 300;
    // Anonymous clients may publish under v5/ only; Mosquitto answers other
    // publishes with PUBACK reason "not authorized" (MQTT 5 only).
    let broker = Mosquitto::start_with(|dir| {
        let acl = dir.join("acl");
        std::fs::write(&acl, "topic readwrite v5/#\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&acl, std::fs::Permissions::from_mode(0o644)).unwrap();
        format!("acl_file {}", acl.display())
    });
    let (seen, _task) = v5_subscriber(broker.port, "v5/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-v5", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{port}", client_id: v5-out }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - name: allowed
    match: {{ topic: "#" }}
    to: [ {{ sink: m, topic: "v5/{{messageId}}" }} ]
  - name: refused
    match: {{ topic: "/+/+/thing/lifecycle" }}
    to: [ {{ sink: m, topic: "denied/{{messageId}}" }} ]
dead_letter: dead
"##,
            port = broker.port,
            dead = dead.display()
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    eventually("every MQTT 5 publish at the subscriber", 30, || {
        seen.lock().unwrap().len() as u64 >= N
    })
    .await;
    let b = bridge.metrics();
    eprintln!(
        "v5: forwarded {} retries {} failed {} dead-lettered {}",
        b.forwarded(),
        b.retries(),
        b.failed(),
        b.dead_lettered()
    );
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, N);
    for (topic, props) in &seen {
        let get = |k: &str| {
            props
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("messageId"), topic.strip_prefix("v5/"), "{props:?}");
        assert!(
            get("topic").is_some_and(|t| t.starts_with('/')),
            "{props:?}"
        );
        assert!(
            get("generateTime").is_some_and(|t| t.parse::<i64>().is_ok()),
            "{props:?}"
        );
    }
    // Lifecycle messages (1 in 20) were refused by the broker: dead-lettered
    // as permanent failures with the broker's reason.
    let dead_lines = read_jsonl(&dead);
    assert_eq!(dead_lines.len() as u64, N / 20);
    for line in &dead_lines {
        assert_eq!(line["failure"]["route"], "refused");
        let error = line["failure"]["error"].as_str().unwrap();
        assert!(error.contains("NotAuthorized"), "{error}");
    }
}

/// A broker whose anonymous clients may only use the topics `acl` grants
/// (Mosquitto answers other MQTT 5 publishes "not authorized"), plus `extra`
/// config lines.
fn acl_broker(acl: &str, extra: &str) -> Mosquitto {
    let acl = acl.to_string();
    let extra = extra.to_string();
    Mosquitto::start_with(move |dir| {
        let path = dir.join("acl");
        std::fs::write(&path, acl).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        format!("acl_file {}\n{extra}", path.display())
    })
}

/// The Receive Maximum and Maximum Packet Size a broker announces in its MQTT 5 CONNACK.
async fn v5_connack_limits(port: u16) -> (Option<u16>, Option<u32>) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new("connack-probe", "127.0.0.1", port), 10);
    let limits = within(10, "CONNACK", async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let props = ack.properties.as_ref();
                    break (
                        props.and_then(|p| p.receive_max),
                        props.and_then(|p| p.max_packet_size),
                    );
                }
                Ok(_) => {}
                Err(e) => panic!("probe cannot connect: {e}"),
            }
        }
    })
    .await;
    let _ = client.try_disconnect();
    limits
}

/// Distinct message ids of the dead letters a route wrote, each checked to
/// carry the broker's refusal.
fn dead_lettered_ids(lines: &[serde_json::Value], route: &str, reason: &str) -> HashSet<String> {
    lines
        .iter()
        .filter(|l| l["failure"]["route"] == route)
        .map(|l| {
            let error = l["failure"]["error"].as_str().unwrap_or_default();
            assert!(error.contains(reason), "{route}: {error}");
            l["messageId"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

/// Ids that arrived under `prefix` (topics `PREFIX{messageId}`).
fn arrived_ids(subscriber: &Subscriber, prefix: &str) -> HashSet<String> {
    subscriber
        .counts()
        .keys()
        .filter_map(|t| t.strip_prefix(prefix).map(str::to_string))
        .collect()
}

/// rumqttc's MQTT 5 client frees a QoS 2 packet id at PUBREC and its ids run
/// only up to the broker's Receive Maximum, so with Receive Maximum 2 and QoS 1
/// acks overtaking, an id comes back while the PUBCOMP of its first holder is
/// still due. That PUBCOMP must confirm only its own publish: every allowed
/// copy arrives, every refused one (QoS 1 and QoS 2) is dead-lettered, and so
/// none was accepted on another publish's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_qos2_packet_ids_reused_after_pubrec_never_confirm_another_publish() {
    const N: u64 = 400;
    const RECEIVE_MAX: u16 = 2;
    let broker = acl_broker(
        "topic readwrite ok/#\n",
        &format!("max_inflight_messages {RECEIVE_MAX}"),
    );
    let (receive_max, _) = v5_connack_limits(broker.port).await;
    assert_eq!(receive_max, Some(RECEIVE_MAX), "announced in CONNACK");
    let subscriber = Subscriber::start(broker.port, "reuse-sub", "ok/#").await;
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-reuse", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{port}", client_id: reuse-out }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - name: allowed
    match: {{ topic: "#" }}
    to:
      - {{ sink: m, topic: "ok/1/{{messageId}}", qos: 1 }}
      - {{ sink: m, topic: "ok/2/{{messageId}}", qos: 2 }}
  - name: refused-1
    match: {{ topic: "/+/+/thing/lifecycle" }}
    to: [ {{ sink: m, topic: "denied/1/{{messageId}}", qos: 1 }} ]
  - name: refused-2
    match: {{ topic: "/+/+/thing/lifecycle" }}
    to: [ {{ sink: m, topic: "denied/2/{{messageId}}", qos: 2 }} ]
dead_letter: dead
"##,
            port = broker.port,
            dead = dead.display()
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    within(120, "all accepted", emulator.all_accepted()).await;
    let mut total = subscriber.total();
    within(
        30,
        "every allowed copy at the subscriber",
        total.wait_for(|_| {
            arrived_ids(&subscriber, "ok/1/").len() as u64 == N
                && arrived_ids(&subscriber, "ok/2/").len() as u64 == N
        }),
    )
    .await
    .unwrap();
    let b = bridge.metrics();
    eprintln!(
        "reuse: forwarded {} retries {} failed {} dead-lettered {} broker connects {}",
        b.forwarded(),
        b.retries(),
        b.failed(),
        b.dead_lettered(),
        broker.connects.load(Ordering::Relaxed)
    );
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    let lines = read_jsonl(&dead);
    for line in &lines {
        let topic = line["topic"].as_str().unwrap_or_default();
        assert!(topic.ends_with("/thing/lifecycle"), "{line}");
    }
    let refused_1 = dead_lettered_ids(&lines, "refused-1", "NotAuthorized");
    let refused_2 = dead_lettered_ids(&lines, "refused-2", "NotAuthorized");
    assert_eq!(refused_1.len() as u64, N / 20, "every refused QoS 1 copy");
    assert_eq!(refused_2, refused_1, "every refused QoS 2 copy");
    assert!(lines.iter().all(|l| l["failure"]["route"] != "allowed"));
}

/// A refused QoS 2 publish (PUBREC "not authorized") is never un-counted by
/// rumqttc's MQTT 5 in-flight count. More refusals than the Receive Maximum
/// must not stop the sink: the allowed messages behind them arrive, the
/// refused ones are dead-lettered, nothing stays in flight, and nobody waits
/// for the 30 s confirm timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_refused_qos2_beyond_receive_maximum_does_not_stall() {
    const DENIED: usize = 10;
    const ALLOWED: usize = 20;
    const STALL_SECS: u64 = 20;
    let broker = acl_broker("topic readwrite ok/#\n", "max_inflight_messages 3");
    assert_eq!(v5_connack_limits(broker.port).await.0, Some(3));
    let subscriber = Subscriber::start(broker.port, "stall-sub", "ok/#").await;
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<serde_json::Value> = (0..DENIED)
        .map(|i| serde_json::json!({"topic": "/p/d/denied", "messageId": format!("d{i}"), "body": "no"}))
        .chain((0..ALLOWED).map(
            |i| serde_json::json!({"topic": "/p/d/ok", "messageId": format!("a{i}"), "body": "yes"}),
        ))
        .collect();
    let messages = messages_file_lines(dir.path(), &lines);
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), "bridge-stall", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{port}", client_id: stall-out }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - name: denied
    match: {{ topic: "/p/d/denied" }}
    to: [ {{ sink: m, topic: "denied/{{messageId}}", qos: 2 }} ]
  - name: allowed
    match: {{ topic: "/p/d/ok" }}
    to: [ {{ sink: m, topic: "ok/{{messageId}}", qos: 2 }} ]
dead_letter: dead
"##,
            port = broker.port,
            dead = dead.display()
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    // Well under the 30 s confirm timeout: the sink must not wait for it.
    let all = tokio::time::timeout(Duration::from_secs(STALL_SECS), emulator.all_accepted()).await;
    if all.is_err() {
        let (s, b) = (emulator.stats().snapshot(), bridge.metrics());
        panic!(
            "stalled: pushed {} accepted {}, in flight {}, forwarded {}, dead-lettered {}, retries {}",
            s.pushed,
            s.accepted,
            b.in_flight(),
            b.forwarded(),
            b.dead_lettered(),
            b.retries()
        );
    }
    eventually("nothing in flight", 10, || {
        bridge.metrics().in_flight() == 0
    })
    .await;
    let mut total = subscriber.total();
    within(
        10,
        "every allowed message",
        total.wait_for(|_| arrived_ids(&subscriber, "ok/").len() == ALLOWED),
    )
    .await
    .unwrap();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.accepted, stats.outstanding),
        ((DENIED + ALLOWED) as u64, 0)
    );
    let expected: HashSet<String> = (0..ALLOWED).map(|i| format!("a{i}")).collect();
    assert_eq!(arrived_ids(&subscriber, "ok/"), expected);
    let expected: HashSet<String> = (0..DENIED).map(|i| format!("d{i}")).collect();
    assert_eq!(
        dead_lettered_ids(&read_jsonl(&dead), "denied", "NotAuthorized"),
        expected
    );
}

/// The exact size rumqttc will write for this MQTT 5 publish (QoS 1, a packet
/// id, these user properties).
fn v5_packet_size(topic: &str, body_len: usize, properties: &[(&str, &str)]) -> usize {
    use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
    let props = PublishProperties {
        user_properties: properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let mut publish = Publish::new(
        topic,
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        vec![b'x'; body_len],
        Some(props),
    );
    publish.pkid = 1;
    publish.size()
}

/// A publish 1 or 2 bytes over the broker's announced maximum is a dead letter;
/// one of exactly the maximum is delivered; the connection is never torn down.
/// Sizes sit where the old estimate was short: over 16 KiB (3-byte remaining
/// length) with more than 127 bytes of properties (2-byte property length).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_publish_one_or_two_bytes_over_broker_maximum_is_dead_lettered() {
    const MAX: usize = 20_000;
    let broker = Mosquitto::start_with(|_| format!("max_packet_size {MAX}"));
    assert_eq!(v5_connack_limits(broker.port).await.1, Some(MAX as u32));
    let subscriber = Subscriber::start_as(broker.port, "max-sub", "max/#", None).await;
    let dir = tempfile::tempdir().unwrap();
    let source_topic = format!("/p/d/{}", "t".repeat(150));
    const GENERATED: &str = "1700000000000";
    let body_for = |id: &str, size: usize| -> String {
        let props = [
            ("topic", source_topic.as_str()),
            ("messageId", id),
            ("generateTime", GENERATED),
        ];
        let topic = format!("max/{id}");
        let guess = size - v5_packet_size(&topic, 0, &props);
        let len = (guess.saturating_sub(8)..guess + 8)
            .find(|len| v5_packet_size(&topic, *len, &props) == size)
            .expect("a body of that exact packet size");
        "x".repeat(len)
    };
    let lines: Vec<serde_json::Value> = [("at", MAX), ("over1", MAX + 1), ("over2", MAX + 2), ("small", 0)]
        .iter()
        .map(|(id, size)| {
            let body = if *size == 0 { "small".to_string() } else { body_for(id, *size) };
            serde_json::json!({"topic": source_topic, "messageId": id, "generateTime": 1_700_000_000_000i64, "body": body})
        })
        .collect();
    let run = run_v5_replay(&broker, &subscriber, &dir, &lines, "max", 2).await;
    assert_eq!((run.stats.accepted, run.stats.outstanding), (4, 0));
    assert_eq!(run.retries, 0, "no copy failed and was retried");
    assert_eq!(
        run.connects, 1,
        "the bridge connected once and never reconnected"
    );
    assert_eq!(run.arrived, ["max/at", "max/small"]);
    let ids = dead_lettered_ids(&run.dead, "all", "max_packet_size");
    assert_eq!(
        ids,
        HashSet::from(["over1".to_string(), "over2".to_string()])
    );
    assert_eq!(run.dead.len(), 2);
}

/// What one run of [`run_v5_replay`] left behind.
struct V5Run {
    stats: amqp_bridge::emulator::StatsSnapshot,
    retries: u64,
    /// Connections the bridge opened to the broker.
    connects: u64,
    /// Topics at the subscriber, sorted.
    arrived: Vec<String>,
    dead: Vec<serde_json::Value>,
}

/// Replays `lines` through the bridge into an MQTT 5 sink publishing to
/// `PREFIX/{messageId}` (dead letters to a file) until the emulator saw every
/// message accepted and the subscriber `expect` copies.
async fn run_v5_replay(
    broker: &Mosquitto,
    subscriber: &Subscriber,
    dir: &tempfile::TempDir,
    lines: &[serde_json::Value],
    prefix: &str,
    expect: u64,
) -> V5Run {
    let messages = messages_file_lines(dir.path(), lines);
    let emulator = emulator(|c| c.messages = Some(messages.clone())).await;
    let dead = dir.path().join("dead.jsonl");
    let source = source_yaml(&emulator, dir.path(), &format!("bridge-{prefix}"), "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{port}", client_id: {prefix}-out }}
  dead: {{ kind: file, path: {dead} }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "{prefix}/{{messageId}}" }} ] }}
dead_letter: dead
"##,
            port = broker.port,
            dead = dead.display()
        ),
    );
    let connects_before = broker.connects.load(Ordering::Relaxed);
    let bridge = Bridge::start(&config).await.unwrap();
    within(30, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(expect, 30).await;
    let retries = bridge.metrics().retries();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    let mut arrived: Vec<_> = subscriber.counts().into_keys().collect();
    arrived.sort();
    V5Run {
        stats,
        retries,
        connects: broker.connects.load(Ordering::Relaxed) - connects_before,
        arrived,
        dead: read_jsonl(&dead),
    }
}

/// An application property longer than an MQTT string (65 535 bytes) cannot be
/// a user property: a dead letter, not a truncated length on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_user_property_over_65535_bytes_is_dead_lettered() {
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "prop-sub", "prop/#").await;
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        serde_json::json!({"topic": "/p/d/x", "messageId": "big", "body": "b", "properties": {"huge": "v".repeat(65_536)}}),
        serde_json::json!({"topic": "/p/d/x", "messageId": "edge", "body": "e", "properties": {"edge": "v".repeat(65_535)}}),
        serde_json::json!({"topic": "/p/d/x", "messageId": "small", "body": "s"}),
    ];
    let run = run_v5_replay(&broker, &subscriber, &dir, &lines, "prop", 2).await;
    assert_eq!((run.stats.accepted, run.stats.outstanding), (3, 0));
    assert_eq!(run.retries, 0, "no copy failed and was retried");
    assert_eq!(run.connects, 1);
    assert_eq!(run.arrived, ["prop/edge", "prop/small"]);
    let ids = dead_lettered_ids(&run.dead, "all", "65535");
    assert_eq!(ids, HashSet::from(["big".to_string()]));
}

/// Sends waiting for a broker that stopped answering (SIGSTOP, so no error
/// either) are reached by shutdown's give-up: each such message is released
/// explicitly before the source closes, none is left unsettled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_give_up_releases_sends_waiting_on_a_frozen_broker() {
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "frozen-sub", "f/#").await;
    let emulator = emulator(|c| {
        c.count = 1_000;
        c.rate = 50;
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-frozen", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{port}", client_id: frozen-out, keep_alive: 60s }}
routes:
  - {{ match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "f/{{messageId}}" }} ] }}
shutdown_timeout: 1s
"##,
            port = broker.port
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    subscriber.wait_for_total(1, 30).await;
    broker.signal("STOP");
    eventually("messages waiting for the frozen broker", 30, || {
        bridge.metrics().in_flight() >= 5
    })
    .await;
    let started = Instant::now();
    bridge.shutdown().await;
    let took = started.elapsed();
    broker.signal("CONT");
    let stats = emulator.shutdown().await;
    eprintln!(
        "frozen: accepted {} released {} unsettled at disconnect {} shutdown {took:?}",
        stats.accepted, stats.released, stats.unsettled_at_disconnect
    );
    assert_eq!(stats.unsettled_at_disconnect, 0);
    assert!(stats.released >= 5, "released {}", stats.released);
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dedup_a_copy_that_failed_is_forwarded_when_redelivered() {
    // Dedup records an id only once every copy was confirmed: a message
    // whose first copy was refused comes back from the source and is
    // forwarded then, not dropped as a duplicate. Mosquitto first lets
    // anonymous clients read `v5/#` and not write it (MQTT 5 publishes are
    // refused "not authorized", a permanent failure: released, as no dead
    // letter is configured); a SIGHUP then reloads an ACL that allows it.
    const N: u64 = 50;
    let mut acl = None;
    let broker = Mosquitto::start_with(|dir| {
        let path = dir.join("acl");
        std::fs::write(&path, "topic read v5/#\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        acl = Some(path.clone());
        format!("acl_file {}", path.display())
    });
    let acl = acl.unwrap();
    let subscriber = Subscriber::start(broker.port, "dedup-sub", "v5/#").await;
    let emulator = emulator(|c| {
        c.count = N;
        c.redeliver_after = Duration::from_millis(100);
    })
    .await;
    emulator.hold_pushes(true);
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "bridge-dedup-fail", "");
    let config = config(
        &source,
        &format!(
            r##"sinks:
  m: {{ kind: mqtt, version: 5, url: "mqtt://127.0.0.1:{port}", client_id: dedup-out }}
routes:
  - name: all
    match: {{ topic: "#" }}
    to: [ {{ sink: m, topic: "v5/{{messageId}}" }} ]
dedup: {{ ttl: 10m }}
"##,
            port = broker.port,
        ),
    );
    let bridge = Bridge::start(&config).await.unwrap();
    eventually("the bridge attached", 60, || {
        emulator.stats().snapshot().receivers_attached == 1
    })
    .await;
    emulator.hold_pushes(false);
    eventually("every first copy refused and released", 60, || {
        emulator.stats().snapshot().released >= N
    })
    .await;
    emulator.hold_pushes(true);
    assert_eq!(subscriber.counts().len(), 0, "a refused publish arrived");
    write_replacing(&acl, b"topic readwrite v5/#\n");
    broker.signal("HUP");
    emulator.hold_pushes(false);
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(N, 30).await;
    let metrics = bridge.metrics().clone();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    assert!(stats.released >= N, "{stats:?}");
    assert_eq!(metrics.duplicates.get(), 0, "a redelivery was dropped");
    let counts = subscriber.counts();
    assert_eq!(counts.len() as u64, N, "distinct ids at the subscriber");
    assert!(
        counts.values().all(|c| *c == 1),
        "an id arrived twice: {counts:?}"
    );
}
