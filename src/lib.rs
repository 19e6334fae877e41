//! amqp-bridge: consumes an AMQP 1.0 source (first of all Alibaba Cloud IoT
//! Platform's server-side subscription) and forwards each message to the sinks
//! its routes name, settling it at the source only after they confirmed.

/// The git commit this build came from (`GIT_COMMIT` or `git rev-parse`).
pub const BUILD_COMMIT: &str = env!("AMQP_BRIDGE_COMMIT");

/// `VERSION (commit COMMIT)`, as `--version` prints it.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AMQP_BRIDGE_COMMIT"),
    ")"
);

pub mod backoff;
pub mod bridge;
pub mod config;
pub mod dedup;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod envelope;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod pipeline;
pub mod route;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tls;
