//! The connection supervisor: N independent connections, each signing a fresh
//! login, attaching one receiver link, re-attaching after a link detach and
//! reconnecting with backoff after a connection loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::{Receiver, Session};
use tokio::task::JoinHandle;

use super::aliyun::{sign_now, Credentials};
use super::connect::{open, ConnectOptions, Login};
use super::link::{self, LinkContext, LinkEnd};
use crate::backoff::Backoff;
use crate::config::{SaslMechanism, SourceConfig, SourceKind};
use crate::telemetry::ConnectionMetrics;

/// Starts every configured connection; each runs until `ctx.close` fires.
pub fn spawn(
    config: &SourceConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    ctx: Arc<LinkContext>,
) -> Vec<JoinHandle<()>> {
    let config = Arc::new(config.clone());
    client_ids(&config)
        .into_iter()
        .map(|client_id| {
            tokio::spawn(run_connection(
                client_id,
                config.clone(),
                tls.clone(),
                ctx.clone(),
            ))
        })
        .collect()
}

/// The client id of each configured connection: `client_id`, or
/// `client_id-N` when there are several. Also their `connection` label.
pub fn client_ids(config: &SourceConfig) -> Vec<String> {
    (0..config.connections)
        .map(|index| {
            if config.connections > 1 {
                format!("{}-{}", config.client_id, index)
            } else {
                config.client_id.clone()
            }
        })
        .collect()
}

async fn run_connection(
    client_id: String,
    config: Arc<SourceConfig>,
    tls: Option<Arc<rustls::ClientConfig>>,
    ctx: Arc<LinkContext>,
) {
    let mut backoff = Backoff::new(config.reconnect.initial.0, config.reconnect.max.0);
    let counters = ctx.metrics.connection(&client_id);
    let mut first = true;
    loop {
        if ctx.intake_stop.is_cancelled() {
            return;
        }
        if !std::mem::take(&mut first) {
            counters.reconnecting();
        }
        let options = ConnectOptions {
            host: config.url.host().to_string(),
            port: config.url.port(),
            tls: tls.clone(),
            tls_header: config.kind == SourceKind::Amqp && !config.alt_tls_establishment,
            container_id: client_id.clone(),
            login: login(&config, &client_id),
            idle_timeout: Some(config.idle_timeout.0),
            connect_timeout: Duration::from_secs(15),
        };
        let started = Instant::now();
        match open(&options).await {
            Ok(mut connection) => {
                tracing::info!(%client_id, "source connected");
                counters.connected();
                let end = serve(&mut connection, &client_id, &config, &ctx, &counters).await;
                let _ = tokio::time::timeout(Duration::from_secs(5), connection.close()).await;
                match end {
                    LinkEnd::Closed => return,
                    LinkEnd::Lost(reason) => {
                        tracing::warn!(%client_id, %reason, "source connection lost")
                    }
                }
            }
            Err(e) => {
                if matches!(e, super::connect::ConnectError::LoginRefused { .. }) {
                    counters.login_refused();
                }
                tracing::warn!(%client_id, error = %e, "source connection failed")
            }
        }
        if started.elapsed() >= config.reconnect.reset_after.0 {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::info!(%client_id, retry_in = ?delay, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ctx.intake_stop.cancelled() => return,
        }
    }
}

/// The login of one connection attempt: the platform's is signed afresh
/// every time, a generic broker's credentials are fixed.
fn login(config: &SourceConfig, client_id: &str) -> Login {
    match config.kind {
        SourceKind::Aliyun => {
            let signed = sign_now(&Credentials::from_config(config, client_id));
            Login::Plain {
                username: signed.username,
                password: signed.password,
            }
        }
        SourceKind::Amqp => match config.sasl {
            SaslMechanism::Plain => Login::Plain {
                username: config.username.clone().unwrap_or_default(),
                password: config.password.clone().unwrap_or_default(),
            },
            SaslMechanism::Anonymous => Login::Anonymous,
            SaslMechanism::External => Login::External,
            SaslMechanism::None => Login::NoSasl,
        },
    }
}

/// The node a receiver attaches to: the consumer group on the platform,
/// the configured address elsewhere.
fn address(config: &SourceConfig) -> &str {
    match config.kind {
        SourceKind::Aliyun => &config.consumer_group_id,
        SourceKind::Amqp => &config.address,
    }
}

/// The source terminus a receiver attaches to: the address and any
/// configured filters.
fn source_terminus(config: &SourceConfig) -> fe2o3_amqp::types::messaging::Source {
    use fe2o3_amqp::types::primitives::{Symbol, Value};
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;
    let mut source =
        fe2o3_amqp::types::messaging::Source::builder().address(address(config).to_string());
    for (key, filter) in &config.filters {
        let descriptor = match filter.descriptor_code() {
            Some(code) => Descriptor::Code(code),
            None => Descriptor::Name(Symbol::from(filter.descriptor.as_str())),
        };
        source = source.add_to_filter(
            Symbol::from(key.as_str()),
            Described {
                descriptor,
                value: Value::String(filter.value.clone()),
            },
        );
    }
    source.build()
}

/// Keeps one receiver attached, each time on a session of its own: after a
/// link failure the old session is ended before the next attach, so a broker
/// that ties unsettled deliveries to the session (RabbitMQ 3.x maps a session
/// to one AMQP 0-9-1 channel) gives them back to the queue, and a reused link
/// handle cannot receive a delivery meant for the failed link.
async fn serve(
    connection: &mut fe2o3_amqp::connection::ConnectionHandle<()>,
    client_id: &str,
    config: &SourceConfig,
    ctx: &LinkContext,
    counters: &Arc<ConnectionMetrics>,
) -> LinkEnd {
    let mut attempt = 0u32;
    let reading = &config.reading();
    loop {
        let mut session = match Session::begin(connection).await {
            Ok(s) => s,
            Err(e) => return LinkEnd::Lost(format!("session not begun: {e}")),
        };
        let name = match &config.link_name {
            Some(name) => name.clone(),
            None => format!("{client_id}-receiver-{attempt}"),
        };
        let attached = Receiver::builder()
            .name(name)
            .source(source_terminus(config))
            .credit_mode(CreditMode::Manual)
            .auto_accept(false)
            .attach(&mut session)
            .await;
        let mut receiver = match attached {
            Ok(r) => r,
            Err(e) => return LinkEnd::Lost(format!("receiver not attached: {e}")),
        };
        tracing::info!(%client_id, "receiver attached");
        let attached_at = Instant::now();
        counters.set_attached(true);
        let end = link::run(&mut receiver, ctx, counters, reading).await;
        counters.set_attached(false);
        match end {
            LinkEnd::Closed => {
                let _ = tokio::time::timeout(END_TIMEOUT, receiver.detach()).await;
                let _ = tokio::time::timeout(END_TIMEOUT, session.end()).await;
                return LinkEnd::Closed;
            }
            LinkEnd::Lost(reason) => {
                if session.is_ended() || ctx.intake_stop.is_cancelled() {
                    return LinkEnd::Lost(reason);
                }
                tracing::warn!(%client_id, %reason, "receiver detached; attaching again on a new session");
                let _ = tokio::time::timeout(END_TIMEOUT, receiver.close()).await;
                match tokio::time::timeout(END_TIMEOUT, session.end()).await {
                    Ok(Ok(())) => {}
                    // A session that will not end may still hold deliveries:
                    // only a new connection is sure to give them back.
                    _ => return LinkEnd::Lost(format!("{reason}; the session did not end")),
                }
                attempt += 1;
                if attached_at.elapsed() >= config.reconnect.reset_after.0 {
                    attempt = 1;
                }
                if attempt > 3 {
                    return LinkEnd::Lost(reason);
                }
            }
        }
    }
}

/// How long a closing detach or session end may take before the connection
/// is given up instead.
const END_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::source_terminus;
    use crate::config::Config;

    #[test]
    fn filters_and_the_selector_go_into_the_source_terminus() {
        let text = "source:\n  kind: amqp\n  url: amqp://h\n  address: orders\n  \
                    selector: \"color = 'red'\"\n  filters:\n    \
                    binding: { descriptor: '0x0000468C00000001', value: 'a.b' }\n\
                    sinks:\n  o: { kind: stdout }\n";
        let config = Config::parse(text, Path::new("f.yaml"), |_| None).unwrap();
        let source = source_terminus(&config.source);
        assert_eq!(source.address.as_deref(), Some("orders"));
        let filters = source.filter.expect("a filter set");
        let printed = format!("{filters:?}");
        assert_eq!(filters.len(), 2, "{printed}");
        assert!(printed.contains("jms-selector"), "{printed}");
        assert!(
            printed.contains("apache.org:selector-filter:string"),
            "{printed}"
        );
        assert!(printed.contains("color = 'red'"), "{printed}");
        assert!(printed.contains("77567109365761"), "{printed}");
        let printed = config.to_redacted_yaml();
        assert!(printed.contains("jms-selector"), "{printed}");
        // What `check` prints reads back to the same filters.
        let again = Config::parse(&printed, Path::new("printed.yaml"), |_| None).unwrap();
        assert_eq!(again.source.filters, config.source.filters);
    }
}
