//! The `kind: mqtt` sink's configuration schema: the broker URL, client id,
//! credentials (plain or Alibaba Cloud MQ for MQTT's signature/token), TLS,
//! protocol version and the publish window. Every value is checked while the
//! YAML is parsed, so a mistake is reported at its own line and key.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::source::{parse_url, redact_url};
use crate::config::values::parse_str_with;
use crate::config::{HumanDuration, Secret, TlsConfig};

/// An MQTT broker (Mosquitto, EMQX, Alibaba MQ for MQTT ...).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    pub kind: String,
    pub url: MqttUrl,
    #[serde(default = "default_mqtt_client_id")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive: HumanDuration,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Largest packet the broker accepts, in bytes; a bigger message fails
    /// permanently (dead letter) instead of making the broker drop the connection.
    #[serde(default = "default_max_packet_size", deserialize_with = "packet_size")]
    pub max_packet_size: usize,
    /// Publishes awaiting the broker's confirmation at once; a full window holds
    /// the pipeline back. Default: 100 for MQTT 3.1.1, the broker's receive
    /// maximum for MQTT 5 (never more than the broker's receive maximum).
    #[serde(
        default,
        deserialize_with = "mqtt_in_flight",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_in_flight: Option<usize>,
    /// Alibaba Cloud MQ for MQTT credentials (instead of username/password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<MqttAuthConfig>,
    /// Protocol version: `3.1.1` (default) or `5`.
    #[serde(default)]
    pub version: MqttVersion,
}

/// The MQTT protocol version a sink speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MqttVersion {
    #[default]
    V311,
    V5,
}

impl Serialize for MqttVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            MqttVersion::V311 => "3.1.1",
            MqttVersion::V5 => "5",
        })
    }
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MqttVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("3.1.1 or 5")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MqttVersion, E> {
                match v {
                    "3.1.1" | "4" => Ok(MqttVersion::V311),
                    "5" | "5.0" => Ok(MqttVersion::V5),
                    other => Err(E::custom(format!(
                        "unknown MQTT version `{other}`, expected 3.1.1 or 5"
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MqttVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

fn default_max_packet_size() -> usize {
    // Mosquitto's and the MQTT protocol's limit; the platform's messages are far smaller.
    268_435_455
}
fn packet_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    crate::config::values::integer_in(d, 64, 268_435_455)
}
fn mqtt_in_flight<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    crate::config::values::integer_in(d, 1, 65_535).map(Some)
}

/// How the bridge logs in to Alibaba Cloud MQ for MQTT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MqttAuthMode {
    /// username `Signature|AK|InstanceId`, password Base64(HMAC-SHA1(secret, clientId)).
    AliyunSignature,
    /// username `Token|AK|InstanceId`, password `R|token|W|token`.
    AliyunToken,
}

/// Alibaba Cloud MQ for MQTT credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, try_from = "RawMqttAuth")]
pub struct MqttAuthConfig {
    pub mode: MqttAuthMode,
    pub access_key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_secret: Option<Secret>,
    pub instance_id: String,
    /// Token type (`R`, `W`, `RW`) → token, for `aliyun_token`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttAuth {
    mode: MqttAuthMode,
    access_key_id: String,
    #[serde(default)]
    access_key_secret: Option<Secret>,
    instance_id: String,
    #[serde(default)]
    tokens: BTreeMap<String, Secret>,
}

impl TryFrom<RawMqttAuth> for MqttAuthConfig {
    type Error = String;
    fn try_from(raw: RawMqttAuth) -> Result<Self, String> {
        match raw.mode {
            MqttAuthMode::AliyunSignature
                if raw.access_key_secret.as_ref().is_none_or(Secret::is_empty) =>
            {
                return Err("mode aliyun_signature needs `access_key_secret`".into())
            }
            MqttAuthMode::AliyunToken if raw.tokens.is_empty() => {
                return Err("mode aliyun_token needs `tokens` (e.g. { R: ..., W: ... })".into())
            }
            _ => {}
        }
        if let Some(bad) = raw
            .tokens
            .keys()
            .find(|k| !matches!(k.as_str(), "R" | "W" | "RW"))
        {
            return Err(format!("token type `{bad}` is not one of R, W, RW"));
        }
        Ok(MqttAuthConfig {
            mode: raw.mode,
            access_key_id: raw.access_key_id,
            access_key_secret: raw.access_key_secret,
            instance_id: raw.instance_id,
            tokens: raw.tokens,
        })
    }
}

/// Empty means "derive from the host and sink name" (filled in by `Sinks`).
fn default_mqtt_client_id() -> String {
    String::new()
}
fn default_keep_alive() -> HumanDuration {
    HumanDuration::from_secs(30)
}

/// An `mqtt://host:port` or `mqtts://host:port` address.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttUrl(pub url::Url);

impl std::fmt::Debug for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl MqttUrl {
    /// True for `mqtts`.
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "mqtts"
    }
    /// Host name.
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
    /// Port, defaulting to 8883 for mqtts and 1883 for mqtt.
    pub fn port(&self) -> u16 {
        self.0
            .port()
            .unwrap_or(if self.is_tls() { 8883 } else { 1883 })
    }
}

impl Serialize for MqttUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&redact_url(&self.0))
    }
}

impl<'de> Deserialize<'de> for MqttUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str_with(d, "an mqtt:// or mqtts:// URL", |text| {
            parse_url(text, &["mqtt", "mqtts"]).map(MqttUrl)
        })
    }
}
