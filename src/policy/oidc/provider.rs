//! The OpenID provider as the relying party sees it: its discovery document, its signing keys,
//! and the token endpoint calls (code exchange, refresh).
//!
//! Discovery (`ISSUER/.well-known/openid-configuration`) and the JWKS are fetched on first use
//! and kept; a token whose `kid` the set does not know refetches the set, at most once a minute.
//!
//! A refresh token is used once, however many requests find its session due at once: the
//! first asks, the others wait for its answer, and the answer is remembered for a minute for
//! the requests still carrying the old cookie. (A provider that rotates refresh tokens takes
//! a second use of one as theft and revokes the session.)

use super::super::introspection::{post_form, Answers};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub end_session_endpoint: Option<String>,
    pub introspection_endpoint: Option<String>,
}

/// What the token endpoint answers.
#[derive(Clone, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

pub struct Provider {
    issuer: String,
    client_id: String,
    client_secret: String,
    http: reqwest::Client,
    discovery: OnceCell<Discovery>,
    keys: Mutex<(Option<JwkSet>, Option<Instant>)>,
    /// Refreshes by the digest of their refresh token: under way, or answered lately.
    refreshes: Mutex<HashMap<[u8; 32], (Instant, Refresh)>>,
    /// What the introspection endpoint said of bearer tokens (`bearer = true`).
    pub answers: Arc<Answers>,
}

type Refresh = Arc<OnceCell<Option<Tokens>>>;

/// How long a refresh's answer is kept for the requests that still carry the old token.
const REMEMBER: Duration = Duration::from_secs(60);
/// How long a failed refresh is its answer (a revoked refresh token is not asked again and
/// again by every request with its cookie).
const FAILED: Duration = Duration::from_secs(5);

impl Provider {
    pub fn new(
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        timeout: Duration,
    ) -> Result<Provider, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Provider {
            issuer: issuer.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            http,
            discovery: OnceCell::new(),
            keys: Mutex::new((None, None)),
            refreshes: Mutex::default(),
            answers: Arc::new(Answers::new(100_000)),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Option<T> {
        let answer = self.http.get(url).send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        serde_json::from_slice(&answer.bytes().await.ok()?).ok()
    }

    /// The discovery document, fetched once (again after a failure).
    pub async fn discovery(&self) -> Option<&Discovery> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let found: Discovery = self.get_json(&url).await.ok_or(())?;
                // The document must be the issuer's own (OpenID Connect Discovery §4.3).
                match found.issuer.trim_end_matches('/') == self.issuer {
                    true => Ok(found),
                    false => Err(()),
                }
            })
            .await
            .ok()
    }

    /// The key that signed a token with `kid`, refetching the set once a minute at most.
    async fn key(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let find = |set: &JwkSet| {
            let jwk = match kid {
                Some(kid) => set.find(kid)?,
                None => set.keys.first()?,
            };
            DecodingKey::from_jwk(jwk).ok()
        };
        let stale = {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(key) = keys.0.as_ref().and_then(find) {
                return Some(key);
            }
            keys.1
                .is_none_or(|at| at.elapsed() > Duration::from_secs(60))
        };
        if !stale {
            return None;
        }
        let url = self.discovery().await?.jwks_uri.clone();
        let set: JwkSet = self.get_json(&url).await?;
        let key = find(&set);
        *self.keys.lock().unwrap_or_else(|e| e.into_inner()) = (Some(set), Some(Instant::now()));
        key
    }

    /// An ID token's claims, once its signature, issuer, audience (the client), expiry and
    /// `nonce` hold.
    pub async fn verify_id_token(
        &self,
        token: &str,
        nonce: Option<&str>,
    ) -> Option<Map<String, Value>> {
        let claims = self
            .verify(token, std::slice::from_ref(&self.client_id))
            .await?;
        if let Some(nonce) = nonce {
            if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
                return None;
            }
        }
        Some(claims)
    }

    /// A JWT's claims, once its signature by one of the provider's keys, its issuer, expiry
    /// and audience (one of `audience`, unless empty) hold.
    pub async fn verify(&self, token: &str, audience: &[String]) -> Option<Map<String, Value>> {
        let header = decode_header(token).ok()?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::PS256
                | Algorithm::EdDSA
        ) {
            return None;
        }
        let key = self.key(header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.discovery().await?.issuer]);
        match audience.is_empty() {
            false => validation.set_audience(audience),
            true => validation.validate_aud = false,
        }
        validation.leeway = 30;
        decode::<Map<String, Value>>(token, &key, &validation)
            .ok()
            .map(|t| t.claims)
    }

    /// A call to the token endpoint with the client's credentials (`client_secret_basic`).
    async fn token_call(&self, form: &[(&str, &str)]) -> Option<Tokens> {
        let endpoint = self.discovery().await?.token_endpoint.clone();
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let id: String = form_urlencoded::byte_serialize(self.client_id.as_bytes()).collect();
        let secret: String =
            form_urlencoded::byte_serialize(self.client_secret.as_bytes()).collect();
        let request = self.http.post(endpoint).basic_auth(id, Some(secret));
        post_form(request, body, "oidc").await
    }

    /// Exchange an authorization code (with its PKCE verifier).
    pub async fn exchange(&self, code: &str, redirect_uri: &str, verifier: &str) -> Option<Tokens> {
        self.token_call(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ])
        .await
    }

    /// New tokens for a refresh token: asked once, the answer shared by every request that
    /// asks with the same token within a minute.
    pub async fn refresh(&self, refresh_token: &str) -> Option<Tokens> {
        let key: [u8; 32] = sha2::Sha256::digest(refresh_token.as_bytes()).into();
        let flight = {
            let mut refreshes = self.refreshes.lock().unwrap_or_else(|e| e.into_inner());
            // A failure is kept a few seconds only: the provider may be back.
            refreshes.retain(|_, (at, f)| match f.get() {
                Some(None) => at.elapsed() < FAILED,
                _ => at.elapsed() < REMEMBER,
            });
            Arc::clone(
                &refreshes
                    .entry(key)
                    .or_insert_with(|| (Instant::now(), Refresh::default()))
                    .1,
            )
        };
        let tokens = flight
            .get_or_init(|| async {
                self.token_call(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token),
                ])
                .await
            })
            .await
            .clone();
        tokens
    }

    /// The client's credentials, for the provider's introspection endpoint.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.client_id, &self.client_secret)
    }
}
