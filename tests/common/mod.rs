//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod mosquitto;
pub mod proxy;
pub mod subscriber;
pub mod tansu;

use std::sync::Arc;
use std::time::Duration;

use amqp_bridge::config::Secret;
use amqp_bridge::emulator::{Emulator, EmulatorConfig};
use amqp_bridge::source::aliyun::{now_ms, sign_at, Credentials, SignMethod};
use amqp_bridge::source::connect::ConnectOptions;

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
        container_id: client_id.into(),
        username: login.username,
        password: login.password,
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
/// CA (written into `dir`); `extra` adds indented source keys.
pub fn source_yaml(
    emulator: &Emulator,
    dir: &std::path::Path,
    client_id: &str,
    extra: &str,
) -> String {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emulator.ca_pem().expect("generated CA")).unwrap();
    format!(
        "source:\n  kind: aliyun\n  url: amqps://localhost:{port}\n  access_key_id: {AK}\n  \
         access_key_secret: {SK}\n  consumer_group_id: {GROUP}\n  client_id: {client_id}\n  \
         tls: {{ ca_file: {ca} }}\n{extra}",
        port = emulator.local_addr().port(),
        ca = ca.display(),
    )
}
