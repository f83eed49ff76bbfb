//! A client connection as the keep-alive loop holds it. It counts the bytes read from it, so
//! that the loop can tell whether Pingora read any while serving a request (`pipeline.rs`),
//! and once the connection became a WebSocket tunnel (a `101`) it follows the server's frames,
//! so that when the server shuts down it can close the tunnel with a close frame, 1001 going
//! away, between two frames (`tunnel.rs`), rather than drop it. Pingora signals the shutdown
//! as its grace period starts and drops what is still open when it ends; the close goes out
//! just before the end (a tenth of the grace period, at most a second), so a tunnel may finish
//! on its own meanwhile.
//!
//! The close goes out from the read side: a tunnel is always being read (Pingora relays both
//! ways), so the read that finds the server shutting down writes the frame, then ends the
//! client's side, which ends the tunnel. Bytes the target sends after it are dropped.

use crate::tunnel::{Frames, GOING_AWAY};
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the keep-alive loop and the proxy share with the connection.
#[derive(Debug, Default)]
pub struct Shared {
    /// Bytes read from the connection since the loop last reset it.
    pub read: AtomicUsize,
    /// The connection became a tunnel.
    pub tunnel: AtomicBool,
}

/// Resolves once the server shuts down. In a mutex only so that the connection is `Sync`, as
/// Pingora's streams must be; it is only ever reached through `&mut` (`get_mut`, no lock).
type Down = Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>;

/// A client connection that counts the bytes read from it, so that the keep-alive loop can
/// tell whether Pingora read any while serving a request. Everything else is the inner
/// stream's.
pub struct Watched {
    inner: Stream,
    shared: Arc<Shared>,
    shutdown: ShutdownWatch,
    grace: Duration,
    /// In a tunnel: where the server's frames end, and (made on first use) the shutdown.
    frames: Frames,
    down: Option<Down>,
    /// The close frame's bytes written so far, once closing.
    closing: Option<usize>,
    /// A read waiting for the server's frame to end before it closes the tunnel.
    waiting: Option<Waker>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Watched {
    /// The wrapped stream, and what it shares.
    /// `grace`: how long after the shutdown signal a tunnel is closed.
    pub fn wrap(inner: Stream, shutdown: &ShutdownWatch, grace: Duration) -> (Stream, Arc<Shared>) {
        let shared = Arc::new(Shared::default());
        let watched = Watched {
            inner,
            shared: Arc::clone(&shared),
            shutdown: shutdown.clone(),
            grace,
            frames: Frames::after_head(),
            down: None,
            closing: None,
            waiting: None,
        };
        (Box::new(watched), shared)
    }

    /// In a tunnel whose server is shutting down: write the close frame at the next frame
    /// boundary, then end the read side. `None`: read on.
    fn close(&mut self, cx: &mut Context<'_>) -> Option<Poll<std::io::Result<()>>> {
        if self.closing.is_none() {
            let (shutdown, grace) = (&self.shutdown, self.grace);
            let down = self.down.get_or_insert_with(|| {
                let mut rx = shutdown.clone();
                Mutex::new(Box::pin(async move {
                    while !*rx.borrow_and_update() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                    // Pingora stops polling what is still open as the grace period ends:
                    // close a tenth of it (at most a second) earlier, so the frame goes out.
                    tokio::time::sleep(grace - (grace / 10).min(Duration::from_secs(1))).await;
                }))
            });
            let down = down.get_mut().unwrap_or_else(|e| e.into_inner());
            if down.as_mut().poll(cx).is_pending() {
                return None;
            }
            if !self.frames.at_boundary() {
                // The write that ends the server's frame wakes this read.
                self.waiting = Some(cx.waker().clone());
                return None;
            }
            self.closing = Some(0);
        }
        let mut at = self.closing.unwrap_or(0);
        while at < GOING_AWAY.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &GOING_AWAY[at..]) {
                Poll::Ready(Ok(n)) if n > 0 => at += n,
                Poll::Ready(_) => break,
                Poll::Pending => {
                    self.closing = Some(at);
                    return Some(Poll::Pending);
                }
            }
        }
        self.closing = Some(GOING_AWAY.len());
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => Some(Poll::Pending),
            // Nothing read: the client's side has ended.
            Poll::Ready(_) => Some(Poll::Ready(Ok(()))),
        }
    }

    /// The first `n` bytes of `bufs` went to the client.
    fn wrote(&mut self, bufs: &[&[u8]], mut n: usize) {
        for buf in bufs {
            let part = &buf[..n.min(buf.len())];
            self.frames.wrote(part);
            n -= part.len();
        }
        if self.frames.at_boundary() {
            if let Some(w) = self.waiting.take() {
                w.wake();
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.shared.tunnel.load(Ordering::Relaxed) {
            if let Some(closed) = self.close(cx) {
                return closed;
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.shared.read.fetch_add(n, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if !self.shared.tunnel.load(Ordering::Relaxed) {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if self.closing.is_some() {
            // The tunnel is closed: what the target still sends goes nowhere.
            return Poll::Ready(Ok(buf.len()));
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.wrote(&[buf], n);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if !self.shared.tunnel.load(Ordering::Relaxed) {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        if self.closing.is_some() {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            let slices: Vec<&[u8]> = bufs.iter().map(|b| &b[..]).collect();
            self.wrote(&slices, n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&pingora::tls::ssl::SslRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
