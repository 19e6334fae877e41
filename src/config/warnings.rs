//! Settings that are allowed but weaken the delivery promise ("accepted only
//! after every broker confirmed"): said out loud by `check` and at start-up,
//! naming the key and what is lost.

use super::{Config, NotDurablePolicy, SinkConfig};

impl Config {
    /// One line per setting that lets a message be accepted without its
    /// broker's durable confirmation (or, for Kafka SASL without TLS, sends
    /// records and credentials unencrypted).
    pub fn delivery_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            for (j, target) in route.to.iter().enumerate() {
                if target.qos == Some(0) {
                    warnings.push(format!(
                        "routes[{i}].to[{j}].qos: 0 — QoS 0 has no broker acknowledgement: \
                         a copy counts as delivered once written to the socket and is lost \
                         if the connection drops"
                    ));
                }
            }
        }
        for (name, sink) in &self.sinks.0 {
            match sink {
                SinkConfig::Kafka(kafka) => {
                    if kafka.acks != crate::sink::kafka::config::Acks::All {
                        warnings.push(format!(
                            "sinks.{name}.acks: {} — a record counts as delivered once the \
                             partition leader has it; it is lost if the leader fails before \
                             replicating (acks: all keeps the delivery contract)",
                            kafka.acks.as_str()
                        ));
                    }
                    if !kafka.idempotence {
                        warnings.push(format!(
                            "sinks.{name}.idempotence: false — librdkafka's own retries may \
                             write a record twice or out of order"
                        ));
                    }
                    if kafka.sasl.is_some() && kafka.tls.is_none() {
                        warnings.push(format!(
                            "sinks.{name}.sasl without tls — SASL_PLAINTEXT: records (and a \
                             PLAIN password) cross the network unencrypted"
                        ));
                    }
                    for (key, value) in &kafka.properties.0 {
                        let value_lower = value.trim().to_ascii_lowercase();
                        let weak = match key.as_str() {
                            "acks" | "request.required.acks" => {
                                !matches!(value_lower.as_str(), "all" | "-1")
                            }
                            "enable.idempotence" => {
                                matches!(value_lower.as_str(), "false" | "0")
                            }
                            _ => false,
                        };
                        if weak {
                            warnings.push(format!(
                                "sinks.{name}.properties.{key}: {value} — a record counts as \
                                 delivered before every in-sync replica has it (acks=all and \
                                 idempotence keep the delivery contract)"
                            ));
                        }
                    }
                }
                SinkConfig::RocketMq(rocketmq)
                    if rocketmq.not_durable == NotDurablePolicy::Accept =>
                {
                    warnings.push(format!(
                        "sinks.{name}.not_durable: accept — a message the broker stored but \
                         could not flush or replicate counts as delivered"
                    ));
                }
                _ => {}
            }
        }
        warnings
    }
}
