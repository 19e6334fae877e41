//! The routing table, compiled once at start: topic filters and destination
//! templates are parsed here, never per message.

pub mod filter;
pub mod status_order;
pub mod template;

use std::collections::HashMap;

pub use filter::{FilterIndex, TopicFilter};
pub use template::{Template, TemplateError};

use crate::config::{Predicate, RouteConfig, UnroutedPolicy};
use crate::envelope::Envelope;
use crate::sink::{DestinationTemplate, SinkKind};

/// A compiled target: which sink and how to fill its destination.
#[derive(Clone, Debug)]
pub struct Target {
    /// Index into the plan's sinks.
    pub sink: usize,
    pub destination: DestinationTemplate,
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Position in the routing table (indexes per-route metrics).
    pub index: usize,
    properties: Vec<(String, Predicate)>,
    json: Vec<(Vec<String>, Predicate)>,
    pub targets: Vec<Target>,
    is_final: bool,
    /// Drop device status messages older than the last one forwarded.
    pub order_by_time: bool,
}

impl Route {
    fn conditions_hold(&self, envelope: &Envelope) -> bool {
        let properties_hold = self
            .properties
            .iter()
            .all(|(name, p)| envelope.property(name).is_some_and(|v| p.holds(v)));
        if !properties_hold || self.json.is_empty() {
            return properties_hold;
        }
        let Some(json) = envelope.json() else {
            return false;
        };
        self.json.iter().all(|(path, p)| {
            template::json_field(json, path).is_some_and(|v| match v {
                serde_json::Value::String(s) => p.holds(s),
                other => p.holds(&other.to_string()),
            })
        })
    }
}

/// What to do with a message no route matched, with sink names resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unrouted {
    Accept,
    Release,
    Sink(usize),
}

/// All routes in order.
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<Route>,
    filters: FilterIndex,
    pub unrouted: Unrouted,
}

/// A route or target that refers to something this build cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route `{route}`: {message}")]
    Invalid { route: String, message: String },
}

impl Router {
    /// Compiles the routes; `sink_index` maps sink names to their position,
    /// `sink_kinds` gives each position's kind.
    pub fn new(
        routes: &[RouteConfig],
        unrouted: &UnroutedPolicy,
        sink_index: &HashMap<String, usize>,
        sink_kinds: &[SinkKind],
    ) -> Result<Router, RouteError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for (i, route) in routes.iter().enumerate() {
            let name = route.name.clone().unwrap_or_else(|| format!("route-{i}"));
            let invalid = |message: String| RouteError::Invalid {
                route: name.clone(),
                message,
            };
            let mut targets = Vec::with_capacity(route.to.len());
            for target in &route.to {
                let sink = *sink_index
                    .get(&target.sink.0)
                    .ok_or_else(|| invalid(format!("no sink `{}`", target.sink)))?;
                targets.push(Target {
                    sink,
                    destination: DestinationTemplate::of(sink_kinds[sink], target),
                });
            }
            compiled.push(Route {
                name,
                index: i,
                properties: route.matcher.properties.clone().into_iter().collect(),
                json: route
                    .matcher
                    .json
                    .iter()
                    .map(|(path, p)| (path.split('.').map(str::to_string).collect(), p.clone()))
                    .collect(),
                targets,
                is_final: route.is_final,
                order_by_time: route.order_by == Some(crate::config::OrderBy::Time),
            });
        }
        let unrouted = match unrouted {
            UnroutedPolicy::Accept => Unrouted::Accept,
            UnroutedPolicy::Release => Unrouted::Release,
            UnroutedPolicy::Sink(name) => {
                Unrouted::Sink(*sink_index.get(&name.0).ok_or_else(|| RouteError::Invalid {
                    route: "unrouted".into(),
                    message: format!("no sink `{name}`"),
                })?)
            }
        };
        let mut filters = FilterIndex::default();
        for (i, route) in routes.iter().enumerate() {
            filters.insert(&route.matcher.topic, i);
        }
        Ok(Router {
            routes: compiled,
            filters,
            unrouted,
        })
    }

    /// The route names in table order (the `route` label of metrics).
    pub fn route_names(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.name.clone()).collect()
    }

    /// The routes a message matches, in order, honouring `final`.
    pub fn matching<'a>(&'a self, envelope: &Envelope) -> Vec<&'a Route> {
        let Some(topic) = envelope.topic() else {
            return Vec::new();
        };
        let mut candidates = Vec::new();
        self.filters.matches(topic, &mut candidates);
        let mut matched = Vec::new();
        for route in candidates.into_iter().map(|i| &self.routes[i]) {
            if route.conditions_hold(envelope) {
                matched.push(route);
                if route.is_final {
                    break;
                }
            }
        }
        matched
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn router(routes: &str) -> Router {
        let text = format!(
            "source: {{ kind: aliyun, url: 'amqps://h:5671', access_key_id: a, access_key_secret: b, \
             consumer_group_id: c, client_id: d }}\nsinks:\n  s: {{ kind: stdout }}\nroutes:\n{routes}"
        );
        let config = Config::parse(&text, Path::new("t.yaml"), |_| None).unwrap();
        let index = HashMap::from([("s".to_string(), 0)]);
        Router::new(
            &config.routes,
            &config.unrouted,
            &index,
            &config.sinks.kinds(),
        )
        .unwrap()
    }

    fn envelope(topic: &str, props: &[(&str, &str)], body: &str) -> Envelope {
        let mut properties = vec![("topic".to_string(), topic.to_string())];
        properties.extend(props.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Envelope::new(bytes::Bytes::from(body.to_string()), properties)
    }

    fn names(router: &Router, e: &Envelope) -> Vec<String> {
        router.matching(e).iter().map(|r| r.name.clone()).collect()
    }

    #[test]
    fn every_matching_route_fires_until_a_final_one() {
        let r = router(
            "  - { name: props, final: true, match: { topic: '/+/+/thing/event/property/post' }, to: [ { sink: s } ] }\n\
             \x20 - { name: events, match: { topic: '/+/+/thing/event/+/post' }, to: [ { sink: s } ] }\n\
             \x20 - { name: all, match: { topic: '#' }, to: [ { sink: s } ] }\n",
        );
        assert_eq!(
            names(&r, &envelope("/p/d/thing/event/property/post", &[], "")),
            ["props"]
        );
        assert_eq!(
            names(&r, &envelope("/p/d/thing/event/alarm/post", &[], "")),
            ["events", "all"]
        );
        assert_eq!(
            names(&r, &envelope("/as/mqtt/status/p/d", &[], "")),
            ["all"]
        );
    }

    #[test]
    fn property_and_json_predicates() {
        let r = router(
            "  - name: tenant\n    match: { topic: '#', properties: { tenant: t1 } }\n    to: [ { sink: s } ]\n\
             \x20 - name: regions\n    match: { topic: '#', properties: { region: [eu, us] } }\n    to: [ { sink: s } ]\n\
             \x20 - name: gateways\n    match: { topic: '#', properties: { deviceType: { regex: '^Gate' } } }\n    to: [ { sink: s } ]\n\
             \x20 - name: hot\n    match: { topic: '#', json: { items.T.value: [30, 31], status: online } }\n    to: [ { sink: s } ]\n",
        );
        let e = |props: &[(&str, &str)], body: &str| envelope("/p/d/x", props, body);
        assert_eq!(names(&r, &e(&[("tenant", "t1")], "")), ["tenant"]);
        assert!(names(&r, &e(&[("tenant", "t2")], "")).is_empty());
        assert_eq!(names(&r, &e(&[("region", "us")], "")), ["regions"]);
        assert!(names(&r, &e(&[("region", "cn")], "")).is_empty());
        assert_eq!(
            names(&r, &e(&[("deviceType", "Gateway")], "")),
            ["gateways"]
        );
        assert!(names(&r, &e(&[("deviceType", "Sensor")], "")).is_empty());
        let hot = r#"{"items":{"T":{"value":31}},"status":"online"}"#;
        assert_eq!(names(&r, &e(&[], hot)), ["hot"]);
        assert!(names(
            &r,
            &e(&[], r#"{"items":{"T":{"value":12}},"status":"online"}"#)
        )
        .is_empty());
        assert!(names(&r, &e(&[], "not json")).is_empty());
    }
}
