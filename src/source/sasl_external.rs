//! SASL EXTERNAL on a TLS stream the bridge set up itself: the client
//! certificate is the identity. fe2o3 offers EXTERNAL only on connections
//! whose TLS it makes (its `rustls` feature, which would add a second crypto
//! provider, aws-lc, to the build), so the three-frame exchange is done here
//! with fe2o3's own SASL frame codec; fe2o3 then opens the connection
//! without a SASL layer, as the spec has it after a successful outcome.

use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::sasl::{Frame, FrameCodec};
use fe2o3_amqp::types::primitives::{Binary, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::connect::ConnectError;

/// The SASL protocol header (protocol id 3, version 1.0.0).
const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";

/// A SASL frame larger than this is not a SASL frame (the spec's minimum
/// max-frame-size is 512; mechanisms lists are short).
const MAX_SASL_FRAME: u32 = 64 * 1024;

/// Logs in with SASL EXTERNAL; `Ok` once the server's outcome is `ok`.
pub async fn login<S>(stream: &mut S, host: &str) -> Result<(), ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| ConnectError::Sasl(e.to_string());
    stream.write_all(&SASL_HEADER).await.map_err(io)?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.map_err(io)?;
    if header != SASL_HEADER {
        return Err(ConnectError::Sasl(format!(
            "answered the SASL header with {header:?}"
        )));
    }
    match read_frame(stream).await? {
        Frame::Mechanisms(offered) => {
            let names: Vec<&str> = offered
                .sasl_server_mechanisms
                .0
                .iter()
                .map(|m| m.as_str())
                .collect();
            if !names.contains(&"EXTERNAL") {
                return Err(ConnectError::Sasl(format!(
                    "the broker does not offer SASL EXTERNAL (it offers {})",
                    names.join(", ")
                )));
            }
        }
        other => return Err(unexpected(&other)),
    }
    let init = SaslInit {
        mechanism: Symbol::from("EXTERNAL"),
        initial_response: Some(Binary::from(Vec::new())),
        hostname: Some(host.to_string()),
    };
    write_frame(stream, Frame::Init(init)).await?;
    match read_frame(stream).await? {
        Frame::Outcome(outcome) if outcome.code == SaslCode::Ok => Ok(()),
        Frame::Outcome(outcome) => Err(ConnectError::LoginRefused {
            code: format!("{:?}", outcome.code),
            reason: outcome
                .additional_data
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "no reason given".to_string()),
        }),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(frame: &Frame) -> ConnectError {
    let name = match frame {
        Frame::Mechanisms(_) => "sasl-mechanisms",
        Frame::Init(_) => "sasl-init",
        Frame::Challenge(_) => "a sasl-challenge (EXTERNAL has none)",
        Frame::Response(_) => "sasl-response",
        Frame::Outcome(_) => "sasl-outcome",
    };
    ConnectError::Sasl(format!("unexpected {name}"))
}

async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Frame, ConnectError> {
    let io = |e: std::io::Error| ConnectError::Sasl(e.to_string());
    let size = stream.read_u32().await.map_err(io)?;
    if !(8..=MAX_SASL_FRAME).contains(&size) {
        return Err(ConnectError::Sasl(format!("SASL frame of {size} bytes")));
    }
    let mut buf = BytesMut::zeroed(size as usize - 4);
    stream.read_exact(&mut buf).await.map_err(io)?;
    FrameCodec {}
        .decode(&mut buf)
        .map_err(|e| ConnectError::Sasl(format!("unreadable SASL frame: {e}")))?
        .ok_or_else(|| ConnectError::Sasl("empty SASL frame".into()))
}

async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    frame: Frame,
) -> Result<(), ConnectError> {
    let mut body = BytesMut::new();
    FrameCodec {}
        .encode(frame, &mut body)
        .map_err(|e| ConnectError::Sasl(format!("cannot encode a SASL frame: {e}")))?;
    let mut out = BytesMut::with_capacity(body.len() + 4);
    // The size counts itself.
    out.put_u32(body.len() as u32 + 4);
    out.extend_from_slice(&body);
    stream
        .write_all(&out)
        .await
        .map_err(|e| ConnectError::Sasl(e.to_string()))
}
