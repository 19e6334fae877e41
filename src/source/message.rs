//! Turning an AMQP 1.0 delivery into an [`Envelope`]: the body as bytes,
//! application properties as text, and, from a generic broker, the AMQP
//! properties (`amqp.NAME`) and message annotations (`annotation.NAME`) so
//! that routes, templates and "all properties" copies can read them.

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::link::delivery::Delivery;
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::MessageId;
use fe2o3_amqp::types::messaging::{Body, Message, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};

use crate::envelope::Envelope;

/// What a source adds to a message besides its application properties.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// Add the AMQP properties and message annotations (generic brokers; the
    /// platform sends everything as application properties).
    pub metadata: bool,
    /// For a message without a `topic` application property: where its
    /// routing topic comes from, the first field present wins. Empty: such a
    /// message has no topic (the platform always sends one).
    pub topic_from: Vec<TopicField>,
}

/// A field a routing topic can be taken from (`source.topic_from`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicField {
    /// A property of the envelope as templates name it: `amqp.subject`,
    /// `annotation.x-opt-…`, or an application property.
    Property(String),
    /// A fixed text: the source address.
    Fixed(String),
}

/// The AMQP properties a generic broker's message may carry, by the names
/// templates and predicates use (`amqp.NAME`, the spec's field names).
pub const AMQP_FIELDS: [&str; 11] = [
    "message-id",
    "user-id",
    "to",
    "subject",
    "reply-to",
    "correlation-id",
    "content-type",
    "content-encoding",
    "absolute-expiry-time",
    "creation-time",
    "group-id",
];

/// Copies the body once into shared bytes and renders the properties as text;
/// `None` for a body with no byte form (an AMQP sequence, a compound value).
pub fn to_envelope(delivery: Delivery<Body<Value>>, reading: &Reading) -> Option<Envelope> {
    message_to_envelope(delivery.into_message(), reading)
}

/// [`to_envelope`] for a message already taken out of its delivery.
pub(crate) fn message_to_envelope(
    message: Message<Body<Value>>,
    reading: &Reading,
) -> Option<Envelope> {
    // The AMQP metadata goes first: a property is looked up by its first
    // occurrence, so an application property named `amqp.subject` cannot
    // pass for the real subject in a predicate, template or dedup key.
    let mut properties: Vec<(String, String)> = Vec::new();
    if reading.metadata {
        if let Some(amqp) = message.properties {
            amqp_properties(amqp, &mut properties);
        }
        if let Some(annotations) = message.message_annotations {
            for (key, value) in annotations.0 {
                let key = match key {
                    OwnedKey::Symbol(s) => s.0,
                    OwnedKey::Ulong(n) => n.to_string(),
                };
                if let Some(text) = scalar_text(value) {
                    properties.push((format!("annotation.{key}"), text));
                }
            }
        }
    }
    if let Some(application) = message.application_properties {
        properties.extend(application.0.into_iter().map(|(k, v)| (k, simple_text(v))));
    }
    let has_topic = properties
        .iter()
        .any(|(k, v)| k == "topic" && !v.is_empty());
    if !reading.topic_from.is_empty() && !has_topic {
        let topic = reading.topic_from.iter().find_map(|field| match field {
            TopicField::Fixed(text) => Some(text.clone()),
            TopicField::Property(name) => properties
                .iter()
                .find(|(k, v)| k == name && !v.is_empty())
                .map(|(_, v)| v.clone()),
        });
        if let Some(topic) = topic {
            // An empty `topic` property counts as absent: the found one
            // takes its place.
            properties.retain(|(k, _)| k != "topic");
            properties.push(("topic".to_string(), topic));
        }
    }
    let body = match message.body {
        Body::Data(batch) => {
            let mut parts = batch.into_iter();
            match (parts.next(), parts.next()) {
                (Some(only), None) => Bytes::from(only.0.into_vec()),
                (first, second) => {
                    let mut buf = BytesMut::new();
                    for part in first.into_iter().chain(second).chain(parts) {
                        buf.extend_from_slice(&part.0);
                    }
                    buf.freeze()
                }
            }
        }
        Body::Value(v) => Bytes::from(scalar_text_or_bytes(v.0)?),
        Body::Empty => Bytes::new(),
        Body::Sequence(_) => return None,
    };
    Some(Envelope::new(body, properties))
}

/// Appends the AMQP properties that are set, as `amqp.NAME`.
fn amqp_properties(amqp: Properties, out: &mut Vec<(String, String)>) {
    let mut push = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            out.push((format!("amqp.{name}"), value));
        }
    };
    push("message-id", amqp.message_id.map(message_id_text));
    push("user-id", amqp.user_id.map(|b| base64(b.as_slice())));
    push("to", amqp.to);
    push("subject", amqp.subject);
    push("reply-to", amqp.reply_to);
    push("correlation-id", amqp.correlation_id.map(message_id_text));
    push("content-type", amqp.content_type.map(|s| s.0));
    push("content-encoding", amqp.content_encoding.map(|s| s.0));
    push(
        "absolute-expiry-time",
        amqp.absolute_expiry_time
            .map(|t| t.milliseconds().to_string()),
    );
    push(
        "creation-time",
        amqp.creation_time.map(|t| t.milliseconds().to_string()),
    );
    push("group-id", amqp.group_id);
}

/// A message id as text: strings as they are, numbers in decimal, UUIDs in
/// their usual hyphenated form, binary ids in base64.
fn message_id_text(id: MessageId) -> String {
    match id {
        MessageId::String(s) => s,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid_text(u.as_inner()),
        MessageId::Binary(b) => base64(b.as_slice()),
    }
}

/// A UUID in its usual hyphenated lowercase form.
fn uuid_text(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An AMQP value body as bytes: text and binary as they are, a scalar as its
/// text; `None` for a list, map, array or described value, which have no
/// byte form a broker's consumer could read (rejected and counted like an
/// AMQP sequence body, never forwarded as Rust debug text).
fn scalar_text_or_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::Binary(b) => Some(b.into_vec()),
        other => scalar_text(other).map(String::into_bytes),
    }
}

/// A scalar as text (binary in base64); `None` for compound values.
fn scalar_text(value: Value) -> Option<String> {
    Some(match value {
        Value::String(s) => s,
        Value::Binary(b) => base64(b.as_slice()),
        Value::Symbol(s) => s.0,
        Value::Null => String::new(),
        Value::Bool(v) => v.to_string(),
        Value::Ubyte(v) => v.to_string(),
        Value::Ushort(v) => v.to_string(),
        Value::Uint(v) => v.to_string(),
        Value::Ulong(v) => v.to_string(),
        Value::Byte(v) => v.to_string(),
        Value::Short(v) => v.to_string(),
        Value::Int(v) => v.to_string(),
        Value::Long(v) => v.to_string(),
        Value::Float(v) => v.to_string(),
        Value::Double(v) => v.to_string(),
        Value::Char(v) => v.to_string(),
        Value::Timestamp(t) => t.milliseconds().to_string(),
        Value::Uuid(u) => uuid_text(u.as_inner()),
        _ => return None,
    })
}

/// An application property value as text.
fn simple_text(value: SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => s,
        SimpleValue::Symbol(s) => s.0,
        SimpleValue::Long(v) => v.to_string(),
        SimpleValue::Int(v) => v.to_string(),
        SimpleValue::Short(v) => v.to_string(),
        SimpleValue::Byte(v) => v.to_string(),
        SimpleValue::Ulong(v) => v.to_string(),
        SimpleValue::Uint(v) => v.to_string(),
        SimpleValue::Ushort(v) => v.to_string(),
        SimpleValue::Ubyte(v) => v.to_string(),
        SimpleValue::Bool(v) => v.to_string(),
        SimpleValue::Double(v) => v.to_string(),
        SimpleValue::Float(v) => v.to_string(),
        SimpleValue::Timestamp(t) => t.milliseconds().to_string(),
        SimpleValue::Binary(b) => base64(b.as_slice()),
        SimpleValue::Null => String::new(),
        SimpleValue::Uuid(u) => uuid_text(u.as_inner()),
        SimpleValue::Char(c) => c.to_string(),
        // Decimal32/64/128: IEEE 754 decimal bits, which no Rust type here
        // reads; their debug text at least keeps the bits.
        other => format!("{other:?}"),
    }
}
