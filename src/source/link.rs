//! One receiver link: grants credit only for free in-flight slots, turns each
//! delivery into an [`Envelope`](crate::envelope::Envelope) with its
//! [`Settlement`], and applies the outcomes the pipeline sends back.

use std::sync::Arc;

use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::Receiver;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::message::Reading;
use crate::envelope::{Disposition, Outcome, Settlement};
use crate::pipeline::Pipeline;
use crate::telemetry::{ConnectionMetrics, SourceOutcome};

/// How a link's loop ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// The bridge is shutting down.
    Closed,
    /// The link or connection failed; the text says why.
    Lost(String),
}

/// Everything the link loop shares with the rest of the bridge.
pub struct LinkContext {
    pub pipeline: Arc<Pipeline>,
    /// Where each connection's counters live.
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// One permit per message in flight, shared by all links (`max_in_flight`).
    pub slots: Arc<Semaphore>,
    /// The most credit this link may have outstanding.
    pub credit: u32,
    /// When to grant more credit.
    pub refill: CreditRefill,
    /// Cancelled first on shutdown: grant no more credit, release late arrivals.
    pub intake_stop: CancellationToken,
    /// Cancelled once in-flight messages are settled: leave the loop.
    pub close: CancellationToken,
}

/// When a link grants more credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CreditRefill {
    /// Once half the credit is used: transfers keep flowing while the flow
    /// frame is on its way (the platform, brokers that follow the spec's
    /// delivery-count arithmetic).
    HalfUsed,
    /// Only once all granted credit is used up, so no transfer can be on
    /// the wire when the flow frame goes out. RabbitMQ 3.x's AMQP 1.0
    /// plugin resets the queue's credit from a flow frame without counting
    /// deliveries already on their way to the session, and so overruns the
    /// link when credit is topped up mid-stream.
    UsedUp,
}

/// Outcomes on their way from the pipeline back to the link.
type SettleQueue = mpsc::UnboundedReceiver<Outcome>;

/// Runs one attached receiver until it fails or the bridge closes; counts
/// what it receives and settles on `counters`. An outcome counts as a
/// settlement only once the link sent it; one the link can no longer send
/// counts as unsettled (the source redelivers it).
///
/// `reading`: what the source adds to each message besides its application
/// properties (AMQP properties, annotations, a routing topic).
pub async fn run(
    receiver: &mut Receiver,
    ctx: &LinkContext,
    counters: &Arc<ConnectionMetrics>,
    reading: &Reading,
) -> LinkEnd {
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<Outcome>();
    let end = receive(receiver, ctx, counters, reading, settle_tx, &mut settle_rx).await;
    // Outcomes still queued can no longer be given on this link; later ones
    // find the queue closed (counted by their Settlement).
    settle_rx.close();
    while settle_rx.try_recv().is_ok() {
        counters.unsettled();
    }
    end
}

/// Counts the result of giving one outcome at the source.
fn count_outcome<E>(counters: &ConnectionMetrics, outcome: SourceOutcome, result: Result<(), E>) {
    match result {
        Ok(()) => counters.settled(outcome),
        Err(_) => counters.unsettled(),
    }
}

async fn receive(
    receiver: &mut Receiver,
    ctx: &LinkContext,
    counters: &Arc<ConnectionMetrics>,
    reading: &Reading,
    settle_tx: mpsc::UnboundedSender<Outcome>,
    settle_rx: &mut SettleQueue,
) -> LinkEnd {
    // Permits backing the credit granted and not yet used by a delivery.
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut stopping = ctx.intake_stop.is_cancelled();
    // Made once, not once per turn of the loop: each turn would otherwise
    // register and drop two waiters on the tokens (two turns per message).
    let closed = ctx.close.cancelled();
    let intake_stopped = ctx.intake_stop.cancelled();
    tokio::pin!(closed, intake_stopped);
    loop {
        let granted = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
        let refill_below = match ctx.refill {
            CreditRefill::HalfUsed => ctx.credit / 2 + 1,
            CreditRefill::UsedUp => 1,
        };
        if !stopping
            && granted < refill_below
            && take_free_slots(ctx, &mut held, ctx.credit - granted)
        {
            let granted = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
            if let Err(e) = receiver.set_credit(granted).await {
                return LinkEnd::Lost(format!("cannot grant credit: {e}"));
            }
            counters.set_credit(granted);
            continue;
        }
        let need_slot = !stopping && granted == 0;
        tokio::select! {
            biased;
            Some((info, disposition, _slot)) = settle_rx.recv() => {
                // `_slot` is freed at the end of this arm, after the outcome went out.
                let (outcome, result) = match disposition {
                    Disposition::Accept => (SourceOutcome::Accepted, receiver.accept(info).await),
                    Disposition::Release => (SourceOutcome::Released, receiver.release(info).await),
                    Disposition::Reject => (SourceOutcome::Rejected, receiver.reject(info, None).await),
                    Disposition::Modify => (SourceOutcome::Modified, receiver.modify(info, undeliverable_here()).await),
                };
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "settlement not sent");
                }
                count_outcome(counters, outcome, result);
            }
            _ = &mut closed => return LinkEnd::Closed,
            _ = &mut intake_stopped, if !stopping => {
                // Grant nothing more. Credit already granted is left alone (setting
                // it to 0 would make transfers on the wire a protocol error and
                // kill the link before in-flight messages are settled); whatever
                // still arrives is released below.
                stopping = true;
                held = None;
                counters.set_credit(0);
                // Ask the source to use up or give back its credit now, so
                // nothing is still on the wire when the link closes.
                let _ = receiver.drain().await;
            }
            slot = ctx.slots.clone().acquire_owned(), if need_slot => {
                let Ok(slot) = slot else { return LinkEnd::Closed };
                merge(&mut held, slot);
                // Grant whatever else is free with it, in the same flow frame.
                take_free_slots(ctx, &mut held, ctx.credit - 1);
                let granted = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
                if let Err(e) = receiver.set_credit(granted).await {
                    return LinkEnd::Lost(format!("cannot grant credit: {e}"));
                }
                counters.set_credit(granted);
            }
            delivery = receiver.recv::<Body<Value>>() => {
                let delivery = match delivery {
                    Ok(d) => d,
                    Err(fe2o3_amqp::link::RecvError::MessageDecode(e)) => {
                        // Not an AMQP message we can read: counted and rejected,
                        // never accepted, and the link stays up.
                        tracing::warn!(error = %e.source, "undecodable message rejected");
                        counters.received();
                        counters.undecodable();
                        let _ = held.as_mut().and_then(|p| p.split(1));
                        held = held.filter(|p| p.num_permits() > 0);
                        counters.set_credit(held.as_ref().map_or(0, |p| p.num_permits()) as u32);
                        let result = receiver.reject(e.info, None).await;
                        count_outcome(counters, SourceOutcome::Rejected, result);
                        continue;
                    }
                    Err(e) => return LinkEnd::Lost(format!("link failed: {e}")),
                };
                let slot = held.as_mut().and_then(|p| {
                    if p.num_permits() > 1 { p.split(1) } else { None }
                }).or_else(|| held.take());
                let info = DeliveryInfo::from(&delivery);
                counters.received();
                counters.set_credit(held.as_ref().map_or(0, |p| p.num_permits()) as u32);
                if stopping || slot.is_none() {
                    // Arrived after shutdown began, or beyond the credit we gave.
                    let result = receiver.release(info).await;
                    count_outcome(counters, SourceOutcome::Released, result);
                    continue;
                }
                let Some(envelope) = super::message::to_envelope(delivery, reading) else {
                    // An AMQP sequence or compound value body has no byte form
                    // to forward: counted and rejected like an undecodable message.
                    tracing::warn!("message with an AMQP sequence or compound value body rejected");
                    counters.undecodable();
                    let result = receiver.reject(info, None).await;
                    count_outcome(counters, SourceOutcome::Rejected, result);
                    continue;
                };
                ctx.pipeline.dispatch(
                    envelope,
                    Settlement::new(settle_tx.clone(), info, counters.clone(), slot),
                );
            }
        }
    }
}

/// `modified` for a message that failed for good: count it as a failed
/// delivery and do not give it to this receiver again.
fn undeliverable_here() -> fe2o3_amqp::types::messaging::Modified {
    fe2o3_amqp::types::messaging::Modified {
        delivery_failed: Some(true),
        undeliverable_here: Some(true),
        message_annotations: None,
    }
}

/// Adds up to `want` slots that are free right now to `held`, without
/// waiting; true if it took any.
fn take_free_slots(ctx: &LinkContext, held: &mut Option<OwnedSemaphorePermit>, want: u32) -> bool {
    let free = ctx.slots.available_permits().min(want as usize);
    if free == 0 {
        return false;
    }
    match ctx.slots.clone().try_acquire_many_owned(free as u32) {
        Ok(more) => {
            merge(held, more);
            true
        }
        Err(_) => false,
    }
}

fn merge(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(p) => p.merge(more),
        None => *held = Some(more),
    }
}
