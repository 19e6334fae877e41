//! The bridge's own cost per message: the IoT Platform emulator pushing N
//! messages, received (a) by a bare fe2o3 receiver that accepts at once — the
//! baseline: AMQP and the emulator alone — and (b) by the whole bridge
//! (routing, pipeline, settlement) into a file sink. Both run on one core
//! (a current-thread runtime) in the same process, one after the other.
//!
//! Besides wall time it reports CPU time per message (every thread of the
//! process, from /proc/self/task/*/schedstat), which other load on the
//! machine does not inflate the way it does wall time.
//!
//!   cargo run --release --example bench_pipeline [N]
//!
//! `bench_pipeline N baseline` or `bench_pipeline N bridge` runs one side
//! only, without warm-up, for an instruction count under
//! `valgrind --tool=callgrind` (the bridge's instructions per message are
//! the difference of the two counts over N).
//!
//! `BENCH_SINK=blackhole` (build with `--features blackhole-sink`) replaces
//! the file sink with the null sink: the bridge's own cost without a sink's.

use std::path::Path;
use std::time::{Duration, Instant};

use amqp_bridge::bridge::Bridge;
use amqp_bridge::config::{Config, Secret};
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::source::aliyun::{sign_now, Credentials, SignMethod};
use amqp_bridge::source::connect::{open, ConnectOptions, Login};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};

const AK: &str = "bench-ak";
const SK: &str = "bench-secret";
const GROUP: &str = "BENCH";

async fn emulator(count: u64) -> Emulator {
    Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        access_keys: vec![(AK.into(), SK.into())],
        consumer_groups: vec![GROUP.into()],
        count,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator")
}

fn write_ca(emulator: &Emulator, dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().unwrap()).unwrap();
    ca
}

/// CPU time of every live thread of this process so far.
fn cpu_time() -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}

/// Wall and CPU time of one run.
struct Run {
    wall: Duration,
    cpu: Duration,
}

async fn baseline(n: u64, dir: &Path) -> Run {
    let emulator = emulator(n).await;
    let ca = write_ca(&emulator, dir);
    let secret = Secret::new(SK);
    let login = sign_now(&Credentials {
        client_id: "bench-baseline",
        access_key_id: AK,
        access_key_secret: &secret,
        consumer_group_id: GROUP,
        instance_id: None,
        security_token: None,
        sign_method: SignMethod::HmacSha1,
    });
    let options = ConnectOptions {
        host: "localhost".into(),
        port: emulator.local_addr().port(),
        tls: Some(amqp_bridge::tls::client_config(Some(&ca), None).unwrap()),
        tls_header: false,
        container_id: "bench-baseline".into(),
        login: Login::Plain {
            username: login.username,
            password: login.password,
        },
        idle_timeout: Some(Duration::from_secs(60)),
        connect_timeout: Duration::from_secs(10),
    };
    let started = Instant::now();
    let cpu = cpu_time();
    let mut connection = open(&options).await.unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut receiver = Receiver::builder()
        .name("baseline")
        .source(GROUP)
        .credit_mode(CreditMode::Auto(64))
        .auto_accept(false)
        .attach(&mut session)
        .await
        .unwrap();
    for _ in 0..n {
        let delivery = receiver.recv::<Body<Value>>().await.unwrap();
        receiver.accept(&delivery).await.unwrap();
    }
    emulator.all_accepted().await;
    let run = Run {
        wall: started.elapsed(),
        cpu: cpu_time() - cpu,
    };
    let _ = connection.close().await;
    emulator.shutdown().await;
    run
}

async fn bridge(n: u64, dir: &Path) -> Run {
    let emulator = emulator(n).await;
    let ca = write_ca(&emulator, dir);
    let out = dir.join("out.jsonl");
    let text = format!(
        "source: {{ kind: aliyun, url: 'amqps://localhost:{port}', access_key_id: {AK}, \
         access_key_secret: {SK}, consumer_group_id: {GROUP}, client_id: bench-bridge, \
         tls: {{ ca_file: '{ca}' }} }}\n\
         telemetry: {{ listen: '127.0.0.1:0' }}\n\
         sinks:\n  out: {sink}\n\
         routes:\n  - {{ match: {{ topic: '#' }}, to: [ {{ sink: out }} ] }}\n",
        port = emulator.local_addr().port(),
        ca = ca.display(),
        sink = match std::env::var("BENCH_SINK").as_deref() {
            // The null sink needs cargo feature `blackhole-sink`.
            Ok("blackhole") => "{ kind: blackhole }".to_string(),
            _ => format!("{{ kind: file, path: '{}' }}", out.display()),
        },
    );
    let config = Config::parse(&text, Path::new("bench.yaml"), |_| None).unwrap();
    let started = Instant::now();
    let cpu = cpu_time();
    let bridge = Bridge::start(&config).await.unwrap();
    emulator.all_accepted().await;
    let run = Run {
        wall: started.elapsed(),
        cpu: cpu_time() - cpu,
    };
    bridge.shutdown().await;
    emulator.shutdown().await;
    run
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50_000);
    // A RAM disk keeps fsync from measuring the disk instead of the bridge.
    let base_dir = Path::new("/dev/shm");
    let dir = if base_dir.is_dir() {
        tempfile::tempdir_in(base_dir).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().nth(2);
    if let Some(side) = only {
        runtime.block_on(async {
            let run = match side.as_str() {
                "baseline" => baseline(n, dir.path()).await,
                "bridge" => bridge(n, dir.path()).await,
                other => panic!("unknown side `{other}`: baseline or bridge"),
            };
            println!(
                "{side}: {n} msgs, CPU {:.1} µs/msg",
                run.cpu.as_secs_f64() / n as f64 * 1e6
            );
        });
        return;
    }
    runtime.block_on(async {
        // Warm up both paths once.
        baseline(n / 10, dir.path()).await;
        bridge(n / 10, dir.path()).await;
        let base = baseline(n, dir.path()).await;
        let full = bridge(n, dir.path()).await;
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let us = |d: Duration| d.as_secs_f64() / n as f64 * 1e6;
        println!("baseline (bare receiver, accept at once): {n} msgs in {:.2}s = {:>7.0} msg/s, CPU {:.1} µs/msg", base.wall.as_secs_f64(), rate(base.wall), us(base.cpu));
        println!("bridge (route + pipeline + file sink):    {n} msgs in {:.2}s = {:>7.0} msg/s, CPU {:.1} µs/msg", full.wall.as_secs_f64(), rate(full.wall), us(full.cpu));
        let per_msg_us = (full.wall.as_secs_f64() - base.wall.as_secs_f64()) / n as f64 * 1e6;
        println!("bridge / baseline time: {:.2}x; the bridge's own cost ≈ {per_msg_us:.1} µs per message on one core", full.wall.as_secs_f64() / base.wall.as_secs_f64());
        println!("the bridge's own CPU ≈ {:.1} µs per message", us(full.cpu.saturating_sub(base.cpu)));
    });
}
