//! A real RocketMQ name server and broker (rocketmq-rust) per test, and a pull
//! consumer that reads a topic back from the broker's store.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_bridge::sink::rocketmq::{
    sign, AclCredentials, Command as Remoting, Connection, TopicRouteData,
};
use bytes::{Buf, Bytes};

const INSTALL_HINT: &str =
    "rocketmq-namesrv-rust / rocketmq-broker-rust not found: run scripts/install-test-deps.sh";

/// A name server and one broker on free loopback ports, with a temporary store.
pub struct RocketMq {
    pub name_server_port: u16,
    pub broker_port: u16,
    ha_port: u16,
    options: BrokerOptions,
    dir: tempfile::TempDir,
    name_server: Child,
    broker: Option<Child>,
}

/// The installed binary: on PATH, or where `cargo install` puts it.
fn binary(name: &str) -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    match cargo_home.map(|home| home.join("bin").join(name)) {
        Some(path) if path.exists() => path,
        _ => PathBuf::from(name),
    }
}

/// How the test broker is configured.
#[derive(Clone, Debug, Default)]
pub struct BrokerOptions {
    /// `autoCreateTopicEnable = false` when set.
    pub no_auto_create: bool,
    /// Require ACL signatures from this `access_key:secret_key`.
    pub acl_user: Option<(String, String)>,
    /// The broker's `maxMessageSize`, when not its default (4 MiB).
    pub max_message_size: Option<usize>,
    /// Serve TLS with a certificate from a test CA (see `ca_file`): the
    /// broker only TLS (enforcing), the name server TLS and plain TCP
    /// (permissive; the broker registers over plain TCP).
    pub tls: bool,
    /// With `tls`: the names the server certificate is issued for (DNS
    /// names or IP addresses); empty means `localhost` and `127.0.0.1`.
    pub tls_names: Vec<String>,
}

/// A port `p` with `p - 2` free as well (the broker's "fast" port).
fn broker_ports() -> u16 {
    loop {
        let port = super::mosquitto::free_port();
        if port > 1026 && TcpListener::bind(("127.0.0.1", port - 2)).is_ok() {
            return port;
        }
    }
}

fn spawn_logged(mut command: Command, log: &Path, ready: &str, what: &str) -> Child {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
    let stderr = child.stderr.take().unwrap();
    let mut file = std::fs::File::create(log).unwrap();
    let ready = ready.to_string();
    let rx = super::follow_output(
        stderr,
        move |line| line.contains(&ready),
        move |line| {
            use std::io::Write;
            let _ = writeln!(file, "{line}");
        },
    );
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        panic!("{what} did not start; see {}", log.display());
    }
    child
}

impl RocketMq {
    /// Name server and broker with topic auto-creation on.
    pub fn start() -> RocketMq {
        RocketMq::start_with(BrokerOptions::default())
    }

    /// Name server and broker configured by `options`.
    pub fn start_with(options: BrokerOptions) -> RocketMq {
        let dir = tempfile::tempdir().unwrap();
        if options.tls {
            if options.tls_names.is_empty() {
                super::make_certs(dir.path());
            } else {
                let names: Vec<&str> = options.tls_names.iter().map(String::as_str).collect();
                super::pki::Pki::with_server_names("unused", &names).server_files_into(dir.path());
            }
            // The name server reads TLS settings from its stored properties.
            let stored = dir.path().join("rocketmq-namesrv");
            std::fs::create_dir_all(&stored).unwrap();
            std::fs::write(
                stored.join("rocketmq-namesrv.properties"),
                format!(
                    "tls.enable=true\ntls.server.mode=permissive\ntls.server.certPath={0}/server.crt\ntls.server.keyPath={0}/server.key\n",
                    dir.path().display()
                ),
            )
            .unwrap();
        }
        let name_server_port = super::mosquitto::free_port();
        let mut command = Command::new(binary("rocketmq-namesrv-rust"));
        command
            .env("HOME", dir.path())
            .arg("--kvConfigPath")
            .arg(dir.path().join("kvConfig.json"))
            .args(["--bindAddress", "127.0.0.1"])
            .args(["--listenPort", &name_server_port.to_string()])
            .arg("--rocketmqHome")
            .arg(dir.path());
        let name_server = spawn_logged(
            command,
            &dir.path().join("namesrv.log"),
            "accepting requests",
            "rocketmq-namesrv-rust",
        );
        wait_listening(name_server_port);
        let mut cluster = RocketMq {
            name_server_port,
            broker_port: broker_ports(),
            ha_port: super::mosquitto::free_port(),
            options,
            dir,
            name_server,
            broker: None,
        };
        cluster.start_broker();
        cluster
    }

    /// The CA that signed the TLS certificate (with `tls: true`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// `host:port` of the name server, for `name_server:`.
    pub fn name_server(&self) -> String {
        format!("127.0.0.1:{}", self.name_server_port)
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Starts the broker (again, on the same ports and store) and waits until
    /// it registered with the name server.
    pub fn start_broker(&mut self) {
        let config = self.dir.path().join("broker.toml");
        let store = self.store();
        let tls = if self.options.tls {
            format!(
                "\n[broker.brokerServerConfig.tlsConfig]\nenable = true\n\n[broker.brokerServerConfig.tlsConfig.server]\nmode = \"enforcing\"\ncertPath = \"{0}/server.crt\"\nkeyPath = \"{0}/server.key\"\n",
                self.dir.path().display()
            )
        } else {
            String::new()
        };
        let auth = match &self.options.acl_user {
            None => String::new(),
            Some((user, secret)) => format!(
                "authenticationEnabled = true\ninitAuthenticationUser = \"{user}:{secret}\"\n"
            ),
        };
        std::fs::write(
            &config,
            format!(
                r#"[broker]
listenPort = {port}
brokerIp1 = "127.0.0.1"
storePathRootDir = "{store}"
autoCreateTopicEnable = {auto}
authConfigPath = "{auth_dir}"
{auth}
[broker.brokerIdentity]
brokerName = "broker-a"
brokerClusterName = "DefaultCluster"
brokerId = 0

[broker.brokerServerConfig]
bindAddress = "127.0.0.1"
{tls}
[store]
haListenAddress = "127.0.0.1"
haListenPort = {ha}
storePathRootDir = "{store}"
mappedFileSizeCommitLog = 67108864
{max_size}"#,
                port = self.broker_port,
                ha = self.ha_port,
                auto = !self.options.no_auto_create,
                store = store.display(),
                auth_dir = self.dir.path().join("auth").display(),
                max_size = self
                    .options
                    .max_message_size
                    .map_or(String::new(), |n| format!("maxMessageSize = {n}\n")),
            ),
        )
        .unwrap();
        let mut command = Command::new(binary("rocketmq-broker-rust"));
        command
            .env("HOME", self.dir.path())
            .env("ROCKETMQ_HOME", self.dir.path())
            .arg("-c")
            .arg(&config)
            .args(["-n", &self.name_server()]);
        let starts = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        self.broker = Some(spawn_logged(
            command,
            &self.dir.path().join(format!("broker-{starts}.log")),
            "started successfully",
            "rocketmq-broker-rust",
        ));
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited in 10 s.
    pub fn stop_broker(&mut self) {
        if let Some(child) = self.broker.take() {
            super::stop_within(child, Duration::from_secs(10));
        }
    }

    /// Every message of `topic` in the broker's commit log, read from its
    /// files: what the broker stored, whether or not its consume queues
    /// (which consumers read through) indexed it.
    pub fn stored(&self, topic: &str) -> Vec<Pulled> {
        let dir = self.store().join("commitlog");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        let mut stored = Vec::new();
        for file in files {
            let mut data = Bytes::from(std::fs::read(&file).unwrap());
            // Records back to back; a blank record pads the end of a file and
            // a zero size marks where writing stopped.
            while data.remaining() >= 8 {
                let size = i32::from_be_bytes(data[..4].try_into().unwrap());
                let magic = i32::from_be_bytes(data[4..8].try_into().unwrap());
                if size <= 0 || magic == MAGIC_BLANK || size as usize > data.len() {
                    break;
                }
                stored.extend(decode_messages(data.split_to(size as usize)));
            }
        }
        stored.retain(|m| m.topic == topic);
        stored
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill_broker(&mut self) {
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until something accepts connections on the port.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for RocketMq {
    fn drop(&mut self) {
        if let Some(mut child) = self.broker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.name_server.kill();
        let _ = self.name_server.wait();
    }
}

/// One message as read back from the broker's store.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub topic: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub body: Vec<u8>,
    pub properties: BTreeMap<String, String>,
}

impl Pulled {
    /// The message's tag (`TAGS`).
    pub fn tag(&self) -> Option<&str> {
        self.properties.get("TAGS").map(String::as_str)
    }
    /// The message's keys (`KEYS`, space separated).
    pub fn keys(&self) -> Vec<&str> {
        self.properties
            .get("KEYS")
            .map_or_else(Vec::new, |k| k.split(' ').collect())
    }
}

const PULL_MESSAGE: i32 = 11;
const PULL_NOT_FOUND: i32 = 19;
const PULL_RETRY_IMMEDIATELY: i32 = 20;
const PULL_OFFSET_MOVED: i32 = 21;
/// `sysFlag` of a pull that carries its own subscription expression.
const FLAG_SUBSCRIPTION: i32 = 4;

/// Reads every message of `topic` from the first offset, in every read queue
/// the name server lists, with the broker filtering on `subscription` (`*` or
/// `tagA || tagB`). Polls until `done` holds on what was read and every queue
/// was read to its end, then returns all of it; panics after `secs`.
pub async fn pull_all(
    name_server: &str,
    acl: Option<&AclCredentials>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    topic: &str,
    subscription: &str,
    done: impl Fn(&[Pulled]) -> bool,
    secs: u64,
) -> Vec<Pulled> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let timeout = Duration::from_secs(5);
    let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut pulled = Vec::new();
    loop {
        let route = route(name_server, tls, topic, timeout).await;
        let mut drained = true;
        for queue in &route.queue_datas {
            let Some(addr) = route
                .broker_datas
                .iter()
                .find(|b| b.broker_name == queue.broker_name)
                .and_then(|b| b.broker_addrs.get("0"))
            else {
                continue;
            };
            let connection = match Connection::open(addr, tls, timeout).await {
                Ok(c) => c,
                Err(_) => {
                    drained = false;
                    continue;
                }
            };
            for queue_id in 0..queue.read_queue_nums as i32 {
                let offset = offsets.entry((addr.clone(), queue_id)).or_insert(0);
                loop {
                    let fields = [
                        ("consumerGroup", "amqp-bridge-test-reader".to_string()),
                        ("topic", topic.to_string()),
                        ("queueId", queue_id.to_string()),
                        ("queueOffset", offset.to_string()),
                        ("maxMsgNums", "256".to_string()),
                        ("sysFlag", FLAG_SUBSCRIPTION.to_string()),
                        ("commitOffset", "0".to_string()),
                        ("suspendTimeoutMillis", "0".to_string()),
                        ("subscription", subscription.to_string()),
                        ("subVersion", "0".to_string()),
                        ("expressionType", "TAG".to_string()),
                    ];
                    let mut request = Remoting::request(
                        PULL_MESSAGE,
                        fields
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect(),
                    );
                    if let Some(acl) = acl {
                        sign(&mut request, acl);
                    }
                    let Ok(response) = connection.request(request, timeout).await else {
                        drained = false;
                        break;
                    };
                    let next = response
                        .ext_fields
                        .get("nextBeginOffset")
                        .and_then(|n| n.parse::<i64>().ok());
                    match response.code {
                        0 => {
                            let batch = decode_messages(response.body.clone());
                            pulled.extend(batch);
                            match next {
                                Some(next) if next > *offset => *offset = next,
                                _ => break,
                            }
                        }
                        PULL_NOT_FOUND | PULL_OFFSET_MOVED | PULL_RETRY_IMMEDIATELY => {
                            // Filtered-out messages still move the offset on.
                            match next {
                                Some(next) if next > *offset => *offset = next,
                                _ => break,
                            }
                        }
                        code => panic!(
                            "pull from {addr} queue {queue_id} failed: code {code} {:?}",
                            response.remark
                        ),
                    }
                }
            }
        }
        if drained && done(&pulled) {
            return pulled;
        }
        assert!(
            Instant::now() < deadline,
            "gave up reading {topic} after {secs} s with {} messages",
            pulled.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn route(
    name_server: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    topic: &str,
    timeout: Duration,
) -> TopicRouteData {
    let connection = Connection::open(name_server, tls, timeout)
        .await
        .expect("name server reachable");
    let response = connection
        .request(
            Remoting::request(105, [("topic".to_string(), topic.to_string())].into()),
            timeout,
        )
        .await
        .expect("route answered");
    if response.code != 0 {
        return TopicRouteData::default();
    }
    TopicRouteData::parse(&response.body).expect("route parses")
}

/// Magic codes of a stored message; V2 has a two-byte topic length.
const MAGIC_V1: i32 = 0xdaa3_20a7_u32 as i32;
const MAGIC_V2: i32 = 0xdaa3_20a8_u32 as i32;
/// Pads the end of a commit log file.
const MAGIC_BLANK: i32 = 0xcbd4_3194_u32 as i32;
const FLAG_COMPRESSED: i32 = 1;
const FLAG_BORN_HOST_V6: i32 = 1 << 4;
const FLAG_STORE_HOST_V6: i32 = 1 << 5;

/// Decodes a pull response body: stored messages back to back, as Apache
/// RocketMQ's `MessageDecoder` reads them.
pub fn decode_messages(mut body: Bytes) -> Vec<Pulled> {
    let mut messages = Vec::new();
    while body.remaining() >= 4 {
        let size = body.get_i32() as usize;
        let mut m = body.split_to(size - 4);
        let magic = m.get_i32();
        assert!(
            magic == MAGIC_V1 || magic == MAGIC_V2,
            "unknown message magic {magic:#x}"
        );
        let _body_crc = m.get_i32();
        let queue_id = m.get_i32();
        let _flag = m.get_i32();
        let queue_offset = m.get_i64();
        let _physical_offset = m.get_i64();
        let sys_flag = m.get_i32();
        let _born_timestamp = m.get_i64();
        let born_ip = if sys_flag & FLAG_BORN_HOST_V6 != 0 {
            16
        } else {
            4
        };
        m.advance(born_ip + 4);
        let _store_timestamp = m.get_i64();
        let store_ip = if sys_flag & FLAG_STORE_HOST_V6 != 0 {
            16
        } else {
            4
        };
        m.advance(store_ip + 4);
        let _reconsume_times = m.get_i32();
        let _prepared_offset = m.get_i64();
        let body_len = m.get_i32() as usize;
        let message_body = m.split_to(body_len).to_vec();
        assert_eq!(sys_flag & FLAG_COMPRESSED, 0, "the bridge never compresses");
        let topic_len = if magic == MAGIC_V2 {
            m.get_i16() as usize
        } else {
            m.get_u8() as usize
        };
        let topic = String::from_utf8(m.split_to(topic_len).to_vec()).unwrap();
        let properties_len = m.get_i16() as usize;
        let text = String::from_utf8(m.split_to(properties_len).to_vec()).unwrap();
        let properties = text
            .split('\u{2}')
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| pair.split_once('\u{1}'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        messages.push(Pulled {
            topic,
            queue_id,
            queue_offset,
            body: message_body,
            properties,
        });
    }
    messages
}
