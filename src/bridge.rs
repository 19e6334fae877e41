//! Wires the pieces: sinks, routes, pipeline and source connections, and the
//! orderly shutdown of the delivery contract.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkConfig};
use crate::pipeline::{Pipeline, Plan};
use crate::route::{RouteError, Router};
use crate::sink::{self, Sink, SinkBuildError};
use crate::source::link::LinkContext;
use crate::source::subscriber;
use crate::telemetry::http::{Endpoints, ListenError, Server};
use crate::telemetry::{Health, Metrics};

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Sink(#[from] SinkBuildError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("source TLS: {0}")]
    SourceTls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Telemetry(#[from] ListenError),
}

/// Why a reload was not applied; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "{0} changed; a reload applies source, sinks, routes, unrouted, dead_letter and retry — restart the bridge to apply the rest"
    )]
    NeedsRestart(String),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Sink(#[from] SinkBuildError),
    #[error("source TLS: {0}")]
    SourceTls(#[from] crate::tls::TlsError),
    #[error(
        "sinks.{sink} changed but keeps its MQTT client id `{client_id}`: the new client and the old one, \
         still finishing its copies, would disconnect each other; give it a new client_id or restart the bridge"
    )]
    SameMqttClientId { sink: String, client_id: String },
}

/// The source connections running now and what they run with.
struct SourceRun {
    ctx: Arc<LinkContext>,
    /// Resolves to the connection tasks once they started: after every sink
    /// is ready at start, after the previous connections finished on a
    /// reload; to none when intake stopped before.
    connections: JoinHandle<Vec<JoinHandle<()>>>,
}

/// A running bridge.
pub struct Bridge {
    /// The configuration running now: what a reload compares against.
    config: std::sync::Mutex<Config>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    pipeline: Arc<Pipeline>,
    /// The source connections; `None` only while a shutdown takes them.
    source: std::sync::Mutex<Option<SourceRun>>,
    shutdown_timeout: Duration,
    telemetry_addr: Option<std::net::SocketAddr>,
    /// Stops the HTTP endpoints and the summary line, last of all (or when
    /// the bridge is dropped without a shutdown).
    telemetry_stop: tokio_util::sync::DropGuard,
}

impl Bridge {
    /// Starts the sinks and the telemetry endpoints, and attaches the source
    /// once every sink is ready.
    pub async fn start(config: &Config) -> Result<Bridge, BridgeError> {
        for warning in config.delivery_warnings() {
            tracing::warn!("{warning}");
        }
        // Bound first: a taken port fails the start before anything connects.
        let server = Server::bind(config.telemetry.listen).await?;
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        let mut index = HashMap::new();
        for (name, sink_config) in &config.sinks.0 {
            index.insert(name.clone(), sinks.len());
            sinks.push(sink::build(name, sink_config)?);
        }
        let router = Router::new(
            &config.routes,
            &config.unrouted,
            &index,
            &config.sinks.kinds(),
        )?;
        let source_tls = source_tls(&config.source)?;
        let metrics = Arc::new(Metrics::new(
            config.max_in_flight,
            &sinks,
            &router.route_names(),
        ));
        let connections = subscriber::client_ids(&config.source);
        // Every connection's series exists from the start (at 0, detached),
        // so alerts see a source that never attaches.
        for name in &connections {
            metrics.connection(name);
        }
        let health = Arc::new(Health::new(connections, metrics.clone()));
        let dead_letter = dead_letter_index(config, &index)?;
        let plan = Plan::new(
            router,
            sinks.clone(),
            dead_letter,
            config.retry.clone(),
            &metrics,
        )
        .with_undeliverable(config.source.undeliverable_outcome.disposition());
        let pipeline = Arc::new(Pipeline::new(
            plan,
            config
                .dedup
                .as_ref()
                .map(|d| crate::dedup::Dedup::keyed(d.ttl.0, d.capacity, d.amqp_message_id)),
            metrics.clone(),
        ));
        let ctx = Arc::new(LinkContext {
            pipeline: pipeline.clone(),
            metrics: metrics.clone(),
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            credit: config.source.credit,
            refill: config.source.credit_refill,
            intake_stop: CancellationToken::new(),
            close: CancellationToken::new(),
        });
        let source = config.source.clone();
        let starter_ctx = ctx.clone();
        let connections = tokio::spawn(async move {
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
        let telemetry_stop = CancellationToken::new();
        let telemetry_addr = server.local_addr();
        let endpoints = Arc::new(Endpoints {
            metrics: metrics.clone(),
            health: health.clone(),
        });
        tokio::spawn(server.serve(endpoints, telemetry_stop.clone()));
        if let Some(addr) = telemetry_addr {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        }
        let interval = config.telemetry.summary_interval.0;
        if !interval.is_zero() {
            tokio::spawn(crate::telemetry::summary::log_every(
                metrics.clone(),
                interval,
                telemetry_stop.clone(),
            ));
        }
        Ok(Bridge {
            config: std::sync::Mutex::new(config.clone()),
            metrics,
            health,
            pipeline,
            source: std::sync::Mutex::new(Some(SourceRun { ctx, connections })),
            shutdown_timeout: config.shutdown_timeout.0,
            telemetry_addr,
            telemetry_stop: telemetry_stop.drop_guard(),
        })
    }

    /// Applies a changed configuration while messages flow: new sinks,
    /// routes, the unrouted policy, the dead-letter sink and retries take
    /// over for messages that arrive from now on; messages in flight finish
    /// on the plan they started with. A sink whose block did not change keeps
    /// its connection; one removed or changed is closed after its last copy
    /// in flight. The source reconnects only when its block changed, after
    /// the old connections settled what they hold. A change anywhere else is
    /// refused (the running configuration stays) and named, since it needs a
    /// restart.
    pub fn reload(&self, new: &Config) -> Result<(), ReloadError> {
        let mut running = self
            .config
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.apply(&running, new);
        self.metrics.config_reloaded(result.is_ok());
        result?;
        for warning in new.delivery_warnings() {
            tracing::warn!("{warning}");
        }
        *running = new.clone();
        Ok(())
    }

    fn apply(&self, running: &Config, new: &Config) -> Result<(), ReloadError> {
        let changed: Vec<&str> = [
            ("dedup", running.dedup != new.dedup),
            ("max_in_flight", running.max_in_flight != new.max_in_flight),
            (
                "shutdown_timeout",
                running.shutdown_timeout != new.shutdown_timeout,
            ),
            ("telemetry", running.telemetry != new.telemetry),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !changed.is_empty() {
            return Err(ReloadError::NeedsRestart(changed.join(", ")));
        }
        // Everything that can be checked is checked before a sink starts.
        let index: HashMap<String, usize> = new
            .sinks
            .0
            .keys()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect();
        let router = Router::new(&new.routes, &new.unrouted, &index, &new.sinks.kinds())?;
        let dead_letter = dead_letter_index(new, &index)?;
        let source_changed = {
            // The undeliverable outcome lives in the plan; alone it needs
            // no reconnect.
            let mut source = new.source.clone();
            source.undeliverable_outcome = running.source.undeliverable_outcome;
            source != running.source
        };
        let tls = if source_changed {
            Some(source_tls(&new.source)?)
        } else {
            None
        };
        for (name, sink_config) in &new.sinks.0 {
            if let (Some(SinkConfig::Mqtt(old)), SinkConfig::Mqtt(changed)) =
                (running.sinks.0.get(name), sink_config)
            {
                if old != changed && old.client_id == changed.client_id {
                    return Err(ReloadError::SameMqttClientId {
                        sink: name.clone(),
                        client_id: changed.client_id.clone(),
                    });
                }
            }
        }
        let current = self.pipeline.current_plan();
        let running_sinks: Vec<&String> = running.sinks.0.keys().collect();
        let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
        let mut started: Vec<Arc<dyn Sink>> = Vec::new();
        for (name, sink_config) in &new.sinks.0 {
            let kept = (running.sinks.0.get(name) == Some(sink_config))
                .then(|| running_sinks.iter().position(|n| *n == name))
                .flatten()
                .and_then(|i| current.sinks().get(i).cloned());
            let sink = match kept {
                Some(sink) => sink,
                None => match sink::build(name, sink_config) {
                    Ok(sink) => {
                        tracing::info!(sink = sink.name(), "sink started by a reload");
                        started.push(sink.clone());
                        sink
                    }
                    Err(error) => {
                        close_later(started);
                        return Err(error.into());
                    }
                },
            };
            sinks.push(sink);
        }
        self.pipeline.replace_plan(
            Plan::new(router, sinks, dead_letter, new.retry.clone(), &self.metrics)
                .with_undeliverable(new.source.undeliverable_outcome.disposition()),
        );
        if let Some(tls) = tls {
            self.replace_source(running, new, tls);
        }
        Ok(())
    }

    /// Moves intake to connections with the new source settings: the old
    /// ones grant no more credit, settle what they hold (up to
    /// `shutdown_timeout`) and close; then the new ones connect. Nothing is
    /// detached with messages in flight unless the timeout runs out (then
    /// they are redelivered).
    fn replace_source(
        &self,
        running: &Config,
        new: &Config,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) {
        let mut run = self
            .source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(previous) = run.take() else {
            return; // shutting down
        };
        previous.ctx.intake_stop.cancel();
        let ctx = Arc::new(LinkContext {
            pipeline: self.pipeline.clone(),
            metrics: self.metrics.clone(),
            slots: previous.ctx.slots.clone(),
            credit: new.source.credit,
            refill: new.source.credit_refill,
            intake_stop: CancellationToken::new(),
            close: CancellationToken::new(),
        });
        let old_names = subscriber::client_ids(&running.source);
        let new_names = subscriber::client_ids(&new.source);
        let grace = running.shutdown_timeout.0;
        let source = new.source.clone();
        let metrics = self.metrics.clone();
        let health = self.health.clone();
        let starter_ctx = ctx.clone();
        let connections = tokio::spawn(async move {
            let handles = previous.connections.await.unwrap_or_default();
            let deadline = tokio::time::Instant::now() + grace;
            // Counters, not an event: polled, for an operation this rare.
            while metrics.in_flight_on(&old_names) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            previous.ctx.close.cancel();
            for handle in handles {
                let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
            }
            if starter_ctx.intake_stop.is_cancelled() {
                return Vec::new();
            }
            metrics.keep_connections(&new_names);
            health.set_connections(new_names);
            tracing::info!("source connections closed; connecting with the new source settings");
            subscriber::spawn(&source, tls, starter_ctx)
        });
        *run = Some(SourceRun { ctx, connections });
    }

    /// The bridge's metrics: the counters every report reads.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What `/readyz` answers from.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub fn telemetry_addr(&self) -> Option<std::net::SocketAddr> {
        self.telemetry_addr
    }

    /// Stops intake, waits for in-flight messages to be confirmed and settled
    /// (up to `shutdown_timeout`), detaches, and closes the sinks. `/readyz`
    /// answers 503 from the first moment; the endpoints stay up until the end.
    pub async fn shutdown(self) {
        self.health.start_draining();
        let run = self
            .source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        let (ctx, connections) = match run {
            Some(run) => {
                run.ctx.intake_stop.cancel();
                (Some(run.ctx), run.connections.await.unwrap_or_default())
            }
            None => (None, Vec::new()),
        };
        if !self.pipeline.drain(self.shutdown_timeout).await {
            tracing::warn!("shutdown timeout reached; unconfirmed messages released");
        }
        if let Some(ctx) = ctx {
            ctx.close.cancel();
        }
        for handle in connections {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
        }
        for sink in self.pipeline.sinks() {
            sink.close().await;
        }
        drop(self.telemetry_stop);
    }
}

/// The dead-letter sink's index; checked like a route's targets, so a name
/// without a sink is an error.
fn dead_letter_index(
    config: &Config,
    index: &HashMap<String, usize>,
) -> Result<Option<usize>, RouteError> {
    config
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
        .transpose()
}

/// Closes sinks a refused reload had started already.
fn close_later(sinks: Vec<Arc<dyn Sink>>) {
    if sinks.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for sink in sinks {
            sink.close().await;
        }
    });
}

/// The TLS setup of `amqps://` sources; `None` for plain `amqp://`.
fn source_tls(
    source: &crate::config::SourceConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, crate::tls::TlsError> {
    if !source.url.is_tls() {
        return Ok(None);
    }
    crate::tls::client_config(source.tls.ca_file.as_deref(), source.tls.client_cert()).map(Some)
}
