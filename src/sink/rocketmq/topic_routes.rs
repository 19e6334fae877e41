//! The route cache: a topic's writable queues, asked of the name servers at
//! most once per topic at a time, kept 30 s, and the rules for deciding that
//! a topic is missing rather than briefly gone.

use hashlink::LruCache;
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

/// What the sink knows about one topic.
#[derive(Default)]
struct TopicState {
    route: Option<CachedRoute>,
    /// One route request per topic at a time; the others wait for its answer.
    fetch: Arc<tokio::sync::Mutex<()>>,
    /// It had a route once: if the route vanishes, brokers are restarting or
    /// down (retry); the topic was not deleted by us.
    ever_routed: bool,
    /// Since when the name server has said the topic does not exist.
    missing_since: Option<Instant>,
    /// The last failed route request: for a moment, sends use the stale route
    /// (or fail at once) instead of each asking again.
    last_failure: Option<(Instant, String)>,
}

/// The most topics whose state is kept; the least recently used is
/// forgotten first (topics templated per device must not grow memory
/// without end; a forgotten topic is looked up again when next used).
pub(super) const MAX_TOPICS: usize = 10_000;

/// Routes by topic.
pub(super) struct TopicRoutes {
    pub name_servers: NameServers,
    topics: Mutex<LruCache<String, TopicState>>,
    topic_missing_grace: Duration,
}

impl TopicRoutes {
    /// An empty cache over these name servers.
    pub(super) fn new(name_servers: NameServers, topic_missing_grace: Duration) -> TopicRoutes {
        TopicRoutes {
            name_servers,
            topics: Mutex::new(LruCache::new(MAX_TOPICS)),
            topic_missing_grace,
        }
    }

    /// Runs `f` on the topic's state under the lock.
    fn with<R>(&self, topic: &str, f: impl FnOnce(&mut TopicState) -> R) -> R {
        let mut topics = lock(&self.topics);
        if !topics.contains_key(topic) {
            topics.insert(topic.to_string(), TopicState::default());
        }
        match topics.get_mut(topic) {
            Some(state) => f(state),
            // Just inserted; only a capacity of 0 could lose it.
            None => f(&mut TopicState::default()),
        }
    }

    /// The cached queues and whether they are still fresh.
    fn cached(&self, topic: &str) -> Option<(Arc<Vec<MessageQueue>>, bool)> {
        self.with(topic, |state| {
            state
                .route
                .as_ref()
                .map(|c| (Arc::clone(&c.queues), c.fetched.elapsed() < c.ttl))
        })
    }

    fn remember(
        &self,
        topic: &str,
        queues: Vec<MessageQueue>,
        ttl: Duration,
    ) -> Arc<Vec<MessageQueue>> {
        let queues = Arc::new(queues);
        self.with(topic, |state| {
            state.route = Some(CachedRoute {
                queues: Arc::clone(&queues),
                fetched: Instant::now(),
                ttl,
            })
        });
        queues
    }

    /// Makes the next send ask the name server again (the stale route stays
    /// as a fallback while the name server cannot be reached).
    pub(super) fn invalidate(&self, topic: &str) {
        self.with(topic, |state| {
            if let Some(cached) = &mut state.route {
                cached.ttl = Duration::ZERO;
            }
        });
    }

    /// The writable queues of a topic: its own route, or the default topic's
    /// when the broker may auto-create it.
    pub(super) async fn queues(&self, topic: &str) -> Result<Arc<Vec<MessageQueue>>, SinkError> {
        if let Some((queues, true)) = self.cached(topic) {
            return Ok(queues);
        }
        let fetch = self.with(topic, |state| Arc::clone(&state.fetch));
        let _only_fetch = fetch.lock().await;
        let stale = match self.cached(topic) {
            // Another send fetched it while this one waited.
            Some((queues, true)) => return Ok(queues),
            Some((queues, false)) => Some(queues),
            None => None,
        };
        let recent_failure = self.with(topic, |state| {
            state
                .last_failure
                .as_ref()
                .filter(|(at, _)| at.elapsed() < FETCH_HOLD_OFF)
                .map(|(_, error)| error.clone())
        });
        if let Some(error) = recent_failure {
            return stale.ok_or(SinkError::Transient(error));
        }
        let fetched = match self.name_servers.fetch_route(topic).await {
            Ok(RouteAnswer::Found(route)) => {
                let queues = route.writable_queues(None);
                self.with(topic, |state| {
                    state.last_failure = None;
                    state.missing_since = None;
                    state.ever_routed |= !queues.is_empty();
                });
                if queues.is_empty() {
                    return Err(SinkError::Transient(format!(
                        "topic `{topic}` has no writable queue on a broker master"
                    )));
                }
                return Ok(self.remember(topic, queues, ROUTE_TTL));
            }
            Ok(RouteAnswer::NotFound) => {
                self.with(topic, |state| state.last_failure = None);
                self.borrowed_route(topic).await
            }
            Err(e) => {
                self.with(topic, |state| {
                    state.last_failure = Some((Instant::now(), e.clone()))
                });
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
        if self.with(topic, |state| state.ever_routed) {
            return Err(SinkError::Transient(format!(
                "the route of topic `{topic}` vanished from the name server; brokers may be restarting"
            )));
        }
        match self.name_servers.cluster_brokers().await {
            Ok(0) | Err(_) => Err(SinkError::Transient(format!(
                "no route for topic `{topic}` and no broker registered at the name server yet"
            ))),
            Ok(_) => {
                let since = self.with(topic, |state| {
                    *state.missing_since.get_or_insert_with(Instant::now)
                });
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

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn the_topic_state_stays_bounded() {
        let routes = TopicRoutes::new(
            NameServers {
                sink: Arc::from("t"),
                addrs: Vec::new(),
                next: Default::default(),
                acl: None,
                timeout: Duration::from_secs(1),
                pool: Arc::new(super::super::connection::Pool::new(
                    None,
                    Duration::from_secs(1),
                )),
            },
            Duration::from_secs(60),
        );
        for i in 0..(5 * MAX_TOPICS) {
            routes.remember(&format!("topic_{i}"), Vec::new(), Duration::from_secs(30));
        }
        assert_eq!(lock(&routes.topics).len(), MAX_TOPICS);
        // The most recent topics are the ones kept.
        assert!(routes
            .cached(&format!("topic_{}", 5 * MAX_TOPICS - 1))
            .is_some());
    }
}
