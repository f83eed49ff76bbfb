//! `bearer = true`: API clients of an `oidc` route may bring one of the provider's access
//! tokens instead of a session. A JWT is checked against the provider's keys (issuer, expiry);
//! any other token at the provider's introspection endpoint (from its discovery document), as
//! `oauth2_introspection` does, answers remembered. Either must name one of `bearer_audience`, if set.

use super::{Granted, Oidc};
use crate::error;
use crate::filter::{Context, Reply};
use crate::policy::auth::{refused, Auth};
use crate::policy::introspection::{AtProvider, Introspection};
use http::HeaderValue;

impl Oidc {
    /// Grant the request the identity `token` proves, or answer it.
    pub(super) async fn bearer(&self, token: &str, cx: &mut Context) -> Result<(), Reply> {
        let auth = match token.split('.').count() {
            3 => match self.provider.verify(token, &self.bearer_audience).await {
                Some(claims) => self
                    .identity(&claims.into())
                    .map_or(Auth::Refused("no_consumer"), Auth::Granted),
                None => Auth::Refused("invalid_token"),
            },
            _ => match self.introspection().await {
                Some(introspection) => introspection.check(token.as_bytes()).await,
                None => Auth::Unavailable,
            },
        };
        let why = match auth {
            Auth::Granted(mut identity) => {
                identity.authenticated = true;
                cx.identity = identity;
                cx.state.insert(Granted {
                    bearer: Some(token.to_string()),
                    ..Granted::default()
                });
                return Ok(());
            }
            Auth::Refused(why) => why,
            Auth::Forbidden(why) => {
                refused(cx, "oidc", why);
                return Err(Reply::error(error::FORBIDDEN));
            }
            Auth::Busy | Auth::Unavailable => {
                return Err(Reply::error(error::UPSTREAM_UNAVAILABLE))
            }
        };
        refused(cx, "oidc", why);
        Err(Reply::error(error::UNAUTHORIZED).with(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pylon\", error=\"invalid_token\""),
        ))
    }

    /// The provider's introspection endpoint, set up once discovery names it.
    async fn introspection(&self) -> Option<&Introspection> {
        self.introspection
            .get_or_try_init(|| async {
                let discovery = self.provider.discovery().await.ok_or(())?;
                let endpoint = discovery.introspection_endpoint.as_deref().ok_or(())?;
                let (client_id, client_secret) = self.provider.credentials();
                Ok::<_, ()>(Introspection::at_provider(AtProvider {
                    name: &self.name,
                    endpoint,
                    issuer: &discovery.issuer,
                    client_id,
                    client_secret,
                    consumer_claim: &self.consumer_claim,
                    audience: self.bearer_audience.clone(),
                    headers: self.headers.clone(),
                    consumers: self.consumers.clone(),
                    answers: self.provider.answers.clone(),
                    timeout: self.timeout,
                }))
            })
            .await
            .ok()
    }
}
