//! The routing table, compiled once at start: topic filters and destination
//! templates are parsed here, never per message. [`Router::plan`] decides a
//! message's whole fate (its copies with their destinations rendered, or the
//! unrouted policy), so the pipeline only delivers.

pub(crate) mod filter;
pub(crate) mod plan;
pub(crate) mod status_order;
pub(crate) mod template;

use std::collections::HashMap;

pub use filter::{FilterIndex, TopicFilter};
pub use plan::{MessagePlan, PlannedCopy};
pub use template::{Template, TemplateError};

use crate::config::{Predicate, RouteConfig, UnroutedPolicy};
use crate::envelope::Envelope;
use crate::sink::{Destination, DestinationTemplate, SinkKind};

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
    /// The sink's index and kind (how to address the copy).
    Sink {
        sink: usize,
        kind: SinkKind,
    },
}

/// All routes in order.
#[derive(Clone, Debug)]
pub struct Router {
    routes: Vec<Route>,
    filters: FilterIndex,
    unrouted: Unrouted,
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
                let (sink, kind) = sink_index
                    .get(&target.sink.0)
                    .and_then(|&sink| Some((sink, *sink_kinds.get(sink)?)))
                    .ok_or_else(|| invalid(format!("no sink `{}`", target.sink)))?;
                targets.push(Target {
                    sink,
                    destination: DestinationTemplate::of(kind, target),
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
                let (sink, kind) = sink_index
                    .get(&name.0)
                    .and_then(|&sink| Some((sink, *sink_kinds.get(sink)?)))
                    .ok_or_else(|| RouteError::Invalid {
                        route: "unrouted".into(),
                        message: format!("no sink `{name}`"),
                    })?;
                Unrouted::Sink { sink, kind }
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

    /// Everything that happens to `envelope`: the copies of every matching
    /// route with their destinations rendered, or the unrouted policy. An
    /// unrouted copy keeps its platform topic, made a name its broker
    /// accepts (as is on MQTT, `pk.dn.…` on Kafka).
    pub fn plan<'r>(&'r self, envelope: &Envelope) -> MessagePlan<'r> {
        let routes = self.matching(envelope);
        if routes.is_empty() {
            return match self.unrouted {
                Unrouted::Accept => MessagePlan::Accept,
                Unrouted::Release => MessagePlan::Release,
                Unrouted::Sink { sink, kind } => {
                    let topic = envelope.topic().map(|t| kind.derived_topic(t));
                    MessagePlan::Unrouted(PlannedCopy {
                        route: "unrouted",
                        sink,
                        destination: Ok(Destination::derived(kind, topic, None)),
                        ordered: false,
                    })
                }
            };
        }
        let copies = routes
            .iter()
            .flat_map(|route| {
                route.targets.iter().map(move |target| PlannedCopy {
                    route: &route.name,
                    sink: target.sink,
                    destination: target.destination.render(envelope),
                    ordered: route.order_by_time,
                })
            })
            .collect();
        MessagePlan::Routed {
            routes: routes.iter().map(|route| route.index).collect(),
            copies,
        }
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
        router_with("  s: { kind: stdout }\n", routes, "release")
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

    fn router_with(sinks: &str, routes: &str, unrouted: &str) -> Router {
        let text = format!(
            "source: {{ kind: aliyun, url: 'amqps://h:5671', access_key_id: a, access_key_secret: b, \
             consumer_group_id: c, client_id: d }}\nsinks:\n{sinks}routes:\n{routes}unrouted: {unrouted}\n"
        );
        let config = Config::parse(&text, Path::new("t.yaml"), |_| None).unwrap();
        let index = config
            .sinks
            .0
            .keys()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect();
        Router::new(
            &config.routes,
            &config.unrouted,
            &index,
            &config.sinks.kinds(),
        )
        .unwrap()
    }

    #[test]
    fn a_plan_holds_every_copy_with_its_destination_rendered() {
        let r = router_with(
            "  k: { kind: kafka, brokers: ['h:9092'] }\n  m: { kind: mqtt, url: 'mqtt://h' }\n",
            "  - name: status\n    order_by: time\n    match: { topic: '/as/mqtt/status/#' }\n    to: [ { sink: m, topic: 'st/{deviceName}' } ]\n\
             \x20 - name: all\n    match: { topic: '#' }\n    to: [ { sink: k, topic: iot, key: '{deviceName}' }, { sink: m, topic: 'x/{prop.missing}' } ]\n",
            "{ sink: k }",
        );
        let plan = r.plan(&envelope("/as/mqtt/status/p/d", &[], ""));
        assert!(plan.is_status_ordered());
        let MessagePlan::Routed { routes, copies } = plan else {
            panic!("routed expected, got {plan:?}");
        };
        assert_eq!(routes, [0, 1]);
        let summary: Vec<_> = copies
            .iter()
            .map(|c| (c.route, c.sink, c.ordered, c.destination.is_ok()))
            .collect();
        assert_eq!(
            summary,
            [
                ("status", 1, true, true),
                ("all", 0, false, true),
                ("all", 1, false, false)
            ]
        );
        assert_eq!(
            copies[0].destination.as_ref().unwrap(),
            &Destination::Mqtt {
                topic: "st/d".into(),
                qos: 1,
                retain: false
            }
        );
        assert_eq!(
            copies[1].destination.as_ref().unwrap(),
            &Destination::Kafka {
                topic: "iot".into(),
                key: Some("d".into()),
                all_headers: false
            }
        );
    }

    #[test]
    fn an_unrouted_copy_keeps_its_topic_as_its_broker_accepts_it() {
        let r = router_with(
            "  k: { kind: kafka, brokers: ['h:9092'] }\n",
            "  - { match: { topic: '/only/this' }, to: [ { sink: k, topic: t } ] }\n",
            "{ sink: k }",
        );
        let plan = r.plan(&envelope("/pk/dn/thing/event/property/post", &[], ""));
        assert!(!plan.is_status_ordered());
        let MessagePlan::Unrouted(copy) = plan else {
            panic!("unrouted expected, got {plan:?}");
        };
        assert_eq!((copy.route, copy.sink), ("unrouted", 0));
        assert_eq!(
            copy.destination.unwrap().topic(),
            Some("pk.dn.thing.event.property.post")
        );
        let release = router_with(
            "  k: { kind: kafka, brokers: ['h:9092'] }\n",
            "  - { match: { topic: '/only/this' }, to: [ { sink: k, topic: t } ] }\n",
            "release",
        );
        assert!(matches!(
            release.plan(&envelope("/x", &[], "")),
            MessagePlan::Release
        ));
    }

    #[test]
    fn a_sink_index_without_a_kind_is_refused_not_a_panic_later() {
        use crate::config::{SinkName, UnroutedPolicy};
        let index = HashMap::from([("k".to_string(), 0)]);
        let unrouted = UnroutedPolicy::Sink(SinkName("k".into()));
        assert!(Router::new(&[], &unrouted, &index, &[]).is_err());
    }
}
