//! Authentication: the auth policies of a route, run as one filter by Kong's rule.
//!
//! Each auth kind (`api_key`, `basic_auth`, `jwt`) is an [`Authenticator`]: it finds its kind
//! of credential in a request and says what it proves. A route's auth policies, wherever they
//! were listed, become one [`Authentication`] filter at the front of its chain: among several,
//! the first that finds its credential decides; when none finds one, the anonymous consumer of
//! the first that has one applies, or the request is refused with 401 before any other policy
//! runs. Before proxying, the credential that was used is stripped (unless its policy forwards
//! it) and the identity's claim headers are set, after removing any the client sent.

use crate::consumer::{Consumer, Identity};
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use std::sync::Arc;

/// An auth policy's answer about a credential it found.
pub enum Auth {
    Granted(Identity),
    /// Bad credentials: 401.
    Refused(&'static str),
    /// Good credentials that do not grant this route: 403.
    Forbidden(&'static str),
    /// The check could not run in time (bcrypt saturated): 429.
    Busy,
    /// The service that checks the credential could not answer: 503.
    Unavailable,
}

impl Auth {
    pub fn consumer(consumer: Arc<Consumer>) -> Auth {
        Auth::Granted(Identity::of(consumer))
    }
}

/// Where a credential was found, so it can be stripped before proxying.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Header(HeaderName),
    Query(String),
}

/// One auth kind.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The policy's name, for metrics and logs.
    fn name(&self) -> &Arc<str>;

    /// Check the request's credential of this kind (in its header, or its connection's
    /// client certificate): `None` when it carries none. The
    /// [`Found`] is where the credential was, to strip it; `None` to forward it.
    async fn authenticate(
        &self,
        req: &RequestHeader,
        cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)>;

    /// `WWW-Authenticate` for a 401 from this policy.
    fn challenge(&self, reason: &str) -> HeaderValue;

    /// The consumer of requests that carry no credential at all.
    fn anonymous(&self) -> Option<&Arc<Consumer>>;

    /// Headers this policy sets upstream from what the credential proves: never taken from
    /// the client.
    fn owned_headers(&self) -> &[HeaderName] {
        &[]
    }

    /// How much of the body this policy must see before the request goes upstream (a signed
    /// body digest); 0, the default: none.
    fn holds_body(&self) -> usize {
        0
    }

    /// A chunk of the body of a request this policy granted; `end` on the last.
    async fn request_body(
        &self,
        _body: &Option<Bytes>,
        _end: bool,
        _cx: &mut Context,
    ) -> Result<(), Reply> {
        Ok(())
    }
}

/// The credential of `Authorization: <scheme> <credential>`, when the scheme (given lower-case,
/// with its trailing space) matches, in any case.
pub fn authorization<'a>(req: &'a RequestHeader, scheme: &[u8]) -> Option<&'a [u8]> {
    let value = req.headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (given, rest) = value.split_at_checked(scheme.len())?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_ascii())
}

/// The credential to strip, kept for the upstream request.
struct Strip(Found);

/// Which policy granted the request, when one judges bodies too.
struct GrantedBy(usize);

/// The auth policies of one route.
pub struct Authentication {
    policies: Box<[Arc<dyn Authenticator>]>,
    /// The most of a body any of them must see first.
    holds: usize,
    /// Every header the policies set from credentials, removed from the client's request.
    owned: Box<[HeaderName]>,
}

impl Authentication {
    pub fn new(policies: Vec<Arc<dyn Authenticator>>) -> Authentication {
        let mut owned: Vec<HeaderName> = policies
            .iter()
            .flat_map(|p| p.owned_headers().iter().cloned())
            .collect();
        owned.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        owned.dedup();
        let holds = policies.iter().map(|p| p.holds_body()).max().unwrap_or(0);
        Authentication {
            policies: policies.into(),
            holds,
            owned: owned.into(),
        }
    }
}

/// Count a refusal and note it for the access log.
pub fn refused(cx: &mut Context, policy: &str, reason: &str) {
    METRICS
        .auth_failures
        .with_label_values(&[cx.route_name(), policy, reason])
        .inc();
    cx.notes.push("auth_failed");
}

/// 401 with the policy's challenge, counted.
pub fn unauthorized(cx: &mut Context, policy: &dyn Authenticator, reason: &'static str) -> Reply {
    refused(cx, policy.name(), reason);
    Reply::error(error::UNAUTHORIZED).with(http::header::WWW_AUTHENTICATE, policy.challenge(reason))
}

#[async_trait]
impl Filter for Authentication {
    fn phases(&self) -> Phases {
        match self.holds {
            0 => Phases::REQUEST | Phases::UPSTREAM_REQUEST,
            _ => Phases::REQUEST | Phases::REQUEST_BODY | Phases::UPSTREAM_REQUEST,
        }
    }

    fn holds_body(&self) -> usize {
        self.holds
    }

    async fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        cx: &mut Context,
    ) -> Result<(), Reply> {
        let Some(GrantedBy(i)) = cx.state.get::<GrantedBy>() else {
            return Ok(());
        };
        let policy = Arc::clone(&self.policies[*i]);
        policy.request_body(body, end, cx).await
    }

    async fn request(&self, req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        // The first policy that found no credential, for the 401 or its anonymous consumer.
        let mut missing: Option<&Arc<dyn Authenticator>> = None;
        for (i, policy) in self.policies.iter().enumerate() {
            let Some((auth, found)) = policy.authenticate(req, cx).await else {
                if missing.is_none_or(|m| m.anonymous().is_none() && policy.anonymous().is_some()) {
                    missing = Some(policy);
                }
                continue;
            };
            return match auth {
                Auth::Granted(mut identity) => {
                    identity.authenticated = true;
                    cx.identity = identity;
                    if let Some(found) = found {
                        cx.state.insert(Strip(found));
                    }
                    if policy.holds_body() > 0 {
                        cx.state.insert(GrantedBy(i));
                    }
                    Ok(())
                }
                Auth::Refused(reason) => Err(unauthorized(cx, &**policy, reason)),
                Auth::Forbidden(reason) => {
                    refused(cx, policy.name(), reason);
                    Err(Reply::error(error::FORBIDDEN))
                }
                Auth::Busy => {
                    refused(cx, policy.name(), "busy");
                    Err(Reply::error(error::TOO_MANY_REQUESTS)
                        .with(http::header::RETRY_AFTER, HeaderValue::from_static("1")))
                }
                Auth::Unavailable => {
                    refused(cx, policy.name(), "unavailable");
                    Err(Reply::error(error::UPSTREAM_UNAVAILABLE))
                }
            };
        }
        let Some(policy) = missing else {
            return Ok(());
        };
        match policy.anonymous() {
            Some(c) => {
                cx.identity = Identity {
                    consumer: Some(Arc::clone(c)),
                    authenticated: true,
                    anonymous: true,
                    ..Identity::default()
                };
                Ok(())
            }
            None => Err(unauthorized(cx, &**policy, "missing_credentials")),
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, cx: &mut Context) -> Result<()> {
        // Read, not taken: Pingora builds the upstream request anew for every attempt.
        let strip = match cx.state.get::<Strip>() {
            Some(Strip(Found::Header(name))) => Some(name),
            Some(Strip(Found::Query(name))) => {
                if let Some(query) = req.uri.query() {
                    let kept = strip_query_param(query, name);
                    let uri = match kept.is_empty() {
                        true => req.uri.path().to_string(),
                        false => format!("{}?{kept}", req.uri.path()),
                    };
                    let uri = http::Uri::try_from(uri)
                        .or_err(ErrorType::InternalError, "stripped URI is not valid")?;
                    req.set_uri(uri);
                }
                None
            }
            None => None,
        };
        let claims = cx.identity.claims.as_deref().unwrap_or_default();
        // Straight into the header map: `insert_header` would copy and parse each name again.
        crate::headers::edit_request(req, claims.len(), |h| {
            for name in strip.into_iter().chain(self.owned.iter()) {
                h.remove(name);
            }
            for (name, value) in claims {
                h.try_insert(name.clone(), value.clone())?;
            }
            Ok(())
        })
    }
}

/// `query` without the parameter `name`.
pub fn strip_query_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_stripping() {
        assert_eq!(strip_query_param("a=1&api_key=s&b=2", "api_key"), "a=1&b=2");
        assert_eq!(strip_query_param("api_key=s", "api_key"), "");
        assert_eq!(strip_query_param("api_keyx=1", "api_key"), "api_keyx=1");
    }

    /// An authenticator that finds a credential in `x-<name>`: `ok` grants, anything else
    /// is refused.
    struct Header {
        name: Arc<str>,
        header: HeaderName,
        anonymous: Option<Arc<Consumer>>,
    }

    #[async_trait]
    impl Authenticator for Header {
        fn name(&self) -> &Arc<str> {
            &self.name
        }
        async fn authenticate(
            &self,
            req: &RequestHeader,
            _cx: &mut Context,
        ) -> Option<(Auth, Option<Found>)> {
            let v = req.headers.get(&self.header)?;
            let auth = match v.as_bytes() {
                b"ok" => Auth::consumer(Arc::new(Consumer::new(&self.name, vec![]))),
                _ => Auth::Refused("invalid_credentials"),
            };
            Some((auth, Some(Found::Header(self.header.clone()))))
        }
        fn challenge(&self, _reason: &str) -> HeaderValue {
            HeaderValue::from_static("Test")
        }
        fn anonymous(&self) -> Option<&Arc<Consumer>> {
            self.anonymous.as_ref()
        }
    }

    fn policy(name: &str, anonymous: Option<&str>) -> Arc<dyn Authenticator> {
        Arc::new(Header {
            name: name.into(),
            header: HeaderName::try_from(format!("x-{name}")).unwrap(),
            anonymous: anonymous.map(|a| Arc::new(Consumer::new(a, vec![]))),
        })
    }

    async fn run(auth: &Authentication, headers: &[(&str, &str)]) -> (Result<(), u16>, Context) {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.insert_header(k.to_string(), *v).unwrap();
        }
        let mut cx = Context::default();
        let r = auth.request(&req, &mut cx).await.map_err(|r| r.status);
        (r, cx)
    }

    fn consumer(cx: &Context) -> Option<&str> {
        cx.identity.consumer.as_deref().map(|c| &*c.name)
    }

    #[tokio::test]
    async fn kongs_rule() {
        let auth = Authentication::new(vec![policy("a", None), policy("b", Some("guest"))]);
        // The first policy that finds its credential decides, good or bad.
        let (r, cx) = run(&auth, &[("x-b", "ok"), ("x-a", "bad")]).await;
        assert_eq!(r, Err(401));
        assert_eq!(cx.notes, ["auth_failed"]);
        let (r, cx) = run(&auth, &[("x-b", "ok")]).await;
        assert_eq!((r, consumer(&cx)), (Ok(()), Some("b")));
        assert!(cx.state.get::<Strip>().is_some());
        // No credential at all: the anonymous consumer of the first policy that has one.
        let (r, cx) = run(&auth, &[]).await;
        assert_eq!((r, consumer(&cx)), (Ok(()), Some("guest")));
        assert!(cx.identity.anonymous && cx.identity.counted().is_none());
        // Without any anonymous consumer: 401.
        let strict = Authentication::new(vec![policy("a", None)]);
        assert_eq!(run(&strict, &[]).await.0, Err(401));
    }

    #[tokio::test]
    async fn the_credential_used_is_stripped() {
        let auth = Authentication::new(vec![policy("a", None)]);
        let (_, mut cx) = run(&auth, &[("x-a", "ok")]).await;
        let mut up = RequestHeader::build("GET", b"/x?k=1", None).unwrap();
        up.insert_header("x-a", "ok").unwrap();
        auth.upstream_request(&mut up, &mut cx).unwrap();
        assert!(up.headers.get("x-a").is_none());
        // A retry builds the upstream request again: stripped again.
        let mut retry = RequestHeader::build("GET", b"/x", None).unwrap();
        retry.insert_header("x-a", "ok").unwrap();
        auth.upstream_request(&mut retry, &mut cx).unwrap();
        assert!(retry.headers.get("x-a").is_none());
        cx.state.insert(Strip(Found::Query("k".into())));
        auth.upstream_request(&mut up, &mut cx).unwrap();
        assert_eq!(up.uri, "/x");
    }
}
