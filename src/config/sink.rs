//! The `sinks:` map: named egress destinations, each with a `kind`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::source::{parse_url, redact_url};
use super::values::{known_sink_kind, parse_str_with, HumanDuration, Secret};
use super::TlsConfig;

/// The sink kinds this build knows, as written in `kind:`.
pub const SINK_KINDS: &[&str] = &["mqtt", "file", "stdout"];

/// One named sink.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum SinkConfig {
    Mqtt(Box<MqttSinkConfig>),
    File(FileSinkConfig),
    Stdout(StdoutSinkConfig),
}

impl SinkConfig {
    /// The `kind:` value, for messages and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::File(_) => "file",
            SinkConfig::Stdout(_) => "stdout",
        }
    }
    /// True for sinks whose targets must name a destination topic.
    pub fn needs_topic(kind: &str) -> bool {
        kind == "mqtt"
    }
}

/// An MQTT broker (Mosquitto, EMQX, Alibaba MQ for MQTT ...).
#[derive(Clone, Debug, Serialize, Deserialize)]
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
}

fn default_mqtt_client_id() -> String {
    "amqp-bridge".to_string()
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// JSON lines appended to a file, fsynced before a message counts as delivered.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, Default, Serialize)]
#[serde(transparent)]
pub struct Sinks(pub BTreeMap<String, SinkConfig>);

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
            let sink = match known_sink_kind(&name).as_deref() {
                Some("mqtt") => SinkConfig::Mqtt(Box::new(map.next_value()?)),
                Some("file") => SinkConfig::File(map.next_value()?),
                Some("stdout") => SinkConfig::Stdout(map.next_value()?),
                Some(other) => {
                    match map.next_value_seed(Reject(format!(
                        "unknown sink kind `{other}`, expected one of {}",
                        SINK_KINDS.join(", ")
                    )))? {}
                }
                None => {
                    match map.next_value_seed(Reject(format!(
                        "sink `{name}` has no `kind` (one of {})",
                        SINK_KINDS.join(", ")
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
