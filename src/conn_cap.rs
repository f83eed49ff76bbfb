//! The cap on connections one client address may hold open at once, against a client that
//! ties up the gateway with many idle or slow connections.
//!
//! Counted per peer address when a connection is accepted, in sharded maps (a lock per shard,
//! taken once when a connection opens and once when it closes, never per request). Peers in
//! `server.trusted_proxies` are exempt: behind a load balancer every connection comes from it.

use crate::shards::Shards;
use ipnet::IpNet;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;

pub struct ConnectionCap {
    max: u32,
    exempt: Vec<IpNet>,
    counts: Shards<HashMap<IpAddr, u32>>,
    hasher: RandomState,
}

/// One admitted connection; gives its place back when dropped.
pub struct Admitted {
    cap: Arc<ConnectionCap>,
    ip: IpAddr,
}

impl ConnectionCap {
    pub fn new(max: u32, exempt: Vec<IpNet>) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap {
            max,
            exempt,
            counts: Shards::default(),
            hasher: RandomState::new(),
        })
    }

    fn shard(&self, ip: &IpAddr) -> u64 {
        self.hasher.hash_one(ip)
    }

    /// Count a new connection from `ip`; `None` when that address already holds `max`. An
    /// exempt peer gets `Some` without being counted.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Option<Admitted>> {
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|n| n.contains(&ip)) {
            return Some(None);
        }
        let mut shard = self.counts.lock(self.shard(&ip));
        let count = shard.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Some(Admitted {
            cap: Arc::clone(self),
            ip,
        }))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut shard = self.cap.counts.lock(self.cap.shard(&self.ip));
        if let Some(count) = shard.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                shard.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_address_and_freed_on_close() {
        let cap = ConnectionCap::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = cap.admit(a).unwrap();
        let _second = cap.admit(a).unwrap();
        assert!(cap.admit(a).is_none(), "a third from the same address");
        assert!(cap.admit(b).is_some(), "another address has its own count");
        drop(first);
        assert!(
            cap.admit(a).is_some(),
            "a closed connection frees its place"
        );
        let proxy: IpAddr = "10.1.1.1".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| cap.admit(proxy).unwrap()).collect();
        assert!(
            held.iter().all(Option::is_none),
            "trusted proxies are not counted"
        );
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _third = cap.admit(a).unwrap();
        assert!(
            cap.admit(mapped).is_none(),
            "an IPv4-mapped address is the same client"
        );
    }
}
