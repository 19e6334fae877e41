//! Code for the benchmark examples: the emulator they read from, the CA
//! file a bridge trusts it with, and the baseline every AMQP-side figure is
//! compared with — a bare fe2o3 receiver that accepts each message as it
//! arrives (the same code as `bench_pipeline`'s baseline, which can include
//! this module with `#[path]` too). Each example uses only part of it.
#![allow(dead_code)]

pub mod forwarder;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use amqp_bridge::config::Secret;
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::source::aliyun::{sign_now, Credentials, SignMethod};
use amqp_bridge::source::connect::{open, ConnectOptions, Login};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Receiver, Session};

/// Link credit on both sides: the bridge's `source.credit` and the bare
/// receiver's auto-refilled credit (64, the bridge's default, unless set).
pub static CREDIT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(64);

pub fn credit() -> u32 {
    CREDIT.load(std::sync::atomic::Ordering::Relaxed)
}

pub const AK: &str = "bench-ak";
pub const SK: &str = "bench-secret";
pub const GROUP: &str = "BENCH";

/// An emulator on a free loopback port generating `count` messages at
/// `rate` msg/s (0: as fast as credit allows).
pub async fn emulator(count: u64, rate: u32) -> Emulator {
    Emulator::start(EmulatorConfig {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        access_keys: vec![(AK.into(), SK.into())],
        consumer_groups: vec![GROUP.into()],
        count,
        rate,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator")
}

/// Writes the emulator's generated CA to `dir/ca.pem`.
pub fn write_ca(emulator: &Emulator, dir: &Path) -> PathBuf {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().expect("a generated CA")).expect("write ca.pem");
    ca
}

/// The `source:` and `telemetry:` blocks of a bridge reading from `emulator`
/// with [`CREDIT`] (no periodic summary line).
pub fn source_yaml(emulator: &Emulator, ca: &Path, client_id: &str) -> String {
    format!(
        "source: {{ kind: aliyun, url: 'amqps://localhost:{port}', access_key_id: {AK}, \
         access_key_secret: {SK}, consumer_group_id: {GROUP}, client_id: {client_id}, \
         credit: {credit}, tls: {{ ca_file: '{ca}' }} }}\n\
         telemetry: {{ listen: '127.0.0.1:0', summary_interval: 0s }}\n",
        port = emulator.local_addr().port(),
        ca = ca.display(),
        credit = credit(),
    )
}

/// A receiver attached to `emulator` as the baseline attaches one: signed
/// login, credit refilled automatically (fe2o3 tops it up after half of it
/// was settled, so `credit` also bounds what is unsettled), nothing
/// accepted by itself.
pub struct BareLink {
    pub connection: fe2o3_amqp::connection::ConnectionHandle<()>,
    pub session: fe2o3_amqp::session::SessionHandle<()>,
    pub receiver: Receiver,
}

impl BareLink {
    /// Connects and attaches as `client_id`.
    pub async fn attach(emulator: &Emulator, ca: &Path, client_id: &str, credit: u32) -> BareLink {
        let secret = Secret::new(SK);
        let login = sign_now(&Credentials {
            client_id,
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
            tls: Some(amqp_bridge::tls::client_config(Some(ca), None).expect("TLS config")),
            tls_header: false,
            container_id: client_id.into(),
            login: Login::Plain {
                username: login.username,
                password: login.password,
            },
            idle_timeout: Some(Duration::from_secs(60)),
            connect_timeout: Duration::from_secs(10),
        };
        let mut connection = open(&options).await.expect("connect to the emulator");
        let mut session = Session::begin(&mut connection).await.expect("session");
        let receiver = Receiver::builder()
            .name(client_id)
            .source(GROUP)
            .credit_mode(CreditMode::Auto(credit))
            .auto_accept(false)
            .attach(&mut session)
            .await
            .expect("attach");
        BareLink {
            connection,
            session,
            receiver,
        }
    }

    /// Closes the connection (the emulator releases nothing: all was settled).
    pub async fn close(mut self) {
        let _ = self.receiver.close().await;
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// The baseline: a bare fe2o3 receiver ([`CREDIT`], refilled automatically)
/// that accepts every message on arrival, from a fresh emulator of `n`
/// messages. Returns the time from before the connect until the emulator
/// saw all `n` accepted, or `None` if that took longer than `limit`.
/// `mark` is called when the clock starts and when it stops.
pub async fn bare_receiver(
    n: u64,
    dir: &Path,
    limit: Duration,
    mut mark: impl FnMut(),
) -> Option<Duration> {
    let emulator = emulator(n, 0).await;
    let ca = write_ca(&emulator, dir);
    mark();
    let started = Instant::now();
    let mut link = BareLink::attach(&emulator, &ca, "bench-baseline", credit()).await;
    let receive = async {
        for _ in 0..n {
            let delivery = link
                .receiver
                .recv::<Body<Value>>()
                .await
                .expect("a delivery");
            link.receiver.accept(&delivery).await.expect("accept");
        }
        emulator.all_accepted().await;
    };
    let done = tokio::time::timeout(limit, receive).await.is_ok();
    let elapsed = started.elapsed();
    mark();
    link.close().await;
    emulator.shutdown().await;
    done.then_some(elapsed)
}

/// CPU time of every live thread of process `pid` (`self` for this one).
pub fn process_cpu(pid: &str) -> Duration {
    Duration::from_nanos(schedstat_sum(pid, 0))
}

/// One field of /proc/PID/task/*/schedstat summed over the live threads of
/// process `pid`: 0 is the time on a CPU (ns), 2 how many times a thread
/// was put on one.
pub fn schedstat_sum(pid: &str, field: usize) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().nth(field)?.parse::<u64>().ok())
        .sum()
}
