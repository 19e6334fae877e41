//! A Kafka-protocol broker that demands TLS and SASL: tansu 0.6.0 built with
//! SQLite storage (`--features libsql`), restarted with `--authentication`
//! on a loopback port, behind a TLS terminator (rustls, with a CA and a
//! certificate made by the test) whose port is the only one it advertises.
//!
//! What tansu 0.6.0 needs, found in its source (tansu-io/tansu, v0.6.0):
//! - SCRAM credentials live in the storage engine, and the memory/S3 engine
//!   (`dynostore`, the only one in the PyPI build the other tests use)
//!   stores none: `user_scram_credential` always answers "no such user". The
//!   SQLite engine stores them.
//! - With `--authentication`, every request but ApiVersions, SaslHandshake
//!   and SaslAuthenticate needs a logged-in connection, and `tansu user
//!   create` / `topic create` do not log in (hence their "early EOF"). So the
//!   harness creates users and topics on the same SQLite file first, with
//!   authentication off, then restarts the broker with it on.
//! - Its SASL library is built with SCRAM-SHA-256/512 and OAUTHBEARER only:
//!   PLAIN is answered with "no shared mechanism" (the connection is closed).
//! - TLS: the broker builds its TLS listener only when both `--cert` and
//!   `--key` are given, but its CLI puts the two in one exclusive argument
//!   group, so TLS cannot be switched on (`--cert` alone silently listens in
//!   plain TCP). Hence the terminator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::tansu::{Launch, Tansu};

/// The SQLite-capable tansu that scripts/install-test-deps.sh builds.
pub const TANSU_SQL: &str = "/usr/local/lib/tansu-sql/bin/tansu";
const INSTALL_HINT: &str = "tansu with SQLite storage (/usr/local/lib/tansu-sql/bin/tansu) \
     not found: run scripts/install-test-deps.sh";

/// SCRAM variants tansu stores.
#[derive(Clone, Copy, Debug)]
pub enum Scram {
    Sha256,
    Sha512,
}

impl Scram {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            Scram::Sha256 => "SCRAM-SHA-256",
            Scram::Sha512 => "SCRAM-SHA-512",
        }
    }
    fn tansu_name(self) -> &'static str {
        match self {
            Scram::Sha256 => "scram256",
            Scram::Sha512 => "scram512",
        }
    }
}

/// tansu with authentication on, reachable only through TLS.
pub struct SecureTansu {
    pub broker: Tansu,
    pub tls_port: u16,
    /// The test CA that signed the terminator's certificate.
    pub ca_file: PathBuf,
    /// TCP connections the terminator accepted (each connection attempt,
    /// whether its TLS handshake and login then succeed or not).
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl SecureTansu {
    /// Provisions `topics` (name, partitions) and SCRAM `users` (name,
    /// password, mechanism), then starts the broker with authentication and
    /// the TLS terminator; returns once both accept connections.
    pub async fn start(topics: &[(&str, u32)], users: &[(&str, &str, Scram)]) -> SecureTansu {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = super::make_certs(dir.path());
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let tls_port = listener.local_addr().unwrap().port();
        let path = dir.path().to_path_buf();
        let topics: Vec<(String, u32)> = topics.iter().map(|(t, p)| (t.to_string(), *p)).collect();
        let users: Vec<(String, String, Scram)> = users
            .iter()
            .map(|(u, p, m)| (u.to_string(), p.to_string(), *m))
            .collect();
        let broker = tokio::task::spawn_blocking(move || {
            let launch = |port, flags: &'static [&'static str]| {
                Tansu::launch(&Launch {
                    program: TANSU_SQL,
                    install_hint: INSTALL_HINT,
                    cwd: Some(&path),
                    storage: "sqlite://tansu.db",
                    port,
                    advertised: Some(tls_port),
                    flags,
                })
            };
            let setup = launch(None, &[]);
            for (topic, partitions) in &topics {
                setup.create_topic(topic, *partitions);
            }
            for (user, password, scram) in &users {
                setup.create_user(user, password, scram.tansu_name());
            }
            let port = setup.port;
            setup.stop();
            launch(Some(port), &["--authentication"])
        })
        .await
        .unwrap();
        let chain = amqp_bridge::tls::load_certs(&dir.path().join("server.crt")).unwrap();
        let key = amqp_bridge::tls::load_key(&dir.path().join("server.key")).unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(amqp_bridge::tls::server_config(chain, key).unwrap());
        let upstream: std::net::SocketAddr = broker.address().parse().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        SecureTansu {
            broker,
            tls_port,
            ca_file,
            connections,
            task,
            _dir: dir,
        }
    }

    /// `host:port` of the TLS listener.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// Client properties for SASL_SSL with this login, trusting the test CA.
    pub fn client_properties(
        &self,
        mechanism: &str,
        user: &str,
        password: &str,
    ) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("ssl.ca.location", self.ca_file.to_str().unwrap()),
            ("sasl.mechanism", mechanism),
            ("sasl.username", user),
            ("sasl.password", password),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for SecureTansu {
    fn drop(&mut self) {
        self.task.abort();
    }
}
