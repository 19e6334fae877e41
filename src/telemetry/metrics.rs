//! The bridge's metrics: a prometheus-client registry and the handles the hot
//! path bumps. Handles for every sink, route and connection are created once,
//! so counting a message never looks up a label set.
//!
//! Labels are only ever `connection`, `route`, `sink`, `kind` and `outcome`,
//! whose values come from the configuration — never a topic, device or
//! message id — so the number of series is bounded by the configuration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::sink::Sink;

/// The outcome a delivery was given at the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceOutcome {
    Accepted,
    Released,
    Rejected,
    Modified,
}

/// Counters of one source connection (label `connection`).
///
/// Plain atomics, encoded by one collector from one snapshot so that
/// `received = accepted + released + rejected + modified + unsettled + in
/// flight` holds in every scrape: in flight is computed from the very numbers
/// printed. (`unsettled`: outcomes the link could not give any more; 0 unless
/// a link or connection died with messages in flight.)
#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    name: String,
    received: AtomicU64,
    accepted: AtomicU64,
    released: AtomicU64,
    rejected: AtomicU64,
    modified: AtomicU64,
    unsettled: AtomicU64,
    undecodable: AtomicU64,
    connects: AtomicU64,
    reconnects: AtomicU64,
    login_refused: AtomicU64,
    attached: AtomicU64,
    credit: AtomicU64,
    /// A reload replaced this connection: its series are no longer shown
    /// (its counts still add to the totals).
    retired: std::sync::atomic::AtomicBool,
}

impl ConnectionMetrics {
    /// The `connection` label: the connection's client id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A delivery arrived (readable or not).
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// The link gave this outcome at the source.
    pub fn settled(&self, outcome: SourceOutcome) {
        let counter = match outcome {
            SourceOutcome::Accepted => &self.accepted,
            SourceOutcome::Released => &self.released,
            SourceOutcome::Rejected => &self.rejected,
            SourceOutcome::Modified => &self.modified,
        };
        // Release pairs with the collector's Acquire: a scrape that sees this
        // settlement also sees the receipt counted before it.
        counter.fetch_add(1, Ordering::Release);
    }

    /// An outcome could not be given because its link was gone; the source
    /// will redeliver the message.
    pub fn unsettled(&self) {
        self.unsettled.fetch_add(1, Ordering::Release);
    }

    /// A delivery that was not a readable AMQP message.
    pub fn undecodable(&self) {
        self.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was opened (logged in).
    pub fn connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection attempt after a loss or failure.
    pub fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The source refused the login (bad signature, key or group).
    pub fn login_refused(&self) {
        self.login_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the receiver link is attached now.
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(u64::from(attached), Ordering::Relaxed);
        if !attached {
            self.credit.store(0, Ordering::Relaxed);
        }
    }

    /// True while the receiver link is attached.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed) == 1
    }

    /// The link credit currently granted.
    pub fn set_credit(&self, credit: u32) {
        self.credit.store(u64::from(credit), Ordering::Relaxed);
    }

    fn snapshot(&self) -> ConnectionSnapshot {
        // Settlements first (Acquire), receipts after: every settlement seen
        // has its receipt seen too, so in flight is never negative.
        let accepted = self.accepted.load(Ordering::Acquire);
        let released = self.released.load(Ordering::Acquire);
        let rejected = self.rejected.load(Ordering::Acquire);
        let modified = self.modified.load(Ordering::Acquire);
        let unsettled = self.unsettled.load(Ordering::Acquire);
        let received = self.received.load(Ordering::Acquire);
        ConnectionSnapshot {
            received,
            accepted,
            released,
            rejected,
            modified,
            unsettled,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ConnectionSnapshot {
    received: u64,
    accepted: u64,
    released: u64,
    rejected: u64,
    modified: u64,
    unsettled: u64,
}

impl ConnectionSnapshot {
    fn settled(&self) -> u64 {
        self.accepted + self.released + self.rejected + self.modified + self.unsettled
    }
    fn in_flight(&self) -> u64 {
        self.received.saturating_sub(self.settled())
    }
}

/// Handles of one sink (labels `sink`, `kind`).
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    pub confirmed: Counter,
    pub transient: Counter,
    pub permanent: Counter,
    pub retries: Counter,
    pub dead_letters: Counter,
    pub confirm_seconds: Histogram,
}

/// Handles of the unrouted policy's outcomes.
#[derive(Clone, Debug)]
pub struct UnroutedMetrics {
    pub accept: Counter,
    pub release: Counter,
    pub sink: Counter,
}

/// Every metric of one bridge, and the registry that prints them.
pub struct Metrics {
    registry: Registry,
    connections: Arc<RwLock<Vec<Arc<ConnectionMetrics>>>>,
    /// The sinks in use: `sink_ready` and readiness read them; a reload
    /// replaces them.
    sinks: Arc<RwLock<Vec<Arc<dyn Sink>>>>,
    sink_families: SinkFamilies,
    /// `route_matched`, by route name; a reload adds the names it brings.
    route_matched: Family<Labels, Counter>,
    pub unrouted: UnroutedMetrics,
    pub duplicates: Counter,
    pub stale_status: Counter,
    /// Receive → settle.
    pub settle_seconds: Histogram,
    /// Now − `generateTime` when the message is settled.
    pub message_age_seconds: Histogram,
    /// Messages inside the pipeline now, and the most there ever were.
    in_pipeline: AtomicU64,
    in_flight_peak: AtomicU64,
    ready: Gauge,
    config_reloads: ReloadMetrics,
}

/// The per-sink metric families; a sink's handles are made from them.
#[derive(Debug)]
struct SinkFamilies {
    copies: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    confirm: Family<Labels, Histogram, fn() -> Histogram>,
    /// Every sink's handles by (name, kind), removed ones too: the totals
    /// (`forwarded()`, `retries()` …) count what they did.
    made: Mutex<HashMap<(String, &'static str), SinkMetrics>>,
}

/// `config_reloads_total{outcome}` and whether the last one was applied.
#[derive(Debug)]
struct ReloadMetrics {
    applied: Counter,
    refused: Counter,
    last_successful: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

/// Latency buckets from 0.5 ms to about 33 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 17)
}

/// Age buckets from 10 ms to about 15 days (the platform keeps messages 1 day).
fn age_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 3.0, 18)
}

impl Metrics {
    /// Registers every metric; `sinks` in the pipeline's order and `routes`
    /// (their names) in the router's order.
    pub fn new(max_in_flight: usize, sinks: &[Arc<dyn Sink>], routes: &[String]) -> Self {
        let mut registry = Registry::default();
        let connections: Arc<RwLock<Vec<Arc<ConnectionMetrics>>>> = Arc::default();
        registry.register_collector(Box::new(SourceCollector {
            connections: connections.clone(),
        }));

        let max = Gauge::<i64>::default();
        max.set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
        registry.register(
            "amqp_bridge_max_in_flight",
            "Messages the bridge may hold unsettled at once (max_in_flight)",
            max,
        );
        let unrouted = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_unrouted",
            "Messages no route matched, by what the unrouted policy did (accept, release, sink)",
            unrouted.clone(),
        );
        let unrouted_outcome =
            |outcome: &str| unrouted.get_or_create_owned(&vec![("outcome", outcome.to_string())]);
        let unrouted = UnroutedMetrics {
            accept: unrouted_outcome("accept"),
            release: unrouted_outcome("release"),
            sink: unrouted_outcome("sink"),
        };
        let duplicates = Counter::default();
        registry.register(
            "amqp_bridge_duplicates",
            "Redelivered messages dropped because their messageId was already confirmed",
            duplicates.clone(),
        );
        let stale_status = Counter::default();
        registry.register(
            "amqp_bridge_stale_status",
            "Device status messages dropped because a newer status of the device was already forwarded",
            stale_status.clone(),
        );
        let settle_seconds = Histogram::new(latency_buckets());
        registry.register_with_unit(
            "amqp_bridge_settle",
            "Time from receiving a message to settling it at the source",
            Unit::Seconds,
            settle_seconds.clone(),
        );
        let message_age_seconds = Histogram::new(age_buckets());
        registry.register_with_unit(
            "amqp_bridge_message_age",
            "Age of a message when settled: now minus its generateTime property",
            Unit::Seconds,
            message_age_seconds.clone(),
        );

        let matched = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_route_matched",
            "Messages a route matched",
            matched.clone(),
        );
        for name in routes {
            matched.get_or_create_owned(&vec![("route", name.clone())]);
        }

        let copies = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_sink_copies",
            "Sends to a sink by result: confirmed by the broker; transient failure (each failed attempt; retried until it succeeds or is given up); permanent (the copy failed for good: dead-lettered or released)",
            copies.clone(),
        );
        let retries = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_sink_retries",
            "Copies sent again after a transient failure",
            retries.clone(),
        );
        let dead_letters = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_sink_dead_letters",
            "Copies that failed for good on this sink and were written to the dead-letter sink",
            dead_letters.clone(),
        );
        let confirm = Family::<Labels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register_with_unit(
            "amqp_bridge_sink_confirm",
            "Time from sending a copy to its broker's confirmation",
            Unit::Seconds,
            confirm.clone(),
        );
        let live_sinks = Arc::new(RwLock::new(sinks.to_vec()));
        registry.register_collector(Box::new(SinkReadyCollector {
            sinks: live_sinks.clone(),
        }));
        let sink_families = SinkFamilies {
            copies,
            retries,
            dead_letters,
            confirm,
            made: Mutex::default(),
        };
        for sink in sinks {
            sink_families.handles(sink.as_ref());
        }

        let ready = Gauge::<i64>::default();
        registry.register(
            "amqp_bridge_ready",
            "1 when every sink is ready and every source connection has its receiver attached (what /readyz says)",
            ready.clone(),
        );
        registry.register(
            "amqp_bridge_build",
            "Version and git commit of this build",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("commit", crate::BUILD_COMMIT.to_string()),
            ]),
        );
        registry.register_collector(Box::new(super::process::ProcessCollector));
        let reloads = Family::<Labels, Counter>::default();
        registry.register(
            "amqp_bridge_config_reloads",
            "Configuration reloads (SIGHUP) by outcome: applied, or refused (invalid, or a change that needs a restart)",
            reloads.clone(),
        );
        let last_successful = Gauge::<i64>::default();
        last_successful.set(1);
        registry.register(
            "amqp_bridge_config_last_reload_successful",
            "0 when the last reload was refused: the running configuration is not the file's",
            last_successful.clone(),
        );
        let reload_outcome =
            |outcome: &str| reloads.get_or_create_owned(&vec![("outcome", outcome.to_string())]);
        let config_reloads = ReloadMetrics {
            applied: reload_outcome("applied"),
            refused: reload_outcome("refused"),
            last_successful,
        };

        Metrics {
            registry,
            connections,
            sinks: live_sinks,
            sink_families,
            route_matched: matched,
            unrouted,
            duplicates,
            stale_status,
            settle_seconds,
            message_age_seconds,
            in_pipeline: AtomicU64::new(0),
            in_flight_peak: AtomicU64::new(0),
            ready,
            config_reloads,
        }
    }

    /// The counters of a source connection, created on first use.
    pub fn connection(&self, name: &str) -> Arc<ConnectionMetrics> {
        let mut connections = self
            .connections
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(existing) = connections.iter().find(|c| c.name == name) {
            existing.retired.store(false, Ordering::Relaxed);
            return existing.clone();
        }
        let created = Arc::new(ConnectionMetrics {
            name: name.to_string(),
            ..ConnectionMetrics::default()
        });
        connections.push(created.clone());
        created
    }

    /// After a source reload: only these connections' series are shown
    /// from now on (created at 0 when new).
    pub fn keep_connections(&self, names: &[String]) {
        for name in names {
            self.connection(name);
        }
        let connections = self
            .connections
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for c in connections.iter() {
            c.retired.store(!names.contains(&c.name), Ordering::Relaxed);
        }
    }

    /// Messages in flight on these connections.
    pub fn in_flight_on(&self, names: &[String]) -> u64 {
        self.connections()
            .iter()
            .filter(|c| names.contains(&c.name))
            .map(|c| c.snapshot().in_flight())
            .sum()
    }

    /// The source connections known so far.
    pub fn connections(&self) -> Vec<Arc<ConnectionMetrics>> {
        self.connections
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The handles of one sink's metrics, created at 0 for a sink not seen
    /// before (one a reload added).
    pub fn sink_metrics(&self, sink: &dyn Sink) -> SinkMetrics {
        self.sink_families.handles(sink)
    }

    /// The sinks in use, for readiness.
    pub fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        self.sinks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// After a reload: the sinks `sink_ready` and readiness report on.
    pub fn set_sinks(&self, sinks: &[Arc<dyn Sink>]) {
        *self
            .sinks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sinks.to_vec();
    }

    /// The matched counters of these routes, in the router's order; created
    /// at 0 for a name not seen before (a route a reload added).
    pub fn route_counters(&self, names: &[String]) -> Vec<Counter> {
        names
            .iter()
            .map(|name| {
                self.route_matched
                    .get_or_create_owned(&vec![("route", name.clone())])
            })
            .collect()
    }

    /// Counts a configuration reload, applied or refused.
    pub fn config_reloaded(&self, applied: bool) {
        let reloads = &self.config_reloads;
        if applied {
            reloads.applied.inc();
        } else {
            reloads.refused.inc();
        }
        reloads.last_successful.set(i64::from(applied));
    }

    /// A message entered the pipeline; keeps the peak for `in_flight_peak`.
    pub fn pipeline_entered(&self) {
        let now = self.in_pipeline.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight_peak.fetch_max(now, Ordering::Relaxed);
    }

    /// A message left the pipeline (its outcome is decided).
    pub fn pipeline_left(&self) {
        self.in_pipeline.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records what `/readyz` answers, for the `amqp_bridge_ready` gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Prints every metric in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    fn total(&self, pick: impl Fn(&ConnectionSnapshot) -> u64) -> u64 {
        self.connections().iter().map(|c| pick(&c.snapshot())).sum()
    }

    fn sink_total(&self, pick: impl Fn(&SinkMetrics) -> &Counter) -> u64 {
        let made = self
            .sink_families
            .made
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        made.values().map(|s| pick(s).get()).sum()
    }

    /// Deliveries received from the source, all connections.
    pub fn received(&self) -> u64 {
        self.total(|s| s.received)
    }
    /// Deliveries accepted at the source.
    pub fn accepted(&self) -> u64 {
        self.total(|s| s.accepted)
    }
    /// Deliveries released for redelivery.
    pub fn released(&self) -> u64 {
        self.total(|s| s.released)
    }
    /// Deliveries rejected (unreadable, or undeliverable with
    /// `undeliverable_outcome: rejected`).
    pub fn rejected(&self) -> u64 {
        self.total(|s| s.rejected)
    }

    /// Deliveries given `modified` (undeliverable with
    /// `undeliverable_outcome: modified`).
    pub fn modified(&self) -> u64 {
        self.total(|s| s.modified)
    }
    /// Outcomes the link could not give any more (the source redelivers).
    pub fn unsettled(&self) -> u64 {
        self.total(|s| s.unsettled)
    }
    /// Received and not settled yet.
    pub fn in_flight(&self) -> u64 {
        self.total(ConnectionSnapshot::in_flight)
    }
    /// The most messages the pipeline held at once.
    pub fn in_flight_peak(&self) -> u64 {
        self.in_flight_peak.load(Ordering::Relaxed)
    }
    /// Logins the source refused, all connections.
    pub fn login_refused(&self) -> u64 {
        self.connection_total(|c| &c.login_refused)
    }
    /// Connections opened, all connections.
    pub fn connects(&self) -> u64 {
        self.connection_total(|c| &c.connects)
    }
    /// Connection attempts after a loss or failure, all connections.
    pub fn reconnects(&self) -> u64 {
        self.connection_total(|c| &c.reconnects)
    }

    fn connection_total(&self, pick: impl Fn(&ConnectionMetrics) -> &AtomicU64) -> u64 {
        self.connections()
            .iter()
            .map(|c| pick(c).load(Ordering::Relaxed))
            .sum()
    }

    /// Deliveries that were not readable messages.
    pub fn undecodable(&self) -> u64 {
        self.connection_total(|c| &c.undecodable)
    }
    /// Copies confirmed by their broker, dead letters not included (each
    /// dead letter written is one confirmation at the dead-letter sink).
    pub fn forwarded(&self) -> u64 {
        self.sink_total(|s| &s.confirmed)
            .saturating_sub(self.dead_lettered())
    }
    /// Copies sent again after a transient failure.
    pub fn retries(&self) -> u64 {
        self.sink_total(|s| &s.retries)
    }
    /// Copies that failed for good.
    pub fn failed(&self) -> u64 {
        self.sink_total(|s| &s.permanent)
    }
    /// Failed copies written to the dead-letter sink.
    pub fn dead_lettered(&self) -> u64 {
        self.sink_total(|s| &s.dead_letters)
    }
    /// Messages no route matched.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.accept.get() + self.unrouted.release.get() + self.unrouted.sink.get()
    }
}

impl SinkFamilies {
    fn handles(&self, sink: &dyn Sink) -> SinkMetrics {
        let (name, kind) = (sink.name().to_string(), sink.kind().name());
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        made.entry((name.clone(), kind))
            .or_insert_with(|| self.make(name, kind))
            .clone()
    }

    fn make(&self, name: String, kind: &'static str) -> SinkMetrics {
        let labels = |outcome: Option<&str>| {
            let mut l: Labels = vec![("sink", name.clone()), ("kind", kind.to_string())];
            if let Some(outcome) = outcome {
                l.push(("outcome", outcome.to_string()));
            }
            l
        };
        SinkMetrics {
            confirmed: self.copies.get_or_create_owned(&labels(Some("confirmed"))),
            transient: self.copies.get_or_create_owned(&labels(Some("transient"))),
            permanent: self.copies.get_or_create_owned(&labels(Some("permanent"))),
            retries: self.retries.get_or_create_owned(&labels(None)),
            dead_letters: self.dead_letters.get_or_create_owned(&labels(None)),
            confirm_seconds: self.confirm.get_or_create_owned(&labels(None)),
        }
    }
}

/// Encodes each sink's readiness as it is at scrape time.
struct SinkReadyCollector {
    sinks: Arc<RwLock<Vec<Arc<dyn Sink>>>>,
}

impl std::fmt::Debug for SinkReadyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkReadyCollector")
    }
}

impl Collector for SinkReadyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "amqp_bridge_sink_ready",
            "1 while the sink can deliver: MQTT connected; Kafka and RocketMQ reached at start and their last send not failed transiently",
            None,
            MetricType::Gauge,
        )?;
        let sinks = self
            .sinks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for sink in &sinks {
            let l = vec![
                ("sink", sink.name().to_string()),
                ("kind", sink.kind().name().to_string()),
            ];
            ConstGauge::new(i64::from(sink.is_ready())).encode(family.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// Encodes the source connections' counters from one snapshot each, and the
/// in-flight gauge from the same numbers.
#[derive(Debug)]
struct SourceCollector {
    connections: Arc<RwLock<Vec<Arc<ConnectionMetrics>>>>,
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let connections = self
            .connections
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let snapshots: Vec<_> = connections
            .iter()
            .filter(|c| !c.retired.load(Ordering::Relaxed))
            .map(|c| (c, c.snapshot()))
            .collect();
        let labels = |c: &ConnectionMetrics| vec![("connection", c.name.clone())];

        let in_flight: u64 = snapshots.iter().map(|(_, s)| s.in_flight()).sum();
        let gauge = ConstGauge::new(i64::try_from(in_flight).unwrap_or(i64::MAX));
        gauge.encode(encoder.encode_descriptor(
            "amqp_bridge_in_flight",
            "Messages received and not settled yet (received minus settlements minus unsettled)",
            None,
            MetricType::Gauge,
        )?)?;

        let mut counter =
            |name: &str,
             help: &str,
             value: &dyn Fn(&ConnectionMetrics, &ConnectionSnapshot) -> u64| {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (c, s) in &snapshots {
                    let l = labels(c);
                    ConstCounter::new(value(c, s)).encode(family.encode_family(&l)?)?;
                }
                Ok::<(), std::fmt::Error>(())
            };
        counter(
            "amqp_bridge_source_received",
            "Deliveries received from the source",
            &|_, s| s.received,
        )?;
        counter(
            "amqp_bridge_source_undecodable",
            "Deliveries that were not readable AMQP messages (rejected)",
            &|c, _| c.undecodable.load(Ordering::Relaxed),
        )?;
        counter(
            "amqp_bridge_source_unsettled",
            "Deliveries whose outcome could not be given because the link was gone (the source redelivers them)",
            &|_, s| s.unsettled,
        )?;
        counter(
            "amqp_bridge_source_connects",
            "Source connections opened",
            &|c, _| c.connects.load(Ordering::Relaxed),
        )?;
        counter(
            "amqp_bridge_source_reconnects",
            "Source connection attempts after a loss or a failure",
            &|c, _| c.reconnects.load(Ordering::Relaxed),
        )?;
        counter(
            "amqp_bridge_source_login_refused",
            "Logins the source refused",
            &|c, _| c.login_refused.load(Ordering::Relaxed),
        )?;

        {
            let mut settlements = encoder.encode_descriptor(
                "amqp_bridge_source_settlements",
                "Outcomes given at the source, by outcome",
                None,
                MetricType::Counter,
            )?;
            for (c, s) in &snapshots {
                for (outcome, value) in [
                    ("accepted", s.accepted),
                    ("released", s.released),
                    ("rejected", s.rejected),
                    ("modified", s.modified),
                ] {
                    let l = vec![("connection", c.name.clone()), ("outcome", outcome.into())];
                    ConstCounter::new(value).encode(settlements.encode_family(&l)?)?;
                }
            }
        }

        let mut gauge = |name: &str, help: &str, value: &dyn Fn(&ConnectionMetrics) -> u64| {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (c, _) in &snapshots {
                let l = labels(c);
                let v = i64::try_from(value(c)).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&l)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge(
            "amqp_bridge_source_attached",
            "1 while the connection's receiver link is attached",
            &|c| c.attached.load(Ordering::Relaxed),
        )?;
        gauge(
            "amqp_bridge_source_credit",
            "Link credit currently granted to the source",
            &|c| c.credit.load(Ordering::Relaxed),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_print_with_their_labels_and_invariant() {
        let out: Arc<dyn Sink> = Arc::new(crate::sink::stdout::StdoutSink::new("out"));
        let metrics = Metrics::new(8, std::slice::from_ref(&out), &["props".to_string()]);
        let c = metrics.connection("bridge-0");
        for _ in 0..3 {
            c.received();
        }
        c.settled(SourceOutcome::Accepted);
        c.settled(SourceOutcome::Released);
        metrics.sink_metrics(out.as_ref()).confirmed.inc();
        metrics.route_counters(&["props".to_string()])[0].inc();
        let text = metrics.encode();
        assert!(text.contains("amqp_bridge_source_received_total{connection=\"bridge-0\"} 3\n"));
        assert!(text.contains(
            "amqp_bridge_source_settlements_total{connection=\"bridge-0\",outcome=\"accepted\"} 1\n"
        ));
        assert!(text.contains("amqp_bridge_in_flight 1\n"));
        assert!(text.contains("amqp_bridge_max_in_flight 8\n"));
        assert!(text.contains(
            "amqp_bridge_sink_copies_total{sink=\"out\",kind=\"stdout\",outcome=\"confirmed\"} 1\n"
        ));
        assert!(text.contains("amqp_bridge_route_matched_total{route=\"props\"} 1\n"));
        assert!(text.contains("amqp_bridge_sink_confirm_seconds_bucket{"));
        assert!(text.contains("# TYPE amqp_bridge_build_info gauge"));
        assert_eq!(metrics.in_flight(), 1);
        assert_eq!(metrics.forwarded(), 1);
        // The same connection name gives the same counters.
        assert!(Arc::ptr_eq(&c, &metrics.connection("bridge-0")));
    }
}
