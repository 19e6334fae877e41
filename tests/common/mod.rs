//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod bridge_process;
pub mod metrics;
pub mod mosquitto;
pub mod pki;
pub mod proxy;
pub mod rabbitmq;
#[cfg(feature = "rocketmq")]
pub mod rocketmq;
pub mod subscriber;
pub mod tansu;
pub mod tansu_secure;

use std::sync::Arc;
use std::time::Duration;

use amqp_bridge::config::Secret;
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::source::aliyun::{now_ms, sign_at, Credentials, SignMethod};
use amqp_bridge::source::connect::{ConnectOptions, Login};

pub const AK: &str = "test-ak";
pub const SK: &str = "test-secret-value";
pub const GROUP: &str = "CG_TEST";

/// An emulator on a free loopback port with the test key and group.
pub async fn emulator(tune: impl FnOnce(&mut EmulatorConfig)) -> Emulator {
    let mut config = EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        access_keys: vec![(AK.into(), SK.into())],
        consumer_groups: vec![GROUP.into()],
        ..EmulatorConfig::default()
    };
    tune(&mut config);
    Emulator::start(config).await.expect("emulator starts")
}

/// Writes `path` by renaming a finished file over it: several bridge
/// processes share one `ca.pem`, and one starting while the next one's
/// config is written must never read it half written (`fs::write`
/// truncates first; seen once as "no certificate in file").
pub fn write_replacing(path: &std::path::Path, contents: &[u8]) {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = path.with_extension(format!("staging-{}-{n}", std::process::id()));
    std::fs::write(&staging, contents).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

/// A rustls client config trusting the emulator's generated CA.
pub fn trust(emulator: &Emulator) -> Arc<rustls::ClientConfig> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, emulator.ca_pem().expect("generated CA")).unwrap();
    amqp_bridge::tls::client_config(Some(&path), None).unwrap()
}

/// Connection options with a correctly signed login.
pub fn options(emulator: &Emulator, client_id: &str) -> ConnectOptions {
    options_signed(
        emulator,
        client_id,
        SK,
        SignMethod::HmacSha1,
        None,
        now_ms(),
    )
}

pub fn options_signed(
    emulator: &Emulator,
    client_id: &str,
    secret: &str,
    method: SignMethod,
    token: Option<&str>,
    timestamp_ms: u64,
) -> ConnectOptions {
    let secret = Secret::new(secret);
    let token = token.map(Secret::new);
    let login = sign_at(
        &Credentials {
            client_id,
            access_key_id: AK,
            access_key_secret: &secret,
            consumer_group_id: GROUP,
            instance_id: None,
            security_token: token.as_ref(),
            sign_method: method,
        },
        timestamp_ms,
    );
    ConnectOptions {
        host: "localhost".into(),
        port: emulator.local_addr().port(),
        tls: Some(trust(emulator)),
        tls_header: false,
        container_id: client_id.into(),
        login: Login::Plain {
            username: login.username,
            password: login.password,
        },
        idle_timeout: Some(Duration::from_secs(60)),
        connect_timeout: Duration::from_secs(10),
    }
}

/// Fails the test if `fut` does not finish within `secs` (a hang guard, not a sync point).
pub async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s waiting for {what}"))
}

/// The `source:` block of a bridge config pointing at `emulator`, trusting its
/// CA (written into `dir`); `extra` adds indented source keys. A `telemetry:`
/// line follows: endpoints on a free port, so tests can run side by side.
pub fn source_yaml(
    emulator: &Emulator,
    dir: &std::path::Path,
    client_id: &str,
    extra: &str,
) -> String {
    let ca = dir.join("ca.pem");
    write_replacing(&ca, emulator.ca_pem().expect("generated CA").as_bytes());
    format!(
        "source:\n  kind: aliyun\n  url: amqps://localhost:{port}\n  access_key_id: {AK}\n  \
         access_key_secret: {SK}\n  consumer_group_id: {GROUP}\n  client_id: {client_id}\n  \
         tls: {{ ca_file: {ca} }}\n{extra}telemetry: {{ listen: '127.0.0.1:0' }}\n",
        port = emulator.local_addr().port(),
        ca = ca.display(),
    )
}

/// Why `bridge` is not ready, as /readyz says it, for the line that starts
/// with `prefix` (e.g. `sink k`), if there is one.
pub fn not_ready_reason(bridge: &amqp_bridge::bridge::Bridge, prefix: &str) -> Option<String> {
    bridge
        .health()
        .readiness()
        .not_ready
        .into_iter()
        .find(|r| r.starts_with(prefix))
}

/// Polls `condition` until it holds; fails the test naming `what` after
/// `secs`. For counters that change without an event to await.
pub async fn eventually(what: &str, secs: u64, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every line of a JSON-lines file (a file or dead-letter sink's output).
pub fn read_jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// An emulator `--messages` file with one message per (topic, body).
pub fn messages_file(dir: &std::path::Path, messages: &[(&str, &str)]) -> std::path::PathBuf {
    let path = dir.join("messages.jsonl");
    let lines: Vec<String> = messages
        .iter()
        .map(|(topic, body)| serde_json::json!({"topic": topic, "body": body}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// An emulator `--messages` file from whole JSON lines (`topic`, `body`, and
/// optionally `messageId`, `generateTime`, `properties`), for tests that need
/// exact ids or exact packet sizes.
pub fn messages_file_lines(
    dir: &std::path::Path,
    lines: &[serde_json::Value],
) -> std::path::PathBuf {
    let path = dir.join("messages.jsonl");
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path
}

/// Reads a broker's log on a thread: every line goes to `on_line`, and the
/// first line for which `is_ready` holds is sent on the returned channel.
pub fn follow_output(
    output: impl std::io::Read + Send + 'static,
    is_ready: impl Fn(&str) -> bool + Send + 'static,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        // Lossy and line by line: a byte that is not UTF-8 must not stop the
        // reading (the process would then block on a full pipe).
        let mut reader = std::io::BufReader::new(output);
        let mut raw = Vec::new();
        while reader.read_until(b'\n', &mut raw).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            raw.clear();
            on_line(&line);
            if is_ready(&line) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(line);
                }
            }
        }
    });
    rx
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 as PEM files
/// (`ca.crt`, `server.crt`, `server.key`) in `dir`; returns the CA path.
pub fn make_certs(dir: &std::path::Path) -> std::path::PathBuf {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for f in ["ca.crt", "server.crt", "server.key"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir.join("ca.crt")
}

/// Sends `signal` (TERM, KILL, STOP, CONT ...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`;
/// returns once it has exited.
pub fn stop_within(mut child: std::process::Child, grace: Duration) {
    let pid = child.id();
    signal(pid, "TERM");
    let (exited, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = child.wait();
        let _ = exited.send(());
    });
    if rx.recv_timeout(grace).is_err() {
        signal(pid, "KILL");
        let _ = rx.recv();
    }
}

/// Runs the bridge until the emulator saw every message accepted (failing
/// after `secs`), then shuts both down; returns the emulator's final
/// counters and how many sends the bridge retried.
pub async fn run_until_all_accepted(
    config: &amqp_bridge::config::Config,
    emulator: Emulator,
    secs: u64,
) -> (amqp_bridge::emulator::StatsSnapshot, u64) {
    let bridge = amqp_bridge::bridge::Bridge::start(config).await.unwrap();
    within(secs, "all accepted", emulator.all_accepted()).await;
    let retries = bridge.metrics().retries();
    bridge.shutdown().await;
    (emulator.shutdown().await, retries)
}
