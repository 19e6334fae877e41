//! IoT Platform login: the signed SASL PLAIN username and password of the
//! server-side subscription, rebuilt with a fresh timestamp on every connect.
//!
//! username = `clientId|authMode=aksign,signMethod=M,consumerGroupId=CG,authId=AK,iotInstanceId=ID,timestamp=MS|`
//! password = Base64(HMAC-M(stringToSign, AccessKeySecret)) with
//! stringToSign = `authId=AK&timestamp=MS` (or `authId=AK&securityToken=T&timestamp=MS`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

use crate::config::{Secret, SourceConfig};

/// The HMAC the platform accepts for the password.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignMethod {
    #[serde(rename = "hmacmd5")]
    HmacMd5,
    #[default]
    #[serde(rename = "hmacsha1")]
    HmacSha1,
    #[serde(rename = "hmacsha256")]
    HmacSha256,
}

impl SignMethod {
    /// The name used in the username's `signMethod=`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignMethod::HmacMd5 => "hmacmd5",
            SignMethod::HmacSha1 => "hmacsha1",
            SignMethod::HmacSha256 => "hmacsha256",
        }
    }

    /// Parses the username's `signMethod=` value.
    pub fn parse(name: &str) -> Option<SignMethod> {
        match name {
            "hmacmd5" => Some(SignMethod::HmacMd5),
            "hmacsha1" => Some(SignMethod::HmacSha1),
            "hmacsha256" => Some(SignMethod::HmacSha256),
            _ => None,
        }
    }

    /// Base64 of HMAC(key, data) with this method.
    pub fn sign(self, key: &[u8], data: &[u8]) -> String {
        fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            // HMAC accepts keys of any length, so this cannot fail.
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        let digest = match self {
            SignMethod::HmacMd5 => mac::<Hmac<md5::Md5>>(key, data),
            SignMethod::HmacSha1 => mac::<Hmac<sha1::Sha1>>(key, data),
            SignMethod::HmacSha256 => mac::<Hmac<sha2::Sha256>>(key, data),
        };
        base64::engine::general_purpose::STANDARD.encode(digest)
    }
}

/// Everything needed to sign a login, borrowed from the source config.
#[derive(Clone, Copy, Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a str,
    pub access_key_id: &'a str,
    pub access_key_secret: &'a Secret,
    pub consumer_group_id: &'a str,
    pub instance_id: Option<&'a str>,
    pub security_token: Option<&'a Secret>,
    pub sign_method: SignMethod,
}

impl<'a> Credentials<'a> {
    /// The credentials of a source block, with `client_id` overriding its own
    /// (each of N connections gets a suffixed id).
    pub fn from_config(config: &'a SourceConfig, client_id: &'a str) -> Self {
        Credentials {
            client_id,
            access_key_id: &config.access_key_id,
            access_key_secret: &config.access_key_secret,
            consumer_group_id: &config.consumer_group_id,
            instance_id: config.instance_id(),
            security_token: config.sts_token(),
            sign_method: config.sign_method,
        }
    }
}

/// A SASL PLAIN login; the password is only reachable through [`Secret::expose`].
/// Debug hides both: the username carries an STS token in ststoken mode.
#[derive(Clone)]
pub struct SignedLogin {
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for SignedLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedLogin")
            .field("username", &self.username_redacted())
            .field("password", &self.password)
            .finish()
    }
}

impl SignedLogin {
    /// The username with an STS token's value replaced by `***`, for printing.
    pub fn username_redacted(&self) -> String {
        match self.username.split_once("securityToken=") {
            Some((head, tail)) => {
                let rest = tail.find([',', '|']).map(|i| &tail[i..]).unwrap_or("");
                format!("{head}securityToken=***{rest}")
            }
            None => self.username.clone(),
        }
    }
}

/// The text the platform signs: keys sorted, joined by `&`.
pub fn string_to_sign(
    access_key_id: &str,
    security_token: Option<&str>,
    timestamp_ms: u64,
) -> String {
    match security_token {
        Some(token) => {
            format!("authId={access_key_id}&securityToken={token}&timestamp={timestamp_ms}")
        }
        None => format!("authId={access_key_id}&timestamp={timestamp_ms}"),
    }
}

/// Signs a login for the given timestamp (milliseconds since the epoch).
pub fn sign_at(creds: &Credentials<'_>, timestamp_ms: u64) -> SignedLogin {
    let token = creds.security_token.map(Secret::expose);
    let mut username = format!("{}|", creds.client_id);
    match token {
        Some(token) => username.push_str(&format!("authMode=ststoken,securityToken={token}")),
        None => username.push_str("authMode=aksign"),
    }
    username.push_str(&format!(
        ",signMethod={},consumerGroupId={},authId={}",
        creds.sign_method.as_str(),
        creds.consumer_group_id,
        creds.access_key_id
    ));
    if let Some(instance) = creds.instance_id {
        username.push_str(&format!(",iotInstanceId={instance}"));
    }
    username.push_str(&format!(",timestamp={timestamp_ms}|"));
    let to_sign = string_to_sign(creds.access_key_id, token, timestamp_ms);
    let password = creds.sign_method.sign(
        creds.access_key_secret.expose().as_bytes(),
        to_sign.as_bytes(),
    );
    SignedLogin {
        username,
        password: Secret::new(password),
    }
}

/// Signs a login with the current time; call it on every (re)connect.
pub fn sign_now(creds: &Credentials<'_>) -> SignedLogin {
    sign_at(creds, now_ms())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The parts of a platform username, as the server reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginParams {
    pub client_id: String,
    pub auth_mode: String,
    pub sign_method: SignMethod,
    pub consumer_group_id: String,
    pub access_key_id: String,
    pub instance_id: Option<String>,
    pub security_token: Option<String>,
    pub timestamp_ms: u64,
}

/// Parses `clientId|k=v,k=v,...|`; the error says which part is wrong.
pub fn parse_username(username: &str) -> Result<LoginParams, String> {
    let mut parts = username.split('|');
    let (Some(client_id), Some(params), Some(""), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("username must look like clientId|key=value,...|".into());
    };
    if client_id.is_empty() {
        return Err("empty clientId".into());
    }
    let mut map = BTreeMap::new();
    for pair in params.split(',') {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("parameter `{pair}` is not key=value"))?;
        map.insert(k, v);
    }
    let take = |key: &str| {
        map.get(key)
            .map(|v| v.to_string())
            .ok_or_else(|| format!("missing `{key}`"))
    };
    let auth_mode = take("authMode")?;
    let security_token = match auth_mode.as_str() {
        "aksign" => None,
        "ststoken" => Some(take("securityToken")?),
        other => return Err(format!("unknown authMode `{other}`")),
    };
    let method = take("signMethod")?;
    let sign_method =
        SignMethod::parse(&method).ok_or_else(|| format!("unknown signMethod `{method}`"))?;
    let timestamp = take("timestamp")?;
    Ok(LoginParams {
        client_id: client_id.to_string(),
        auth_mode,
        sign_method,
        consumer_group_id: take("consumerGroupId")?,
        access_key_id: take("authId")?,
        instance_id: map.get("iotInstanceId").map(|v| v.to_string()),
        security_token,
        timestamp_ms: timestamp
            .parse()
            .map_err(|_| format!("timestamp `{timestamp}` is not a number"))?,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn debug_of_a_login_hides_the_sts_token_and_the_password() {
        let login = SignedLogin {
            username: "c|authMode=ststoken,securityToken=TOKEN-VALUE,timestamp=1|".into(),
            password: Secret::new("PASSWORD-VALUE"),
        };
        let text = format!("{login:?}");
        assert!(
            !text.contains("TOKEN-VALUE") && !text.contains("PASSWORD-VALUE"),
            "{text}"
        );
    }

    use super::*;

    const AK: &str = "LTAI5tTestAccessKey";
    const TS: u64 = 1_700_000_000_123;

    fn creds<'a>(
        secret: &'a Secret,
        token: Option<&'a Secret>,
        method: SignMethod,
    ) -> Credentials<'a> {
        Credentials {
            client_id: "bridge-1",
            access_key_id: AK,
            access_key_secret: secret,
            consumer_group_id: "DEFAULT_GROUP",
            instance_id: Some("iot-06z00abc"),
            security_token: token,
            sign_method: method,
        }
    }

    // Expected values from openssl, independent of this code:
    //   S='authId=LTAI5tTestAccessKey&timestamp=1700000000123'
    //   K='s3cr3t/Key+value'
    //   printf %s "$S" | openssl dgst -md5    -hmac "$K" -binary | base64
    //   printf %s "$S" | openssl dgst -sha1   -hmac "$K" -binary | base64
    //   printf %s "$S" | openssl dgst -sha256 -hmac "$K" -binary | base64
    #[test]
    fn aksign_passwords_match_openssl() {
        let secret = Secret::new("s3cr3t/Key+value");
        for (method, expected) in [
            (SignMethod::HmacMd5, "saWSadWLk6G72w9G6roJVQ=="),
            (SignMethod::HmacSha1, "ecI+9JeAPQWl1KXoQ0Q1EFzyGAA="),
            (
                SignMethod::HmacSha256,
                "6EwVizwDobmBvSAzskf1VMdTdaiMCHORQwFJnaAjGRw=",
            ),
        ] {
            let login = sign_at(&creds(&secret, None, method), TS);
            assert_eq!(login.password.expose(), expected, "{method:?}");
        }
    }

    //   S='authId=LTAI5tTestAccessKey&securityToken=CAIS-token.abc&timestamp=1700000000123'
    //   printf %s "$S" | openssl dgst -sha1   -hmac 's3cr3t/Key+value' -binary | base64
    //   printf %s "$S" | openssl dgst -sha256 -hmac 's3cr3t/Key+value' -binary | base64
    #[test]
    fn ststoken_passwords_match_openssl() {
        let secret = Secret::new("s3cr3t/Key+value");
        let token = Secret::new("CAIS-token.abc");
        for (method, expected) in [
            (SignMethod::HmacSha1, "g0zZDd1FcW8iEgC/UqisLHvAlfs="),
            (
                SignMethod::HmacSha256,
                "64Tt99JpUXypmfBQSQ0WJ27Y+1VTKKhoJLS8QjgQUhE=",
            ),
        ] {
            let login = sign_at(&creds(&secret, Some(&token), method), TS);
            assert_eq!(login.password.expose(), expected, "{method:?}");
        }
    }

    #[test]
    fn username_has_the_platform_layout() {
        let secret = Secret::new("x");
        let login = sign_at(&creds(&secret, None, SignMethod::HmacSha1), TS);
        assert_eq!(
            login.username,
            "bridge-1|authMode=aksign,signMethod=hmacsha1,consumerGroupId=DEFAULT_GROUP,\
             authId=LTAI5tTestAccessKey,iotInstanceId=iot-06z00abc,timestamp=1700000000123|"
        );
        let token = Secret::new("TOK");
        let mut c = creds(&secret, Some(&token), SignMethod::HmacSha256);
        c.instance_id = None;
        let login = sign_at(&c, TS);
        assert!(login
            .username_redacted()
            .contains("securityToken=***,signMethod"));
        assert_eq!(
            login.username,
            "bridge-1|authMode=ststoken,securityToken=TOK,signMethod=hmacsha256,\
             consumerGroupId=DEFAULT_GROUP,authId=LTAI5tTestAccessKey,timestamp=1700000000123|"
        );
    }

    #[test]
    fn parse_username_round_trips() {
        let secret = Secret::new("x");
        let token = Secret::new("TOK");
        let login = sign_at(&creds(&secret, Some(&token), SignMethod::HmacMd5), TS);
        let params = parse_username(&login.username).unwrap();
        assert_eq!(params.client_id, "bridge-1");
        assert_eq!(params.auth_mode, "ststoken");
        assert_eq!(params.security_token.as_deref(), Some("TOK"));
        assert_eq!(params.sign_method, SignMethod::HmacMd5);
        assert_eq!(params.instance_id.as_deref(), Some("iot-06z00abc"));
        assert_eq!(params.timestamp_ms, TS);
        assert!(parse_username("no-bars").is_err());
        assert!(parse_username("c|authMode=aksign|").is_err());
    }

    #[test]
    fn every_call_takes_a_fresh_timestamp() {
        let secret = Secret::new("x");
        let c = creds(&secret, None, SignMethod::HmacSha1);
        let before = now_ms();
        let params = parse_username(&sign_now(&c).username).unwrap();
        assert!(params.timestamp_ms >= before && params.timestamp_ms <= now_ms());
    }
}
