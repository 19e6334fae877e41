//! librdkafka's callbacks for one sink: its log lines and client errors go
//! to `tracing` with every secret masked, and the last client error is kept
//! so that readiness can say *why* the cluster is not reachable (a refused
//! SASL login, an untrusted certificate) instead of only "not connected".

use std::sync::{Arc, Mutex};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::client::mask;

/// Shared by every producer the sink creates (a fatal producer is replaced).
#[derive(Clone)]
pub struct SinkContext(Arc<State>);

struct State {
    sink: Arc<str>,
    secrets: Vec<String>,
    last_error: Mutex<Option<String>>,
}

impl SinkContext {
    /// `secrets`: values to mask in everything librdkafka says.
    pub fn new(sink: Arc<str>, secrets: Vec<String>) -> SinkContext {
        SinkContext(Arc::new(State {
            sink,
            secrets,
            last_error: Mutex::new(None),
        }))
    }

    /// The last client error librdkafka reported since the cluster was last
    /// reached, masked.
    pub fn last_error(&self) -> Option<String> {
        self.0
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cluster answered: forget the previous error.
    pub fn clear_error(&self) {
        *self.0.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        let message = mask(log_message, &self.0.secrets);
        let sink = &*self.0.sink;
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(sink, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(sink, fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(sink, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(sink, fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let reason = mask(reason, &self.0.secrets);
        let code = error.rdkafka_error_code();
        let text = match code {
            Some(code) => format!("{code}: {reason}"),
            None => reason,
        };
        let mut last = self.0.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() == Some(text.as_str()) {
            return; // librdkafka repeats an error once per queue it serves
        }
        tracing::warn!(sink = %self.0.sink, error = %text, "Kafka client error");
        // "All brokers down" follows the error that brought them down; keep
        // that one, it says why (a refused login, an untrusted certificate).
        if code != Some(RDKafkaErrorCode::AllBrokersDown) || last.is_none() {
            *last = Some(text);
        }
    }
}
