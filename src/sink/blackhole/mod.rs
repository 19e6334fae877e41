//! The null sink, `kind: blackhole` (YAML reads a bare `null` as no value;
//! Vector names its null sink the same): confirms every copy at once and
//! keeps nothing. For benchmarks and tests only — it measures the bridge
//! without a broker — so the configuration accepts it only in a build with
//! cargo feature `blackhole-sink`; anywhere else it would drop messages
//! while accepting them.

pub mod config;

use futures_util::future::BoxFuture;

use super::{Outgoing, Sink, SinkError, SinkKind};

/// Confirms without sending.
pub struct BlackholeSink {
    name: String,
}

impl BlackholeSink {
    /// A sink named `name`.
    pub fn new(name: &str) -> BlackholeSink {
        BlackholeSink {
            name: name.to_string(),
        }
    }
}

impl Sink for BlackholeSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, _message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn kind(&self) -> SinkKind {
        SinkKind::Blackhole
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}
