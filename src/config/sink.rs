//! The `sinks:` map: named egress destinations, each with a `kind`. Each
//! kind's own schema lives in its folder (`sink::<kind>::config`); this file
//! picks the schema by `kind` and re-exports them for `config`'s users.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::values::known_sink_kind;
pub use crate::sink::blackhole::config::BlackholeSinkConfig;
pub use crate::sink::file::config::FileSinkConfig;
pub use crate::sink::kafka::config::{
    Acks, Compression, KafkaSasl, KafkaSinkConfig, SaslMechanism as KafkaSaslMechanism,
};
pub use crate::sink::kafka::properties::{is_secret_property, ClientProperties};
pub use crate::sink::mqtt::config::{
    MqttAuthConfig, MqttAuthMode, MqttSinkConfig, MqttUrl, MqttVersion,
};
pub use crate::sink::rocketmq::config::{NotDurablePolicy, RocketMqAcl, RocketMqSinkConfig};
pub use crate::sink::stdout::config::StdoutSinkConfig;
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
    Blackhole(BlackholeSinkConfig),
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
