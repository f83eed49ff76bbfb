//! Policies: each `[policies.NAME]` is one kind, and each kind is one module here.
//!
//! A kind owns three steps, in its own file:
//! 1. **parse**: its settings from the TOML table, and every check of them, once, while the
//!    configuration is loaded ([`crate::load`], so `pylon -t` reports them with their
//!    position). What can be prepared is prepared here (PEM keys, key specs), so nothing is
//!    parsed twice.
//! 2. **compile**: the [`Spec`] it parsed into becomes the runtime policy of one configuration,
//!    taking state that outlives a reload from the [`Keeper`].
//! 3. **run**: the result is a [`Filter`], or an [`auth::Authenticator`] that the route's
//!    authentication filter runs by Kong's rule (see [`auth`]).
//!
//! [`registry::KINDS`] maps `kind = "..."` to the parse step. Adding a kind is one module, one
//! line there and its tests.

pub mod acl;
pub mod api_key;
pub mod auth;
pub mod basic_auth;
pub mod cache;
pub mod client_cert;
pub mod compression;
pub mod concurrency;
pub mod cors;
pub mod ext_authz;
pub mod grpc_transcode;
pub mod grpc_web;
pub mod hmac_auth;
pub mod introspection;
pub mod ip_filter;
pub mod jwt;
pub mod limit_key;
pub mod oidc;
pub mod rate_limit;
pub mod registry;
pub mod request_limits;
pub mod security_headers;
pub mod transform;
pub mod upstream_jwt;
pub mod verified;
pub mod waf;

use crate::config::{Config, ConfigError, ConsumerConfig, Located};
use crate::consumer::{Consumer, Consumers};
use crate::filter::{Chain, Filter, Stage};
use crate::state::Keeper;
use crate::upstream::Upstream;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use toml::de::{DeValue, ValueDeserializer};
use toml::Spanned;

/// A policy's settings, parsed and checked: compiling it cannot fail on what was written.
pub trait Spec: Send + Sync {
    /// The settings as written, for `GET /config`; secrets come out redacted.
    fn describe(&self) -> serde_json::Value;

    /// Build the policy for one configuration. Errors are of the environment (a file that
    /// went away between parse and compile), not of the settings.
    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String>;
}

/// A kind's parse step: its table (without `kind`) to checked settings, or every error.
pub type Parse = fn(&mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>>;

/// A policy kind: its name in the config and its parse step ([`registry::KINDS`] lists them).
pub struct Kind {
    pub name: &'static str,
    pub parse: Parse,
}

/// One `[policies.NAME]`: its kind, and its settings as that kind parsed and checked them.
#[derive(Clone)]
pub struct Policy {
    pub kind: &'static str,
    pub spec: Arc<dyn Spec>,
}

/// The policies of one configuration, by name.
pub type Policies = BTreeMap<String, Located<Policy>>;

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.kind, self.spec)
    }
}

/// As `GET /config` shows it: the settings as written (secrets redacted), with the kind.
impl serde::Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut settings = match self.spec.describe() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        settings.insert("kind".into(), self.kind.into());
        settings.serialize(serializer)
    }
}

/// A kind's settings struct as `GET /config` shows it.
pub fn describe<T: serde::Serialize>(settings: &T) -> serde_json::Value {
    serde_json::to_value(settings).unwrap_or_default()
}

impl fmt::Debug for dyn Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

/// What a policy compiles into.
pub enum Compiled {
    Filter(Arc<dyn Filter>),
    /// Authentication runs as one filter per route, over all its auth policies.
    Auth(Arc<dyn auth::Authenticator>),
}

/// Where a policy is written, for its errors.
#[derive(Clone)]
pub struct Place {
    pub name: String,
    pub span: Range<usize>,
}

impl Place {
    pub fn error(&self, message: impl fmt::Display) -> ConfigError {
        ConfigError::at(
            self.span.clone(),
            format!("policy `{}`: {message}", self.name),
        )
    }
}

/// One `[policies.NAME]` table being parsed, without its `kind`.
pub struct Source<'a, 'i> {
    pub place: Place,
    value: Option<Spanned<DeValue<'i>>>,
    /// The consumers of the file, for checks that name them.
    pub consumers: &'a BTreeMap<String, Located<ConsumerConfig>>,
}

impl<'a, 'i> Source<'a, 'i> {
    pub fn new(
        place: Place,
        value: Spanned<DeValue<'i>>,
        consumers: &'a BTreeMap<String, Located<ConsumerConfig>>,
    ) -> Self {
        Source {
            place,
            value: Some(value),
            consumers,
        }
    }

    /// The kind's settings struct, with serde's error at its position.
    pub fn settings<T: DeserializeOwned>(&mut self) -> Result<T, Vec<ConfigError>> {
        let value = self
            .value
            .take()
            .ok_or_else(|| vec![self.place.error("settings read twice")])?;
        T::deserialize(ValueDeserializer::from(value)).map_err(|e| {
            vec![ConfigError {
                span: Some(e.span().unwrap_or_else(|| self.place.span.clone())),
                message: e.message().to_string(),
            }]
        })
    }

    /// Check that an auth policy's `anonymous` consumer exists.
    pub fn check_anonymous(&self, anonymous: &Option<String>, errors: &mut Vec<ConfigError>) {
        if let Some(a) = anonymous {
            if !self.consumers.contains_key(a) {
                errors.push(
                    self.place
                        .error(format!("anonymous consumer `{a}` is not defined")),
                );
            }
        }
    }
}

/// What compiling a policy may use.
pub struct Compile<'k, 'p> {
    pub name: &'k str,
    pub config: &'k Config,
    pub consumers: &'k Consumers,
    /// The pools, for a policy that calls one (`ext_authz`).
    pub upstreams: &'k HashMap<String, Arc<Upstream>>,
    pub keeper: &'k mut Keeper<'p>,
}

impl Compile<'_, '_> {
    /// The consumer a name refers to (checked at parse).
    pub fn consumer(&self, name: &str) -> Result<Arc<Consumer>, String> {
        self.consumers
            .get(name)
            .cloned()
            .ok_or_else(|| format!("consumer `{name}` is not defined"))
    }

    /// Every consumer by its name and by its `jwt_subject`: who a token's subject is.
    pub fn consumers_by_subject(&self) -> Result<HashMap<String, Arc<Consumer>>, String> {
        let mut by = HashMap::new();
        for (name, consumer) in &self.config.consumers {
            let known = self.consumer(name)?;
            by.insert(name.clone(), Arc::clone(&known));
            if let Some(subject) = &consumer.jwt_subject {
                by.insert(subject.get_ref().clone(), known);
            }
        }
        Ok(by)
    }

    /// An auth policy's `anonymous` consumer, when it names one.
    pub fn anonymous(&self, name: &Option<String>) -> Result<Option<Arc<Consumer>>, String> {
        name.as_deref().map(|n| self.consumer(n)).transpose()
    }
}

/// Compile every policy of a configuration, keeping state through `keeper`.
pub fn compile(
    policies: &Policies,
    config: &Config,
    consumers: &Consumers,
    upstreams: &HashMap<String, Arc<Upstream>>,
    keeper: &mut Keeper<'_>,
) -> Result<HashMap<String, Compiled>, Vec<ConfigError>> {
    let mut compiled = HashMap::new();
    let mut errors = Vec::new();
    for (name, p) in policies {
        let mut cx = Compile {
            name,
            config,
            consumers,
            upstreams,
            keeper,
        };
        match p.spec.compile(&mut cx) {
            Ok(c) => {
                compiled.insert(name.clone(), c);
            }
            Err(e) => errors.push(ConfigError::at(
                p.span.clone(),
                format!("policy `{name}`: {e}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

/// A route's chain from its policies in order (global ones first). Its auth policies become
/// one authentication filter at the front, wherever they were listed: limits and ACLs need to
/// know the consumer. Filters place themselves by [`Filter::stage`]: CORS goes ahead of
/// authentication (a preflight has no credentials), compression after everything else.
pub fn chain(policies: &[&Compiled]) -> Chain {
    let authenticators: Vec<_> = policies
        .iter()
        .filter_map(|p| match p {
            Compiled::Auth(a) => Some(Arc::clone(a)),
            Compiled::Filter(_) => None,
        })
        .collect();
    let mut filters: Vec<Arc<dyn Filter>> = policies
        .iter()
        .filter_map(|p| match p {
            Compiled::Filter(f) => Some(Arc::clone(f)),
            Compiled::Auth(_) => None,
        })
        .collect();
    // Stable: the listed order holds within each stage.
    filters.sort_by_key(|f| f.stage());
    if !authenticators.is_empty() {
        let at = filters.partition_point(|f| f.stage() == Stage::BeforeAuth);
        filters.insert(at, Arc::new(auth::Authentication::new(authenticators)));
    }
    Chain::new(&filters)
}
