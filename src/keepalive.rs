//! The HTTP/1 keep-alive loop, holding as little as possible while a client is idle.
//!
//! Pingora's own loop enters the proxy for the next request before a byte of it has arrived,
//! so every idle keep-alive connection keeps the proxy's whole request state machine (several
//! KiB, sized for the largest request it might serve) and a 4 KiB header buffer allocated
//! until the client speaks again. Gateways hold far more idle connections than busy ones, so
//! this loop waits for the first bytes itself, with a future of a few hundred bytes and no
//! buffer, and only then hands the connection to the proxy, with those bytes as the start of
//! the request. The proxy parses them before it reads again: no syscall is added.
//!
//! Pingora's loop sets no idle limit once a connection has served a request (HTTP/1.1 turns
//! keep-alive to "infinite"); this one applies `keepalive_timeout` before every request and to
//! the reading of every request header.
//!
//! Each request's head is checked first (`head.rs`), read on here when it has not all arrived
//! (up to 64 KiB): heads Pingora would let through but a gateway must refuse (smuggling), or
//! would answer in its own plain form, get the contract's JSON error here.
//!
//! It also caps how many connections one client address holds (`conn_cap.rs`), and bounds how
//! slowly a client may send: the whole request header must arrive within
//! `header_timeout` of its first byte (Pingora's own timeout is per read, which a client
//! dribbling a byte a second never trips), and a body may pause at most `body_timeout` between
//! reads. The proxy says when a header is complete ([`header_read`]); a connection still
//! without one at the deadline is dropped.
//!
//! HTTP/1 over TLS takes this loop too. HTTP/2 (by ALPN or prior knowledge) and custom
//! protocols go to Pingora's own loop unchanged.

use crate::conn_cap::ConnectionCap;
use crate::connection::{Shared, Watched};
use crate::head::{self, Verdict};
use crate::metrics::METRICS;
use crate::pipeline;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::cell::Cell;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The most the first read of a request takes: Pingora's own initial header buffer size.
const FIRST_READ: usize = 4096;
/// How long the rest of a body is read and dropped after an early answer (a `413` to an
/// upload) before the connection is given up: closing with unread bytes sends a reset, and a
/// client still sending would lose the answer to it (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(5);
/// The longest head read and checked here: past the default `request_limits` header size
/// (32 KiB); a longer one goes to Pingora as it is, and is refused by those limits.
const CHECKED_HEAD: usize = 64 * 1024;

/// How long a client connection may take, at each stage.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Idle between requests.
    pub idle: Duration,
    /// From a request's first byte to the end of its header.
    pub header: Duration,
    /// Between two reads of a request body.
    pub body: Duration,
    /// From the start of a shutdown to the end of its grace period, when open tunnels are
    /// closed (`server.grace_period`).
    pub grace: Duration,
}

/// An HTTP application served through the lean keep-alive loop.
pub struct KeepAlive<A> {
    app: Arc<A>,
    timeouts: Timeouts,
    cap: Arc<ConnectionCap>,
}

impl<A> KeepAlive<A> {
    pub fn new(app: A, timeouts: Timeouts, cap: Arc<ConnectionCap>) -> Self {
        KeepAlive {
            app: Arc::new(app),
            timeouts,
            cap,
        }
    }

    /// A connection over its address's cap: an HTTP/1 client gets `429 rate_limited` for its
    /// first request (if it sends one in time), anything else is closed at once.
    async fn refuse(&self, mut stream: Stream, http1: bool) -> Option<Stream> {
        METRICS
            .blocked_requests
            .with_label_values(&[crate::metrics::NO_ROUTE, "server", "connection_cap"])
            .inc();
        if http1 {
            let wait = tokio::time::sleep(self.timeouts.header);
            tokio::pin!(wait);
            if first_bytes(&mut stream, wait, None).await.is_some() {
                let _ = stream
                    .write_all(&head::answer(crate::error::TOO_MANY_REQUESTS))
                    .await;
                let _ = stream.flush().await;
            }
        }
        None
    }
}

tokio::task_local! {
    /// What is known of the request being served: whether its whole header has been read (set
    /// by the proxy's first hook), and whether `head.rs` checked it whole; and its connection.
    static REQUEST: Request;
}

struct Request {
    seen: Cell<Seen>,
    connection: Arc<Shared>,
}

#[derive(Clone, Copy)]
struct Seen {
    header_read: bool,
    head_checked: bool,
}

/// The request header is complete: the header deadline no longer applies to this request.
/// (Outside this loop, for TLS and HTTP/2, it does nothing.)
pub fn header_read() {
    let _ = REQUEST.try_with(|r| {
        r.seen.set(Seen {
            header_read: true,
            ..r.seen.get()
        })
    });
}

/// Whether this loop checked the request's whole head (`head.rs`): false for HTTP/2, and for an
/// HTTP/1 head longer than the loop reads.
pub fn head_checked() -> bool {
    REQUEST
        .try_with(|r| r.seen.get().head_checked)
        .unwrap_or(false)
}

/// The connection becomes a tunnel (a `101` to an upgrade): its bytes are no request body, so
/// the body deadline no longer bounds a pause between them; a quiet WebSocket stays open (the
/// upstream's `tunnel_idle_timeout` ends one whose target goes quiet). At shutdown it is closed
/// with a close frame (`connection.rs`).
pub fn tunnel(session: &mut ServerSession) {
    session.set_read_timeout(None);
    let _ = REQUEST.try_with(|r| r.connection.tunnel.store(true, Ordering::Relaxed));
}

/// A body was refused while it arrived, and Pingora will close the connection: read and drop
/// the rest first, for at most [`LINGER`], so that a client still sending reads the answer
/// instead of a reset (nginx's lingering close). Bounded here as well as by the session's drain
/// timeout, which HTTP/2 sessions do not have.
pub async fn linger(session: &mut ServerSession) {
    match tokio::time::timeout(LINGER, session.drain_request_body()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("gave up draining a refused body: {e}"),
        Err(_) => log::debug!("gave up draining a refused body after {LINGER:?}"),
    }
}

/// An answer is about to go out. A client that asked for `100 Continue`, has not had it, and
/// has sent nothing of its body may never send that body, or send it after all: where its next
/// request would start is unknown, so the connection closes after this answer (Pingora's
/// default, and nginx's) instead of waiting for the body to drop it.
pub fn before_answer(session: &mut ServerSession) {
    let waiting = !session.is_body_done()
        && session.body_bytes_read() == 0
        && session.response_written().is_none()
        && session
            .req_header()
            .headers
            .contains_key(http::header::EXPECT);
    if waiting {
        session.set_keepalive(None);
    }
}

/// Fires at `deadline` when the request header has not been read by then; never otherwise.
async fn slow_header(deadline: Pin<&mut Sleep>) {
    deadline.await;
    if REQUEST.with(|r| r.seen.get().header_read) {
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl<A> ServerApp for KeepAlive<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let options = self.app.server_options();
        let custom = options.is_some_and(|o| o.force_custom);
        let tls = stream.get_ssl_digest().is_some();
        // HTTP/1, in plain text or over TLS (where ALPN chose it, or the client offered none).
        let http1 = !custom
            && match stream.selected_alpn_proto() {
                None => true,
                Some(alpn) => tls && alpn.get_max_http_version() == 1,
            };
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        // Held for the connection's life.
        let _admitted = match peer.map(|ip| self.cap.admit(ip)) {
            Some(None) => return self.refuse(stream, http1).await,
            Some(Some(admitted)) => admitted,
            None => None,
        };
        if !http1 {
            return self.app.process_new(stream, shutdown).await;
        }
        // One timer for the connection's life, pushed back before each wait: pushing a tokio
        // timer's deadline later is one atomic update, where a timer per wait is a lock and a
        // wheel insertion (and, armed from scratch, a wake-up write to the runtime's eventfd).
        let idle = tokio::time::sleep(self.timeouts.idle);
        tokio::pin!(idle);
        // A client that has just connected is sending a request: it is served even when
        // shutdown begins meanwhile (with keep-alive off), as Pingora's own loop does.
        let mut first = first_bytes(&mut stream, idle.as_mut(), None).await?;
        if !tls && options.is_some_and(|o| o.h2c) && might_be_h2_preface(&first) {
            // Put the bytes back and let Pingora's loop look for the whole preface.
            let mut l4: Box<L4Stream> = stream.into_any().downcast().ok()?;
            l4.rewind(&first);
            return self.app.process_new(l4, shutdown).await;
        }
        // Counted from here on: whether Pingora read from the connection while it served a
        // request tells whether it may hold a pipelined request's bytes.
        let (mut stream, connection) = Watched::wrap(stream, shutdown, self.timeouts.grace);
        let idle_secs = self.timeouts.idle.as_secs().max(1);
        // Requests this connection may still serve after the next one (Pingora's count).
        let mut reuses = options.and_then(|o| o.keepalive_request_limit);
        let mut shutdown_rx = shutdown.clone();
        loop {
            let header_deadline = Instant::now() + self.timeouts.header;
            // A head not all here yet (a slow client, a pipelined request of which a byte came
            // with the one before) is read on, so that every head is checked before Pingora
            // parses it. A client that pauses longer than the idle timeout, as Pingora's own
            // reads allow, or has not finished by the header deadline, is dropped.
            let mut verdict = head::check(&first);
            while verdict == Verdict::Partial && first.len() < CHECKED_HEAD {
                let pause = Instant::now() + self.timeouts.idle;
                idle.as_mut().reset(pause.min(header_deadline));
                let more = first_bytes(&mut stream, idle.as_mut(), None).await?;
                first.extend_from_slice(&more);
                verdict = head::check(&first);
            }
            if let Verdict::Encode(target) = verdict {
                head::encode_target(&mut first, target);
                verdict = head::check(&first);
            }
            // The connection's one timer now counts down the header deadline.
            idle.as_mut().reset(header_deadline);
            if let Verdict::Refuse(e) = verdict {
                // Answered here, in the contract's shape, before Pingora sees the head.
                let _ = stream.write_all(&head::answer(e)).await;
                let _ = stream.flush().await;
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            session.set_keepalive_reuses_remaining(reuses);
            // Every request on the connection is answered, in order, however it arrived
            // (RFC 9112 §9.3): bytes read past a request are kept for the next.
            session.set_pipelining_enabled(true);
            // Also bounds reading the rest of the request header: a reused session would
            // otherwise carry Pingora's "infinite" and wait for it forever.
            session.set_keepalive(Some(idle_secs));
            session.set_read_timeout(Some(self.timeouts.body));
            // An answer that goes out before the request's body is all in (a 413 to an
            // upload, an upstream that answered early) keeps the connection until the rest is
            // read and dropped, instead of Pingora's close with the rest unread.
            session.set_close_on_response_before_downstream_finish(false);
            session.set_total_drain_timeout(Some(LINGER));
            // Exactly one request in the bytes handed over: Pingora is left none of them.
            let exact = matches!(verdict, Verdict::Fine(Some(n)) if n == first.len());
            session.set_pipelined_prefix(first);
            connection.read.store(0, Ordering::Relaxed);
            let serve = self.app.process_new_http(session, shutdown);
            let deadline = idle.as_mut();
            let seen = Seen {
                header_read: false,
                head_checked: matches!(verdict, Verdict::Fine(_)),
            };
            let request = Request {
                seen: Cell::new(seen),
                connection: Arc::clone(&connection),
            };
            let reused = REQUEST
                .scope(request, async move {
                    tokio::select! {
                        biased;
                        reused = serve => reused,
                        () = slow_header(deadline) => None,
                    }
                })
                .await?;
            let (next, settings) = reused.consume();
            stream = next;
            reuses = reuses.map(|n| n.saturating_sub(1));
            // The next request may be here already, read with this one: then there is nothing
            // to wait for (its client waits for the answers). Pingora can hold such bytes only
            // if it was handed more than the request, or read from the connection itself.
            let may_hold = !exact || connection.read.load(Ordering::Relaxed) > 0;
            let pipelined = settings.as_ref().filter(|_| may_hold);
            if let Some(pipelined) = pipelined.and_then(pipeline::prefix) {
                first = pipelined;
                continue;
            }
            idle.as_mut().reset(Instant::now() + self.timeouts.idle);
            first = first_bytes(&mut stream, idle.as_mut(), Some(&mut shutdown_rx)).await?;
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// Whether a connection's first bytes may be the start of the HTTP/2 preface. A request line
/// never starts with `PRI ` (RFC 9113, section 3.4); a first read as short as `P` could still
/// be either, and goes to Pingora's loop, which reads on.
fn might_be_h2_preface(first: &[u8]) -> bool {
    let n = first.len().min(H2_PREFACE.len());
    first[..n] == H2_PREFACE[..n]
}

/// Wait for the next request's first bytes. `None` when the client closes, the connection
/// fails, `idle` fires, or, given `shutdown`, the server starts shutting down.
///
/// Each attempt reads into the stack; only bytes that arrived are copied to the heap, so a
/// connection waiting for readiness holds no buffer and a wait costs no allocation.
async fn first_bytes(
    stream: &mut Stream,
    idle: Pin<&mut Sleep>,
    shutdown: Option<&mut ShutdownWatch>,
) -> Option<BytesMut> {
    let read = poll_fn(|cx| {
        let mut space = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut buf = ReadBuf::uninit(&mut space);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                Poll::Ready(Some(BytesMut::from(buf.filled())))
            }
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    });
    let down = async {
        match shutdown {
            Some(rx) => rx.wait_for(|down| *down).await.map(drop),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        bytes = read => bytes,
        () = idle => None,
        _ = down => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2_preface_is_told_from_http1() {
        assert!(might_be_h2_preface(H2_PREFACE));
        assert!(might_be_h2_preface(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"
        ));
        // Too short to tell: Pingora's loop reads on.
        assert!(might_be_h2_preface(b"P"));
        assert!(might_be_h2_preface(b"PRI * HT"));
        assert!(!might_be_h2_preface(b"POST / HTTP/1.1\r\n"));
        assert!(!might_be_h2_preface(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!might_be_h2_preface(b"PRI * HTTP/1.1\r\n\r\n"));
    }
}
