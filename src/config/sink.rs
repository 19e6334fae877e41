//! The `sinks:` map: named egress destinations, each with a `kind`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::source::{parse_url, redact_url};
use super::values::{known_sink_kind, parse_str_with, HumanDuration, Secret};
use super::TlsConfig;
pub use crate::sink::kafka::config::KafkaSinkConfig;
use crate::sink::SinkKind;

/// One named sink.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum SinkConfig {
    Mqtt(Box<MqttSinkConfig>),
    Kafka(KafkaSinkConfig),
    RocketMq(Box<RocketMqSinkConfig>),
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
    Blackhole(crate::sink::blackhole::config::BlackholeSinkConfig),
}

impl SinkConfig {
    /// The `kind:` value.
    pub fn kind(&self) -> SinkKind {
        match self {
            SinkConfig::Mqtt(_) => SinkKind::Mqtt,
            SinkConfig::Kafka(_) => SinkKind::Kafka,
            SinkConfig::RocketMq(_) => SinkKind::RocketMq,
            SinkConfig::File(_) => SinkKind::File,
            SinkConfig::Stdout(_) => SinkKind::Stdout,
            SinkConfig::Blackhole(_) => SinkKind::Blackhole,
        }
    }
}

/// An MQTT broker (Mosquitto, EMQX, Alibaba MQ for MQTT ...).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    pub kind: String,
    pub url: MqttUrl,
    #[serde(default = "default_mqtt_client_id")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Largest packet the broker accepts, in bytes; a bigger message fails
    /// permanently (dead letter) instead of making the broker drop the connection.
    #[serde(default = "default_max_packet_size", deserialize_with = "packet_size")]
    pub max_packet_size: usize,
    /// Publishes awaiting the broker's confirmation at once; a full window holds
    /// the pipeline back. Default: 100 for MQTT 3.1.1, the broker's receive
    /// maximum for MQTT 5 (never more than the broker's receive maximum).
    #[serde(
        default,
        deserialize_with = "mqtt_in_flight",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_in_flight: Option<usize>,
    /// Alibaba Cloud MQ for MQTT credentials (instead of username/password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MqttAuthConfig>,
    /// Protocol version: `3.1.1` (default) or `5`.
    #[serde(default)]
    pub version: MqttVersion,
}

/// The MQTT protocol version a sink speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

impl Serialize for MqttVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MqttVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("3.1.1 or 5")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttVersion, E> {
                match v {
                    "3.1.1" | "4" => Ok(MqttVersion::V311),
                    "5" | "5.0" => Ok(MqttVersion::V5),
                    other => Err(E::custom(format!(
                        "unknown MQTT version `{other}`, expected 3.1.1 or 5"
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

fn default_max_packet_size() -> usize {
    // Mosquitto's and the MQTT protocol's limit; the platform's messages are far smaller.
    268_435_455
}
fn packet_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    super::values::integer_in(d, 64, 268_435_455)
}
fn mqtt_in_flight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    super::values::integer_in(d, 1, 65_535).map(Some)
}

/// How the bridge logs in to Alibaba Cloud MQ for MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttAuthMode {
    /// username `Signature|AK|InstanceId`, password Base64(HMAC-SHA1(secret, clientId)).
    AliyunSignature,
    /// username `Token|AK|InstanceId`, password `R|token|W|token`.
    AliyunToken,
}

/// Alibaba Cloud MQ for MQTT credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "RawMqttAuth")]
pub struct MqttAuthConfig {
    pub mode: MqttAuthMode,
    pub access_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_secret: Option<Secret>,
    pub instance_id: String,
    /// Token type (`R`, `W`, `RW`) → token, for `aliyun_token`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttAuth {
    mode: MqttAuthMode,
    access_key_id: String,
    #[serde(default)]
    access_key_secret: Option<Secret>,
    instance_id: String,
    #[serde(default)]
    tokens: BTreeMap<String, Secret>,
}

impl TryFrom<RawMqttAuth> for MqttAuthConfig {
    type Error = String;
    fn try_from(raw: RawMqttAuth) -> Result<Self, String> {
        match raw.mode {
            MqttAuthMode::AliyunSignature
                if raw.access_key_secret.as_ref().is_none_or(Secret::is_empty) =>
            {
                return Err("mode aliyun_signature needs `access_key_secret`".into())
            }
            MqttAuthMode::AliyunToken if raw.tokens.is_empty() => {
                return Err("mode aliyun_token needs `tokens` (e.g. { R: ..., W: ... })".into())
            }
            _ => {}
        }
        if let Some(bad) = raw
            .tokens
            .keys()
            .find(|k| !matches!(k.as_str(), "R" | "W" | "RW"))
        {
            return Err(format!("token type `{bad}` is not one of R, W, RW"));
        }
        Ok(MqttAuthConfig {
            mode: raw.mode,
            access_key_id: raw.access_key_id,
            access_key_secret: raw.access_key_secret,
            instance_id: raw.instance_id,
            tokens: raw.tokens,
        })
    }
}

/// Empty means "derive from the host and sink name" (filled in by `Sinks`).
fn default_mqtt_client_id() -> String {
    String::new()
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// Free-form client properties; names that look like credentials print as
/// `***` in `check` output and in Debug.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ClientProperties(pub BTreeMap<String, String>);

impl ClientProperties {
    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect()
    }
}

impl Serialize for ClientProperties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.redacted().fmt(f)
    }
}

/// True for librdkafka property names that hold credentials.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl.keystore",
        "token",
    ]
    .iter()
    .any(|s| name.contains(s))
}

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
    super::values::integer_in(d, 1, 65_535)
}
/// Below the 16 MiB frame limit of RocketMQ's remoting codec, with room for
/// the header.
pub const ROCKETMQ_MAX_MESSAGE_SIZE: usize = 15 * 1024 * 1024;
fn rocketmq_message_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    super::values::integer_in(d, 1, ROCKETMQ_MAX_MESSAGE_SIZE)
}
fn send_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    use std::time::Duration;
    super::values::duration_in(d, Duration::from_millis(100), Duration::from_secs(300))
}
fn default_topic_missing_grace() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn topic_missing_grace<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    use std::time::Duration;
    super::values::duration_in(d, Duration::ZERO, Duration::from_secs(3600))
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

/// JSON lines appended to a file, fsynced before a message counts as delivered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub kind: String,
    pub path: PathBuf,
    /// Start a new file once the current one reaches this many bytes; the full
    /// one is renamed to `PATH.<unix-millis>`. Unset = never rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<u64>,
}

/// JSON lines on standard output, for trying routes out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    pub kind: String,
}

/// An `mqtt://host:port` or `mqtts://host:port` address.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl(pub url::Url);

impl std::fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl MqttUrl {
    /// True for `mqtts`.
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "mqtts"
    }
    /// Host name.
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
    /// Port, defaulting to 8883 for mqtts and 1883 for mqtt.
    pub fn port(&self) -> u16 {
        self.0
            .port()
            .unwrap_or(if self.is_tls() { 8883 } else { 1883 })
    }
}

impl Serialize for MqttUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&redact_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for MqttUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(d, "an mqtt:// or mqtts:// URL", |text| {
            parse_url(text, &["mqtt", "mqtts"]).map(MqttUrl)
        })
    }
}

/// The sinks map; each value is parsed as the struct of its `kind`, which the
/// first parsing pass found, so unknown keys are reported at their own line.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Sinks(pub BTreeMap<String, SinkConfig>);

impl Sinks {
    /// Each sink's kind, in the order of the map (the sinks' indices).
    pub fn kinds(&self) -> Vec<SinkKind> {
        self.0.values().map(SinkConfig::kind).collect()
    }
}

impl<'de> Deserialize<'de> for Sinks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(SinksVisitor)
    }
}

struct SinksVisitor;

impl<'de> Visitor<'de> for SinksVisitor {
    type Value = Sinks;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of sink names to sink definitions")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Sinks, A::Error> {
        let mut sinks = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let kind = known_sink_kind(&name);
            let sink = match kind.as_deref().map(|k| SinkKind::from_name(k).ok_or(k)) {
                Some(Ok(SinkKind::Mqtt)) => {
                    let mut mqtt: MqttSinkConfig = map.next_value()?;
                    if mqtt.client_id.is_empty() {
                        // Unique per replica and per sink: two replicas (or two
                        // sinks to one broker) never take over each other's session.
                        mqtt.client_id = format!("{}-{name}", super::default_client_id());
                    }
                    SinkConfig::Mqtt(Box::new(mqtt))
                }
                Some(Ok(SinkKind::Kafka)) => {
                    SinkConfig::Kafka(super::values::reading_sink(&name, || map.next_value())?)
                }
                Some(Ok(SinkKind::RocketMq)) => SinkConfig::RocketMq(Box::new(map.next_value()?)),
                Some(Ok(SinkKind::File)) => SinkConfig::File(map.next_value()?),
                Some(Ok(SinkKind::Stdout)) => SinkConfig::Stdout(map.next_value()?),
                #[cfg(feature = "blackhole-sink")]
                Some(Ok(SinkKind::Blackhole)) => SinkConfig::Blackhole(map.next_value()?),
                #[cfg(not(feature = "blackhole-sink"))]
                Some(Ok(SinkKind::Blackhole)) => {
                    match map.next_value_seed(Reject(
                        "`kind: blackhole` confirms without delivering: it exists in benchmark and test builds \
                         only (cargo feature `blackhole-sink`)"
                            .to_string(),
                    ))? {}
                }
                Some(Err(other)) => {
                    match map.next_value_seed(Reject(format!(
                        "unknown sink kind `{other}`, expected one of {}",
                        SinkKind::names()
                    )))? {}
                }
                None => {
                    match map.next_value_seed(Reject(format!(
                        "sink `{name}` has no `kind` (one of {})",
                        SinkKind::names()
                    )))? {}
                }
            };
            if sinks.insert(name.clone(), sink).is_some() {
                return Err(A::Error::custom(format!("sink `{name}` defined twice")));
            }
        }
        Ok(Sinks(sinks))
    }
}

/// A seed that fails on the value it is given, so the error carries its position.
pub(crate) struct Reject(pub String);

impl<'de> DeserializeSeed<'de> for Reject {
    type Value = std::convert::Infallible;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Reject {
    type Value = std::convert::Infallible;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
        Err(A::Error::custom(self.0))
    }
    fn visit_str<E: serde::de::Error>(self, _v: &str) -> Result<Self::Value, E> {
        Err(E::custom(self.0))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(self.0))
    }
}
