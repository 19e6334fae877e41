//! The `kind: kafka` sink's configuration schema: brokers, TLS, SASL,
//! compression and the producer settings users tune. Every value is checked
//! while the YAML is parsed, so a mistake is reported at its own line and key.
//!
//! Defaults keep the delivery contract: acks=all and idempotence on. Settings
//! that would let a record count as delivered before the cluster has it
//! durably are refused here (acks 0) or need an explicit companion setting
//! (`acks: 1` needs `idempotence: false`) and are then warned about by
//! `check` and at start-up.

use std::fmt;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::properties::ClientProperties;
use crate::config::values::{duration_in, integer_in, parse_str_with};
use crate::config::{HumanDuration, Secret, TlsConfig};

/// A Kafka cluster (librdkafka producer, acks=all and idempotence by default).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "RawKafkaSinkConfig")]
pub struct KafkaSinkConfig {
    /// Always `kafka` (the key that selected this schema).
    pub kind: String,
    /// Bootstrap servers, `host:port`.
    pub brokers: Vec<String>,
    /// TLS to every broker (`SSL`, or `SASL_SSL` with `sasl`); present, even
    /// as `tls: {}`, means on, with the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// TLS to the brokers, done by librdkafka's OpenSSL; the broker's
    /// certificate is verified, against its host name too (only raw
    /// `properties:` can turn that off, and `check` warns when they do).
    pub tls: Option<TlsConfig>,
    /// SASL login (PLAIN or SCRAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Record batch compression (`compression.type`).
    pub compression: Compression,
    /// Broker acknowledgement a record waits for (`acks`).
    pub acks: Acks,
    /// Idempotent producer (`enable.idempotence`): no duplicates or reordering
    /// from the producer's own retries.
    pub idempotence: bool,
    /// How long records wait to fill a batch (`linger.ms`); librdkafka's
    /// default (5 ms) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<HumanDuration>,
    /// Largest batch per partition in bytes (`batch.size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// How long librdkafka tries one record before reporting it failed
    /// (`message.timeout.ms`; the bridge then retries it with backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_timeout: Option<HumanDuration>,
    /// Any librdkafka producer property; applied last, so it overrides the
    /// keys above. Values whose names look secret print as `***`.
    pub properties: ClientProperties,
    /// How long a topic the cluster calls unknown is retried before its
    /// copies are dead-lettered (metadata lag, a topic being created).
    pub topic_missing_grace: HumanDuration,
}

/// The YAML as written; [`KafkaSinkConfig`] adds the rules spanning keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafkaSinkConfig {
    kind: String,
    #[serde(deserialize_with = "non_empty_brokers")]
    brokers: Vec<String>,
    #[serde(default)]
    tls: Option<TlsConfig>,
    #[serde(default)]
    sasl: Option<KafkaSasl>,
    #[serde(default)]
    compression: Compression,
    #[serde(default)]
    acks: Acks,
    #[serde(default = "default_true")]
    idempotence: bool,
    #[serde(default, deserialize_with = "linger")]
    linger: Option<HumanDuration>,
    #[serde(default, deserialize_with = "batch_size")]
    batch_size: Option<u32>,
    #[serde(default, deserialize_with = "delivery_timeout")]
    delivery_timeout: Option<HumanDuration>,
    #[serde(default, deserialize_with = "properties")]
    properties: ClientProperties,
    #[serde(default = "default_topic_missing_grace")]
    topic_missing_grace: HumanDuration,
}

impl TryFrom<RawKafkaSinkConfig> for KafkaSinkConfig {
    type Error = String;
    fn try_from(raw: RawKafkaSinkConfig) -> Result<Self, String> {
        if raw.acks == Acks::Leader && raw.idempotence {
            // Normally reported at the `acks` key already (see `Acks`'s parser).
            return Err(ACKS_1_NEEDS_IDEMPOTENCE_OFF.into());
        }
        check_linger_and_timeout(&raw)?;
        check_reconnect_backoff(&raw.properties)?;
        Ok(KafkaSinkConfig {
            kind: raw.kind,
            brokers: raw.brokers,
            tls: raw.tls,
            sasl: raw.sasl,
            compression: raw.compression,
            acks: raw.acks,
            idempotence: raw.idempotence,
            linger: raw.linger,
            batch_size: raw.batch_size,
            delivery_timeout: raw.delivery_timeout,
            properties: raw.properties,
            topic_missing_grace: raw.topic_missing_grace,
        })
    }
}

const ACKS_1_NEEDS_IDEMPOTENCE_OFF: &str = "`acks: 1` needs `idempotence: false` (an \
     idempotent producer waits for all in-sync replicas); both let a record count as \
     delivered before every replica has it";

/// librdkafka's default `message.timeout.ms`.
const DEFAULT_DELIVERY_TIMEOUT_MS: f64 = 300_000.0;

/// A raw property as a number of milliseconds, when set and numeric (a
/// value librdkafka would refuse is left for it to name).
fn raw_ms(properties: &ClientProperties, keys: &[&str]) -> Option<(String, f64)> {
    keys.iter().find_map(|key| {
        let value = properties.0.get(*key)?;
        Some((
            format!("properties.{key}"),
            value.trim().parse::<f64>().ok()?,
        ))
    })
}

/// librdkafka refuses to start when a set `linger.ms` is not below
/// `message.timeout.ms` (0 meaning no timeout); say so at `check` time.
fn check_linger_and_timeout(raw: &RawKafkaSinkConfig) -> Result<(), String> {
    let linger = raw_ms(&raw.properties, &["linger.ms", "queue.buffering.max.ms"]).or_else(|| {
        raw.linger
            .map(|l| ("linger".to_string(), l.0.as_secs_f64() * 1000.0))
    });
    let Some((linger_key, linger_ms)) = linger else {
        return Ok(()); // librdkafka lowers its own default linger to fit
    };
    let (timeout_key, timeout_ms) = raw_ms(
        &raw.properties,
        &["message.timeout.ms", "delivery.timeout.ms"],
    )
    .or_else(|| {
        raw.delivery_timeout
            .map(|t| ("delivery_timeout".to_string(), t.0.as_secs_f64() * 1000.0))
    })
    .unwrap_or_else(|| {
        (
            "delivery_timeout (default 5m)".to_string(),
            DEFAULT_DELIVERY_TIMEOUT_MS,
        )
    });
    if timeout_ms != 0.0 && timeout_ms <= linger_ms {
        return Err(format!(
            "`{linger_key}` ({linger_ms} ms) must be shorter than `{timeout_key}` \
             ({timeout_ms} ms): a record would time out while it waits for its batch"
        ));
    }
    Ok(())
}

/// Raw `reconnect.backoff.max.ms` below raw `reconnect.backoff.ms` is
/// refused by librdkafka at start; say so at `check` time. (Either one set
/// raw also turns off the sink's own default, see `client_config`.)
fn check_reconnect_backoff(properties: &ClientProperties) -> Result<(), String> {
    if let (Some((_, min)), Some((_, max))) = (
        raw_ms(properties, &["reconnect.backoff.ms"]),
        raw_ms(properties, &["reconnect.backoff.max.ms"]),
    ) {
        if max < min {
            return Err(format!(
                "`properties.reconnect.backoff.max.ms` ({max}) must be >= \
                 `properties.reconnect.backoff.ms` ({min})"
            ));
        }
    }
    Ok(())
}

/// Raw librdkafka properties, as strings; `acks=0` (by either name) is
/// refused at its own line, like `acks: 0`.
fn properties<'de, D: Deserializer<'de>>(d: D) -> Result<ClientProperties, D::Error> {
    struct PropertiesVisitor;
    impl<'de> serde::de::Visitor<'de> for PropertiesVisitor {
        type Value = ClientProperties;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of librdkafka property names to values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<ClientProperties, A::Error> {
            let mut properties = std::collections::BTreeMap::new();
            while let Some(key) = map.next_key::<String>()? {
                let value = map.next_value_seed(PropertyValue(&key))?;
                if properties.insert(key.clone(), value).is_some() {
                    return Err(A::Error::custom(format!("property `{key}` given twice")));
                }
            }
            Ok(ClientProperties(properties))
        }
    }
    d.deserialize_map(PropertiesVisitor)
}

/// One raw property's value; the check runs inside the parser's visitor so
/// that its error carries the value's line and key path.
struct PropertyValue<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for PropertyValue<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let key = self.0;
        parse_str_with(d, "a property value", |text| {
            if matches!(key, "acks" | "request.required.acks") && text.trim() == "0" {
                Err(format!(
                    "`{key}: 0` is refused: the broker would confirm nothing, and the bridge \
                     accepts a message only after its broker confirmed it (use all, or 1 \
                     with idempotence: false)"
                ))
            } else {
                Ok(text.to_string())
            }
        })
    }
}

fn default_true() -> bool {
    true
}
fn default_topic_missing_grace() -> HumanDuration {
    HumanDuration::from_secs(60)
}
fn non_empty_brokers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let brokers = Vec::<String>::deserialize(d)?;
    if brokers.is_empty() || brokers.iter().any(|b| !b.contains(':')) {
        return Err(D::Error::custom("`brokers` needs at least one host:port"));
    }
    Ok(brokers)
}
/// librdkafka's own range for `linger.ms`.
fn linger<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
    duration_in(d, Duration::ZERO, Duration::from_secs(900)).map(Some)
}
/// librdkafka's own range for `batch.size`.
fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    integer_in(d, 1u32, 2_147_483_647).map(Some)
}
/// At least a second (a shorter one fails records a healthy cluster would
/// take); zero would mean "forever" to librdkafka, which the bridge's own
/// retry already is.
fn delivery_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
    duration_in(d, Duration::from_secs(1), Duration::from_secs(24 * 3600)).map(Some)
}

/// A SASL login to the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (`sasl.mechanism`).
    pub mechanism: SaslMechanism,
    /// The login name (`sasl.username`).
    pub username: String,
    /// Never printed (`***` in `check`, Debug and logs).
    #[serde(deserialize_with = "non_empty_password")]
    pub password: Secret,
}

fn non_empty_password<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    parse_str_with(d, "a password", |text| {
        if text.is_empty() {
            Err("empty SASL password (is its environment variable set?)".to_string())
        } else {
            Ok(Secret::new(text))
        }
    })
}

/// SASL mechanisms this build can log in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// Username and password in the clear inside TLS (Confluent Cloud, Event Hubs).
    Plain,
    /// Salted challenge-response with SHA-256 (ApsaraMQ for Kafka, Redpanda).
    ScramSha256,
    /// The same with SHA-512 (Amazon MSK offers only this one).
    ScramSha512,
}

impl SaslMechanism {
    /// The name librdkafka (and the Kafka protocol) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl Serialize for SaslMechanism {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SaslMechanism {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(
            d,
            "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
            |text| {
                match text.trim().to_ascii_uppercase().as_str() {
                "PLAIN" => Ok(SaslMechanism::Plain),
                "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
                "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
                "OAUTHBEARER" => Err("SASL mechanism OAUTHBEARER is not supported yet: fetching \
                     OIDC tokens needs librdkafka built with libcurl, which this build leaves out \
                     (see NOTES.md); use PLAIN or SCRAM-SHA-256/512"
                    .to_string()),
                "GSSAPI" => Err("SASL mechanism GSSAPI (Kerberos) is not supported: it needs \
                     librdkafka built with Cyrus SASL; use PLAIN or SCRAM-SHA-256/512"
                    .to_string()),
                _ => Err(format!(
                    "unknown SASL mechanism `{text}`, expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                )),
            }
            },
        )
    }
}

/// Record batch compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Records are sent as they are (the default).
    #[default]
    None,
    /// gzip (zlib): small batches, the most CPU.
    Gzip,
    /// Snappy: fast, moderate ratio.
    Snappy,
    /// LZ4: fast, moderate ratio.
    Lz4,
    /// Zstandard: a good ratio at moderate CPU (brokers 2.1+).
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Which broker acknowledgement confirms a record. `0` (none at all) is
/// refused: the bridge accepts a message only after its broker confirmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acks {
    /// Every in-sync replica (`acks=all`, the default).
    #[default]
    All,
    /// The partition leader only (`acks=1`): lost if the leader fails
    /// before replicating.
    Leader,
}

impl Acks {
    /// librdkafka's `acks` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Acks::All => "all",
            Acks::Leader => "1",
        }
    }
}

impl Serialize for Acks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Acks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Acks;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("all or 1")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Acks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Acks, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Acks, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "all" | "-1" => Ok(Acks::All),
                    // Checked here, not only once the whole sink is read,
                    // so that the error names this key's line.
                    "1" if crate::config::values::current_sink_not_idempotent() == Some(false) => {
                        Err(E::custom(ACKS_1_NEEDS_IDEMPOTENCE_OFF))
                    }
                    "1" => Ok(Acks::Leader),
                    "0" => Err(E::custom(
                        "`acks: 0` is refused: the broker would confirm nothing, and the bridge \
                         accepts a message only after its broker confirmed it (use all, or 1 \
                         with idempotence: false)",
                    )),
                    other => Err(E::custom(format!(
                        "unknown acks `{other}`, expected all or 1"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}
