//! Where one copy goes. A target's [`DestinationTemplate`] is built once
//! from its configuration, with the fields its sink kind has; the router
//! renders it into a [`Destination`] per message. A sink reads only its own
//! variant.

use crate::config::{HeadersMode, TargetConfig};
use crate::envelope::Envelope;
use crate::route::{Template, TemplateError};

use super::SinkKind;

/// A copy's destination, filled for one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    Mqtt {
        topic: String,
        qos: u8,
        retain: bool,
    },
    Kafka {
        topic: String,
        /// The record key.
        key: Option<String>,
        /// Every application property as a header, not only the platform's three.
        all_headers: bool,
    },
    RocketMq {
        topic: String,
        tag: Option<String>,
        keys: Vec<String>,
        /// Every application property as a user property.
        all_properties: bool,
    },
    File,
    Stdout,
    Blackhole,
}

impl Destination {
    /// For a copy the bridge addresses itself (an unrouted message, a dead
    /// letter): `topic` as given, QoS 1, every property along, and `key` as
    /// the Kafka key and RocketMQ key.
    pub fn derived(kind: SinkKind, topic: Option<String>, key: Option<&str>) -> Destination {
        let topic = topic.unwrap_or_default();
        match kind {
            SinkKind::Mqtt => Destination::Mqtt {
                topic,
                qos: 1,
                retain: false,
            },
            SinkKind::Kafka => Destination::Kafka {
                topic,
                key: key.map(str::to_string),
                all_headers: true,
            },
            SinkKind::RocketMq => Destination::RocketMq {
                topic,
                tag: None,
                keys: key.map(str::to_string).into_iter().collect(),
                all_properties: true,
            },
            SinkKind::File => Destination::File,
            SinkKind::Stdout => Destination::Stdout,
            SinkKind::Blackhole => Destination::Blackhole,
        }
    }

    /// The destination topic, for sinks that have one.
    pub fn topic(&self) -> Option<&str> {
        match self {
            Destination::Mqtt { topic, .. }
            | Destination::Kafka { topic, .. }
            | Destination::RocketMq { topic, .. } => Some(topic),
            Destination::File | Destination::Stdout | Destination::Blackhole => None,
        }
    }
}

/// A target's destination before a message fills it: its templates, parsed
/// once when the configuration was read.
#[derive(Clone, Debug)]
pub enum DestinationTemplate {
    Mqtt {
        topic: Template,
        qos: u8,
        retain: bool,
    },
    Kafka {
        topic: Template,
        key: Option<Template>,
        all_headers: bool,
    },
    RocketMq {
        topic: Template,
        tag: Option<Template>,
        keys: Vec<Template>,
        all_properties: bool,
    },
    /// File, stdout and blackhole sinks take no destination; a `topic` given on
    /// such a target is still filled, and a message that cannot fill it
    /// fails like any other (as it always has).
    Unaddressed {
        kind: SinkKind,
        topic: Option<Template>,
    },
}

impl DestinationTemplate {
    /// The destination of a target on a sink of `kind`; the configuration
    /// parser already refused fields of other kinds and a missing topic.
    pub fn of(kind: SinkKind, target: &TargetConfig) -> DestinationTemplate {
        let topic = || {
            target
                .topic
                .clone()
                .unwrap_or_else(|| Template::literal(""))
        };
        match kind {
            SinkKind::Mqtt => DestinationTemplate::Mqtt {
                topic: topic(),
                qos: target.qos.unwrap_or(1),
                retain: target.retain.unwrap_or(false),
            },
            SinkKind::Kafka => DestinationTemplate::Kafka {
                topic: topic(),
                key: target.key.clone(),
                all_headers: target.headers == Some(HeadersMode::All),
            },
            SinkKind::RocketMq => DestinationTemplate::RocketMq {
                topic: topic(),
                tag: target.tag.clone(),
                keys: target.keys.clone(),
                all_properties: target.properties == Some(HeadersMode::All)
                    || target.headers == Some(HeadersMode::All),
            },
            SinkKind::File | SinkKind::Stdout | SinkKind::Blackhole => {
                DestinationTemplate::Unaddressed {
                    kind,
                    topic: target.topic.clone(),
                }
            }
        }
    }

    /// Fills the templates for one message; a template the message cannot
    /// fill is an error (the copy fails for good).
    pub fn render(&self, envelope: &Envelope) -> Result<Destination, TemplateError> {
        Ok(match self {
            DestinationTemplate::Mqtt { topic, qos, retain } => Destination::Mqtt {
                topic: topic.render(envelope)?,
                qos: *qos,
                retain: *retain,
            },
            DestinationTemplate::Kafka {
                topic,
                key,
                all_headers,
            } => Destination::Kafka {
                topic: topic.render(envelope)?,
                key: key.as_ref().map(|k| k.render(envelope)).transpose()?,
                all_headers: *all_headers,
            },
            DestinationTemplate::RocketMq {
                topic,
                tag,
                keys,
                all_properties,
            } => Destination::RocketMq {
                topic: topic.render(envelope)?,
                tag: tag.as_ref().map(|t| t.render(envelope)).transpose()?,
                keys: keys
                    .iter()
                    .map(|k| k.render(envelope))
                    .collect::<Result<_, _>>()?,
                all_properties: *all_properties,
            },
            DestinationTemplate::Unaddressed { kind, topic } => {
                if let Some(topic) = topic {
                    topic.render(envelope)?;
                }
                Destination::derived(*kind, None, None)
            }
        })
    }
}
