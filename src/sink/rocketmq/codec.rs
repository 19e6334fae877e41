//! RocketMQ remoting commands and their frames.
//!
//! A frame is `total length (4, BE) | header length (4, BE; the high byte is
//! the serialization type) | header | body`. [`tokio_util`]'s
//! `LengthDelimitedCodec` handles the outer length; this module handles the
//! rest. Requests are written with the JSON header, which every server
//! (Apache 4.x/5.x, Alibaba Cloud, rocketmq-rust) accepts; responses are read
//! in either JSON or the binary `ROCKETMQ` header, since a server may answer in
//! the one it prefers.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Request codes the producer sends.
pub mod request_code {
    /// Send one message (short ext field names).
    pub const SEND_MESSAGE_V2: i32 = 310;
    /// Name server: where a topic's queues are.
    pub const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
    /// Name server: which brokers are registered.
    pub const GET_BROKER_CLUSTER_INFO: i32 = 106;
}

/// Response codes the producer acts on (Apache RocketMQ's `ResponseCode`).
pub mod response_code {
    pub const SUCCESS: i32 = 0;
    pub const SYSTEM_ERROR: i32 = 1;
    pub const SYSTEM_BUSY: i32 = 2;
    pub const REQUEST_CODE_NOT_SUPPORTED: i32 = 3;
    pub const FLUSH_DISK_TIMEOUT: i32 = 10;
    pub const SLAVE_NOT_AVAILABLE: i32 = 11;
    pub const FLUSH_SLAVE_TIMEOUT: i32 = 12;
    pub const MESSAGE_ILLEGAL: i32 = 13;
    pub const SERVICE_NOT_AVAILABLE: i32 = 14;
    pub const VERSION_NOT_SUPPORTED: i32 = 15;
    pub const NO_PERMISSION: i32 = 16;
    pub const TOPIC_NOT_EXIST: i32 = 17;
}

/// The largest frame a RocketMQ server (or this client) takes: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bit 0 of `flag`: set on responses.
const FLAG_RESPONSE: i32 = 1;
/// The client version announced: 4.9.4, the first whose name server answers
/// with standard JSON (quoted map keys).
pub const CLIENT_VERSION: i32 = 401;
const SERIALIZE_JSON: u8 = 0;
const SERIALIZE_ROCKETMQ: u8 = 1;

/// One request or response.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub code: i32,
    pub flag: i32,
    pub opaque: i32,
    pub remark: Option<String>,
    /// The custom header; sorted, which is also the order ACL signs in.
    pub ext_fields: BTreeMap<String, String>,
    pub body: Bytes,
}

/// Header fields whose values are credentials (ACL signing).
const SECRET_FIELDS: &[&str] = &["SecurityToken", "Signature"];

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields: BTreeMap<&str, &str> = self
            .ext_fields
            .iter()
            .map(|(k, v)| {
                let shown = if SECRET_FIELDS.contains(&k.as_str()) {
                    "***"
                } else {
                    v
                };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("Command")
            .field("code", &self.code)
            .field("flag", &self.flag)
            .field("opaque", &self.opaque)
            .field("remark", &self.remark)
            .field("ext_fields", &fields)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A frame that is not a remoting command.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame shorter than its header length says")]
    Truncated,
    #[error("unknown header serialization type {0}")]
    UnknownSerialization(u8),
    #[error("bad JSON header: {0}")]
    Json(String),
    #[error("header text is not UTF-8")]
    Utf8,
    #[error("request of {size} bytes exceeds the remoting frame limit of {MAX_FRAME} bytes")]
    TooLarge { size: usize },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonHeaderOut<'a> {
    code: i32,
    language: &'static str,
    version: i32,
    opaque: i32,
    flag: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    remark: Option<&'a str>,
    ext_fields: &'a BTreeMap<String, String>,
    serialize_type_current_r_p_c: &'static str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonHeaderIn {
    // Required: a header without a code must not read as SUCCESS (0).
    code: i32,
    opaque: i32,
    flag: i32,
    #[serde(default)]
    remark: Option<String>,
    #[serde(default)]
    ext_fields: Option<BTreeMap<String, serde_json::Value>>,
}

impl Command {
    /// A request with the given custom header fields.
    pub fn request(code: i32, ext_fields: BTreeMap<String, String>) -> Command {
        Command {
            code,
            ext_fields,
            ..Command::default()
        }
    }

    /// True for a response (as opposed to a request the server sends us).
    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    /// The frame content (everything after the outer length); a request the
    /// frame limit cannot hold is an error, never a truncated header.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        let header = JsonHeaderOut {
            code: self.code,
            language: "OTHER",
            version: CLIENT_VERSION,
            opaque: self.opaque,
            flag: self.flag,
            remark: self.remark.as_deref(),
            ext_fields: &self.ext_fields,
            serialize_type_current_r_p_c: "JSON",
        };
        // Serializing a struct of strings and integers cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        // 4 bytes of outer length come on top; the header length then fits
        // its 24 bits too.
        let size = 4 + 4 + header.len() + self.body.len();
        if size > MAX_FRAME {
            return Err(CodecError::TooLarge { size });
        }
        let mut dst = BytesMut::with_capacity(size - 4);
        dst.put_u32(header.len() as u32 | u32::from(SERIALIZE_JSON) << 24);
        dst.put_slice(&header);
        dst.put_slice(&self.body);
        Ok(dst.freeze())
    }

    /// Reads the frame content (everything after the outer length).
    pub fn decode(mut frame: Bytes) -> Result<Command, CodecError> {
        if frame.len() < 4 {
            return Err(CodecError::Truncated);
        }
        let mark = frame.get_u32();
        let serialization = (mark >> 24) as u8;
        let header_len = (mark & 0x00ff_ffff) as usize;
        if frame.len() < header_len {
            return Err(CodecError::Truncated);
        }
        let header = frame.split_to(header_len);
        let mut command = match serialization {
            SERIALIZE_JSON => decode_json(&header)?,
            SERIALIZE_ROCKETMQ => decode_binary(header)?,
            other => return Err(CodecError::UnknownSerialization(other)),
        };
        command.body = frame;
        Ok(command)
    }
}

fn decode_json(header: &[u8]) -> Result<Command, CodecError> {
    let parsed: JsonHeaderIn =
        serde_json::from_slice(header).map_err(|e| CodecError::Json(e.to_string()))?;
    let ext_fields = parsed
        .ext_fields
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (k, text)
        })
        .collect();
    Ok(Command {
        code: parsed.code,
        flag: parsed.flag,
        opaque: parsed.opaque,
        remark: parsed.remark,
        ext_fields,
        body: Bytes::new(),
    })
}

/// The binary header: code(2) language(1) version(2) opaque(4) flag(4)
/// remark(len 4 + bytes) ext(len 4 + [key len 2 + key, value len 4 + value]*).
fn decode_binary(mut header: Bytes) -> Result<Command, CodecError> {
    fn need(b: &Bytes, n: usize) -> Result<(), CodecError> {
        if b.remaining() < n {
            Err(CodecError::Truncated)
        } else {
            Ok(())
        }
    }
    fn text(b: &mut Bytes, n: usize) -> Result<String, CodecError> {
        need(b, n)?;
        String::from_utf8(b.split_to(n).to_vec()).map_err(|_| CodecError::Utf8)
    }
    need(&header, 2 + 1 + 2 + 4 + 4 + 4)?;
    let code = i32::from(header.get_i16());
    let _language = header.get_u8();
    let _version = header.get_i16();
    let opaque = header.get_i32();
    let flag = header.get_i32();
    let remark_len = header.get_i32();
    let remark = if remark_len > 0 {
        Some(text(&mut header, remark_len as usize)?)
    } else {
        None
    };
    need(&header, 4)?;
    let ext_len = header.get_i32().max(0) as usize;
    need(&header, ext_len)?;
    let mut ext = header.split_to(ext_len);
    let mut ext_fields = BTreeMap::new();
    while ext.has_remaining() {
        need(&ext, 2)?;
        let key_len = ext.get_u16() as usize;
        let key = text(&mut ext, key_len)?;
        need(&ext, 4)?;
        let value_len = ext.get_i32().max(0) as usize;
        let value = text(&mut ext, value_len)?;
        ext_fields.insert(key, value);
    }
    Ok(Command {
        code,
        flag,
        opaque,
        remark,
        ext_fields,
        body: Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let mut ext = BTreeMap::new();
        ext.insert("topic".to_string(), "iot".to_string());
        let command = Command {
            code: 105,
            flag: 0,
            opaque: 7,
            remark: None,
            ext_fields: ext,
            body: Bytes::from_static(b"body"),
        };
        let buf = command.encode().unwrap();
        let header_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let header: serde_json::Value = serde_json::from_slice(&buf[4..4 + header_len]).unwrap();
        assert_eq!(header["code"], 105);
        assert_eq!(header["language"], "OTHER");
        assert_eq!(header["version"], CLIENT_VERSION);
        assert_eq!(header["extFields"]["topic"], "iot");
        assert_eq!(header["serializeTypeCurrentRPC"], "JSON");
        assert_eq!(Command::decode(buf).unwrap(), command);
    }

    #[test]
    fn a_request_over_the_frame_limit_is_refused() {
        let mut command = Command::request(310, BTreeMap::new());
        command
            .ext_fields
            .insert("i".into(), "\u{1}".repeat(MAX_FRAME / 6));
        // Each separator becomes six bytes of JSON (\u0001): the header alone
        // is over the limit although the raw text is not.
        assert!(matches!(command.encode(), Err(CodecError::TooLarge { .. })));
        command.ext_fields.clear();
        command.body = Bytes::from(vec![0u8; MAX_FRAME]);
        assert!(matches!(command.encode(), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn reads_non_string_ext_values_and_null_remark() {
        let header = br#"{"code":0,"flag":1,"opaque":3,"remark":null,"extFields":{"queueId":2}}"#;
        let mut frame = BytesMut::new();
        frame.put_u32(header.len() as u32);
        frame.put_slice(header);
        let command = Command::decode(frame.freeze()).unwrap();
        assert!(command.is_response());
        assert_eq!(command.ext_fields["queueId"], "2");
        assert_eq!(command.remark, None);
    }

    #[test]
    fn reads_the_binary_header() {
        let mut header = BytesMut::new();
        header.put_i16(17);
        header.put_u8(0);
        header.put_i16(401);
        header.put_i32(9);
        header.put_i32(1);
        header.put_i32(2);
        header.put_slice(b"no");
        let mut ext = BytesMut::new();
        ext.put_u16(5);
        ext.put_slice(b"msgId");
        ext.put_i32(2);
        ext.put_slice(b"AB");
        header.put_i32(ext.len() as i32);
        header.put_slice(&ext);
        let mut frame = BytesMut::new();
        frame.put_u32(header.len() as u32 | 1 << 24);
        frame.put_slice(&header);
        frame.put_slice(b"xyz");
        let command = Command::decode(frame.freeze()).unwrap();
        assert_eq!(command.code, 17);
        assert_eq!(command.opaque, 9);
        assert_eq!(command.remark.as_deref(), Some("no"));
        assert_eq!(command.ext_fields["msgId"], "AB");
        assert_eq!(&command.body[..], b"xyz");
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        for frame in [
            &b""[..],
            &[0, 0, 0, 9, b'{'][..],
            &[1, 0, 0, 3, 0, 1, 0][..],
            &[
                0, 0, 0, 19, b'{', b'"', b'f', b'l', b'a', b'g', b'"', b':', b'1', b',', b'"',
                b'o', b'p', b'a', b'q', b'u', b'e', b'"', b':', b'1', b'}',
            ][..],
        ] {
            assert!(Command::decode(Bytes::copy_from_slice(frame)).is_err());
        }
    }
}
