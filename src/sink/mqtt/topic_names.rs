//! MQTT topic names to publish to: a check for configured and rendered
//! names (a name the broker would refuse is a permanent failure, found
//! before sending), and the clean-up for names the bridge derives itself
//! (dead-letter topics from route names, which may hold a wildcard).

/// A topic to publish to from a name the bridge made up: a route name may
/// hold a wildcard, a topic to publish to may not.
pub fn mqtt_topic(raw: &str) -> String {
    raw.replace(['+', '#', '\0'], "_")
}

/// Why an MQTT broker would refuse this text inside a topic name to publish to.
pub fn mqtt_chars_problem(text: &str) -> Option<String> {
    text.chars()
        .find(|c| matches!(c, '+' | '#' | '\0'))
        .map(|bad| {
            format!(
                "an MQTT topic to publish to cannot contain `{}`",
                bad.escape_default()
            )
        })
}

/// Why an MQTT broker would refuse this topic name to publish to, if it would.
pub fn mqtt_topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("empty MQTT topic".to_string());
    }
    if topic.len() > usize::from(u16::MAX) {
        return Some("MQTT topic longer than 65 535 bytes".to_string());
    }
    mqtt_chars_problem(topic).map(|problem| format!("topic `{topic}`: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_names() {
        assert!(mqtt_topic_problem("/pk/dn/thing/event/property/post").is_none());
        assert!(mqtt_topic_problem("devices/+/x").is_some());
        assert!(mqtt_topic_problem("devices/#").is_some());
        assert!(mqtt_topic_problem("a\0b").is_some());
        assert!(mqtt_topic_problem("").is_some());
        assert_eq!(
            mqtt_topic("amqp-bridge/dead-letter/a+b#"),
            "amqp-bridge/dead-letter/a_b_"
        );
    }
}
