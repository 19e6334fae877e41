//! The command line as a user runs it: exit codes and what is printed.

use std::process::Command;

const CONFIG: &str = r#"source:
  kind: aliyun
  url: amqps://1234.iot-amqp.cn-shanghai.aliyuncs.com:5671
  access_key_id: LTAIcli
  access_key_secret: ${CLI_TEST_SK}
  consumer_group_id: CG1
  client_id: bridge-cli
  security_token: ${CLI_TEST_STS}
sinks:
  out: { kind: mqtt, url: "mqtt://127.0.0.1:1883", password: "${CLI_TEST_MQTT_PW}" }
routes:
  - match: { topic: "/#" }
    to: [ { sink: out, topic: "x/{messageId}" } ]
"#;

const SECRETS: [&str; 3] = [
    "cli-secret-key-value",
    "cli-sts-token-value",
    "cli-mqtt-password",
];

fn bridge(args: &[&str], config: &str) -> (i32, String, String) {
    bridge_with_env(args, config, &[])
}

/// As [`bridge`], with these environment variables set as well.
fn bridge_with_env(args: &[&str], config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bridge.yaml");
    std::fs::write(&path, config).unwrap();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", path.to_str().unwrap()]);
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .args(&all)
        .env("CLI_TEST_SK", SECRETS[0])
        .env("CLI_TEST_STS", SECRETS[1])
        .env("CLI_TEST_MQTT_PW", SECRETS[2])
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_effective_config_without_secrets() {
    let (code, stdout, stderr) = bridge(&["check"], CONFIG);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("access_key_id: LTAIcli"), "{stdout}");
    assert!(stdout.contains("'***'"), "{stdout}");
    for secret in SECRETS {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed"
        );
    }
}

#[test]
fn check_exits_1_naming_file_line_and_key() {
    let (code, _, stderr) = bridge(
        &["check"],
        &CONFIG.replace("  credit_x", "").replace(
            "client_id: bridge-cli",
            "client_id: bridge-cli\n  credit: 0",
        ),
    );
    assert_eq!(code, 1);
    assert!(
        // Line 8, column 11: the value of `  credit: 0`.
        stderr.contains("bridge.yaml:8:11: source.credit"),
        "{stderr}"
    );
    for secret in SECRETS {
        assert!(!stderr.contains(secret), "{secret} printed");
    }
}

#[test]
fn sign_prints_username_and_hides_the_password_unless_asked() {
    let (code, stdout, _) = bridge(&["sign"], CONFIG);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("username: bridge-cli|authMode=ststoken,securityToken=***,"),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRETS[1]), "STS token printed: {stdout}");
    assert!(lines[0].contains(",signMethod=hmacsha1,consumerGroupId=CG1,authId=LTAIcli,timestamp="));
    assert_eq!(lines[1], "password: ***");

    let (code, stdout, _) = bridge(&["sign", "--show-password"], CONFIG);
    assert_eq!(code, 0);
    let password = stdout
        .lines()
        .nth(1)
        .unwrap()
        .strip_prefix("password: ")
        .unwrap();
    assert_eq!(password.len(), 28, "base64 of a SHA-1 HMAC: {password}");
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_amqp-bridge"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.starts_with(&format!(
            "amqp-bridge {} (commit ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(!text.contains("(commit )"), "{text}");
}

#[test]
fn check_warns_about_settings_that_weaken_delivery() {
    let weak = CONFIG.replace(
        r#"to: [ { sink: out, topic: "x/{messageId}" } ]"#,
        r#"to: [ { sink: out, topic: "x/{messageId}", qos: 0 }, { sink: k, topic: t } ]"#,
    )
    .replace(
        "routes:\n",
        "  k: { kind: kafka, brokers: [\"127.0.0.1:9092\"], properties: { acks: \"1\", enable.idempotence: \"false\" } }\n  r: { kind: rocketmq, name_server: \"127.0.0.1:9876\", not_durable: accept }\nroutes:\n",
    );
    let (code, _, stderr) = bridge(&["check"], &weak);
    assert_eq!(code, 0, "allowed, only warned about: {stderr}");
    for key in [
        "routes[0].to[0].qos: 0",
        "sinks.k.properties.acks: 1",
        "sinks.k.properties.enable.idempotence: false",
        "sinks.r.not_durable: accept",
    ] {
        assert!(
            stderr.contains("warning: ") && stderr.contains(key),
            "{key}: {stderr}"
        );
    }
    // The plain configuration has nothing to warn about.
    let (_, _, stderr) = bridge(&["check"], CONFIG);
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// Without a configured client id, the source's id (the container id of a
/// generic AMQP source) is `amqp-bridge-$HOSTNAME` and each MQTT sink's adds
/// `-SINK`, so replicas (pods) never share one; an id that is written is
/// kept. A blank HOSTNAME falls back to the kernel's host name.
#[test]
fn default_client_ids_derive_from_hostname() {
    let config = CONFIG.replace("  client_id: bridge-cli\n", "").replace(
        "routes:\n",
        "  two: { kind: mqtt, url: \"mqtt://127.0.0.1:1884\" }\n  \
         fixed: { kind: mqtt, url: \"mqtt://127.0.0.1:1885\", client_id: GID_x@@@kept }\n\
         routes:\n",
    );
    let printed = |config: &str, hostname: &str| -> serde_json::Value {
        let (code, stdout, stderr) = bridge_with_env(&["check"], config, &[("HOSTNAME", hostname)]);
        assert_eq!(code, 0, "{stderr}");
        yaml_serde::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let ids = |printed: &serde_json::Value| {
        [
            printed["source"]["client_id"].clone(),
            printed["sinks"]["out"]["client_id"].clone(),
            printed["sinks"]["two"]["client_id"].clone(),
            printed["sinks"]["fixed"]["client_id"].clone(),
        ]
    };
    assert_eq!(
        ids(&printed(&config, "pod-7")),
        [
            "amqp-bridge-pod-7",
            "amqp-bridge-pod-7-out",
            "amqp-bridge-pod-7-two",
            "GID_x@@@kept"
        ]
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let kernel = kernel.trim();
    assert_eq!(
        ids(&printed(&config, " ")),
        [
            format!("amqp-bridge-{kernel}"),
            format!("amqp-bridge-{kernel}-out"),
            format!("amqp-bridge-{kernel}-two"),
            "GID_x@@@kept".to_string()
        ]
    );
    let amqp = "source: { kind: amqp, url: \"amqp://127.0.0.1:5672\", address: q }\n\
                sinks:\n  out: { kind: stdout }\n";
    assert_eq!(
        printed(amqp, "pod-7")["source"]["container_id"],
        "amqp-bridge-pod-7"
    );
}
