//! `kind: blackhole` takes no settings.

use serde::{Deserialize, Serialize};

/// The blackhole sink's configuration block.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlackholeSinkConfig {
    pub kind: String,
}
