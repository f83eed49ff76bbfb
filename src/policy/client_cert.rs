//! `client_cert`: identify the consumer by the client certificate a TLS listener verified.
//!
//! The listener (`[[server.tls]]` with `client_ca`) does the cryptography during the
//! handshake; a connection whose certificate fails verification never carries a request. This
//! policy maps the verified certificate's common name to the consumer whose `client_cert` it
//! is. A name no consumer claims becomes a consumer of that name without groups (as users only
//! an htpasswd file knows do), so limits and logs can still tell clients apart, unless
//! `consumers_only` refuses it. Nothing is stripped: the credential is not in the request.

use super::auth::{Auth, Authenticator, Found};
use super::Kind;
use super::{Compile, Compiled, Source, Spec};
use crate::config::ConfigError;
use crate::consumer::Consumer;
use crate::filter::Context;
use async_trait::async_trait;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "client_cert",
    parse,
};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertConfig {
    /// Refuse (403) a verified certificate whose common name no consumer claims.
    #[serde(default)]
    pub consumers_only: bool,
    /// Consumer for requests on connections without a client certificate.
    pub anonymous: Option<String>,
}

struct ClientCertSpec(ClientCertConfig);

fn parse(src: &mut Source<'_, '_>) -> Result<Arc<dyn Spec>, Vec<ConfigError>> {
    let config: ClientCertConfig = src.settings()?;
    let mut errors = Vec::new();
    src.check_anonymous(&config.anonymous, &mut errors);
    if errors.is_empty() {
        Ok(Arc::new(ClientCertSpec(config)))
    } else {
        Err(errors)
    }
}

impl Spec for ClientCertSpec {
    fn describe(&self) -> serde_json::Value {
        super::describe(&self.0)
    }

    fn compile(&self, cx: &mut Compile<'_, '_>) -> Result<Compiled, String> {
        let mut by_name = HashMap::new();
        for (name, consumer) in &cx.config.consumers {
            if let Some(cn) = &consumer.client_cert {
                by_name.insert(cn.get_ref().clone(), cx.consumer(name)?);
            }
        }
        Ok(Compiled::Auth(Arc::new(ClientCert {
            name: cx.name.into(),
            by_name,
            consumers_only: self.0.consumers_only,
            anonymous: cx.anonymous(&self.0.anonymous)?,
        })))
    }
}

pub struct ClientCert {
    name: Arc<str>,
    /// Consumers by the common name of their certificate.
    by_name: HashMap<String, Arc<Consumer>>,
    consumers_only: bool,
    anonymous: Option<Arc<Consumer>>,
}

#[async_trait]
impl Authenticator for ClientCert {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    async fn authenticate(
        &self,
        _req: &RequestHeader,
        cx: &mut Context,
    ) -> Option<(Auth, Option<Found>)> {
        let cert = cx.client_cert()?;
        let auth = match self.by_name.get(&cert.common_name) {
            Some(consumer) => Auth::consumer(Arc::clone(consumer)),
            None if self.consumers_only || cert.common_name.is_empty() => {
                Auth::Forbidden("unknown_certificate")
            }
            None => Auth::consumer(Arc::new(Consumer::new(&cert.common_name, Vec::new()))),
        };
        Some((auth, None))
    }

    fn challenge(&self, _reason: &str) -> HeaderValue {
        HeaderValue::from_static("ClientCert realm=\"pylon\"")
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }
}
