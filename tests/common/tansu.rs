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

/// One record batch as the broker returns it: its codec and record count.
#[derive(Debug)]
pub struct StoredBatch {
    /// The compression codec (attributes bits 0-2: 0 none, 1 gzip, 2
    /// snappy, 3 lz4, 4 zstd).
    pub codec: i16,
    pub records: i32,
}

/// Every record batch of partition 0 of `topic`, read with raw Fetch
/// requests (version 4, the first to carry v2 record batches) on one TCP
/// connection, from offset 0 until a fetch returns no whole batch. Only the
/// batch headers are read, never the (compressed) records: what the
/// producer sent, as tansu stores each batch as produced, counted without
/// relying on tansu's high watermark (see [`consume`]).
pub fn stored_batches(address: &str, topic: &str) -> Vec<StoredBatch> {
    use std::io::{Read, Write};
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as i16).to_be_bytes());
        out.extend(s.as_bytes());
    }
    /// Big-endian reads from the front of a response.
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> &'a [u8] {
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            head
        }
        fn i16(&mut self) -> i16 {
            i16::from_be_bytes(self.take(2).try_into().unwrap())
        }
        fn i32(&mut self) -> i32 {
            i32::from_be_bytes(self.take(4).try_into().unwrap())
        }
        fn i64(&mut self) -> i64 {
            i64::from_be_bytes(self.take(8).try_into().unwrap())
        }
    }
    const MAX_BYTES: i32 = 8 << 20;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut batches: Vec<StoredBatch> = Vec::new();
    let mut offset = 0i64;
    for correlation in 1..=10_000i32 {
        let mut request = Vec::new();
        request.extend(1i16.to_be_bytes()); // Fetch
        request.extend(4i16.to_be_bytes()); // version
        request.extend(correlation.to_be_bytes());
        string(&mut request, "amqp-bridge-test-raw-fetch");
        request.extend((-1i32).to_be_bytes()); // replica id: a consumer
                                               // tansu 0.6.0 answers a fetch that may not wait with no topic at all.
        request.extend(100i32.to_be_bytes()); // max wait ms
        request.extend(1i32.to_be_bytes()); // min bytes
        request.extend(MAX_BYTES.to_be_bytes());
        request.push(0); // isolation: read uncommitted
        request.extend(1i32.to_be_bytes()); // one topic
        string(&mut request, topic);
        request.extend(1i32.to_be_bytes()); // one partition
        request.extend(0i32.to_be_bytes()); // partition 0
        request.extend(offset.to_be_bytes());
        request.extend(MAX_BYTES.to_be_bytes());
        stream
            .write_all(&(request.len() as i32).to_be_bytes())
            .unwrap();
        stream.write_all(&request).unwrap();
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).unwrap();
        let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
        stream.read_exact(&mut response).unwrap();
        let mut r = Reader(&response);
        assert_eq!(r.i32(), correlation, "correlation id");
        let _throttle = r.i32();
        assert_eq!(r.i32(), 1, "one topic in the fetch response");
        let name = r.i16() as usize;
        assert_eq!(r.take(name), topic.as_bytes());
        assert_eq!(r.i32(), 1, "one partition in the fetch response");
        assert_eq!(r.i32(), 0, "partition 0");
        assert_eq!(r.i16(), 0, "fetch error code");
        let _high_watermark = r.i64();
        let _last_stable = r.i64();
        for _ in 0..r.i32().max(0) {
            let _aborted = (r.i64(), r.i64());
        }
        let size = r.i32().max(0) as usize;
        let mut records = r.take(size);
        let before = batches.len();
        // A record batch: base offset (8), length of the rest (4), leader
        // epoch (4), magic (1), CRC (4), attributes (2), last offset delta
        // (4), two timestamps (16), producer id (8), epoch (2), base
        // sequence (4), record count (4), records. The last one may be cut
        // short by the size limit: it is read again from its offset.
        while records.len() >= 61 {
            let field = |at: usize, n: usize| &records[at..at + n];
            let length = i32::from_be_bytes(field(8, 4).try_into().unwrap()) as usize;
            if records.len() < 12 + length {
                break;
            }
            assert_eq!(records[16], 2, "record batch magic");
            let base_offset = i64::from_be_bytes(field(0, 8).try_into().unwrap());
            let last_delta = i32::from_be_bytes(field(23, 4).try_into().unwrap());
            batches.push(StoredBatch {
                codec: i16::from_be_bytes(field(21, 2).try_into().unwrap()) & 0b111,
                records: i32::from_be_bytes(field(57, 4).try_into().unwrap()),
            });
            offset = base_offset + i64::from(last_delta) + 1;
            records = &records[12 + length..];
        }
        if batches.len() == before {
            return batches;
        }
    }
    panic!("{topic}: more than 10 000 fetches");
}
