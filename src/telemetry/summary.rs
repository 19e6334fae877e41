//! The periodic summary line of `run`: the same counters as `/metrics`, for
//! someone without Prometheus.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Metrics;

/// Logs one line every `interval` until `stop` fires.
pub async fn log_every(metrics: Arc<Metrics>, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last_accepted = metrics.accepted();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let accepted = metrics.accepted();
        let rate = (accepted - last_accepted) as f64 / interval.as_secs_f64();
        last_accepted = accepted;
        tracing::info!(
            received = metrics.received(),
            accepted,
            released = metrics.released(),
            rejected = metrics.rejected(),
            in_flight = metrics.in_flight(),
            forwarded = metrics.forwarded(),
            retries = metrics.retries(),
            dead_lettered = metrics.dead_lettered(),
            unrouted = metrics.unrouted(),
            duplicates = metrics.duplicates.get(),
            accepted_per_second = format!("{rate:.1}"),
            "summary"
        );
    }
}
