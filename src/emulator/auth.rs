//! The platform's login check: SASL PLAIN with a signed username, verified for
//! every sign method and auth mode, and a bounded clock skew.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::types::primitives::{Array, Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};

use crate::source::aliyun::{now_ms, parse_username, string_to_sign, LoginParams};

/// What the emulator accepts: keys, consumer groups and the allowed clock skew.
#[derive(Debug)]
pub struct AuthRules {
    /// AccessKeyId → AccessKeySecret.
    pub keys: HashMap<String, String>,
    pub consumer_groups: HashSet<String>,
    pub max_skew: Duration,
    /// The last passwords clients sent (at most `PASSWORDS_KEPT`), so a
    /// test can search a bridge's output for its signed passwords.
    pub passwords_seen: Mutex<std::collections::VecDeque<String>>,
}

/// How many of the last passwords [`AuthRules::passwords_seen`] keeps.
pub const PASSWORDS_KEPT: usize = 64;

impl AuthRules {
    /// Checks a PLAIN login; the error is the reason sent back to the client.
    pub fn verify(&self, username: &str, password: &str) -> Result<LoginParams, String> {
        let params = parse_username(username)?;
        let secret = self
            .keys
            .get(&params.access_key_id)
            .ok_or_else(|| format!("unknown AccessKeyId `{}`", params.access_key_id))?;
        if !self.consumer_groups.contains(&params.consumer_group_id) {
            return Err(format!(
                "unknown consumer group `{}`",
                params.consumer_group_id
            ));
        }
        let now = now_ms();
        let skew = now.abs_diff(params.timestamp_ms);
        if skew > self.max_skew.as_millis() as u64 {
            return Err(format!(
                "timestamp {} is {} ms away from server time (max {} ms)",
                params.timestamp_ms,
                skew,
                self.max_skew.as_millis()
            ));
        }
        let to_sign = string_to_sign(
            &params.access_key_id,
            params.security_token.as_deref(),
            params.timestamp_ms,
        );
        let expected = params
            .sign_method
            .sign(secret.as_bytes(), to_sign.as_bytes());
        if expected != password {
            return Err("signature mismatch".to_string());
        }
        Ok(params)
    }
}

/// The SASL acceptor of one connection; remembers who logged in or why not.
#[derive(Clone, Debug)]
pub struct PlatformSasl {
    rules: Arc<AuthRules>,
    result: Arc<Mutex<Option<Result<LoginParams, String>>>>,
}

impl PlatformSasl {
    /// A fresh acceptor for one incoming connection.
    pub fn new(rules: Arc<AuthRules>) -> Self {
        PlatformSasl {
            rules,
            result: Arc::new(Mutex::new(None)),
        }
    }

    /// The verified login, once SASL finished.
    pub fn outcome(&self) -> Option<Result<LoginParams, String>> {
        self.result.lock().ok().and_then(|r| r.clone())
    }

    fn check(&self, init: &SaslInit) -> Result<LoginParams, String> {
        if init.mechanism.as_str() != "PLAIN" {
            return Err(format!(
                "mechanism {} not supported",
                init.mechanism.as_str()
            ));
        }
        let response = init
            .initial_response
            .as_ref()
            .ok_or("PLAIN without initial response")?;
        let (user, pass) = plain_credentials(response)?;
        if let Ok(mut seen) = self.rules.passwords_seen.lock() {
            if seen.len() == PASSWORDS_KEPT {
                seen.pop_front();
            }
            seen.push_back(pass.to_string());
        }
        self.rules.verify(user, pass)
    }
}

/// Splits a SASL PLAIN response (`authzid NUL username NUL password`).
pub(crate) fn plain_credentials(response: &[u8]) -> Result<(&str, &str), String> {
    let mut parts = response.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed PLAIN response".to_string());
    };
    let user = std::str::from_utf8(user).map_err(|_| "username is not UTF-8")?;
    let pass = std::str::from_utf8(pass).map_err(|_| "password is not UTF-8")?;
    Ok((user, pass))
}

impl SaslAcceptor for PlatformSasl {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![Symbol::from("PLAIN")])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        let result = self.check(&init);
        let outcome = match &result {
            Ok(_) => SaslOutcome {
                code: SaslCode::Ok,
                additional_data: None,
            },
            Err(reason) => SaslOutcome {
                code: SaslCode::Auth,
                additional_data: Some(Binary::from(reason.as_bytes().to_vec())),
            },
        };
        if let Ok(mut slot) = self.result.lock() {
            *slot = Some(result);
        }
        SaslServerFrame::Outcome(outcome)
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code: SaslCode::Sys,
            additional_data: None,
        })
    }
}
