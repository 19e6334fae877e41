//! MQTT 5 through `rumqttc::v5`: application properties travel as user
//! properties, and acknowledgements carry reason codes.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, Packet, PubAckReason, PubCompReason, PubRecReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;

use super::{EventSource, LoopEvent, MAX_PACKET};
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
    (client, Events(eventloop))
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

pub(super) struct Events(EventLoop);

impl EventSource for Events {
    async fn next(&mut self) -> LoopEvent {
        match self.0.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                let props = ack.properties.as_ref();
                LoopEvent::Connected {
                    receive_max: props.and_then(|p| p.receive_max),
                    max_packet_size: props.and_then(|p| p.max_packet_size),
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Written(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                LoopEvent::Answered(ack.pkid, puback(ack.reason))
            }
            Ok(Event::Incoming(Packet::PubRec(rec))) => match pubrec(rec.reason) {
                Some(result) => LoopEvent::Answered(rec.pkid, result),
                None => LoopEvent::Other,
            },
            Ok(Event::Incoming(Packet::PubComp(comp))) => LoopEvent::Answered(
                comp.pkid,
                match comp.reason {
                    PubCompReason::Success => Ok(()),
                    other => Err(classify(&format!("{other:?}"), true)),
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
        self.0.clean();
        self.0.pending.clear();
        self.0.state.events.clear();
        self.0.state.collision = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn dead_letters_carry_their_failure_as_user_properties() {
        let message = Message {
            topic: Some("dead".into()),
            all_headers: true,
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
}
