//! Egress: one [`Sink`] per configured sink, each resolving a send only when
//! its broker confirmed it.

pub mod mqtt;

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
}

/// An egress destination.
pub trait Sink: Send + Sync {
    /// The configured name, for logs and metrics.
    fn name(&self) -> &str;
    /// Resolves once the broker confirmed the message (or failed).
    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>>;
    /// Resolves once the sink connected for the first time.
    fn ready(&self) -> BoxFuture<'_, ()>;
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
        other => Err(SinkBuildError::Unsupported {
            name: name.to_string(),
            kind: other.kind(),
        }),
    }
}

/// Why a sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkBuildError {
    #[error("sink `{name}`: kind `{kind}` is not available in this build yet")]
    Unsupported { name: String, kind: &'static str },
    #[error("sink `{name}`: {source}")]
    Tls {
        name: String,
        source: crate::tls::TlsError,
    },
}
