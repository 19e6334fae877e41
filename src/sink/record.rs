//! The JSON-lines form of a message, shared by the file and stdout sinks.

use base64::Engine as _;
use serde::{Serialize, Serializer};

use super::{Failure, Outgoing};

/// One line, borrowing from the message: nothing is copied but a binary
/// body's Base64.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "messageId")]
    message_id: Option<&'a str>,
    topic: Option<&'a str>,
    #[serde(serialize_with = "as_map")]
    properties: &'a [(String, String)],
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<&'a Failure>,
}

fn as_map<S: Serializer>(properties: &&[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(properties.iter().map(|(k, v)| (k, v)))
}

/// One line: messageId, topic, properties, the body (as text when it is
/// UTF-8, else `body_base64`), and for dead letters the failure.
pub fn json_line(message: &Outgoing) -> String {
    let envelope = &message.envelope;
    let text = std::str::from_utf8(&envelope.body).ok();
    let line = Line {
        message_id: envelope.message_id(),
        topic: envelope.topic(),
        properties: &envelope.properties,
        body: text,
        body_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&envelope.body)),
        failure: message.failure.as_deref(),
    };
    // Strings and string maps always serialize.
    let mut line = serde_json::to_string(&line).unwrap_or_default();
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sink::Failure;

    fn outgoing(body: &'static [u8], failure: Option<Failure>) -> Outgoing {
        Outgoing {
            failure: failure.map(Arc::new),
            ..Outgoing::for_test(&[("topic", "/p/d/x"), ("messageId", "42")], body)
        }
    }

    #[test]
    fn text_body_stays_text_binary_becomes_base64() {
        let line: serde_json::Value =
            serde_json::from_str(&json_line(&outgoing(b"{\"a\":1}", None))).unwrap();
        assert_eq!(line["body"], "{\"a\":1}");
        assert_eq!(line["messageId"], "42");
        assert!(line.get("failure").is_none());
        let line: serde_json::Value =
            serde_json::from_str(&json_line(&outgoing(&[0xff, 0x00, 0x80], None))).unwrap();
        assert_eq!(line["body_base64"], "/wCA");
        assert!(line.get("body").is_none());
    }

    #[test]
    fn dead_letters_carry_their_failure() {
        let failure = Failure {
            route: "r".into(),
            sink: "s".into(),
            error: "boom".into(),
        };
        let text = json_line(&outgoing(b"x", Some(failure)));
        assert!(text.ends_with('\n') && text.matches('\n').count() == 1);
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["failure"]["error"], "boom");
    }
}
