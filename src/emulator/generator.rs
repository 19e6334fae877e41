//! Device traffic in the platform's forwarding formats: property posts, event
//! posts, online/offline status, device and topology lifecycle.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;

use bytes::Bytes;

use crate::source::aliyun::now_ms;

/// A message as the platform pushes it: body plus the application properties
/// `topic`, `messageId` and `generateTime`, and any extra ones.
#[derive(Clone, Debug)]
pub struct PlatformMessage {
    /// The AMQP body section the body goes out in (the platform uses data).
    pub section: BodySection,
    /// `None` sends no `messageId` property at all (replayed `"messageId": null`).
    pub message_id: Option<String>,
    /// Empty with `topic_absent`: no `topic` property is sent.
    pub topic: String,
    pub generate_time: i64,
    pub body: Bytes,
    pub extra_properties: Vec<(String, String)>,
    /// Application properties of other AMQP types (replayed
    /// `"typed_properties"`), to show the bridge every type a source may send.
    pub typed_properties: Vec<(String, fe2o3_amqp::types::primitives::SimpleValue)>,
    /// Send no `topic` property (replayed `"topic": null`).
    pub topic_absent: bool,
}

/// How a message's body is put into AMQP body sections: the platform sends
/// one data section; the others let tests send what other AMQP 1.0 sources
/// may (replay with `"section": "value" | "list" | "sequence"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodySection {
    #[default]
    Data,
    /// An amqp-value section holding the body as a string.
    Value,
    /// An amqp-value section holding a list with the body as a string.
    List,
    /// An amqp-sequence section holding the body as a string.
    Sequence,
}

/// Where the emulator's messages come from.
pub trait MessageSource: Send {
    /// The next message, or `None` when there are no more.
    fn next_message(&mut self) -> Option<PlatformMessage>;
}

/// Generates `count` messages (0 = without end) from a fleet of devices.
pub struct Generator {
    seq: u64,
    count: u64,
    id_base: u64,
    /// The fleet's (product key, device name, iotId), made once: message n
    /// comes from device n modulo the fleet.
    devices: Vec<(String, String, String)>,
}

/// Product keys of the generated fleet, 50 devices each.
const PRODUCTS: [&str; 3] = ["a1ThermoX7k", "a1MeterQ2Lz", "a1GatewayP9"];
const DEVICES_PER_PRODUCT: usize = 50;

impl Generator {
    /// A generator whose message ids are unique for this run.
    pub fn new(count: u64) -> Self {
        let secs = now_ms() / 1000;
        // Device n is product n % 3's device n / 3 (% 50), as the messages
        // have always cycled through them.
        let devices = (0..PRODUCTS.len() * DEVICES_PER_PRODUCT)
            .map(|n| {
                let pk = PRODUCTS[n % PRODUCTS.len()];
                let dn = format!("device-{:04}", n / PRODUCTS.len());
                let iot_id = format!("{pk}{dn}00").replace('-', "");
                (pk.to_string(), dn, iot_id)
            })
            .collect();
        Generator {
            seq: 0,
            count,
            // 19 digits like the platform's ids: seconds, then a sequence number.
            id_base: secs * 1_000_000_000,
            devices,
        }
    }

    fn device(&self, n: u64) -> &(String, String, String) {
        &self.devices[(n % self.devices.len() as u64) as usize]
    }
}

fn local_time(ms: i64) -> String {
    // The platform writes `time` in UTC+8 as "yyyy-MM-dd HH:mm:ss.SSS".
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis((ms + 8 * 3_600_000) as u64);
    let s = humantime::format_rfc3339_millis(t).to_string();
    s.trim_end_matches('Z').replace('T', " ")
}

fn utc_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl MessageSource for Generator {
    fn next_message(&mut self) -> Option<PlatformMessage> {
        if self.count != 0 && self.seq >= self.count {
            return None;
        }
        let seq = self.seq;
        self.seq += 1;
        let now = now_ms() as i64;
        let (pk, dn, iot_id) = self.device(seq);
        let request_id = seq % 100_000;
        // Written straight into the body: building a `serde_json::Value` per
        // message and formatting it cost ~26 500 instructions (now ~7 500),
        // twice what the bridge spends on a message, and the emulator shares
        // the benchmarks' cores with it. Every value here is plain ASCII (no
        // escaping needed).
        let mut body = String::with_capacity(480);
        let topic = match seq % 20 {
            0..=13 => {
                let tenths = seq % 100;
                let _ = write!(
                    body,
                    r#"{{"deviceType":"CustomCategory","iotId":"{iot_id}","requestId":"{request_id}","checkFailedData":{{}},"productKey":"{pk}","gmtCreate":{now},"deviceName":"{dn}","items":{{"Temperature":{{"value":{}.{},"time":{now}}},"Humidity":{{"value":{},"time":{now}}}}}}}"#,
                    20 + tenths / 10,
                    tenths % 10,
                    40 + seq % 30,
                );
                format!("/{pk}/{dn}/thing/event/property/post")
            }
            14 | 15 => {
                let _ = write!(
                    body,
                    r#"{{"identifier":"alarm","name":"Alarm","type":"alert","iotId":"{iot_id}","requestId":"{request_id}","productKey":"{pk}","deviceName":"{dn}","gmtCreate":{now},"time":{now},"value":{{"level":{}}}}}"#,
                    seq % 3,
                );
                format!("/{pk}/{dn}/thing/event/alarm/post")
            }
            16 | 17 => {
                let status = if seq.is_multiple_of(4) {
                    "online"
                } else {
                    "offline"
                };
                let _ = write!(
                    body,
                    r#"{{"status":"{status}","iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","time":"{}","utcTime":"{}","lastTime":"{}","utcLastTime":"{}","clientIp":"192.0.2.10"}}"#,
                    local_time(now),
                    utc_time(now),
                    local_time(now - 10),
                    utc_time(now - 10),
                );
                format!("/as/mqtt/status/{pk}/{dn}")
            }
            18 => {
                let _ = write!(
                    body,
                    r#"{{"action":"enable","iotId":"{iot_id}","productKey":"{pk}","deviceName":"{dn}","deviceSecret":"","messageCreateTime":{now}}}"#,
                );
                format!("/{pk}/{dn}/thing/lifecycle")
            }
            _ => {
                let _ = write!(
                    body,
                    r#"{{"action":"add","gwIotId":"{iot_id}","gwProductKey":"{pk}","gwDeviceName":"{dn}","devices":[{{"iotId":"{iot_id}sub","productKey":"a1SubDevR4t","deviceName":"{dn}-sub"}}],"messageCreateTime":{now}}}"#,
                );
                format!("/{pk}/{dn}/thing/topo/lifecycle")
            }
        };
        Some(PlatformMessage {
            message_id: Some((self.id_base + seq).to_string()),
            section: BodySection::Data,
            topic,
            generate_time: now,
            body: Bytes::from(body),
            extra_properties: Vec::new(),
            typed_properties: Vec::new(),
            topic_absent: false,
        })
    }
}

/// Replays messages from a JSON-lines file: `{"topic": ..., "body": ...,
/// "messageId"?: ..., "properties"?: {...}}`; a string body is sent as is,
/// any other JSON value as its text. `"messageId": null` sends none.
pub struct FileMessages {
    messages: std::vec::IntoIter<PlatformMessage>,
}

impl FileMessages {
    /// Reads and checks the whole file up front, so a bad line fails at start.
    pub fn load(path: &Path, limit: u64) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut ids = Generator::new(0);
        let mut messages = Vec::new();
        for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |e: &dyn std::fmt::Display| format!("{}:{}: {e}", path.display(), index + 1);
            let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| at(&e))?;
            let topic_absent = value.get("topic").is_some_and(|t| t.is_null());
            let topic = match value["topic"].as_str() {
                Some(topic) => topic.to_string(),
                None if topic_absent => String::new(),
                None => return Err(at(&"missing string `topic` (null sends none)")),
            };
            let body: Vec<u8> = if let Some(size) = value["body_size"].as_u64() {
                // A large body made here rather than written into the file.
                vec![b'x'; usize::try_from(size).map_err(|e| at(&e))?]
            } else if let Some(encoded) = value["body_base64"].as_str() {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|e| at(&e))?
            } else {
                match &value["body"] {
                    serde_json::Value::String(s) => s.clone().into_bytes(),
                    serde_json::Value::Null => Vec::new(),
                    other => other.to_string().into_bytes(),
                }
            };
            let typed_properties = match value["typed_properties"].as_object() {
                Some(map) => map
                    .iter()
                    .map(|(k, v)| typed_value(v).map(|v| (k.clone(), v)).map_err(|e| at(&e)))
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            let generated = ids
                .next_message()
                .ok_or_else(|| at(&"id generator exhausted"))?;
            // A string is sent as given (even empty), null means no
            // property at all, and an absent key gets a generated id.
            let message_id = match &value["messageId"] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null if value.get("messageId").is_some() => None,
                _ => generated.message_id,
            };
            let extra_properties = value["properties"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map(str::to_string).unwrap_or(v.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let section = match value["section"].as_str() {
                None | Some("data") => BodySection::Data,
                Some("value") => BodySection::Value,
                Some("list") => BodySection::List,
                Some("sequence") => BodySection::Sequence,
                Some(other) => {
                    return Err(at(&format!(
                        "`section` is data, value, list or sequence, not `{other}`"
                    )))
                }
            };
            messages.push(PlatformMessage {
                section,
                message_id,
                topic,
                generate_time: value["generateTime"]
                    .as_i64()
                    .unwrap_or(generated.generate_time),
                body: Bytes::from(body),
                extra_properties,
                typed_properties,
                topic_absent,
            });
            if limit != 0 && messages.len() as u64 >= limit {
                break;
            }
        }
        Ok(FileMessages {
            messages: messages.into_iter(),
        })
    }

    /// How many messages the file holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when the file held no message.
    pub fn is_empty(&self) -> bool {
        self.messages.len() == 0
    }
}

impl MessageSource for FileMessages {
    fn next_message(&mut self) -> Option<PlatformMessage> {
        self.messages.next()
    }
}

/// A replayed typed property, written `{"TYPE": VALUE}`: bool, ubyte,
/// ushort, uint, ulong, byte, short, int, long, float, double, char,
/// timestamp (ms), uuid (hyphenated), binary (base64), symbol, string, null.
fn typed_value(
    value: &serde_json::Value,
) -> Result<fe2o3_amqp::types::primitives::SimpleValue, String> {
    use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Symbol, Timestamp};
    let (kind, v) = value
        .as_object()
        .and_then(|m| m.iter().next())
        .ok_or("a typed property is {\"TYPE\": VALUE}")?;
    let int = || v.as_i64().ok_or(format!("`{kind}` needs an integer"));
    let uint = || {
        v.as_u64()
            .ok_or(format!("`{kind}` needs an unsigned integer"))
    };
    let float = || v.as_f64().ok_or(format!("`{kind}` needs a number"));
    let text = || v.as_str().ok_or(format!("`{kind}` needs a string"));
    let range = |e: std::num::TryFromIntError| format!("`{kind}`: {e}");
    Ok(match kind.as_str() {
        "bool" => SimpleValue::Bool(v.as_bool().ok_or("`bool` needs true or false")?),
        "ubyte" => SimpleValue::Ubyte(u8::try_from(uint()?).map_err(range)?),
        "ushort" => SimpleValue::Ushort(u16::try_from(uint()?).map_err(range)?),
        "uint" => SimpleValue::Uint(u32::try_from(uint()?).map_err(range)?),
        "ulong" => SimpleValue::Ulong(uint()?),
        "byte" => SimpleValue::Byte(i8::try_from(int()?).map_err(range)?),
        "short" => SimpleValue::Short(i16::try_from(int()?).map_err(range)?),
        "int" => SimpleValue::Int(i32::try_from(int()?).map_err(range)?),
        "long" => SimpleValue::Long(int()?),
        "float" => SimpleValue::from(float()? as f32),
        "double" => SimpleValue::from(float()?),
        "char" => SimpleValue::Char(text()?.chars().next().ok_or("`char` needs one character")?),
        "timestamp" => SimpleValue::Timestamp(Timestamp::from_milliseconds(int()?)),
        "uuid" => {
            let hex: String = text()?.chars().filter(|c| *c != '-').collect();
            let mut bytes = [0u8; 16];
            if hex.len() != 32 {
                return Err("`uuid` needs 32 hex digits".into());
            }
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte =
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
            }
            SimpleValue::Uuid(bytes.into())
        }
        "binary" => {
            use base64::Engine as _;
            SimpleValue::Binary(Binary::from(
                base64::engine::general_purpose::STANDARD
                    .decode(text()?)
                    .map_err(|e| e.to_string())?,
            ))
        }
        "symbol" => SimpleValue::Symbol(Symbol::from(text()?)),
        "string" => SimpleValue::String(text()?.to_string()),
        "null" => SimpleValue::Null,
        other => return Err(format!("unknown property type `{other}`")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_covers_the_platform_topics_and_stops_at_count() {
        let mut g = Generator::new(40);
        let msgs: Vec<_> = std::iter::from_fn(|| g.next_message()).collect();
        assert_eq!(msgs.len(), 40);
        let ids: std::collections::HashSet<_> = msgs.iter().map(|m| &m.message_id).collect();
        assert_eq!(ids.len(), 40);
        for suffix in [
            "/thing/event/property/post",
            "/thing/event/alarm/post",
            "/thing/lifecycle",
            "/thing/topo/lifecycle",
        ] {
            assert!(msgs.iter().any(|m| m.topic.ends_with(suffix)), "{suffix}");
        }
        let status = msgs
            .iter()
            .find(|m| m.topic.starts_with("/as/mqtt/status/"))
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
        for key in ["status", "time", "utcTime", "lastTime"] {
            assert!(body.get(key).is_some(), "{key} in {body}");
        }
        assert_eq!(msgs[0].message_id.as_deref().map(str::len), Some(19));
    }

    /// The bodies are written by hand for speed; they must be the JSON the
    /// platform's formats describe, field for field.
    #[test]
    fn generated_bodies_are_the_platform_json() {
        use serde_json::json;
        let mut g = Generator::new(20);
        for seq in 0..20u64 {
            let m = g.next_message().unwrap();
            let body: serde_json::Value = serde_json::from_slice(&m.body)
                .unwrap_or_else(|e| panic!("seq {seq}: {e}: {:?}", m.body));
            let now = m.generate_time;
            let (pk, dn, iot_id) = g.device(seq).clone();
            let request_id = seq.to_string();
            let expected = match seq {
                0..=13 => {
                    let t = 20.0 + (seq % 100) as f64 / 10.0;
                    json!({
                        "deviceType": "CustomCategory", "iotId": iot_id, "requestId": request_id,
                        "checkFailedData": {}, "productKey": pk, "gmtCreate": now, "deviceName": dn,
                        "items": {
                            "Temperature": {"value": t, "time": now},
                            "Humidity": {"value": 40 + seq, "time": now}
                        }
                    })
                }
                14 | 15 => json!({
                    "identifier": "alarm", "name": "Alarm", "type": "alert", "iotId": iot_id,
                    "requestId": request_id, "productKey": pk, "deviceName": dn,
                    "gmtCreate": now, "time": now, "value": {"level": seq % 3}
                }),
                16 | 17 => json!({
                    "status": if seq == 16 { "online" } else { "offline" },
                    "iotId": iot_id, "productKey": pk, "deviceName": dn,
                    "time": local_time(now), "utcTime": utc_time(now),
                    "lastTime": local_time(now - 10), "utcLastTime": utc_time(now - 10),
                    "clientIp": "192.0.2.10"
                }),
                18 => json!({
                    "action": "enable", "iotId": iot_id, "productKey": pk, "deviceName": dn,
                    "deviceSecret": "", "messageCreateTime": now
                }),
                _ => json!({
                    "action": "add", "gwIotId": iot_id, "gwProductKey": pk, "gwDeviceName": dn,
                    "devices": [{"iotId": format!("{iot_id}sub"), "productKey": "a1SubDevR4t",
                                 "deviceName": format!("{dn}-sub")}],
                    "messageCreateTime": now
                }),
            };
            assert_eq!(body, expected, "seq {seq}");
        }
    }
}
