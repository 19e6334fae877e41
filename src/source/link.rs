//! One receiver link: grants credit only for free in-flight slots, turns each
//! delivery into an [`Envelope`] with its [`Settlement`], and applies the
//! outcomes the pipeline sends back.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::link::delivery::{Delivery, DeliveryInfo};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::Receiver;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::envelope::{Disposition, Envelope, Outcome, Settlement};
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
/// `fallback_topic`: for a message without a `topic` application property,
/// a `topic` is added from its AMQP subject, else this (generic brokers);
/// `None` leaves such messages as they are (the platform).
pub async fn run(
    receiver: &mut Receiver,
    ctx: &LinkContext,
    counters: &Arc<ConnectionMetrics>,
    fallback_topic: Option<&str>,
) -> LinkEnd {
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<Outcome>();
    let end = receive(
        receiver,
        ctx,
        counters,
        fallback_topic,
        settle_tx,
        &mut settle_rx,
    )
    .await;
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
    fallback_topic: Option<&str>,
    settle_tx: mpsc::UnboundedSender<Outcome>,
    settle_rx: &mut SettleQueue,
) -> LinkEnd {
    // Permits backing the credit granted and not yet used by a delivery.
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut stopping = ctx.intake_stop.is_cancelled();
    loop {
        let granted = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
        let refill_below = match ctx.refill {
            CreditRefill::HalfUsed => ctx.credit / 2 + 1,
            CreditRefill::UsedUp => 1,
        };
        if !stopping && granted < refill_below {
            let want = (ctx.credit - granted) as usize;
            let free = ctx.slots.available_permits().min(want);
            if free > 0 {
                if let Ok(more) = ctx.slots.clone().try_acquire_many_owned(free as u32) {
                    merge(&mut held, more);
                    let granted = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
                    if let Err(e) = receiver.set_credit(granted).await {
                        return LinkEnd::Lost(format!("cannot grant credit: {e}"));
                    }
                    counters.set_credit(granted);
                    continue;
                }
            }
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
            _ = ctx.close.cancelled() => return LinkEnd::Closed,
            _ = ctx.intake_stop.cancelled(), if !stopping => {
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
                let more = ctx.slots.available_permits().min(ctx.credit as usize - 1);
                if more > 0 {
                    if let Ok(more) = ctx.slots.clone().try_acquire_many_owned(more as u32) {
                        merge(&mut held, more);
                    }
                }
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
                let Some(envelope) = to_envelope(delivery, fallback_topic) else {
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

fn merge(held: &mut Option<OwnedSemaphorePermit>, more: OwnedSemaphorePermit) {
    match held {
        Some(p) => p.merge(more),
        None => *held = Some(more),
    }
}

/// An AMQP value body as bytes: text and binary as they are, a scalar as its
/// text; `None` for a list, map, array or described value, which have no
/// byte form a broker's consumer could read (rejected and counted like an
/// AMQP sequence body, never forwarded as Rust debug text).
fn value_bytes(value: Value) -> Option<Vec<u8>> {
    let text = match value {
        Value::String(s) => s,
        Value::Binary(b) => return Some(b.into_vec()),
        Value::Symbol(s) => s.0,
        Value::Null => String::new(),
        Value::Bool(v) => v.to_string(),
        Value::Ubyte(v) => v.to_string(),
        Value::Ushort(v) => v.to_string(),
        Value::Uint(v) => v.to_string(),
        Value::Ulong(v) => v.to_string(),
        Value::Byte(v) => v.to_string(),
        Value::Short(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Long(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Double(v) => v.to_string(),
        Value::Char(v) => v.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        _ => return None,
    };
    Some(text.into_bytes())
}

/// Copies the body once into shared bytes and renders the properties as text;
/// `None` for a body with no byte form (an AMQP sequence, a compound value).
/// With `fallback_topic`, a message without a `topic` property gets one: its
/// AMQP subject if it has one, else `fallback_topic`.
pub fn to_envelope(
    delivery: Delivery<Body<Value>>,
    fallback_topic: Option<&str>,
) -> Option<Envelope> {
    let message = delivery.into_message();
    let mut properties: Vec<(String, String)> = message
        .application_properties
        .map(|props| {
            props
                .0
                .into_iter()
                .map(|(k, v)| (k, simple_to_string(v)))
                .collect()
        })
        .unwrap_or_default();
    if let Some(fallback) = fallback_topic {
        if !properties.iter().any(|(k, _)| k == "topic") {
            let subject = message
                .properties
                .as_ref()
                .and_then(|p| p.subject.clone())
                .filter(|s| !s.is_empty());
            properties.push((
                "topic".to_string(),
                subject.unwrap_or_else(|| fallback.to_string()),
            ));
        }
    }
    let body = match message.body {
        Body::Data(batch) => {
            let mut parts = batch.into_iter();
            match (parts.next(), parts.next()) {
                (Some(only), None) => Bytes::from(only.0.into_vec()),
                (first, second) => {
                    let mut buf = BytesMut::new();
                    for part in first.into_iter().chain(second).chain(parts) {
                        buf.extend_from_slice(&part.0);
                    }
                    buf.freeze()
                }
            }
        }
        Body::Value(v) => Bytes::from(value_bytes(v.0)?),
        Body::Empty => Bytes::new(),
        Body::Sequence(_) => return None,
    };
    Some(Envelope::new(body, properties))
}

fn simple_to_string(value: SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => s,
        SimpleValue::Symbol(s) => s.0,
        SimpleValue::Long(v) => v.to_string(),
        SimpleValue::Int(v) => v.to_string(),
        SimpleValue::Short(v) => v.to_string(),
        SimpleValue::Byte(v) => v.to_string(),
        SimpleValue::Ulong(v) => v.to_string(),
        SimpleValue::Uint(v) => v.to_string(),
        SimpleValue::Ushort(v) => v.to_string(),
        SimpleValue::Ubyte(v) => v.to_string(),
        SimpleValue::Bool(v) => v.to_string(),
        SimpleValue::Double(v) => v.to_string(),
        SimpleValue::Float(v) => v.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Binary(b) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b.as_slice())
        }
        SimpleValue::Null => String::new(),
        other => format!("{other:?}"),
    }
}
