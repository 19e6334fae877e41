//! Settings that are allowed but weaken the delivery promise ("accepted only
//! after every broker confirmed"): said out loud by `check` and at start-up,
//! naming the key and what is lost.

use super::{Config, NotDurablePolicy, SinkConfig};

impl Config {
    /// One line per setting that lets a message be accepted without its
    /// broker's durable confirmation (or, for Kafka, sends records and
    /// credentials unencrypted or to an unverified broker).
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
                        if let Some(problem) = raw_property_warning(kafka, key, value) {
                            warnings.push(format!(
                                "sinks.{name}.properties.{key}: {value} — {problem}"
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

/// What a raw librdkafka property of a Kafka sink gives up, if anything:
/// weaker acknowledgements, or TLS and SASL undone or unverified (raw
/// properties are applied last, so they win over `tls` and `sasl`).
fn raw_property_warning(
    kafka: &crate::sink::kafka::config::KafkaSinkConfig,
    key: &str,
    value: &str,
) -> Option<String> {
    let value = value.trim().to_ascii_lowercase();
    match key {
        // 0 is refused while parsing.
        "acks" | "request.required.acks" if !matches!(value.as_str(), "all" | "-1") => Some(
            "a record counts as delivered once that many replicas have it, before every \
             in-sync replica does; it is lost if they fail before replicating (acks=all \
             keeps the delivery contract)"
                .to_string(),
        ),
        "enable.idempotence" if matches!(value.as_str(), "false" | "0") => {
            Some("librdkafka's own retries may write a record twice or out of order".to_string())
        }
        "security.protocol" => {
            let raw_tls = matches!(value.as_str(), "ssl" | "sasl_ssl");
            let raw_sasl = matches!(value.as_str(), "sasl_plaintext" | "sasl_ssl");
            if kafka.tls.is_some() && !raw_tls {
                Some(format!(
                    "overrides `tls`: records{} cross the network unencrypted",
                    if kafka.sasl.is_some() || raw_sasl {
                        " and the SASL password"
                    } else {
                        ""
                    }
                ))
            } else if kafka.sasl.is_some() && !raw_sasl {
                Some("overrides `sasl`: the bridge does not log in".to_string())
            } else if raw_sasl && !raw_tls && kafka.sasl.is_none() {
                Some(
                    "SASL without TLS: records and the password cross the network unencrypted"
                        .to_string(),
                )
            } else {
                None
            }
        }
        "enable.ssl.certificate.verification" if matches!(value.as_str(), "false" | "0") => Some(
            "broker certificates are not verified: anyone on the path can pose as the \
             cluster and read the records (and a SASL password)"
                .to_string(),
        ),
        "ssl.endpoint.identification.algorithm" if matches!(value.as_str(), "none" | "") => Some(
            "broker certificates are not checked against the broker's host name: any \
             certificate the CA signed is accepted for any broker"
                .to_string(),
        ),
        _ => None,
    }
}
