//! `kind: stdout` takes no settings.

use serde::{Deserialize, Serialize};

/// JSON lines on standard output, for trying routes out.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    pub kind: String,
}
