//! The MQTT sink's Alibaba Cloud MQ for MQTT login (`auth: { mode:
//! aliyun_signature }`) against a broker that checks it: a real Mosquitto
//! with `allow_anonymous false` and a password file holding the user
//! `Signature|AccessKeyId|InstanceId` with the password this file computes
//! on its own (Base64(HMAC-SHA1(AccessKeySecret, clientId)), with the hmac,
//! sha1 and base64 crates, not the bridge's signing code).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::bridge_process::BridgeProcess;
use common::mosquitto::{free_port, password_file, Mosquitto};
use common::subscriber::Subscriber;
use common::*;

const ACCESS_KEY_ID: &str = "LTAI-mq-test";
const SECRET: &str = "mq/Secret+Key=";
const INSTANCE: &str = "post-cn-test01";
const CLIENT_ID: &str = "GID_bridge@@@bridge-01";

/// The signature-mode password, written from Alibaba's description
/// ("use the AccessKey secret as the key and HMAC-SHA1 to sign the client
/// ID; Base64-encode the binary result"), independently of the bridge.
fn signature_password(secret: &str, client_id: &str) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(client_id.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Alibaba publishes no password value for its example (the docs show the
/// placeholder `eqweq+adwe23fssf`, 16 characters, where Base64 of a SHA-1
/// HMAC has 28), so the HMAC-SHA1 + Base64 above is checked against RFC 2202
/// test case 2. (The username layout is checked against the documented
/// example by the unit tests of `src/sink/mqtt/auth.rs`.)
#[test]
fn the_second_implementation_matches_rfc_2202() {
    // RFC 2202, test case 2: HMAC-SHA1 = effcdf6ae5eb2fa2d27416d5f184df9c259a7c79.
    assert_eq!(
        signature_password("Jefe", "what do ya want for nothing?"),
        "7/zfauXrL6LSdBbV8YTfnCWafHk="
    );
}

/// A Mosquitto that only lets in the bridge (as the MQ for MQTT user with
/// the independently computed password) and the test's reader.
fn checking_broker() -> Mosquitto {
    Mosquitto::start_with(|dir| {
        let passwords = password_file(
            dir,
            &format!("Signature|{ACCESS_KEY_ID}|{INSTANCE}"),
            &signature_password(SECRET, CLIENT_ID),
        );
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg(&passwords)
            .args(["reader", "reader-password"])
            .status()
            .expect("mosquitto_passwd");
        assert!(status.success());
        format!(
            "allow_anonymous false\npassword_file {}\n",
            passwords.display()
        )
    })
}

/// The bridge's YAML: the emulator as source, one MQTT sink logging in with
/// MQ for MQTT signature auth and `secret`.
fn yaml(source: &str, port: u16, secret: &str) -> String {
    format!(
        r##"{source}sinks:
  m:
    kind: mqtt
    url: "mqtt://127.0.0.1:{port}"
    client_id: "{CLIENT_ID}"
    auth:
      mode: aliyun_signature
      access_key_id: {ACCESS_KEY_ID}
      access_key_secret: "{secret}"
      instance_id: {INSTANCE}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "mq/{{messageId}}", qos: 1 }} ] }}
"##
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_login_is_verified_by_mosquitto_and_a_wrong_secret_is_refused() {
    const N: u64 = 300;
    let broker = checking_broker();
    let refused = || broker.refusals.load(std::sync::atomic::Ordering::Relaxed);
    let subscriber = Subscriber::start_as(
        broker.port,
        "mq-reader",
        "mq/#",
        Some(("reader", "reader-password")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();

    // The right secret: Mosquitto lets the sink in (no refusal at all), and
    // every message is delivered exactly once.
    let emulator = emulator(|c| c.count = N).await;
    let source = source_yaml(&emulator, dir.path(), "mq-right", "");
    let config = Config::parse(
        &yaml(&source, broker.port, SECRET),
        Path::new("mq.yaml"),
        |_| None,
    )
    .expect("test config parses");
    let bridge = Bridge::start(&config).await.unwrap();
    eventually("the MQ for MQTT sink connected", 30, || {
        assert_eq!(refused(), 0, "Mosquitto refused the MQ for MQTT login");
        bridge.metrics().sinks().iter().all(|s| s.is_ready())
    })
    .await;
    within(120, "all accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(N, 60).await;
    let m = bridge.metrics().clone();
    bridge.shutdown().await;
    let accepted = emulator.accepted_ids();
    let stats = emulator.shutdown().await;
    assert_eq!((stats.accepted, stats.redelivered), (N, 0), "{stats:?}");
    assert_eq!((m.forwarded(), m.retries()), (N, 0));
    let counts = subscriber.counts();
    assert_eq!(counts.len() as u64, N);
    for id in &accepted {
        assert_eq!(counts.get(&format!("mq/{id}")), Some(&1), "message {id}");
    }
    assert_eq!(refused(), 0, "a login was refused");

    // A wrong secret: the broker refuses the login, the bridge says why and
    // never attaches its source, so nothing is taken or delivered.
    let emulator = common::emulator(|c| c.count = N).await;
    let at: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let source = source_yaml(&emulator, dir.path(), "mq-wrong", "").replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{at}', summary_interval: 0s }}"),
    );
    let wrong_secret = "not-the-secret";
    let path = dir.path().join("wrong.yaml");
    std::fs::write(&path, yaml(&source, broker.port, wrong_secret)).unwrap();
    let mut wrong = BridgeProcess::start(&path, at);
    let lines = wrong
        .logged("MQTT connection lost, refused or stuck", 2, 30)
        .await;
    eprintln!("refused: {}", lines[0]);
    eventually("the broker refusing twice", 30, || refused() >= 2).await;
    let readyz = amqp_bridge::telemetry::http::get(
        &url::Url::parse(&format!("http://{at}/readyz")).unwrap(),
    )
    .await;
    wrong.stop(Duration::from_secs(10));
    let log = wrong.log.lock().unwrap().clone();
    assert!(
        lines.iter().all(|l| l.contains("NotAuthorized")),
        "refusal reason: {lines:?}"
    );
    match readyz {
        Ok((503, body)) => assert!(body.contains("sink m: not connected"), "{body}"),
        other => panic!("/readyz: {other:?}"),
    }
    let wrong_password = signature_password(wrong_secret, CLIENT_ID);
    assert!(!log.contains(&wrong_password), "the password was logged");
    assert!(!log.contains(wrong_secret), "the secret was logged");
    let stats = emulator.shutdown().await;
    assert_eq!(
        (stats.receivers_attached, stats.pushed, stats.accepted),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(*subscriber.total().borrow(), N, "delivered without a login");
}
