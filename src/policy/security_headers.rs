//! `security_headers`: the browser-facing safety headers on every response of its routes, the
//! gateway's own (401, 429, 404 as a global policy) as much as proxied ones, and upstream
//! headers that give away too much (`server`, `x-powered-by`) removed.

use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::filter::{Context, Filter, Phases};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "security_headers",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// `Strict-Transport-Security`, e.g. `"max-age=31536000; includeSubDomains"`.
    pub hsts: Option<String>,
    /// `X-Content-Type-Options: nosniff`.
    #[serde(default)]
    pub content_type_options: bool,
    /// `X-Frame-Options`: `DENY` or `SAMEORIGIN`.
    pub frame_options: Option<String>,
    /// `Referrer-Policy`, e.g. `"no-referrer"`.
    pub referrer_policy: Option<String>,
    /// `Content-Security-Policy`.
    pub content_security_policy: Option<String>,
    /// Response headers to drop.
    #[serde(default)]
    pub remove: Vec<String>,
}

struct SecurityHeadersSpec {
    config: SecurityHeadersConfig,
    filter: Arc<SecurityHeaders>,
}

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: SecurityHeadersConfig = src.settings()?;
    let mut errors = Vec::new();
    let mut set = Vec::new();
    let fixed = [
        ("strict-transport-security", &config.hsts),
        ("x-frame-options", &config.frame_options),
        ("referrer-policy", &config.referrer_policy),
        ("content-security-policy", &config.content_security_policy),
    ];
    for (name, value) in fixed {
        let Some(value) = value else { continue };
        match HeaderValue::from_str(value) {
            Ok(v) => set.push((HeaderName::from_static(name), v)),
            Err(_) => errors.push(
                src.place
                    .error(format!("{value:?} cannot be the value of `{name}`")),
            ),
        }
    }
    if let Some(frame) = &config.frame_options {
        if !["DENY", "SAMEORIGIN"].contains(&frame.to_ascii_uppercase().as_str()) {
            errors.push(src.place.error(format!(
                "`frame_options` must be \"DENY\" or \"SAMEORIGIN\", not {frame:?}"
            )));
        }
    }
    if config.content_type_options {
        set.push((
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ));
    }
    let mut remove = Vec::new();
    for name in &config.remove {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => remove.push(n),
            Err(_) => errors.push(
                src.place
                    .error(format!("invalid header name {name:?} in `remove`")),
            ),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let filter = Arc::new(SecurityHeaders {
        set: set.into(),
        remove: remove.into(),
    });
    Ok(Arc::new(SecurityHeadersSpec { config, filter }))
}

impl Spec for SecurityHeadersSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.config)
    }

    fn compile(&self, _cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        // Nothing here depends on the rest of the configuration: every compile shares it.
        Ok(Compiled::Filter(self.filter.clone()))
    }
}

pub struct SecurityHeaders {
    set: Box<[(HeaderName, HeaderValue)]>,
    remove: Box<[HeaderName]>,
}

#[async_trait]
impl Filter for SecurityHeaders {
    fn phases(&self) -> Phases {
        Phases::RESPONSE
    }

    fn response(
        &self,
        _req: &RequestHeader,
        resp: &mut ResponseHeader,
        _cx: &mut Context,
    ) -> pingora::Result<()> {
        crate::headers::edit_response(resp, self.set.len(), |h| {
            for name in self.remove.iter() {
                h.remove(name);
            }
            for (name, value) in self.set.iter() {
                h.try_insert(name.clone(), value.clone())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_removes() {
        let f = SecurityHeaders {
            set: vec![(
                HeaderName::from_static("strict-transport-security"),
                HeaderValue::from_static("max-age=60"),
            )]
            .into(),
            remove: vec![HeaderName::from_static("server")].into(),
        };
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "secret/1.2").unwrap();
        resp.insert_header("strict-transport-security", "max-age=1")
            .unwrap();
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        f.response(&req, &mut resp, &mut Context::default())
            .unwrap();
        assert!(resp.headers.get("server").is_none());
        let hsts: Vec<_> = resp
            .headers
            .get_all("strict-transport-security")
            .iter()
            .collect();
        assert_eq!(hsts, ["max-age=60"], "replaced, not duplicated");
    }
}
