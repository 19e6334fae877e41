//! The `source:` block: where messages come from and how to log in.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::values::{duration_in, integer_in, parse_str_with, HumanDuration, Secret};
use super::TlsConfig;
use crate::source::aliyun::SignMethod;
pub use crate::source::link::CreditRefill;
use crate::source::message::{Reading, TopicField, AMQP_FIELDS};

/// Which kind of AMQP 1.0 source this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Alibaba Cloud IoT Platform server-side subscription (signed login).
    Aliyun,
    /// Any AMQP 1.0 broker (RabbitMQ, ActiveMQ/Artemis, Service Bus, Qpid):
    /// fixed credentials, a configured address.
    Amqp,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            SourceKind::Aliyun => "aliyun",
            SourceKind::Amqp => "amqp",
        }
    }
}

/// The filter-set key the JMS selector filter is sent under.
const JMS_SELECTOR_KEY: &str = "jms-selector";

/// One source filter: a described value the broker applies before it
/// delivers (AMQP 1.0 filter set; which filters a broker knows is its own
/// business, and one it does not know it may ignore).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFilter {
    /// The descriptor: a symbolic name (`apache.org:selector-filter:string`)
    /// or a numeric code written as text (`0x0000468C00000004`).
    pub descriptor: String,
    /// The filter's string value (the selector, the binding key, …).
    pub value: String,
}

impl SourceFilter {
    /// The JMS selector filter (Apache's registered descriptor).
    pub fn jms_selector(selector: &str) -> SourceFilter {
        SourceFilter {
            descriptor: "apache.org:selector-filter:string".to_string(),
            value: selector.to_string(),
        }
    }

    /// The descriptor as a code when it is written as a number.
    pub fn descriptor_code(&self) -> Option<u64> {
        let text = self.descriptor.trim();
        match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        }
    }
}

/// How a generic source logs in (`sasl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslMechanism {
    /// `username`/`password` (the default when a username is given).
    Plain,
    /// No identity (the default without a username).
    Anonymous,
    /// The TLS client certificate (`tls.cert_file`) is the identity.
    External,
    /// No SASL layer at all, for a broker that offers none.
    None,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "plain",
            SaslMechanism::Anonymous => "anonymous",
            SaslMechanism::External => "external",
            SaslMechanism::None => "none",
        }
    }
}

/// The outcome of a message whose copy failed for good (too large for its
/// broker, refused by its ACL, a template it cannot fill) when no dead-letter
/// sink is configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UndeliverableOutcome {
    /// The source keeps it and redelivers it (nothing is lost, but it comes
    /// back and fails again).
    #[default]
    Released,
    /// The source drops it or hands it to its own dead-letter handling
    /// (RabbitMQ: the queue's dead-letter exchange).
    Rejected,
    /// `modified` with delivery-failed and undeliverable-here: the source
    /// counts a failed attempt and does not give it to this link again.
    Modified,
}

impl UndeliverableOutcome {
    /// The outcome the link gives.
    pub fn disposition(self) -> crate::envelope::Disposition {
        use crate::envelope::Disposition;
        match self {
            UndeliverableOutcome::Released => Disposition::Release,
            UndeliverableOutcome::Rejected => Disposition::Reject,
            UndeliverableOutcome::Modified => Disposition::Modify,
        }
    }
}

/// The source block; field names are the YAML keys. Keys of one kind are
/// empty (`""`, `None`) under the other; parsing rejects them there.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub url: AmqpUrl,
    /// aliyun: required.
    pub access_key_id: String,
    /// aliyun: required.
    pub access_key_secret: Secret,
    /// aliyun: required.
    pub consumer_group_id: String,
    pub iot_instance_id: Option<String>,
    /// aliyun: the client id (`client_id`); amqp: the container id
    /// (`container_id`). Either defaults to [`super::default_client_id`];
    /// with N connections each gets `-INDEX` appended.
    pub client_id: String,
    pub sign_method: SignMethod,
    pub security_token: Option<Secret>,
    /// amqp: required; the node the receiver attaches to.
    pub address: String,
    /// amqp: how to log in; aliyun: always PLAIN with a signed password.
    pub sasl: SaslMechanism,
    /// amqp: SASL PLAIN user (with `sasl: plain`, the default when given).
    pub username: Option<String>,
    /// amqp: SASL PLAIN password.
    pub password: Option<Secret>,
    /// amqp: the receiver link's name (default `CONTAINER-receiver-N`).
    pub link_name: Option<String>,
    /// amqp: where a message without a `topic` property takes its routing
    /// topic from, first present wins (`address`, `amqp.NAME`,
    /// `annotation.NAME`, `prop.NAME`); default `[amqp.subject, address]`.
    pub topic_from: Vec<String>,
    /// amqp: source filters sent on attach, by filter-set key (a JMS
    /// selector, a binding filter); `selector` adds the JMS selector filter.
    pub filters: Vec<(String, SourceFilter)>,
    /// amqp with `amqps://`: start TLS straight away, as on port 5671 of
    /// RabbitMQ, Artemis, Service Bus and the IoT Platform (default `true`);
    /// `false` sends the AMQP TLS protocol header first (the spec's upgrade,
    /// e.g. Service Bus on port 5672). Always on for aliyun.
    pub alt_tls_establishment: bool,
    pub connections: u16,
    pub credit: u32,
    /// When more credit is granted; default `half_used` for aliyun,
    /// `used_up` for amqp (see [`CreditRefill`]).
    pub credit_refill: CreditRefill,
    /// What a message that failed for good gets when there is no
    /// dead-letter sink; default `released`.
    pub undeliverable_outcome: UndeliverableOutcome,
    pub idle_timeout: HumanDuration,
    pub tls: TlsConfig,
    pub reconnect: BackoffConfig,
}

/// The source block as written; [`SourceConfig`] checks per-kind keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: SourceKind,
    url: AmqpUrl,
    #[serde(default)]
    access_key_id: Option<String>,
    #[serde(default)]
    access_key_secret: Option<Secret>,
    #[serde(default)]
    consumer_group_id: Option<String>,
    #[serde(default)]
    iot_instance_id: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    sign_method: Option<SignMethod>,
    #[serde(default)]
    security_token: Option<Secret>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    sasl: Option<SaslMechanism>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<Secret>,
    #[serde(default)]
    container_id: Option<String>,
    #[serde(default)]
    link_name: Option<String>,
    #[serde(default)]
    alt_tls_establishment: Option<bool>,
    #[serde(default)]
    topic_from: Option<Vec<String>>,
    #[serde(default)]
    selector: Option<String>,
    #[serde(default)]
    filters: Option<std::collections::BTreeMap<String, SourceFilter>>,
    #[serde(default = "default_connections", deserialize_with = "connections")]
    connections: u16,
    #[serde(default = "default_credit", deserialize_with = "credit")]
    credit: u32,
    #[serde(default)]
    credit_refill: Option<CreditRefill>,
    #[serde(default)]
    undeliverable_outcome: UndeliverableOutcome,
    #[serde(default = "default_idle_timeout", deserialize_with = "idle_timeout")]
    idle_timeout: HumanDuration,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    reconnect: BackoffConfig,
}

impl RawSource {
    /// Which keys were given, by kind: (key, given, the kind it belongs to).
    fn kind_keys(&self) -> [(&'static str, bool, SourceKind); 17] {
        use SourceKind::{Aliyun, Amqp};
        [
            ("access_key_id", self.access_key_id.is_some(), Aliyun),
            (
                "access_key_secret",
                self.access_key_secret.is_some(),
                Aliyun,
            ),
            (
                "consumer_group_id",
                self.consumer_group_id.is_some(),
                Aliyun,
            ),
            ("iot_instance_id", self.iot_instance_id.is_some(), Aliyun),
            ("client_id", self.client_id.is_some(), Aliyun),
            ("sign_method", self.sign_method.is_some(), Aliyun),
            ("security_token", self.security_token.is_some(), Aliyun),
            ("address", self.address.is_some(), Amqp),
            ("sasl", self.sasl.is_some(), Amqp),
            ("username", self.username.is_some(), Amqp),
            ("password", self.password.is_some(), Amqp),
            ("container_id", self.container_id.is_some(), Amqp),
            ("link_name", self.link_name.is_some(), Amqp),
            (
                "alt_tls_establishment",
                self.alt_tls_establishment.is_some(),
                Amqp,
            ),
            ("topic_from", self.topic_from.is_some(), Amqp),
            ("selector", self.selector.is_some(), Amqp),
            ("filters", self.filters.is_some(), Amqp),
        ]
    }

    fn into_config(self) -> Result<SourceConfig, String> {
        for (key, given, belongs) in self.kind_keys() {
            if given && belongs != self.kind {
                return Err(format!(
                    "`{key}` is a key of source kind {}, not {}",
                    belongs.name(),
                    self.kind.name()
                ));
            }
        }
        let missing = |key: &str| format!("source kind {} needs `{key}`", self.kind.name());
        let (access_key_id, access_key_secret, consumer_group_id, address) = match self.kind {
            SourceKind::Aliyun => (
                self.access_key_id
                    .clone()
                    .ok_or_else(|| missing("access_key_id"))?,
                self.access_key_secret
                    .clone()
                    .ok_or_else(|| missing("access_key_secret"))?,
                self.consumer_group_id
                    .clone()
                    .ok_or_else(|| missing("consumer_group_id"))?,
                String::new(),
            ),
            SourceKind::Amqp => {
                let address = self.address.clone().ok_or_else(|| missing("address"))?;
                if address.trim().is_empty() {
                    return Err("`address` is empty: name the node to receive from".into());
                }
                if self.password.is_some() && self.username.is_none() {
                    return Err("`password` without `username`: give both (SASL PLAIN) or neither (ANONYMOUS)".into());
                }
                match self.sasl {
                    Some(SaslMechanism::Plain) if self.username.is_none() => {
                        return Err("`sasl: plain` needs `username` and `password`".into());
                    }
                    Some(
                        other @ (SaslMechanism::Anonymous
                        | SaslMechanism::External
                        | SaslMechanism::None),
                    ) if self.username.is_some() => {
                        return Err(format!(
                            "`username`/`password` are for SASL PLAIN, not `sasl: {}`",
                            other.name()
                        ));
                    }
                    Some(SaslMechanism::External)
                        if !self.url.is_tls() || self.tls.cert_file.is_none() =>
                    {
                        return Err("`sasl: external` logs in with the TLS client certificate: it needs an `amqps://` url and `tls.cert_file`/`tls.key_file`".into());
                    }
                    _ => {}
                }
                (String::new(), Secret::default(), String::new(), address)
            }
        };
        let topic_from = match self.kind {
            SourceKind::Aliyun => Vec::new(),
            SourceKind::Amqp => {
                let fields = self
                    .topic_from
                    .clone()
                    .unwrap_or_else(|| vec!["amqp.subject".into(), "address".into()]);
                for field in &fields {
                    topic_field(field, "")?;
                }
                fields
            }
        };
        let sasl = self.sasl.unwrap_or(if self.username.is_some() {
            SaslMechanism::Plain
        } else {
            SaslMechanism::Anonymous
        });
        let mut filters: Vec<(String, SourceFilter)> = self
            .filters
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if let Some(selector) = &self.selector {
            if filters.iter().any(|(key, _)| key == JMS_SELECTOR_KEY) {
                return Err(format!(
                    "`selector` and `filters.{JMS_SELECTOR_KEY}` both set a JMS selector: keep one"
                ));
            }
            filters.push((
                JMS_SELECTOR_KEY.to_string(),
                SourceFilter::jms_selector(selector),
            ));
        }
        Ok(SourceConfig {
            kind: self.kind,
            topic_from,
            filters,
            sasl,
            url: self.url,
            access_key_id,
            access_key_secret,
            consumer_group_id,
            iot_instance_id: self.iot_instance_id,
            client_id: self
                .client_id
                .or(self.container_id)
                .unwrap_or_else(super::default_client_id),
            sign_method: self.sign_method.unwrap_or_default(),
            security_token: self.security_token,
            address,
            username: self.username,
            password: self.password,
            link_name: self.link_name,
            alt_tls_establishment: self.alt_tls_establishment.unwrap_or(true),
            connections: self.connections,
            credit: self.credit,
            credit_refill: self.credit_refill.unwrap_or(match self.kind {
                SourceKind::Aliyun => CreditRefill::HalfUsed,
                SourceKind::Amqp => CreditRefill::UsedUp,
            }),
            undeliverable_outcome: self.undeliverable_outcome,
            idle_timeout: self.idle_timeout,
            tls: self.tls,
            reconnect: self.reconnect,
        })
    }
}

impl<'de> Deserialize<'de> for SourceConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        impl<'de> serde::de::Visitor<'de> for SourceVisitor {
            type Value = SourceConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a source block")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SourceConfig, A::Error> {
                use serde::de::Error as _;
                // Parsed inside this visitor, so the per-kind checks are
                // reported where the parser reports a missing key.
                let raw =
                    RawSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                raw.into_config().map_err(A::Error::custom)
            }
        }
        d.deserialize_map(SourceVisitor)
    }
}

/// What `check` prints: the keys of the configured kind only.
#[derive(Serialize)]
struct SourceView<'a> {
    kind: SourceKind,
    url: &'a AmqpUrl,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_key_secret: Option<&'a Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_group_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iot_instance_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sign_method: Option<SignMethod>,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_token: Option<&'a Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sasl: Option<SaslMechanism>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alt_tls_establishment: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic_from: Option<&'a [String]>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    filters: std::collections::BTreeMap<&'a str, &'a SourceFilter>,
    connections: u16,
    credit: u32,
    credit_refill: CreditRefill,
    undeliverable_outcome: UndeliverableOutcome,
    idle_timeout: HumanDuration,
    tls: &'a TlsConfig,
    reconnect: &'a BackoffConfig,
}

impl Serialize for SourceConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let aliyun = self.kind == SourceKind::Aliyun;
        let amqp = !aliyun;
        SourceView {
            kind: self.kind,
            url: &self.url,
            access_key_id: aliyun.then_some(self.access_key_id.as_str()),
            access_key_secret: aliyun.then_some(&self.access_key_secret),
            consumer_group_id: aliyun.then_some(self.consumer_group_id.as_str()),
            iot_instance_id: self.iot_instance_id.as_deref().filter(|_| aliyun),
            client_id: aliyun.then_some(self.client_id.as_str()),
            sign_method: aliyun.then_some(self.sign_method),
            security_token: self.security_token.as_ref().filter(|_| aliyun),
            address: amqp.then_some(self.address.as_str()),
            sasl: amqp.then_some(self.sasl),
            username: self.username.as_deref().filter(|_| amqp),
            password: self.password.as_ref().filter(|_| amqp),
            container_id: amqp.then_some(self.client_id.as_str()),
            link_name: self.link_name.as_deref().filter(|_| amqp),
            alt_tls_establishment: amqp.then_some(self.alt_tls_establishment),
            topic_from: amqp.then_some(self.topic_from.as_slice()),
            filters: self.filters.iter().map(|(k, f)| (k.as_str(), f)).collect(),
            connections: self.connections,
            credit: self.credit,
            credit_refill: self.credit_refill,
            undeliverable_outcome: self.undeliverable_outcome,
            idle_timeout: self.idle_timeout,
            tls: &self.tls,
            reconnect: &self.reconnect,
        }
        .serialize(s)
    }
}

/// One `topic_from` entry as the source reads it; the error names what is
/// accepted.
fn topic_field(field: &str, address: &str) -> Result<TopicField, String> {
    let property = |name: &str| TopicField::Property(name.to_string());
    if field == "address" {
        return Ok(TopicField::Fixed(address.to_string()));
    }
    if let Some(name) = field.strip_prefix("amqp.") {
        if AMQP_FIELDS.contains(&name) {
            return Ok(property(field));
        }
        return Err(format!(
            "`topic_from`: `{field}` is not an AMQP property (known: {})",
            AMQP_FIELDS.map(|f| format!("amqp.{f}")).join(", ")
        ));
    }
    if field
        .strip_prefix("annotation.")
        .is_some_and(|n| !n.is_empty())
    {
        return Ok(property(field));
    }
    if let Some(name) = field.strip_prefix("prop.").filter(|n| !n.is_empty()) {
        return Ok(property(name));
    }
    Err(format!(
        "`topic_from`: `{field}` is not a field (use address, amqp.NAME, annotation.NAME or prop.NAME)"
    ))
}

impl SourceConfig {
    /// What the source adds to each message besides its application
    /// properties: nothing on the platform; AMQP properties, annotations and
    /// a routing topic from a generic broker.
    pub(crate) fn reading(&self) -> Reading {
        match self.kind {
            SourceKind::Aliyun => Reading::default(),
            SourceKind::Amqp => Reading {
                metadata: true,
                topic_from: self
                    .topic_from
                    .iter()
                    // Checked when the file was read.
                    .filter_map(|f| topic_field(f, &self.address).ok())
                    .collect(),
            },
        }
    }

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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError, CreditRefill, SourceKind, UndeliverableOutcome};

    fn parse(source: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("# bridge\n{source}sinks:\n  o: {{ kind: stdout }}\n"),
            Path::new("b.yaml"),
            |_| None,
        )
    }

    /// (line, message) of an `Invalid` error.
    fn invalid(source: &str) -> (usize, String) {
        match parse(source) {
            Err(ConfigError::Invalid { line, message, .. }) => (line, message),
            other => panic!("expected a positioned error, got {other:?}"),
        }
    }

    const AMQP: &str =
        "source:\n  kind: amqp\n  url: amqp://127.0.0.1:5672\n  address: /queue/iot\n";

    #[test]
    fn generic_source_parses_with_defaults_and_prints_redacted() {
        let config = parse(&format!(
            "{AMQP}  username: bridge\n  password: the-real-password\n"
        ))
        .unwrap();
        let source = &config.source;
        assert_eq!(source.kind, SourceKind::Amqp);
        assert_eq!(source.address, "/queue/iot");
        assert_eq!(source.username.as_deref(), Some("bridge"));
        assert_eq!(
            source.password.as_ref().map(|p| p.expose()),
            Some("the-real-password")
        );
        assert_eq!(source.client_id, crate::config::default_client_id());
        assert!(source.alt_tls_establishment, "TLS straight away by default");
        assert_eq!(source.credit_refill, CreditRefill::UsedUp);
        let printed = config.to_redacted_yaml();
        assert!(!printed.contains("the-real-password"), "{printed}");
        assert!(printed.contains("password: '***'"), "{printed}");
        assert!(printed.contains("container_id:"), "{printed}");
        assert!(!printed.contains("access_key"), "{printed}");
        assert!(!printed.contains("client_id"), "{printed}");
        // What `check` prints parses again to the same source.
        let again = Config::parse(&printed, Path::new("printed.yaml"), |_| None).unwrap();
        assert_eq!(again.source.address, "/queue/iot");
    }

    #[test]
    fn credit_refill_defaults_by_kind_and_can_be_set() {
        let aliyun = parse(
            "source:\n  kind: aliyun\n  url: amqps://h:5671\n  access_key_id: a\n  access_key_secret: s\n  consumer_group_id: g\n",
        )
        .unwrap();
        assert_eq!(aliyun.source.credit_refill, CreditRefill::HalfUsed);
        let config = parse(&format!("{AMQP}  credit_refill: half_used\n")).unwrap();
        assert_eq!(config.source.credit_refill, CreditRefill::HalfUsed);
        assert!(config
            .to_redacted_yaml()
            .contains("credit_refill: half_used"));
        assert_eq!(
            config.source.undeliverable_outcome,
            UndeliverableOutcome::Released
        );
        let config = parse(&format!("{AMQP}  undeliverable_outcome: rejected\n")).unwrap();
        assert_eq!(
            config.source.undeliverable_outcome,
            UndeliverableOutcome::Rejected
        );
        assert!(config
            .to_redacted_yaml()
            .contains("undeliverable_outcome: rejected"));
        let (line, message) = invalid(&format!("{AMQP}  credit_refill: sometimes\n"));
        assert_eq!(line, 6, "{message}");
        assert!(message.contains("half_used"), "{message}");
    }

    #[test]
    fn topic_from_defaults_and_names_what_it_accepts() {
        use crate::source::message::TopicField;
        let config = parse(AMQP).unwrap();
        assert_eq!(config.source.topic_from, ["amqp.subject", "address"]);
        assert_eq!(
            config.source.reading().topic_from,
            [
                TopicField::Property("amqp.subject".into()),
                TopicField::Fixed("/queue/iot".into())
            ]
        );
        let config = parse(&format!(
            "{AMQP}  topic_from: [annotation.x-opt-topic, prop.kind, amqp.to]\n"
        ))
        .unwrap();
        assert_eq!(
            config.source.reading().topic_from,
            [
                TopicField::Property("annotation.x-opt-topic".into()),
                TopicField::Property("kind".into()),
                TopicField::Property("amqp.to".into())
            ]
        );
        let (line, message) = invalid(&format!("{AMQP}  topic_from: [amqp.sujbect]\n"));
        assert!(line >= 2, "{message}");
        assert!(message.contains("amqp.subject, "), "{message}");
        let (_, message) = invalid(&format!("{AMQP}  topic_from: [subject]\n"));
        assert!(message.contains("use address, amqp.NAME"), "{message}");
    }

    #[test]
    fn sasl_follows_the_credentials_and_external_needs_a_certificate() {
        use crate::config::SaslMechanism;
        assert_eq!(parse(AMQP).unwrap().source.sasl, SaslMechanism::Anonymous);
        let plain = parse(&format!("{AMQP}  username: u\n  password: p\n")).unwrap();
        assert_eq!(plain.source.sasl, SaslMechanism::Plain);
        let none = parse(&format!("{AMQP}  sasl: none\n")).unwrap();
        assert_eq!(none.source.sasl, SaslMechanism::None);
        assert!(none.to_redacted_yaml().contains("sasl: none"));
        let (_, message) = invalid(&format!("{AMQP}  sasl: plain\n"));
        assert!(message.contains("needs `username`"), "{message}");
        let (_, message) = invalid(&format!("{AMQP}  sasl: anonymous\n  username: u\n"));
        assert!(message.contains("not `sasl: anonymous`"), "{message}");
        let (_, message) = invalid(&format!("{AMQP}  sasl: external\n"));
        assert!(
            message.contains("`amqps://` url and `tls.cert_file`"),
            "{message}"
        );
        let external = parse(
            "source:\n  kind: amqp\n  url: amqps://h:5671\n  address: q\n  sasl: external\n  \
             tls: { cert_file: c.pem, key_file: k.pem }\n",
        )
        .unwrap();
        assert_eq!(external.source.sasl, SaslMechanism::External);
        let (line, message) = invalid(
            "source:\n  kind: amqp\n  url: amqps://h:5671\n  address: q\n  tls: { cert_file: c.pem }\n",
        );
        assert!(line >= 2, "{message}");
        assert!(
            message.contains("`cert_file` and `key_file` go together"),
            "{message}"
        );
    }

    #[test]
    fn container_id_and_link_name_are_taken() {
        let config = parse(&format!(
            "{AMQP}  container_id: bridge-7\n  link_name: iot-in\n  alt_tls_establishment: false\n"
        ))
        .unwrap();
        assert_eq!(config.source.client_id, "bridge-7");
        assert_eq!(config.source.link_name.as_deref(), Some("iot-in"));
        assert!(!config.source.alt_tls_establishment);
        assert!(config.source.username.is_none());
    }

    #[test]
    fn missing_address_is_named_with_a_position() {
        let (line, message) =
            invalid("source:\n  kind: amqp\n  url: amqp://127.0.0.1:5672\n  username: u\n");
        assert!(line >= 2, "line {line}: {message}");
        assert!(message.contains("needs `address`"), "{message}");
    }

    #[test]
    fn aliyun_keys_are_required_for_aliyun_only() {
        let (line, message) = invalid(
            "source:\n  kind: aliyun\n  url: amqps://h:5671\n  access_key_secret: s\n  consumer_group_id: g\n",
        );
        assert!(line >= 2, "line {line}: {message}");
        assert!(message.contains("needs `access_key_id`"), "{message}");
        let (line, message) = invalid(&format!("{AMQP}  access_key_id: AK\n"));
        assert!(line >= 2, "line {line}: {message}");
        assert!(
            message.contains("`access_key_id` is a key of source kind aliyun, not amqp"),
            "{message}"
        );
        let (_, message) = invalid(
            "source:\n  kind: aliyun\n  url: amqps://h:5671\n  access_key_id: a\n  access_key_secret: s\n  consumer_group_id: g\n  address: /queue/x\n",
        );
        assert!(
            message.contains("`address` is a key of source kind amqp"),
            "{message}"
        );
    }

    #[test]
    fn password_without_username_is_refused() {
        let (_, message) = invalid(&format!("{AMQP}  password: p\n"));
        assert!(message.contains("without `username`"), "{message}");
    }

    #[test]
    fn unknown_kind_and_key_keep_their_positions() {
        let (line, message) = invalid("source:\n  kind: rabbit\n  url: amqp://h\n");
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("unknown variant `rabbit`"), "{message}");
        let (line, message) = invalid(&format!("{AMQP}  adress: x\n"));
        assert_eq!(line, 6, "{message}");
        assert!(message.contains("unknown field `adress`"), "{message}");
    }
}
