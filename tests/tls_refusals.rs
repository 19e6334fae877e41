//! TLS is verified by default: a server certificate that the configured CA
//! (or, without one, the system roots) did not sign is refused, with a
//! clear error, for the platform source and the MQTT sink. (The generic
//! source, Kafka and RocketMQ have theirs in their own test files.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::bridge_process::BridgeProcess;
use common::mosquitto::{free_port, Mosquitto};
use common::*;

fn telemetry() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Waits until the process logged a line containing `text`; returns it.
async fn logged(bridge: &BridgeProcess, text: &str, secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(line) = bridge
            .log
            .lock()
            .unwrap()
            .lines()
            .find(|l| l.contains(text))
        {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no log line with `{text}`; tail:\n{}",
            bridge.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_source_refuses_a_certificate_its_ca_did_not_sign() {
    let emulator = emulator(|c| c.count = 10).await;
    let dir = tempfile::tempdir().unwrap();
    let other = common::pki::Pki::new("unused");
    for (case, tls) in [
        // Another CA configured; and none (the system roots).
        (
            "another CA",
            format!("tls: {{ ca_file: {} }}", other.ca.display()),
        ),
        ("system roots", "tls: {}".to_string()),
    ] {
        let at = telemetry();
        let good_ca = dir.path().join("ca.pem");
        let source = source_yaml(&emulator, dir.path(), "tls-refusal", "")
            .replace(&format!("tls: {{ ca_file: {} }}", good_ca.display()), &tls)
            .replace(
                "telemetry: { listen: '127.0.0.1:0' }",
                &format!("telemetry: {{ listen: '{at}', summary_interval: 0s }}"),
            );
        assert!(source.contains(&tls), "{source}");
        let config = dir.path().join("refusal.yaml");
        std::fs::write(
            &config,
            format!("{source}sinks:\n  o: {{ kind: stdout }}\n"),
        )
        .unwrap();
        let mut bridge = BridgeProcess::start(&config, at);
        let line = logged(&bridge, "source connection failed", 30).await;
        // A second attempt, after the backoff, fails the same way.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while bridge
            .log
            .lock()
            .unwrap()
            .matches("source connection failed")
            .count()
            < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{case}: no second attempt"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let scrape = bridge.scrape().await;
        bridge.stop(Duration::from_secs(10));
        assert!(
            line.contains("TLS handshake") && line.contains("certificate"),
            "{case}: {line}"
        );
        let connects =
            common::metrics::Scrape::parse(&scrape).count("amqp_bridge_source_connects_total", &[]);
        assert_eq!(connects, 0, "{case}: connected anyway");
    }
    let stats = emulator.shutdown().await;
    assert_eq!(stats.logins_ok + stats.logins_refused, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_refuses_a_certificate_its_ca_did_not_sign() {
    let tls_port = free_port();
    let broker = Mosquitto::start_with(|dir| {
        common::make_certs(dir);
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n",
            d = dir.display()
        )
    });
    let emulator = emulator(|c| c.count = 10).await;
    let dir = tempfile::tempdir().unwrap();
    let other = common::pki::Pki::new("unused");
    let at = telemetry();
    let source = source_yaml(&emulator, dir.path(), "tls-refusal-mqtt", "").replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{at}', summary_interval: 0s }}"),
    );
    let config = dir.path().join("mqtt.yaml");
    std::fs::write(
        &config,
        format!(
            "{source}sinks:\n  m: {{ kind: mqtt, url: \"mqtts://localhost:{tls_port}\", client_id: refusal-out, \
             tls: {{ ca_file: {ca} }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: \"r/{{messageId}}\" }} ] }}\n",
            ca = other.ca.display()
        ),
    )
    .unwrap();
    let mut bridge = BridgeProcess::start(&config, at);
    let line = logged(&bridge, "MQTT connection lost, refused or stuck", 30).await;
    let url = url::Url::parse(&format!("http://{at}/readyz")).unwrap();
    let readyz = amqp_bridge::telemetry::http::get(&url).await;
    bridge.stop(Duration::from_secs(10));
    drop(broker);
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    match readyz {
        Ok((503, body)) => assert!(body.contains("sink m"), "{body}"),
        other => panic!("/readyz: {other:?}"),
    }
    let stats = emulator.shutdown().await;
    // The source never attached: nothing was taken from the platform.
    assert_eq!(stats.receivers_attached, 0, "{stats:?}");
}
