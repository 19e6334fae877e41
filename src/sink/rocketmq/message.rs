//! Building a SEND_MESSAGE_V2 request from an outgoing copy: topic, tag,
//! keys, user properties and the header fields the broker reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::codec::{request_code, Command};
use crate::sink::{Destination, Outgoing};

/// Property names the broker or clients give a meaning to
/// (`MessageConst.STRING_HASH_SET`). A user property with such a name is sent
/// as [`RESERVED_PREFIX`] + name rather than dropped or allowed to change
/// delivery (a property called `DELAY` must not delay the message).
const RESERVED: &[&str] = &[
    "KEYS",
    "TAGS",
    "WAIT",
    "DELAY",
    "RETRY_TOPIC",
    "REAL_TOPIC",
    "REAL_QID",
    "TRAN_MSG",
    "PGROUP",
    "MIN_OFFSET",
    "MAX_OFFSET",
    "BUYER_ID",
    "ORIGIN_MESSAGE_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "RECONSUME_TIME",
    "MSG_REGION",
    "TRACE_ON",
    "UNIQ_KEY",
    "MAX_RECONSUME_TIMES",
    "CONSUME_START_TIME",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "CHECK_IMMUNITY_TIME_IN_SECONDS",
    "SHARDING_KEY",
    "__SHARDINGKEY",
    "__STARTDELIVERTIME",
    "TIMER_DELIVER_MS",
    "TIMER_DELAY_SEC",
    "TIMER_DELAY_MS",
    "TIMER_OUT_MS",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_DEL_UNIQKEY",
    "INSTANCE_ID",
    "CORRELATION_ID",
    "REPLY_TO_CLIENT",
    "TTL",
    "ARRIVE_TIME",
    "PUSH_REPLY_TIME",
    "CLUSTER",
    "MSG_TYPE",
    "POP_CK",
    "POP_CK_OFFSET",
    "1ST_POP_TIME",
    "DUP_INFO",
    "EXTEND_UNIQ_INFO",
    "bname",
    "INNER_MULTI_DISPATCH",
    "INNER_MULTI_QUEUE_OFFSET",
    "TRACE_CONTEXT",
    "TIMER_DELAY_LEVEL",
    "BORN_TIMESTAMP",
    "INNER_NUM",
    "INNER_BASE",
    "TRANSACTION_CHECK_TIMES",
    "REDIRECT",
    "PROPERTY_FORWARD_QUEUE_ID",
];

/// What a reserved user property name is prefixed with.
pub const RESERVED_PREFIX: &str = "amqp.";

/// Separates a property name from its value, and one pair from the next.
const NAME_VALUE: char = '\u{1}';
const PAIR: char = '\u{2}';

/// The producer-side fields of a send that do not depend on the message.
pub struct SendContext<'a> {
    pub producer_group: &'a str,
    pub broker_name: &'a str,
    pub queue_id: u32,
}

/// The topic used to auto-create topics on brokers that allow it.
pub const DEFAULT_TOPIC: &str = "TBW102";

/// The name a user property travels under.
pub fn property_name(name: &str) -> std::borrow::Cow<'_, str> {
    // `__` names are the broker's own (`__transactionId__`, `__BORNHOST`,
    // `__RMQ.TRANSIENT.*`, which it drops).
    if RESERVED.contains(&name) || name.starts_with("__") {
        format!("{RESERVED_PREFIX}{name}").into()
    } else {
        name.into()
    }
}

/// The separators would split a name or value in two; they become U+FFFD.
fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([NAME_VALUE, PAIR]) {
        text.replace([NAME_VALUE, PAIR], "\u{fffd}").into()
    } else {
        text.into()
    }
}

/// The message properties: system ones (TAGS, KEYS, UNIQ_KEY, WAIT) and the
/// user ones — the platform's three, or every application property with
/// `properties: all` — plus, for a dead letter, why it failed.
pub fn properties(message: &Outgoing) -> BTreeMap<String, String> {
    let (tag, keys, all) = match &message.destination {
        Destination::RocketMq {
            tag,
            keys,
            all_properties,
            ..
        } => (tag.as_deref(), keys.as_slice(), *all_properties),
        _ => (None, &[][..], false),
    };
    let mut props: BTreeMap<String, String> = message
        .forwarded_properties(all)
        .map(|(name, value)| {
            (
                clean(&property_name(name)).into_owned(),
                clean(value).into_owned(),
            )
        })
        .collect();
    if let Some(tag) = tag.filter(|t| !t.is_empty()) {
        props.insert("TAGS".into(), clean(tag).into_owned());
    }
    let keys: Vec<&str> = keys
        .iter()
        .flat_map(|k| k.split_whitespace())
        .filter(|k| !k.is_empty())
        .collect();
    if !keys.is_empty() {
        props.insert("KEYS".into(), clean(&keys.join(" ")).into_owned());
    }
    props.insert("UNIQ_KEY".into(), unique_key());
    props.insert("WAIT".into(), "true".into());
    props
}

/// `name\x01value\x02` for each property, as the broker stores them.
pub fn encode_properties(props: &BTreeMap<String, String>) -> String {
    let mut text = String::new();
    for (name, value) in props {
        text.push_str(name);
        text.push(NAME_VALUE);
        text.push_str(value);
        text.push(PAIR);
    }
    text
}

/// The SEND_MESSAGE_V2 request (single-letter header field names).
pub fn send_request(
    topic: &str,
    context: &SendContext<'_>,
    properties: &BTreeMap<String, String>,
    body: bytes::Bytes,
) -> Command {
    let born = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let fields = [
        ("a", context.producer_group.to_string()),
        ("b", topic.to_string()),
        ("c", DEFAULT_TOPIC.to_string()),
        ("d", "4".to_string()),
        ("e", context.queue_id.to_string()),
        ("f", "0".to_string()),
        ("g", born.to_string()),
        ("h", "0".to_string()),
        ("i", encode_properties(properties)),
        ("j", "0".to_string()),
        ("k", "false".to_string()),
        ("m", "false".to_string()),
        ("n", context.broker_name.to_string()),
    ];
    let mut command = Command::request(
        request_code::SEND_MESSAGE_V2,
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    command.body = body;
    command
}

/// A message id unique per producer, as the Java client's `UNIQ_KEY`:
/// 32 hex digits from process, time and a counter.
pub fn unique_key() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let random: u64 = rand::random();
        format!(
            "{:04X}{:012X}",
            std::process::id() & 0xffff,
            random & 0xffff_ffff_ffff
        )
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:08X}{count:08X}", now as u32)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::sink::Failure;

    fn outgoing(all: bool, failure: Option<Failure>) -> Outgoing {
        let properties = [
            ("topic", "/a1/dev/thing/event/property/post"),
            ("messageId", "42"),
            ("generateTime", "1700000000000"),
            ("productKey", "a1"),
            ("DELAY", "3"),
            ("odd", "x\u{1}y"),
        ];
        Outgoing {
            destination: Destination::RocketMq {
                topic: "iot".into(),
                tag: None,
                keys: Vec::new(),
                all_properties: all,
            },
            failure: failure.map(Arc::new),
            ..Outgoing::for_test(&properties, b"{}")
        }
    }

    #[test]
    fn platform_properties_tag_and_keys() {
        let message = Outgoing {
            destination: Destination::RocketMq {
                topic: "iot".into(),
                tag: Some("property".into()),
                keys: vec!["42 dev".into()],
                all_properties: false,
            },
            ..outgoing(false, None)
        };
        let props = properties(&message);
        assert_eq!(props["topic"], "/a1/dev/thing/event/property/post");
        assert_eq!(props["messageId"], "42");
        assert_eq!(props["generateTime"], "1700000000000");
        assert!(!props.contains_key("productKey"));
        assert_eq!(props["TAGS"], "property");
        assert_eq!(props["KEYS"], "42 dev");
        assert_eq!(props["WAIT"], "true");
        assert_eq!(props["UNIQ_KEY"].len(), 32);
    }

    #[test]
    fn all_properties_with_reserved_names_mapped() {
        let props = properties(&outgoing(true, None));
        assert_eq!(props["productKey"], "a1");
        // A user property named DELAY must not delay the message.
        assert!(!props.contains_key("DELAY"));
        assert_eq!(props["amqp.DELAY"], "3");
        assert_eq!(props["odd"], "x\u{fffd}y");
        assert_eq!(property_name("__RMQ.TRANSIENT.x"), "amqp.__RMQ.TRANSIENT.x");
        assert_eq!(property_name("deviceName"), "deviceName");
        assert!(!props.contains_key("TAGS"));
        assert!(!props.contains_key("KEYS"));
    }

    #[test]
    fn dead_letters_carry_their_failure() {
        let failure = Failure {
            route: "r".into(),
            sink: "s".into(),
            error: "too large".into(),
        };
        let props = properties(&outgoing(false, Some(failure)));
        assert_eq!(props["deadLetterError"], "too large");
        assert_eq!(props["deadLetterRoute"], "r");
    }

    #[test]
    fn properties_wire_format() {
        let props = BTreeMap::from([("A".to_string(), "1".to_string()), ("B".into(), "2".into())]);
        assert_eq!(encode_properties(&props), "A\u{1}1\u{2}B\u{1}2\u{2}");
    }

    #[test]
    fn send_request_header_fields() {
        let context = SendContext {
            producer_group: "PG",
            broker_name: "broker-a",
            queue_id: 3,
        };
        let props = BTreeMap::from([("TAGS".to_string(), "t".to_string())]);
        let command = send_request("iot", &context, &props, Bytes::from_static(b"{}"));
        assert_eq!(command.code, 310);
        let f = &command.ext_fields;
        assert_eq!(
            (f["a"].as_str(), f["b"].as_str(), f["e"].as_str()),
            ("PG", "iot", "3")
        );
        assert_eq!(f["i"], "TAGS\u{1}t\u{2}");
        assert_eq!(f["n"], "broker-a");
    }

    #[test]
    fn unique_keys_differ() {
        assert_ne!(unique_key(), unique_key());
    }
}
