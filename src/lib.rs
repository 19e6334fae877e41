//! amqp-bridge: consumes an AMQP 1.0 source (first of all Alibaba Cloud IoT
//! Platform's server-side subscription) and forwards each message to the sinks
//! its routes name, settling it at the source only after they confirmed.

pub mod backoff;
pub mod bridge;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod emulator;
pub mod envelope;
pub mod pipeline;
pub mod route;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tls;
