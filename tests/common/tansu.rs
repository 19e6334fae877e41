//! A real Kafka-protocol broker (tansu, memory storage) per test.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

const INSTALL_HINT: &str = "tansu not found: run scripts/install-test-deps.sh";

/// A running tansu on a free loopback port.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts the broker and waits for its "ready" line.
    pub fn start() -> Tansu {
        Tansu::start_advertising(None)
    }

    /// Starts the broker telling clients to connect to `advertised` (a proxy
    /// port) instead of its own.
    pub fn start_advertising(advertised: Option<u16>) -> Tansu {
        let port = super::mosquitto::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let mut child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        let stdout = child.stdout.take().unwrap();
        let rx = super::follow_output(stdout, |line| line.contains("ready"), |_| {});
        rx.recv_timeout(Duration::from_secs(20))
            .expect("tansu did not become ready");
        Tansu {
            port,
            child: Some(child),
        }
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic (tansu does not auto-create).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new("tansu")
            .args([
                "topic",
                "create",
                topic,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args(["--partitions", &partitions.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        assert!(status.success(), "tansu topic create {topic} failed");
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            super::signal(child.id(), signal);
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One record as consumed back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Reads `topic` (all partitions, from the start) until `done` says enough
/// arrived and as many records as the partitions' high watermarks then count
/// (so extra, duplicate records are read too); gives up after `secs`.
pub fn consume(
    address: &str,
    topic: &str,
    partitions: u32,
    done: impl Fn(&[Record]) -> bool,
    secs: u64,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", address)
        .set("group.id", "amqp-bridge-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p as i32, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let watermarks = || -> usize {
        (0..partitions)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p as i32, Duration::from_secs(10))
                    .expect("watermarks");
                (high - low) as usize
            })
            .sum()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let mut records: Vec<Record> = Vec::new();
    loop {
        let target = watermarks();
        while (records.len() < target || !done(&records)) && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                records.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_string(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
        }
        if (records.len() >= watermarks() && done(&records))
            || std::time::Instant::now() >= deadline
        {
            return records;
        }
    }
}

/// `done` for `consume`: `n` distinct record keys have arrived.
pub fn distinct_keys(n: usize) -> impl Fn(&[Record]) -> bool {
    move |records| {
        records
            .iter()
            .map(|r| &r.key)
            .collect::<std::collections::HashSet<_>>()
            .len()
            >= n
    }
}

/// `done` for `consume`: `n` records have arrived.
pub fn at_least(n: usize) -> impl Fn(&[Record]) -> bool {
    move |records: &[Record]| records.len() >= n
}
