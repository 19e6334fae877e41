//! One client connection, held to the platform's rules: TLS straight away,
//! signed SASL PLAIN, idle-time-out 30..300 s, a receiver link within the
//! deadline, one receiver link and no sender links.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fe2o3_amqp::acceptor::{
    ConnectionAcceptor, LinkAcceptor, LinkEndpoint, ListenerConnectionHandle,
    ListenerSessionHandle, SessionAcceptor,
};
use fe2o3_amqp::types::definitions::{self, AmqpError, Role};
use fe2o3_amqp::types::performatives::Attach;
use fe2o3_amqp::Sender;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::PlatformSasl;
use super::sniff::{OpenSlot, OpenSniffer};
use super::subscription::{Stats, Subscription};
use super::Shared;

/// The platform's accepted idle-time-out range, in milliseconds.
pub const IDLE_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u32> = 30_000..=300_000;

fn amqp_error(condition: AmqpError, description: impl Into<String>) -> definitions::Error {
    definitions::Error::new(condition, Some(description.into()), None)
}

/// Serves one TCP connection until it closes or the emulator stops.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), shared.tls.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let slot: OpenSlot = Arc::new(OnceLock::new());
    let sasl = PlatformSasl::new(shared.rules.clone());
    let acceptor = ConnectionAcceptor::builder()
        .container_id("iot-platform-emulator")
        .sasl_acceptor(sasl.clone())
        .build();
    let mut connection = match acceptor.accept(OpenSniffer::new(tls, slot.clone())).await {
        Ok(c) => c,
        Err(e) => {
            match sasl.outcome() {
                Some(Err(reason)) => {
                    Stats::bump(&shared.stats.logins_refused);
                    tracing::warn!(%peer, %reason, "login refused");
                }
                _ => tracing::info!(%peer, error = %e, "connection not opened"),
            }
            return;
        }
    };
    let Some(Ok(login)) = sasl.outcome() else {
        return;
    };
    Stats::bump(&shared.stats.logins_ok);
    let idle = slot.get().copied().flatten();
    if !idle.is_some_and(|ms| IDLE_TIMEOUT_RANGE_MS.contains(&ms)) {
        refuse_connection(
            &mut connection,
            &shared.stats,
            AmqpError::InvalidField,
            format!("idle-time-out {idle:?} ms outside 30000..300000"),
        )
        .await;
        return;
    }
    let Some(subscription) = shared.subscriptions.get(&login.consumer_group_id).cloned() else {
        refuse_connection(
            &mut connection,
            &shared.stats,
            AmqpError::NotFound,
            "unknown consumer group",
        )
        .await;
        return;
    };
    let _client = match subscription.register_client(&login.client_id) {
        Ok(guard) => guard,
        Err(reason) => {
            refuse_connection(
                &mut connection,
                &shared.stats,
                AmqpError::ResourceLimitExceeded,
                reason,
            )
            .await;
            return;
        }
    };
    tracing::info!(%peer, client_id = %login.client_id, group = %login.consumer_group_id, "client connected");
    run(connection, subscription, shared, stop).await;
    tracing::info!(%peer, client_id = %login.client_id, "client disconnected");
}

async fn refuse_connection(
    connection: &mut ListenerConnectionHandle,
    stats: &Stats,
    condition: AmqpError,
    reason: impl Into<String>,
) {
    let reason = reason.into();
    tracing::warn!(%reason, "closing connection");
    Stats::bump(&stats.connections_refused);
    let _ = connection
        .close_with_error(amqp_error(condition, reason))
        .await;
}

async fn next_attach(session: &mut Option<ListenerSessionHandle>) -> Option<Attach> {
    match session {
        Some(s) => s.next_incoming_attach().await,
        None => std::future::pending().await,
    }
}

async fn run(
    mut connection: ListenerConnectionHandle,
    subscription: Arc<Subscription>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let deadline = tokio::time::sleep(shared.receiver_deadline);
    tokio::pin!(deadline);
    let mut session: Option<ListenerSessionHandle> = None;
    let mut pusher: Option<JoinHandle<()>> = None;
    let mut attached_once = false;
    let mut kick = shared.kick.subscribe();
    kick.borrow_and_update();
    loop {
        tokio::select! {
            incoming = connection.next_incoming_session(), if session.is_none() => {
                let Some(incoming) = incoming else { break };
                match SessionAcceptor::new().accept_incoming_session(incoming, &mut connection).await {
                    Ok(s) => session = Some(s),
                    Err(e) => {
                        tracing::info!(error = %e, "session not begun");
                        break;
                    }
                }
            }
            attach = next_attach(&mut session) => {
                let (Some(attach), Some(s)) = (attach, session.as_mut()) else {
                    // The session ended; the client may begin another one.
                    session = None;
                    continue;
                };
                // A client that re-attaches right after detaching: give the old
                // pusher a moment to notice the detach before calling it busy.
                if let Some(p) = pusher.as_mut().filter(|p| !p.is_finished()) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), p).await;
                }
                let busy = pusher.as_ref().is_some_and(|p| !p.is_finished());
                if let Some(sender) = accept_link(attach, s, busy, &shared.stats).await {
                    attached_once = true;
                    Stats::bump(&shared.stats.receivers_attached);
                    let mut detach = shared.detach.subscribe();
                    detach.borrow_and_update();
                    pusher = Some(tokio::spawn(push(sender, subscription.clone(), detach)));
                }
            }
            _ = &mut deadline, if !attached_once => {
                refuse_connection(
                    &mut connection,
                    &shared.stats,
                    AmqpError::ResourceLimitExceeded,
                    format!("no receiver link attached within {}", humantime::format_duration(shared.receiver_deadline)),
                ).await;
                break;
            }
            _ = stop.cancelled() => break,
            _ = kick.changed() => {
                let error = definitions::Error::new(
                    definitions::ConnectionError::ConnectionForced,
                    Some("emulator dropped the connection".to_string()),
                    None,
                );
                let _ = connection.close_with_error(error).await;
                break;
            }
        }
    }
    if let Some(mut p) = pusher {
        // The pusher ends by itself once the link is gone and puts back the
        // message it holds; only an emulator shutdown needs to cut it short.
        if tokio::time::timeout(Duration::from_secs(2), &mut p)
            .await
            .is_err()
        {
            p.abort();
        }
    }
    if let Some(mut s) = session {
        let _ = s.end().await;
    }
    let _ = connection.close().await;
}

/// Accepts a receiver link (our sender) unless one is active; refuses the rest.
async fn accept_link(
    attach: Attach,
    session: &mut ListenerSessionHandle,
    busy: bool,
    stats: &Stats,
) -> Option<Sender> {
    let refusal = match (&attach.role, busy) {
        (Role::Sender, _) => Some("the platform accepts no sender links"),
        (Role::Receiver, true) => Some("only one receiver link per connection"),
        (Role::Receiver, false) => None,
    };
    let endpoint = match LinkAcceptor::new()
        .accept_incoming_attach(attach, session)
        .await
    {
        Ok(endpoint) => endpoint,
        Err(e) => {
            tracing::info!(error = %e, "link not attached");
            return None;
        }
    };
    match (endpoint, refusal) {
        (LinkEndpoint::Sender(sender), None) => Some(sender),
        (endpoint, reason) => {
            let reason = reason.unwrap_or("unexpected link role");
            tracing::warn!(%reason, "refusing link");
            Stats::bump(&stats.links_refused);
            let error = amqp_error(AmqpError::NotAllowed, reason);
            match endpoint {
                LinkEndpoint::Sender(s) => {
                    let _ = s.close_with_error(error).await;
                }
                LinkEndpoint::Receiver(r) => {
                    let _ = r.close_with_error(error).await;
                }
            }
            None
        }
    }
}

/// Pushes messages within the credit the client grants; each outcome is
/// tracked by its own small task so pushing never waits for settlement.
async fn push(
    mut sender: Sender,
    subscription: Arc<Subscription>,
    mut detach: tokio::sync::watch::Receiver<u64>,
) {
    loop {
        let pending = tokio::select! {
            p = subscription.take() => p,
            _ = sender.on_detach() => return,
            _ = detach.changed() => {
                let error = definitions::Error::new(
                    definitions::LinkError::DetachForced,
                    Some("emulator detached the link".to_string()),
                    None,
                );
                // Unsettled deliveries come back like after a disconnect.
                let _ = sender.close_with_error(error).await;
                return;
            }
        };
        match sender.send_batchable(pending.to_amqp()).await {
            Ok(delivery) => {
                subscription.on_pushed(&pending);
                let subscription = subscription.clone();
                tokio::spawn(async move {
                    let outcome = delivery.await;
                    subscription.on_outcome(pending, outcome);
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "link gone while pushing");
                subscription.put_back(pending);
                return;
            }
        }
    }
}
