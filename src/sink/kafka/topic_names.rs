//! Kafka topic names: a check for configured and rendered names (a name the
//! broker would refuse is a permanent failure, found before sending), and
//! the clean-up for names the bridge derives itself (dead-letter topics, an
//! unrouted message's platform topic).

/// Kafka's longest topic name.
const KAFKA_MAX: usize = 249;

fn kafka_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Why Kafka would refuse this text inside a topic name, if it would.
pub fn kafka_chars_problem(text: &str) -> Option<String> {
    text.chars().find(|c| !kafka_char(*c)).map(|bad| {
        format!("Kafka topic names allow only letters, digits, `.`, `_` and `-`, not `{bad}`")
    })
}

/// Why Kafka would refuse this topic name, if it would.
pub fn kafka_topic_problem(topic: &str) -> Option<String> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Some(format!("`{topic}` is not a Kafka topic name"));
    }
    if topic.len() > KAFKA_MAX {
        return Some(format!(
            "Kafka topic `{topic}` is longer than {KAFKA_MAX} characters"
        ));
    }
    kafka_chars_problem(topic).map(|problem| format!("topic `{topic}`: {problem}"))
}

/// A valid Kafka topic from a name the bridge made up: levels joined by `.`
/// (`/pk/dn/thing/lifecycle` → `pk.dn.thing.lifecycle`), anything else not
/// allowed replaced by `_`, cut to 249 characters.
pub fn kafka_topic(raw: &str) -> String {
    let mut topic: String = raw
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if kafka_char(c) => c,
            _ => '_',
        })
        .take(KAFKA_MAX)
        .collect();
    if topic.is_empty() || topic == "." || topic == ".." {
        topic = "_".to_string();
    }
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_names() {
        assert_eq!(
            kafka_topic("/a1B/dev-1/thing/event/property/post"),
            "a1B.dev-1.thing.event.property.post"
        );
        assert_eq!(
            kafka_topic("amqp-bridge/dead-letter/by region"),
            "amqp-bridge.dead-letter.by_region"
        );
        assert_eq!(kafka_topic("/"), "_");
        assert_eq!(kafka_topic(&"x".repeat(300)).len(), 249);
        for derived in ["/pk/dn/x", "a b", "ü", "//"] {
            assert_eq!(
                kafka_topic_problem(&kafka_topic(derived)),
                None,
                "{derived}"
            );
        }
        assert!(kafka_topic_problem("iot.properties").is_none());
        assert!(kafka_topic_problem("amqp-bridge/dead-letter/x").is_some());
        assert!(kafka_topic_problem("..").is_some());
        assert!(kafka_topic_problem(&"x".repeat(250)).is_some());
    }
}
