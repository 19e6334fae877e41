//! MQTT 3.1.1 through `rumqttc`.

use std::sync::Arc;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS,
};

use super::{EventSource, LoopEvent, MAX_PACKET};
use crate::config::{MqttSinkConfig, Secret};
use crate::sink::Outgoing as Message;

pub(super) fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
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
        .set_clean_session(true)
        // Our own window bounds what is outstanding; a large rumqttc inflight
        // keeps packet ids from colliding.
        .set_inflight(u16::MAX)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
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

/// The exact size of the PUBLISH rumqttc will write (MQTT 3.1.1 brokers
/// announce no limit: the sink's `max_packet_size` is the broker's, if set).
pub(super) fn packet_size(topic: &str, qos: u8, message: &Message) -> usize {
    let packet_id = if qos > 0 { 2 } else { 0 };
    super::packet_size(2 + topic.len() + packet_id + message.envelope.body.len())
}

pub(super) struct Events(EventLoop);

impl EventSource for Events {
    async fn next(&mut self) -> LoopEvent {
        match self.0.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                LoopEvent::Connected {
                    receive_max: None,
                    max_packet_size: None,
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LoopEvent::Written(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => LoopEvent::Answered(ack.pkid, Ok(())),
            Ok(Event::Incoming(Packet::PubRec(rec))) => LoopEvent::Received(rec.pkid),
            Ok(Event::Incoming(Packet::PubComp(comp))) => LoopEvent::Completed(comp.pkid, Ok(())),
            Ok(Event::Outgoing(Outgoing::Disconnect))
            | Err(rumqttc::ConnectionError::RequestsDone) => LoopEvent::Closed,
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
    use super::*;

    #[test]
    fn packet_size_is_exactly_what_rumqttc_writes() {
        for body_len in [
            0, 1, 120, 121, 122, 16_370, 16_383, 16_384, 2_097_140, 2_097_152,
        ] {
            for qos_level in [0, 1, 2] {
                let body: &'static [u8] = Box::leak(vec![b'x'; body_len].into_boxed_slice());
                let message = Message::for_test(&[], body);
                let mut publish = rumqttc::Publish::new("t/opic", qos(qos_level), body.to_vec());
                publish.pkid = u16::from(qos_level > 0);
                assert_eq!(
                    packet_size("t/opic", qos_level, &message),
                    publish.size(),
                    "body {body_len} qos {qos_level}"
                );
            }
        }
    }
}
