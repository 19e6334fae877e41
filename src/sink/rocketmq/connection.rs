//! One multiplexed remoting connection, and a pool of them keyed by address.
//!
//! Requests carry an `opaque` id; a reader task hands each response to the
//! request waiting for that id. A writer task feeds queued frames and flushes
//! once per batch. When the socket fails, every waiting request fails at once
//! and the next request to that address connects again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::codec::{Command, MAX_FRAME};
use super::lock;

/// Why a request got no response.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemotingError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {addr} lost before the response")]
    Lost { addr: String },
    #[error("no response from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// The request cannot be framed at all; sending it again cannot help.
    #[error("{0}")]
    Unframeable(String),
}

/// After a failed connect, requests to that address fail at once for this
/// long instead of each waiting out its own connect attempt.
const CONNECT_HOLD_OFF: Duration = Duration::from_millis(200);

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

type Pending = Arc<Mutex<HashMap<i32, oneshot::Sender<Command>>>>;

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// A live connection to one name server or broker.
pub struct Connection {
    addr: String,
    /// Encoded frames for the writer task.
    outbound: mpsc::Sender<Bytes>,
    pending: Pending,
    next_opaque: AtomicI32,
    closed: Arc<AtomicBool>,
    /// Requests in a row that got no answer in time; at
    /// [`TIMEOUTS_BEFORE_RECONNECT`] the connection counts as dead (a
    /// half-open socket would otherwise last until the kernel gives up).
    timeouts_in_a_row: AtomicU32,
}

/// See [`Connection::timeouts_in_a_row`].
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

impl Connection {
    /// Connects (TLS when `tls` is set) and starts the reader and writer tasks.
    pub async fn open(
        addr: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Connection, RemotingError> {
        let connect_error = |reason: String| RemotingError::Connect {
            addr: addr.to_string(),
            reason,
        };
        // Connecting and the TLS handshake share one timeout.
        let connect = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| connect_error(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn Stream> = match tls {
                None => Box::new(tcp),
                Some(config) => {
                    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = rustls::pki_types::ServerName::try_from(host.to_string())
                        .map_err(|e| connect_error(format!("bad TLS server name: {e}")))?;
                    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| connect_error(format!("TLS: {e}")))?;
                    Box::new(tls)
                }
            };
            Ok::<_, RemotingError>(stream)
        };
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| connect_error(format!("timed out after {timeout:?}")))??;
        let (read, write) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (outbound, queue) = mpsc::channel(1024);
        tokio::spawn(write_frames(
            FramedWrite::new(write, codec()),
            queue,
            Arc::clone(&closed),
        ));
        tokio::spawn(read_frames(
            FramedRead::new(read, codec()),
            Arc::clone(&pending),
            Arc::clone(&closed),
            addr.to_string(),
        ));
        Ok(Connection {
            addr: addr.to_string(),
            outbound,
            pending,
            next_opaque: AtomicI32::new(1),
            closed,
            timeouts_in_a_row: AtomicU32::new(0),
        })
    }

    /// True once the socket failed; the pool then opens a new one.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.outbound.is_closed()
    }

    /// Sends a request and waits for its response.
    pub async fn request(
        &self,
        mut command: Command,
        timeout: Duration,
    ) -> Result<Command, RemotingError> {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        command.opaque = opaque;
        // Encoded here, on the caller's task, so the writer only writes.
        let frame = command
            .encode()
            .map_err(|e| RemotingError::Unframeable(e.to_string()))?;
        // Debug shows ACL signatures and tokens as ***.
        tracing::trace!(addr = %self.addr, ?command, "RocketMQ request");
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(opaque, tx);
        // Forget the waiter however this request ends (timeout, cancellation).
        let _forget = Forget {
            pending: &self.pending,
            opaque,
        };
        let lost = || RemotingError::Lost {
            addr: self.addr.clone(),
        };
        if self.is_closed() {
            return Err(lost());
        }
        let exchange = async {
            self.outbound.send(frame).await.map_err(|_| lost())?;
            rx.await.map_err(|_| lost())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(answer) => {
                if answer.is_ok() {
                    self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                }
                answer
            }
            Err(_) => {
                let count = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if count >= TIMEOUTS_BEFORE_RECONNECT {
                    tracing::warn!(addr = %self.addr, count, "no answers on this connection; opening a new one");
                    self.closed.store(true, Ordering::Release);
                }
                Err(RemotingError::Timeout {
                    addr: self.addr.clone(),
                    timeout,
                })
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends when the last sender goes; that closes the socket
        // and so ends the reader.
        self.closed.store(true, Ordering::Release);
    }
}

struct Forget<'a> {
    pending: &'a Pending,
    opaque: i32,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.opaque);
    }
}

async fn write_frames(
    mut frames: FramedWrite<tokio::io::WriteHalf<Box<dyn Stream>>, LengthDelimitedCodec>,
    mut queue: mpsc::Receiver<Bytes>,
    closed: Arc<AtomicBool>,
) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, 64).await > 0 {
        let mut failed = false;
        for frame in batch.drain(..) {
            if frames.feed(frame).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed
            || SinkExt::<Bytes>::flush(&mut frames).await.is_err()
            || closed.load(Ordering::Acquire)
        {
            break;
        }
    }
    closed.store(true, Ordering::Release);
    let _ = frames.get_mut().shutdown().await;
}

async fn read_frames(
    mut frames: FramedRead<tokio::io::ReadHalf<Box<dyn Stream>>, LengthDelimitedCodec>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    addr: String,
) {
    while let Some(frame) = frames.next().await {
        let command = match frame.map(|f| Command::decode(f.freeze())) {
            Ok(Ok(command)) => command,
            Ok(Err(e)) => {
                tracing::warn!(%addr, error = %e, "RocketMQ server sent an unreadable frame; reconnecting");
                break;
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "RocketMQ connection read failed");
                break;
            }
        };
        if !command.is_response() {
            // Server-initiated requests (transaction checks, consumer
            // notifications) do not concern a plain producer.
            tracing::debug!(%addr, code = command.code, "ignored a request from the server");
            continue;
        }
        tracing::trace!(%addr, ?command, "RocketMQ response");
        if let Some(waiter) = lock(&pending).remove(&command.opaque) {
            let _ = waiter.send(command);
        }
    }
    closed.store(true, Ordering::Release);
    // Dropping the senders fails every request still waiting.
    lock(&pending).clear();
}

enum Slot {
    Empty,
    Open(Arc<Connection>),
    Failed { at: Instant, error: RemotingError },
}

/// Connections by address, opened on first use and again after a failure.
pub struct Pool {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
}

impl Pool {
    /// An empty pool; `tls` applies to every connection it opens.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>, connect_timeout: Duration) -> Pool {
        Pool {
            slots: Mutex::default(),
            tls,
            connect_timeout,
        }
    }

    /// The open connection to `addr`, connecting if there is none.
    pub async fn get(&self, addr: &str) -> Result<Arc<Connection>, RemotingError> {
        let slot = Arc::clone(
            lock(&self.slots)
                .entry(addr.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::Empty))),
        );
        let mut slot = slot.lock().await;
        match &*slot {
            Slot::Open(connection) if !connection.is_closed() => return Ok(Arc::clone(connection)),
            Slot::Failed { at, error } if at.elapsed() < CONNECT_HOLD_OFF => {
                return Err(error.clone())
            }
            _ => {}
        }
        match Connection::open(addr, self.tls.as_ref(), self.connect_timeout).await {
            Ok(connection) => {
                let connection = Arc::new(connection);
                *slot = Slot::Open(Arc::clone(&connection));
                Ok(connection)
            }
            Err(error) => {
                *slot = Slot::Failed {
                    at: Instant::now(),
                    error: error.clone(),
                };
                Err(error)
            }
        }
    }

    /// Closes every connection.
    pub fn close(&self) {
        lock(&self.slots).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that accepts and then never answers, like a half-open peer.
    async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_connection_that_never_answers_is_replaced() {
        let (addr, server) = silent_server().await;
        let pool = Pool::new(None, Duration::from_secs(1));
        let first = pool.get(&addr).await.unwrap();
        for i in 1..=TIMEOUTS_BEFORE_RECONNECT {
            let answer = first
                .request(
                    Command::request(105, Default::default()),
                    Duration::from_millis(20),
                )
                .await;
            assert!(matches!(answer, Err(RemotingError::Timeout { .. })));
            assert_eq!(
                first.is_closed(),
                i == TIMEOUTS_BEFORE_RECONNECT,
                "after {i} timeouts"
            );
        }
        let second = pool.get(&addr).await.unwrap();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "the pool opened a new connection"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connect_fails_fast_for_a_moment() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let pool = Pool::new(None, Duration::from_secs(1));
        let first = pool.get(&addr).await.err().unwrap();
        assert!(matches!(first, RemotingError::Connect { .. }));
        // Within the hold-off the same error comes back without a new attempt.
        assert_eq!(pool.get(&addr).await.err(), Some(first));
    }
}
