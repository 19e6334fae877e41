//! `kind: file` settings: the path and optional size rotation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// JSON lines appended to a file, fsynced before a message counts as delivered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    pub kind: String,
    pub path: PathBuf,
    /// Start a new file once the current one reaches this many bytes; the full
    /// one is renamed to `PATH.<unix-millis>`. Unset = never rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_bytes: Option<u64>,
}
