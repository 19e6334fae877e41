//! Wires the pieces: sinks, routes, pipeline and source connections, and the
//! orderly shutdown of the delivery contract.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::pipeline::{BridgeStats, Pipeline};
use crate::route::{RouteError, Router};
use crate::sink::{self, Sink, SinkBuildError};
use crate::source::link::LinkContext;
use crate::source::subscriber;

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Sink(#[from] SinkBuildError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("source TLS: {0}")]
    SourceTls(#[from] crate::tls::TlsError),
}

/// A running bridge.
pub struct Bridge {
    stats: Arc<BridgeStats>,
    pipeline: Arc<Pipeline>,
    ctx: Arc<LinkContext>,
    starter: JoinHandle<Vec<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

impl Bridge {
    /// Starts the sinks, and attaches the source once every sink is ready.
    pub async fn start(config: &Config) -> Result<Bridge, BridgeError> {
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        let mut index = HashMap::new();
        for (name, sink_config) in &config.sinks.0 {
            index.insert(name.clone(), sinks.len());
            sinks.push(sink::build(name, sink_config)?);
        }
        let router = Router::new(&config.routes, &config.unrouted, &index)?;
        let source_tls = if config.source.url.is_tls() {
            Some(crate::tls::client_config(
                config.source.tls.ca_file.as_deref(),
                None,
            )?)
        } else {
            None
        };
        let stats = Arc::new(BridgeStats::default());
        // Checked like a route's targets: a name without a sink is an error.
        let dead_letter = config
            .dead_letter
            .as_ref()
            .map(|name| {
                index
                    .get(&name.0)
                    .copied()
                    .ok_or_else(|| RouteError::Invalid {
                        route: "dead_letter".into(),
                        message: format!("no sink `{name}`"),
                    })
            })
            .transpose()?;
        let pipeline = Arc::new(Pipeline::new(
            router,
            sinks.clone(),
            dead_letter,
            config
                .dedup
                .as_ref()
                .map(|d| crate::dedup::Dedup::new(d.ttl.0, d.capacity)),
            config.retry.clone(),
            stats.clone(),
        ));
        let ctx = Arc::new(LinkContext {
            pipeline: pipeline.clone(),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            credit: config.source.credit,
            intake_stop: CancellationToken::new(),
            close: CancellationToken::new(),
        });
        let source = config.source.clone();
        let starter_ctx = ctx.clone();
        let starter = tokio::spawn(async move {
            for sink in &sinks {
                let waiting = async {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        tracing::info!(
                            sink = sink.name(),
                            "waiting for sink to become ready before attaching the source"
                        );
                    }
                };
                tokio::select! {
                    _ = sink.ready() => {}
                    _ = waiting => {}
                    _ = starter_ctx.intake_stop.cancelled() => return Vec::new(),
                }
            }
            tracing::info!("all sinks ready; attaching the source");
            subscriber::spawn(&source, source_tls, starter_ctx)
        });
        Ok(Bridge {
            stats,
            pipeline,
            ctx,
            starter,
            shutdown_timeout: config.shutdown_timeout.0,
        })
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<BridgeStats> {
        &self.stats
    }

    /// Stops intake, waits for in-flight messages to be confirmed and settled
    /// (up to `shutdown_timeout`), detaches, and closes the sinks.
    pub async fn shutdown(self) {
        self.ctx.intake_stop.cancel();
        let connections = self.starter.await.unwrap_or_default();
        if !self.pipeline.drain(self.shutdown_timeout).await {
            tracing::warn!("shutdown timeout reached; unconfirmed messages released");
        }
        self.ctx.close.cancel();
        for handle in connections {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        for sink in self.pipeline.sinks() {
            sink.close().await;
        }
    }
}
