//! Policies: the per-route chain that runs before a request is proxied.
//!
//! Each `[policies.NAME]` compiles once into a [`Policy`]; a route's [`Chain`] is the global
//! policies followed by its own. Authentication follows Kong's rule: among several auth policies
//! on a route, the first that finds its credential decides; when none finds one, the request is
//! refused with 401 before any non-auth policy runs.

pub mod acl;
pub mod api_key;

use crate::config::{Config, PolicyConfig};
use crate::error::{self, GatewayError};
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;

/// A known client, identified by an auth policy.
pub struct Consumer {
    pub name: Arc<str>,
    /// `name` as the upstream `x-consumer` value, built once.
    pub header: HeaderValue,
    pub groups: Box<[String]>,
}

impl Consumer {
    pub fn new(name: &str, groups: Vec<String>) -> Consumer {
        Consumer {
            name: name.into(),
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("")),
            groups: groups.into(),
        }
    }
}

pub enum Kind {
    ApiKey(api_key::ApiKey),
    Acl(acl::Acl),
}

pub struct Policy {
    pub name: Arc<str>,
    pub kind: Kind,
}

impl Policy {
    fn is_auth(&self) -> bool {
        matches!(self.kind, Kind::ApiKey(_))
    }

    /// `WWW-Authenticate` for a 401 from this policy.
    fn challenge(&self) -> HeaderValue {
        match &self.kind {
            Kind::ApiKey(k) => {
                HeaderValue::from_str(&format!("ApiKey realm=\"pylon\", header=\"{}\"", k.header))
                    .unwrap_or_else(|_| HeaderValue::from_static("ApiKey realm=\"pylon\""))
            }
            Kind::Acl(_) => HeaderValue::from_static("ApiKey realm=\"pylon\""),
        }
    }
}

/// Every policy of a configuration, by name.
pub fn compile(config: &Config) -> Result<HashMap<String, Arc<Policy>>, String> {
    let mut keys = api_key::KeyIndex::default();
    for (name, consumer) in &config.consumers {
        let c = Arc::new(Consumer::new(name, consumer.groups.clone()));
        for key in &consumer.api_keys {
            let secret = key.get_ref().expose();
            if !secret.starts_with("sha256:") {
                log::warn!(
                    "consumer `{name}` has a plain API key in the config; store it as sha256:<hex>"
                );
            }
            keys.insert(api_key::key_digest(secret)?, Arc::clone(&c));
        }
    }
    let keys = Arc::new(keys);
    config
        .policies
        .iter()
        .map(|(name, p)| {
            let kind = match &p.value {
                PolicyConfig::ApiKey(k) => {
                    Kind::ApiKey(api_key::ApiKey::new(k, Arc::clone(&keys))?)
                }
                PolicyConfig::Acl(a) => Kind::Acl(acl::Acl::new(a)),
            };
            Ok((
                name.clone(),
                Arc::new(Policy {
                    name: name.as_str().into(),
                    kind,
                }),
            ))
        })
        .collect()
}

/// What the chain found out about a request.
#[derive(Default)]
pub struct Verdict {
    pub consumer: Option<Arc<Consumer>>,
    /// The credential to strip before proxying, unless the policy forwards it.
    pub strip: Option<api_key::Found>,
}

/// A refusal: the error to send, the policy and reason for metrics and logs.
pub struct Rejection {
    pub error: GatewayError,
    pub challenge: Option<HeaderValue>,
    pub policy: Arc<str>,
    pub reason: &'static str,
}

/// A route's policies, in order.
#[derive(Default)]
pub struct Chain(Box<[Arc<Policy>]>);

impl Chain {
    pub fn new(policies: Vec<Arc<Policy>>) -> Chain {
        Chain(policies.into())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn run(&self, req: &pingora::http::RequestHeader) -> Result<Verdict, Rejection> {
        let mut verdict = Verdict::default();
        let mut missing: Option<&Arc<Policy>> = None;
        let unauthorized = |p: &Arc<Policy>, reason| Rejection {
            error: error::UNAUTHORIZED,
            challenge: Some(p.challenge()),
            policy: Arc::clone(&p.name),
            reason,
        };
        for policy in self.0.iter() {
            if !policy.is_auth() && verdict.consumer.is_none() {
                if let Some(p) = missing {
                    return Err(unauthorized(p, "missing_credentials"));
                }
            }
            match &policy.kind {
                Kind::ApiKey(k) => {
                    if verdict.consumer.is_some() {
                        continue;
                    }
                    let Some((presented, found)) = k.credential(req) else {
                        missing.get_or_insert(policy);
                        continue;
                    };
                    match k.keys.lookup(presented) {
                        Some(c) => {
                            verdict.consumer = Some(Arc::clone(c));
                            verdict.strip = (!k.forward_credentials).then_some(found);
                        }
                        None => return Err(unauthorized(policy, "invalid_credentials")),
                    }
                }
                Kind::Acl(acl) => match &verdict.consumer {
                    None => return Err(unauthorized(policy, "no_consumer")),
                    Some(c) if !acl.permits(c) => {
                        return Err(Rejection {
                            error: error::FORBIDDEN,
                            challenge: None,
                            policy: Arc::clone(&policy.name),
                            reason: "acl_denied",
                        })
                    }
                    Some(_) => {}
                },
            }
        }
        if verdict.consumer.is_none() {
            if let Some(p) = missing {
                return Err(unauthorized(p, "missing_credentials"));
            }
        }
        Ok(verdict)
    }
}
