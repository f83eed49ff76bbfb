//! What a request carries through its filters: who it is, where it came from, what the filters
//! found out, and each filter's own per-request state.

use super::Reply;
use crate::client_addr;
use crate::consumer::Identity;
use crate::ids::{RequestId, TraceContext};
use http::HeaderMap;
use ipnet::IpNet;
use pingora::protocols::tls::SslDigest;
use std::any::{Any, TypeId};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Per-request values keyed by their type: each filter kind keeps its own private type here.
/// Empty, it is one null pointer; a request rarely holds more than a few, so they sit in a
/// short list rather than a hash map.
#[derive(Default)]
pub struct State(Vec<(TypeId, Box<dyn Any + Send + Sync>)>);

impl State {
    /// Store `value`, replacing one of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        match self.0.iter_mut().find(|(id, _)| *id == TypeId::of::<T>()) {
            Some((_, slot)) => *slot = Box::new(value),
            None => self.0.push((TypeId::of::<T>(), Box::new(value))),
        }
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref())
    }

    pub fn get_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.0
            .iter_mut()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_mut())
    }

    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        let i = self.0.iter().position(|(id, _)| *id == TypeId::of::<T>())?;
        self.0.swap_remove(i).1.downcast().ok().map(|b| *b)
    }
}

/// Per-request state shared by the gateway and the route's filters.
///
/// Filters keep state of their own in [`Context::state`], a map keyed by type, so a new kind
/// needs no new field here; it costs nothing until a filter stores something.
#[derive(Default)]
pub struct Context {
    pub request_id: RequestId,
    pub trace: TraceContext,
    /// The name of the route it matched, once routed (metric labels, `${route}`).
    pub route: Option<Arc<str>>,
    /// Peers whose `x-forwarded-*` headers are believed, as the request's configuration says.
    pub trusted_proxies: Arc<[IpNet]>,
    /// The address the connection came from.
    pub peer: Option<IpAddr>,
    /// The connection's TLS session (`None` in plain text): its client certificate, if one
    /// was verified, is in its extension ([`crate::tls::ClientCert`]).
    pub tls: Option<Arc<SslDigest>>,
    client_ip: Option<IpAddr>,
    /// Who the request is, as the authentication filters established.
    pub identity: Identity,
    /// Outcomes for the access log (`auth_failed`, `rate_limited`, `throttled`).
    pub notes: Vec<&'static str>,
    /// A gRPC call (`content-type: application/grpc*`): the gateway's own answers are
    /// trailers-only gRPC responses.
    pub grpc: bool,
    /// The request could be sent to a target again whole (its body, if any, all in Pingora's
    /// retry buffer): set before the upstream-response filters run.
    pub body_replayable: bool,
    /// The call's `grpc-status`, once known (a gRPC call only).
    pub grpc_status: Option<crate::grpc::Code>,
    /// How the route's cache served the request, once the answer goes out.
    pub cache: Option<super::CacheResult>,
    /// Filters' own per-request state, by type.
    pub state: State,
    /// A reply a filter asked for after the request went upstream (a body filter's 413); the
    /// proxy's failure hook writes it.
    pub pending: Option<Reply>,
}

impl Context {
    /// The client certificate the connection's TLS handshake verified.
    pub fn client_cert(&self) -> Option<&crate::tls::ClientCert> {
        self.tls.as_deref()?.extension.get()
    }

    /// The route's name, or `""` before routing.
    pub fn route_name(&self) -> &str {
        self.route.as_deref().unwrap_or("")
    }

    /// The client's address after `trusted_proxies`, worked out once per request.
    pub fn client_ip(&mut self, headers: &HeaderMap) -> IpAddr {
        let ip = self.peek_client_ip(headers);
        self.client_ip = Some(ip);
        ip
    }

    /// Like [`Context::client_ip`], without keeping the answer (for a shared borrow).
    pub fn peek_client_ip(&self, headers: &HeaderMap) -> IpAddr {
        if let Some(ip) = self.client_ip {
            return ip;
        }
        match self.peer {
            Some(peer) => client_addr::client_ip(peer, headers, &self.trusted_proxies),
            None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_by_type() {
        struct A(u8);
        struct B(&'static str);
        let mut s = State::default();
        assert!(s.get::<A>().is_none());
        s.insert(A(1));
        s.insert(B("b"));
        s.insert(A(2));
        assert_eq!(s.get::<A>().map(|a| a.0), Some(2));
        s.get_mut::<B>().unwrap().0 = "c";
        assert_eq!(s.remove::<B>().map(|b| b.0), Some("c"));
        assert!(s.get::<B>().is_none());
        assert_eq!(s.get::<A>().map(|a| a.0), Some(2));
    }
}
