//! No secret in any output: the bridge runs at `trace` level through a
//! login, a reconnect (a fresh signature), a refused platform login, a
//! refused MQTT login and Kafka (SASL) and RocketMQ (ACL) sinks that cannot
//! reach their brokers; `check` prints the same configuration. Every line
//! is searched for every configured secret and every signed password the
//! emulator received. A second test does the same for sessions that
//! succeed: Kafka over SASL_SSL and RocketMQ with ACL signatures.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::bridge_process::BridgeProcess;
use common::mosquitto::{free_port, password_file, Mosquitto};
use common::*;

const MQTT_PASSWORD: &str = "mqtt-secret-a4f1c9";
const KAFKA_PASSWORD: &str = "kafka-secret-b7e2d0";
const ROCKETMQ_SECRET: &str = "rocketmq-secret-c3a8f5";
const STS_TOKEN: &str = "sts-token-secret-d9b6e4";
const WRONG_SECRET: &str = "wrong-access-secret-e1f7a2";

fn telemetry() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn with_telemetry(source: String, at: SocketAddr) -> String {
    source.replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{at}', summary_interval: 200ms }}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_appears_in_any_output() {
    let broker = Mosquitto::start_with(|dir| {
        let passwords = password_file(dir, "bridge", MQTT_PASSWORD);
        format!(
            "allow_anonymous false\npassword_file {}",
            passwords.display()
        )
    });
    let emulator = emulator(|c| c.count = 0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut logs = Vec::new();

    // A: logs in, forwards, is disconnected and logs in again (re-signed).
    let at = telemetry();
    let source = with_telemetry(source_yaml(&emulator, dir.path(), "secrets-a", ""), at);
    let a = dir.path().join("a.yaml");
    std::fs::write(
        &a,
        format!(
            "{source}sinks:\n  m: {{ kind: mqtt, url: \"mqtt://127.0.0.1:{port}\", client_id: secrets-a-out, \
             username: bridge, password: {MQTT_PASSWORD} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: \"s/{{messageId}}\" }} ] }}\n",
            port = broker.port
        ),
    )
    .unwrap();
    let mut bridge = BridgeProcess::start_logging(&a, at, "trace");
    bridge.ready(60).await;
    let logins = emulator.stats().snapshot().logins_ok;
    emulator.disconnect_all();
    eventually("a second login", 30, || {
        emulator.stats().snapshot().logins_ok > logins
    })
    .await;
    bridge.ready(60).await;
    bridge.stop(Duration::from_secs(10));
    logs.push(("A", bridge.log.lock().unwrap().clone()));
    // Two logins, the second signed afresh: the emulator accepts 15 minutes
    // of clock skew, so a reused signature would log in too.
    let after_a = emulator.stats().snapshot();
    assert_eq!(
        (after_a.logins_ok, after_a.logins_refused),
        (2, 0),
        "{after_a:?}"
    );
    let signed_a = emulator.passwords_seen();
    assert_eq!(signed_a.len(), 2, "one password per login");
    // (Compared without printing them: they are signed secrets.)
    assert!(
        signed_a[0] != signed_a[1],
        "the reconnect reused the signature"
    );

    // B: sinks that fail: a refused MQTT login, Kafka with SASL and
    // RocketMQ with ACL where nothing listens. Never ready.
    let at = telemetry();
    let source = with_telemetry(source_yaml(&emulator, dir.path(), "secrets-b", ""), at);
    let b = dir.path().join("b.yaml");
    std::fs::write(
        &b,
        format!(
            "{source}sinks:\n  m: {{ kind: mqtt, url: \"mqtt://127.0.0.1:{port}\", client_id: secrets-b-out, \
             username: bridge, password: not-{MQTT_PASSWORD} }}\n  \
             k: {{ kind: kafka, brokers: [\"127.0.0.1:1\"], tls: {{}}, \
             sasl: {{ mechanism: SCRAM-SHA-512, username: bridge, password: {KAFKA_PASSWORD} }} }}\n  \
             r: {{ kind: rocketmq, name_server: \"127.0.0.1:1\", \
             acl: {{ access_key: bridge-ak, secret_key: {ROCKETMQ_SECRET} }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: t }}, {{ sink: k, topic: t }}, {{ sink: r, topic: t }} ] }}\n",
            port = broker.port
        ),
    )
    .unwrap();
    let mut bridge = BridgeProcess::start_logging(&b, at, "trace");
    let url = url::Url::parse(&format!("http://{at}/readyz")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let readyz = loop {
        let answer = amqp_bridge::telemetry::http::get(&url).await;
        match &answer {
            Ok((503, body)) if body.contains("sink k") && body.contains("sink m") => {
                break body.clone();
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz never named the failing sinks: {answer:?}\n{}",
            bridge.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each client retried and logged at trace level: three attempts each,
    // counted in the log rather than waited for.
    for attempt in [
        "MQTT connection lost, refused or stuck",
        "RocketMQ name server not reachable yet",
        "librdkafka:",
    ] {
        bridge.logged(attempt, 3, 60).await;
    }
    let metrics = bridge.scrape().await;
    bridge.stop(Duration::from_secs(10));
    logs.push(("B", bridge.log.lock().unwrap().clone()));
    logs.push(("B /readyz", readyz));
    logs.push(("B /metrics", metrics));

    // C: a refused platform login, with an STS token.
    let at = telemetry();
    let source = with_telemetry(
        source_yaml(
            &emulator,
            dir.path(),
            "secrets-c",
            &format!("  security_token: {STS_TOKEN}\n"),
        ),
        at,
    )
    .replace(
        &format!("access_key_secret: {SK}"),
        &format!("access_key_secret: {WRONG_SECRET}"),
    );
    let c = dir.path().join("c.yaml");
    std::fs::write(&c, format!("{source}sinks:\n  o: {{ kind: stdout }}\n")).unwrap();
    let refused = emulator.stats().snapshot().logins_refused;
    let mut bridge = BridgeProcess::start_logging(&c, at, "trace");
    eventually("a refused login", 30, || {
        emulator.stats().snapshot().logins_refused > refused
    })
    .await;
    bridge.stop(Duration::from_secs(10));
    logs.push(("C", bridge.log.lock().unwrap().clone()));

    // `check` on every configuration.
    for (name, path) in [("check A", &a), ("check B", &b), ("check C", &c)] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        logs.push((name, text));
    }
    // Every signed password the bridges sent, one per login attempt: A's
    // two and C's refused ones (B's sinks are never ready, so B never logs
    // in), each signed afresh.
    let signed = emulator.passwords_seen();
    let stats = emulator.stats().snapshot();
    assert_eq!(stats.logins_ok, 2, "{stats:?}");
    assert!(stats.logins_refused >= 1, "{stats:?}");
    assert_eq!(
        signed.len() as u64,
        stats.logins_ok + stats.logins_refused,
        "one password per login attempt"
    );
    let distinct: std::collections::HashSet<&String> = signed.iter().collect();
    assert_eq!(distinct.len(), signed.len(), "a signed password was reused");
    emulator.shutdown().await;

    let mut secrets = vec![
        SK,
        MQTT_PASSWORD,
        KAFKA_PASSWORD,
        ROCKETMQ_SECRET,
        STS_TOKEN,
        WRONG_SECRET,
    ];
    secrets.extend(signed.iter().map(String::as_str));
    assert_no_secret(&logs, &secrets);
    // The search sees what it should: names that are not secret are there.
    let check_b = &logs.iter().find(|(n, _)| *n == "check B").unwrap().1;
    assert!(
        check_b.contains("bridge-ak") && check_b.contains("***"),
        "{check_b}"
    );
    let lines: usize = logs.iter().map(|(_, t)| t.lines().count()).sum();
    eprintln!("{lines} lines searched for {} secrets", secrets.len());
}

/// Fails on the first line of any output that holds any secret.
fn assert_no_secret(logs: &[(&str, String)], secrets: &[&str]) {
    for (name, text) in logs {
        assert!(!text.is_empty(), "{name}: no output at all");
        for secret in secrets {
            if let Some(line) = text.lines().find(|l| l.contains(secret)) {
                panic!("{name}: a secret in the output: {line}");
            }
        }
    }
}

/// Sessions that succeed: Kafka over SASL_SSL (SCRAM-SHA-512) and RocketMQ
/// with ACL signatures forward every message at `trace` level, where the
/// clients log their handshakes; then the output is searched as above.
#[cfg(all(feature = "rocketmq", feature = "kafka"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_sasl_and_acl_sessions_show_no_secret() {
    use common::rocketmq::{BrokerOptions, RocketMq};
    use common::tansu_secure::{Scram, SecureTansu};

    const N: u64 = 200;
    let kafka = SecureTansu::start(
        &[("iot.secrets", 1)],
        &[("bridge", KAFKA_PASSWORD, Scram::Sha512)],
    )
    .await;
    let rocketmq = RocketMq::start_with(BrokerOptions {
        acl_user: Some(("bridge-ak".into(), ROCKETMQ_SECRET.into())),
        ..BrokerOptions::default()
    });
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let at = telemetry();
    let source = with_telemetry(source_yaml(&emulator, dir.path(), "secrets-d", ""), at);
    let d = dir.path().join("d.yaml");
    std::fs::write(
        &d,
        format!(
            "{source}sinks:\n  k: {{ kind: kafka, brokers: [\"{kafka}\"], tls: {{ ca_file: {ca} }}, \
             sasl: {{ mechanism: SCRAM-SHA-512, username: bridge, password: {KAFKA_PASSWORD} }} }}\n  \
             r: {{ kind: rocketmq, name_server: \"{name_server}\", \
             acl: {{ access_key: bridge-ak, secret_key: {ROCKETMQ_SECRET} }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: k, topic: iot.secrets }}, {{ sink: r, topic: iot_secrets }} ] }}\n",
            kafka = kafka.address(),
            ca = kafka.ca_file.display(),
            name_server = rocketmq.name_server(),
        ),
    )
    .unwrap();
    let mut bridge = BridgeProcess::start_logging(&d, at, "trace");
    within(180, "every message accepted", emulator.all_accepted()).await;
    let metrics = bridge.scrape().await;
    bridge.stop(Duration::from_secs(10));
    let snapshot = emulator.stats().snapshot();
    assert_eq!((snapshot.accepted, snapshot.outstanding), (N, 0));
    let log = bridge.log.lock().unwrap().clone();
    // Signed requests are traced, their signature masked (a signature is
    // fresh per request, so it cannot be searched for like a secret).
    assert!(
        log.contains("\"Signature\": \"***\""),
        "no masked ACL signature in the trace output"
    );
    // The search covers both clients' own trace output, not only ours.
    for client in ["rdkafka::", "amqp_bridge::sink::rocketmq"] {
        assert!(
            log.lines().filter(|l| l.contains(client)).count() >= 10,
            "no trace lines of {client}:\n{}",
            bridge.log_tail(30)
        );
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .args(["check", "--config"])
        .arg(&d)
        .output()
        .unwrap();
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let signed = emulator.passwords_seen();
    emulator.shutdown().await;
    let logs = vec![("D", log), ("D /metrics", metrics), ("check D", check)];
    let mut secrets = vec![SK, KAFKA_PASSWORD, ROCKETMQ_SECRET];
    secrets.extend(signed.iter().map(String::as_str));
    assert_no_secret(&logs, &secrets);
}
