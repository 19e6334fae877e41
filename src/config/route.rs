//! The `routes:` list and the `unrouted:` policy.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::values::{known_sink_kind, parse_str_with, SinkName};
use super::SinkConfig;

/// One routing rule: which messages, and where copies of them go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matcher: MatchConfig,
    #[serde(deserialize_with = "non_empty_targets")]
    pub to: Vec<TargetConfig>,
    /// Stop evaluating later routes once this one matched.
    #[serde(default, rename = "final")]
    pub is_final: bool,
}

/// What a message must look like for the route to fire.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// MQTT-style filter on the `topic` application property.
    #[serde(deserialize_with = "topic_filter")]
    pub topic: String,
}

/// One copy of the message: a sink and where on it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTarget")]
pub struct TargetConfig {
    pub sink: SinkName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    sink: SinkName,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
}

impl TryFrom<RawTarget> for TargetConfig {
    type Error = String;
    fn try_from(raw: RawTarget) -> Result<Self, String> {
        let kind = known_sink_kind(&raw.sink.0).unwrap_or_default();
        if SinkConfig::needs_topic(&kind) && raw.topic.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "target on sink `{}` ({kind}) needs a `topic`",
                raw.sink
            ));
        }
        if let Some(qos) = raw.qos {
            if qos > 2 {
                return Err(format!("qos {qos} out of range 0..=2"));
            }
        }
        Ok(TargetConfig {
            sink: raw.sink,
            topic: raw.topic,
            qos: raw.qos,
            retain: raw.retain,
        })
    }
}

fn non_empty_targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TargetConfig>, D::Error> {
    let targets = Vec::<TargetConfig>::deserialize(d)?;
    if targets.is_empty() {
        return Err(D::Error::custom(
            "a route needs at least one target in `to`",
        ));
    }
    Ok(targets)
}

fn topic_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parse_str_with(d, "an MQTT topic filter", |filter| {
        validate_topic_filter(filter)?;
        Ok(filter.to_string())
    })
}

/// Checks MQTT filter syntax: `+` and `#` fill a whole level, `#` only last.
pub fn validate_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let bad_wildcard = level.len() > 1 && (level.contains('+') || level.contains('#'));
        let hash_not_last = *level == "#" && i + 1 != levels.len();
        if bad_wildcard || hash_not_last {
            return Err(format!(
                "invalid topic filter `{filter}`: `+` and `#` must fill a whole level and `#` must be last"
            ));
        }
    }
    Ok(())
}

/// What to do with a message that no route matched.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnroutedPolicy {
    /// Accept at the source and drop (counted).
    Accept,
    /// Release at the source so the platform redelivers it later (counted).
    #[default]
    Release,
    /// Forward to this sink as is.
    Sink(SinkName),
}

impl<'de> Deserialize<'de> for UnroutedPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnroutedVisitor)
    }
}

struct UnroutedVisitor;

impl<'de> serde::de::Visitor<'de> for UnroutedVisitor {
    type Value = UnroutedPolicy;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("accept, release or { sink: NAME }")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<UnroutedPolicy, E> {
        match v {
            "accept" => Ok(UnroutedPolicy::Accept),
            "release" => Ok(UnroutedPolicy::Release),
            other => Err(E::custom(format!(
                "unknown policy `{other}`, expected accept, release or {{ sink: NAME }}"
            ))),
        }
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<UnroutedPolicy, A::Error> {
        let key: String = map
            .next_key()?
            .ok_or_else(|| A::Error::custom("expected { sink: NAME }"))?;
        if key != "sink" {
            return Err(A::Error::unknown_field(&key, &["sink"]));
        }
        let sink: SinkName = map.next_value()?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::unknown_field(&extra, &["sink"]));
        }
        Ok(UnroutedPolicy::Sink(sink))
    }
}
