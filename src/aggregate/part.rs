//! One part's call: over its upstream's own selection, breakers, in-flight cap, retry rules and
//! peer options, exactly as a proxied request's attempts, through Pingora's HTTP connector.

use crate::upstream::{Attempts, Outcome, Replay, Upstream};
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::sync::LazyLock;
use tokio::time::Instant;

/// The connector every part uses: one pool of kept-alive connections for the process, with
/// each peer's own options (timeouts, idle timeout) as the proxy uses them. Pingora's proxy
/// keeps its connector private, so the parts cannot share its pooled connections.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// Why a part has no result: a code for `_errors`, never an internal detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No target could take it (all unhealthy, breakers open, `max_inflight`).
    Unavailable,
    ConnectError,
    Timeout,
    /// The exchange broke, or the answer was not an HTTP response.
    BadResponse,
    /// The target answered with a status that is not 2xx.
    Status(u16),
    NotJson,
    TooLarge,
    /// A `{jwt.*}`, `{path.*}` or `{query.*}` of its path has no value for this request.
    MissingValue,
}

impl Failure {
    pub fn code(self) -> String {
        match self {
            Failure::Unavailable => "unavailable".into(),
            Failure::ConnectError => "connect_error".into(),
            Failure::Timeout => "timeout".into(),
            Failure::BadResponse => "bad_response".into(),
            Failure::Status(s) => format!("status_{s}"),
            Failure::NotJson => "not_json".into(),
            Failure::TooLarge => "too_large".into(),
            Failure::MissingValue => "missing_value".into(),
        }
    }
}

/// One exchange with a target.
enum Exchange {
    Answered(u16, Bytes),
    Connect {
        timeout: bool,
    },
    /// Failed on a pooled connection before any answer: the target had closed it while idle.
    Stale,
    Timeout,
    Broken,
    TooLarge(u16),
}

async fn exchange(peer: &HttpPeer, req: RequestHeader, max_body: usize) -> Exchange {
    let (mut session, reused) = match CONNECTOR.get_http_session(peer).await {
        Ok(s) => s,
        Err(e) => {
            let timeout = matches!(
                e.etype(),
                ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout
            );
            return Exchange::Connect { timeout };
        }
    };
    session.set_read_timeout(peer.options.read_timeout);
    session.set_write_timeout(peer.options.write_timeout);
    let sent = async {
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await
    };
    if let Err(e) = sent.await {
        return match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Exchange::Timeout,
            _ if reused => Exchange::Stale,
            _ => Exchange::Broken,
        };
    }
    let Some(status) = session.response_header().map(|r| r.status.as_u16()) else {
        return Exchange::Broken;
    };
    let mut body = BytesMut::new();
    loop {
        match session.read_response_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_body {
                    return Exchange::TooLarge(status);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => return Exchange::Timeout,
            Err(_) => return Exchange::Broken,
        }
    }
    if session.response_done() {
        CONNECTOR
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
    }
    Exchange::Answered(status, body.freeze())
}

/// Call `upstream` with `req` until an answer, a failure that may not be retried, or
/// `deadline`. Every attempt's outcome reaches the pool's observers (breakers, latency).
pub async fn call(
    upstream: &Upstream,
    req: &RequestHeader,
    max_body: usize,
    deadline: Instant,
) -> Result<Bytes, Failure> {
    let mut attempts = Attempts::default();
    let result =
        tokio::time::timeout_at(deadline, attempt(upstream, req, max_body, &mut attempts)).await;
    match result {
        Ok(r) => r,
        Err(_) => {
            // Out of time with an attempt open: the target did not answer in time.
            attempts.report(upstream, Outcome::Timeout);
            Err(Failure::Timeout)
        }
    }
}

async fn attempt(
    upstream: &Upstream,
    req: &RequestHeader,
    max_body: usize,
    attempts: &mut Attempts,
) -> Result<Bytes, Failure> {
    let mut stale_retried = false;
    loop {
        if let Some(wait) = attempts.backoff(upstream) {
            tokio::time::sleep(wait).await;
        }
        let peer = attempts
            .pick(upstream, b"")
            .map_err(|_| Failure::Unavailable)?;
        let mut req = req.clone();
        if let Some(target) = attempts.target() {
            let _ = req.insert_header(http::header::HOST, target.host_header.clone());
        }
        let (outcome, failure) = match exchange(&peer, req, max_body).await {
            Exchange::Answered(status, body) => {
                let outcome = Outcome::Status(status);
                attempts.report(upstream, outcome);
                if (200..300).contains(&status) {
                    return Ok(body);
                }
                (outcome, Failure::Status(status))
            }
            Exchange::Connect { timeout } => {
                let outcome = Outcome::Connect { timeout };
                attempts.report(upstream, outcome);
                (outcome, Failure::ConnectError)
            }
            Exchange::Stale if !stale_retried => {
                // Not the target's failure; Pingora's proxy tries such a request again too.
                attempts.report(upstream, Outcome::Abandoned);
                crate::upstream::attempt::count_retry(upstream, "stale_connection");
                stale_retried = true;
                continue;
            }
            Exchange::Stale | Exchange::Broken => {
                attempts.report(upstream, Outcome::Broken);
                return Err(Failure::BadResponse);
            }
            Exchange::Timeout => {
                attempts.report(upstream, Outcome::Timeout);
                return Err(Failure::Timeout);
            }
            Exchange::TooLarge(status) => {
                attempts.report(upstream, Outcome::Status(status));
                return Err(Failure::TooLarge);
            }
        };
        // A part is a GET: safe to send again wherever the proxy would.
        if !attempts.may_retry(upstream, outcome, || Replay::ALWAYS) {
            return Err(failure);
        }
    }
}
