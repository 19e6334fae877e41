//! The producer: one rdkafka `ThreadedProducer` per sink, a record resolved
//! only by its delivery report (brought back by `delivery`).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::client::{self, redacted};
use super::config::KafkaSinkConfig;
use super::context::SinkContext;
use super::delivery::{self, Reports};
use super::missing_topics::MissingTopics;
use crate::sink::{Destination, Outgoing, Sink, SinkBuildError, SinkError, SinkKind};

/// The producer type: librdkafka's callbacks, delivery reports included,
/// go through [`SinkContext`]. A clone shares the producer (and its
/// polling thread) with the sends and the metadata probe.
type SinkProducer = ThreadedProducer<SinkContext>;

/// How long a send waits before trying again when librdkafka's local queue
/// is full (what rdkafka's `FutureProducer` waited too).
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(100);

/// A producer for one Kafka cluster.
pub struct KafkaSink {
    name: Arc<str>,
    /// Kept to build a replacement producer; shared, never cloned per message.
    client: Arc<ClientConfig>,
    context: SinkContext,
    /// Replaced when librdkafka reports a fatal error (e.g. an idempotent
    /// producer fenced after an epoch bump): a fatal producer fails every send
    /// from then on, so a new one (new producer id) takes over.
    producer: Arc<RwLock<(u64, SinkProducer)>>,
    ready: watch::Receiver<bool>,
    last_send: Arc<crate::sink::LastSend>,
    missing: Arc<MissingTopics>,
    /// Ends the start-up metadata probe (on `close` and on drop).
    stop: CancellationToken,
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl KafkaSink {
    /// Creates the producer; `ready()` resolves once cluster metadata was
    /// fetched (so a refused login or an untrusted certificate keeps the
    /// sink, and with it the source, from starting).
    pub fn start(name: &str, config: &KafkaSinkConfig) -> Result<KafkaSink, SinkBuildError> {
        let invalid = |message: String| SinkBuildError::Invalid {
            name: name.to_string(),
            message,
        };
        let client = client::client_config(config).map_err(|e| invalid(e.to_string()))?;
        let (reports, receiver) = Reports::channel();
        let context = SinkContext::new(Arc::from(name), client::secrets(&client), reports);
        let producer: SinkProducer = client
            .create_with_context(context.clone())
            .map_err(|e| invalid(format!("Kafka producer: {}", redacted(&e, &client))))?;
        // The reports are resolved on this runtime: the sink is started and
        // used on the bridge's one runtime.
        tokio::spawn(delivery::dispatch(receiver));
        let (ready_tx, ready) = watch::channel(false);
        let stop = CancellationToken::new();
        tokio::spawn(probe_metadata(
            producer.clone(),
            context.clone(),
            name.to_string(),
            ready_tx,
            stop.clone(),
        ));
        Ok(KafkaSink {
            name: Arc::from(name),
            client: Arc::new(client),
            context,
            producer: Arc::new(RwLock::new((0, producer))),
            ready,
            last_send: crate::sink::LastSend::new(),
            missing: Arc::new(MissingTopics::new(config.topic_missing_grace.0)),
            stop,
        })
    }

    fn current(&self) -> (u64, SinkProducer) {
        let guard = self.producer.read().unwrap_or_else(|p| p.into_inner());
        (guard.0, guard.1.clone())
    }
}

/// How long one metadata request may block its thread: short, so that a
/// shutdown while the cluster is unreachable waits at most this long for it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Fetches cluster metadata until it succeeds, then marks the sink ready.
/// Only the librdkafka call blocks (in `spawn_blocking`, at most
/// [`PROBE_TIMEOUT`]); the waits between attempts are async and end at once
/// when the sink is closed or dropped.
async fn probe_metadata(
    producer: SinkProducer,
    context: SinkContext,
    sink: String,
    ready_tx: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut attempts = 0u32;
    loop {
        let probe = producer.clone();
        let fetch = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(None, PROBE_TIMEOUT)
                .map(|metadata| metadata.brokers().len())
        });
        let result = tokio::select! {
            result = fetch => result,
            () = stop.cancelled() => return,
            () = ready_tx.closed() => return,
        };
        match result {
            Ok(Ok(brokers)) => {
                context.clear_error();
                tracing::info!(sink = %sink, brokers, "Kafka metadata fetched");
                ready_tx.send_replace(true);
                return;
            }
            Ok(Err(e)) => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(12) {
                    let error = context.last_error().unwrap_or_else(|| e.to_string());
                    tracing::warn!(sink = %sink, %error, "Kafka cluster not reachable yet");
                }
            }
            Err(e) => {
                tracing::error!(sink = %sink, error = %e, "Kafka metadata probe failed");
                return;
            }
        }
        // A metadata request makes librdkafka connect at once, so the probe
        // backs off itself: a refused login or an untrusted certificate is
        // not retried in a loop.
        tokio::select! {
            () = tokio::time::sleep(probe_backoff(attempts)) => {}
            () = stop.cancelled() => return,
            () = ready_tx.closed() => return,
        }
    }
}

/// Wait after the `attempts`-th failed metadata probe: 500 ms doubling to 10 s.
fn probe_backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(5);
    Duration::from_millis(500 << shift).min(Duration::from_secs(10))
}

/// Swaps in a new producer unless another send already did.
fn replace_fatal(
    shared: &RwLock<(u64, SinkProducer)>,
    generation: u64,
    client: &ClientConfig,
    context: &SinkContext,
    name: &str,
    reason: &str,
) {
    let mut guard = shared.write().unwrap_or_else(|p| p.into_inner());
    if guard.0 != generation {
        return;
    }
    match client.create_with_context::<_, SinkProducer>(context.clone()) {
        Ok(fresh) => {
            let reason = context.mask(reason);
            tracing::warn!(sink = %name, %reason, "Kafka producer hit a fatal error; replaced it");
            *guard = (generation + 1, fresh);
        }
        Err(e) => {
            let error = redacted(&e, client);
            tracing::error!(sink = %name, %error, "cannot replace the Kafka producer");
        }
    }
}

/// Record headers: the platform's three properties, or all with `headers: all`;
/// a dead letter adds why it failed.
fn headers(message: &Outgoing, all: bool) -> OwnedHeaders {
    message
        .forwarded_properties(all)
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            })
        })
}

/// Whether retrying a failed record can help.
pub fn classify(error: &KafkaError) -> SinkError {
    use RDKafkaErrorCode::*;
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge
            | InvalidMessageSize
            | MessageBatchTooLarge
            | InvalidRecord
            | InvalidMessage
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | UnknownTopicOrPartition
            | UnknownTopic
            | InvalidTopic
            | InvalidRequiredAcks
            | PolicyViolation
            | UnsupportedForMessageFormat,
        ) => SinkError::Permanent(text),
        _ => SinkError::Transient(text),
    }
}

/// Sends one record and waits for its delivery report; a fatal producer
/// error replaces the producer (the copy is retried on the new one). The
/// flag says the cluster does not know the topic.
async fn send_record(
    message: &Outgoing,
    generation: u64,
    producer: SinkProducer,
    shared: &Arc<RwLock<(u64, SinkProducer)>>,
    client: &ClientConfig,
    context: &SinkContext,
    name: &str,
) -> Result<(), (SinkError, bool)> {
    let Destination::Kafka {
        topic,
        key,
        all_headers,
    } = &message.destination
    else {
        return Err((
            crate::sink::wrong_destination(SinkKind::Kafka, &message.destination),
            false,
        ));
    };
    if let Some(problem) = super::topic_names::kafka_topic_problem(topic) {
        // The broker would refuse it (and some brokers silently accept it).
        return Err((SinkError::Permanent(problem), false));
    }
    let (done, report) = oneshot::channel();
    let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(topic, Box::new(done))
        .payload(&message.envelope.body[..])
        .headers(headers(message, *all_headers));
    if let Some(key) = key {
        record = record.key(key.as_bytes());
    }
    let queued = loop {
        match producer.send(record) {
            Ok(()) => break Ok(()),
            // A full local queue waits here (backpressure), then tries again.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(QUEUE_FULL_WAIT).await;
            }
            Err((error, _)) => break Err(error),
        }
    };
    let outcome = match queued {
        Ok(()) => report.await.unwrap_or_else(|_| {
            Err(KafkaError::Canceled) // the producer went away with the record
        }),
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => {
            if let Some(fatal) = producer.client().fatal_error() {
                replace_fatal(shared, generation, client, context, name, &fatal.1);
                return Err((
                    SinkError::Transient(format!(
                        "producer replaced after fatal error: {}",
                        context.mask(&error.to_string())
                    )),
                    false,
                ));
            }
            let unknown_topic = matches!(
                error.rdkafka_error_code(),
                Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic)
            );
            Err((classify(&error), unknown_topic))
        }
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        let (generation, producer) = self.current();
        let shared = self.producer.clone();
        let client = Arc::clone(&self.client);
        let context = self.context.clone();
        let name = Arc::clone(&self.name);
        let last_send = Arc::clone(&self.last_send);
        let missing = Arc::clone(&self.missing);
        Box::pin(async move {
            let result = send_record(
                &message, generation, producer, &shared, &client, &context, &name,
            )
            .await
            .map_err(|(error, unknown_topic)| {
                let topic = message.destination.topic().unwrap_or_default();
                if unknown_topic {
                    missing.classify(topic, error)
                } else {
                    error
                }
            });
            if result.is_ok() {
                // The cluster confirmed a record: an earlier client error
                // no longer explains anything (`/readyz`).
                context.clear_error();
                missing.found(message.destination.topic().unwrap_or_default());
            }
            last_send.record(&result);
            result
        })
    }

    fn kind(&self) -> crate::sink::SinkKind {
        crate::sink::SinkKind::Kafka
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow() && self.last_send.ok()
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        crate::sink::until_ready(&self.ready)
    }

    fn not_ready_reason(&self) -> Option<String> {
        self.context.last_error()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.stop.cancel();
        let (_, producer) = self.current();
        Box::pin(async move {
            let flushed =
                tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
            if let Ok(Err(e)) = flushed {
                tracing::warn!(sink = %self.name, error = %e, "Kafka flush incomplete");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_probe_backs_off() {
        let waits: Vec<u64> = (1..=8)
            .map(|a| probe_backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn permanent_and_transient_errors() {
        let permanent = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert!(matches!(classify(&permanent), SinkError::Permanent(_)));
        let auth = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(matches!(classify(&auth), SinkError::Permanent(_)));
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(
                matches!(classify(&error), SinkError::Transient(_)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn dead_letters_carry_their_failure_as_headers() {
        use rdkafka::message::Headers;
        let mut message = Outgoing::for_test(&[("topic", "/p/d/x"), ("other", "o")], b"{}");
        let names =
            |h: &OwnedHeaders| -> Vec<String> { h.iter().map(|h| h.key.to_string()).collect() };
        assert_eq!(names(&headers(&message, false)), ["topic"]);
        message.failure = Some(std::sync::Arc::new(crate::sink::Failure {
            route: "r".into(),
            sink: "s".into(),
            error: "too large".into(),
        }));
        let with_failure = headers(&message, false);
        assert_eq!(
            names(&with_failure),
            [
                "topic",
                "deadLetterRoute",
                "deadLetterSink",
                "deadLetterError"
            ]
        );
        let error = with_failure.iter().last().and_then(|h| h.value);
        assert_eq!(error, Some(&b"too large"[..]));
    }

    #[test]
    fn errors_never_quote_a_secret_property() {
        let mut client = ClientConfig::new();
        client.set("sasl.password", "hunter2-value");
        client.set("bootstrap.servers", "b:9092");
        let error = KafkaError::ClientCreation("invalid value \"hunter2-value\" for b:9092".into());
        let text = redacted(&error, &client);
        assert!(!text.contains("hunter2-value"), "{text}");
        assert!(text.contains("***") && text.contains("b:9092"), "{text}");
    }
}
