//! The routing table, compiled once at start: topic filters and destination
//! templates are parsed here, never per message.

pub mod filter;
pub mod template;

use std::collections::HashMap;

pub use filter::TopicFilter;
pub use template::{Template, TemplateError};

use crate::config::{RouteConfig, UnroutedPolicy};
use crate::envelope::Envelope;

/// A compiled target: which sink and how to fill its destination.
#[derive(Clone, Debug)]
pub struct Target {
    /// Index into the bridge's sink list.
    pub sink: usize,
    pub topic: Option<Template>,
    pub qos: u8,
    pub retain: bool,
}

/// A compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    filter: TopicFilter,
    pub targets: Vec<Target>,
    is_final: bool,
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
    pub unrouted: Unrouted,
}

/// A route or target that refers to something this build cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route `{route}`: {message}")]
    Invalid { route: String, message: String },
}

impl Router {
    /// Compiles the routes; `sink_index` maps sink names to their position.
    pub fn new(
        routes: &[RouteConfig],
        unrouted: &UnroutedPolicy,
        sink_index: &HashMap<String, usize>,
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
                let topic = target
                    .topic
                    .as_deref()
                    .map(Template::parse)
                    .transpose()
                    .map_err(invalid)?;
                targets.push(Target {
                    sink,
                    topic,
                    qos: target.qos.unwrap_or(1),
                    retain: target.retain.unwrap_or(false),
                });
            }
            compiled.push(Route {
                name,
                filter: TopicFilter::new(&route.matcher.topic),
                targets,
                is_final: route.is_final,
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
        Ok(Router {
            routes: compiled,
            unrouted,
        })
    }

    /// The routes a message matches, in order, honouring `final`.
    pub fn matching<'a>(&'a self, envelope: &Envelope) -> Vec<&'a Route> {
        let Some(topic) = envelope.topic() else {
            return Vec::new();
        };
        let mut matched = Vec::new();
        for route in &self.routes {
            if route.filter.matches(topic) {
                matched.push(route);
                if route.is_final {
                    break;
                }
            }
        }
        matched
    }
}
