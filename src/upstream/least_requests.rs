//! `least_requests`: send each request to the target with the fewest requests in flight.
//!
//! Pingora ships no such selection. Scanning every target per request would cost O(n) and make
//! every thread read every counter, so this uses the "power of two choices": pick two targets at
//! random and take the less loaded one (weights scale the comparison). It is within a small factor
//! of the true least-loaded choice and does constant work per request.

use super::Target;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::Backend;
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct LeastRequests {
    backends: Box<[Backend]>,
}

impl BackendSelection for LeastRequests {
    type Iter = LeastRequestsIter;
    type Config = ();

    fn build(backends: &BTreeSet<Backend>) -> Self {
        LeastRequests {
            backends: backends.iter().cloned().collect(),
        }
    }

    fn iter(self: &Arc<Self>, _key: &[u8]) -> LeastRequestsIter {
        let n = self.backends.len();
        let first = match n {
            0 => 0,
            1 => 0,
            _ => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                if less_loaded(&self.backends[b], &self.backends[a]) {
                    b
                } else {
                    a
                }
            }
        };
        LeastRequestsIter {
            selection: Arc::clone(self),
            first,
            step: 0,
        }
    }
}

/// `a` carries less load per unit of weight than `b`.
fn less_loaded(a: &Backend, b: &Backend) -> bool {
    let load = |x: &Backend| Target::of(x).map_or(0, |t| t.inflight());
    load(a) * b.weight < load(b) * a.weight
}

/// The chosen target first, then every other target once, for retries and unhealthy skips.
pub struct LeastRequestsIter {
    selection: Arc<LeastRequests>,
    first: usize,
    step: usize,
}

impl BackendIter for LeastRequestsIter {
    fn next(&mut self) -> Option<&Backend> {
        let backends = &self.selection.backends;
        if self.step >= backends.len() {
            return None;
        }
        let i = (self.first + self.step) % backends.len();
        self.step += 1;
        Some(&backends[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(addr: &str, inflight: usize) -> Backend {
        let found = crate::upstream::discovery::Found {
            addr: addr.parse().unwrap(),
            weight: 1,
            host: addr.to_string(),
        };
        let config: crate::config::UpstreamConfig = toml::from_str("").unwrap();
        let reach = crate::upstream::reach::Reach::new(&config).unwrap();
        let b = Target::backend(&found, addr, "static", Arc::default(), &reach).unwrap();
        let t = Target::of(&b).unwrap();
        for _ in 0..inflight {
            std::mem::forget(t.acquire());
        }
        b
    }

    #[test]
    fn prefers_the_idle_target() {
        let set: BTreeSet<_> = [backend("127.0.0.1:1", 50), backend("127.0.0.1:2", 0)].into();
        let sel = Arc::new(LeastRequests::build(&set));
        for _ in 0..100 {
            let mut it = sel.iter(b"");
            assert_eq!(it.next().unwrap().addr.to_string(), "127.0.0.1:2");
            assert!(it.next().is_some());
            assert!(it.next().is_none());
        }
    }
}
