//! AMQP 1.0 ingress: `aliyun` signs the platform's login, `connect` opens one
//! TLS + SASL connection, `link` runs a receiver with credit bound to free
//! in-flight slots, `message` turns a delivery into an envelope, `subscriber`
//! supervises N connections with reconnects.

pub mod aliyun;
pub mod connect;
pub(crate) mod link;
pub(crate) mod message;
mod sasl_external;
pub(crate) mod subscriber;
