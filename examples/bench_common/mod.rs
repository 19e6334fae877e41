//! Code for the benchmark examples: the emulator they read from, the CA
//! file a bridge trusts it with, and the baseline every AMQP-side figure is
//! compared with — a bare fe2o3 receiver that accepts each message as it
//! arrives (the same code as `bench_pipeline`'s baseline, which can include
//! this module with `#[path]` too). Each example uses only part of it.
#![allow(dead_code)]

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

/// What a hand-written forwarder takes from a platform message: its
/// `topic`, `messageId` and `generateTime` properties and its body.
pub struct Unpacked {
    pub topic: String,
    pub message_id: Option<String>,
    pub generate_time: Option<String>,
    pub body: bytes::Bytes,
}

fn unpack(message: fe2o3_amqp::types::messaging::Message<Body<Value>>) -> Unpacked {
    let mut unpacked = Unpacked {
        topic: String::new(),
        message_id: None,
        generate_time: None,
        body: bytes::Bytes::new(),
    };
    for (key, value) in message.application_properties.into_iter().flat_map(|p| p.0) {
        let text = match value {
            fe2o3_amqp::types::primitives::SimpleValue::String(s) => s,
            fe2o3_amqp::types::primitives::SimpleValue::Long(n) => n.to_string(),
            _ => continue,
        };
        match key.as_str() {
            "topic" => unpacked.topic = text,
            "messageId" => unpacked.message_id = Some(text),
            "generateTime" => unpacked.generate_time = Some(text),
            _ => {}
        }
    }
    if let Body::Data(batch) = message.body {
        if let Some(data) = batch.into_iter().next() {
            unpacked.body = bytes::Bytes::from(data.0.into_vec());
        }
    }
    unpacked
}

/// The hand-written forwarder a careful user writes instead of the bridge,
/// the baseline the bridge's own overhead is judged by: a [`BareLink`]
/// whose every message is handed to `submit` and accepted at the source
/// only once the broker confirmed it (released if it failed), at most
/// `window` unconfirmed (attach `link` with at least that much credit). Awaiting `submit` queues the publish (so publishes
/// go out in arrival order); the future it returns resolves with the
/// broker's answer. Returns once `n` messages were accepted.
pub async fn forward<Queue, Confirm>(
    link: &mut BareLink,
    n: u64,
    window: usize,
    mut submit: impl FnMut(Unpacked) -> Queue,
) where
    Queue: std::future::Future<Output = Confirm>,
    Confirm: std::future::Future<Output = bool>,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut confirming = FuturesUnordered::new();
    let mut accepted = 0u64;
    while accepted < n {
        tokio::select! {
            biased;
            Some((info, confirmed)) = confirming.next(), if !confirming.is_empty() => {
                if confirmed {
                    link.receiver.accept(info).await.expect("accept");
                    accepted += 1;
                } else {
                    link.receiver.release(info).await.expect("release");
                }
            }
            delivery = link.receiver.recv::<Body<Value>>(), if confirming.len() < window => {
                let delivery = delivery.expect("a delivery");
                let info = fe2o3_amqp::link::delivery::DeliveryInfo::from(&delivery);
                let confirm = submit(unpack(delivery.into_message())).await;
                confirming.push(async move { (info, confirm.await) });
            }
        }
    }
}

/// CPU time of every live thread of process `pid` (`self` for this one).
pub fn process_cpu(pid: &str) -> Duration {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            nanos += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(nanos)
}
