//! The generic `amqp` source's logins without credentials against a real
//! RabbitMQ 3.10 (AMQP 1.0 plugin): `sasl: anonymous` (SASL ANONYMOUS) and
//! `sasl: none` (no SASL layer at all). The plugin takes both as its
//! `amqp1_0.default_user` (the harness sets `guest`) and refuses both when
//! that is `none`. A recording proxy between the bridge and RabbitMQ shows
//! which protocol header and mechanism went over the wire.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use common::mosquitto::Mosquitto;
use common::rabbitmq::RabbitMq;
use common::subscriber::Subscriber;
use common::*;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Message};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::{Connection, Sender, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The AMQP 1.0 protocol headers a client opens with (spec 2.2, 5.3.1).
const AMQP_HEADER: &[u8] = b"AMQP\x00\x01\x00\x00";
const SASL_HEADER: &[u8] = b"AMQP\x03\x01\x00\x00";

/// How many bytes of each client's stream the proxy keeps: the protocol
/// header, the SASL exchange and the open all fit.
const RECORDED: usize = 512;

/// A TCP proxy to `upstream` that keeps the first bytes each client sent.
struct RecordingProxy {
    port: u16,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    async fn start(upstream: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent: Arc<Mutex<Vec<Vec<u8>>>> = Default::default();
        let record = sent.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let slot = {
                    let mut all = record.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let record = record.clone();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        {
                            let mut all = record.lock().unwrap();
                            let kept = &mut all[slot];
                            let room = RECORDED.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = server_write.shutdown().await;
                });
            }
        });
        RecordingProxy { port, sent, task }
    }

    /// The first bytes of every connection so far, in order of arrival.
    fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A bridge from queue `queue` (through the proxy) to Mosquitto, logging in
/// with `sasl`, copying each message to `sasl/{queue}/{messageId}`.
fn config(proxy_port: u16, mqtt_port: u16, queue: &str, sasl: &str) -> Config {
    let text = format!(
        r##"source:
  kind: amqp
  url: amqp://127.0.0.1:{proxy_port}
  address: /queue/{queue}
  sasl: {sasl}
  container_id: bridge-{queue}
  credit: 50
  reconnect: {{ initial: 100ms, max: 1s }}
sinks:
  m: {{ kind: mqtt, url: "mqtt://127.0.0.1:{mqtt_port}", client_id: {queue}-out }}
routes:
  - {{ name: all, match: {{ topic: "#" }}, to: [ {{ sink: m, topic: "sasl/{queue}/{{messageId}}", qos: 1 }} ] }}
telemetry: {{ listen: "127.0.0.1:0", summary_interval: 0s }}
"##
    );
    Config::parse(&text, Path::new("sasl.yaml"), |_| None).expect("test config parses")
}

/// Sends messages `0..n` into `/queue/{queue}` from an independent AMQP 1.0
/// client (PLAIN as guest), each with application property `messageId`.
async fn send(rabbit: &RabbitMq, queue: &str, n: u64) {
    let url = format!("amqp://guest:guest@127.0.0.1:{}", rabbit.port);
    let mut connection = Connection::open("sasl-test-sender", url.as_str())
        .await
        .expect("sender connects");
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut sender = Sender::attach(&mut session, "sasl-test-sender", format!("/queue/{queue}"))
        .await
        .expect("sender attaches");
    for id in 0..n {
        let message = Message::builder()
            .application_properties(
                ApplicationProperties::builder()
                    .insert("messageId", id.to_string())
                    .build(),
            )
            .data(Binary::from(format!("{{\"n\":{id}}}").into_bytes()))
            .build();
        let outcome = sender.send(message).await.expect("sent");
        outcome
            .accepted_or_else(|o| o)
            .expect("accepted by RabbitMQ");
    }
    sender.detach().await.ok();
    session.end().await.ok();
    connection.close().await.ok();
}

/// `rabbitmqctl list_channels user`: the user of each open channel (an
/// AMQP 1.0 session, for the plugin).
fn channel_users(rabbit: &RabbitMq) -> Vec<String> {
    let out = rabbit.ctl(&["list_channels", "-q", "--no-table-headers", "user"]);
    assert!(
        out.status.success(),
        "list_channels: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_anonymous_and_no_sasl_log_in_as_the_default_user_and_deliver_every_message() {
    const N: u64 = 500;
    let rabbit = tokio::task::spawn_blocking(RabbitMq::start).await.unwrap();
    let broker = Mosquitto::start();
    let subscriber = Subscriber::start(broker.port, "sasl-sub", "sasl/#").await;

    for (queue, sasl) in [("anonymous", "anonymous"), ("nosasl", "none")] {
        within(120, "all sent", send(&rabbit, queue, N)).await;
        assert_eq!(
            rabbit.queue_depth(queue),
            (N, 0),
            "{queue} before the bridge"
        );
        let proxy = RecordingProxy::start(rabbit.port).await;
        let bridge = Bridge::start(&config(proxy.port, broker.port, queue, sasl))
            .await
            .unwrap();
        let prefix = format!("sasl/{queue}/");
        eventually(&format!("{N} copies under {prefix}"), 120, || {
            subscriber
                .counts()
                .keys()
                .filter(|t| t.starts_with(&prefix))
                .count() as u64
                == N
        })
        .await;
        eventually("every message accepted at RabbitMQ", 60, || {
            bridge.metrics().accepted() == N
        })
        .await;
        // The broker's view of the bridge's session: it runs as the default
        // user. (RabbitMQ 3.10 lists AMQP 1.0 sessions as channels, not
        // their connections; the sender's session is gone by now.)
        let seen = tokio::task::block_in_place(|| channel_users(&rabbit));
        let m = bridge.metrics().clone();
        bridge.shutdown().await;
        assert_eq!(seen, ["guest"], "{queue}: the users of RabbitMQ's channels");
        assert_eq!(
            (m.received(), m.accepted(), m.released(), m.unsettled()),
            (N, N, 0, 0),
            "{queue}: (received, accepted, released, unsettled)"
        );
        assert_eq!((m.connects(), m.reconnects()), (1, 0), "{queue}");
        let counts = subscriber.counts();
        for id in 0..N {
            assert_eq!(
                counts.get(&format!("{prefix}{id}")),
                Some(&1),
                "{queue}: message {id} at the subscriber"
            );
        }
        eventually(&format!("queue {queue} empty"), 30, || {
            rabbit.queue_depth(queue) == (0, 0)
        })
        .await;

        // What the bridge put on the wire.
        let sent = proxy.sent();
        assert_eq!(sent.len(), 1, "{queue}: one connection");
        let first = &sent[0];
        match sasl {
            "anonymous" => {
                assert!(
                    first.starts_with(SASL_HEADER),
                    "{queue}: {}",
                    first.escape_ascii()
                );
                assert!(
                    contains(first, b"ANONYMOUS"),
                    "{queue}: {}",
                    first.escape_ascii()
                );
                assert!(
                    !contains(first, b"PLAIN"),
                    "{queue}: {}",
                    first.escape_ascii()
                );
                // After the SASL outcome, the AMQP header follows.
                assert!(
                    contains(&first[8..], AMQP_HEADER),
                    "{queue}: {}",
                    first.escape_ascii()
                );
            }
            _ => {
                assert!(
                    first.starts_with(AMQP_HEADER),
                    "{queue}: {}",
                    first.escape_ascii()
                );
                assert!(
                    !contains(first, SASL_HEADER),
                    "{queue}: {}",
                    first.escape_ascii()
                );
                assert!(
                    !contains(first, b"ANONYMOUS"),
                    "{queue}: {}",
                    first.escape_ascii()
                );
            }
        }
    }
    assert_eq!(subscriber.counts().len() as u64, 2 * N);

    // The control: with `amqp1_0.default_user = none` the plugin refuses
    // both (it offers no ANONYMOUS and answers a bare AMQP header with its
    // SASL header), so the logins above were the default user's.
    let out = rabbit.ctl(&[
        "eval",
        "application:set_env(rabbitmq_amqp1_0, default_user, none).",
    ]);
    assert!(out.status.success(), "{out:?}");
    for (queue, sasl) in [("anonymous", "anonymous"), ("nosasl", "none")] {
        let bridge = Bridge::start(&config(rabbit.port, broker.port, queue, sasl))
            .await
            .unwrap();
        eventually(&format!("{sasl}: two failed attempts"), 30, || {
            bridge.metrics().reconnects() >= 2
        })
        .await;
        let m = bridge.metrics().clone();
        bridge.shutdown().await;
        assert_eq!(m.connects(), 0, "{sasl}: connected without a default user");
        assert_eq!(m.received(), 0);
    }
    tokio::task::spawn_blocking(move || drop(rabbit))
        .await
        .unwrap();
}
