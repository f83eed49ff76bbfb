//! A request the gateway makes itself to an upstream (an aggregate's part, a transcoded gRPC
//! call): over the pool's own selection, breakers, in-flight cap, retry rules and peer
//! options, exactly as a proxied request's attempts, through Pingora's HTTP connector.

use super::{Attempts, Outcome, Replay, Upstream};
use crate::filter::Answer;
use crate::grpc::Code;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;
use std::sync::LazyLock;
use tokio::time::Instant;

/// The connector every such call uses: one pool of kept-alive connections for the process,
/// with each peer's own options (timeouts, idle timeout) as the proxy uses them. Pingora's
/// proxy keeps its connector private, so these calls cannot share its pooled connections.
static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

/// Why a call has no answer: a code for logs and `_errors`, never an internal detail.
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

/// What to send, and how to judge and repeat it.
pub struct Call<'a> {
    pub req: &'a RequestHeader,
    pub body: Bytes,
    /// The most of an answer's body taken.
    pub max_body: usize,
    /// Whether the request may go to another target once one answered it.
    pub replay: Replay,
    /// A gRPC call: its outcome is its `grpc-status`.
    pub grpc: bool,
}

/// One exchange with a target.
enum Exchange {
    Answered(Box<Answer>),
    Connect {
        timeout: bool,
    },
    /// Failed on a pooled connection before any answer: the target had closed it while idle.
    Stale,
    Timeout,
    Broken,
    TooLarge(u16),
}

async fn exchange(peer: &HttpPeer, req: RequestHeader, body: &Bytes, max_body: usize) -> Exchange {
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
        if !body.is_empty() {
            session.write_request_body(body.clone(), false).await?;
        }
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
    let Some(header) = session.response_header().cloned() else {
        return Exchange::Broken;
    };
    let mut body = BytesMut::new();
    loop {
        match session.read_response_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max_body {
                    return Exchange::TooLarge(header.status.as_u16());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => return Exchange::Timeout,
            Err(_) => return Exchange::Broken,
        }
    }
    let trailers = match &mut session {
        HttpSession::H2(h2) => match h2.read_trailers().await {
            Ok(t) => t,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => return Exchange::Timeout,
            Err(_) => return Exchange::Broken,
        },
        _ => None,
    };
    if session.response_done() {
        CONNECTOR
            .release_http_session(session, peer, peer.options.idle_timeout)
            .await;
    }
    Exchange::Answered(Box::new(Answer {
        header,
        body: body.freeze(),
        trailers,
    }))
}

/// What an answer says of its target: its status, or a gRPC call's `grpc-status` (from a
/// trailers-only answer's header or from the trailers; none at all is `UNKNOWN`).
fn outcome(answer: &Answer, grpc: bool) -> Outcome {
    let status = answer.header.status.as_u16();
    let code = Code::of_headers(&answer.header.headers)
        .or_else(|| answer.trailers.as_ref().and_then(Code::of_headers));
    Outcome::of_answer(status, grpc, code).unwrap_or(Outcome::Grpc(Code::UNKNOWN))
}

/// Make `call` to `upstream` until an answer that is not retried, a failure that may not be
/// retried, or `deadline`. Every attempt's outcome reaches the pool's observers (breakers,
/// latency) and `attempts` (the access log's target).
pub async fn call(
    upstream: &Upstream,
    call: Call<'_>,
    attempts: &mut Attempts,
    deadline: Option<Instant>,
) -> Result<Answer, Failure> {
    let Some(deadline) = deadline else {
        return attempt(upstream, &call, attempts).await;
    };
    match tokio::time::timeout_at(deadline, attempt(upstream, &call, attempts)).await {
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
    call: &Call<'_>,
    attempts: &mut Attempts,
) -> Result<Answer, Failure> {
    let mut stale_retried = false;
    loop {
        if let Some(wait) = attempts.backoff(upstream) {
            tokio::time::sleep(wait).await;
        }
        let peer = attempts
            .pick(upstream, b"")
            .map_err(|_| Failure::Unavailable)?;
        let mut req = call.req.clone();
        if let Some(target) = attempts.target() {
            let _ = req.insert_header(http::header::HOST, target.host_header.clone());
        }
        let (outcome, failure) = match exchange(&peer, req, &call.body, call.max_body).await {
            Exchange::Answered(answer) => {
                let outcome = outcome(&answer, call.grpc);
                attempts.report(upstream, outcome);
                if !attempts.may_retry(upstream, outcome, || call.replay) {
                    return Ok(*answer);
                }
                continue;
            }
            Exchange::Connect { timeout } => {
                let outcome = Outcome::Connect { timeout };
                attempts.report(upstream, outcome);
                (outcome, Failure::ConnectError)
            }
            Exchange::Stale if !stale_retried => {
                // Not the target's failure; Pingora's proxy tries such a request again too.
                attempts.report(upstream, Outcome::Abandoned);
                super::attempt::count_retry(upstream, "stale_connection");
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
        if !attempts.may_retry(upstream, outcome, || call.replay) {
            return Err(failure);
        }
    }
}
