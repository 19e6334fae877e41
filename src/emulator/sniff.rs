//! Reads the client's Open frame as it passes, so the emulator can enforce the
//! platform's idle-time-out rule (fe2o3's acceptor does not expose the remote Open).

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use fe2o3_amqp::types::performatives::Open;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The idle-time-out the client's Open carried (`None` = absent).
pub type OpenSlot = Arc<OnceLock<Option<u32>>>;

/// A transparent stream wrapper that records the first AMQP Open frame.
pub struct OpenSniffer<S> {
    inner: S,
    seen: Vec<u8>,
    slot: OpenSlot,
}

impl<S> OpenSniffer<S> {
    /// Wraps `inner`; the idle timeout appears in `slot` once the Open was read.
    pub fn new(inner: S, slot: OpenSlot) -> Self {
        OpenSniffer {
            inner,
            seen: Vec::new(),
            slot,
        }
    }

    /// Walks protocol headers and frames until the first AMQP (type 0) frame.
    fn scan(&mut self) {
        let mut pos = 0;
        loop {
            let rest = &self.seen[pos..];
            if rest.len() >= 4 && &rest[..4] == b"AMQP" {
                if rest.len() < 8 {
                    return;
                }
                pos += 8;
                continue;
            }
            if rest.len() < 8 {
                return;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let doff = rest[4] as usize * 4;
            let frame_type = rest[5];
            if size < 8 || doff < 8 || doff > size {
                let _ = self.slot.set(None);
                return;
            }
            if rest.len() < size {
                return;
            }
            if frame_type == 0 && size > doff {
                let open = serde_amqp::from_slice::<Open>(&rest[doff..size]).ok();
                let _ = self.slot.set(open.and_then(|o| o.idle_time_out));
                self.seen = Vec::new();
                return;
            }
            pos += size;
        }
    }
}

impl<S> fmt::Debug for OpenSniffer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenSniffer")
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for OpenSniffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.slot.get().is_none() && matches!(result, Poll::Ready(Ok(()))) {
            this.seen.extend_from_slice(&buf.filled()[before..]);
            this.scan();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for OpenSniffer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
