//! Per-message delivery: take the router's plan for the message, send its
//! copies in parallel, wait for every broker's confirmation, retry transient
//! failures with backoff while the message keeps its in-flight slot,
//! dead-letter permanent ones, and settle at the source only then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;
use crate::config::RetryConfig;
use crate::dedup::{Claim, Dedup};
use crate::envelope::{Disposition, Envelope, Settlement};
use crate::route::status_order::{Admission, StatusOrder, StatusTicket};
use crate::route::{MessagePlan, Router, TemplateError};
use crate::sink::{Destination, Failure, Outgoing, Sink, SinkError};
use crate::telemetry::metrics::SinkMetrics;
use crate::telemetry::Metrics;

/// A message inside the pipeline; leaving is counted on drop, so a task
/// that panics still leaves (its Settlement releases the delivery).
struct InPipeline(Arc<Metrics>);

impl InPipeline {
    fn enter(metrics: &Arc<Metrics>) -> InPipeline {
        metrics.pipeline_entered();
        InPipeline(Arc::clone(metrics))
    }
}

impl Drop for InPipeline {
    fn drop(&mut self) {
        self.0.pipeline_left();
    }
}

/// How one copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// Its broker confirmed it.
    Confirmed,
    /// It failed for good and the dead-letter sink confirmed it.
    DeadLettered,
    /// Not confirmed, but not hopeless: shutdown cut its retries short, or
    /// they ran past `retry.max_elapsed` with no dead-letter sink. The
    /// message is released.
    Failed,
    /// It failed for good and there is no dead-letter sink: the message gets
    /// the configured undeliverable outcome.
    Undeliverable,
}

impl Delivery {
    /// The source outcome of a message from how its copies ended: released
    /// if any copy may still get through later, else `undeliverable` if any
    /// failed for good, else accepted.
    fn outcome(
        copies: impl IntoIterator<Item = Delivery>,
        undeliverable: Disposition,
    ) -> Disposition {
        let mut outcome = Disposition::Accept;
        for copy in copies {
            match copy {
                Delivery::Failed => return Disposition::Release,
                Delivery::Undeliverable => outcome = undeliverable,
                Delivery::Confirmed | Delivery::DeadLettered => {}
            }
        }
        outcome
    }
}

/// The part of the configuration a reload may replace while messages flow:
/// sinks, routes, the unrouted policy, the dead-letter sink and retries. A
/// message takes the plan current when it arrives and finishes on it, so no
/// message is forwarded partly by old routes and partly by new ones, and a
/// sink a reload removed is closed only after its last copy.
pub struct Plan {
    router: Router,
    /// The sinks targets point into; a sink unchanged by a reload is the
    /// same `Arc` in the old and the new plan.
    sinks: Vec<Arc<dyn Sink>>,
    sink_metrics: Vec<SinkMetrics>,
    /// Messages on this plan; waited for before retired sinks close.
    in_flight: TaskTracker,
    /// `route_matched` of each route, in the router's order.
    route_matched: Vec<prometheus_client::metrics::counter::Counter>,
    /// Where permanently failed copies go (index into the sinks).
    dead_letter: Option<usize>,
    retry: RetryConfig,
    /// What a message gets when a copy failed for good and there is no
    /// dead-letter sink (`source.undeliverable_outcome`).
    undeliverable: Disposition,
}

impl Plan {
    /// The plan's sinks, in the order its indices use.
    pub fn sinks(&self) -> &[Arc<dyn Sink>] {
        &self.sinks
    }

    /// A plan over compiled routes and started sinks (the router's and
    /// `dead_letter`'s indices point into `sinks`); `metrics` gives each
    /// route and sink its handles.
    pub fn new(
        router: Router,
        sinks: Vec<Arc<dyn Sink>>,
        dead_letter: Option<usize>,
        retry: RetryConfig,
        metrics: &Metrics,
    ) -> Plan {
        let route_matched = metrics.route_counters(&router.route_names());
        let sink_metrics = sinks
            .iter()
            .map(|sink| metrics.sink_metrics(sink.as_ref()))
            .collect();
        Plan {
            router,
            sinks,
            sink_metrics,
            in_flight: TaskTracker::new(),
            route_matched,
            dead_letter,
            retry,
            undeliverable: Disposition::Release,
        }
    }

    /// What a message that failed for good gets when there is no
    /// dead-letter sink (default: released).
    pub fn with_undeliverable(mut self, outcome: Disposition) -> Self {
        self.undeliverable = outcome;
        self
    }
}

/// Routes and delivers messages; one task per message, its targets in parallel.
pub struct Pipeline {
    /// Swapped whole by a reload; read once per message.
    plan: std::sync::RwLock<Arc<Plan>>,
    dedup: Option<Arc<Dedup>>,
    status_order: Arc<StatusOrder>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Trackers of replaced plans that may still have messages.
    draining: std::sync::Mutex<Vec<TaskTracker>>,
    give_up: CancellationToken,
}

impl Pipeline {
    /// A pipeline that starts on `plan`.
    pub fn new(plan: Plan, dedup: Option<Arc<Dedup>>, metrics: Arc<Metrics>) -> Self {
        Pipeline {
            plan: std::sync::RwLock::new(Arc::new(plan)),
            dedup,
            status_order: Arc::new(StatusOrder::default()),
            metrics,
            tasks: TaskTracker::new(),
            draining: std::sync::Mutex::new(Vec::new()),
            give_up: CancellationToken::new(),
        }
    }

    /// The plan new messages start on.
    pub fn current_plan(&self) -> Arc<Plan> {
        self.plan
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Makes `plan` the one new messages start on; messages in flight finish
    /// on the plan they started with. Sinks of the old plan that the new one
    /// does not hold are closed once no earlier plan has a message left (a
    /// message two reloads old may still use a sink the latest one retired).
    pub fn replace_plan(&self, plan: Plan) {
        let plan = Arc::new(plan);
        self.metrics.set_sinks(&plan.sinks);
        let old = std::mem::replace(
            &mut *self
                .plan
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            plan.clone(),
        );
        // Taken under the read lock in `dispatch`, a token counts before the
        // swap or belongs to the new plan: closing now misses none.
        old.in_flight.close();
        let earlier: Vec<TaskTracker> = {
            let mut draining = self
                .draining
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            draining.retain(|tracker| !tracker.is_empty());
            draining.push(old.in_flight.clone());
            draining.clone()
        };
        let retired: Vec<Arc<dyn Sink>> = old
            .sinks
            .iter()
            .filter(|sink| !plan.sinks.iter().any(|kept| Arc::ptr_eq(sink, kept)))
            .cloned()
            .collect();
        drop(old);
        if retired.is_empty() {
            return;
        }
        // On the pipeline's tracker, so a shutdown's drain waits for it too.
        self.tasks.spawn(async move {
            for tracker in earlier {
                tracker.wait().await;
            }
            for sink in retired {
                sink.close().await;
                tracing::info!(
                    sink = sink.name(),
                    "sink removed by a reload closed after its last copy"
                );
            }
        });
    }

    /// Takes one delivery; it is settled once its fate is known.
    pub fn dispatch(self: &Arc<Self>, envelope: Envelope, settlement: Settlement) {
        let received_at = Instant::now();
        let in_pipeline = InPipeline::enter(&self.metrics);
        let (plan, on_plan) = {
            let plan = self
                .plan
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            (plan.clone(), plan.in_flight.token())
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            let generated = generate_time(&envelope);
            let envelope = Arc::new(envelope);
            let id = this.dedup.as_ref().and_then(|dedup| dedup.id_of(&envelope));
            let disposition = match (&this.dedup, id) {
                (Some(dedup), Some(id)) => {
                    this.process_once(&plan, dedup, id.to_string(), envelope)
                        .await
                }
                _ => this.process(&plan, envelope).await,
            };
            this.metrics
                .settle_seconds
                .observe(received_at.elapsed().as_secs_f64());
            if let Some(age) = generated.and_then(age_seconds) {
                this.metrics.message_age_seconds.observe(age);
            }
            drop(in_pipeline);
            settlement.settle(disposition);
            drop(on_plan);
        });
    }

    /// Forwards a message unless its id was already confirmed everywhere; a
    /// copy in flight is waited for rather than forwarded a second time.
    async fn process_once(
        &self,
        plan: &Plan,
        dedup: &Arc<Dedup>,
        id: String,
        envelope: Arc<Envelope>,
    ) -> Disposition {
        loop {
            match dedup.claim(&id) {
                Claim::Duplicate => {
                    self.metrics.duplicates.inc();
                    tracing::debug!(message_id = %id, "duplicate dropped");
                    return Disposition::Accept;
                }
                Claim::Wait(mut ended) => {
                    let _ = ended.wait_for(|ended| *ended).await;
                }
                Claim::Fresh(first) => {
                    let disposition = self.process(plan, envelope).await;
                    first.finish(disposition == Disposition::Accept);
                    return disposition;
                }
            }
        }
    }

    async fn process(&self, plan: &Plan, envelope: Arc<Envelope>) -> Disposition {
        let unrouted = &self.metrics.unrouted;
        let message_plan = plan.router.plan(&envelope);
        if let MessagePlan::Routed { routes, .. } = &message_plan {
            // Counted on arrival, before any wait for the device's status order.
            for &route in routes {
                plan.route_matched[route].inc();
            }
        }
        // Asked once per message, however many `order_by: time` routes match.
        let mut status = None;
        let mut ordered = true;
        if message_plan.is_status_ordered() {
            match self.admit_status(&envelope).await {
                Some(ticket) => status = ticket,
                None => ordered = false,
            }
        }
        let copies = match message_plan {
            MessagePlan::Accept => {
                unrouted.accept.inc();
                return Disposition::Accept;
            }
            MessagePlan::Release => {
                unrouted.release.inc();
                return Disposition::Release;
            }
            MessagePlan::Unrouted(copy) => {
                unrouted.sink.inc();
                vec![copy]
            }
            MessagePlan::Routed { copies, .. } => copies,
        };
        let envelope = &envelope;
        let sends = copies
            .into_iter()
            .filter(|copy| ordered || !copy.ordered)
            .map(|copy| async move {
                let outcome = self
                    .deliver_or_dead_letter(plan, copy.route, copy.sink, copy.destination, envelope)
                    .await;
                (copy.ordered, outcome)
            });
        let results = join_all(sends).await;
        if let Some(ticket) = status {
            // Recorded as the device's newest only when every ordered copy
            // reached its broker: a dead-lettered status hides no older one.
            ticket.finish(
                results
                    .iter()
                    .filter(|(ordered, _)| *ordered)
                    .all(|(_, outcome)| *outcome == Delivery::Confirmed),
            );
        }
        Delivery::outcome(
            results.into_iter().map(|(_, copy)| copy),
            plan.undeliverable,
        )
    }

    /// For a message on an `order_by: time` route: `None` when it is older
    /// than a status already delivered for its device (dropped, counted),
    /// else the ticket to report its outcome with (`Some(None)` for a message
    /// that is not an ordered status). Waits while another status of the
    /// same device is in flight.
    async fn admit_status(&self, envelope: &Envelope) -> Option<Option<StatusTicket>> {
        loop {
            match self.status_order.admit(envelope) {
                Admission::Unordered => return Some(None),
                Admission::Go(ticket) => return Some(Some(ticket)),
                Admission::Stale => {
                    self.metrics.stale_status.inc();
                    tracing::debug!(message_id = envelope.message_id(), "older status dropped");
                    return None;
                }
                Admission::Wait(mut ended) => {
                    let _ = ended.wait_for(|ended| *ended).await;
                }
            }
        }
    }

    /// Sends one copy; a copy that fails for good goes to the dead-letter sink.
    async fn deliver_or_dead_letter(
        &self,
        plan: &Plan,
        route: &str,
        sink: usize,
        destination: Result<Destination, TemplateError>,
        envelope: &Arc<Envelope>,
    ) -> Delivery {
        let sent = match destination {
            Ok(destination) => {
                let message = Outgoing {
                    envelope: envelope.clone(),
                    destination,
                    failure: None,
                };
                self.send_with_retry(plan, route, sink, message).await
            }
            Err(e) => {
                // A template the message cannot fill: it fails for good.
                plan.sink_metrics[sink].permanent.inc();
                tracing::warn!(route, sink = plan.sinks[sink].name(), error = %e, message_id = envelope.message_id(), "cannot fill template");
                Err(SinkError::Permanent(e.to_string()))
            }
        };
        let (error, without_dead_letter) = match sent {
            Ok(()) => return Delivery::Confirmed,
            Err(SinkError::Transient(_)) => return Delivery::Failed,
            Err(SinkError::Permanent(error)) => (error, Delivery::Undeliverable),
            Err(SinkError::GaveUp(error)) => (error, Delivery::Failed),
        };
        let Some(dead_letter) = plan.dead_letter else {
            return without_dead_letter;
        };
        let to = &plan.sinks[dead_letter];
        let message = Outgoing {
            envelope: envelope.clone(),
            destination: Destination::derived(
                to.kind(),
                Some(
                    to.kind()
                        .derived_topic(&format!("amqp-bridge/dead-letter/{route}")),
                ),
                envelope.message_id(),
            ),
            failure: Some(Arc::new(Failure {
                route: route.to_string(),
                sink: plan.sinks[sink].name().to_string(),
                error,
            })),
        };
        match self
            .send_with_retry(plan, route, dead_letter, message)
            .await
        {
            Ok(()) => {
                plan.sink_metrics[sink].dead_letters.inc();
                Delivery::DeadLettered
            }
            Err(_) => Delivery::Failed,
        }
    }

    /// Sends one copy, retrying transient failures until it succeeds, fails
    /// for good, runs past `retry.max_elapsed`, or shutdown gives up.
    async fn send_with_retry(
        &self,
        plan: &Plan,
        route: &str,
        sink: usize,
        message: Outgoing,
    ) -> Result<(), SinkError> {
        let retry = &plan.retry;
        let metrics = &plan.sink_metrics[sink];
        let sink = &plan.sinks[sink];
        let envelope = &message.envelope;
        let mut backoff = Backoff::new(retry.initial.0, retry.max.0);
        let started = Instant::now();
        loop {
            let sent = Instant::now();
            // Drain's give-up also ends a send in progress (a broker that never
            // answers): the copy counts as unconfirmed and the message is released.
            let result = tokio::select! {
                result = sink.send(message.clone()) => result,
                _ = self.give_up.cancelled() => {
                    return Err(SinkError::Transient("shutdown gave up waiting for the broker".into()));
                }
            };
            let error = match result {
                Ok(()) => {
                    metrics.confirmed.inc();
                    metrics
                        .confirm_seconds
                        .observe(sent.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) => e,
            };
            let timed_out = matches!(error, SinkError::Transient(_))
                && retry
                    .max_elapsed
                    .is_some_and(|max| started.elapsed() >= max.0);
            if matches!(error, SinkError::Transient(_)) {
                metrics.transient.inc();
            }
            if timed_out || !matches!(error, SinkError::Transient(_)) {
                metrics.permanent.inc();
                tracing::warn!(route, sink = sink.name(), %error, message_id = envelope.message_id(), "target failed");
                return Err(if timed_out {
                    SinkError::GaveUp(error.to_string())
                } else {
                    error
                });
            }
            metrics.retries.inc();
            let delay = backoff.next_delay();
            tracing::debug!(route, sink = sink.name(), %error, retry_in = ?delay, "target will be retried");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.give_up.cancelled() => return Err(error),
            }
        }
    }

    /// Waits until every message in flight is settled, up to `timeout`; then
    /// makes retrying messages give up (they are released) and waits briefly.
    /// Returns true when everything finished within `timeout`.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.tasks.close();
        if tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
        {
            return true;
        }
        self.give_up.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        false
    }

    /// The sinks in use now, for closing at shutdown (a sink a reload
    /// removed is closed by the reload).
    pub fn sinks(&self) -> Vec<Arc<dyn Sink>> {
        self.current_plan().sinks.clone()
    }
}

/// The message's `generateTime`: milliseconds since the epoch.
fn generate_time(envelope: &Envelope) -> Option<u64> {
    envelope.property("generateTime")?.parse().ok()
}

/// Seconds since `generated` (ms since the epoch); `None` for a future time.
fn age_seconds(generated: u64) -> Option<f64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis();
    let age = now.checked_sub(u128::from(generated))?;
    Some(age as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::Delivery::{self, *};
    use crate::envelope::Disposition;

    #[test]
    fn a_message_is_released_while_any_copy_may_still_get_through() {
        let outcome =
            |copies: &[Delivery]| Delivery::outcome(copies.iter().copied(), Disposition::Reject);
        assert_eq!(outcome(&[]), Disposition::Accept);
        assert_eq!(outcome(&[Confirmed, DeadLettered]), Disposition::Accept);
        assert_eq!(outcome(&[Confirmed, Undeliverable]), Disposition::Reject);
        assert_eq!(outcome(&[Undeliverable, Failed]), Disposition::Release);
        assert_eq!(outcome(&[Failed, Undeliverable]), Disposition::Release);
    }
}
