//! The Kafka row: into tansu. Baseline: a direct rdkafka `FutureProducer`
//! with the Kafka sink's librdkafka settings (acks=all, idempotence,
//! librdkafka's default linger and batching; see `sink_client`) sending
//! the emulator's generated bodies with the same three headers the sink
//! adds, at most `max_in_flight` (the bridge's default, 1 024) unconfirmed,
//! counted by delivery reports. Hand-written forwarder
//! (`bench_common::forwarder`): a bare receiver queuing each message on one
//! such producer and accepting it on its delivery report, credit = window.
//! Bridge: the emulator → the whole bridge → the Kafka sink. Forwarder and
//! bridge are done when the emulator saw all N accepted (which both do
//! only after each delivery report). Each run writes its own topic, read
//! back afterwards to check the count (`bench.direct.w`, `.m`,
//! `bench.forwarder.w`, `.m`, `bench.bridge.w`, `.m` for warm-up and
//! measured run, one partition each, created by the script).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::config::{Config, SinkConfig};
use amqp_bridge::emulator::{Generator, MessageSource};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::bench_common::forwarder::forward;
use crate::bench_common::{credit, emulator, source_yaml, write_ca, BareLink};
use crate::{bridge_until_accepted, cpu, limit, measure_sides, Row, Run, Shortfalls, Side};

const DIRECT_TOPIC: &str = "bench.direct";
const BRIDGE_TOPIC: &str = "bench.bridge";
const FORWARDER_TOPIC: &str = "bench.forwarder";
/// The bridge's default `max_in_flight`, used as the direct producer's window.
const DEFAULT_WINDOW: usize = 1024;

/// `--kafka-window` (both sides' window) and `--kafka-sink` (more keys of
/// the sink block, e.g. `linger: 20ms`, which both sides use).
static SETTINGS: std::sync::OnceLock<(usize, String)> = std::sync::OnceLock::new();

pub fn set(window: Option<usize>, sink_keys: Option<String>) {
    let _ = SETTINGS.set((
        window.unwrap_or(DEFAULT_WINDOW),
        sink_keys.unwrap_or_default(),
    ));
}

fn window() -> usize {
    SETTINGS.get().map(|s| s.0).unwrap_or(DEFAULT_WINDOW)
}

fn sink_yaml(brokers: &str) -> String {
    let extra = SETTINGS
        .get()
        .map(|s| s.1.as_str())
        .filter(|keys| !keys.is_empty())
        .map(|keys| format!(", {keys}"))
        .unwrap_or_default();
    format!("sinks:\n  k: {{ kind: kafka, brokers: ['{brokers}']{extra} }}\n")
}

/// The librdkafka settings the bridge's Kafka sink makes of this sink
/// block (`KafkaSinkConfig::librdkafka_config`), for the direct producer
/// and the forwarder.
fn sink_client(brokers: &str) -> ClientConfig {
    let text = format!(
        "source: {{ kind: aliyun, url: 'amqps://127.0.0.1:1', access_key_id: a, \
         access_key_secret: b, consumer_group_id: g, client_id: c }}\n{}",
        sink_yaml(brokers)
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("sink config");
    let Some(SinkConfig::Kafka(kafka)) = config.sinks.0.get("k") else {
        panic!("no Kafka sink in the bench config");
    };
    kafka
        .librdkafka_config()
        .expect("the sink's librdkafka configuration")
}

/// The three headers the sink adds: the platform's `topic`, `messageId`
/// and `generateTime` properties.
fn platform_headers(
    topic: &str,
    message_id: Option<&str>,
    generate_time: Option<&str>,
) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "topic",
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: "messageId",
            value: message_id.map(str::as_bytes),
        })
        .insert(Header {
            key: "generateTime",
            value: generate_time.map(str::as_bytes),
        })
}

/// Reads `topic` (one partition) from the start and counts its records
/// and their distinct `messageId` headers, until at least `expected`
/// arrived and nothing more came for half a second (or 30 s passed
/// without one). Counted by a consumer because tansu's high watermark
/// does not count records.
fn consumed(brokers: &str, topic: &str, expected: u64) -> (u64, u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "amqp-bridge-bench")
        .set("enable.auto.commit", "false")
        .create()
        .expect("bench consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition 0");
    consumer.assign(&assignment).expect("assign");
    let mut records = 0u64;
    let mut ids = HashSet::new();
    let mut last = Instant::now();
    loop {
        let quiet = last.elapsed();
        if (records >= expected && quiet > Duration::from_millis(500))
            || quiet > Duration::from_secs(30)
        {
            return (records, ids.len() as u64);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records += 1;
                last = Instant::now();
                let id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "messageId")
                        .and_then(|h| h.value.map(<[u8]>::to_vec))
                });
                ids.insert(id);
            }
            Some(Err(e)) => {
                eprintln!("bench: consumer of {topic}: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            None => {}
        }
    }
}

/// Checks what a run's topic holds against what its side confirmed; the
/// run delivered what both agree on (distinct messages).
fn verified(brokers: &str, topic: &str, confirmed: u64, what: &str) -> u64 {
    let (records, distinct) = consumed(brokers, topic, confirmed);
    if records != confirmed || distinct != confirmed {
        eprintln!(
            "bench: {what}: {confirmed} confirmed, {records} records in {topic} \
             ({distinct} distinct messageIds)"
        );
    }
    confirmed.min(distinct)
}

async fn direct(brokers: &str, n: u64, run: &str) -> Run {
    let topic = format!("{DIRECT_TOPIC}.{run}");
    let mut generator = Generator::new(n);
    let messages: Vec<_> = std::iter::from_fn(|| generator.next_message()).collect();
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let producer: FutureProducer = sink_client(brokers).create().expect("producer");
    let mut confirmed = 0u64;
    let mut failed = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut tally = |result: Result<_, _>| match result {
        Ok(_) => confirmed += 1,
        Err((e, _)) => {
            if failed == 0 {
                eprintln!("bench: direct Kafka producer: {e}");
            }
            failed += 1;
        }
    };
    let send_all = async {
        for m in &messages {
            if in_flight.len() >= window() {
                if let Some(result) = in_flight.next().await {
                    tally(result);
                }
            }
            let generate_time = m.generate_time.to_string();
            let headers = platform_headers(&m.topic, m.message_id.as_deref(), Some(&generate_time));
            let record = FutureRecord::<[u8], [u8]>::to(&topic)
                .payload(&m.body[..])
                .headers(headers);
            in_flight.push(producer.send(record, Timeout::Never));
        }
        while let Some(result) = in_flight.next().await {
            tally(result);
        }
    };
    let _ = tokio::time::timeout(limit(n), send_all).await;
    let elapsed = started.elapsed();
    let usage = meter.stop();
    if failed > 0 {
        eprintln!("bench: direct Kafka producer: {failed} failed");
    }
    Run {
        delivered: verified(brokers, &topic, confirmed, "direct Kafka producer"),
        elapsed,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// The hand-written forwarder ([`forward`]): each message queued on one
/// `FutureProducer` with the sink's settings and the same three headers,
/// accepted at the source on its delivery report, at most the same window
/// unconfirmed; done, like the bridge, when the emulator saw all N
/// accepted.
async fn forwarder(brokers: &str, n: u64, run: &str, dir: &Path) -> Run {
    let topic = format!("{FORWARDER_TOPIC}.{run}");
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let meter = cpu::Meter::start();
    let started = Instant::now();
    let mut link = BareLink::attach(
        &emulator,
        &ca,
        &format!("bench-kafka-forwarder-{run}"),
        credit().max(window() as u32),
    )
    .await;
    let producer: FutureProducer = sink_client(brokers).create().expect("producer");
    let forwarded = forward(&mut link, n, window(), |message| {
        let headers = platform_headers(
            &message.topic,
            message.message_id.as_deref(),
            message.generate_time.as_deref(),
        );
        let record = FutureRecord::<[u8], [u8]>::to(&topic)
            .payload(&message.body[..])
            .headers(headers);
        // Queued at once (nothing to await); the report is the answer.
        let queued = producer.send_result(record).map_err(|(e, _)| e);
        std::future::ready(async move {
            match queued {
                Ok(report) => matches!(report.await, Ok(Ok(_))),
                Err(e) => {
                    eprintln!("bench: Kafka forwarder: {e}");
                    false
                }
            }
        })
    });
    let _ = tokio::time::timeout(limit(n), async {
        forwarded.await;
        emulator.all_accepted().await;
    })
    .await;
    let elapsed = started.elapsed();
    let usage = meter.stop();
    link.close().await;
    let stats = emulator.shutdown().await;
    Run {
        delivered: verified(brokers, &topic, stats.accepted, "Kafka forwarder"),
        elapsed,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

async fn bridge(brokers: &str, n: u64, run: &str, dir: &Path) -> Run {
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    let text = format!(
        "max_in_flight: {window}\n{source}{sinks}routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: k, topic: {BRIDGE_TOPIC}.{run} }} ] }}\n",
        source = source_yaml(&emulator, &ca, &format!("bench-kafka-{run}")),
        sinks = sink_yaml(brokers),
        window = window(),
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).expect("bench config");
    let (elapsed, usage, stats) = bridge_until_accepted(&config, emulator, n).await;
    let topic = format!("{BRIDGE_TOPIC}.{run}");
    Run {
        delivered: verified(brokers, &topic, stats.accepted, "Kafka bridge"),
        elapsed,
        cpu: usage.cpu,
        runs: usage.runs,
    }
}

/// Warm-up of N/10 on every side, then N each.
pub async fn row(n: u64, brokers: &str, dir: &Path, short: &mut Shortfalls) -> Row {
    let sides: [(&str, Side); 3] = [
        (
            "direct",
            Box::new(move |n, run| Box::pin(direct(brokers, n, run))),
        ),
        (
            "forwarder",
            Box::new(move |n, run| Box::pin(forwarder(brokers, n, run, dir))),
        ),
        (
            "bridge",
            Box::new(move |n, run| Box::pin(bridge(brokers, n, run, dir))),
        ),
    ];
    let [baseline, forwarder, bridge] = measure_sides("Kafka", n, &sides, short)
        .await
        .try_into()
        .unwrap_or_else(|_| unreachable!("three sides, three runs"));
    Row {
        name: format!(
            "Kafka → tansu, acks=all + idempotence, window {} (baseline: direct rdkafka FutureProducer)",
            window()
        ),
        n,
        baseline,
        forwarder: Some(forwarder),
        bridge,
    }
}
