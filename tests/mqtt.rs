//! The MQTT sink against real Mosquitto: QoS levels, refused logins, packet
//! size limits.

mod common;

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
    let received = broker.received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        N as usize,
        "distinct messages the broker received"
    );
    // The broker's part: a SIGKILL loses what it had acknowledged but not yet
    // passed on or saved; that is Mosquitto's durability, not the bridge's.
    // A sentinel published after everything else marks when the rest is through.
    publish_once(broker.port, "k/sentinel").await;
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

/// Publishes one QoS 1 message straight to the broker and waits for its PUBACK.
async fn publish_once(port: u16, topic: &str) {
    let (client, mut eventloop) =
        rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("sentinel", "127.0.0.1", port), 10);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    within(30, "sentinel PUBACK", async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = eventloop.poll().await
            {
                break;
            }
        }
    })
    .await;
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
