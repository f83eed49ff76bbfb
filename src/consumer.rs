//! Consumers: the known clients of the API, and who a request turned out to be.

use crate::config::Config;
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;

/// A known client, identified by an auth policy.
pub struct Consumer {
    pub name: Arc<str>,
    /// `name` as the upstream `x-consumer` value, built once.
    pub header: HeaderValue,
    pub groups: Box<[String]>,
    /// Its place among the configuration's `[consumers]`, for lock-free usage counters;
    /// `None` for users only an htpasswd file knows.
    pub index: Option<usize>,
}

impl Consumer {
    pub fn new(name: &str, groups: Vec<String>) -> Consumer {
        Consumer {
            name: name.into(),
            header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("")),
            groups: groups.into(),
            index: None,
        }
    }
}

/// Who a request is, as its authentication established.
#[derive(Clone, Default)]
pub struct Identity {
    /// The consumer, when the credential maps to one (a JWT may authenticate without).
    pub consumer: Option<Arc<Consumer>>,
    /// Headers to send upstream, from JWT claims.
    pub claims: Option<Arc<[(HeaderName, HeaderValue)]>>,
    /// The verified JWT's claims, for `$jwt.<claim>` templates and `{jwt.<claim>}` paths.
    pub jwt: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Some auth policy accepted the request (possibly as its anonymous consumer).
    pub authenticated: bool,
    /// The consumer is an anonymous fallback: no credential was presented.
    pub anonymous: bool,
}

impl Identity {
    pub fn of(consumer: Arc<Consumer>) -> Identity {
        Identity {
            consumer: Some(consumer),
            ..Identity::default()
        }
    }

    /// The consumer limits count by: none for an anonymous fallback, whose requests are
    /// counted by client address rather than as one shared client.
    pub fn counted(&self) -> Option<&Consumer> {
        self.consumer.as_deref().filter(|_| !self.anonymous)
    }
}

/// The consumers of one configuration, by name.
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
}

impl Consumers {
    pub fn compile(config: &Config) -> Consumers {
        let by_name = config
            .consumers
            .iter()
            .enumerate()
            .map(|(i, (name, c))| {
                let mut consumer = Consumer::new(name, c.groups.clone());
                consumer.index = Some(i);
                (name.clone(), Arc::new(consumer))
            })
            .collect();
        Consumers { by_name }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }
}
