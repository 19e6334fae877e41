//! The route cache: a topic's writable queues, asked of the name servers at
//! most once per topic at a time, kept 30 s, and the rules for deciding that
//! a topic is missing rather than briefly gone.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::lock;
use super::message;
use super::name_server::{NameServers, RouteAnswer};
use super::route::MessageQueue;
use crate::sink::SinkError;

/// How long a fetched route is used before it is asked for again (the Java
/// client's `pollNameServerInterval`).
const ROUTE_TTL: Duration = Duration::from_secs(30);
/// A route borrowed from the default topic (auto-creation) is asked for again
/// soon, so that the topic's own route replaces it once the broker created it.
const BORROWED_ROUTE_TTL: Duration = Duration::from_secs(3);
/// After a failed route request, how long sends use what they have instead
/// of asking the name servers again.
const FETCH_HOLD_OFF: Duration = Duration::from_secs(1);

struct CachedRoute {
    queues: Arc<Vec<MessageQueue>>,
    fetched: Instant,
    ttl: Duration,
}

/// Routes by topic.
pub(super) struct TopicRoutes {
    pub name_servers: NameServers,
    routes: Mutex<HashMap<String, CachedRoute>>,
    /// One route request per topic at a time; the others wait for its answer.
    route_fetches: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Topics that had a route once: if it vanishes, brokers are restarting
    /// or down (retry), the topic was not deleted by us.
    ever_routed: Mutex<HashSet<String>>,
    /// Since when the name server has said a topic does not exist.
    missing_since: Mutex<HashMap<String, Instant>>,
    /// The last failed route request per topic: for a moment, sends use the
    /// stale route (or fail at once) instead of each asking again.
    fetch_failures: Mutex<HashMap<String, (Instant, String)>>,
    topic_missing_grace: Duration,
}

impl TopicRoutes {
    /// An empty cache over these name servers.
    pub(super) fn new(name_servers: NameServers, topic_missing_grace: Duration) -> TopicRoutes {
        TopicRoutes {
            name_servers,
            routes: Mutex::default(),
            route_fetches: Mutex::default(),
            ever_routed: Mutex::default(),
            missing_since: Mutex::default(),
            fetch_failures: Mutex::default(),
            topic_missing_grace,
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
    pub(super) fn invalidate(&self, topic: &str) {
        if let Some(cached) = lock(&self.routes).get_mut(topic) {
            cached.ttl = Duration::ZERO;
        }
    }

    /// The writable queues of a topic: its own route, or the default topic's
    /// when the broker may auto-create it.
    pub(super) async fn queues(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>, SinkError> {
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
        let fetched = match self.name_servers.fetch_route(topic).await {
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
            .name_servers
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
        match self.name_servers.cluster_brokers().await {
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
}
