//! Destination templates such as `devices/{productKey}/{deviceName}`,
//! parsed once at start and filled per message.

use std::fmt::Write as _;

use crate::envelope::Envelope;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    ProductKey,
    DeviceName,
    Topic,
    /// A level of the source topic; 0 is the first level after the leading `/`.
    TopicLevel(usize),
    MessageId,
    GenerateTime,
    Property(String),
    /// A dotted path into a JSON body (`items.Temperature.value`, `devices.0.iotId`).
    Json(Vec<String>),
}

/// A compiled template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// A template that a message cannot fill: names the template and what is missing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template `{template}`: message has no {missing}")]
pub struct TemplateError {
    pub template: String,
    pub missing: String,
}

/// A template reads as the text it was written as (`check` prints it so).
impl std::ops::Deref for Template {
    type Target = str;
    fn deref(&self) -> &str {
        &self.source
    }
}

impl PartialEq<&str> for Template {
    fn eq(&self, other: &&str) -> bool {
        self.source == *other
    }
}

impl serde::Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl Template {
    /// Parses `text`; the error says which placeholder is not known.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template `{text}`: `{{` without `}}`"))?
                + open;
            let name = &rest[open + 1..close];
            parts.push(placeholder(name).ok_or_else(|| {
                format!(
                    "template `{text}`: unknown placeholder `{{{name}}}` (known: productKey, deviceName, \
                     topic, topic[N], messageId, generateTime, prop.NAME, json.PATH, amqp.FIELD, annotation.NAME)"
                )
            })?);
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template `{text}`: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        Ok(Template {
            source: text.to_string(),
            parts,
        })
    }

    /// A fixed destination (no placeholders), e.g. an unrouted message's own topic.
    pub fn literal(text: &str) -> Template {
        Template {
            source: text.to_string(),
            parts: vec![Part::Literal(text.to_string())],
        }
    }

    /// The fixed text between placeholders, for checking it against what a
    /// broker allows in a name before any message arrives.
    pub fn literal_parts(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// True when the template has no placeholder.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Fills the template for one message.
    pub fn render(&self, envelope: &Envelope) -> Result<String, TemplateError> {
        if let [Part::Literal(s)] = self.parts.as_slice() {
            return Ok(s.clone());
        }
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            let missing = |what: &str| TemplateError {
                template: self.source.clone(),
                missing: what.to_string(),
            };
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ProductKey => out.push_str(
                    envelope
                        .device()
                        .ok_or_else(|| missing("productKey (topic is not /{pk}/{dn}/...)"))?
                        .0,
                ),
                Part::DeviceName => out.push_str(
                    envelope
                        .device()
                        .ok_or_else(|| missing("deviceName (topic is not /{pk}/{dn}/...)"))?
                        .1,
                ),
                Part::Topic => out.push_str(
                    envelope
                        .topic()
                        .ok_or_else(|| missing("property `topic`"))?,
                ),
                Part::TopicLevel(n) => {
                    let topic = envelope
                        .topic()
                        .ok_or_else(|| missing("property `topic`"))?;
                    let level = topic
                        .strip_prefix('/')
                        .unwrap_or(topic)
                        .split('/')
                        .nth(*n)
                        .ok_or_else(|| missing(&format!("topic level {n}")))?;
                    out.push_str(level);
                }
                Part::MessageId => out.push_str(
                    envelope
                        .message_id()
                        .ok_or_else(|| missing("property `messageId`"))?,
                ),
                Part::GenerateTime => out.push_str(
                    envelope
                        .property("generateTime")
                        .ok_or_else(|| missing("property `generateTime`"))?,
                ),
                Part::Property(name) => out.push_str(
                    envelope
                        .property(name)
                        .ok_or_else(|| missing(&format!("property `{name}`")))?,
                ),
                Part::Json(path) => {
                    let body = envelope.json().ok_or_else(|| missing("JSON body"))?;
                    let value = json_field(body, path)
                        .ok_or_else(|| missing(&format!("JSON field `{}`", path.join("."))))?;
                    match value {
                        serde_json::Value::String(s) => out.push_str(s),
                        other => {
                            let _ = write!(out, "{other}");
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The value at a dotted path (`a.b.0.c`; numbers index arrays).
pub fn json_field<'a>(
    body: &'a serde_json::Value,
    path: &[String],
) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(body, |v, key| match v {
        serde_json::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        other => other.get(key),
    })
}

fn placeholder(name: &str) -> Option<Part> {
    Some(match name {
        "productKey" => Part::ProductKey,
        "deviceName" => Part::DeviceName,
        "topic" => Part::Topic,
        "messageId" => Part::MessageId,
        "generateTime" => Part::GenerateTime,
        _ => {
            if let Some(prop) = name.strip_prefix("prop.").filter(|p| !p.is_empty()) {
                Part::Property(prop.to_string())
            } else if name
                .strip_prefix("amqp.")
                .is_some_and(|f| crate::source::message::AMQP_FIELDS.contains(&f))
                || name
                    .strip_prefix("annotation.")
                    .is_some_and(|a| !a.is_empty())
            {
                // A generic AMQP source adds these to the properties under
                // their full names.
                Part::Property(name.to_string())
            } else if let Some(path) = name.strip_prefix("json.").filter(|p| !p.is_empty()) {
                Part::Json(path.split('.').map(str::to_string).collect())
            } else {
                let index = name.strip_prefix("topic[")?.strip_suffix(']')?;
                Part::TopicLevel(index.parse().ok()?)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(topic: &str) -> Envelope {
        Envelope::new(
            bytes::Bytes::from_static(
                br#"{"items":{"T":{"value":21.5}},"devices":[{"iotId":"x1"}],"status":"online"}"#,
            ),
            vec![
                ("topic".into(), topic.into()),
                ("messageId".into(), "1790000000000000001".into()),
                ("generateTime".into(), "1700000000000".into()),
                ("tenant".into(), "t9".into()),
            ],
        )
    }

    fn render(t: &str, topic: &str) -> Result<String, TemplateError> {
        Template::parse(t).unwrap().render(&envelope(topic))
    }

    #[test]
    fn fills_every_placeholder() {
        let topic = "/a1B/dev1/thing/event/property/post";
        assert_eq!(
            render("devices/{productKey}/{deviceName}/p", topic).unwrap(),
            "devices/a1B/dev1/p"
        );
        assert_eq!(
            render("out/{messageId}", topic).unwrap(),
            "out/1790000000000000001"
        );
        assert_eq!(render("{topic}", topic).unwrap(), topic);
        assert_eq!(render("{topic[0]}.{topic[3]}", topic).unwrap(), "a1B.event");
        assert_eq!(
            render("{generateTime}-{prop.tenant}", topic).unwrap(),
            "1700000000000-t9"
        );
        assert_eq!(
            render(
                "{json.items.T.value}/{json.devices.0.iotId}/{json.status}",
                topic
            )
            .unwrap(),
            "21.5/x1/online"
        );
        assert_eq!(
            render(
                "status/{productKey}/{deviceName}",
                "/as/mqtt/status/a1B/dev1"
            )
            .unwrap(),
            "status/a1B/dev1"
        );
        assert_eq!(render("fixed/topic", topic).unwrap(), "fixed/topic");
        assert_eq!(
            render("GID_x/p2p/GID_app@@@{deviceName}", topic).unwrap(),
            "GID_x/p2p/GID_app@@@dev1"
        );
    }

    #[test]
    fn missing_values_name_the_template_and_what_is_missing() {
        let err = render("x/{prop.region}", "/a/b/c").unwrap_err();
        assert_eq!(err.template, "x/{prop.region}");
        assert!(err.missing.contains("`region`"), "{err}");
        let err = render("{json.nope.deeper}", "/a/b/c").unwrap_err();
        assert!(err.missing.contains("nope.deeper"), "{err}");
        assert!(render("{productKey}", "weird").is_err());
        assert!(render("{topic[9]}", "/a/b").is_err());
    }

    #[test]
    fn parse_rejects_unknown_and_unbalanced() {
        assert!(Template::parse("{product}")
            .unwrap_err()
            .contains("unknown placeholder `{product}`"));
        assert!(Template::parse("a/{topic").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{topic[x]}").is_err());
        assert!(Template::parse("{prop.}").is_err());
        assert!(Template::parse("{amqp.subjet}").is_err());
        assert!(Template::parse("{annotation.}").is_err());
        let t = Template::parse("{amqp.subject}/{annotation.x-opt-a}").unwrap();
        let e = Envelope::new(
            bytes::Bytes::new(),
            vec![
                ("amqp.subject".into(), "s".into()),
                ("annotation.x-opt-a".into(), "a".into()),
            ],
        );
        assert_eq!(t.render(&e).unwrap(), "s/a");
    }
}
