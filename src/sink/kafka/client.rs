//! From the sink's configuration to librdkafka's properties: the delivery
//! defaults, TLS (`ssl.*`), SASL (`sasl.*`), compression and producer
//! settings, then the raw `properties:` on top (they win).

use std::path::Path;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use super::config::KafkaSinkConfig;

/// First wait before reconnecting to a broker, in ms (see `client_config`).
pub const RECONNECT_BACKOFF_MS: &str = "1000";
/// Longest wait between reconnects, in ms (librdkafka's default).
pub const RECONNECT_BACKOFF_MAX_MS: &str = "10000";

/// Secret values shorter than this are not masked by substring: `o` would
/// turn `bootstrap` into `b***tstrap` and say which letters the password
/// has. librdkafka redacts its own sensitive properties anyway.
pub(crate) const MIN_MASKED_LEN: usize = 8;

/// Why a sink's librdkafka configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// A TLS file cannot be read (librdkafka's own message names neither the
    /// key nor the file).
    #[error("tls.{key} {path}: {source}")]
    Unreadable {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The librdkafka configuration of one sink; fails (naming the key and the
/// file) when a TLS file cannot be read, since librdkafka's own message
/// names neither.
pub fn client_config(config: &KafkaSinkConfig) -> Result<ClientConfig, ClientConfigError> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", config.brokers.join(","));
    client.set("enable.idempotence", config.idempotence.to_string());
    client.set("acks", config.acks.as_str());
    client.set("compression.type", config.compression.as_str());
    // After a failed TLS handshake librdkafka's metadata retries expedite
    // the reconnect, so its backoff never grows: with the default 100 ms an
    // untrusted certificate was retried 18 times a second, with 1 s about
    // twice. Quick enough after a broker restart (sends are retried anyway).
    // Not when either is set raw: a raw `reconnect.backoff.max.ms` below
    // our 1 s would make librdkafka refuse the pair.
    let raw = &config.properties.0;
    if !raw.contains_key("reconnect.backoff.ms") && !raw.contains_key("reconnect.backoff.max.ms") {
        client.set("reconnect.backoff.ms", RECONNECT_BACKOFF_MS);
        client.set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    }
    if let Some(linger) = config.linger {
        client.set("linger.ms", linger.0.as_millis().to_string());
    }
    if let Some(batch_size) = config.batch_size {
        client.set("batch.size", batch_size.to_string());
    }
    if let Some(timeout) = config.delivery_timeout {
        client.set("message.timeout.ms", timeout.0.as_millis().to_string());
    }
    let protocol = match (&config.tls, &config.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if let Some(tls) = &config.tls {
        // No `ssl.ca.location` without a CA file: the dynamically linked
        // OpenSSL then uses the system roots (and honours SSL_CERT_FILE/DIR).
        for (key, property, path) in [
            ("ca_file", "ssl.ca.location", &tls.ca_file),
            ("cert_file", "ssl.certificate.location", &tls.cert_file),
            ("key_file", "ssl.key.location", &tls.key_file),
        ] {
            if let Some(path) = path {
                readable(key, path)?;
                client.set(property, path.display().to_string());
            }
        }
        client.set("enable.ssl.certificate.verification", "true");
        client.set("ssl.endpoint.identification.algorithm", "https");
    }
    if let Some(sasl) = &config.sasl {
        client.set("sasl.mechanism", sasl.mechanism.as_str());
        client.set("sasl.username", &sasl.username);
        client.set("sasl.password", sasl.password.expose());
    }
    for (key, value) in &config.properties.0 {
        client.set(key, value);
    }
    Ok(client)
}

impl KafkaSinkConfig {
    /// The librdkafka configuration the sink makes of this block, so the
    /// benchmark's direct producer runs with exactly the sink's settings.
    /// Not a stable interface.
    #[doc(hidden)]
    pub fn librdkafka_config(&self) -> Result<ClientConfig, String> {
        client_config(self).map_err(|e| e.to_string())
    }
}

fn readable(key: &'static str, path: &Path) -> Result<(), ClientConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| ClientConfigError::Unreadable {
            key,
            path: path.display().to_string(),
            source,
        })
}

/// The error's text with the value of every secret-looking property masked:
/// librdkafka may quote a value it rejects.
pub(crate) fn redacted(error: &KafkaError, client: &ClientConfig) -> String {
    mask(&error.to_string(), &secrets(client))
}

/// The values of every secret-looking property of `client` that are long
/// enough to mask ([`MIN_MASKED_LEN`]), longest first (so a secret
/// containing another is masked whole).
pub(crate) fn secrets(client: &ClientConfig) -> Vec<String> {
    // config_map() masks only librdkafka's own list of sensitive keys; ours
    // is wider, so read the real values.
    let mut values: Vec<String> = client
        .config_map()
        .into_keys()
        .filter(|key| crate::config::is_secret_property(key))
        .filter_map(|key| {
            client
                .get(key)
                .filter(|v| v.chars().count() >= MIN_MASKED_LEN)
                .map(str::to_string)
        })
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values
}

/// `text` with every one of `secrets` replaced by `***`; shorter ones than
/// [`MIN_MASKED_LEN`] are left alone.
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_string();
    for secret in secrets
        .iter()
        .filter(|s| s.chars().count() >= MIN_MASKED_LEN)
    {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn sink(yaml: &str) -> Result<KafkaSinkConfig, String> {
        let text = format!(
            "source: {{ kind: amqp, url: \"amqp://127.0.0.1:5672\", address: q }}\n\
             sinks:\n  k:\n    kind: kafka\n    brokers: [\"b:9093\"]\n{yaml}"
        );
        let config =
            Config::parse(&text, Path::new("t.yaml"), |_| None).map_err(|e| e.to_string())?;
        match config.sinks.0.get("k") {
            Some(crate::config::SinkConfig::Kafka(k)) => Ok(k.clone()),
            other => Err(format!("{other:?}")),
        }
    }

    fn get<'a>(client: &'a ClientConfig, key: &str) -> Option<&'a str> {
        client.get(key)
    }

    #[test]
    fn defaults_keep_the_delivery_contract_in_plaintext() {
        let client = client_config(&sink("").unwrap()).unwrap();
        assert_eq!(get(&client, "acks"), Some("all"));
        assert_eq!(get(&client, "enable.idempotence"), Some("true"));
        assert_eq!(get(&client, "security.protocol"), Some("plaintext"));
        assert_eq!(get(&client, "compression.type"), Some("none"));
        assert_eq!(get(&client, "linger.ms"), None);
    }

    #[test]
    fn tls_and_sasl_map_onto_security_protocol_ssl_and_sasl() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let yaml = format!(
            "    tls: {{ ca_file: {} }}\n    sasl: {{ mechanism: SCRAM-SHA-512, username: u, password: pw-value }}\n    compression: zstd\n    linger: 20ms\n    batch_size: 65536\n    delivery_timeout: 2m\n",
            ca.display()
        );
        let client = client_config(&sink(&yaml).unwrap()).unwrap();
        for (key, value) in [
            ("security.protocol", "sasl_ssl"),
            ("ssl.ca.location", ca.to_str().unwrap()),
            ("enable.ssl.certificate.verification", "true"),
            ("ssl.endpoint.identification.algorithm", "https"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "u"),
            ("sasl.password", "pw-value"),
            ("compression.type", "zstd"),
            ("linger.ms", "20"),
            ("batch.size", "65536"),
            ("message.timeout.ms", "120000"),
        ] {
            assert_eq!(get(&client, key), Some(value), "{key}");
        }
        assert_eq!(secrets(&client), ["pw-value"]);
        let tls_only = client_config(&sink("    tls: {}\n").unwrap()).unwrap();
        assert_eq!(get(&tls_only, "security.protocol"), Some("ssl"));
        assert_eq!(get(&tls_only, "ssl.ca.location"), None, "system roots");
        let sasl_only = sink("    sasl: { mechanism: plain, username: u, password: p }\n").unwrap();
        assert_eq!(
            get(&client_config(&sasl_only).unwrap(), "security.protocol"),
            Some("sasl_plaintext")
        );
    }

    #[test]
    fn raw_properties_override_and_missing_files_are_named() {
        let config = sink(
            "    compression: gzip\n    properties: { compression.type: lz4, security.protocol: SSL }\n",
        )
        .unwrap();
        let client = client_config(&config).unwrap();
        assert_eq!(get(&client, "compression.type"), Some("lz4"));
        assert_eq!(get(&client, "security.protocol"), Some("SSL"));
        let missing = sink("    tls: { ca_file: /nonexistent/ca.pem }\n").unwrap();
        let error = client_config(&missing).unwrap_err().to_string();
        assert!(error.contains("tls.ca_file /nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn masks_every_secret_value() {
        let secrets = vec!["long-secret".to_string(), "secret-1".to_string()];
        assert_eq!(
            mask("a long-secret and a secret-1", &secrets),
            "a *** and a ***"
        );
    }

    #[test]
    fn a_raw_reconnect_backoff_replaces_the_sinks_default() {
        let client = client_config(&sink("").unwrap()).unwrap();
        assert_eq!(get(&client, "reconnect.backoff.ms"), Some("1000"));
        let config = sink("    properties: { reconnect.backoff.max.ms: \"500\" }\n").unwrap();
        let client = client_config(&config).unwrap();
        assert_eq!(get(&client, "reconnect.backoff.ms"), None);
        assert_eq!(get(&client, "reconnect.backoff.max.ms"), Some("500"));
        // librdkafka accepts the result (its default backoff is 100 ms).
        client
            .create::<rdkafka::producer::BaseProducer>()
            .expect("librdkafka accepts the configuration");
    }

    #[test]
    fn short_secrets_are_not_masked_inside_other_words() {
        let mut client = ClientConfig::new();
        client.set("sasl.password", "o");
        client.set("ssl.key.password", "1234567");
        client.set("sasl.oauthbearer.client.secret", "12345678");
        assert_eq!(secrets(&client), ["12345678"]);
        let short = vec!["o".to_string()];
        assert_eq!(
            mask("bootstrap.servers b:9092", &short),
            "bootstrap.servers b:9092"
        );
    }
}
