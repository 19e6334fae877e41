//! Readiness: every sink ready, every configured source connection with its
//! receiver attached, and not draining. `/readyz` and the
//! `amqp_bridge_ready` gauge both answer from here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::Metrics;

/// What the bridge's readiness depends on.
pub struct Health {
    draining: AtomicBool,
    /// The client ids of the configured source connections.
    connections: std::sync::RwLock<Vec<String>>,
    metrics: Arc<Metrics>,
}

/// The answer of one readiness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// What is not ready, one short phrase each; empty when ready.
    pub not_ready: Vec<String>,
}

impl Readiness {
    /// True when nothing is missing.
    pub fn is_ready(&self) -> bool {
        self.not_ready.is_empty()
    }

    /// `{"ready":…,"not_ready":[…]}` for `/readyz`.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "ready": self.is_ready(), "not_ready": self.not_ready }).to_string()
    }
}

impl Health {
    /// Readiness over the sinks `metrics` knows (a reload replaces them)
    /// and these source connections (by client id).
    pub fn new(connections: Vec<String>, metrics: Arc<Metrics>) -> Self {
        Health {
            draining: AtomicBool::new(false),
            connections: std::sync::RwLock::new(connections),
            metrics,
        }
    }

    /// After a source reload: the connections readiness waits for.
    pub fn set_connections(&self, connections: Vec<String>) {
        *self
            .connections
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = connections;
    }

    /// Shutdown began: not ready from now on, so traffic and probes move on
    /// before the drain.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.metrics.set_ready(false);
    }

    /// Checks every part now (and updates the `amqp_bridge_ready` gauge).
    pub fn readiness(&self) -> Readiness {
        let mut not_ready = Vec::new();
        if self.draining.load(Ordering::SeqCst) {
            not_ready.push("draining: shutting down".to_string());
        }
        for sink in &self.metrics.sinks() {
            if !sink.is_ready() {
                not_ready.push(match sink.not_ready_reason() {
                    Some(reason) => format!("sink {}: not connected: {reason}", sink.name()),
                    None => format!("sink {}: not connected", sink.name()),
                });
            }
        }
        let known = self.metrics.connections();
        let connections = self
            .connections
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for name in &connections {
            let attached = known
                .iter()
                .any(|c| c.name() == name.as_str() && c.is_attached());
            if !attached {
                not_ready.push(format!("source connection {name}: receiver not attached"));
            }
        }
        let readiness = Readiness { not_ready };
        self.metrics.set_ready(readiness.is_ready());
        readiness
    }
}
