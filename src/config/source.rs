//! The `source:` block: where messages come from and how to log in.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::{duration_in, integer_in, parse_str_with, HumanDuration, Secret};
use super::TlsConfig;
use crate::source::aliyun::SignMethod;

/// Which kind of AMQP 1.0 source this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Alibaba Cloud IoT Platform server-side subscription (signed login).
    Aliyun,
}

/// The source block; field names are the YAML keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub url: AmqpUrl,
    pub access_key_id: String,
    pub access_key_secret: Secret,
    pub consumer_group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iot_instance_id: Option<String>,
    #[serde(default = "super::default_client_id")]
    pub client_id: String,
    #[serde(default)]
    pub sign_method: SignMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_token: Option<Secret>,
    #[serde(default = "default_connections", deserialize_with = "connections")]
    pub connections: u16,
    #[serde(default = "default_credit", deserialize_with = "credit")]
    pub credit: u32,
    #[serde(default = "default_idle_timeout", deserialize_with = "idle_timeout")]
    pub idle_timeout: HumanDuration,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub reconnect: BackoffConfig,
}

impl SourceConfig {
    /// The instance id, or `None` when it is absent or written as `""`.
    pub fn instance_id(&self) -> Option<&str> {
        self.iot_instance_id.as_deref().filter(|s| !s.is_empty())
    }
    /// The STS token, or `None` when absent or empty (then authMode=aksign).
    pub fn sts_token(&self) -> Option<&Secret> {
        self.security_token.as_ref().filter(|s| !s.is_empty())
    }
}

fn default_connections() -> u16 {
    1
}
fn default_credit() -> u32 {
    64
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::from_secs(60)
}
/// The platform allows at most 128 connections per client.
fn connections<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    integer_in(d, 1, 128)
}
fn credit<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    integer_in(d, 1, 10_000)
}
/// The platform refuses an idle-time-out outside 30 s..300 s.
fn idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<HumanDuration, D::Error> {
    use std::time::Duration;
    duration_in(d, Duration::from_secs(30), Duration::from_secs(300))
}

/// Exponential backoff between reconnect attempts, with jitter.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// First delay after a failure.
    #[serde(default = "default_initial")]
    pub initial: HumanDuration,
    /// The delay stops doubling here.
    #[serde(default = "default_max")]
    pub max: HumanDuration,
    /// A connection that stayed up this long resets the delay to `initial`.
    #[serde(default = "default_reset_after")]
    pub reset_after: HumanDuration,
}

fn default_initial() -> HumanDuration {
    HumanDuration::from_millis(10)
}
fn default_max() -> HumanDuration {
    HumanDuration::from_secs(20)
}
fn default_reset_after() -> HumanDuration {
    HumanDuration::from_secs(30)
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: default_initial(),
            max: default_max(),
            reset_after: default_reset_after(),
        }
    }
}

/// An `amqps://host:port` (or plain `amqp://` for local brokers) address.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpUrl(pub url::Url);

impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl AmqpUrl {
    /// True for `amqps`, where TLS starts straight away.
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "amqps"
    }
    /// Host name (for TLS server name and SASL hostname).
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
    /// Port, defaulting to 5671 for amqps and 5672 for amqp.
    pub fn port(&self) -> u16 {
        self.0
            .port()
            .unwrap_or(if self.is_tls() { 5671 } else { 5672 })
    }
}

impl Serialize for AmqpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&redact_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for AmqpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(d, "an amqps:// URL", |text| {
            parse_url(text, &["amqps", "amqp"]).map(AmqpUrl)
        })
    }
}

/// Parses a URL and insists on one of the given schemes and a host.
pub(crate) fn parse_url(text: &str, schemes: &[&str]) -> Result<url::Url, String> {
    // An unparseable URL is not echoed: it may carry a password.
    let url = url::Url::parse(text.trim()).map_err(|e| {
        format!(
            "invalid URL{}: {e}",
            if text.contains('@') {
                String::new()
            } else {
                format!(" `{text}`")
            }
        )
    })?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "invalid URL `{}`: scheme must be one of {}",
            redact_url(&url),
            schemes.join(", ")
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("invalid URL `{}`: no host", redact_url(&url)));
    }
    Ok(url)
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact_url(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}
