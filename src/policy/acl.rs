//! `acl`: allow or deny consumer groups on a route.

use super::auth::refused;
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::consumer::Consumer;
use crate::error;
use crate::filter::{Context, Filter, Phases, Reply};
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const KIND: Kind = Kind { name: "acl", parse };

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Consumer groups allowed; everyone else is forbidden.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Consumer groups forbidden; everyone else is allowed.
    #[serde(default)]
    pub deny: Vec<String>,
}

struct AclSpec(AclConfig);

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: AclConfig = src.settings()?;
    if config.allow.is_empty() == config.deny.is_empty() {
        return Err(vec![src
            .place
            .error("an acl needs exactly one of `allow` or `deny`")]);
    }
    Ok(Arc::new(AclSpec(config)))
}

impl Spec for AclSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.0)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        Ok(Compiled::Filter(Arc::new(Acl::new(cx.name, &self.0))))
    }
}

pub struct Acl {
    name: Arc<str>,
    allow: Box<[String]>,
    deny: Box<[String]>,
}

impl Acl {
    pub fn new(name: &str, config: &AclConfig) -> Acl {
        Acl {
            name: name.into(),
            allow: config.allow.iter().cloned().collect(),
            deny: config.deny.iter().cloned().collect(),
        }
    }

    /// Whether this consumer may pass.
    pub fn permits(&self, consumer: &Consumer) -> bool {
        let member = |list: &[String]| consumer.groups.iter().any(|g| list.contains(g));
        if !self.allow.is_empty() {
            member(&self.allow)
        } else {
            !member(&self.deny)
        }
    }

    fn forbidden(&self, cx: &mut Context, reason: &str) -> Reply {
        refused(cx, &self.name, reason);
        Reply::error(error::FORBIDDEN)
    }
}

#[async_trait]
impl Filter for Acl {
    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request(&self, _req: &RequestHeader, cx: &mut Context) -> Result<(), Reply> {
        match &cx.identity.consumer {
            Some(c) if self.permits(c) => Ok(()),
            Some(_) => Err(self.forbidden(cx, "acl_denied")),
            None if cx.identity.authenticated => Err(self.forbidden(cx, "no_consumer")),
            None => {
                refused(cx, &self.name, "no_consumer");
                Err(Reply::error(error::UNAUTHORIZED).with(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pylon\""),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(groups: &[&str]) -> Consumer {
        Consumer::new("c", groups.iter().map(|g| g.to_string()).collect())
    }

    #[test]
    fn allow_and_deny() {
        let allow = Acl::new(
            "a",
            &AclConfig {
                allow: vec!["gold".into()],
                deny: vec![],
            },
        );
        assert!(allow.permits(&consumer(&["silver", "gold"])));
        assert!(!allow.permits(&consumer(&["silver"])));
        let deny = Acl::new(
            "d",
            &AclConfig {
                allow: vec![],
                deny: vec!["banned".into()],
            },
        );
        assert!(deny.permits(&consumer(&["gold"])));
        assert!(!deny.permits(&consumer(&["banned"])));
    }

    #[tokio::test]
    async fn without_a_consumer() {
        let acl = Acl::new(
            "a",
            &AclConfig {
                allow: vec!["gold".into()],
                deny: vec![],
            },
        );
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut cx = Context::default();
        assert_eq!(acl.request(&req, &mut cx).await.unwrap_err().status, 401);
        cx.identity.authenticated = true;
        assert_eq!(acl.request(&req, &mut cx).await.unwrap_err().status, 403);
    }
}
