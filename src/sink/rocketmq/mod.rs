//! RocketMQ sink: a focused producer of the remoting protocol.
//!
//! The route of a topic comes from the name servers (GET_ROUTEINFO_BY_TOPIC)
//! and is cached for 30 s; each message goes to the next writable queue in
//! turn (SEND_MESSAGE_V2), skipping for a moment a broker that just failed.
//! A copy resolves only on SEND_OK. Why not rocketmq-client-rust: see
//! NOTES.md (build cost measured on this project's machine).

mod acl;
mod codec;
mod connection;
mod message;
mod route;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

pub use acl::{sign, AclCredentials};
pub use codec::{request_code, response_code, Command};
pub use connection::{Connection, Pool, RemotingError};
pub use message::{check_topic, encode_properties, property_name, RESERVED_PREFIX};
pub use route::{parse_lenient, MessageQueue, TopicRouteData};

use super::{Outgoing, Sink, SinkBuildError, SinkError};
use crate::config::{NotDurablePolicy, RocketMqSinkConfig};

/// How long a fetched route is used before it is asked for again (the Java
/// client's `pollNameServerInterval`).
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// A route borrowed from the default topic (auto-creation) is asked for again
/// soon, so that the topic's own route replaces it once the broker created it.
const BORROWED_ROUTE_TTL: Duration = Duration::from_secs(3);
/// How long a broker that failed a send is skipped when another can take it.
const UNHEALTHY_FOR: Duration = Duration::from_secs(1);
/// After a failed route request, how long sends use what they have instead
/// of asking the name servers again.
const FETCH_HOLD_OFF: Duration = Duration::from_secs(1);
/// Room for the request header in a frame (the properties are counted apart).
const HEADER_ROOM: usize = 4096;

/// A producer for one RocketMQ cluster.
pub struct RocketMqSink {
    producer: Arc<Producer>,
    ready: watch::Receiver<bool>,
    probe: tokio::task::JoinHandle<()>,
}

struct CachedRoute {
    queues: Arc<Vec<MessageQueue>>,
    fetched: Instant,
    ttl: Duration,
}

/// Everything a send needs, shared by all sends of the sink.
struct Producer {
    name: Arc<str>,
    name_servers: Vec<String>,
    next_name_server: AtomicUsize,
    producer_group: String,
    namespace: Option<String>,
    timeout: Duration,
    not_durable: NotDurablePolicy,
    max_message_size: usize,
    acl: Option<AclCredentials>,
    pool: Pool,
    routes: Mutex<HashMap<String, CachedRoute>>,
    /// One route request per topic at a time; the others wait for its answer.
    route_fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Sends awaiting the broker's answer; a full window holds the pipeline
    /// back instead of queueing requests past their timeout.
    window: tokio::sync::Semaphore,
    /// Topics that had a route once: if it vanishes, brokers are restarting
    /// or down (retry), the topic was not deleted by us.
    ever_routed: Mutex<HashSet<String>>,
    /// Since when the name server has said a topic does not exist.
    missing_since: Mutex<HashMap<String, Instant>>,
    /// The last failed route request per topic: for a moment, sends use the
    /// stale route (or fail at once) instead of each asking again.
    fetch_failures: Mutex<HashMap<String, (Instant, String)>>,
    topic_missing_grace: Duration,
    next_queue: AtomicUsize,
    unhealthy: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        let producer = Arc::new(Producer {
            name: Arc::from(name),
            name_servers: config.name_server.clone(),
            next_name_server: AtomicUsize::new(0),
            producer_group: with_namespace(namespace.as_deref(), &config.producer_group),
            namespace,
            timeout: config.send_timeout.0,
            not_durable: config.not_durable,
            max_message_size: config.max_message_size,
            acl: config.acl.as_ref().map(|acl| AclCredentials {
                access_key: acl.access_key.clone(),
                secret_key: acl.secret_key.clone(),
                security_token: acl.security_token.clone(),
            }),
            pool: Pool::new(tls, config.send_timeout.0),
            routes: Mutex::default(),
            route_fetches: Mutex::default(),
            window: tokio::sync::Semaphore::new(config.max_in_flight),
            ever_routed: Mutex::default(),
            missing_since: Mutex::default(),
            fetch_failures: Mutex::default(),
            topic_missing_grace: config.topic_missing_grace.0,
            next_queue: AtomicUsize::new(0),
            unhealthy: Mutex::default(),
        });
        let (ready_tx, ready) = watch::channel(false);
        let probe = tokio::spawn(wait_for_name_server(Arc::clone(&producer), ready_tx));
        Ok(RocketMqSink {
            producer,
            ready,
            probe,
        })
    }
}

/// Asks the name servers for the cluster until one answers.
async fn wait_for_name_server(producer: Arc<Producer>, ready: watch::Sender<bool>) {
    let mut attempts = 0u32;
    loop {
        match producer.cluster_brokers().await {
            Ok(brokers) => {
                tracing::info!(sink = %producer.name, brokers, "RocketMQ name server reached");
                ready.send_replace(true);
                return;
            }
            Err(e) => {
                attempts += 1;
                if attempts == 1 || attempts % 12 == 0 {
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
        Some(ns) if !name.starts_with(&format!("{ns}%")) => format!("{ns}%{name}"),
        _ => name.to_string(),
    }
}

/// The outcome of asking the name servers for one topic.
enum RouteAnswer {
    Found(TopicRouteData),
    NotFound,
}

impl Producer {
    /// Sends a request to the name servers in turn until one answers.
    async fn ask_name_server(&self, mut command: Command) -> Result<Command, String> {
        if let Some(acl) = &self.acl {
            sign(&mut command, acl);
        }
        let start = self.next_name_server.load(Ordering::Relaxed);
        let mut last_error = String::from("no name server configured");
        for i in 0..self.name_servers.len() {
            let index = (start + i) % self.name_servers.len();
            let addr = &self.name_servers[index];
            let answer = match self.pool.get(addr).await {
                Ok(connection) => connection.request(command.clone(), self.timeout).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(response) => {
                    self.next_name_server.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(last_error)
    }

    /// How many brokers the name server knows.
    async fn cluster_brokers(&self) -> Result<usize, String> {
        let response = self
            .ask_name_server(Command::request(
                request_code::GET_BROKER_CLUSTER_INFO,
                Default::default(),
            ))
            .await?;
        if response.code != response_code::SUCCESS {
            // It answered, which is what readiness needs; the count is unknown.
            return Ok(0);
        }
        let info: serde_json::Value = parse_lenient(&response.body)?;
        Ok(info
            .get("brokerAddrTable")
            .and_then(|t| t.as_object())
            .map_or(0, |t| t.len()))
    }

    async fn fetch_route(&self, topic: &str) -> Result<RouteAnswer, String> {
        let command = Command::request(
            request_code::GET_ROUTEINFO_BY_TOPIC,
            [("topic".to_string(), topic.to_string())].into(),
        );
        let response = self.ask_name_server(command).await?;
        tracing::debug!(sink = %self.name, topic, code = response.code, "route asked");
        match response.code {
            response_code::SUCCESS => TopicRouteData::parse(&response.body)
                .map(RouteAnswer::Found)
                .map_err(|e| format!("unreadable route of `{topic}`: {e}")),
            response_code::TOPIC_NOT_EXIST => Ok(RouteAnswer::NotFound),
            code => Err(format!(
                "name server answered code {code} for the route of `{topic}`: {}",
                response.remark.unwrap_or_default()
            )),
        }
    }

    fn cached(&self, topic: &str) -> Option<(Arc<Vec<MessageQueue>>, bool)> {
        lock(&self.routes)
            .get(topic)
            .map(|c| (Arc::clone(&c.queues), c.fetched.elapsed() < c.ttl))
    }

    fn remember(
        &self,
        topic: &str,
        queues: Vec<MessageQueue>,
        ttl: Duration,
    ) -> Arc<Vec<MessageQueue>> {
        let queues = Arc::new(queues);
        lock(&self.routes).insert(
            topic.to_string(),
            CachedRoute {
                queues: Arc::clone(&queues),
                fetched: Instant::now(),
                ttl,
            },
        );
        queues
    }

    /// Makes the next send ask the name server again (the stale route stays
    /// as a fallback while the name server cannot be reached).
    fn invalidate(&self, topic: &str) {
        if let Some(cached) = lock(&self.routes).get_mut(topic) {
            cached.ttl = Duration::ZERO;
        }
    }

    /// The writable queues of a topic: its own route, or the default topic's
    /// when the broker may auto-create it.
    async fn queues(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>, SinkError> {
        if let Some((queues, true)) = self.cached(topic) {
            return Ok(queues);
        }
        let fetch = Arc::clone(
            lock(&self.route_fetches)
                .entry(topic.to_string())
                .or_default(),
        );
        let _only_fetch = fetch.lock().await;
        let stale = match self.cached(topic) {
            // Another send fetched it while this one waited.
            Some((queues, true)) => return Ok(queues),
            Some((queues, false)) => Some(queues),
            None => None,
        };
        let recent_failure = lock(&self.fetch_failures)
            .get(topic)
            .filter(|(at, _)| at.elapsed() < FETCH_HOLD_OFF)
            .map(|(_, error)| error.clone());
        if let Some(error) = recent_failure {
            return stale.ok_or(SinkError::Transient(error));
        }
        let fetched = match self.fetch_route(topic).await {
            Ok(RouteAnswer::Found(route)) => {
                lock(&self.fetch_failures).remove(topic);
                lock(&self.missing_since).remove(topic);
                let queues = route.writable_queues(None);
                if queues.is_empty() {
                    return Err(SinkError::Transient(format!(
                        "topic `{topic}` has no writable queue on a broker master"
                    )));
                }
                lock(&self.ever_routed).insert(topic.to_string());
                return Ok(self.remember(topic, queues, ROUTE_TTL));
            }
            Ok(RouteAnswer::NotFound) => {
                lock(&self.fetch_failures).remove(topic);
                self.borrowed_route(topic).await
            }
            Err(e) => {
                lock(&self.fetch_failures).insert(topic.to_string(), (Instant::now(), e.clone()));
                Err(SinkError::Transient(e))
            }
        };
        match (fetched, stale) {
            // The name server cannot be asked: keep using what it said last.
            (Err(SinkError::Transient(_)), Some(stale)) => Ok(stale),
            (result, _) => result,
        }
    }

    /// For a topic the name server does not know: the default topic's queues
    /// if brokers auto-create topics, else why the topic cannot be sent to.
    async fn borrowed_route(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>, SinkError> {
        if let RouteAnswer::Found(route) = self
            .fetch_route(message::DEFAULT_TOPIC)
            .await
            .map_err(SinkError::Transient)?
        {
            let queues = route.writable_queues(Some(4));
            if !queues.is_empty() {
                return Ok(self.remember(topic, queues, BORROWED_ROUTE_TTL));
            }
        }
        if lock(&self.ever_routed).contains(topic) {
            return Err(SinkError::Transient(format!(
                "the route of topic `{topic}` vanished from the name server; brokers may be restarting"
            )));
        }
        match self.cluster_brokers().await {
            Ok(0) | Err(_) => Err(SinkError::Transient(format!(
                "no route for topic `{topic}` and no broker registered at the name server yet"
            ))),
            Ok(_) => {
                let since = *lock(&self.missing_since)
                    .entry(topic.to_string())
                    .or_insert_with(Instant::now);
                if since.elapsed() >= self.topic_missing_grace {
                    Err(SinkError::Permanent(format!(
                        "topic `{topic}` does not exist and the brokers do not create topics automatically"
                    )))
                } else {
                    Err(SinkError::Transient(format!(
                        "topic `{topic}` not found at the name server (for {:?}; dead-lettered after topic_missing_grace)",
                        since.elapsed()
                    )))
                }
            }
        }
    }

    /// The next queue in turn, skipping brokers that just failed if another can take it.
    fn pick<'q>(&self, queues: &'q [MessageQueue]) -> &'q MessageQueue {
        let start = self.next_queue.fetch_add(1, Ordering::Relaxed);
        let unhealthy = lock(&self.unhealthy);
        let now = Instant::now();
        (0..queues.len())
            .map(|i| &queues[(start + i) % queues.len()])
            .find(|q| {
                unhealthy
                    .get(&q.broker_addr)
                    .is_none_or(|until| *until <= now)
            })
            .unwrap_or(&queues[start % queues.len()])
    }

    fn mark_unhealthy(&self, addr: &str) {
        lock(&self.unhealthy).insert(addr.to_string(), Instant::now() + UNHEALTHY_FOR);
    }

    async fn send(&self, message: Outgoing) -> Result<(), SinkError> {
        let topic = message.topic.as_deref().unwrap_or_default();
        let topic = if message.failure.is_some() {
            message::sanitize_topic(topic)
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
        let queues = self.queues(&topic).await?;
        let queue = self.pick(&queues);
        let properties = message::properties(&message, message.tag.as_deref(), &message.keys);
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
        let frame_size = request.body.len()
            + request
                .ext_fields
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + HEADER_ROOM;
        if frame_size > connection::MAX_FRAME {
            return Err(SinkError::Permanent(format!(
                "message with its properties ({frame_size} bytes) exceeds the remoting frame limit of {} bytes",
                connection::MAX_FRAME
            )));
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
            self.mark_unhealthy(&queue.broker_addr);
            if !matches!(e, RemotingError::Timeout { .. }) {
                // The broker went away: it may be back elsewhere, or not at all.
                self.invalidate(&topic);
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
            self.invalidate(&topic);
        }
        outcome.map_err(|e| match e {
            SinkError::Transient(m) => {
                SinkError::Transient(format!("{} ({topic}): {m}", queue.broker_name))
            }
            SinkError::Permanent(m) => {
                SinkError::Permanent(format!("{} ({topic}): {m}", queue.broker_name))
            }
        })
    }
}

/// What a broker's answer to a send means for the message.
pub fn classify(
    code: i32,
    remark: Option<&str>,
    not_durable: NotDurablePolicy,
) -> Result<(), SinkError> {
    use response_code::*;
    let remark = remark.unwrap_or_default();
    let say = |what: &str| {
        format!("{what} (code {code}) {remark}")
            .trim_end()
            .to_string()
    };
    match code {
        SUCCESS => Ok(()),
        FLUSH_DISK_TIMEOUT | FLUSH_SLAVE_TIMEOUT | SLAVE_NOT_AVAILABLE => match not_durable {
            NotDurablePolicy::Accept => Ok(()),
            NotDurablePolicy::Retry => Err(SinkError::Transient(say(
                "stored but not durable yet (not_durable: retry)",
            ))),
        },
        // A broker says so when the route was stale (a slave not synced yet, a
        // borrowed default-topic route); the name server decides "missing".
        TOPIC_NOT_EXIST => Err(SinkError::Transient(say("topic not on this broker"))),
        MESSAGE_ILLEGAL => Err(SinkError::Permanent(say(
            "message refused as illegal or too large",
        ))),
        // A broker whose writes were switched off for maintenance says
        // "sending message is forbidden"; that passes. Refused credentials do not.
        NO_PERMISSION if remark.contains("forbidden") => {
            Err(SinkError::Transient(say("broker not writable")))
        }
        NO_PERMISSION => Err(SinkError::Permanent(say("no permission"))),
        REQUEST_CODE_NOT_SUPPORTED | VERSION_NOT_SUPPORTED => Err(SinkError::Permanent(say(
            "request not supported by the broker",
        ))),
        // Brokers up to 4.9 answer a failed ACL check with a system error.
        SYSTEM_ERROR if remark.contains("AclException") => {
            Err(SinkError::Permanent(say("ACL check failed")))
        }
        SYSTEM_BUSY => Err(SinkError::Transient(say("broker busy"))),
        SERVICE_NOT_AVAILABLE => Err(SinkError::Transient(say("service not available"))),
        _ => Err(SinkError::Transient(say("send failed"))),
    }
}

impl Sink for RocketMqSink {
    fn name(&self) -> &str {
        &self.producer.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        let producer = Arc::clone(&self.producer);
        Box::pin(async move { producer.send(message).await })
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        let mut ready = self.ready.clone();
        Box::pin(async move {
            let _ = ready.wait_for(|r| *r).await;
        })
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
    fn send_ok_resolves_and_not_durable_follows_the_policy() {
        assert_eq!(classify(0, None, NotDurablePolicy::Retry), Ok(()));
        for code in [10, 11, 12] {
            assert!(matches!(
                classify(code, None, NotDurablePolicy::Retry),
                Err(SinkError::Transient(_))
            ));
            assert_eq!(classify(code, None, NotDurablePolicy::Accept), Ok(()));
        }
    }

    #[test]
    fn permanent_and_transient_codes() {
        for code in [13, 16] {
            assert!(matches!(
                classify(code, Some("x"), NotDurablePolicy::Retry),
                Err(SinkError::Permanent(_))
            ));
        }
        assert!(matches!(
            classify(
                16,
                Some("the broker[b] sending message is forbidden"),
                NotDurablePolicy::Retry
            ),
            Err(SinkError::Transient(_))
        ));
        for code in [1, 2, 14, 17, 25] {
            assert!(matches!(
                classify(code, None, NotDurablePolicy::Retry),
                Err(SinkError::Transient(_))
            ));
        }
        assert!(matches!(
            classify(
                1,
                Some("org.apache.rocketmq.acl.common.AclException: signature mismatch"),
                NotDurablePolicy::Retry
            ),
            Err(SinkError::Permanent(_))
        ));
    }

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
