//! MQTT 5 through `rumqttc::v5`: application properties travel as user
//! properties, and acknowledgements carry reason codes.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, PubCompReason, PubRecReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Request};
use rumqttc::Outgoing;

use super::{EventSource, LoopEvent, MAX_PACKET, MAX_STRING};
use crate::config::{MqttSinkConfig, Secret};
use crate::sink::{Outgoing as Message, SinkError};

pub(super) fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// Every application property of the source message as a user property;
/// a dead letter adds why it failed.
pub(super) fn properties(message: &Message) -> PublishProperties {
    PublishProperties {
        user_properties: message
            .forwarded_properties(true)
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        ..Default::default()
    }
}

/// A client and its event loop, not yet connected.
pub(super) fn connect(
    config: &MqttSinkConfig,
    login: Option<(String, Secret)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    capacity: usize,
) -> (AsyncClient, Events) {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.url.host(),
        config.url.port(),
    );
    options
        .set_keep_alive(config.keep_alive.0.max(std::time::Duration::from_secs(1)))
        .set_clean_start(true)
        .set_max_packet_size(Some(MAX_PACKET as u32));
    if let Some((user, password)) = login {
        options.set_credentials(user, password.expose());
    }
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls),
        ));
    }
    let (client, eventloop) = AsyncClient::new(options, capacity);
    (
        client,
        Events {
            eventloop,
            receive_max: u16::MAX,
            refused_qos2: 0,
        },
    )
}

/// The exact size of the PUBLISH rumqttc will write for this message, so one
/// over the broker's maximum is refused here (rumqttc's own check would fail
/// the whole connection). Permanent when an application property does not fit
/// an MQTT string (rumqttc would write a truncated length).
pub(super) fn packet_size(topic: &str, qos: u8, message: &Message) -> Result<usize, SinkError> {
    let mut properties = 0;
    for (name, value) in message.forwarded_properties(true) {
        for (what, text) in [("name", name), ("value", value)] {
            if text.len() > MAX_STRING {
                return Err(SinkError::Permanent(format!(
                    "user property `{}` has a {what} of {} bytes; an MQTT string holds at most {MAX_STRING}",
                    name.chars().take(40).collect::<String>(),
                    text.len()
                )));
            }
        }
        // Identifier byte, then two length-prefixed strings.
        properties += 1 + 2 + name.len() + 2 + value.len();
    }
    let packet_id = if qos > 0 { 2 } else { 0 };
    let remaining = 2
        + topic.len()
        + packet_id
        + super::varint_len(properties)
        + properties
        + message.envelope.body.len();
    Ok(super::packet_size(remaining))
}

/// How a broker's reason code maps onto the pipeline's retry decision.
fn classify(reason: &str, transient: bool) -> SinkError {
    let text = format!("broker answered {reason}");
    if transient {
        SinkError::Transient(text)
    } else {
        SinkError::Permanent(text)
    }
}

fn puback(reason: PubAckReason) -> Result<(), SinkError> {
    use PubAckReason::*;
    match reason {
        Success | NoMatchingSubscribers => Ok(()),
        UnspecifiedError | ImplementationSpecificError | QuotaExceeded | PacketIdentifierInUse => {
            Err(classify(&format!("{reason:?}"), true))
        }
        NotAuthorized | TopicNameInvalid | PayloadFormatInvalid => {
            Err(classify(&format!("{reason:?}"), false))
        }
    }
}

fn pubrec(reason: PubRecReason) -> Option<Result<(), SinkError>> {
    use PubRecReason::*;
    match reason {
        // The exchange goes on to PUBCOMP.
        Success | NoMatchingSubscribers => None,
        UnspecifiedError | ImplementationSpecificError | QuotaExceeded | PacketIdentifierInUse => {
            Some(Err(classify(&format!("{reason:?}"), true)))
        }
        NotAuthorized | TopicNameInvalid | PayloadFormatInvalid => {
            Some(Err(classify(&format!("{reason:?}"), false)))
        }
    }
}

pub(super) struct Events {
    eventloop: EventLoop,
    /// What rumqttc allows in flight on this connection (CONNACK's receive
    /// maximum, else its own limit).
    receive_max: u16,
    /// QoS 2 publishes refused on this connection. rumqttc never takes them
    /// off its in-flight count, so once they fill it no request is read again.
    refused_qos2: u16,
}

impl Events {
    /// After a failing PUBACK/PUBREC rumqttc frees the packet id but keeps a
    /// publish that collided with it parked until a success that never comes;
    /// hand it back as a pending request so it is written now.
    fn release_collision(&mut self, pkid: u16) {
        let state = &mut self.eventloop.state;
        if state.collision.as_ref().is_some_and(|p| p.pkid == pkid) {
            if let Some(publish) = state.collision.take() {
                state.collision_ping_count = 0;
                self.eventloop.pending.push_back(Request::Publish(publish));
            }
        }
    }

    fn refused_qos2(&mut self) {
        self.refused_qos2 = self.refused_qos2.saturating_add(1);
    }
}

impl EventSource for Events {
    async fn next(&mut self) -> LoopEvent {
        if self.refused_qos2 >= self.receive_max {
            return LoopEvent::Failed(format!(
                "{} refused QoS 2 publishes fill rumqttc's in-flight count (receive maximum {}); reconnecting",
                self.refused_qos2, self.receive_max
            ));
        }
        match self.eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                let props = ack.properties.as_ref();
                let receive_max = props.and_then(|p| p.receive_max);
                self.receive_max = receive_max.filter(|m| *m > 0).unwrap_or(u16::MAX);
                self.refused_qos2 = 0;
                LoopEvent::Connected {
                    receive_max,
                    max_packet_size: props.and_then(|p| p.max_packet_size),
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Written(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let result = puback(ack.reason);
                if result.is_err() {
                    self.release_collision(ack.pkid);
                }
                LoopEvent::Answered(ack.pkid, result)
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => match pubrec(rec.reason) {
                Some(result) => {
                    self.refused_qos2();
                    self.release_collision(rec.pkid);
                    LoopEvent::Answered(rec.pkid, result)
                }
                None => LoopEvent::Received(rec.pkid),
            },
            Ok(Event::Incoming(Packet::PubComp(comp))) => LoopEvent::Completed(
                comp.pkid,
                match comp.reason {
                    PubCompReason::Success => Ok(()),
                    other => {
                        self.refused_qos2();
                        Err(classify(&format!("{other:?}"), true))
                    }
                },
            ),
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                LoopEvent::Closed
            }
            Ok(_) => LoopEvent::Other,
            Err(e) => LoopEvent::Failed(e.to_string()),
        }
    }

    fn reset(&mut self) {
        self.eventloop.clean();
        self.eventloop.pending.clear();
        self.eventloop.state.events.clear();
        self.eventloop.state.collision = None;
        self.refused_qos2 = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn dead_letters_carry_their_failure_as_user_properties() {
        let message = Message {
            failure: Some(Arc::new(crate::sink::Failure {
                route: "r".into(),
                sink: "s".into(),
                error: "not authorized".into(),
            })),
            ..Message::for_test(&[("messageId", "42")], b"{}")
        };
        let props = properties(&message).user_properties;
        assert_eq!(props[0], ("messageId".to_string(), "42".to_string()));
        assert!(props.contains(&("deadLetterError".to_string(), "not authorized".to_string())));
        assert!(props.contains(&("deadLetterRoute".to_string(), "r".to_string())));
    }

    /// Our size agrees with what rumqttc writes (and checks), at every
    /// variable-length boundary of the remaining length and property length.
    #[test]
    fn packet_size_is_exactly_what_rumqttc_writes() {
        use rumqttc::v5::mqttbytes::v5::Publish;
        for value_len in [0, 100, 108, 109, 110, 16_300, 16_400] {
            for body_len in [
                0, 1, 90, 127, 128, 16_200, 16_383, 16_384, 2_097_000, 2_097_152,
            ] {
                for qos_level in [0, 1, 2] {
                    let value = "v".repeat(value_len);
                    let body: &'static [u8] = Box::leak(vec![b'x'; body_len].into_boxed_slice());
                    let message = Message::for_test(&[("k", &value)], body);
                    let topic = "t/opic";
                    let mut publish = Publish::new(
                        topic,
                        qos(qos_level),
                        body.to_vec(),
                        Some(properties(&message)),
                    );
                    publish.pkid = u16::from(qos_level > 0);
                    assert_eq!(
                        packet_size(topic, qos_level, &message).unwrap(),
                        publish.size(),
                        "value {value_len} body {body_len} qos {qos_level}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_user_property_longer_than_an_mqtt_string_is_permanent() {
        let fits = "v".repeat(MAX_STRING);
        let message = Message::for_test(&[("k", &fits)], b"");
        assert!(packet_size("t", 1, &message).is_ok());
        let long = "v".repeat(MAX_STRING + 1);
        let message = Message::for_test(&[("k", &long)], b"");
        match packet_size("t", 1, &message) {
            Err(SinkError::Permanent(e)) => assert!(e.contains("65535"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
