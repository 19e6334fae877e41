//! Alibaba Cloud MQ for MQTT login: signature mode (username
//! `Signature|AccessKeyId|InstanceId`, password Base64(HMAC-SHA1(AccessKeySecret,
//! clientId))) and token mode (username `Token|AccessKeyId|InstanceId`,
//! password `R|token|W|token`).

use super::config::{MqttAuthConfig, MqttAuthMode};
use crate::config::Secret;
use crate::source::aliyun::SignMethod;

/// The client id the instance requires: `GroupID@@@DeviceID`, at most 64 chars.
pub fn check_client_id(client_id: &str) -> Result<(), String> {
    let Some((group, device)) = client_id.split_once("@@@") else {
        return Err(format!(
            "client_id `{client_id}` must look like GroupID@@@DeviceID"
        ));
    };
    if group.is_empty() || device.is_empty() {
        return Err(format!(
            "client_id `{client_id}`: GroupID and DeviceID must not be empty"
        ));
    }
    if client_id.chars().count() > 64 {
        return Err(format!(
            "client_id `{client_id}` is longer than 64 characters"
        ));
    }
    Ok(())
}

/// Username and password for `client_id`.
pub fn credentials(auth: &MqttAuthConfig, client_id: &str) -> (String, Secret) {
    match auth.mode {
        MqttAuthMode::AliyunSignature => {
            let secret = auth
                .access_key_secret
                .as_ref()
                .map(Secret::expose)
                .unwrap_or_default();
            (
                format!("Signature|{}|{}", auth.access_key_id, auth.instance_id),
                Secret::new(SignMethod::HmacSha1.sign(secret.as_bytes(), client_id.as_bytes())),
            )
        }
        MqttAuthMode::AliyunToken => {
            let password = auth
                .tokens
                .iter()
                .map(|(kind, token)| format!("{kind}|{}", token.expose()))
                .collect::<Vec<_>>()
                .join("|");
            (
                format!("Token|{}|{}", auth.access_key_id, auth.instance_id),
                Secret::new(password),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    // Expected password from openssl, independent of this code:
    //   printf %s 'GID_bridge@@@bridge-01' | openssl dgst -sha1 -hmac 'mqtt/Secret+Key' -binary | base64
    #[test]
    fn signature_mode_matches_openssl() {
        let auth = MqttAuthConfig {
            mode: MqttAuthMode::AliyunSignature,
            access_key_id: "LTAImqtt".into(),
            access_key_secret: Some(Secret::new("mqtt/Secret+Key")),
            instance_id: "post-cn-abc123".into(),
            tokens: BTreeMap::new(),
        };
        let (user, pass) = credentials(&auth, "GID_bridge@@@bridge-01");
        assert_eq!(user, "Signature|LTAImqtt|post-cn-abc123");
        assert_eq!(pass.expose(), "G2U1ZIXfzn96CuUOs0rzRsAq0DU=");
    }

    // Alibaba's documented example (ApsaraMQ for MQTT, "Signature-based
    // authentication"): client GID_Test@@@0001, instance mqtt-xxxxx,
    // AccessKey ID YYYYY → username Signature|YYYYY|mqtt-xxxxx. The docs
    // give no password value for it (only a placeholder).
    #[test]
    fn signature_username_matches_the_documented_example() {
        let auth = MqttAuthConfig {
            mode: MqttAuthMode::AliyunSignature,
            access_key_id: "YYYYY".into(),
            access_key_secret: Some(Secret::new("XXXXX")),
            instance_id: "mqtt-xxxxx".into(),
            tokens: BTreeMap::new(),
        };
        let (user, _) = credentials(&auth, "GID_Test@@@0001");
        assert_eq!(user, "Signature|YYYYY|mqtt-xxxxx");
    }

    #[test]
    fn token_mode_lists_every_token() {
        let auth = MqttAuthConfig {
            mode: MqttAuthMode::AliyunToken,
            access_key_id: "LTAImqtt".into(),
            access_key_secret: None,
            instance_id: "post-cn-abc123".into(),
            tokens: BTreeMap::from([
                ("R".into(), Secret::new("tr")),
                ("W".into(), Secret::new("tw")),
            ]),
        };
        let (user, pass) = credentials(&auth, "GID_x@@@y");
        assert_eq!(user, "Token|LTAImqtt|post-cn-abc123");
        assert_eq!(pass.expose(), "R|tr|W|tw");
    }

    #[test]
    fn client_id_shape() {
        assert!(check_client_id("GID_bridge@@@bridge-01").is_ok());
        assert!(check_client_id("bridge-01").is_err());
        assert!(check_client_id("@@@x").is_err());
        assert!(check_client_id(&format!("GID_a@@@{}", "d".repeat(60))).is_err());
    }
}
