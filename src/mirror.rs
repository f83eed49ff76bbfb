//! A route's `mirror`: a sampled copy of each request to a shadow upstream, fire and forget.
//!
//! The copy is what the route's upstream gets (its header after every request filter, so a
//! stripped credential stays stripped; its body as it went upstream), with the shadow's `Host`
//! and `x-pylon-mirror: 1`. The body is gathered as it streams to the primary, up to
//! `max_body` (a larger one, declared or found, is not copied), and the copy is sent once the
//! request's body has ended, by a task of its own through `upstream::call` (the shadow pool's
//! selection, breakers and timeouts). Nothing of the client's request waits for it: not its
//! answer, not its connection. `max_inflight` bounds the copies out at once; past it new ones
//! are dropped. Sampling is exact: a counter, not a random draw, so 10% is 100 of any 1,000.
//! With `compare`, a copy whose status class (2xx, 4xx, 5xx, ...) differs from the primary's
//! is counted as a mismatch.

use crate::config::MirrorConfig;
use crate::metrics::METRICS;
use crate::upstream::call::{self, Call};
use crate::upstream::{Attempts, Replay, Upstream};
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::RequestHeader;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The most of a shadow's answer read (and thrown away).
const ANSWER_BODY: usize = 1 << 20;

/// `pylon_mirror_requests_total{route,result}`, resolved at load.
struct Results {
    sent: IntCounter,
    skipped_sample: IntCounter,
    skipped_body: IntCounter,
    dropped: IntCounter,
    error: IntCounter,
    mismatch: IntCounter,
}

pub struct Mirror {
    upstream: Arc<Upstream>,
    /// Thousandths of a percent.
    share: u64,
    turn: AtomicU64,
    max_body: usize,
    timeout: Duration,
    max_inflight: usize,
    inflight: AtomicUsize,
    compare: bool,
    results: Results,
}

/// A copy being gathered while the request's body goes upstream.
pub struct Copy {
    header: RequestHeader,
    body: BytesMut,
}

impl Mirror {
    pub fn compile(
        route: &str,
        config: &MirrorConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
    ) -> Result<Mirror, String> {
        let name = config.upstream.get_ref();
        let upstream = upstreams
            .get(name)
            .cloned()
            .ok_or_else(|| format!("`mirror` names unknown upstream `{name}`"))?;
        let result = |r: &str| METRICS.mirror_requests.with_label_values(&[route, r]);
        Ok(Mirror {
            upstream,
            share: (config.percent.clamp(0.0, 100.0) * 1000.0).round() as u64,
            turn: AtomicU64::new(0),
            max_body: config.max_body.bytes(),
            timeout: config.timeout.0,
            max_inflight: config.max_inflight,
            inflight: AtomicUsize::new(0),
            compare: config.compare,
            results: Results {
                sent: result("sent"),
                skipped_sample: result("skipped_sample"),
                skipped_body: result("skipped_body"),
                dropped: result("dropped"),
                error: result("error"),
                mismatch: result("mismatch"),
            },
        })
    }

    /// A copy of the request going upstream as `header`, if it is this request's turn and its
    /// declared body fits.
    pub fn begin(&self, header: &RequestHeader) -> Option<Copy> {
        let n = self.turn.fetch_add(1, Ordering::Relaxed);
        let per = 100_000;
        if (n + 1) * self.share / per == n * self.share / per {
            self.results.skipped_sample.inc();
            return None;
        }
        let declared = header
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_body) {
            self.results.skipped_body.inc();
            return None;
        }
        let mut header = header.clone();
        header.remove_header(&http::header::TRANSFER_ENCODING);
        let _ = header.insert_header("x-pylon-mirror", HeaderValue::from_static("1"));
        Some(Copy {
            header,
            body: BytesMut::new(),
        })
    }

    /// Add a piece of the body to `copy`; false when it grew past `max_body` (then the copy
    /// is given up, and counted).
    pub fn add(&self, copy: &mut Copy, chunk: &Bytes) -> bool {
        if copy.body.len() + chunk.len() > self.max_body {
            self.results.skipped_body.inc();
            return false;
        }
        copy.body.extend_from_slice(chunk);
        true
    }

    /// Send `copy` on a task of its own. With `compare`, the returned sender takes the
    /// primary's status when the request ends.
    pub fn send(self: &Arc<Self>, copy: Copy) -> Option<oneshot::Sender<u16>> {
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= self.max_inflight {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            self.results.dropped.inc();
            return None;
        }
        self.results.sent.inc();
        let (primary, status) = match self.compare {
            true => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            false => (None, None),
        };
        let mirror = Arc::clone(self);
        tokio::spawn(async move {
            let answered = mirror.call(copy).await;
            mirror.inflight.fetch_sub(1, Ordering::Relaxed);
            let Some(shadow) = answered else {
                mirror.results.error.inc();
                return;
            };
            if let Some(Ok(primary)) = match status {
                Some(rx) => Some(rx.await),
                None => None,
            } {
                if primary / 100 != shadow / 100 {
                    mirror.results.mismatch.inc();
                }
            }
        });
        primary
    }

    /// The shadow's status, or `None` when it gave none in time.
    async fn call(&self, copy: Copy) -> Option<u16> {
        let Copy { mut header, body } = copy;
        match body.len() {
            0 => header.remove_header(&http::header::CONTENT_LENGTH),
            len => {
                let _ = header.insert_header(http::header::CONTENT_LENGTH, len);
                None
            }
        };
        let call = Call {
            req: &header,
            body: body.freeze(),
            max_body: ANSWER_BODY,
            replay: Replay {
                idempotent: header.method.is_idempotent(),
                body_whole: true,
            },
            grpc: false,
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = Attempts::default();
        match call::call(&self.upstream, call, &mut attempts, Some(deadline)).await {
            Ok(answer) => Some(answer.header.status.as_u16()),
            Err(call::Failure::TooLarge) => Some(200),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfSize, ConfTimeout};
    use toml::Spanned;

    fn mirror(percent: f64, max_body: usize) -> Mirror {
        let config = MirrorConfig {
            upstream: Spanned::new(0..0, "shadow".into()),
            percent,
            max_body: ConfSize(max_body as u64),
            timeout: ConfTimeout(Duration::from_secs(1)),
            max_inflight: 1,
            compare: false,
        };
        let shadow = crate::upstream::Upstream::build(
            "shadow",
            &toml::from_str("targets = [\"127.0.0.1:1\"]").unwrap(),
            &mut crate::state::Keeper::new(None),
        )
        .unwrap();
        let upstreams = [("shadow".to_string(), Arc::new(shadow))].into();
        Mirror::compile("r", &config, &upstreams).unwrap()
    }

    #[test]
    fn sampling_is_exact_and_bodies_are_bounded() {
        let m = mirror(10.0, 8);
        let req = RequestHeader::build("POST", b"/", None).unwrap();
        let copies = (0..1000).filter(|_| m.begin(&req).is_some()).count();
        assert_eq!(copies, 100);
        let m = mirror(100.0, 8);
        let mut copy = m.begin(&req).unwrap();
        assert_eq!(copy.header.headers["x-pylon-mirror"], "1");
        assert!(m.add(&mut copy, &Bytes::from_static(b"12345678")));
        assert!(!m.add(&mut copy, &Bytes::from_static(b"9")));
        let mut large = req.clone();
        large.insert_header("content-length", "9").unwrap();
        assert!(m.begin(&large).is_none());
        assert!(mirror(0.0, 8).begin(&req).is_none());
    }
}
