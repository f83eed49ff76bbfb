//! A request's deadline: the route's `timeout` and, for a gRPC call, its `grpc-timeout`,
//! whichever ends first, counted from the request's arrival.
//!
//! It bounds the whole request, across retries: no attempt starts once it has passed, each
//! attempt's connect, read and write timeouts are cut to the time left (so a target that is
//! slow to answer is given up on at the deadline), a response still streaming when it passes is
//! cut at its next chunk, and a gRPC target is told the time left in `grpc-timeout`. What it
//! ends is answered `504 upstream_timeout` (`DEADLINE_EXCEEDED` to a gRPC client).

use crate::grpc;
use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// The deadline of a request that arrived at `started`: the route's `timeout`, and the
    /// call's `grpc-timeout` (a gRPC call's only; one that does not parse is ignored).
    pub fn of(
        started: std::time::Instant,
        route: Option<Duration>,
        grpc_timeout: Option<&HeaderValue>,
    ) -> Option<Deadline> {
        let grpc = grpc_timeout.and_then(|v| grpc::parse_timeout(v.as_bytes()));
        let within = match (route, grpc) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        // Tokio's clock, which the unit tests can pause; the same as the system's otherwise.
        Some(Deadline(Instant::from_std(started) + within))
    }

    /// The time left; `None` once it has passed.
    pub fn left(&self) -> Option<Duration> {
        Some(self.0.checked_duration_since(Instant::now())?).filter(|d| !d.is_zero())
    }

    /// When it passes.
    pub fn at(&self) -> Instant {
        self.0
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        self.left().is_none()
    }
}

/// The deadline passed: no attempt may start.
#[derive(Debug, PartialEq, Eq)]
pub struct Passed;

/// Before an attempt: wait out its backoff (`wait`, cut to the time left), then the time the
/// request has left (`None` without a deadline).
pub async fn before_attempt(
    deadline: Option<Deadline>,
    wait: Option<Duration>,
) -> Result<Option<Duration>, Passed> {
    if let Some(wait) = wait {
        let left = deadline.and_then(|d| d.left());
        tokio::time::sleep(left.map_or(wait, |l| wait.min(l))).await;
    }
    match deadline {
        None => Ok(None),
        Some(d) => d.left().map(Some).ok_or(Passed),
    }
}

/// Cut an attempt's timeouts to `left`, the time its request has left, if it has a deadline.
pub fn bound(peer: &mut HttpPeer, left: Option<Duration>) {
    let Some(left) = left else {
        return;
    };
    let o = &mut peer.options;
    for t in [
        &mut o.connection_timeout,
        &mut o.total_connection_timeout,
        &mut o.read_timeout,
        &mut o.write_timeout,
    ] {
        *t = Some(t.map_or(left, |t| t.min(left)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tighter_of_the_two() {
        let now = std::time::Instant::now();
        let grpc = HeaderValue::from_static("200m");
        let d = |route, grpc| Deadline::of(now, route, grpc).map(|d| d.0 - Instant::from_std(now));
        assert_eq!(d(None, None), None);
        assert_eq!(
            d(Some(Duration::from_secs(1)), None),
            Some(Duration::from_secs(1))
        );
        assert_eq!(d(None, Some(&grpc)), Some(Duration::from_millis(200)));
        assert_eq!(
            d(Some(Duration::from_secs(1)), Some(&grpc)),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            d(Some(Duration::from_millis(50)), Some(&grpc)),
            Some(Duration::from_millis(50))
        );
        // Not a timeout: the route's alone.
        let bad = HeaderValue::from_static("soon");
        assert_eq!(d(None, Some(&bad)), None);
    }

    #[test]
    fn attempts_get_at_most_the_time_left() {
        let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
        peer.options.read_timeout = Some(Duration::from_secs(30));
        peer.options.connection_timeout = Some(Duration::from_millis(100));
        bound(&mut peer, Some(Duration::from_millis(500)));
        assert_eq!(peer.options.read_timeout, Some(Duration::from_millis(500)));
        assert_eq!(peer.options.write_timeout, Some(Duration::from_millis(500)));
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_millis(100))
        );
        assert!(!Deadline(Instant::now() + Duration::from_secs(5)).passed());
        assert!(Deadline(Instant::now()).passed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_never_outlasts_the_deadline() {
        let d = Deadline(Instant::now() + Duration::from_millis(300));
        let start = Instant::now();
        let left = before_attempt(Some(d), Some(Duration::from_millis(100))).await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert!(left.unwrap().unwrap() <= Duration::from_millis(200));
        assert_eq!(before_attempt(None, None).await, Ok(None));
    }
}
