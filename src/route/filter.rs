//! MQTT-style topic filters (`+` one level, `#` the rest), compiled once.

/// One level of a compiled filter.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Exact(String),
    AnyOne,
    Rest,
}

/// A compiled filter; matching allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicFilter {
    levels: Vec<Level>,
}

impl TopicFilter {
    /// Compiles a filter whose syntax was checked by the config parser.
    pub fn new(filter: &str) -> Self {
        let levels = filter
            .split('/')
            .map(|l| match l {
                "+" => Level::AnyOne,
                "#" => Level::Rest,
                other => Level::Exact(other.to_string()),
            })
            .collect();
        TopicFilter { levels }
    }

    /// True when `topic` matches. `#` also matches its parent level
    /// (`a/#` matches `a`), as in MQTT.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::AnyOne => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => match parts.next() {
                    Some(got) if got == want => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(filter: &str, topic: &str) -> bool {
        TopicFilter::new(filter).matches(topic)
    }

    #[test]
    fn platform_topics_with_leading_slash() {
        let props = "/+/+/thing/event/property/post";
        assert!(m(props, "/a1B/dev1/thing/event/property/post"));
        assert!(!m(props, "/a1B/dev1/thing/event/alarm/post"));
        assert!(!m(props, "a1B/dev1/thing/event/property/post"));
        assert!(m(
            "/+/+/thing/event/+/post",
            "/a1B/dev1/thing/event/alarm/post"
        ));
        assert!(m("/as/mqtt/status/#", "/as/mqtt/status/a1B/dev1"));
        assert!(m("/as/mqtt/status/#", "/as/mqtt/status"));
        assert!(!m("/as/mqtt/status/#", "/as/mqtt"));
        assert!(m("#", "/anything/at/all"));
        assert!(m("/#", "/x"));
        assert!(!m("/+", "/x/y"));
        assert!(m("/+/", "/x/"));
        assert!(!m("/a1B/+/thing/lifecycle", "/a1C/d/thing/lifecycle"));
    }
}
