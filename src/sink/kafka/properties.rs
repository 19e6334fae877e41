//! Free-form librdkafka properties (`properties:` of a Kafka sink), printed
//! with credentials masked.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// Free-form client properties; names that look like credentials print as
/// `***` in `check` output and in Debug.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct ClientProperties(pub BTreeMap<String, String>);

impl ClientProperties {
    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_property(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect()
    }
}

impl Serialize for ClientProperties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(s)
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.redacted().fmt(f)
    }
}

/// True for librdkafka property names that hold credentials.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.oauthbearer.config",
        "ssl.key.pem",
        "ssl.keystore",
        "token",
    ]
    .iter()
    .any(|s| name.contains(s))
}
