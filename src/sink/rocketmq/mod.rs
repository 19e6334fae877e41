//! RocketMQ sink: a focused producer of the remoting protocol.
//!
//! The route of a topic comes from the name servers (GET_ROUTEINFO_BY_TOPIC)
//! and is cached for 30 s; each message goes to the next writable queue in
//! turn (SEND_MESSAGE_V2), skipping for a moment a broker that just failed.
//! A copy resolves only on SEND_OK. Why not rocketmq-client-rust: see
//! NOTES.md (build cost measured on this project's machine).
//!
//! `config` is the sink's YAML schema (always built, so `check` reads a
//! RocketMQ sink in any build); everything else needs cargo feature
//! `rocketmq`.

#[cfg(feature = "rocketmq")]
mod acl;
#[cfg(feature = "rocketmq")]
pub(crate) mod codec;
pub mod config;
#[cfg(feature = "rocketmq")]
mod connection;
#[cfg(feature = "rocketmq")]
mod message;
#[cfg(feature = "rocketmq")]
mod name_server;
#[cfg(feature = "rocketmq")]
mod producer;
#[cfg(feature = "rocketmq")]
mod response;
#[cfg(feature = "rocketmq")]
mod route;
pub mod topic_names;
#[cfg(feature = "rocketmq")]
mod topic_routes;

#[cfg(feature = "rocketmq")]
pub use acl::{sign, AclCredentials};
#[cfg(feature = "rocketmq")]
pub use codec::{request_code, response_code, Command};
#[cfg(feature = "rocketmq")]
pub use connection::{Connection, Pool, RemotingError};
#[cfg(feature = "rocketmq")]
pub use message::{encode_properties, property_name, RESERVED_PREFIX};
#[cfg(feature = "rocketmq")]
pub use producer::RocketMqSink;
#[cfg(feature = "rocketmq")]
pub use response::classify;
#[cfg(feature = "rocketmq")]
pub use route::{parse_lenient, MessageQueue, TopicRouteData};
pub use topic_names::check_topic;

/// A poisoned lock still holds consistent maps here (no invariant spans an
/// unwind), so it is used as is.
#[cfg(feature = "rocketmq")]
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(all(feature = "rocketmq", feature = "fuzzing"))]
/// What a broker's answer means for the message sent (for the fuzz target).
pub(crate) fn classify_response(
    command: &Command,
    not_durable: config::NotDurablePolicy,
) -> Result<(), crate::sink::SinkError> {
    response::classify(command.code, command.remark.as_deref(), not_durable)
}
