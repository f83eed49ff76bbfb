//! The admin API, on its own listener (loopback by default).
//!
//! Reads are open to whoever can reach the listener; every call that changes something needs
//! `Authorization: Bearer <admin.token>`, compared in constant time. Without a configured token,
//! changes are refused.

use crate::config::{Config, Secret};
use crate::dashboard::{self, series::Series};
use crate::metrics::METRICS;
use crate::policy::cache::Purge;
use crate::policy::cache::{fanout, LiveCaches};
use crate::policy::upstream_jwt::PublicKey;
use crate::reload::{self, history, history::Trigger};
use crate::runtime::SharedSnapshot;
use crate::split::{self, Split};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub struct Admin {
    snapshot: SharedSnapshot,
    token: Option<Secret>,
    config_path: PathBuf,
    running: Arc<Config>,
    /// Scrapes refresh the target-health gauges in place; one at a time, so none sees them
    /// half refilled.
    scrape: std::sync::Mutex<()>,
    /// Set once every pool finished its first health checks: from then on the process stays
    /// ready, across reloads (a new target waits for its own check instead).
    ready: std::sync::atomic::AtomicBool,
    /// The dashboard's charts.
    series: Arc<Series>,
}

impl Admin {
    pub fn new(
        snapshot: SharedSnapshot,
        token: Option<Secret>,
        config_path: PathBuf,
        running: Config,
        series: Arc<Series>,
    ) -> Self {
        Admin {
            snapshot,
            token,
            config_path,
            running: Arc::new(running),
            scrape: std::sync::Mutex::new(()),
            ready: std::sync::atomic::AtomicBool::new(false),
            series,
        }
    }
}

/// A file of the dashboard, which may load only its own files.
fn ui(file: &str) -> Response<Vec<u8>> {
    let Some((content_type, body)) = dashboard::asset(file) else {
        return error(StatusCode::NOT_FOUND, "route_not_found", "no such file");
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-cache")
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            dashboard::CONTENT_SECURITY_POLICY,
        )
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(body.to_vec())
        .unwrap_or_default()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Vec<u8>> {
    json_response(
        status,
        json!({"error": {"status": status.as_u16(), "code": code, "message": message}}),
    )
}

/// Whether the request carries the admin token.
fn authorized(token: &Secret, session: &ServerSession) -> bool {
    let presented = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    presented.as_bytes().ct_eq(token.expose().as_bytes()).into()
}

impl Admin {
    /// `GET /explain?method=&url=&header=name:value...`: how the running config routes it.
    fn explain(&self, req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
        let (mut method, mut url, mut headers) = (String::from("GET"), None, Vec::new());
        let query = req.uri.query().unwrap_or("").as_bytes();
        for (key, value) in form_urlencoded::parse(query) {
            match &*key {
                "method" => method = value.into_owned(),
                "url" => url = Some(value.into_owned()),
                "header" => headers.push(value.into_owned()),
                _ => {}
            }
        }
        let Some(url) = url else {
            return error(StatusCode::BAD_REQUEST, "bad_request", "`url` is required");
        };
        let snapshot = self.snapshot.load();
        let probe = crate::router::explain::Probe {
            method: &method,
            url: &url,
            headers: &headers,
        };
        match crate::router::explain::explain(&snapshot.router, &snapshot.checked.config, &probe) {
            Ok(answer) => json_response(StatusCode::OK, answer),
            Err(why) => error(StatusCode::BAD_REQUEST, "bad_request", &why),
        }
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Acquire) {
            return json_response(StatusCode::OK, json!({"status": "ready"}));
        }
        let snapshot = self.snapshot.load();
        let waiting: Vec<&str> = snapshot
            .upstreams
            .iter()
            .filter(|(_, u)| !u.checked())
            .map(|(name, _)| name.as_str())
            .collect();
        if waiting.is_empty() {
            self.ready.store(true, Ordering::Release);
            json_response(StatusCode::OK, json!({"status": "ready"}))
        } else {
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "starting", "waiting_for_health_checks": waiting}),
            )
        }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.snapshot.load();
        // Health is read from the live pools at scrape time; pools gone after a reload drop out.
        METRICS.target_healthy.reset();
        METRICS.breaker_state.reset();
        for (name, upstream) in &snapshot.upstreams {
            for target in upstream.targets() {
                let labels = [name.as_str(), &target.label];
                METRICS
                    .target_healthy
                    .with_label_values(&labels)
                    .set(upstream.in_rotation(&target) as i64);
                METRICS
                    .breaker_state
                    .with_label_values(&labels)
                    .set(upstream.breaker_state(&target).gauge());
            }
        }
        let body = METRICS.render();
        drop(_one_at_a_time);
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }

    fn upstreams(&self) -> Response<Vec<u8>> {
        let snapshot = self.snapshot.load();
        let mut out = serde_json::Map::new();
        for (name, upstream) in &snapshot.upstreams {
            let targets: Vec<_> = upstream
                .targets()
                .into_iter()
                .map(|t| {
                    let breaker = upstream.breaker_state(&t);
                    json!({"target": &*t.label, "address": t.addr.to_string(),
                           "source": t.source,
                           "healthy": upstream.in_rotation(&t),
                           "breaker": breaker.as_str(),
                           "ejected": breaker != crate::upstream::breaker::State::Closed,
                           "weight": (upstream.effective_weight(&t) * 100.0).round() / 100.0,
                           "configured_weight": t.weight,
                           "drained": t.state.drained(),
                           "inflight": t.inflight()})
                })
                .collect();
            out.insert(
                name.clone(),
                json!({"health_checked": upstream.checked(),
                       "discovery": upstream.discovered().map(|d| d.kind),
                       "targets": targets}),
            );
        }
        json_response(StatusCode::OK, serde_json::Value::Object(out))
    }

    /// `POST /reload`, or with `?dry_run=1` what it would change, applying nothing.
    async fn reload(&self, req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
        let query = req.uri.query().unwrap_or("").as_bytes();
        let dry_run = form_urlencoded::parse(query)
            .any(|(k, v)| k == "dry_run" && !matches!(&*v, "0" | "false"));
        let (path, snapshot, running) = (
            self.config_path.clone(),
            Arc::clone(&self.snapshot),
            Arc::clone(&self.running),
        );
        let result = tokio::task::spawn_blocking(move || {
            if dry_run {
                reload::dry_run(&path, &snapshot, &running)
            } else {
                reload::reload(&path, &snapshot, &running, Trigger::Admin)
            }
        })
        .await;
        match result {
            Ok(Ok((routes, changes))) => json_response(
                StatusCode::OK,
                json!({"status": if dry_run { "valid" } else { "reloaded" },
                       "dry_run": dry_run, "routes": routes, "changes": changes}),
            ),
            Ok(Err(diagnostics)) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": {"status": 422, "code": "invalid_config",
                       "message": "the configuration was rejected; the running one is kept",
                       "errors": diagnostics.to_string().lines().collect::<Vec<_>>()}}),
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "reload failed",
            ),
        }
    }

    /// `POST /cache/purge`: `{"route": R, "path": "/p?q"}`, `{"prefix": "/p"}` or
    /// `{"tag": T}`, with `"soft": true` to mark the entries stale instead of removing them.
    async fn purge(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let mut asked = match json_body(session).await {
            Ok(asked) => asked,
            Err(refused) => return refused,
        };
        let soft = match asked.as_object_mut().and_then(|o| o.remove("soft")) {
            None => false,
            Some(serde_json::Value::Bool(soft)) => soft,
            Some(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "`soft` is a boolean",
                )
            }
        };
        let Ok(purge) = serde_json::from_value::<Purge>(asked) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected {\"route\", \"path\"}, {\"prefix\"} or {\"tag\"}",
            );
        };
        let live = &*self.snapshot as &dyn LiveCaches;
        let purged = fanout::apply(live, &purge, soft);
        // With a purge channel, every other gateway on it applies the purge too.
        let nodes = live.purge_redis();
        let published = match nodes.is_empty() {
            true => None,
            false => Some(match fanout::publish(&nodes, purge, soft).await {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("cache purges: could not publish: {e}");
                    false
                }
            }),
        };
        json_response(
            StatusCode::OK,
            json!({"purged": purged, "soft": soft, "published": published}),
        )
    }

    /// The running configuration's split of route `name`.
    fn split(&self, name: &str) -> Result<Arc<Split>, &'static str> {
        let snapshot = self.snapshot.load();
        let route = snapshot.router.routes().find(|r| &*r.name == name);
        let route = route.ok_or("no such route")?;
        route.split().cloned().ok_or("this route has no split")
    }

    /// `POST /routes/{name}/split`: `{"weights": {"UPSTREAM": N, ...}}` or
    /// `{"action": "promote" | "pause" | "resume" | "rollback"}`; answers the split as it is
    /// then.
    async fn change_split(&self, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let split = match self.split(name) {
            Ok(split) => split,
            Err(why) => return error(StatusCode::NOT_FOUND, "not_found", why),
        };
        let asked = match json_body(session).await {
            Ok(asked) => asked,
            Err(refused) => return refused,
        };
        let Ok(change) = serde_json::from_value::<split::Change>(asked) else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "expected {\"weights\": {\"UPSTREAM\": N}} or {\"action\": \"promote\" | \"pause\" | \"resume\" | \"rollback\"}",
            );
        };
        match split.act(change) {
            Ok(()) => json_response(StatusCode::OK, split.view()),
            Err(e) => error(StatusCode::BAD_REQUEST, "bad_request", &e),
        }
    }

    fn set_target(&self, upstream: &str, target: &str, enabled: bool) -> Response<Vec<u8>> {
        let snapshot = self.snapshot.load();
        let Some(pool) = snapshot.upstreams.get(upstream) else {
            return error(StatusCode::NOT_FOUND, "not_found", "no such upstream");
        };
        if pool.set_enabled(target, enabled) {
            json_response(
                StatusCode::OK,
                json!({"upstream": upstream, "target": target, "enabled": enabled}),
            )
        } else {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such target in this upstream",
            )
        }
    }
}

/// A request's JSON body, of 64 KiB at most (anything else reads as `null`).
async fn json_body(session: &mut ServerSession) -> Result<serde_json::Value, Response<Vec<u8>>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "too large",
            ));
        }
    }
    Ok(serde_json::from_slice(&body).unwrap_or_default())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mutating = method == http::Method::POST;
        if mutating {
            match &self.token {
                None => {
                    return error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "changes need admin.token in the configuration",
                    )
                }
                Some(token) if !authorized(token, session) => {
                    let mut r = error(
                        StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        "a valid admin token is required",
                    );
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        http::HeaderValue::from_static("Bearer realm=\"pylon-admin\""),
                    );
                    return r;
                }
                Some(_) => {}
            }
        }
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["healthz"]) => json_response(StatusCode::OK, json!({"status": "ok"})),
            ("GET", ["readyz"]) => self.readyz(),
            ("GET", ["metrics"]) => self.metrics(),
            ("GET", ["upstreams"]) => self.upstreams(),
            ("GET", ["config"]) => match serde_json::to_value(&self.snapshot.load().checked) {
                Ok(config) => json_response(StatusCode::OK, config),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "cannot render the configuration",
                ),
            },
            ("GET", ["jwks"]) => {
                let snapshot = self.snapshot.load();
                let keys: Vec<_> = snapshot
                    .carried
                    .all::<PublicKey>()
                    .map(|k| k.0.clone())
                    .collect();
                json_response(StatusCode::OK, json!({ "keys": keys }))
            }
            ("GET", ["explain"]) => self.explain(session.req_header()),
            ("POST", ["reload"]) => self.reload(session.req_header()).await,
            ("GET", ["ui", ..]) => ui(path.trim_start_matches("/ui").trim_start_matches('/')),
            ("GET", ["stats"]) => json_response(
                StatusCode::OK,
                dashboard::stats(&self.series, &self.snapshot.load()),
            ),
            ("GET", ["reloads"]) => {
                json_response(StatusCode::OK, json!({ "reloads": history::recent() }))
            }
            ("POST", ["cache", "purge"]) => self.purge(session).await,
            ("GET", ["routes", name, "split"]) => match self.split(name) {
                Ok(split) => json_response(StatusCode::OK, split.view()),
                Err(why) => error(StatusCode::NOT_FOUND, "not_found", why),
            },
            ("POST", ["routes", name, "split"]) => self.change_split(name, session).await,
            ("POST", ["upstreams", name, "targets", target, "drain"]) => {
                self.set_target(name, target, false)
            }
            ("POST", ["upstreams", name, "targets", target, "enable"]) => {
                self.set_target(name, target, true)
            }
            (
                _,
                ["healthz" | "readyz" | "metrics" | "upstreams" | "reload" | "reloads" | "config"
                | "jwks" | "explain" | "stats" | "ui"],
            )
            | (_, ["cache", "purge"])
            | (_, ["routes", _, "split"]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "no such admin endpoint",
            ),
        }
    }
}
