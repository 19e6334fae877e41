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

/// All routes' filters in one tree keyed by topic level, so a topic is
/// matched against every filter in one walk of its levels instead of one
/// comparison per route.
#[derive(Debug, Default, Clone)]
pub struct FilterIndex {
    root: Node,
}

#[derive(Debug, Default, Clone)]
struct Node {
    exact: std::collections::HashMap<String, Node>,
    plus: Option<Box<Node>>,
    /// Routes whose filter ends in `#` here.
    rest: Vec<usize>,
    /// Routes whose filter ends exactly here.
    end: Vec<usize>,
}

impl FilterIndex {
    /// Adds the filter of route `index` (syntax already checked by the config parser).
    pub fn insert(&mut self, filter: &str, index: usize) {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.rest.push(index);
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                other => node = node.exact.entry(other.to_string()).or_default(),
            }
        }
        node.end.push(index);
    }

    /// The indices of every route whose filter matches `topic`, ascending.
    pub fn matches(&self, topic: &str, out: &mut Vec<usize>) {
        out.clear();
        collect(&self.root, topic.split('/'), out);
        if out.len() > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }
}

/// Walks the topic's levels lazily: a branch that ends in `#` only (the
/// catch-all route) never splits the rest of the topic.
fn collect(node: &Node, mut levels: std::str::Split<'_, char>, out: &mut Vec<usize>) {
    out.extend_from_slice(&node.rest);
    if node.exact.is_empty() && node.plus.is_none() && node.end.is_empty() {
        return;
    }
    let Some(first) = levels.next() else {
        out.extend_from_slice(&node.end);
        return;
    };
    if let Some(child) = node.exact.get(first) {
        collect(child, levels.clone(), out);
    }
    if let Some(plus) = &node.plus {
        collect(plus, levels, out);
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    /// The index agrees with the one-filter-at-a-time matcher.
    #[test]
    fn index_matches_like_single_filters() {
        let filters = [
            "/+/+/thing/event/property/post",
            "/+/+/thing/event/+/post",
            "/as/mqtt/status/#",
            "#",
            "/#",
            "/+",
            "/+/",
            "/a1B/+/thing/lifecycle",
            "/a1B/dev1/thing/lifecycle",
        ];
        let topics = [
            "/a1B/dev1/thing/event/property/post",
            "/a1B/dev1/thing/event/alarm/post",
            "/as/mqtt/status/a1B/dev1",
            "/as/mqtt/status",
            "/as/mqtt",
            "/x",
            "/x/",
            "/x/y",
            "/a1B/dev1/thing/lifecycle",
            "/a1C/d/thing/lifecycle",
            "a1B/dev1/thing/event/property/post",
        ];
        let mut index = FilterIndex::default();
        for (i, f) in filters.iter().enumerate() {
            index.insert(f, i);
        }
        let mut got = Vec::new();
        for topic in topics {
            index.matches(topic, &mut got);
            let want: Vec<usize> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| TopicFilter::new(f).matches(topic))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(got, want, "{topic}");
        }
    }
}
