//! Does the bridge keep up with RocketMQ? N messages into the same broker, two
//! ways, one after the other in one process:
//! (a) baseline: the RocketMQ sink alone, N sends issued at once (its window
//!     of `max_in_flight` bounds what is in flight) — the broker's and the
//!     producer's rate;
//! (b) bridge: the IoT Platform emulator → the whole bridge (AMQP, routing,
//!     pipeline, settlement) → the same sink settings.
//!
//! Needs a running name server and broker; `scripts/bench-rocketmq.sh` starts
//! them and runs this:
//!
//!   cargo run --release --example bench_rocketmq -- NAME_SERVER [N]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::Config;
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::envelope::Envelope;
use amqp_bridge::sink::Destination;
use amqp_bridge::sink::Outgoing;
use futures_util::stream::{FuturesUnordered, StreamExt};

const AK: &str = "bench-ak";
const SK: &str = "bench-secret";
const GROUP: &str = "BENCH";

fn sink_yaml(name_server: &str) -> String {
    format!("  rmq: {{ kind: rocketmq, name_server: '{name_server}', max_in_flight: 128 }}\n")
}

async fn baseline(name_server: &str, topic: &str, n: u64) -> Duration {
    let text = format!(
        "source: {{ kind: aliyun, url: 'amqps://127.0.0.1:1', access_key_id: a, \
         access_key_secret: b, consumer_group_id: g, client_id: c }}\nsinks:\n{}",
        sink_yaml(name_server)
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).unwrap();
    let sink = amqp_bridge::sink::build("rmq", &config.sinks.0["rmq"]).unwrap();
    sink.ready().await;
    let started = Instant::now();
    let mut sends: FuturesUnordered<_> = (0..n)
        .map(|i| {
            let body = format!("{{\"n\":{i},\"temperature\":21.5,\"humidity\":40}}");
            let envelope = Envelope::new(
                body.into(),
                vec![
                    (
                        "topic".into(),
                        format!("/pk/dev{}/thing/event/property/post", i % 100),
                    ),
                    ("messageId".into(), i.to_string()),
                    ("generateTime".into(), "1700000000000".into()),
                ],
            );
            sink.send(Outgoing {
                envelope: Arc::new(envelope),
                destination: Destination::RocketMq {
                    topic: topic.to_string(),
                    tag: Some("property".into()),
                    keys: vec![i.to_string()],
                    all_properties: false,
                },
                failure: None,
            })
        })
        .collect();
    let mut failed = 0u64;
    while let Some(result) = sends.next().await {
        if result.is_err() {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(failed, 0, "baseline sends failed");
    sink.close().await;
    elapsed
}

async fn bridge(name_server: &str, topic: &str, n: u64, dir: &Path) -> Duration {
    let emulator = Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        access_keys: vec![(AK.into(), SK.into())],
        consumer_groups: vec![GROUP.into()],
        count: n,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().unwrap()).unwrap();
    let text = format!(
        "source: {{ kind: aliyun, url: 'amqps://localhost:{port}', access_key_id: {AK}, \
         access_key_secret: {SK}, consumer_group_id: {GROUP}, client_id: bench-bridge, \
         tls: {{ ca_file: '{ca}' }} }}\n\
         telemetry: {{ listen: '127.0.0.1:0' }}\nsinks:\n{sink}\
         routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: rmq, topic: {topic}, \
         tag: '{{productKey}}', keys: '{{messageId}}' }} ] }}\n",
        port = emulator.local_addr().port(),
        ca = ca.display(),
        sink = sink_yaml(name_server),
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).unwrap();
    let started = Instant::now();
    let bridge = Bridge::start(&config).await.unwrap();
    emulator.all_accepted().await;
    let elapsed = started.elapsed();
    bridge.shutdown().await;
    let stats = emulator.shutdown().await;
    assert_eq!(stats.accepted, n);
    elapsed
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name_server = args.next().expect("usage: bench_rocketmq NAME_SERVER [N]");
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Warm up both paths once (this also creates both topics).
        baseline(&name_server, "bench_base", n / 10).await;
        bridge(&name_server, "bench_bridge", n / 10, dir.path()).await;
        let base = baseline(&name_server, "bench_base", n).await;
        let full = bridge(&name_server, "bench_bridge", n, dir.path()).await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "baseline (RocketMQ sink alone):           {n} msgs in {:.2}s = {:>7.0} msg/s",
            base.as_secs_f64(),
            rate(base)
        );
        println!(
            "bridge (emulator → bridge → RocketMQ):    {n} msgs in {:.2}s = {:>7.0} msg/s",
            full.as_secs_f64(),
            rate(full)
        );
        println!(
            "bridge / baseline time: {:.2}x",
            full.as_secs_f64() / base.as_secs_f64()
        );
    });
}
