//! Topics the cluster called unknown, and since when: their copies are
//! retried for a grace period (metadata lag, a topic being created) before
//! they count as failed for good.

use std::time::Duration;

use crate::sink::SinkError;

/// Topics the cluster called unknown, and since when: retried for a grace
/// period before their copies count as failed for good.
#[derive(Debug)]
pub(super) struct MissingTopics {
    pub(super) since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// True while `since` may hold an entry: a successful send (every
    /// message) then skips the lock.
    pub(super) any: std::sync::atomic::AtomicBool,
    pub(super) grace: Duration,
}

/// More distinct missing topics than this and the oldest knowledge is
/// dropped (each then gets a fresh grace period): the map stays bounded.
const MAX_MISSING_TOPICS: usize = 10_000;

impl MissingTopics {
    /// Nothing missing yet; a topic is retried for `grace` once it is.
    pub(super) fn new(grace: Duration) -> MissingTopics {
        MissingTopics {
            since: Default::default(),
            any: Default::default(),
            grace,
        }
    }

    /// Transient while `topic` has been missing for less than the grace period.
    pub(super) fn classify(&self, topic: &str, error: SinkError) -> SinkError {
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        if since.len() >= MAX_MISSING_TOPICS && !since.contains_key(topic) {
            since.clear();
        }
        let first = *since
            .entry(topic.to_string())
            .or_insert_with(std::time::Instant::now);
        self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        if first.elapsed() < self.grace {
            SinkError::Transient(format!(
                "{error} (topic missing; retried for {:?})",
                self.grace
            ))
        } else {
            error
        }
    }

    /// The topic took a record: forget it was missing.
    pub(super) fn found(&self, topic: &str) {
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut since = self.since.lock().unwrap_or_else(|p| p.into_inner());
        since.remove(topic);
        if since.is_empty() {
            self.any.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_topics_get_a_grace_period_and_stay_bounded() {
        let missing = MissingTopics {
            since: Default::default(),
            any: Default::default(),
            grace: Duration::from_secs(60),
        };
        let refused = || SinkError::Permanent("unknown topic".into());
        assert!(matches!(
            missing.classify("t", refused()),
            SinkError::Transient(_)
        ));
        missing.found("t");
        for i in 0..(3 * MAX_MISSING_TOPICS) {
            let _ = missing.classify(&format!("t{i}"), refused());
        }
        assert!(missing.since.lock().unwrap().len() <= MAX_MISSING_TOPICS);
        let expired = MissingTopics {
            since: Default::default(),
            any: Default::default(),
            grace: Duration::ZERO,
        };
        assert!(matches!(
            expired.classify("t", refused()),
            SinkError::Permanent(_)
        ));
    }
}
