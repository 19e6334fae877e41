//! The hand-written forwarder: the baseline that pays for the same AMQP
//! source as the bridge, so that `bridge/forwarder` measures what the
//! bridge's routing, pipeline and delivery contract cost (the direct
//! producers of the MQTT and Kafka rows read no AMQP at all).

use std::future::Future;

use bytes::Bytes;
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::BareLink;

/// What a hand-written forwarder takes from a platform message: its
/// `topic`, `messageId` and `generateTime` properties and its body.
pub struct Unpacked {
    pub topic: String,
    pub message_id: Option<String>,
    pub generate_time: Option<String>,
    pub body: Bytes,
}

fn unpack(message: Message<Body<Value>>) -> Unpacked {
    let mut unpacked = Unpacked {
        topic: String::new(),
        message_id: None,
        generate_time: None,
        body: Bytes::new(),
    };
    for (key, value) in message.application_properties.into_iter().flat_map(|p| p.0) {
        let text = match value {
            SimpleValue::String(s) => s,
            SimpleValue::Long(n) => n.to_string(),
            _ => continue,
        };
        match key.as_str() {
            "topic" => unpacked.topic = text,
            "messageId" => unpacked.message_id = Some(text),
            "generateTime" => unpacked.generate_time = Some(text),
            _ => {}
        }
    }
    if let Body::Data(batch) = message.body {
        if let Some(data) = batch.into_iter().next() {
            unpacked.body = Bytes::from(data.0.into_vec());
        }
    }
    unpacked
}

/// The hand-written forwarder a careful user writes instead of the bridge,
/// the baseline the bridge's own overhead is judged by: a [`BareLink`]
/// whose every message is handed to `submit` and accepted at the source
/// only once the broker confirmed it (released if it failed), at most
/// `window` unconfirmed (attach `link` with at least that much credit).
/// Awaiting `submit` queues the publish (so publishes go out in arrival
/// order); the future it returns resolves with the broker's answer.
/// Returns once `n` messages were accepted.
pub async fn forward<Queue, Confirm>(
    link: &mut BareLink,
    n: u64,
    window: usize,
    mut submit: impl FnMut(Unpacked) -> Queue,
) where
    Queue: Future<Output = Confirm>,
    Confirm: Future<Output = bool>,
{
    let mut confirming = FuturesUnordered::new();
    let mut accepted = 0u64;
    while accepted < n {
        tokio::select! {
            biased;
            Some((info, confirmed)) = confirming.next(), if !confirming.is_empty() => {
                if confirmed {
                    link.receiver.accept(info).await.expect("accept");
                    accepted += 1;
                } else {
                    link.receiver.release(info).await.expect("release");
                }
            }
            delivery = link.receiver.recv::<Body<Value>>(), if confirming.len() < window => {
                let delivery = delivery.expect("a delivery");
                let info = DeliveryInfo::from(&delivery);
                let confirm = submit(unpack(delivery.into_message())).await;
                confirming.push(async move { (info, confirm.await) });
            }
        }
    }
}
