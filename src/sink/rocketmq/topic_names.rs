//! RocketMQ topic names: a check for configured and rendered names (a name
//! the broker would refuse is a permanent failure, found before sending) and
//! the clean-up for names the bridge derives itself. Always built, so the
//! configuration check knows them in any build.

/// Topic names RocketMQ accepts: `[%|a-zA-Z0-9_-]`, at most 127 characters.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("empty RocketMQ topic".into());
    }
    if topic.len() > 127 {
        return Err(format!(
            "RocketMQ topic `{topic}` is longer than 127 characters"
        ));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-')))
    {
        return Err(format!(
            "RocketMQ topic `{topic}` contains `{bad}`; only letters, digits, %, |, _ and - are allowed"
        ));
    }
    Ok(())
}

/// A dead-letter topic built from a route name may hold characters RocketMQ
/// refuses (`amqp-bridge/dead-letter/r`); they become `_`.
pub fn sanitize_topic(topic: &str) -> String {
    topic
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '%' | '|' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(127)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(check_topic("iot_all-1").is_ok());
        assert!(check_topic("MQ_INST_x%iot").is_ok());
        assert!(check_topic("a/b").is_err());
        assert!(check_topic("").is_err());
        assert_eq!(
            sanitize_topic("amqp-bridge/dead-letter/r1"),
            "amqp-bridge_dead-letter_r1"
        );
    }
}
