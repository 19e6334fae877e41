//! The YAML configuration: schema, `${ENV}` interpolation, validation with
//! file/line/key errors, and printing with secrets redacted.
//!
//! Parsing runs in two passes over the same text. The first reads only the sink
//! names and kinds; the second parses everything with those known, so that a
//! reference to a missing sink or a key that does not belong to a sink's kind is
//! reported by the YAML parser at its own line and column.

mod error;
mod interpolate;
mod route;
mod sink;
pub(crate) mod source;
pub(crate) mod values;
mod warnings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

pub use error::ConfigError;
pub use interpolate::interpolate;
pub use route::{
    validate_topic_filter, HeadersMode, MatchConfig, OrderBy, Predicate, RouteConfig, TargetConfig,
    UnroutedPolicy,
};
pub use sink::{
    is_secret_property, Acks, BlackholeSinkConfig, ClientProperties, Compression, FileSinkConfig,
    KafkaSasl, KafkaSaslMechanism, KafkaSinkConfig, MqttAuthConfig, MqttAuthMode, MqttSinkConfig,
    MqttUrl, MqttVersion, NotDurablePolicy, RocketMqAcl, RocketMqSinkConfig, SinkConfig, Sinks,
    StdoutSinkConfig,
};
pub use source::{
    AmqpUrl, BackoffConfig, CreditRefill, SaslMechanism, SourceConfig, SourceFilter, SourceKind,
    UndeliverableOutcome,
};
pub use values::{HumanDuration, Secret, SinkName};

/// The whole bridge configuration (the top-level YAML keys).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub sinks: Sinks,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub unrouted: UnroutedPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<SinkName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupConfig>,
    #[serde(default = "default_max_in_flight", deserialize_with = "max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

/// `amqp-bridge-HOST`, HOST being `$HOSTNAME` (the pod name in Kubernetes, the
/// container id under Docker) or the kernel's host name: the default source
/// client id, unique per replica so replicas in one consumer group never
/// replace each other's connection.
pub fn default_client_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "local".to_string());
    format!("amqp-bridge-{host}")
}

fn default_max_in_flight() -> usize {
    1024
}
fn max_in_flight<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    values::integer_in(d, 1, 1_000_000)
}
fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration::from_secs(20)
}

/// TLS settings; server certificates are always verified. A client
/// certificate needs its key and the other way round.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "RawTls")]
pub struct TlsConfig {
    /// PEM file with the CA certificates to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for brokers that want mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The client certificate and its key, if configured.
    pub fn client_cert(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        self.cert_file.as_deref().zip(self.key_file.as_deref())
    }
}

/// A `tls` block as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "no_server_name")]
    #[allow(dead_code)] // never Some: refused while parsing
    server_name: Option<String>,
}

/// Every TLS client here (rustls for ours, librdkafka for Kafka) verifies the
/// server against the host name it connects to, with no override: accepting
/// the key would promise what is not done.
fn no_server_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    values::parse_str_with(d, "a host name", |_| {
        Err(
            "`server_name` is not supported: the server's certificate is checked against the \
             host name the bridge connects to (the url's host; for Kafka the bootstrap address, \
             then each broker's advertised name); use those names in the certificate"
                .to_string(),
        )
    })
}

impl TryFrom<RawTls> for TlsConfig {
    type Error = String;

    fn try_from(raw: RawTls) -> Result<Self, String> {
        match (&raw.cert_file, &raw.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                Err("`cert_file` and `key_file` go together (mutual TLS)".into())
            }
            _ => Ok(TlsConfig {
                ca_file: raw.ca_file,
                cert_file: raw.cert_file,
                key_file: raw.key_file,
            }),
        }
    }
}

/// The messageId window that drops redelivered duplicates.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    #[serde(default = "default_dedup_ttl")]
    pub ttl: HumanDuration,
    #[serde(default = "default_dedup_capacity")]
    pub capacity: usize,
    /// Key a message without `messageId` by its AMQP message-id (generic
    /// AMQP sources).
    #[serde(default)]
    pub amqp_message_id: bool,
}

fn default_dedup_ttl() -> HumanDuration {
    HumanDuration::from_secs(600)
}
fn default_dedup_capacity() -> usize {
    100_000
}

/// Backoff for a failed target: doubles from `initial` to `max`, with jitter;
/// after `max_elapsed` (if set) the failure counts as permanent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_retry_initial")]
    pub initial: HumanDuration,
    #[serde(default = "default_retry_max")]
    pub max: HumanDuration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_elapsed: Option<HumanDuration>,
}

fn default_retry_initial() -> HumanDuration {
    HumanDuration::from_millis(100)
}
fn default_retry_max() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: default_retry_initial(),
            max: default_retry_max(),
            max_elapsed: None,
        }
    }
}

/// Where `/metrics`, `/healthz` and `/readyz` listen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How often `run` logs its summary line; 0s turns it off.
    #[serde(default = "default_summary_interval")]
    pub summary_interval: HumanDuration,
}

fn default_summary_interval() -> HumanDuration {
    HumanDuration::from_secs(60)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            listen: default_listen(),
            summary_interval: default_summary_interval(),
        }
    }
}

/// First pass: only the sinks' names and kinds.
#[derive(Deserialize)]
struct Skeleton {
    #[serde(default)]
    sinks: Option<BTreeMap<String, KindOnly>>,
}

#[derive(Deserialize)]
struct KindOnly {
    #[serde(default)]
    kind: Option<yaml_serde::Value>,
    /// Kafka's `acks: 1` needs `idempotence: false`, which may come later.
    #[serde(default)]
    idempotence: Option<yaml_serde::Value>,
}

impl Config {
    /// Reads, interpolates and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses configuration text; `origin` names it in errors and `env` looks
    /// up `${VAR}` references.
    pub fn parse(
        text: &str,
        origin: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = interpolate(text, origin, env)?;
        let skeleton: Skeleton =
            yaml_serde::from_str(&text).map_err(|e| ConfigError::from_yaml(origin, e))?;
        let skeleton_sinks = skeleton.sinks.unwrap_or_default();
        let not_idempotent = skeleton_sinks
            .iter()
            .filter(|(_, k)| k.idempotence == Some(yaml_serde::Value::Bool(false)))
            .map(|(name, _)| name.clone())
            .collect();
        let kinds = skeleton_sinks
            .into_iter()
            .filter_map(|(name, k)| match k.kind {
                Some(yaml_serde::Value::String(kind)) => Some((name, kind)),
                _ => None,
            })
            .collect();
        let config: Config = values::with_known_sinks(kinds, || {
            values::with_not_idempotent(not_idempotent, || yaml_serde::from_str(&text))
        })
        .map_err(|e| ConfigError::from_yaml(origin, e))?;
        config.check_consistency(origin)?;
        Ok(config)
    }

    /// Rules that involve several keys at once.
    fn check_consistency(&self, origin: &Path) -> Result<(), ConfigError> {
        let inconsistent = |message: String| ConfigError::Inconsistent {
            path: origin.to_path_buf(),
            message,
        };
        let mut names = std::collections::HashSet::new();
        for route in &self.routes {
            if let Some(name) = &route.name {
                if !names.insert(name.as_str()) {
                    return Err(inconsistent(format!(
                        "routes: two routes are named `{name}`"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The effective configuration as YAML, every secret shown as `***`.
    pub fn to_redacted_yaml(&self) -> String {
        yaml_serde::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}
