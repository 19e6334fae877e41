//! The message as it flows through the bridge: body bytes (shared, never
//! copied per target), the source's application properties, and the topic
//! levels that templates read.

use std::sync::Arc;

use bytes::Bytes;

use crate::telemetry::ConnectionMetrics;

/// One message from the source. Cheap to share: targets hold an `Arc<Envelope>`.
#[derive(Clone, Debug, Default)]
pub struct Envelope {
    pub body: Bytes,
    /// Application properties in arrival order, values rendered as text.
    pub properties: Vec<(String, String)>,
    /// The body parsed as JSON, filled on first use.
    json: std::sync::OnceLock<Option<serde_json::Value>>,
}

impl Envelope {
    /// A message with this body and these application properties.
    pub fn new(body: Bytes, properties: Vec<(String, String)>) -> Envelope {
        Envelope {
            body,
            properties,
            json: std::sync::OnceLock::new(),
        }
    }

    /// The body as JSON (`None` when it is not JSON), parsed once per message
    /// however many routes, predicates and templates read it.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.body).ok())
            .as_ref()
    }

    /// The value of an application property.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The platform topic (`topic` property), e.g. `/pk/dn/thing/event/property/post`.
    pub fn topic(&self) -> Option<&str> {
        self.property("topic")
    }

    /// The platform's message id (`messageId` property); same on redelivery.
    /// An empty (or null, which renders empty) id counts as absent: taken
    /// as an id, every such message would be a "duplicate" of the first.
    pub fn message_id(&self) -> Option<&str> {
        self.property("messageId")
            .filter(|id| !id.trim().is_empty())
    }

    /// `productKey` and `deviceName` from the platform topic shapes
    /// `/{pk}/{dn}/...` and `/as/mqtt/status/{pk}/{dn}`.
    pub fn device(&self) -> Option<(&str, &str)> {
        device_of(self.topic()?)
    }
}

/// Splits a platform topic into (productKey, deviceName).
pub fn device_of(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.strip_prefix('/')?.split('/');
    let first = levels.next()?;
    let second = levels.next()?;
    if first == "as" && second == "mqtt" {
        if levels.next()? != "status" {
            return None;
        }
        let pk = levels.next()?;
        let dn = levels.next()?;
        return (!pk.is_empty() && !dn.is_empty()).then_some((pk, dn));
    }
    (!first.is_empty() && !second.is_empty()).then_some((first, second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_from_platform_topics() {
        assert_eq!(
            device_of("/a1B/dev1/thing/event/property/post"),
            Some(("a1B", "dev1"))
        );
        assert_eq!(device_of("/as/mqtt/status/a1B/dev1"), Some(("a1B", "dev1")));
        assert_eq!(
            device_of("/a1B/dev1/thing/lifecycle"),
            Some(("a1B", "dev1"))
        );
        assert_eq!(device_of("/as/mqtt/other/x"), None);
        assert_eq!(device_of("no/leading/slash"), None);
        assert_eq!(device_of("//x"), None);
    }
}

/// The outcome the bridge gives a delivery at the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Every target confirmed (or the message was deliberately dropped).
    Accept,
    /// Not delivered; the source redelivers it later.
    Release,
    /// Failed for good with no dead-letter sink: `rejected`, so the source's
    /// own dead-letter handling can take it (`undeliverable_outcome: rejected`).
    Reject,
    /// Failed for good with no dead-letter sink: `modified` with
    /// delivery-failed and undeliverable-here (`undeliverable_outcome: modified`).
    Modify,
}

/// An outcome on its way to the link: the delivery, what to give it, and the
/// in-flight slot, freed only once the outcome went out (so the credit granted
/// never exceeds `max_in_flight`).
pub type Outcome = (
    fe2o3_amqp::link::delivery::DeliveryInfo,
    Disposition,
    Option<tokio::sync::OwnedSemaphorePermit>,
);

/// The link a settlement goes back to.
type SettleSender = tokio::sync::mpsc::UnboundedSender<Outcome>;

/// The right to settle one delivery, and the in-flight slot it occupies.
///
/// Settling sends the outcome to the link that received the delivery; if that
/// link is gone the outcome cannot be given any more and the source will
/// redeliver. Dropping an unsettled handle releases the delivery. The link
/// counts the outcome once it gave it; an outcome that cannot reach the link
/// any more is counted here as unsettled.
pub struct Settlement {
    link: Option<SettleSender>,
    info: Option<fe2o3_amqp::link::delivery::DeliveryInfo>,
    connection: Arc<ConnectionMetrics>,
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Settlement {
    /// A handle for a delivery received on a link of this connection.
    pub fn new(
        link: SettleSender,
        info: fe2o3_amqp::link::delivery::DeliveryInfo,
        connection: Arc<ConnectionMetrics>,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        Settlement {
            link: Some(link),
            info: Some(info),
            connection,
            slot,
        }
    }

    /// Gives the outcome; false when the link is gone (the source will redeliver).
    pub fn settle(mut self, disposition: Disposition) -> bool {
        self.send(disposition)
    }

    fn send(&mut self, disposition: Disposition) -> bool {
        match (self.link.take(), self.info.take()) {
            (Some(link), Some(info)) => {
                let sent = link.send((info, disposition, self.slot.take())).is_ok();
                if !sent {
                    self.connection.unsettled();
                }
                sent
            }
            _ => false,
        }
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.send(Disposition::Release);
    }
}

impl std::fmt::Debug for Settlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settlement")
    }
}
