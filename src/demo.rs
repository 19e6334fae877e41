//! `amqp-bridge demo`: the embedded default. The IoT Platform emulator as the
//! source, an in-process MQTT broker (rumqttd) as the egress, and the bridge
//! between them with a built-in configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::{Config, ConfigError};

/// The demo's built-in configuration (printed by `demo --print-config`).
pub fn config_text(amqp: SocketAddr, mqtt: SocketAddr, ca_file: &Path) -> String {
    format!(
        r##"# amqp-bridge demo configuration: emulator → bridge → MQTT broker.
source:
  kind: aliyun
  url: amqps://localhost:{amqp_port}
  access_key_id: demo-ak
  access_key_secret: demo-secret
  consumer_group_id: DEFAULT_GROUP
  client_id: amqp-bridge-demo
  credit: 64
  tls: {{ ca_file: {ca} }}
sinks:
  mqtt:
    kind: mqtt
    url: mqtt://{mqtt}
    client_id: amqp-bridge-demo
routes:
  - name: properties
    match: {{ topic: "/+/+/thing/event/property/post" }}
    final: true
    to:
      - {{ sink: mqtt, topic: "devices/{{productKey}}/{{deviceName}}/properties", qos: 1 }}
  - name: events
    match: {{ topic: "/+/+/thing/event/+/post" }}
    to:
      - {{ sink: mqtt, topic: "devices/{{productKey}}/{{deviceName}}/events/{{topic[4]}}", qos: 1 }}
  - name: status
    match: {{ topic: "/as/mqtt/status/#" }}
    to:
      - {{ sink: mqtt, topic: "devices/{{productKey}}/{{deviceName}}/status", qos: 1, retain: true }}
  - name: lifecycle
    match: {{ topic: "/+/+/thing/lifecycle" }}
    to:
      - {{ sink: mqtt, topic: "devices/{{productKey}}/{{deviceName}}/lifecycle", qos: 1 }}
  - name: topology
    match: {{ topic: "/+/+/thing/topo/lifecycle" }}
    to:
      - {{ sink: mqtt, topic: "devices/{{productKey}}/{{deviceName}}/topology", qos: 1 }}
unrouted: release
max_in_flight: 1024
"##,
        amqp_port = amqp.port(),
        ca = ca_file.display(),
    )
}

/// Parses the built-in configuration.
pub fn config(amqp: SocketAddr, mqtt: SocketAddr, ca_file: &Path) -> Result<Config, ConfigError> {
    Config::parse(
        &config_text(amqp, mqtt, ca_file),
        Path::new("<demo>"),
        |_| None,
    )
}

/// Why the embedded MQTT broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr} for MQTT (is another broker running there? use --mqtt-listen): {source}")]
    Port {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Starts rumqttd (MQTT 3.1.1) on `listen` in a background thread.
pub fn start_mqtt_broker(listen: SocketAddr) -> Result<(), BrokerError> {
    // rumqttd reports a busy port only from its own thread; check it first.
    std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Port {
        addr: listen,
        source,
    })?;
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: 1 << 20,
        max_inflight_count: 500,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 1_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|source| BrokerError::Port {
            addr: listen,
            source,
        })?;
    Ok(())
}
