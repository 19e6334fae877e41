//! The `routes:` list and the `unrouted:` policy.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::values::{known_sink_kind, parse_str_with, SinkName};
use crate::route::Template;
use crate::sink::SinkKind;

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
    /// `time`: per device, never forward a status older than one already
    /// forwarded (the platform does not order online/offline messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_by: Option<OrderBy>,
}

/// What a route orders its messages by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderBy {
    /// The body's `utcTime` (or `time`) field, per device.
    Time,
}

/// What a message must look like for the route to fire.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// MQTT-style filter on the `topic` application property.
    #[serde(deserialize_with = "topic_filter")]
    pub topic: String,
    /// Application property name → condition; all must hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Predicate>,
    /// Dotted path into a JSON body → condition; all must hold (a body that is
    /// not JSON matches none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json: BTreeMap<String, Predicate>,
}

/// A condition on a value: `"x"` (equals), `["x", "y"]` (one of),
/// `{ regex: "^x" }` (a regular expression, compiled when the file is read).
#[derive(Clone, Debug)]
pub enum Predicate {
    Equals(String),
    OneOf(Vec<String>),
    Regex(regex::Regex),
}

impl Predicate {
    /// True when `value` satisfies the condition.
    pub fn holds(&self, value: &str) -> bool {
        match self {
            Predicate::Equals(want) => value == want,
            Predicate::OneOf(options) => options.iter().any(|o| o == value),
            Predicate::Regex(re) => re.is_match(value),
        }
    }
}

impl Serialize for Predicate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Predicate::Equals(v) => s.serialize_str(v),
            Predicate::OneOf(v) => v.serialize(s),
            Predicate::Regex(re) => {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("regex", re.as_str())?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Predicate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PredicateVisitor)
    }
}

struct PredicateVisitor;

impl<'de> serde::de::Visitor<'de> for PredicateVisitor {
    type Value = Predicate;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a value, a list of values, or { regex: PATTERN }")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Predicate, E> {
        Ok(Predicate::Equals(v.to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Predicate, E> {
        Ok(Predicate::Equals(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Predicate, E> {
        Ok(Predicate::Equals(v.to_string()))
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Predicate, E> {
        Ok(Predicate::Equals(v.to_string()))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Predicate, A::Error> {
        let mut options = Vec::new();
        while let Some(v) = seq.next_element::<yaml_serde::Value>()? {
            options.push(match v {
                yaml_serde::Value::String(s) => s,
                yaml_serde::Value::Number(n) => n.to_string(),
                yaml_serde::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(A::Error::custom(format!(
                        "list values must be scalars, not {other:?}"
                    )))
                }
            });
        }
        Ok(Predicate::OneOf(options))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Predicate, A::Error> {
        let key: String = map
            .next_key()?
            .ok_or_else(|| A::Error::custom("expected { regex: PATTERN }"))?;
        if key != "regex" {
            return Err(A::Error::unknown_field(&key, &["regex"]));
        }
        let re = map.next_value_seed(RegexSeed)?;
        if let Some(extra) = map.next_key::<String>()? {
            return Err(A::Error::unknown_field(&extra, &["regex"]));
        }
        Ok(Predicate::Regex(re))
    }
}

/// Compiles the pattern inside the parser so a bad one is reported at its line.
struct RegexSeed;

impl<'de> serde::de::DeserializeSeed<'de> for RegexSeed {
    type Value = regex::Regex;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<regex::Regex, D::Error> {
        parse_str_with(d, "a regular expression", |p| {
            regex::Regex::new(p).map_err(|e| format!("invalid regex: {e}"))
        })
    }
}

/// One copy of the message: a sink and where on it. Its templates are
/// parsed here, once, and the router takes them as they are.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawTarget")]
pub struct TargetConfig {
    pub sink: SinkName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Template>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<bool>,
    /// Kafka record key template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Template>,
    /// Kafka headers: `all` copies every application property; by default only
    /// `topic`, `messageId` and `generateTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeadersMode>,
    /// RocketMQ tag template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Template>,
    /// RocketMQ key templates (a filled key containing spaces gives several keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<Template>,
    /// RocketMQ user properties: `all` copies every application property; by
    /// default only `topic`, `messageId` and `generateTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<HeadersMode>,
}

/// Which application properties travel as record headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadersMode {
    All,
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
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Option<HeadersMode>,
    #[serde(default)]
    tag: Option<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    keys: Vec<String>,
    #[serde(default)]
    properties: Option<HeadersMode>,
}

/// A single template or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

impl TryFrom<RawTarget> for TargetConfig {
    type Error = String;
    fn try_from(raw: RawTarget) -> Result<Self, String> {
        // The first pass saw every sink's kind; an unknown one is reported
        // at the sink itself.
        let kind = known_sink_kind(&raw.sink.0)
            .and_then(|k| SinkKind::from_name(&k))
            .ok_or_else(|| format!("sink `{}` has no known kind", raw.sink))?;
        if kind.needs_topic() && raw.topic.as_deref().is_none_or(str::is_empty) {
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
        let rocketmq_only = [
            ("tag", raw.tag.is_some()),
            ("keys", !raw.keys.is_empty()),
            ("properties", raw.properties.is_some()),
        ];
        if let Some((field, _)) = rocketmq_only.iter().find(|(_, set)| *set) {
            if kind != SinkKind::RocketMq {
                return Err(format!(
                    "`{field}` is for RocketMQ targets; sink `{}` is {kind}",
                    raw.sink
                ));
            }
        }
        let parse = |text: Option<String>| text.as_deref().map(Template::parse).transpose();
        let topic = parse(raw.topic)?;
        let key = parse(raw.key)?;
        let tag = parse(raw.tag)?;
        let keys = raw
            .keys
            .iter()
            .map(|k| Template::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(topic) = &topic {
            check_destination(kind, topic)?;
        }
        Ok(TargetConfig {
            sink: raw.sink,
            topic,
            qos: raw.qos,
            retain: raw.retain,
            key,
            headers: raw.headers,
            tag,
            keys,
            properties: raw.properties,
        })
    }
}

/// Refuses a topic its broker would refuse whatever the message: the whole
/// name when it has no placeholder, else the fixed text around them.
fn check_destination(kind: SinkKind, topic: &Template) -> Result<(), String> {
    let problem = kind.topic_problem(topic);
    match problem {
        Some(problem) if problem.starts_with("topic `") => Err(problem),
        Some(problem) => Err(format!("topic `{}`: {problem}", topic.as_str())),
        None => Ok(()),
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
