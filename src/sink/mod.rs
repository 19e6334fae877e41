//! Egress: one [`Sink`] per configured sink, each resolving a send only when
//! its broker confirmed it.

pub(crate) mod blackhole;
pub(crate) mod destination;
pub(crate) mod file;
pub(crate) mod kafka;
pub(crate) mod kind;
pub(crate) mod mqtt;
pub(crate) mod record;
pub mod rocketmq;
pub(crate) mod stdout;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::envelope::Envelope;
pub use destination::{Destination, DestinationTemplate};
pub use kind::{build, SinkKind};

/// One copy of a message for one sink.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub envelope: Arc<Envelope>,
    /// Where it goes, in the fields of its sink's kind.
    pub destination: Destination,
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
            destination: Destination::Stdout,
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
    /// The `kind:` of its configuration (metrics label, destination type).
    fn kind(&self) -> SinkKind;
    /// True while the sink can deliver now (connected), for `/readyz`.
    fn is_ready(&self) -> bool;
    /// Resolves once the sink connected for the first time.
    fn ready(&self) -> BoxFuture<'_, ()>;
    /// Why the sink is not ready, when the client said (a refused login, an
    /// untrusted certificate): shown by `/readyz` after "not connected".
    fn not_ready_reason(&self) -> Option<String> {
        None
    }
    /// Disconnects cleanly.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A copy whose destination is another kind's: a bug in the bridge, never
/// forwarded (the copy fails for good and is dead-lettered).
pub(crate) fn wrong_destination(sink: SinkKind, destination: &Destination) -> SinkError {
    SinkError::Permanent(format!("a copy for {destination:?} reached a {sink} sink"))
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
