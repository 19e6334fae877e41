//! The container image, run the way a deployment runs it: built by
//! scripts/container-image.sh around the test binary, started by podman as
//! its non-root user on a read-only root file system with the configuration
//! and CA mounted read-only, consuming the emulator on the host and forwarding
//! to a Mosquitto on the host and to a file sink on the /data volume. Its
//! HEALTHCHECK must report healthy, and `podman stop` (SIGTERM to the bridge,
//! PID 1 in the container) must drain: exit 0, every forwarded message
//! accepted, the rest released for redelivery, 0 outstanding in the end.
//!
//! The container has a network namespace of its own (slirp4netns) that reaches
//! the host's loopback at 10.0.2.2, so the image's unchanged HEALTHCHECK
//! (GET http://127.0.0.1:9464/readyz inside the container) is what runs, and
//! port 9464 of the host is never taken; /metrics is published on a free
//! host port.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::metrics::scrape;
use common::mosquitto::{free_port, Mosquitto};
use common::subscriber::Subscriber;
use common::*;

/// The host's loopback, seen from a slirp4netns network namespace.
const HOST: &str = "10.0.2.2";
const SCRIPT: &str = "scripts/container-image.sh";

/// What scripts/container-image.sh prints for its callers.
struct Image {
    containers_conf: String,
    name: String,
}

/// Builds the image around this test's binary (fast when nothing changed).
fn build_image() -> Image {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(SCRIPT)
        .arg(env!("CARGO_BIN_EXE_amqp-bridge"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{SCRIPT} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{SCRIPT} printed no {key}=:\n{stdout}"))
            .to_string()
    };
    eprintln!("container: image built in {:.1?}", started.elapsed());
    Image {
        containers_conf: value("CONTAINERS_CONF"),
        name: value("IMAGE"),
    }
}

/// Runs podman with the script's containers.conf, off the async workers (a
/// `podman stop` blocks for the whole drain while the emulator must keep
/// serving the bridge).
async fn podman(conf: &str, args: &[&str]) -> Output {
    let conf = conf.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || podman_blocking(&conf, &args))
        .await
        .unwrap()
}

fn podman_blocking(conf: &str, args: &[String]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman (see {SCRIPT}): {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The container, removed however the test ends; its log is printed when the
/// test failed.
struct Container {
    conf: String,
    name: String,
}

impl Container {
    async fn podman(&self, args: &[&str]) -> Output {
        podman(&self.conf, args).await
    }

    /// `podman inspect --format FORMAT`, trimmed.
    async fn inspect(&self, format: &str) -> String {
        let out = self
            .podman(&["inspect", "--format", format, &self.name])
            .await;
        assert!(out.status.success(), "podman inspect: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs the image's HEALTHCHECK until it reports healthy (bounded).
    async fn wait_healthy(&self, secs: u64) -> Duration {
        let started = Instant::now();
        loop {
            let out = self.podman(&["healthcheck", "run", &self.name]).await;
            if out.status.success() {
                let health = self.inspect("{{json .State.Health}}").await;
                assert!(
                    health.contains("\"Status\":\"healthy\""),
                    "healthcheck passed but the state is {health}"
                );
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(secs),
                "the image's HEALTHCHECK did not report healthy within {secs}s: {}\n{}",
                text(&out),
                self.inspect("{{json .State.Health}}").await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `podman stop -t 30` (SIGTERM, SIGKILL after 30 s): how long it took
    /// and the exit code.
    async fn stop(&self) -> (Duration, i64) {
        let started = Instant::now();
        let out = self.podman(&["stop", "-t", "30", &self.name]).await;
        let took = started.elapsed();
        assert!(out.status.success(), "podman stop: {}", text(&out));
        let code = self.inspect("{{.State.ExitCode}}").await;
        (took, code.parse().expect("numeric exit code"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = podman_blocking(&self.conf, &["logs".into(), self.name.clone()]);
            eprintln!("--- podman logs {}:\n{}", self.name, text(&out));
        }
        let _ = podman_blocking(
            &self.conf,
            &[
                "rm".into(),
                "-f".into(),
                "-t".into(),
                "0".into(),
                self.name.clone(),
            ],
        );
    }
}

/// Every `messageId` in the file sink's output, and how many lines it had.
fn file_ids(path: &Path) -> (HashSet<String>, usize) {
    let lines = read_jsonl(path);
    let ids = lines
        .iter()
        .map(|l| l["messageId"].as_str().expect("messageId").to_string())
        .collect();
    (ids, lines.len())
}

/// Message ids that reached the subscriber (topics `out/{messageId}`).
fn mqtt_ids(subscriber: &Subscriber) -> HashSet<String> {
    subscriber
        .counts()
        .into_keys()
        .map(|t| t.trim_start_matches("out/").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_read_only_as_non_root_reports_healthy_and_drains_on_podman_stop() {
    const N: u64 = 3_000;
    let started = Instant::now();
    let image = build_image();

    let mut broker = Mosquitto::start();
    // A steady stream (about 3 s of it), so the first stop lands mid-stream;
    // whatever the drain releases comes back a second later.
    let emulator = emulator(|c| {
        c.count = N;
        c.rate = 1_000;
        c.redeliver_after = Duration::from_secs(1);
        c.tls_names = vec![HOST.into()];
    })
    .await;
    let subscriber = Subscriber::start(broker.port, "container-sub", "out/#").await;
    // Down when the container starts: the HEALTHCHECK must say unhealthy first.
    broker.stop();

    // The configuration and the CA, mounted read-only; /data owned by the
    // image's user, as a volume would be.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridge.yaml");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().expect("generated CA")).unwrap();
    std::fs::write(
        &config,
        format!(
            r##"source:
  kind: aliyun
  url: amqps://{HOST}:{amqp_port}
  access_key_id: {AK}
  access_key_secret: {SK}
  consumer_group_id: {GROUP}
  client_id: container-bridge
  credit: 32
  tls: {{ ca_file: /etc/amqp-bridge/ca.pem }}
  reconnect: {{ initial: 50ms, max: 500ms }}
sinks:
  mosquitto: {{ kind: mqtt, url: "mqtt://{HOST}:{mqtt_port}", client_id: container-bridge-out }}
  archive: {{ kind: file, path: out.jsonl }}
routes:
  - name: all
    match: {{ topic: "#" }}
    to:
      - {{ sink: mosquitto, topic: "out/{{messageId}}", qos: 1 }}
      - {{ sink: archive }}
max_in_flight: 64
shutdown_timeout: 10s
retry: {{ initial: 50ms, max: 500ms }}
telemetry: {{ listen: "0.0.0.0:9464", summary_interval: 0s }}
"##,
            amqp_port = emulator.local_addr().port(),
            mqtt_port = broker.port,
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(10001), Some(10001))
        .expect("chown the data directory to 10001 (the test runs podman as root)");

    let container = Container {
        conf: image.containers_conf.clone(),
        name: format!("amqp-bridge-test-{}", std::process::id()),
    };
    let _ = container
        .podman(&["rm", "-f", "-t", "0", &container.name])
        .await;
    let metrics_port = free_port();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    let volume = |host: &Path, at: &str, mode: &str| format!("{}:{at}:{mode}", host.display());
    let out = container
        .podman(&[
            "run",
            "--detach",
            "--name",
            &container.name,
            "--pull=never",
            "--network",
            "slirp4netns:allow_host_loopback=true",
            "--publish",
            &format!("127.0.0.1:{metrics_port}:9464"),
            "--read-only",
            // As Kubernetes' readOnlyRootFilesystem: no tmpfs on /tmp or /run either.
            "--read-only-tmpfs=false",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            &volume(&config, "/etc/amqp-bridge/bridge.yaml", "ro"),
            "--volume",
            &volume(&ca, "/etc/amqp-bridge/ca.pem", "ro"),
            "--volume",
            &volume(&data, "/data", "rw"),
            &image.name,
        ])
        .await;
    assert!(out.status.success(), "podman run: {}", text(&out));

    // The image's user and a read-only root, as the process itself sees them.
    assert_eq!(container.inspect("{{.Config.User}}").await, "10001:10001");
    assert_eq!(
        container.inspect("{{.HostConfig.ReadonlyRootfs}}").await,
        "true"
    );
    let status = container
        .podman(&["exec", &container.name, "cat", "/proc/1/status"])
        .await;
    let status = text(&status);
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap_or_else(|| panic!("no Uid in /proc/1/status: {status}"));
    assert!(
        uid.split_whitespace().all(|id| id == "10001"),
        "the bridge runs as uid {uid}"
    );
    // Even root in the container cannot write to the image's files.
    let write = container
        .podman(&[
            "exec",
            "--user",
            "0",
            &container.name,
            "touch",
            "/usr/local/bin/x",
        ])
        .await;
    let write = text(&write);
    assert!(
        write.contains("Read-only file system"),
        "writing to the root file system as root: {write}"
    );

    // Not ready while Mosquitto is down: the image's HEALTHCHECK fails.
    let mut unhealthy = String::new();
    for _ in 0..100 {
        let out = container
            .podman(&["healthcheck", "run", &container.name])
            .await;
        unhealthy = text(&out);
        if !out.status.success() && unhealthy.contains("unhealthy") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unhealthy.contains("unhealthy"),
        "HEALTHCHECK with the MQTT broker down: {unhealthy}"
    );
    broker.start_again();
    let healthy = container.wait_healthy(30).await;
    eprintln!("container: healthy {healthy:.1?} after Mosquitto came up");
    let s = scrape(metrics_addr).await;
    assert_eq!(s.count("amqp_bridge_ready", &[]), 1);
    assert_eq!(
        s.count(
            "amqp_bridge_source_attached",
            &[("connection", "container-bridge")]
        ),
        1
    );

    // Stop mid-stream: SIGTERM drains. Everything forwarded is accepted, what
    // arrived after the drain began is released (never forwarded). The drain
    // asks the source to use up its credit (flow drain=true) but does not wait
    // for its answer, so up to one credit window (32) can still be on the wire
    // when the link closes: unsettled there, redelivered later, never
    // forwarded (seen: 27 under nextest's parallel load; 0 on idle cores).
    // The bound is the credit itself, so this does not prove the drain
    // helps; a drain that waits for the source's answer (issue 25) would let
    // it assert 0 again.
    within(30, "a sixth of the messages", async {
        let mut total = subscriber.total();
        total.wait_for(|t| *t >= N / 6).await.unwrap();
    })
    .await;
    let (took, code) = container.stop().await;
    eprintln!("container: first podman stop took {took:.1?}, exit code {code}");
    assert_eq!(code, 0, "exit code after SIGTERM");
    assert!(took < Duration::from_secs(15), "the drain took {took:?}");
    let first = emulator.stats().snapshot();
    assert!(
        first.accepted < N,
        "the stop came after the stream: {first:?}"
    );
    assert!(first.unsettled_at_disconnect <= 32, "{first:?}");
    eventually("the subscriber to catch up", 10, || {
        mqtt_ids(&subscriber).len() as u64 >= first.accepted
    })
    .await;
    let (file, lines) = file_ids(&data.join("out.jsonl"));
    assert_eq!(
        (mqtt_ids(&subscriber).len() as u64, lines as u64),
        (first.accepted, first.accepted),
        "forwarded (MQTT, file) vs accepted at the emulator after the drain: {first:?}"
    );
    assert_eq!(file, mqtt_ids(&subscriber));

    // Started again (same container, same volume): the rest, the released
    // messages redelivered, then a drain with nothing left.
    let out = container.podman(&["start", &container.name]).await;
    assert!(out.status.success(), "podman start: {}", text(&out));
    within(60, "every message accepted", emulator.all_accepted()).await;
    subscriber.wait_for_total(N, 10).await;
    container.wait_healthy(10).await;
    let (took, code) = container.stop().await;
    eprintln!("container: second podman stop took {took:.1?}, exit code {code}");
    assert_eq!(code, 0, "exit code after SIGTERM");
    assert!(took < Duration::from_secs(15), "the drain took {took:?}");
    // JSON logs; both stops were SIGTERMs the bridge handled, both drains
    // finished in time.
    let logs = text(&container.podman(&["logs", &container.name]).await);
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line}"
        );
    }
    assert_eq!(
        logs.matches("shutting down: /readyz is 503").count(),
        2,
        "{logs}"
    );
    assert!(
        !logs.contains("shutdown timeout reached"),
        "the drain timed out:\n{logs}"
    );

    let stats = emulator.shutdown().await;
    eprintln!("container: emulator {stats:?}");
    // The second stop had nothing left to drain: whatever was unsettled at a
    // disconnect was so at the first one.
    assert_eq!(
        (
            stats.accepted,
            stats.outstanding,
            stats.unsettled_at_disconnect
        ),
        (N, 0, first.unsettled_at_disconnect),
        "accepted, outstanding, unsettled at disconnect: {stats:?}"
    );
    let mqtt = mqtt_ids(&subscriber);
    assert_eq!(mqtt.len() as u64, N, "distinct message ids over MQTT");
    let (file, lines) = file_ids(&data.join("out.jsonl"));
    assert_eq!(lines as u64, N, "file sink lines (each message once)");
    assert_eq!(file, mqtt, "the file sink and MQTT saw the same messages");
    let owner =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(data.join("out.jsonl")).unwrap());
    assert_eq!(
        owner, 10001,
        "the file sink's file belongs to the image's user"
    );
    eprintln!("container: done in {:.1?}", started.elapsed());
}
