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
    /// The tansu binary, for its `topic` and `user` commands.
    program: String,
    child: Option<Child>,
}

/// How to start a tansu.
pub struct Launch<'a> {
    pub program: &'a str,
    /// The panic message when `program` cannot be started.
    pub install_hint: &'a str,
    /// Working directory (a `sqlite://FILE` storage is relative to it).
    pub cwd: Option<&'a std::path::Path>,
    pub storage: &'a str,
    /// Listen on this port (None: a free one).
    pub port: Option<u16>,
    /// Advertise this port instead of its own (a proxy's).
    pub advertised: Option<u16>,
    pub flags: &'a [&'a str],
}

impl Tansu {
    /// Starts the broker and waits for its "ready" line.
    pub fn start() -> Tansu {
        Tansu::start_advertising(None)
    }

    /// Starts the broker telling clients to connect to `advertised` (a proxy
    /// port) instead of its own.
    pub fn start_advertising(advertised: Option<u16>) -> Tansu {
        Tansu::start_with(advertised, &[])
    }

    /// Starts the broker with extra command-line flags (e.g. `--authentication`).
    pub fn start_with(advertised: Option<u16>, flags: &[&str]) -> Tansu {
        Tansu::launch(&Launch {
            program: "tansu",
            install_hint: INSTALL_HINT,
            cwd: None,
            storage: "memory://tansu/",
            port: None,
            advertised,
            flags,
        })
    }

    /// Starts a tansu as `launch` says and waits for its "ready" line.
    pub fn launch(launch: &Launch) -> Tansu {
        let port = launch.port.unwrap_or_else(super::mosquitto::free_port);
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", launch.advertised.unwrap_or(port));
        let mut command = Command::new(launch.program);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", launch.storage])
            .args(launch.flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(cwd) = launch.cwd {
            command.current_dir(cwd);
        }
        let hint = launch.install_hint;
        let mut child = command.spawn().unwrap_or_else(|e| panic!("{hint} ({e})"));
        let stdout = child.stdout.take().unwrap();
        // TANSU_LOG=1 prints the broker's log (set RUST_LOG for its level).
        let show = std::env::var_os("TANSU_LOG").is_some();
        let rx = super::follow_output(
            stdout,
            |line| line.contains("ready"),
            move |line| {
                if show {
                    eprintln!("tansu: {line}");
                }
            },
        );
        rx.recv_timeout(Duration::from_secs(30))
            .expect("tansu did not become ready");
        Tansu {
            port,
            program: launch.program.to_string(),
            child: Some(child),
        }
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Creates a topic (tansu does not auto-create).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let status = Command::new(&self.program)
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

    /// Creates a SCRAM user (`mechanism`: scram256 or scram512); the broker
    /// must run without `--authentication` (the command does not log in).
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) {
        let status = Command::new(&self.program)
            .args(["user", "create", name, password])
            .args(["--mechanism", mechanism])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .status()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        assert!(status.success(), "tansu user create {name} failed");
    }

    /// Stops the broker and waits until it exited.
    pub fn stop(mut self) {
        if let Some(child) = self.child.take() {
            super::stop_within(child, Duration::from_secs(10));
        }
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
    consume_with(&[], address, topic, partitions, done, secs)
}

/// [`consume`] with extra client properties (TLS, SASL).
pub fn consume_with(
    properties: &[(String, String)],
    address: &str,
    topic: &str,
    partitions: u32,
    done: impl Fn(&[Record]) -> bool,
    secs: u64,
) -> Vec<Record> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", address)
        .set("group.id", "amqp-bridge-test")
        .set("enable.auto.commit", "false");
    for (key, value) in properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
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
