//! Opening one AMQP 1.0 connection: TCP, TLS straight away (no AMQP TLS
//! header, as the platform expects), then SASL PLAIN and Open.

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
    pub container_id: String,
    pub username: String,
    /// Never logged; see [`crate::config::Secret`].
    pub password: crate::config::Secret,
    /// The idle-time-out to advertise in Open.
    pub idle_timeout: Option<Duration>,
    pub connect_timeout: Duration,
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
    #[error("invalid TLS server name `{0}`")]
    ServerName(String),
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
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ConnectError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut builder = Connection::builder()
        .container_id(options.container_id.clone())
        .scheme("amqp")
        .hostname(options.host.as_str())
        .sasl_profile(SaslProfile::Plain {
            username: options.username.clone(),
            password: options.password.expose().to_string(),
        });
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
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls {
                    host: options.host.clone(),
                    source,
                })?;
            Ok(builder.open_with_stream(tls).await?)
        }
        None => Ok(builder.open_with_stream(tcp).await?),
    }
}
