//! The RocketMQ producer: a topic's route from the name servers, the next
//! writable queue in turn, a broker that just failed skipped for a moment,
//! and a window bounding the sends awaiting an answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::acl::{sign, AclCredentials};
use super::codec::response_code;
use super::connection::{Pool, RemotingError};
use super::lock;
use super::message;
use super::name_server::NameServers;
use super::response::classify;
use super::route::MessageQueue;
use super::topic_names::{check_topic, sanitize_topic};
use super::topic_routes::TopicRoutes;

use super::config::{NotDurablePolicy, RocketMqSinkConfig};
use crate::sink::{Destination, Outgoing, Sink, SinkBuildError, SinkError};

/// How long a broker that failed a send is skipped when another can take it.
const UNHEALTHY_FOR: Duration = Duration::from_secs(1);

/// A producer for one RocketMQ cluster.
pub struct RocketMqSink {
    producer: Arc<Producer>,
    ready: watch::Receiver<bool>,
    last_send: Arc<crate::sink::LastSend>,
    probe: tokio::task::JoinHandle<()>,
}

/// Everything a send needs, shared by all sends of the sink.
struct Producer {
    name: Arc<str>,
    producer_group: String,
    namespace: Option<String>,
    timeout: Duration,
    not_durable: NotDurablePolicy,
    max_message_size: usize,
    acl: Option<AclCredentials>,
    pool: Arc<Pool>,
    routes: TopicRoutes,
    /// Sends awaiting the broker's answer; a full window holds the pipeline
    /// back instead of queueing requests past their timeout.
    window: tokio::sync::Semaphore,
    next_queue: AtomicUsize,
    unhealthy: Mutex<HashMap<String, Instant>>,
}

impl RocketMqSink {
    /// Sets the producer up; `ready()` resolves once a name server answered.
    pub fn start(name: &str, config: &RocketMqSinkConfig) -> Result<RocketMqSink, SinkBuildError> {
        let tls = match &config.tls {
            None => None,
            Some(tls) => {
                let cert = tls.cert_file.as_deref().zip(tls.key_file.as_deref());
                Some(
                    crate::tls::client_config(tls.ca_file.as_deref(), cert).map_err(|source| {
                        SinkBuildError::Tls {
                            name: name.to_string(),
                            source,
                        }
                    })?,
                )
            }
        };
        let namespace = config.namespace.clone().filter(|n| !n.is_empty());
        let acl = config.acl.as_ref().map(|acl| AclCredentials {
            access_key: acl.access_key.clone(),
            secret_key: acl.secret_key.clone(),
            security_token: acl.security_token.clone(),
        });
        let pool = Arc::new(Pool::new(tls, config.send_timeout.0));
        let name_servers = NameServers {
            sink: Arc::from(name),
            addrs: config.name_server.clone(),
            next: AtomicUsize::new(0),
            acl: acl.clone(),
            timeout: config.send_timeout.0,
            pool: Arc::clone(&pool),
        };
        let producer = Arc::new(Producer {
            name: Arc::from(name),
            producer_group: with_namespace(namespace.as_deref(), &config.producer_group),
            namespace,
            timeout: config.send_timeout.0,
            not_durable: config.not_durable,
            max_message_size: config.max_message_size,
            acl,
            pool,
            routes: TopicRoutes::new(name_servers, config.topic_missing_grace.0),
            window: tokio::sync::Semaphore::new(config.max_in_flight),
            next_queue: AtomicUsize::new(0),
            unhealthy: Mutex::default(),
        });
        let (ready_tx, ready) = watch::channel(false);
        let probe = tokio::spawn(wait_for_name_server(Arc::clone(&producer), ready_tx));
        Ok(RocketMqSink {
            producer,
            ready,
            last_send: crate::sink::LastSend::new(),
            probe,
        })
    }
}

/// Asks the name servers for the cluster until one answers.
async fn wait_for_name_server(producer: Arc<Producer>, ready: watch::Sender<bool>) {
    let mut attempts = 0u32;
    loop {
        match producer.routes.name_servers.cluster_brokers().await {
            Ok(brokers) => {
                tracing::info!(sink = %producer.name, brokers, "RocketMQ name server reached");
                ready.send_replace(true);
                return;
            }
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(12) {
                    tracing::warn!(sink = %producer.name, error = %e, "RocketMQ name server not reachable yet");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// `NAMESPACE%name`, as namespaced (and Alibaba Cloud instance) resources are named.
fn with_namespace(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns)
            if !name
                .strip_prefix(ns)
                .is_some_and(|rest| rest.starts_with('%')) =>
        {
            format!("{ns}%{name}")
        }
        _ => name.to_string(),
    }
}

impl Producer {
    /// The next queue in turn, skipping brokers that just failed if another can take it.
    fn pick<'q>(&self, queues: &'q [MessageQueue]) -> Option<&'q MessageQueue> {
        let count = queues.len().max(1);
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        let unhealthy = lock(&self.unhealthy);
        let now = Instant::now();
        (0..count)
            .filter_map(|i| queues.get((start + i) % count))
            .find(|q| {
                unhealthy
                    .get(&q.broker_addr)
                    .is_none_or(|until| *until <= now)
            })
            .or_else(|| queues.get(start % count))
    }

    fn mark_unhealthy(&self, addr: &str) {
        lock(&self.unhealthy).insert(addr.to_string(), Instant::now() + UNHEALTHY_FOR);
    }

    async fn send(&self, message: Outgoing) -> Result<(), SinkError> {
        let Destination::RocketMq { topic, .. } = &message.destination else {
            return Err(crate::sink::wrong_destination(
                crate::sink::SinkKind::RocketMq,
                &message.destination,
            ));
        };
        let topic = if message.failure.is_some() {
            sanitize_topic(topic)
        } else {
            check_topic(topic).map_err(SinkError::Permanent)?;
            topic.to_string()
        };
        let topic = with_namespace(self.namespace.as_deref(), &topic);
        let size = message.envelope.body.len();
        if size > self.max_message_size {
            return Err(SinkError::Permanent(format!(
                "message body of {size} bytes is larger than max_message_size {}",
                self.max_message_size
            )));
        }
        let queues = self.routes.queues(&topic).await?;
        let queue = self.pick(&queues).ok_or_else(|| {
            SinkError::Transient(format!("topic `{topic}` has no writable queue"))
        })?;
        let properties = message::properties(&message);
        let context = message::SendContext {
            producer_group: &self.producer_group,
            broker_name: &queue.broker_name,
            queue_id: queue.queue_id,
        };
        let mut request =
            message::send_request(&topic, &context, &properties, message.envelope.body.clone());
        if let Some(acl) = &self.acl {
            sign(&mut request, acl);
        }
        let _slot = self
            .window
            .acquire()
            .await
            .map_err(|_| SinkError::Transient("sink closed".into()))?;
        let answer = match self.pool.get(&queue.broker_addr).await {
            Ok(connection) => connection.request(request, self.timeout).await,
            Err(e) => Err(e),
        };
        let response = answer.map_err(|e| {
            if let RemotingError::Unframeable(reason) = e {
                return SinkError::Permanent(reason);
            }
            self.mark_unhealthy(&queue.broker_addr);
            if !matches!(e, RemotingError::Timeout { .. }) {
                // The broker went away: it may be back elsewhere, or not at all.
                self.routes.invalidate(&topic);
            }
            SinkError::Transient(e.to_string())
        })?;
        let outcome = classify(response.code, response.remark.as_deref(), self.not_durable);
        if outcome.is_err() {
            self.mark_unhealthy(&queue.broker_addr);
        }
        if response.code == response_code::TOPIC_NOT_EXIST {
            // The route was out of date (a borrowed or stale one): ask again,
            // and let the name server's answer decide whether it is missing.
            self.routes.invalidate(&topic);
        }
        outcome.map_err(|e| match e {
            SinkError::Transient(m) => {
                SinkError::Transient(format!("{} ({topic}): {m}", queue.broker_name))
            }
            SinkError::Permanent(m) => {
                SinkError::Permanent(format!("{} ({topic}): {m}", queue.broker_name))
            }
            SinkError::GaveUp(m) => {
                SinkError::GaveUp(format!("{} ({topic}): {m}", queue.broker_name))
            }
        })
    }
}

impl Sink for RocketMqSink {
    fn name(&self) -> &str {
        &self.producer.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        let producer = Arc::clone(&self.producer);
        let last_send = Arc::clone(&self.last_send);
        Box::pin(async move {
            let result = producer.send(message).await;
            last_send.record(&result);
            result
        })
    }

    fn kind(&self) -> crate::sink::SinkKind {
        crate::sink::SinkKind::RocketMq
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow() && self.last_send.ok()
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        crate::sink::until_ready(&self.ready)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.probe.abort();
            self.producer.window.close();
            self.producer.pool.close();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_prefix_once() {
        assert_eq!(with_namespace(Some("MQ_INST_1"), "iot"), "MQ_INST_1%iot");
        assert_eq!(
            with_namespace(Some("MQ_INST_1"), "MQ_INST_1%iot"),
            "MQ_INST_1%iot"
        );
        assert_eq!(with_namespace(None, "iot"), "iot");
    }
}
