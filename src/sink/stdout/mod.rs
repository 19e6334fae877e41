//! JSON lines on standard output; a message is confirmed once written and flushed.

use std::io::Write as _;

use futures_util::future::BoxFuture;

pub mod config;

use super::{record::json_line, Outgoing, Sink, SinkError};

/// Writes each message as one JSON line to stdout.
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    /// A sink on the process's standard output.
    pub fn new(name: &str) -> Self {
        StdoutSink {
            name: name.to_string(),
        }
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, message: Outgoing) -> BoxFuture<'static, Result<(), SinkError>> {
        Box::pin(async move {
            let line = json_line(&message);
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| SinkError::Transient(format!("stdout: {e}")))
        })
    }

    fn kind(&self) -> crate::sink::SinkKind {
        crate::sink::SinkKind::Stdout
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
