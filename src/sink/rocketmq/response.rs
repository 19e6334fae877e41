//! What a broker's answer to a send means: delivered, retry, or dead letter.

use super::codec::response_code;
use super::config::NotDurablePolicy;
use crate::sink::SinkError;

/// What a broker's answer to a send means for the message.
pub fn classify(
    code: i32,
    remark: Option<&str>,
    not_durable: NotDurablePolicy,
) -> Result<(), SinkError> {
    use response_code::*;
    let remark = remark.unwrap_or_default();
    let say = |what: &str| {
        format!("{what} (code {code}) {remark}")
            .trim_end()
            .to_string()
    };
    match code {
        SUCCESS => Ok(()),
        FLUSH_DISK_TIMEOUT | FLUSH_SLAVE_TIMEOUT | SLAVE_NOT_AVAILABLE => match not_durable {
            NotDurablePolicy::Accept => Ok(()),
            NotDurablePolicy::Retry => Err(SinkError::Transient(say(
                "stored but not durable yet (not_durable: retry)",
            ))),
        },
        // A broker says so when the route was stale (a slave not synced yet, a
        // borrowed default-topic route); the name server decides "missing".
        TOPIC_NOT_EXIST => Err(SinkError::Transient(say("topic not on this broker"))),
        MESSAGE_ILLEGAL => Err(SinkError::Permanent(say(
            "message refused as illegal or too large",
        ))),
        // A broker whose writes were switched off for maintenance says
        // "sending message is forbidden"; that passes. Refused credentials do not.
        NO_PERMISSION if remark.contains("forbidden") => {
            Err(SinkError::Transient(say("broker not writable")))
        }
        NO_PERMISSION => Err(SinkError::Permanent(say("no permission"))),
        REQUEST_CODE_NOT_SUPPORTED | VERSION_NOT_SUPPORTED => Err(SinkError::Permanent(say(
            "request not supported by the broker",
        ))),
        // Brokers up to 4.9 answer a failed ACL check with a system error.
        SYSTEM_ERROR if remark.contains("AclException") => {
            Err(SinkError::Permanent(say("ACL check failed")))
        }
        SYSTEM_BUSY => Err(SinkError::Transient(say("broker busy"))),
        SERVICE_NOT_AVAILABLE => Err(SinkError::Transient(say("service not available"))),
        _ => Err(SinkError::Transient(say("send failed"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_ok_resolves_and_not_durable_follows_the_policy() {
        assert_eq!(classify(0, None, NotDurablePolicy::Retry), Ok(()));
        for code in [10, 11, 12] {
            assert!(matches!(
                classify(code, None, NotDurablePolicy::Retry),
                Err(SinkError::Transient(_))
            ));
            assert_eq!(classify(code, None, NotDurablePolicy::Accept), Ok(()));
        }
    }

    #[test]
    fn permanent_and_transient_codes() {
        for code in [13, 16] {
            assert!(matches!(
                classify(code, Some("x"), NotDurablePolicy::Retry),
                Err(SinkError::Permanent(_))
            ));
        }
        assert!(matches!(
            classify(
                16,
                Some("the broker[b] sending message is forbidden"),
                NotDurablePolicy::Retry
            ),
            Err(SinkError::Transient(_))
        ));
        for code in [1, 2, 14, 17, 25] {
            assert!(matches!(
                classify(code, None, NotDurablePolicy::Retry),
                Err(SinkError::Transient(_))
            ));
        }
        assert!(matches!(
            classify(
                1,
                Some("org.apache.rocketmq.acl.common.AclException: signature mismatch"),
                NotDurablePolicy::Retry
            ),
            Err(SinkError::Permanent(_))
        ));
    }
}
