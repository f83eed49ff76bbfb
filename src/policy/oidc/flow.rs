//! The login and logout exchanges with the provider: off to its authorization endpoint, its
//! answer at `redirect_path` turned into a session, and the session's end at `logout_path`.

use super::store::Session;
use super::{now, random_token, redirect, seal, Oidc};
use crate::error;
use crate::filter::Reply;
use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;

/// A login under way: what the provider's answer must match.
#[derive(Serialize, Deserialize)]
struct Attempt {
    state: String,
    nonce: String,
    verifier: String,
    return_to: String,
}

impl Oidc {
    /// Off to the provider's login, remembering where the user was going.
    pub(super) async fn login(&self, req: &RequestHeader, tls: bool) -> Reply {
        let Some(discovery) = self.provider.discovery().await else {
            return Reply::error(error::UPSTREAM_UNAVAILABLE);
        };
        let attempt = Attempt {
            state: random_token(),
            nonce: random_token(),
            verifier: random_token(),
            return_to: String::from_utf8_lossy(req.raw_path()).into_owned(),
        };
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(attempt.verifier.as_bytes()));
        let redirect_uri = format!("{}{}", Self::origin(req, tls), self.redirect_path);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &self.scope)
            .append_pair("state", &attempt.state)
            .append_pair("nonce", &attempt.nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!("{}{sep}{query}", discovery.authorization_endpoint);
        let sealed = serde_json::to_vec(&attempt)
            .ok()
            .and_then(|plain| self.sealer.seal(&self.attempt, &plain));
        let Some(sealed) = sealed else {
            return Reply::error(error::UPSTREAM_UNAVAILABLE);
        };
        let cookie = format!(
            "{}={sealed}; {}; Max-Age=600",
            self.attempt,
            self.attributes(tls)
        );
        redirect(
            &location,
            HeaderValue::from_str(&cookie).into_iter().collect(),
        )
    }

    /// The provider's answer: checked, exchanged, turned into a session.
    pub(super) async fn callback(&self, req: &RequestHeader, tls: bool) -> Reply {
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        let name = &self.attempt;
        let attempt: Option<Attempt> = crate::headers::cookie(&req.headers, name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| self.sealer.open(name, v))
            .and_then(|plain| serde_json::from_slice(&plain).ok());
        let (Some(attempt), Some(code), Some(state)) =
            (attempt, query.get("code"), query.get("state"))
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            state.as_bytes(),
            attempt.state.as_bytes(),
        )) {
            return Reply::error(error::UNAUTHORIZED);
        }
        let redirect_uri = format!("{}{}", Self::origin(req, tls), self.redirect_path);
        let Some(tokens) = self
            .provider
            .exchange(code, &redirect_uri, &attempt.verifier)
            .await
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let Some(claims) = self
            .provider
            .verify_id_token(&id_token, Some(&attempt.nonce))
            .await
        else {
            return Reply::error(error::UNAUTHORIZED);
        };
        let now = now();
        let (access_until, refresh_at) = super::lifetime(now, tokens.expires_in);
        let mut session = Session {
            claims: claims.into(),
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            id_token: Some(id_token),
            access_until,
            refresh_at,
            until: now + self.session_ttl.as_secs(),
            id: None,
        };
        let Some(mut cookies) = self.keep(&mut session, tls).await else {
            return Reply::error(error::UPSTREAM_UNAVAILABLE);
        };
        cookies.extend(seal::clear(name, &self.attributes(tls)).into_iter().take(1));
        // Only a path of this site: never an open redirect.
        let back = match attempt.return_to.starts_with('/') && !attempt.return_to.starts_with("//")
        {
            true => attempt.return_to,
            false => "/".to_string(),
        };
        redirect(&back, cookies)
    }

    /// The session ends here, and at the provider when it says how.
    pub(super) async fn logout(&self, req: &RequestHeader, tls: bool) -> Reply {
        let session = self.store.load(&req.headers).await.ok().flatten();
        if let Some(session) = &session {
            self.store.end(session).await;
        }
        let cookies = seal::clear(&self.cookie, &self.attributes(tls));
        // The provider takes only an absolute address (registered with it).
        let after = match self.post_logout_redirect.as_deref().unwrap_or("/") {
            path if path.starts_with('/') => format!("{}{path}", Self::origin(req, tls)),
            url => url.to_string(),
        };
        let end = self
            .provider
            .discovery()
            .await
            .and_then(|d| d.end_session_endpoint.clone());
        let location = match (end, session.and_then(|s| s.id_token.clone())) {
            (Some(end), Some(hint)) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("id_token_hint", &hint)
                    .append_pair("client_id", &self.client_id)
                    .append_pair("post_logout_redirect_uri", &after)
                    .finish();
                format!("{end}?{query}")
            }
            _ => after,
        };
        redirect(&location, cookies)
    }
}
