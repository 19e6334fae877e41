//! Configuration parsing: every error kind names file, line and key;
//! interpolation; secrets never printed.

use std::path::Path;

use amqp_bridge::config::{Config, ConfigError, UnroutedPolicy};

const BASE: &str = r#"source:
  kind: aliyun
  url: amqps://1234.iot-amqp.cn-shanghai.aliyuncs.com:5671
  access_key_id: LTAIexample
  access_key_secret: ${SK}
  consumer_group_id: CG1
  client_id: bridge-1
sinks:
  out:
    kind: mqtt
    url: mqtt://127.0.0.1:1883
    password: ${MQTT_PW:-mqtt-pass-value}
  dl:
    kind: file
    path: /tmp/dl.jsonl
routes:
  - name: props
    match: { topic: "/+/+/thing/event/property/post" }
    to:
      - { sink: out, topic: "devices/{productKey}" }
dead_letter: dl
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "SK" => Some("the-access-key-secret".to_string()),
        _ => None,
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("bridge.yaml"), env)
}

/// Parses `BASE` with one line replaced (or appended) and returns the
/// error's line, column (both 1-based, as printed) and message.
fn error_with(find: &str, replace: &str) -> (usize, usize, String) {
    let text = if find.is_empty() {
        format!("{BASE}{replace}")
    } else {
        assert!(BASE.contains(find), "test bug: {find}");
        BASE.replacen(find, replace, 1)
    };
    let error = match parse(&text) {
        Ok(_) => panic!("expected an error for {replace:?}"),
        Err(error) => error,
    };
    let printed = error.to_string();
    match error {
        ConfigError::Invalid {
            line,
            column,
            message,
            path,
        } => {
            assert_eq!(path, Path::new("bridge.yaml"));
            // What a user reads leads with the same position.
            assert!(
                printed.starts_with(&format!("bridge.yaml:{line}:{column}: ")),
                "{printed}"
            );
            eprintln!("PROBE {replace:?} -> {line}:{column}: {message}");
            (line, column, message)
        }
        other => panic!("unexpected error kind: {other}"),
    }
}

#[test]
fn base_config_parses_with_defaults() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.source.connections, 1);
    assert_eq!(config.source.credit, 64);
    assert_eq!(config.source.idle_timeout.0.as_secs(), 60);
    assert_eq!(
        config.source.access_key_secret.expose(),
        "the-access-key-secret"
    );
    assert_eq!(config.unrouted, UnroutedPolicy::Release);
    assert_eq!(config.max_in_flight, 1024);
    assert_eq!(config.routes[0].to[0].sink.0, "out");
}

#[test]
fn unknown_top_level_key_names_line_and_key() {
    let (line, column, message) = error_with("", "max_inflight: 5\n");
    assert_eq!((line, column), (22, 1), "at the key");
    assert!(
        message.contains("unknown field `max_inflight`"),
        "{message}"
    );
}

#[test]
fn unknown_key_inside_a_sink_is_reported_at_its_line() {
    let (line, column, message) = error_with(
        "    url: mqtt://127.0.0.1:1883\n",
        "    url: mqtt://127.0.0.1:1883\n    qos_default: 1\n",
    );
    assert_eq!((line, column), (12, 5), "at the key");
    assert!(
        message.contains("sinks.out") && message.contains("unknown field `qos_default`"),
        "{message}"
    );
}

#[test]
fn unknown_key_in_source_names_its_path() {
    let (line, column, message) = error_with(
        "  client_id: bridge-1\n",
        "  client_id: bridge-1\n  clientid: x\n",
    );
    assert_eq!((line, column), (8, 3), "at the key");
    assert!(
        message.contains("source") && message.contains("unknown field `clientid`"),
        "{message}"
    );
}

#[test]
fn route_naming_a_missing_sink() {
    let (line, column, message) = error_with("{ sink: out,", "{ sink: nowhere,");
    assert_eq!((line, column), (20, 17), "at `nowhere`");
    assert!(
        message.contains("routes[0].to[0].sink") && message.contains("no sink named `nowhere`"),
        "{message}"
    );
    let (line, column, message) = error_with("dead_letter: dl", "dead_letter: gone");
    assert_eq!((line, column), (21, 14), "at `gone`");
    assert!(
        message.contains("dead_letter") && message.contains("`gone`"),
        "{message}"
    );
}

#[test]
fn values_out_of_range() {
    let (line, column, message) = error_with(
        "  client_id: bridge-1\n",
        "  client_id: bridge-1\n  connections: 500\n",
    );
    assert_eq!((line, column), (8, 16), "at `500`");
    assert!(
        message.contains("source.connections") && message.contains("out of range"),
        "{message}"
    );
    let (line, column, message) = error_with(
        "  client_id: bridge-1\n",
        "  client_id: bridge-1\n  idle_timeout: 10s\n",
    );
    assert_eq!((line, column), (8, 17), "at `10s`");
    assert!(
        message.contains("source.idle_timeout") && message.contains("out of range 30s..5m"),
        "{message}"
    );
}

#[test]
fn bad_duration() {
    let (line, column, message) = error_with("", "shutdown_timeout: 20 parsecs\n");
    assert_eq!((line, column), (22, 19), "at `20 parsecs`");
    assert!(
        message.contains("shutdown_timeout") && message.contains("invalid duration"),
        "{message}"
    );
}

#[test]
fn bad_urls() {
    let (line, column, message) =
        error_with("url: mqtt://127.0.0.1:1883", "url: http://127.0.0.1:1883");
    assert_eq!((line, column), (11, 10), "at the URL");
    assert!(
        message.contains("sinks.out.url") && message.contains("scheme must be one of mqtt, mqtts"),
        "{message}"
    );
    let (line, column, message) = error_with(
        "url: amqps://1234.iot-amqp.cn-shanghai.aliyuncs.com:5671",
        "url: amqps//no-scheme",
    );
    assert_eq!((line, column), (3, 8), "at the URL");
    assert!(
        message.contains("source.url") && message.contains("invalid URL"),
        "{message}"
    );
}

#[test]
fn sink_kind_missing_or_unknown() {
    let (line, column, message) = error_with("    kind: file\n", "    kind: ftp\n");
    assert_eq!((line, column), (14, 5), "at `kind:`, the sink's first key");
    assert!(message.contains("unknown sink kind `ftp`"), "{message}");
}

#[test]
fn bad_topic_filter_and_mqtt_target_without_topic() {
    let (line, column, message) = error_with("/+/+/thing/event/property/post", "/a#/b");
    assert_eq!((line, column), (18, 21), "at the filter's opening quote");
    assert!(
        message.contains("routes[0].match.topic") && message.contains("invalid topic filter"),
        "{message}"
    );
    let (line, column, message) = error_with(
        "{ sink: out, topic: \"devices/{productKey}\" }",
        "{ sink: out }",
    );
    assert_eq!((line, column), (20, 7), "at the target's `-`");
    assert!(message.contains("needs a `topic`"), "{message}");
}

#[test]
fn missing_environment_variable_is_named() {
    let text = BASE.replace("${SK}", "${ALIYUN_SK}");
    let err = Config::parse(&text, Path::new("bridge.yaml"), |_| None).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("bridge.yaml:5:"), "{text}");
    assert!(text.contains("`ALIYUN_SK`"), "{text}");
}

#[test]
fn unrouted_policies() {
    let config = parse(&format!("{BASE}unrouted: accept\n")).unwrap();
    assert_eq!(config.unrouted, UnroutedPolicy::Accept);
    let config = parse(&format!("{BASE}unrouted: {{ sink: dl }}\n")).unwrap();
    assert_eq!(
        config.unrouted,
        UnroutedPolicy::Sink(amqp_bridge::config::SinkName("dl".into()))
    );
    let (line, column, message) = error_with("", "unrouted: { sink: nope }\n");
    assert_eq!((line, column), (22, 19), "at `nope`");
    assert!(message.contains("no sink named `nope`"), "{message}");
}

#[test]
fn redacted_output_holds_no_secret() {
    let text = BASE
        .replace(
            "  client_id: bridge-1\n",
            "  client_id: bridge-1\n  security_token: sts-token-value\n",
        )
        .replace(
            "url: mqtt://127.0.0.1:1883",
            "url: mqtt://user:url-password-value@127.0.0.1:1883",
        );
    let config = parse(&text).unwrap();
    let printed = config.to_redacted_yaml();
    for secret in [
        "the-access-key-secret",
        "mqtt-pass-value",
        "sts-token-value",
        "url-password-value",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        assert!(
            !format!("{config:?}").contains(secret),
            "{secret} leaked in Debug"
        );
    }
    assert!(printed.contains("access_key_secret: '***'"), "{printed}");
    // The printed form is itself a valid configuration with the same shape.
    let reparsed = parse(&printed).unwrap();
    assert_eq!(reparsed.routes.len(), 1);
}

#[test]
fn example_config_is_valid() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bridge.yaml.example"))
        .unwrap();
    let config = Config::parse(&text, Path::new("bridge.yaml.example"), |name| match name {
        "ALIYUN_AK" | "ALIYUN_SK" => Some("x".into()),
        _ => None,
    })
    .unwrap();
    assert!(!config.routes.is_empty());
}

#[test]
fn bad_regex_is_reported_at_its_line() {
    let (line, column, message) = error_with(
        "    match: { topic: \"/+/+/thing/event/property/post\" }\n",
        "    match:\n      topic: \"#\"\n      properties: { tenant: { regex: \"(unclosed\" } }\n",
    );
    assert_eq!((line, column), (20, 38), "at the pattern's opening quote");
    assert!(
        message.contains("routes[0].match.properties") && message.contains("invalid regex"),
        "{message}"
    );
}

#[test]
fn aliyun_mqtt_auth_is_checked_and_redacted() {
    let sink = "  mq:\n    kind: mqtt\n    url: mqtts://post-cn-x.mqtt.aliyuncs.com:8883\n    client_id: GID_a@@@b\n    auth:\n      mode: aliyun_signature\n      access_key_id: AKmq\n      instance_id: post-cn-x\n";
    let text = BASE.replace("  dl:\n", &format!("{sink}  dl:\n"));
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("needs `access_key_secret`"), "{err}");
    let text = BASE.replace(
        "  dl:\n",
        &format!("{sink}      access_key_secret: mq-secret-value\n  dl:\n"),
    );
    let config = parse(&text).unwrap();
    let printed = config.to_redacted_yaml();
    assert!(!printed.contains("mq-secret-value"), "{printed}");
}

#[test]
fn kafka_sink_properties_with_secrets_are_redacted() {
    let sink = "  k:\n    kind: kafka\n    brokers: [\"127.0.0.1:9092\"]\n    properties:\n      sasl.password: kafka-secret-value\n      compression.type: lz4\n";
    let text = BASE.replace("  dl:\n", &format!("{sink}  dl:\n"));
    let config = parse(&text).unwrap();
    let printed = config.to_redacted_yaml();
    assert!(!printed.contains("kafka-secret-value"), "{printed}");
    assert!(!format!("{config:?}").contains("kafka-secret-value"));
    assert!(printed.contains("compression.type: lz4"), "{printed}");
    let text = BASE.replace("  dl:\n", "  k: { kind: kafka, brokers: [] }\n  dl:\n");
    let (line, message) = match parse(&text) {
        Err(ConfigError::Invalid { line, message, .. }) => (line, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(line, 13);
    assert!(message.contains("brokers"), "{message}");
}

#[test]
fn rocketmq_sink_defaults_acl_redaction_and_targets() {
    let sink = "  rmq:\n    kind: rocketmq\n    name_server: \"10.0.0.1:9876;10.0.0.2:9876\"\n    namespace: MQ_INST_1\n    acl: { access_key: AKrmq, secret_key: rmq-secret-value, security_token: rmq-token-value }\n";
    let route = "  - name: r\n    match: { topic: \"#\" }\n    to:\n      - { sink: rmq, topic: iot, tag: \"{productKey}\", keys: [\"{messageId}\", \"{deviceName}\"], properties: all }\n";
    let text = BASE
        .replace("  dl:\n", &format!("{sink}  dl:\n"))
        .replace("dead_letter: dl\n", &format!("{route}dead_letter: dl\n"));
    let config = parse(&text).unwrap();
    let Some(amqp_bridge::config::SinkConfig::RocketMq(rmq)) = config.sinks.0.get("rmq") else {
        panic!("rocketmq sink parsed");
    };
    assert_eq!(rmq.name_server, vec!["10.0.0.1:9876", "10.0.0.2:9876"]);
    assert_eq!(rmq.producer_group, "amqp-bridge");
    assert_eq!(rmq.send_timeout.0, std::time::Duration::from_secs(3));
    assert_eq!(rmq.max_in_flight, 128);
    assert_eq!(
        rmq.not_durable,
        amqp_bridge::config::NotDurablePolicy::Retry
    );
    let target = &config.routes.last().unwrap().to[0];
    assert_eq!(target.tag.as_deref(), Some("{productKey}"));
    assert_eq!(target.keys, vec!["{messageId}", "{deviceName}"]);
    let printed = config.to_redacted_yaml();
    for secret in ["rmq-secret-value", "rmq-token-value"] {
        assert!(!printed.contains(secret), "{printed}");
        assert!(!format!("{config:?}").contains(secret));
    }
    assert!(printed.contains("AKrmq"), "{printed}");
}

#[test]
fn rocketmq_errors_name_their_line() {
    // A name server without a port.
    let text = BASE.replace(
        "  dl:\n",
        "  rmq:\n    kind: rocketmq\n    name_server: localhost\n  dl:\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("name_server") && err.contains("host:port"),
        "{err}"
    );
    // A tag on an MQTT target is a mistake, not silently ignored.
    let (line, column, message) = error_with(
        "      - { sink: out, topic: \"devices/{productKey}\" }",
        "      - { sink: out, topic: \"devices/{productKey}\", tag: x }",
    );
    assert_eq!((line, column), (20, 7), "at the target's `-`");
    assert!(
        message.contains("`tag` is for RocketMQ targets"),
        "{message}"
    );
    // not_durable takes retry or accept only.
    let text = BASE.replace(
        "  dl:\n",
        "  rmq:\n    kind: rocketmq\n    name_server: 127.0.0.1:9876\n    not_durable: maybe\n  dl:\n",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("line 16") || err.contains(":16:"), "{err}");
}

#[test]
fn client_ids_default_to_one_per_host_and_sink() {
    let config = parse(&BASE.replace("  client_id: bridge-1\n", "")).unwrap();
    let default = amqp_bridge::config::default_client_id();
    assert!(default.starts_with("amqp-bridge-") && default.len() > "amqp-bridge-".len());
    assert_eq!(config.source.client_id, default);
    let Some(amqp_bridge::config::SinkConfig::Mqtt(out)) = config.sinks.0.get("out") else {
        panic!("sink out is mqtt");
    };
    assert_eq!(out.client_id, format!("{default}-out"));
    // An explicit id is kept as written.
    let text = BASE.replace(
        "    kind: mqtt\n",
        "    kind: mqtt\n    client_id: GID_x@@@bridge\n",
    );
    let Some(amqp_bridge::config::SinkConfig::Mqtt(out)) =
        parse(&text).unwrap().sinks.0.get("out").cloned()
    else {
        panic!("sink out is mqtt");
    };
    assert_eq!(out.client_id, "GID_x@@@bridge");
}

#[test]
fn telemetry_defaults_to_loopback_and_a_minute_summary() {
    let config = parse(BASE).unwrap();
    assert_eq!(config.telemetry.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(config.telemetry.summary_interval.0.as_secs(), 60);
    let config = parse(&format!(
        "{BASE}telemetry: {{ listen: 0.0.0.0:9000, summary_interval: 0s }}\n"
    ))
    .unwrap();
    assert_eq!(config.telemetry.listen.port(), 9000);
    assert!(config.telemetry.summary_interval.0.is_zero());
}

#[test]
fn destinations_the_broker_would_refuse_are_errors_at_their_line() {
    // MQTT: a wildcard in a topic to publish to.
    let (line, column, message) = error_with(
        r#"topic: "devices/{productKey}" }"#,
        r#"topic: "devices/+/{productKey}" }"#,
    );
    assert_eq!((line, column), (20, 7), "at the target's `-`");
    assert!(
        message.contains("routes[0].to") && message.contains("`+`"),
        "{message}"
    );
    // Kafka: `/` is not allowed in a topic name, fixed or around placeholders.
    let kafka = BASE.replace(
        "  dl:\n",
        "  k:\n    kind: kafka\n    brokers: [\"127.0.0.1:9092\"]\n  dl:\n",
    );
    for (topic, bad) in [("iot/properties", "/"), ("iot/{deviceName}", "/")] {
        let text = kafka.replace(
            r#"{ sink: out, topic: "devices/{productKey}" }"#,
            &format!(r#"{{ sink: k, topic: "{topic}" }}"#),
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("bridge.yaml:23") && err.contains(&format!("not `{bad}`")),
            "{topic}: {err}"
        );
    }
    let text = kafka.replace(
        r#"{ sink: out, topic: "devices/{productKey}" }"#,
        r#"{ sink: k, topic: "iot.{deviceName}" }"#,
    );
    parse(&text).expect("a valid Kafka topic template");
}

#[test]
fn an_unparseable_url_is_not_echoed_with_its_password() {
    let (line, column, message) = error_with(
        "    url: mqtt://127.0.0.1:1883\n",
        "    url: \"mqtt://user:hunter2-secret@[::1\"\n",
    );
    assert_eq!((line, column), (11, 10), "at the URL");
    assert!(message.contains("invalid URL"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

/// `BASE` with a Kafka sink `k` whose body (indented 4) follows the brokers
/// line; the sink's first body line is line 16 of the file.
fn with_kafka(body: &str) -> String {
    BASE.replace(
        "  dl:\n",
        &format!("  k:\n    kind: kafka\n    brokers: [\"b-1.example:9096\"]\n{body}  dl:\n"),
    )
}

fn kafka_error(body: &str) -> (usize, usize, String) {
    match parse(&with_kafka(body)) {
        Err(ConfigError::Invalid {
            line,
            column,
            message,
            path,
        }) => {
            assert_eq!(path, Path::new("bridge.yaml"));
            (line, column, message)
        }
        other => panic!("expected an error at a line for {body:?}: {other:?}"),
    }
}

#[test]
fn kafka_tls_and_sasl_parse_and_their_password_is_never_printed() {
    let config = parse(&with_kafka(
        "    tls: { ca_file: /etc/ssl/kafka-ca.pem }\n    sasl:\n      mechanism: scram-sha-512\n      username: bridge\n      password: kafka-sasl-secret-value\n    compression: zstd\n    linger: 10ms\n",
    ))
    .unwrap();
    let printed = config.to_redacted_yaml();
    assert!(!printed.contains("kafka-sasl-secret-value"), "{printed}");
    assert!(!format!("{config:?}").contains("kafka-sasl-secret-value"));
    assert!(printed.contains("mechanism: SCRAM-SHA-512"), "{printed}");
    assert!(printed.contains("compression: zstd"), "{printed}");
    assert!(
        printed.contains("acks: all") && printed.contains("idempotence: true"),
        "{printed}"
    );
    assert!(
        config.delivery_warnings().is_empty(),
        "{:?}",
        config.delivery_warnings()
    );
}

#[test]
fn kafka_security_mistakes_are_reported_at_their_key() {
    let sasl = |rest: &str| format!("    sasl:\n      username: u\n      password: p\n{rest}");
    let (line, column, message) = kafka_error(&sasl("      mechanism: OAUTHBEARER\n"));
    assert_eq!((line, column), (19, 18), "at the mechanism");
    assert!(
        message.contains("sinks.k.sasl.mechanism") && message.contains("not supported yet"),
        "{message}"
    );
    let (line, column, message) = kafka_error(&sasl("      mechanism: SCRAM-SHA-1\n"));
    assert_eq!((line, column), (19, 18), "at the mechanism");
    assert!(message.contains("unknown SASL mechanism"), "{message}");
    let (line, column, message) =
        kafka_error("    sasl: { mechanism: PLAIN, username: u, password: \"${KAFKA_PW:-}\" }\n");
    assert_eq!((line, column), (16, 54), "at the password");
    assert!(message.contains("empty SASL password"), "{message}");
    let (line, column, message) = kafka_error("    tls:\n      server_name: kafka.example\n");
    assert_eq!((line, column), (17, 20), "at the name");
    assert!(
        message.contains("sinks.k.tls.server_name") && message.contains("not supported"),
        "{message}"
    );
    let (line, column, message) = kafka_error("    tls: { cert_file: /c.pem }\n");
    assert_eq!((line, column), (14, 5), "at the sink's first key");
    assert!(
        message.contains("`cert_file` and `key_file` go together"),
        "{message}"
    );
    let (line, column, message) = kafka_error("    tls: { ca_file: /ca.pem, verify: false }\n");
    assert_eq!((line, column), (16, 30), "at `verify`");
    assert!(message.contains("verify"), "{message}");
    let (line, column, message) = kafka_error("    compression: brotli\n");
    assert_eq!((line, column), (16, 18), "at `brotli`");
    assert!(message.contains("sinks.k.compression"), "{message}");
}

#[test]
fn kafka_settings_that_break_the_delivery_contract_are_refused_or_warned() {
    let (line, column, message) = kafka_error("    acks: 0\n");
    assert_eq!((line, column), (16, 11), "at the value");
    assert!(message.contains("`acks: 0` is refused"), "{message}");
    let (line, column, message) = kafka_error("    acks: 1\n");
    assert_eq!((line, column), (16, 11), "at the acks value, not the sink");
    assert!(
        message.contains("`acks: 1` needs `idempotence: false`"),
        "{message}"
    );
    let (line, column, message) = kafka_error("    linger: 20m\n");
    assert_eq!((line, column), (16, 13), "at `20m`");
    assert!(message.contains("out of range"), "{message}");
    let (line, column, message) = kafka_error("    delivery_timeout: 10ms\n");
    assert_eq!((line, column), (16, 23), "at `10ms`");
    assert!(message.contains("out of range"), "{message}");
    let config = parse(&with_kafka(
        "    acks: 1\n    idempotence: false\n    sasl: { mechanism: SCRAM-SHA-256, username: u, password: p }\n",
    ))
    .unwrap();
    let warnings = config.delivery_warnings().join("\n");
    for expected in [
        "sinks.k.acks: 1",
        "sinks.k.idempotence: false",
        "sinks.k.sasl without tls",
    ] {
        assert!(warnings.contains(expected), "{expected}: {warnings}");
    }
}

#[test]
fn raw_kafka_properties_cannot_turn_acks_off() {
    for (body, column_of_value) in [
        ("    properties:\n      acks: \"0\"\n", 13),
        ("    properties:\n      request.required.acks: 0\n", 30),
    ] {
        let (line, column, message) = kafka_error(body);
        assert_eq!((line, column), (17, column_of_value), "{body}");
        assert!(
            message.contains("sinks.k.properties.") && message.contains("acks: 0` is refused"),
            "{message}"
        );
    }
    // acks 1 raw is allowed, and warned about without claiming acks=0 wording.
    let config = parse(&with_kafka(
        "    properties:\n      acks: \"1\"\n      enable.idempotence: \"false\"\n",
    ))
    .unwrap();
    let warnings = config.delivery_warnings().join("\n");
    assert!(
        warnings.contains("sinks.k.properties.acks: 1 — a record counts as delivered once"),
        "{warnings}"
    );
    assert!(
        warnings
            .contains("sinks.k.properties.enable.idempotence: false — librdkafka's own retries"),
        "{warnings}"
    );
}

#[test]
fn raw_kafka_properties_that_undo_tls_or_sasl_are_warned_about() {
    let secure = "    tls: {}\n    sasl: { mechanism: SCRAM-SHA-256, username: u, password: p }\n";
    let warnings = |raw: &str| {
        parse(&with_kafka(&format!("{secure}    properties:\n{raw}")))
            .unwrap()
            .delivery_warnings()
            .join("\n")
    };
    let text = warnings("      security.protocol: plaintext\n");
    assert!(
        text.contains("sinks.k.properties.security.protocol: plaintext — overrides `tls`")
            && text.contains("SASL password"),
        "{text}"
    );
    let text = warnings("      security.protocol: SSL\n");
    assert!(text.contains("overrides `sasl`"), "{text}");
    let text = warnings("      enable.ssl.certificate.verification: \"false\"\n");
    assert!(
        text.contains("sinks.k.properties.enable.ssl.certificate.verification: false")
            && text.contains("not verified"),
        "{text}"
    );
    for value in ["none", "\"\""] {
        let text = warnings(&format!(
            "      ssl.endpoint.identification.algorithm: {value}\n"
        ));
        assert!(
            text.contains("sinks.k.properties.ssl.endpoint.identification.algorithm")
                && text.contains("host name"),
            "{value}: {text}"
        );
    }
    assert_eq!(warnings("      security.protocol: SASL_SSL\n"), "");
}

#[test]
fn kafka_linger_and_reconnect_backoff_are_checked_against_their_partners() {
    let (_, _, message) = kafka_error("    linger: 10s\n    delivery_timeout: 5s\n");
    assert!(
        message.contains("`linger`") && message.contains("must be shorter than `delivery_timeout`"),
        "{message}"
    );
    let (_, _, message) = kafka_error("    linger: 6m\n");
    assert!(
        message.contains("delivery_timeout (default 5m)"),
        "{message}"
    );
    let (_, _, message) =
        kafka_error("    delivery_timeout: 2s\n    properties: { linger.ms: \"3000\" }\n");
    assert!(message.contains("`properties.linger.ms`"), "{message}");
    parse(&with_kafka("    linger: 1s\n    delivery_timeout: 2s\n")).unwrap();
    let (_, _, message) = kafka_error(
        "    properties: { reconnect.backoff.ms: \"2000\", reconnect.backoff.max.ms: \"500\" }\n",
    );
    assert!(message.contains("reconnect.backoff.max.ms"), "{message}");
    parse(&with_kafka(
        "    properties: { reconnect.backoff.max.ms: \"500\" }\n",
    ))
    .unwrap();
}
