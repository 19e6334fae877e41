//! An AMQP 1.0 server that behaves like IoT Platform's server-side
//! subscription, so the bridge, its tests and a first run have a faithful source.

pub(crate) mod auth;
mod certs;
mod connection;
mod generator;
mod sniff;
mod subscription;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use auth::AuthRules;
pub use connection::IDLE_TIMEOUT_RANGE_MS;
pub use generator::{FileMessages, Generator, MessageSource, PlatformMessage};
pub use subscription::{Limits, Stats, StatsSnapshot, Subscription};

/// How the emulator behaves; the `emulate` flags map onto it one to one.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// AccessKeyId → AccessKeySecret.
    pub access_keys: Vec<(String, String)>,
    pub consumer_groups: Vec<String>,
    /// Messages per second per group; 0 = as fast as credit allows.
    pub rate: u32,
    /// Messages to generate per group; 0 = without end.
    pub count: u64,
    /// Replay these messages instead of generating.
    pub messages: Option<PathBuf>,
    pub redeliver_after: Duration,
    /// Push a message again when it is not settled this long after it went
    /// out (the platform's ack timeout is 30 s); `None` = only after an
    /// outcome or a disconnect.
    pub ack_timeout: Option<Duration>,
    /// Push every message a second time right after the first (an
    /// ack-timeout redelivery on demand, for tests). The copy is dropped if
    /// the first was accepted before it went out, so "while the first is
    /// unsettled" holds only where the test keeps it unsettled (a frozen
    /// broker). With `ack_timeout` each copy starts its own timeout chain.
    pub push_twice: bool,
    pub receiver_deadline: Duration,
    pub max_skew: Duration,
    /// PEM certificate chain and key; `None` = generate for localhost.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// More host names for the generated certificate (beside localhost).
    pub tls_names: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5671)),
            access_keys: vec![("emulator-ak".into(), "emulator-secret".into())],
            consumer_groups: vec!["DEFAULT_GROUP".into()],
            rate: 0,
            count: 0,
            messages: None,
            redeliver_after: Duration::from_secs(60),
            ack_timeout: None,
            push_twice: false,
            receiver_deadline: Duration::from_secs(15),
            max_skew: Duration::from_secs(15 * 60),
            cert: None,
            tls_names: Vec::new(),
        }
    }
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot make a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("messages file: {0}")]
    Messages(String),
    #[error("at least one access key and one consumer group are needed")]
    NothingToServe,
}

pub(crate) struct Shared {
    /// Bumped to make every open connection close with `amqp:connection:forced`.
    kick: tokio::sync::watch::Sender<u64>,
    /// Bumped to make every attached link detach with `amqp:link:detach-forced`.
    detach: tokio::sync::watch::Sender<u64>,
    rules: Arc<AuthRules>,
    subscriptions: HashMap<String, Arc<Subscription>>,
    stats: Arc<Stats>,
    tls: tokio_rustls::TlsAcceptor,
    receiver_deadline: Duration,
}

/// A running emulator.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    stats: Arc<Stats>,
    subscriptions: HashMap<String, Arc<Subscription>>,
    stop: CancellationToken,
    accept_task: JoinHandle<()>,
}

impl Emulator {
    /// Binds the listener and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        if config.access_keys.is_empty() || config.consumer_groups.is_empty() {
            return Err(EmulatorError::NothingToServe);
        }
        let identity = match &config.cert {
            Some((cert, key)) => certs::from_files(cert, key)?,
            None => certs::generate(&config.tls_names)?,
        };
        let tls = tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            identity.chain,
            identity.key,
        )?);
        let stats = Arc::new(Stats::default());
        let limits = Limits {
            redeliver_after: config.redeliver_after,
            ack_timeout: config.ack_timeout,
            push_twice: config.push_twice,
            rate: Some(config.rate).filter(|r| *r > 0),
            max_clients: 64,
            max_connections_per_client: 128,
        };
        let mut subscriptions = HashMap::new();
        for group in &config.consumer_groups {
            let (source, total): (Box<dyn MessageSource>, Option<u64>) = match &config.messages {
                Some(path) => {
                    let file =
                        FileMessages::load(path, config.count).map_err(EmulatorError::Messages)?;
                    let total = file.len() as u64;
                    (Box::new(file), Some(total))
                }
                None => (
                    Box::new(Generator::new(config.count)),
                    Some(config.count).filter(|c| *c > 0),
                ),
            };
            let sub = Subscription::new(source, total, limits.clone(), stats.clone());
            subscriptions.insert(group.clone(), Arc::new(sub));
        }
        let rules = AuthRules {
            keys: config.access_keys.iter().cloned().collect(),
            consumer_groups: config
                .consumer_groups
                .iter()
                .cloned()
                .collect::<HashSet<_>>(),
            max_skew: config.max_skew,
            passwords_seen: Default::default(),
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| EmulatorError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Listen {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            kick: tokio::sync::watch::channel(0).0,
            detach: tokio::sync::watch::channel(0).0,
            rules: Arc::new(rules),
            subscriptions: subscriptions.clone(),
            stats: stats.clone(),
            tls,
            receiver_deadline: config.receiver_deadline,
        });
        let stop = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::info!(%addr, "IoT Platform emulator listening (TLS)");
        Ok(Emulator {
            shared,
            addr,
            ca_pem: identity.ca_pem,
            stats,
            subscriptions,
            stop,
            accept_task,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// PEM of the CA that signed the generated certificate, if one was generated.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every message id accepted so far (each once), all groups.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.subscriptions
            .values()
            .flat_map(|sub| sub.accepted_ids())
            .collect()
    }

    /// The client ids connected now (from their signed logins), each with
    /// its number of connections, sorted; all groups.
    pub fn clients(&self) -> Vec<(String, usize)> {
        let mut clients: Vec<_> = self
            .subscriptions
            .values()
            .flat_map(|sub| sub.clients())
            .collect();
        clients.sort();
        clients
    }

    /// The last passwords (signed logins) clients sent, newest last; for
    /// tests that search a bridge's output for them.
    pub fn passwords_seen(&self) -> Vec<String> {
        self.shared
            .rules
            .passwords_seen
            .lock()
            .map(|seen| seen.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Holds every push of every group, new messages and redeliveries alike
    /// (`true`), or lets them go (`false`). Lets a test attach a client and
    /// prepare a fault (freeze a broker, cut a connection) between pushes.
    /// Not a barrier: a message a link already took (one per link, waiting
    /// for credit) still goes out; hold before the client attaches, or once
    /// everything pushed is accounted for.
    pub fn hold_pushes(&self, hold: bool) {
        for sub in self.subscriptions.values() {
            sub.hold_pushes(hold);
        }
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Resolves once every message of every group was accepted (bounded sources only).
    pub async fn all_accepted(&self) {
        for sub in self.subscriptions.values() {
            let mut done = sub.done();
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Closes every open connection with `amqp:connection:forced`, as the
    /// platform does on maintenance; clients are expected to reconnect.
    pub fn disconnect_all(&self) {
        self.shared.kick.send_modify(|generation| *generation += 1);
    }

    /// Detaches every attached link with `amqp:link:detach-forced`, as the
    /// platform does when it moves a subscription; connections stay open and
    /// clients are expected to attach again.
    pub fn detach_all(&self) {
        self.shared
            .detach
            .send_modify(|generation| *generation += 1);
    }

    /// Closes every connection and stops listening.
    pub async fn shutdown(self) -> StatsSnapshot {
        self.stop.cancel();
        let _ = self.accept_task.await;
        self.stats.snapshot()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection::serve(stream, peer, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.cancelled() => break,
        }
    }
    drop(listener);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}
