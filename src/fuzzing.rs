//! Entry points for the cargo-fuzz targets in `fuzz/` (cargo feature
//! `fuzzing`): each takes arbitrary bytes, runs one parser that reads user or
//! network input, and checks what must hold whatever the input. None may
//! panic; every parser answers Ok or an error. Kept in the library so the
//! targets stay one line each and reach `pub(crate)` parsers without making
//! them public.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp::types::messaging::message::__private::Deserializable;
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::config::Config;
use crate::envelope::Envelope;
use crate::route::filter::{FilterIndex, TopicFilter};
use crate::route::Template;
use crate::source::message::{message_to_envelope, Reading, TopicField};

/// The `${VAR}` values the config target sees: plain, empty, one that holds
/// YAML structure, one that holds another reference (not expanded again).
fn fuzz_env(name: &str) -> Option<String> {
    match name {
        "A" => Some("value".into()),
        "EMPTY" => Some(String::new()),
        "YAML" => Some("a: [1, {b: c}]\n  - x".into()),
        "NESTED" => Some("${A}".into()),
        "PORT" => Some("1883".into()),
        _ => None,
    }
}

/// The config loader: interpolation, YAML, every key's parser and the rules
/// across keys; a valid config must compile into a router and print for
/// `check`.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::parse(&text, Path::new("fuzz.yaml"), fuzz_env) else {
        return;
    };
    let _ = config.to_redacted_yaml();
    let index: HashMap<String, usize> = config
        .sinks
        .0
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), i))
        .collect();
    let kinds = config.sinks.kinds();
    if let Err(error) = crate::route::Router::new(&config.routes, &config.unrouted, &index, &kinds)
    {
        panic!("`check` accepts a configuration the bridge cannot start with: {error}");
    }
}

/// An envelope built from fuzz bytes: the first line is the topic, then
/// `name=value` lines up to an empty line, then the body.
fn envelope_of(data: &[u8]) -> Envelope {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split_inclusive('\n');
    let mut properties = Vec::new();
    if let Some(topic) = lines.next() {
        properties.push((
            "topic".to_string(),
            topic.trim_end_matches('\n').to_string(),
        ));
    }
    let mut consumed = properties
        .first()
        .map_or(0, |_| text.find('\n').map_or(text.len(), |n| n + 1));
    for line in lines {
        consumed += line.len();
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        properties.push((name.to_string(), value.to_string()));
    }
    let body = text
        .as_bytes()
        .get(consumed.min(text.len())..)
        .unwrap_or_default();
    Envelope::new(Bytes::copy_from_slice(body), properties)
}

/// The template parser and renderer: the first line is the template, the rest
/// the message (see [`envelope_of`]). A rendered literal is the template as
/// written.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (template, message) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(parsed) = Template::parse(template) else {
        return;
    };
    let envelope = envelope_of(message.as_bytes());
    let rendered = parsed.render(&envelope);
    if parsed.is_literal() {
        assert_eq!(
            rendered.as_deref(),
            Ok(template),
            "literal renders as written"
        );
    }
    let _ = envelope.message_id();
    let _ = envelope.device();
}

/// Topic filters and the filter index: lines before the last are filters,
/// the last a topic. The index must answer exactly what matching each valid
/// filter one by one answers.
pub fn topic_filters(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let topic = lines.pop().unwrap_or_default();
    let mut index = FilterIndex::default();
    let mut expected = Vec::new();
    for (i, filter) in lines.iter().enumerate() {
        if crate::config::validate_topic_filter(filter).is_err() {
            continue;
        }
        index.insert(filter, i);
        if TopicFilter::new(filter).matches(topic) {
            expected.push(i);
        }
    }
    let mut found = Vec::new();
    index.matches(topic, &mut found);
    assert_eq!(
        found, expected,
        "index and single filters disagree on `{topic}`"
    );
}

/// The emulator's login check: a SASL PLAIN response with the platform's
/// signed username. Any username the parser accepts, signed with the known
/// secret, must verify.
pub fn platform_login(data: &[u8]) {
    use crate::emulator::auth::{plain_credentials, AuthRules};
    use crate::source::aliyun::{parse_username, string_to_sign};

    let rules = AuthRules {
        keys: HashMap::from([("ak".to_string(), "secret".to_string())]),
        consumer_groups: HashSet::from(["g".to_string()]),
        max_skew: Duration::from_secs(u64::from(u32::MAX)),
        passwords_seen: Mutex::new(Default::default()),
    };
    let Ok((user, pass)) = plain_credentials(data) else {
        return;
    };
    let _ = rules.verify(user, pass);
    let Ok(params) = parse_username(user) else {
        return;
    };
    let signed = params.sign_method.sign(
        b"secret",
        string_to_sign(
            &params.access_key_id,
            params.security_token.as_deref(),
            params.timestamp_ms,
        )
        .as_bytes(),
    );
    let now = crate::source::aliyun::now_ms();
    let verdict = rules.verify(user, &signed);
    let known = params.access_key_id == "ak" && params.consumer_group_id == "g";
    // A minute inside the allowed skew, so the clock moving between the two
    // readings cannot decide.
    let well_inside = rules.max_skew.as_millis() as u64 - 60_000;
    if known && now.abs_diff(params.timestamp_ms) <= well_inside {
        assert!(
            verdict.is_ok(),
            "a correctly signed `{user}` was refused: {verdict:?}"
        );
    }
}

/// The RocketMQ frame decoder: a byte stream cut into frames by the outer
/// length, each decoded as a command (JSON or binary header), a route body
/// parsed as the name server's answer, and a response classified.
#[cfg(feature = "rocketmq")]
pub fn rocketmq_frames(data: &[u8]) {
    use crate::config::NotDurablePolicy;
    use crate::sink::rocketmq::{Command, TopicRouteData};

    let mut codec = LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(crate::sink::rocketmq::codec::MAX_FRAME)
        .new_codec();
    let mut buffer = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        let Ok(command) = Command::decode(frame.freeze()) else {
            continue;
        };
        let _ = TopicRouteData::parse(&command.body).map(|r| r.writable_queues(Some(4)));
        let _ = crate::sink::rocketmq::classify_response(&command, NotDurablePolicy::Retry);
        let _ = command.encode();
    }
}

/// The AMQP message decoding a generic source does: the sections as they
/// arrive in a transfer, then the envelope with AMQP properties and
/// annotations, its JSON body and its dedup key.
pub fn amqp_message(data: &[u8]) {
    let Ok(decoded) = serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(data) else {
        return;
    };
    let reading = Reading {
        metadata: true,
        topic_from: vec![
            TopicField::Property("amqp.subject".into()),
            TopicField::Fixed("queue".into()),
        ],
    };
    let Some(envelope) = message_to_envelope(decoded.0, &reading) else {
        return;
    };
    assert!(
        envelope.topic().is_some(),
        "topic_from ends with a fixed text"
    );
    let _ = envelope.json();
    let dedup = crate::dedup::Dedup::keyed(Duration::from_secs(1), 4, true);
    let _ = dedup.id_of(&envelope);
    let _ = Template::parse("{amqp.message-id}/{annotation.x-opt-partition-key}/{json.a.0}")
        .map(|t| t.render(&envelope));
}
