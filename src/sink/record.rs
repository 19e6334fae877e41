//! The JSON-lines form of a message, shared by the file and stdout sinks.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::Outgoing;

/// One line: messageId, topic, properties, the body (as text when it is
/// UTF-8, else `body_base64`), and for dead letters the failure.
pub fn json_line(message: &Outgoing) -> String {
    let envelope = &message.envelope;
    let properties: Map<String, Value> = envelope
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut record = json!({
        "messageId": envelope.message_id(),
        "topic": envelope.topic(),
        "properties": properties,
    });
    match std::str::from_utf8(&envelope.body) {
        Ok(text) => record["body"] = Value::String(text.to_string()),
        Err(_) => {
            record["body_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(&envelope.body))
        }
    }
    if let Some(failure) = &message.failure {
        record["failure"] = json!(failure.as_ref());
    }
    let mut line = record.to_string();
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
