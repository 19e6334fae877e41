//! Kafka sink (rdkafka `ThreadedProducer`): a record resolves only on its
//! delivery report. acks=all and idempotence are on unless the configuration
//! says otherwise. A full local queue waits (backpressure), it is not a failure.
//!
//! `config` is the sink's YAML schema (always built, so `check` reads a
//! Kafka sink in any build), `client` maps it onto librdkafka properties
//! (TLS, SASL, compression), `context` receives librdkafka's logs,
//! errors and delivery reports, `delivery` brings the reports back to the
//! runtime, `missing_topics` holds the grace period of unknown topics,
//! `producer` sends. Everything but `config` needs cargo feature `kafka`.

#[cfg(feature = "kafka")]
pub mod client;
pub mod config;
#[cfg(feature = "kafka")]
mod context;
#[cfg(feature = "kafka")]
mod delivery;
#[cfg(feature = "kafka")]
mod missing_topics;
#[cfg(feature = "kafka")]
mod producer;
pub mod properties;
pub mod topic_names;

#[cfg(feature = "kafka")]
pub use producer::KafkaSink;
