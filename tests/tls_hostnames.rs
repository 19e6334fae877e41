//! TLS verification beyond the chain, against real brokers:
//! - host names: every TLS client (the platform source, the generic AMQP
//!   source, the MQTT, Kafka and RocketMQ sinks) refuses a server whose
//!   certificate comes from the CA it trusts but was issued for another name
//!   (`other.example`, no localhost/127.0.0.1 in it), and says why;
//! - MQTT mutual TLS: a Mosquitto listener that requires a client
//!   certificate takes the sink's configured one, and refuses a sink that
//!   has none.
//!
//! Every other TLS test issues its server certificate for the name the client
//! connects to, so a client that checked only the chain would pass them all.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::bridge_process::BridgeProcess;
use common::metrics::Scrape;
use common::mosquitto::{free_port, Mosquitto};
use common::pki::Pki;
use common::subscriber::Subscriber;
use common::*;

/// The name every server certificate here is issued for.
const OTHER: &str = "other.example";

/// A CA whose server certificate is for [`OTHER`] only.
fn other_name_pki() -> Pki {
    Pki::with_server_names("unused", &[OTHER])
}

/// What rustls says when the name does not match (the source and the MQTT
/// and RocketMQ sinks use rustls): `certificate not valid for name "HOST";
/// certificate is only valid for DnsName("other.example")`.
fn rustls_wrong_name(host: &str) -> String {
    format!("certificate not valid for name \"{host}\"")
}

/// Writes `text` (whose telemetry line is the one [`source_yaml`] writes)
/// into `dir` and starts it as a bridge process with telemetry on a free port.
fn start_bridge(dir: &Path, file: &str, text: &str) -> BridgeProcess {
    let at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = text.replace(
        "telemetry: { listen: '127.0.0.1:0' }",
        &format!("telemetry: {{ listen: '{at}', summary_interval: 0s }}"),
    );
    assert!(text.contains(&at.to_string()), "{text}");
    let config = dir.join(file);
    std::fs::write(&config, text).unwrap();
    BridgeProcess::start(&config, at)
}

/// `amqp_bridge_source_connects_total` of a bridge process now.
async fn source_connects(bridge: &BridgeProcess) -> u64 {
    Scrape::parse(&bridge.scrape().await).count("amqp_bridge_source_connects_total", &[])
}

/// The `source:` block of a platform source at `host`, trusting `ca`.
fn platform_source(port: u16, host: &str, ca: &Path, client_id: &str) -> String {
    format!(
        "source:\n  kind: aliyun\n  url: amqps://{host}:{port}\n  access_key_id: {AK}\n  \
         access_key_secret: {SK}\n  consumer_group_id: {GROUP}\n  client_id: {client_id}\n  \
         tls: {{ ca_file: {ca} }}\n  reconnect: {{ initial: 100ms, max: 500ms }}\n\
         telemetry: {{ listen: '127.0.0.1:0' }}\n",
        ca = ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_source_refuses_a_certificate_for_another_name() {
    let pki = other_name_pki();
    let emulator = emulator(|c| {
        c.count = 10;
        c.cert = Some((pki.server_cert.clone(), pki.server_key.clone()));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A DNS name and an IP address: rustls checks them against different
    // kinds of subject alternative name.
    for host in ["localhost", "127.0.0.1"] {
        let source = platform_source(emulator.local_addr().port(), host, &pki.ca, "hostname");
        let mut bridge = start_bridge(
            dir.path(),
            "platform.yaml",
            &format!("{source}sinks:\n  o: {{ kind: stdout }}\n"),
        );
        // Two attempts, so the second (after the backoff) is refused too.
        let failures = bridge.logged("source connection failed", 2, 30).await;
        let connects = source_connects(&bridge).await;
        bridge.stop(Duration::from_secs(10));
        eprintln!("{host}: {}", failures[0]);
        for line in &failures {
            assert!(
                line.contains("TLS handshake") && line.contains(&rustls_wrong_name(host)),
                "{host}: {line}"
            );
        }
        assert_eq!(connects, 0, "{host}: connected anyway");
    }
    let stats = emulator.shutdown().await;
    assert_eq!(stats.logins_ok + stats.logins_refused, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_source_refuses_a_certificate_for_another_name() {
    let pki = other_name_pki();
    let (rabbit, pki) =
        tokio::task::spawn_blocking(move || (common::rabbitmq::RabbitMq::start_tls(&pki), pki))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "source:\n  kind: amqp\n  url: amqps://localhost:{port}\n  address: /queue/iot\n  \
         username: guest\n  password: guest\n  container_id: bridge-hostname\n  \
         alt_tls_establishment: true\n  tls: {{ ca_file: {ca} }}\n  \
         reconnect: {{ initial: 100ms, max: 500ms }}\n\
         telemetry: {{ listen: '127.0.0.1:0' }}\nsinks:\n  o: {{ kind: stdout }}\n",
        port = rabbit.tls_port,
        ca = pki.ca.display(),
    );
    let mut bridge = start_bridge(dir.path(), "amqp.yaml", &text);
    let failures = bridge.logged("source connection failed", 2, 30).await;
    let connects = source_connects(&bridge).await;
    bridge.stop(Duration::from_secs(10));
    eprintln!("refused: {}", failures[0]);
    for line in &failures {
        assert!(
            line.contains("TLS handshake") && line.contains(&rustls_wrong_name("localhost")),
            "{line}"
        );
    }
    assert_eq!(connects, 0, "connected anyway");
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_sink_refuses_a_certificate_for_another_name() {
    let pki = other_name_pki();
    let tls_port = free_port();
    let broker = Mosquitto::start_with(|dir| {
        let d = pki.server_files_into(dir);
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n",
            d = d.display()
        )
    });
    let emulator = emulator(|c| c.count = 10).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "hostname-mqtt", "");
    let mut bridge = start_bridge(
        dir.path(),
        "mqtt.yaml",
        &format!(
            "{source}sinks:\n  m: {{ kind: mqtt, url: \"mqtts://localhost:{tls_port}\", client_id: hostname-out, \
             tls: {{ ca_file: {ca} }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: \"r/{{messageId}}\" }} ] }}\n",
            ca = pki.ca.display()
        ),
    );
    let failures = bridge
        .logged("MQTT connection lost, refused or stuck", 2, 30)
        .await;
    let readyz = bridge.readyz().await;
    bridge.stop(Duration::from_secs(10));
    drop(broker);
    eprintln!("refused: {}", failures[0]);
    for line in &failures {
        assert!(line.contains(&rustls_wrong_name("localhost")), "{line}");
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("sink m: not connected"), "{readyz:?}");
    let stats = emulator.shutdown().await;
    // The source never attached: nothing was taken from the platform.
    assert_eq!(stats.receivers_attached, 0, "{stats:?}");
}

/// A TLS acceptor presenting `cert` and `key`.
fn acceptor(cert: &Path, key: &Path) -> tokio_rustls::TlsAcceptor {
    let chain = amqp_bridge::tls::load_certs(cert).unwrap();
    let key = amqp_bridge::tls::load_key(key).unwrap();
    tokio_rustls::TlsAcceptor::from(amqp_bridge::tls::server_config(chain, key).unwrap())
}

/// A TLS terminator in front of `upstream` on `listener`, presenting the
/// certificate of whatever acceptor `current` holds when a client connects.
/// Returns the TLS error of every handshake that failed (as the server saw
/// it).
fn tls_terminator(
    listener: tokio::net::TcpListener,
    current: Arc<Mutex<tokio_rustls::TlsAcceptor>>,
    upstream: SocketAddr,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let errors = Arc::clone(&failed);
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let acceptor = current.lock().unwrap().clone();
            let errors = Arc::clone(&errors);
            tokio::spawn(async move {
                let mut client = match acceptor.accept(client).await {
                    Ok(client) => client,
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        return;
                    }
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (failed, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_sink_refuses_a_certificate_for_another_name() {
    // tansu (plain) behind a TLS terminator, advertising the terminator's
    // port on 127.0.0.1. librdkafka's reason for a name mismatch is the same
    // as for an unknown CA ("certificate verify failed", alert
    // bad_certificate), so the test shows that the name alone decides: the
    // same sink, refused while the certificate is for other.example,
    // delivers once the terminator presents one from the same CA for
    // 127.0.0.1.
    const N: u64 = 10;
    let pki = other_name_pki();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let tls_port = listener.local_addr().unwrap().port();
    let broker = tokio::task::spawn_blocking(move || {
        let broker = common::tansu::Tansu::start_advertising(Some(tls_port));
        broker.create_topic("iot.hostname", 1);
        broker
    })
    .await
    .unwrap();
    let current = Arc::new(Mutex::new(acceptor(&pki.server_cert, &pki.server_key)));
    let (handshake_errors, terminator) = tls_terminator(
        listener,
        Arc::clone(&current),
        broker.address().parse().unwrap(),
    );
    let emulator = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "hostname-kafka", "");
    let text = format!(
        "{source}sinks:\n  k: {{ kind: kafka, brokers: [\"127.0.0.1:{tls_port}\"], tls: {{ ca_file: {ca} }} }}\n\
         routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: k, topic: iot.hostname }} ] }}\n\
         retry: {{ initial: 100ms, max: 1s }}\n",
        ca = pki.ca.display()
    );
    let config = Config::parse(&text, Path::new("kafka.yaml"), |_| None).unwrap();
    let bridge = Bridge::start(&config).await.unwrap();
    let reason = || not_ready_reason(&bridge, "sink k");
    eventually("the Kafka sink's refusal reason", 60, || {
        reason().is_some_and(|r| r.contains("SSL handshake failed"))
    })
    .await;
    // Two handshakes, each refused by the client (its alert).
    eventually("a second refused handshake", 60, || {
        handshake_errors.lock().unwrap().len() >= 2
    })
    .await;
    let why = reason().expect("not ready");
    let errors = handshake_errors.lock().unwrap().clone();
    let before = emulator.stats().snapshot();

    // The same CA, the name the client connects to: it delivers.
    let (cert, key) = pki.server_for(&["127.0.0.1"]);
    *current.lock().unwrap() = acceptor(&cert, &key);
    within(120, "all accepted", emulator.all_accepted()).await;
    bridge.shutdown().await;
    let after = emulator.shutdown().await;
    terminator.abort();
    drop(broker);
    eprintln!("refused: {why}; the terminator saw {errors:?}");
    assert!(why.contains("certificate verify failed"), "{why}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("received fatal alert: BadCertificate")),
        "{errors:?}"
    );
    assert_eq!(
        (before.receivers_attached, before.pushed, before.accepted),
        (0, 0, 0),
        "the source must not attach while the Kafka sink is not ready"
    );
    assert_eq!((after.accepted, after.outstanding), (N, 0));
}

#[cfg(feature = "rocketmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rocketmq_sink_refuses_a_certificate_for_another_name() {
    use common::rocketmq::{BrokerOptions, RocketMq};
    let cluster = tokio::task::spawn_blocking(|| {
        RocketMq::start_with(BrokerOptions {
            tls: true,
            tls_names: vec![OTHER.to_string()],
            ..BrokerOptions::default()
        })
    })
    .await
    .unwrap();
    let emulator = emulator(|c| c.count = 10).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&emulator, dir.path(), "hostname-rocketmq", "");
    // The name server's address is 127.0.0.1 (an IP address name).
    let mut bridge = start_bridge(
        dir.path(),
        "rocketmq.yaml",
        &format!(
            "{source}sinks:\n  rmq: {{ kind: rocketmq, name_server: \"{name_server}\", tls: {{ ca_file: \"{ca}\" }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: rmq, topic: iot_hostname }} ] }}\n",
            name_server = cluster.name_server(),
            ca = cluster.ca_file().display()
        ),
    );
    let failures = bridge
        .logged("RocketMQ name server not reachable yet", 1, 30)
        .await;
    let readyz = bridge.readyz().await;
    bridge.stop(Duration::from_secs(10));
    eprintln!("refused: {}", failures[0]);
    for line in &failures {
        assert!(
            line.contains("TLS") && line.contains(&rustls_wrong_name("127.0.0.1")),
            "{line}"
        );
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("sink rmq: not connected"), "{readyz:?}");
    let stats = emulator.shutdown().await;
    assert_eq!(stats.receivers_attached, 0, "{stats:?}");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_mutual_tls_takes_the_client_certificate_and_refuses_a_sink_without_one() {
    const N: u64 = 300;
    let pki = Pki::new("bridge-mqtt");
    let tls_port = free_port();
    // The subscriber uses the plain listener; the bridge the TLS one, which
    // requires a client certificate signed by the test CA.
    let broker = Mosquitto::start_with(|dir| {
        let d = pki.server_files_into(dir);
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             require_certificate true\n",
            d = d.display()
        )
    });
    let subscriber = Subscriber::start(broker.port, "mtls-sub", "mtls/#").await;
    let sink = |client: &str| {
        format!(
            "sinks:\n  m: {{ kind: mqtt, url: \"mqtts://localhost:{tls_port}\", client_id: mtls-out, \
             tls: {{ ca_file: {ca}{client} }} }}\n\
             routes:\n  - {{ match: {{ topic: \"#\" }}, to: [ {{ sink: m, topic: \"mtls/{{messageId}}\" }} ] }}\n",
            ca = pki.ca.display()
        )
    };

    // With the client certificate: every message, exactly once.
    let platform = emulator(|c| c.count = N).await;
    let dir = tempfile::tempdir().unwrap();
    let source = source_yaml(&platform, dir.path(), "mtls", "");
    let client = format!(
        ", cert_file: {}, key_file: {}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let config = Config::parse(
        &format!("{source}{}", sink(&client)),
        Path::new("mtls.yaml"),
        |_| None,
    )
    .unwrap();
    let (stats, _) = run_until_all_accepted(&config, platform, 120).await;
    assert_eq!((stats.accepted, stats.outstanding), (N, 0));
    subscriber.wait_for_total(N, 30).await;
    let counts = subscriber.counts();
    assert_eq!(counts.len() as u64, N, "distinct messages");
    assert!(counts.values().all(|c| *c == 1), "each exactly once");

    // Without one: refused by the broker, and the sink says so.
    let platform = emulator(|c| c.count = 10).await;
    let source = source_yaml(&platform, dir.path(), "mtls-none", "");
    let mut bridge = start_bridge(dir.path(), "no-cert.yaml", &format!("{source}{}", sink("")));
    let failures = bridge
        .logged("MQTT connection lost, refused or stuck", 2, 30)
        .await;
    let readyz = bridge.readyz().await;
    bridge.stop(Duration::from_secs(10));
    eprintln!("refused: {}", failures[0]);
    for line in &failures {
        assert!(line.contains("CertificateRequired"), "{line}");
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("sink m: not connected"), "{readyz:?}");
    let stats = platform.shutdown().await;
    assert_eq!(stats.receivers_attached, 0, "{stats:?}");
    // Nothing more reached the subscriber.
    assert_eq!(*subscriber.total().borrow(), N);
}
