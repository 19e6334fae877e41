//! Opening one AMQP 1.0 connection: TCP, TLS (straight away, as on port
//! 5671, or after the AMQP TLS protocol header, the spec's upgrade), then SASL
//! (PLAIN, ANONYMOUS, EXTERNAL or none) and Open.

use std::sync::Arc;
use std::time::Duration;

use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::Connection;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// Everything one connection attempt needs.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    /// `None` = plain TCP (local brokers only).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// With `tls`: exchange the AMQP TLS protocol header (`AMQP 2 1 0 0`)
    /// before the TLS handshake (the spec's upgrade) instead of starting TLS
    /// straight away (port 5671 on most brokers, the IoT Platform).
    pub tls_header: bool,
    pub container_id: String,
    pub login: Login,
    /// The idle-time-out to advertise in Open.
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
}

/// The SASL login of one connection attempt.
#[derive(Clone)]
pub enum Login {
    /// SASL PLAIN; the password is never logged (see [`crate::config::Secret`]).
    Plain {
        username: String,
        password: crate::config::Secret,
    },
    /// SASL ANONYMOUS.
    Anonymous,
    /// SASL EXTERNAL: the TLS client certificate is the identity.
    External,
    /// No SASL layer (a broker that offers none).
    NoSasl,
}

impl Login {
    fn profile(&self) -> Option<SaslProfile> {
        match self {
            Login::Plain { username, password } => Some(SaslProfile::Plain {
                username: username.clone(),
                password: password.expose().to_string(),
            }),
            Login::Anonymous => Some(SaslProfile::Anonymous),
            // Done by `sasl_external` before fe2o3 takes the stream.
            Login::External | Login::NoSasl => None,
        }
    }
}

/// Why a connection attempt failed; the login failure carries the server's reason.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} did not answer the AMQP TLS header as expected: {reason}")]
    TlsHeader { host: String, reason: String },
    #[error("invalid TLS server name `{0}`")]
    ServerName(String),
    #[error("SASL EXTERNAL failed: {0}")]
    Sasl(String),
    #[error("login refused ({code}): {reason}")]
    LoginRefused { code: String, reason: String },
    #[error("AMQP open failed: {0}")]
    Open(OpenError),
    #[error("connecting to {0} timed out")]
    Timeout(String),
}

impl From<OpenError> for ConnectError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::SaslError {
                code,
                additional_data,
            } => ConnectError::LoginRefused {
                code: format!("{code:?}"),
                reason: additional_data
                    .map(|d| String::from_utf8_lossy(&d).into_owned())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "no reason given".to_string()),
            },
            other => ConnectError::Open(other),
        }
    }
}

/// Opens a connection; the whole attempt is bounded by `connect_timeout`.
pub async fn open(options: &ConnectOptions) -> Result<ConnectionHandle<()>, ConnectError> {
    let addr = format!("{}:{}", options.host, options.port);
    tokio::time::timeout(options.connect_timeout, open_inner(options, &addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr.clone()))?
}

async fn open_inner(
    options: &ConnectOptions,
    addr: &str,
) -> Result<ConnectionHandle<()>, ConnectError> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut builder = Connection::builder()
        .container_id(options.container_id.clone())
        .scheme("amqp")
        .hostname(options.host.as_str());
    if let Some(profile) = options.login.profile() {
        builder = builder.sasl_profile(profile);
    }
    if let Some(idle) = options.idle_timeout {
        // fe2o3 advertises half of the value it is given (the spec's advice to
        // leave room for the peer), so give it twice the value to advertise.
        let millis = u32::try_from(idle.as_millis().saturating_mul(2)).unwrap_or(u32::MAX);
        builder = builder.idle_time_out(millis);
    }
    match &options.tls {
        Some(config) => {
            let name = ServerName::try_from(options.host.clone())
                .map_err(|_| ConnectError::ServerName(options.host.clone()))?;
            if options.tls_header {
                tls_header(&mut tcp, &options.host).await?;
            }
            let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    host: options.host.clone(),
                    source,
                })?;
            if matches!(options.login, Login::External) {
                super::sasl_external::login(&mut tls, &options.host).await?;
            }
            Ok(builder.open_with_stream(tls).await?)
        }
        None => Ok(builder.open_with_stream(tcp).await?),
    }
}

/// The AMQP TLS protocol header (protocol id 2, version 1.0.0).
const TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";

/// Sends the AMQP TLS header and expects the same back; the TLS handshake
/// follows on the same stream.
async fn tls_header(tcp: &mut TcpStream, host: &str) -> Result<(), ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let failed = |reason: String| ConnectError::TlsHeader {
        host: host.to_string(),
        reason,
    };
    tcp.write_all(&TLS_HEADER)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut answer = [0u8; 8];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if answer != TLS_HEADER {
        return Err(failed(format!("answered {answer:?}")));
    }
    Ok(())
}
