//! Egress: one [`Sink`] per configured sink, each resolving a send only when
//! its broker confirmed it.

pub mod file;
pub mod kafka;
pub mod mqtt;
pub mod mqtt_auth;
pub mod names;
pub mod record;
#[cfg(feature = "rocketmq")]
pub mod rocketmq;
pub mod stdout;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::envelope::Envelope;

/// One copy of a message for one sink.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub envelope: Arc<Envelope>,
    /// Destination topic; `None` for sinks that need none (file, stdout).
    pub topic: Option<String>,
    pub qos: u8,
    pub retain: bool,
    /// Kafka record key.
    pub key: Option<String>,
    /// Copy every application property as a header, not only the platform's three.
    pub all_headers: bool,
    /// RocketMQ tag.
    pub tag: Option<String>,
    /// RocketMQ keys.
    pub keys: Vec<String>,
    /// Set when this copy is a dead letter: why the original target failed.
    pub failure: Option<Arc<Failure>>,
}

/// The application properties every copy carries, whatever its sink.
const PLATFORM_PROPERTIES: [&str; 3] = ["topic", "messageId", "generateTime"];

impl Outgoing {
    /// The name/value pairs a sink forwards with this copy as headers or
    /// properties: every application property when `all`, else the
    /// platform's three; a dead letter adds why it failed.
    pub fn forwarded_properties<'a>(
        &'a self,
        all: bool,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.envelope
            .properties
            .iter()
            .filter(move |(name, _)| all || PLATFORM_PROPERTIES.contains(&name.as_str()))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .chain(
                self.failure
                    .as_deref()
                    .into_iter()
                    .flat_map(|failure| failure.as_properties()),
            )
    }
}

#[cfg(test)]
impl Outgoing {
    /// A copy with these application properties and body, no destination.
    pub(crate) fn for_test(properties: &[(&str, &str)], body: &'static [u8]) -> Outgoing {
        Outgoing {
            envelope: Arc::new(Envelope::new(
                bytes::Bytes::from_static(body),
                properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )),
            topic: None,
            qos: 1,
            retain: false,
            key: None,
            all_headers: false,
            tag: None,
            keys: Vec::new(),
            failure: None,
        }
    }
}

/// Resolves once a sink's readiness flag is set (the `Sink::ready` of sinks
/// that connect in the background).
pub(crate) fn until_ready(ready: &tokio::sync::watch::Receiver<bool>) -> BoxFuture<'static, ()> {
    let mut ready = ready.clone();
    Box::pin(async move {
        let _ = ready.wait_for(|r| *r).await;
    })
}

/// Whether a sink's last send got through, for the readiness of sinks whose
/// client keeps no connection state we can ask (Kafka, RocketMQ): a transient
/// failure makes the sink not ready until a send succeeds again.
#[cfg(any(feature = "kafka", feature = "rocketmq"))]
#[derive(Debug)]
pub(crate) struct LastSend(std::sync::atomic::AtomicBool);

#[cfg(any(feature = "kafka", feature = "rocketmq"))]
impl LastSend {
    pub(crate) fn new() -> Arc<LastSend> {
        Arc::new(LastSend(std::sync::atomic::AtomicBool::new(true)))
    }

    /// Records a send's result; a permanent failure says nothing about the broker.
    pub(crate) fn record(&self, result: &Result<(), SinkError>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(()) => self.0.store(true, Ordering::Relaxed),
            Err(SinkError::Transient(_) | SinkError::GaveUp(_)) => {
                self.0.store(false, Ordering::Relaxed)
            }
            Err(SinkError::Permanent(_)) => {}
        }
    }

    /// False after a transient failure until the next success.
    pub(crate) fn ok(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why a message became a dead letter, written alongside it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Failure {
    pub route: String,
    pub sink: String,
    pub error: String,
}

impl Failure {
    /// The failure as name/value pairs, for sinks that carry it as record
    /// headers or message properties rather than inside a JSON record.
    pub fn as_properties(&self) -> [(&'static str, &str); 3] {
        [
            ("deadLetterRoute", self.route.as_str()),
            ("deadLetterSink", self.sink.as_str()),
            ("deadLetterError", self.error.as_str()),
        ]
    }
}

/// Why a send failed, and so what the pipeline does next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: broker down, timeout, disconnect.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help: too large, invalid topic, not authorized.
    #[error("{0}")]
    Permanent(String),
    /// Still failing transiently after `retry.max_elapsed` (set by the
    /// pipeline, never by a sink): dead-lettered if there is a dead-letter
    /// sink, else released — never the undeliverable outcome, because the
    /// message itself may be fine.
    #[error("{0}")]
    GaveUp(String),
}

/// An egress destination.
pub trait Sink: Send + Sync {
    /// The configured name, for logs and metrics.
    fn name(&self) -> &str;
    /// Resolves once the broker confirmed the message (or failed).
    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>>;
    /// The `kind:` of its configuration, for metrics labels.
    fn kind(&self) -> &'static str;
    /// True while the sink can deliver now (connected), for `/readyz`.
    fn is_ready(&self) -> bool;
    /// Resolves once the sink connected for the first time.
    fn ready(&self) -> BoxFuture<'_, ()>;
    /// Why the sink is not ready, when the client said (a refused login, an
    /// untrusted certificate): shown by `/readyz` after "not connected".
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
    /// A destination this broker accepts, made from a name the bridge
    /// derived itself (a dead-letter topic, an unrouted message's platform
    /// topic); configured names are checked, never rewritten.
    fn derived_topic(&self, raw: &str) -> String {
        raw.to_string()
    }
    /// Disconnects cleanly.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Builds the sink of one config entry.
pub fn build(
    name: &str,
    config: &crate::config::SinkConfig,
) -> Result<Arc<dyn Sink>, SinkBuildError> {
    match config {
        crate::config::SinkConfig::Mqtt(c) => Ok(Arc::new(mqtt::MqttSink::start(name, c)?)),
        crate::config::SinkConfig::File(c) => Ok(Arc::new(
            file::FileSink::start(name, c).map_err(|source| SinkBuildError::File {
                name: name.to_string(),
                path: c.path.display().to_string(),
                source,
            })?,
        )),
        crate::config::SinkConfig::Stdout(_) => Ok(Arc::new(stdout::StdoutSink::new(name))),
        #[cfg(feature = "kafka")]
        crate::config::SinkConfig::Kafka(c) => Ok(Arc::new(kafka::KafkaSink::start(name, c)?)),
        #[cfg(not(feature = "kafka"))]
        crate::config::SinkConfig::Kafka(_) => Err(SinkBuildError::Invalid {
            name: name.to_string(),
            message: "this build has no Kafka support (cargo feature `kafka`)".into(),
        }),
        #[cfg(feature = "rocketmq")]
        crate::config::SinkConfig::RocketMq(c) => {
            Ok(Arc::new(rocketmq::RocketMqSink::start(name, c)?))
        }
        #[cfg(not(feature = "rocketmq"))]
        crate::config::SinkConfig::RocketMq(_) => Err(SinkBuildError::Invalid {
            name: name.to_string(),
            message: "this build has no RocketMQ support (cargo feature `rocketmq`)".into(),
        }),
    }
}

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("sink `{name}`: {message}")]
    Invalid { name: String, message: String },
    #[error("sink `{name}`: cannot open {path}: {source}")]
    File {
        name: String,
        path: String,
        source: std::io::Error,
    },
    #[error("sink `{name}`: {source}")]
    Tls {
        name: String,
        source: crate::tls::TlsError,
    },
}
