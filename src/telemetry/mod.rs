//! What an operator sees: logs, Prometheus metrics, `/healthz` and `/readyz`,
//! and the periodic summary line. The metrics are the one set of counters that
//! the endpoint, the demo's status line, the summary and the tests all read.

pub(crate) mod health;
pub mod http;
mod logging;
pub(crate) mod metrics;
mod process;
pub(crate) mod summary;

pub use health::{Health, Readiness};
pub use logging::{init_logging, LogFormat};
pub use metrics::{ConnectionMetrics, Metrics, SinkMetrics, SourceOutcome, UnroutedMetrics};
