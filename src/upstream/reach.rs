//! How a pool reaches its targets: the peer each request is sent to (timeouts, TLS, the
//! HTTP version), prepared once when the pool is built so nothing is read or parsed per
//! request or per discovered target.

use super::sni_for;
use crate::config::UpstreamConfig;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::{HttpPeer, PeerOptions};
use std::net::SocketAddr;
use std::sync::Arc;

/// Streams one HTTP/2 connection to a target carries at once (Pingora's default is 1, which
/// would open a connection per concurrent request and lose what h2 is for).
const H2_STREAMS: usize = 100;

/// A pool's definition with what its files hold, read at load.
#[derive(Clone)]
pub struct Reach {
    pub config: Arc<UpstreamConfig>,
    /// The certificates of the pool's `ca` file; none: the system's roots.
    ca: Option<Arc<Box<[openssl::x509::X509]>>>,
    /// Tells Pingora's connection pool which CA verified a connection: its reuse key leaves
    /// the CA out, so without this a pool trusting one CA could be handed a connection
    /// another pool verified against a different one.
    group: u64,
}

impl Reach {
    pub fn new(config: &UpstreamConfig) -> Result<Reach, String> {
        let ca = match &config.ca {
            Some(path) => Some(crate::tls::upstream_ca(path.get_ref())?),
            None => None,
        };
        let group = ca.as_deref().map_or(0, |cas| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for cert in cas.iter() {
                if let Ok(der) = cert.to_der() {
                    std::hash::Hash::hash(&der, &mut h);
                }
            }
            std::hash::Hasher::finish(&h)
        });
        Ok(Reach {
            config: Arc::new(config.clone()),
            ca,
            group,
        })
    }

    /// The TLS checks of the pool, on a peer's options (requests and health checks alike).
    pub fn verify(&self, o: &mut PeerOptions) {
        o.verify_cert = self.config.verify;
        o.verify_hostname = self.config.verify;
        o.ca = self.ca.clone();
    }

    /// The peer for one target, known as `written` (its TLS name unless `sni` is set).
    pub fn peer(&self, addr: SocketAddr, written: &str) -> HttpPeer {
        let config = &self.config;
        let sni = if config.tls {
            sni_for(written, config)
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, config.tls, sni);
        peer.group_key = self.group;
        let o = &mut peer.options;
        o.connection_timeout = Some(config.connect_timeout.0);
        o.read_timeout = Some(config.read_timeout.0);
        o.write_timeout = Some(config.write_timeout.0);
        o.idle_timeout = Some(config.idle_timeout.0);
        self.verify(o);
        if config.h2 {
            // Over TLS, h2 if the target agrees by ALPN, else HTTP/1.1; in plain text there
            // is nothing to agree by, so h2 by prior knowledge.
            o.alpn = if config.tls { ALPN::H2H1 } else { ALPN::H2 };
            o.max_h2_streams = H2_STREAMS;
        }
        peer
    }
}
