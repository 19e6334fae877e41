//! The `kind: rocketmq` sink's configuration schema: name servers, producer
//! group, namespace, ACL, TLS and the send limits. Always built, so `check`
//! reads a RocketMQ sink in any build; the producer needs cargo feature
//! `rocketmq`.

use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{HumanDuration, Secret, TlsConfig};

/// An Apache RocketMQ 4.x/5.x cluster or an Alibaba Cloud RocketMQ instance,
/// over the remoting protocol (name server + broker ports).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RocketMqSinkConfig {
    pub kind: String,
    /// Name servers, `host:port`: a list, or one string separated by `;`.
    #[serde(deserialize_with = "name_servers")]
    pub name_server: Vec<String>,
    #[serde(default = "default_producer_group")]
    pub producer_group: String,
    /// Namespace or instance id (`MQ_INST_...`): topics and the producer group
    /// are sent as `NAMESPACE%name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// How long one request waits for the broker's answer before it is retried.
    #[serde(default = "default_send_timeout", deserialize_with = "send_timeout")]
    pub send_timeout: HumanDuration,
    /// How long the name server must keep saying a topic does not exist (and
    /// brokers do not auto-create it) before its messages are dead-lettered.
    /// Brokers re-register every 30 s, so a shorter wait could take a
    /// restarting broker's topic for a missing one.
    #[serde(
        default = "default_topic_missing_grace",
        deserialize_with = "topic_missing_grace"
    )]
    pub topic_missing_grace: HumanDuration,
    /// Signs every request as RocketMQ's ACL hook does (Alibaba Cloud needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<RocketMqAcl>,
    /// TLS to name servers and brokers; present (even as `tls: {}`) means on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// What a broker's "stored but not yet flushed or replicated" answer
    /// (FLUSH_DISK_TIMEOUT, FLUSH_SLAVE_TIMEOUT, SLAVE_NOT_AVAILABLE) counts as:
    /// `retry` (default: the message is not durable yet) or `accept`.
    #[serde(default)]
    pub not_durable: NotDurablePolicy,
    /// Largest body in bytes (the broker's default `maxMessageSize`); a bigger
    /// one is dead-lettered without being sent.
    #[serde(
        default = "default_rocketmq_max_message_size",
        deserialize_with = "rocketmq_message_size"
    )]
    pub max_message_size: usize,
    /// Sends awaiting the broker's answer at once; more wait their turn (and
    /// hold the source back) rather than time out in the broker's queue.
    #[serde(
        default = "default_rocketmq_in_flight",
        deserialize_with = "rocketmq_in_flight"
    )]
    pub max_in_flight: usize,
}

/// RocketMQ ACL credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RocketMqAcl {
    pub access_key: String,
    pub secret_key: Secret,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<Secret>,
}

/// See [`RocketMqSinkConfig::not_durable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotDurablePolicy {
    #[default]
    Retry,
    Accept,
}

fn default_producer_group() -> String {
    "amqp-bridge".to_string()
}
fn default_send_timeout() -> HumanDuration {
    HumanDuration::from_secs(3)
}
fn default_rocketmq_max_message_size() -> usize {
    4 * 1024 * 1024
}
fn default_rocketmq_in_flight() -> usize {
    128
}
fn rocketmq_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    crate::config::values::integer_in(d, 1, 65_535)
}
/// Below the 16 MiB frame limit of RocketMQ's remoting codec, with room for
/// the header.
pub const ROCKETMQ_MAX_MESSAGE_SIZE: usize = 15 * 1024 * 1024;
fn rocketmq_message_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    crate::config::values::integer_in(d, 1, ROCKETMQ_MAX_MESSAGE_SIZE)
}
fn send_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    use std::time::Duration;
    crate::config::values::duration_in(d, Duration::from_millis(100), Duration::from_secs(300))
}
fn default_topic_missing_grace() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn topic_missing_grace<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    use std::time::Duration;
    crate::config::values::duration_in(d, Duration::ZERO, Duration::from_secs(3600))
}

fn name_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_any(NameServersVisitor)
}

/// Reads `name_server` inside the parser, so a bad value is reported at its line.
struct NameServersVisitor;

impl NameServersVisitor {
    fn checked<E: serde::de::Error>(listed: Vec<String>) -> Result<Vec<String>, E> {
        let servers: Vec<String> = listed
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(url) = servers.iter().find(|s| s.contains("://")) {
            return Err(E::custom(format!(
                "`name_server` takes host:port, not a URL (`{url}`); Alibaba Cloud's \
                 http:// endpoint is for the HTTP client, use the instance's TCP endpoint"
            )));
        }
        let valid = |s: &String| {
            s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
            })
        };
        if servers.is_empty() || !servers.iter().all(valid) {
            return Err(E::custom(
                "`name_server` needs one or more host:port (a list, or separated by `;`)",
            ));
        }
        Ok(servers)
    }
}

impl<'de> Visitor<'de> for NameServersVisitor {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("host:port, a list of them, or several separated by `;`")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Self::checked(v.split(';').map(str::to_string).collect())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut listed = Vec::new();
        while let Some(server) = seq.next_element::<String>()? {
            listed.push(server);
        }
        Self::checked(listed)
    }
}
