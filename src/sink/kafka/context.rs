//! librdkafka's callbacks for one sink: its log lines and client errors go
//! to `tracing` with every secret masked, and the last client error is kept
//! so that readiness can say *why* the cluster is not reachable (a refused
//! SASL login, an untrusted certificate) instead of only "not connected".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, ProducerContext};

use super::client::mask;
use super::delivery::{Reports, Waiter};

/// A given client error code is logged at most once per this long: with a
/// broker down librdkafka reports (alternating) errors several times a second.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Shared by every producer the sink creates (a fatal producer is replaced).
#[derive(Clone)]
pub struct SinkContext(Arc<State>);

struct State {
    sink: Arc<str>,
    secrets: Vec<String>,
    last_error: Mutex<Option<String>>,
    /// When each error code (its Debug name; "" without one) was last logged.
    logged: Mutex<HashMap<String, Instant>>,
    /// Set with `last_error`, so that clearing after every successful send
    /// costs one atomic swap when there is nothing to clear.
    has_error: AtomicBool,
    /// Where delivery reports go (`delivery::dispatch`).
    reports: Reports,
}

impl SinkContext {
    /// `secrets`: values to mask in everything librdkafka says; `reports`:
    /// where each record's delivery report goes.
    pub(super) fn new(sink: Arc<str>, secrets: Vec<String>, reports: Reports) -> SinkContext {
        SinkContext(Arc::new(State {
            sink,
            secrets,
            last_error: Mutex::new(None),
            logged: Mutex::new(HashMap::new()),
            has_error: AtomicBool::new(false),
            reports,
        }))
    }

    /// `text` with the sink's secrets masked.
    pub fn mask(&self, text: &str) -> String {
        mask(text, &self.0.secrets)
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

    /// The cluster answered (metadata, or a record was confirmed): forget
    /// the previous error, and log the next one at once.
    pub fn clear_error(&self) {
        if !self.0.has_error.swap(false, Ordering::AcqRel) {
            return;
        }
        *self.0.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.0
            .logged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Whether an error with this code may be logged at `now` (and if so,
    /// remembers that it was).
    fn may_log(&self, code: Option<RDKafkaErrorCode>, now: Instant) -> bool {
        let key = code.map(|c| format!("{c:?}")).unwrap_or_default();
        let mut logged = self.0.logged.lock().unwrap_or_else(|p| p.into_inner());
        match logged.get(&key) {
            Some(at) if now.saturating_duration_since(*at) < ERROR_LOG_INTERVAL => false,
            _ => {
                logged.insert(key, now);
                true
            }
        }
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
        if self.may_log(code, Instant::now()) {
            tracing::warn!(sink = %self.0.sink, error = %text, "Kafka client error");
        } else {
            tracing::debug!(sink = %self.0.sink, error = %text, "Kafka client error (repeated)");
        }
        let mut last = self.0.last_error.lock().unwrap_or_else(|p| p.into_inner());
        // "All brokers down" follows the error that brought them down; keep
        // that one, it says why (a refused login, an untrusted certificate).
        if code != Some(RDKafkaErrorCode::AllBrokersDown) || last.is_none() {
            *last = Some(text);
        }
        self.0.has_error.store(true, Ordering::Release);
    }
}

/// Runs on whichever thread polls the producer (its polling thread, a
/// flush, the last drop): the report goes to the runtime.
impl ProducerContext for SinkContext {
    type DeliveryOpaque = Waiter;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Waiter) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((error, _)) => Err(error.clone()),
        };
        self.0.reports.report(waiter, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SinkContext {
        SinkContext::new(
            Arc::from("k"),
            vec!["long-secret-value".to_string()],
            Reports::channel().0,
        )
    }

    #[test]
    fn an_error_code_is_logged_at_most_once_per_interval() {
        let context = context();
        let start = Instant::now();
        let down = Some(RDKafkaErrorCode::AllBrokersDown);
        let transport = Some(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(context.may_log(transport, start));
        assert!(context.may_log(down, start));
        for second in 1..30 {
            let now = start + Duration::from_secs(second);
            assert!(!context.may_log(transport, now), "{second}");
            assert!(!context.may_log(down, now), "{second}");
        }
        assert!(context.may_log(transport, start + ERROR_LOG_INTERVAL));
        assert!(context.may_log(None, start));
    }

    #[test]
    fn the_last_error_keeps_its_cause_is_masked_and_is_cleared() {
        let context = context();
        context.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "b:9092: login with long-secret-value failed",
        );
        context.error(
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down",
        );
        let last = context.last_error().unwrap();
        assert!(last.contains("login with *** failed"), "{last}");
        context.clear_error();
        assert_eq!(context.last_error(), None);
        // After a success the next failure is logged (and stored) again.
        assert!(context.may_log(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            Instant::now()
        ));
    }
}
