//! The sink kinds, and the one place that maps each to its code: its name in
//! `kind:`, whether its targets need a topic, what its broker refuses in a
//! topic, and how its sink starts. Adding a kind is its folder under
//! `src/sink/` plus one arm in each `match` here (see CONTRIBUTING.md).

use std::sync::Arc;

use crate::config::SinkConfig;
use crate::route::Template;

use super::{Sink, SinkBuildError};

/// A sink kind, as written in `kind:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinkKind {
    Mqtt,
    Kafka,
    RocketMq,
    File,
    Stdout,
    /// Benchmarks and tests only (cargo feature `blackhole-sink`).
    Blackhole,
}

impl SinkKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [SinkKind; 6] = [
        SinkKind::Mqtt,
        SinkKind::Kafka,
        SinkKind::RocketMq,
        SinkKind::File,
        SinkKind::Stdout,
        SinkKind::Blackhole,
    ];

    /// The `kind:` value; also the `kind` label of metrics.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Mqtt => "mqtt",
            SinkKind::Kafka => "kafka",
            SinkKind::RocketMq => "rocketmq",
            SinkKind::File => "file",
            SinkKind::Stdout => "stdout",
            SinkKind::Blackhole => "blackhole",
        }
    }

    /// The kind a `kind:` value names.
    pub fn from_name(name: &str) -> Option<SinkKind> {
        SinkKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// `mqtt, kafka, …` for error messages: the kinds a configuration of
    /// this build may use.
    pub fn names() -> String {
        SinkKind::ALL
            .into_iter()
            .filter(|kind| cfg!(feature = "blackhole-sink") || *kind != SinkKind::Blackhole)
            .map(SinkKind::name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True when a target on such a sink must name a destination topic.
    pub fn needs_topic(self) -> bool {
        match self {
            SinkKind::Mqtt | SinkKind::Kafka | SinkKind::RocketMq => true,
            SinkKind::File | SinkKind::Stdout | SinkKind::Blackhole => false,
        }
    }

    /// What the broker would refuse in this topic whatever the message: the
    /// whole name when it has no placeholder, else the fixed text around
    /// them.
    pub fn topic_problem(self, topic: &Template) -> Option<String> {
        use super::kafka::topic_names as kafka;
        use super::mqtt::topic_names as mqtt;
        match self {
            SinkKind::Kafka if topic.is_literal() => kafka::kafka_topic_problem(topic.as_str()),
            SinkKind::Kafka => topic.literal_parts().find_map(kafka::kafka_chars_problem),
            SinkKind::Mqtt if topic.is_literal() => mqtt::mqtt_topic_problem(topic.as_str()),
            SinkKind::Mqtt => topic.literal_parts().find_map(mqtt::mqtt_chars_problem),
            SinkKind::RocketMq if topic.is_literal() => {
                super::rocketmq::topic_names::check_topic(topic.as_str()).err()
            }
            _ => None,
        }
    }

    /// A destination this kind's broker accepts, made from a name the bridge
    /// derived itself (a dead-letter topic, an unrouted message's platform
    /// topic); configured names are checked, never rewritten.
    pub fn derived_topic(self, raw: &str) -> String {
        match self {
            SinkKind::Mqtt => super::mqtt::topic_names::mqtt_topic(raw),
            SinkKind::Kafka => super::kafka::topic_names::kafka_topic(raw),
            SinkKind::RocketMq => super::rocketmq::topic_names::sanitize_topic(raw),
            SinkKind::File | SinkKind::Stdout | SinkKind::Blackhole => raw.to_string(),
        }
    }
}

impl std::fmt::Display for SinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Starts the sink of one config entry.
pub fn build(name: &str, config: &SinkConfig) -> Result<Arc<dyn Sink>, SinkBuildError> {
    match config {
        SinkConfig::Mqtt(c) => Ok(Arc::new(super::mqtt::MqttSink::start(name, c)?)),
        SinkConfig::File(c) => Ok(Arc::new(super::file::FileSink::start(name, c).map_err(
            |source| SinkBuildError::File {
                name: name.to_string(),
                path: c.path.display().to_string(),
                source,
            },
        )?)),
        SinkConfig::Stdout(_) => Ok(Arc::new(super::stdout::StdoutSink::new(name))),
        SinkConfig::Blackhole(_) => Ok(Arc::new(super::blackhole::BlackholeSink::new(name))),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(c) => Ok(Arc::new(super::kafka::KafkaSink::start(name, c)?)),
        #[cfg(not(feature = "kafka"))]
        SinkConfig::Kafka(_) => Err(missing_feature(name, "Kafka", "kafka")),
        #[cfg(feature = "rocketmq")]
        SinkConfig::RocketMq(c) => Ok(Arc::new(super::rocketmq::RocketMqSink::start(name, c)?)),
        #[cfg(not(feature = "rocketmq"))]
        SinkConfig::RocketMq(_) => Err(missing_feature(name, "RocketMQ", "rocketmq")),
    }
}

#[cfg(any(not(feature = "kafka"), not(feature = "rocketmq")))]
fn missing_feature(name: &str, what: &str, feature: &str) -> SinkBuildError {
    SinkBuildError::Invalid {
        name: name.to_string(),
        message: format!("this build has no {what} support (cargo feature `{feature}`)"),
    }
}
