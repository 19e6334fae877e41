//! amqp-bridge: consumes an AMQP 1.0 source (first of all Alibaba Cloud IoT
//! Platform's server-side subscription) and forwards each message to the sinks
//! its routes name, settling it at the source only after they confirmed.
//!
//! # One message, from source to settle
//!
//! 1. [`config`] reads the YAML once: `${VAR}` interpolation, every key with
//!    its file:line:column on error, secrets that print as `***`.
//!    [`bridge::Bridge::start`] builds the sinks, the [`route::Router`] and the
//!    [`pipeline::Pipeline`], then the source connections.
//! 2. [`source::subscriber`] keeps N connections up (a freshly signed login
//!    per attempt for the platform, see [`source::aliyun`]; fixed credentials
//!    for a generic broker, see [`source::connect`]). Each runs one receiver
//!    in [`source::link`], which grants credit only for free in-flight slots,
//!    so a stalled sink stops intake instead of filling memory.
//! 3. [`source::message`] turns a delivery into an [`envelope::Envelope`]:
//!    the body as shared bytes, the properties as text. The delivery becomes
//!    a [`envelope::Settlement`], which must be settled exactly once.
//! 4. [`pipeline`] asks [`dedup`] whether the messageId was delivered
//!    already, then takes the message's [`route::MessagePlan`] from
//!    [`route::Router::plan`]: the matching routes (topic filter index,
//!    property and JSON predicates) and every copy with its
//!    [`sink::Destination`] rendered from the target's [`route::Template`]s,
//!    or what the unrouted policy says. For copies of `order_by` routes it
//!    waits the message's turn in [`route::status_order`].
//! 5. Each copy goes to its [`sink::Sink`] ([`sink::mqtt`], `sink::kafka`,
//!    `sink::rocketmq`, [`sink::file`], [`sink::stdout`]); a send resolves
//!    only when the broker confirmed it. Transient failures retry with
//!    [`backoff`] while the message keeps its slot; permanent ones go to the
//!    dead-letter sink ([`sink::record`]) or get the configured outcome.
//! 6. When every copy is confirmed (or dead-lettered), the settlement goes
//!    back to the link, which accepts at the source; a give-up or shutdown
//!    releases instead, so the source redelivers.
//!
//! Beside the path: [`telemetry`] (metrics, `/healthz`, `/readyz`, logs),
//! [`tls`] (one rustls setup, verification always on), and behind cargo
//! features the IoT Platform emulator (`emulator`), the embedded demo
//! (`demo`) and the fuzz targets' entry points (`fuzzing`).
//!
//! # What is public
//!
//! For a program that embeds the bridge: [`config::Config`] (load, check,
//! print redacted), [`bridge::Bridge`] (start, reload, drain and shut
//! down, read its [`telemetry::Metrics`]), [`telemetry::init_logging`] and
//! [`envelope::Envelope`]; with features, `emulator` and `demo`.
//! [`route`], [`sink`], [`source`] and [`tls`] stay public for the
//! project's own tests and benchmarks, which use their protocol pieces
//! (platform login signing, the AMQP connector, RocketMQ's remoting codec
//! to read what arrived, the routing table on its own); they are not a
//! stable interface. Private: the pipeline, dedup, backoff, the source's
//! subscriber, link and message decoding, the sink kinds' modules (but
//! RocketMQ's protocol), the router's filter, plan, status order and
//! template modules (their types are re-exported from [`route`]) and
//! telemetry's health, metrics and summary modules (likewise). The links
//! above into them render with `cargo doc --document-private-items`.

// The map above links into private modules on purpose: it is read in the
// source and with `--document-private-items`.
#![allow(rustdoc::private_intra_doc_links)]

/// The git commit this build came from (`GIT_COMMIT` or `git rev-parse`).
pub const BUILD_COMMIT: &str = env!("AMQP_BRIDGE_COMMIT");

/// `VERSION (commit COMMIT)`, as `--version` prints it.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AMQP_BRIDGE_COMMIT"),
    ")"
);

pub(crate) mod backoff;
pub mod bridge;
pub mod config;
pub(crate) mod dedup;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod envelope;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub(crate) mod pipeline;
pub mod route;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tls;
