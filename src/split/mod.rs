//! A route's `split`: weighted backends, each an upstream with its own health checks,
//! breakers, retry budget and slow start.
//!
//! A request goes, in this order, to the first backend whose `match` it has; else to the
//! backend its stickiness names (a cookie the gateway set, or a hash of a header or the
//! consumer over the weights now); else to the next of the weighted cycle (smooth weighted
//! round robin, `sequence.rs`: exact proportions, no random draws). A backend that cannot take
//! a request (no target in rotation, every breaker open) is passed over at each step, so its
//! share goes to the others. A backend at weight 0 gets no new clients; its sticky ones move
//! too unless `drain_sticky = false` (the default moves them: weight 0 is how a canary is
//! rolled back, and its users should not stay on it).
//!
//! A canary backend (`canary.rs`) ramps and rolls back by itself, judged once a second by the
//! controller (`controller.rs`). The weights now, the counts and the canary's state are
//! carried across reloads that leave the split unchanged (`weights.rs`).

mod canary;
pub mod controller;
mod matcher;
mod sequence;
mod weights;

use crate::config::RouteConfig;
use crate::consumer::Identity;
use crate::metrics::METRICS;
use crate::state::Keeper;
use crate::upstream::{window, Upstream};
use canary::{Canary, CanaryState, Event, Phase, Verdict};
use http::{HeaderName, HeaderValue};
use matcher::Match;
use pingora::http::RequestHeader;
use prometheus::{IntCounter, IntGauge};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use weights::SplitState;

/// A split has at most this many backends (the pick's memo is a bitmask).
const MAX_BACKENDS: usize = 64;

struct Backend {
    upstream: Arc<Upstream>,
    matches: Option<Match>,
    configured: u32,
    /// Its sticky cookie's value: a stable hash of route and upstream, naming no upstream.
    token: String,
    requests: IntCounter,
    weight: IntGauge,
    steps: IntCounter,
    rollbacks: IntCounter,
}

enum Sticky {
    Cookie(String),
    Header(HeaderName),
    Consumer,
}

pub struct Split {
    route: Arc<str>,
    backends: Box<[Backend]>,
    sticky: Option<Sticky>,
    /// The sticky cookie's `Max-Age`, in seconds.
    max_age: u64,
    drain_sticky: bool,
    canary: Option<Canary>,
    state: Arc<SplitState>,
}

/// Where a request goes.
pub struct Pick {
    pub backend: usize,
    /// A sticky cookie to set on the answer (the client had none, or one for a backend it may
    /// no longer use).
    pub set_cookie: Option<HeaderValue>,
}

/// A stable 64-bit hash: the same in every process and release, so stickiness survives
/// restarts and upgrades.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x70796c6f6e, 0x73706c6974);
    for part in parts {
        h.write(part);
        h.write_u8(0);
    }
    h.finish()
}

/// Check a route's `split` and `sticky` (the loader's cross-section checks).
pub fn check(route: &RouteConfig) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(split) = &route.split else {
        if route.sticky.is_some() {
            errors.push("`sticky` needs a `split`".to_string());
        }
        return errors;
    };
    let backends = split.get_ref();
    if backends.is_empty() || backends.len() > MAX_BACKENDS {
        errors.push(format!("`split` takes 1 to {MAX_BACKENDS} backends"));
    }
    let mut seen = std::collections::HashSet::new();
    for b in backends {
        if !seen.insert(b.upstream.get_ref()) {
            errors.push(format!(
                "`split` names upstream `{}` twice",
                b.upstream.get_ref()
            ));
        }
        if b.weight > 10_000 {
            errors.push(format!("`split` weight {} is over 10000", b.weight));
        }
    }
    let total: u32 = backends.iter().map(|b| b.weight.min(10_000)).sum();
    let canaries: Vec<_> = backends.iter().filter_map(|b| b.canary.as_ref()).collect();
    if canaries.len() > 1 {
        errors.push("a `split` takes at most one canary".to_string());
    }
    for c in canaries {
        let c = c.get_ref();
        if c.max_weight > total || c.step == 0 {
            errors.push(format!(
                "canary: `max_weight` must be at most the split's total weight ({total}), and `step` above 0"
            ));
        }
        if !(0.0..=1.0).contains(&c.max_error_rate) {
            errors.push("canary: `max_error_rate` is a share, from 0 to 1".to_string());
        }
        if c.window.0 < Duration::from_secs(1) || c.every.0 < Duration::from_secs(1) {
            errors.push("canary: `window` and `every` are at least 1s".to_string());
        }
    }
    if let Some(sticky) = &route.sticky {
        if let Err(e) = parse_sticky(sticky.get_ref()) {
            errors.push(e);
        }
    }
    errors
}

fn parse_sticky(text: &str) -> Result<Sticky, String> {
    let bad = || {
        format!("`sticky = {text:?}`: expected \"cookie:NAME\", \"header:NAME\" or \"consumer\"")
    };
    if text == "consumer" {
        return Ok(Sticky::Consumer);
    }
    if let Some(name) = text.strip_prefix("cookie:") {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        return token
            .then(|| Sticky::Cookie(name.to_string()))
            .ok_or_else(bad);
    }
    if let Some(name) = text.strip_prefix("header:") {
        return HeaderName::try_from(name)
            .map(Sticky::Header)
            .map_err(|_| bad());
    }
    Err(bad())
}

impl Split {
    pub fn compile(
        route: &str,
        config: &RouteConfig,
        upstreams: &HashMap<String, Arc<Upstream>>,
        keeper: &mut Keeper<'_>,
    ) -> Result<Split, String> {
        let Some(split) = &config.split else {
            return Err("no split".into());
        };
        let mut backends = Vec::new();
        let mut canary = None;
        for (i, b) in split.get_ref().iter().enumerate() {
            let name = b.upstream.get_ref();
            let upstream = upstreams
                .get(name)
                .cloned()
                .ok_or_else(|| format!("`split` names unknown upstream `{name}`"))?;
            if let Some(c) = &b.canary {
                canary = Some(Canary::compile(i, c.get_ref()));
            }
            let labels = [route, name.as_str()];
            backends.push(Backend {
                upstream,
                matches: b.matches.as_ref().map(Match::compile).transpose()?,
                configured: b.weight,
                token: format!("{:016x}", stable_hash(&[route.as_bytes(), name.as_bytes()])),
                requests: METRICS.split_requests.with_label_values(&labels),
                weight: METRICS.split_weight.with_label_values(&labels),
                steps: METRICS.canary_steps.with_label_values(&labels),
                rollbacks: METRICS.canary_rollbacks.with_label_values(&labels),
            });
        }
        let sticky = config
            .sticky
            .as_ref()
            .map(|s| parse_sticky(s.get_ref()))
            .transpose()?;
        // Carried while the split's settings stay as they are.
        let settings = serde_json::to_string(&(split, &config.sticky, config.drain_sticky))
            .map_err(|e| e.to_string())?;
        let configured: Vec<u32> = backends.iter().map(|b| b.configured).collect();
        let ramp = canary.as_ref().map(|_| CanaryState {
            phase: Phase::Ramping,
            stepped_ms: crate::clock::now_ms(),
        });
        let state = keeper.keep("split", route, settings, || {
            Ok::<_, String>(SplitState::new(&configured, ramp))
        })?;
        let split = Split {
            route: route.into(),
            backends: backends.into(),
            sticky,
            max_age: config.sticky_max_age.0.as_secs(),
            drain_sticky: config.drain_sticky,
            canary,
            state,
        };
        split.show_weights();
        Ok(split)
    }

    pub fn upstream(&self, backend: usize) -> &Arc<Upstream> {
        &self.backends[backend].upstream
    }

    /// `pylon_split_weight{route,backend}` as the weights are now.
    fn show_weights(&self) {
        for (b, w) in self.backends.iter().zip(self.state.weights()) {
            b.weight.set(i64::from(w));
        }
    }

    /// The backend for a request (after its request-phase filters: the consumer is known).
    pub fn pick(&self, req: &RequestHeader, identity: &Identity, tls: bool) -> Pick {
        // Each backend's availability, asked once per request at most.
        let (mut asked, mut ok) = (0u64, 0u64);
        let mut usable = |i: usize| {
            if asked & (1 << i) == 0 {
                asked |= 1 << i;
                if self.backends[i].upstream.available() {
                    ok |= 1 << i;
                }
            }
            ok & (1 << i) != 0
        };
        let plain = |backend| Pick {
            backend,
            set_cookie: None,
        };
        for (i, b) in self.backends.iter().enumerate() {
            if b.matches.as_ref().is_some_and(|m| m.matches(req, identity)) && usable(i) {
                return plain(i);
            }
        }
        let weights = &self.state;
        let taking = |i: usize| weights.weight(i) > 0;
        match &self.sticky {
            Some(Sticky::Cookie(name)) => {
                let held = crate::headers::cookie(&req.headers, name)
                    .and_then(|v| self.backends.iter().position(|b| b.token.as_bytes() == v));
                if let Some(i) = held {
                    if (taking(i) || !self.drain_sticky) && usable(i) {
                        return plain(i);
                    }
                }
                let backend = self.weighted(&mut usable);
                let secure = if tls { "; Secure" } else { "" };
                let cookie = format!(
                    "{name}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                    self.backends[backend].token, self.max_age
                );
                Pick {
                    backend,
                    set_cookie: HeaderValue::from_str(&cookie).ok(),
                }
            }
            Some(sticky) => {
                let key = match sticky {
                    Sticky::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
                    _ => identity.consumer.as_ref().map(|c| c.name.as_bytes()),
                };
                let hashed = key.and_then(|k| self.hashed(k)).filter(|i| usable(*i));
                plain(hashed.unwrap_or_else(|| self.weighted(&mut usable)))
            }
            None => plain(self.weighted(&mut usable)),
        }
    }

    /// The next of the weighted cycle that can take a request; when none can (or every
    /// weight is 0), the cycle's next regardless, whose pool then answers as it can.
    fn weighted(&self, usable: &mut impl FnMut(usize) -> bool) -> usize {
        if let Some(i) = self.state.next(&mut *usable) {
            return i;
        }
        self.state
            .next(|_| true)
            .unwrap_or_else(|| (0..self.backends.len()).find(|i| usable(*i)).unwrap_or(0))
    }

    /// The backend a sticky key falls on: its hash placed over the weights now, so a change of
    /// weights moves only the keys between the old and new boundaries.
    fn hashed(&self, key: &[u8]) -> Option<usize> {
        // Read from the atomics in place: no allocation per request.
        let weight = |i: usize| u64::from(self.state.weight(i));
        let total: u64 = (0..self.backends.len()).map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut at = stable_hash(&[key]) % total;
        (0..self.backends.len()).find(|&i| {
            let w = weight(i);
            if at < w {
                return true;
            }
            at -= w;
            false
        })
    }

    /// Count a finished request on its backend: `failed` (a 5xx, or no answer at all), and how
    /// long its answer took to start.
    pub fn record(&self, backend: usize, failed: bool, took: Duration) {
        let Some(b) = self.backends.get(backend) else {
            return;
        };
        b.requests.inc();
        self.state.requests[backend].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.state.errors[backend].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(c) = self.canary.as_ref().filter(|c| c.backend == backend) {
            let slow = c.max_p99_ms.is_some_and(|ms| took.as_millis() as u64 > ms);
            let now = crate::clock::now_ms();
            let counts = [1, u32::from(failed), u32::from(slow)];
            self.state
                .window
                .add(now, window::bucket_ms(c.window_ms), counts);
        }
    }

    /// The canary's window now.
    fn verdict(&self, canary: &Canary, now: u64) -> Verdict {
        let [requests, errors, slow] = self
            .state
            .window
            .sum(now, window::bucket_ms(canary.window_ms));
        Verdict {
            requests,
            errors,
            slow,
        }
    }

    /// The controller's tick: the canary steps or is rolled back when its time comes.
    pub fn tick(&self, now: u64) {
        let Some(canary) = &self.canary else {
            return;
        };
        let mut held = self.state.lock();
        let Some(state) = held.as_mut() else {
            return;
        };
        let weight = self.state.weight(canary.backend);
        let seen = self.verdict(canary, now);
        let backend = &self.backends[canary.backend];
        let name = &backend.upstream.name;
        match canary.judge(state, weight, seen, now) {
            Some(Event::Step { to }) => {
                let weights = weights::spread(&self.configured(), canary.backend, to);
                self.state.set(&held, &weights);
                backend.steps.inc();
                log::info!(
                    "route {}: canary {name} steps from weight {weight} to {to}",
                    self.route
                );
            }
            Some(Event::Rollback { why }) => {
                let weights = weights::spread(&self.configured(), canary.backend, 0);
                self.state.set(&held, &weights);
                backend.rollbacks.inc();
                log::warn!(
                    "route {}: canary {name} rolled back to weight 0: {why}",
                    self.route
                );
            }
            None => return,
        }
        drop(held);
        self.show_weights();
    }

    fn configured(&self) -> Vec<u32> {
        self.backends.iter().map(|b| b.configured).collect()
    }

    /// `GET /routes/{name}/split`.
    pub fn view(&self) -> serde_json::Value {
        let now = crate::clock::now_ms();
        let weights = self.state.weights();
        let canary_state = *self.state.lock();
        let backends: Vec<_> = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let canary = self.canary.as_ref().filter(|c| c.backend == i).map(|c| {
                    let state = canary_state.map(|s| s.phase);
                    json!({
                        "phase": state,
                        "step": c.step,
                        "max_weight": c.max_weight,
                        "window": self.verdict(c, now),
                    })
                });
                json!({
                    "upstream": &*b.upstream.name,
                    "weight": weights[i],
                    "configured_weight": b.configured,
                    "requests": self.state.requests[i].load(Ordering::Relaxed),
                    "errors": self.state.errors[i].load(Ordering::Relaxed),
                    "available": b.upstream.available(),
                    "canary": canary,
                })
            })
            .collect();
        json!({
            "route": &*self.route,
            "sticky": self.sticky.as_ref().map(|s| match s {
                Sticky::Cookie(n) => format!("cookie:{n}"),
                Sticky::Header(n) => format!("header:{n}"),
                Sticky::Consumer => "consumer".into(),
            }),
            "drain_sticky": self.drain_sticky,
            "backends": backends,
        })
    }

    /// `POST /routes/{name}/split`: new weights, or what to do with the canary. Held until the
    /// file changes the split or the process restarts.
    pub fn act(&self, asked: Change) -> Result<(), String> {
        let mut held = self.state.lock();
        let now = crate::clock::now_ms();
        match asked {
            Change::Weights { weights } => {
                let mut next = self.state.weights();
                for (name, w) in weights {
                    let i = self.position(&name)?;
                    if w > 10_000 {
                        return Err(format!("weight {w} is over 10000"));
                    }
                    next[i] = w;
                }
                self.state.set(&held, &next);
                // Weights by hand hold: the canary stops stepping until resumed.
                if let Some(state) = held.as_mut().filter(|s| s.phase == Phase::Ramping) {
                    state.phase = Phase::Paused;
                }
            }
            Change::Action { action } => {
                let canary = self.canary.as_ref().ok_or("this split has no canary")?;
                let state = held.as_mut().ok_or("this split has no canary")?;
                let total: u32 = self.backends.iter().map(|b| b.configured).sum();
                let to = match action {
                    CanaryAction::Pause => {
                        state.phase = Phase::Paused;
                        None
                    }
                    CanaryAction::Resume => {
                        // From a rollback the ramp starts over, its old failures forgotten.
                        if state.phase == Phase::RolledBack {
                            self.state.window.clear();
                            Some(self.backends[canary.backend].configured)
                        } else {
                            None
                        }
                    }
                    CanaryAction::Promote => Some(total),
                    CanaryAction::Rollback => Some(0),
                };
                state.phase = match action {
                    CanaryAction::Pause => Phase::Paused,
                    CanaryAction::Resume => Phase::Ramping,
                    CanaryAction::Promote => Phase::Promoted,
                    CanaryAction::Rollback => Phase::RolledBack,
                };
                state.stepped_ms = now;
                if let Some(to) = to {
                    let weights = weights::spread(&self.configured(), canary.backend, to);
                    self.state.set(&held, &weights);
                }
                let backend = &self.backends[canary.backend];
                if matches!(action, CanaryAction::Rollback) {
                    backend.rollbacks.inc();
                }
                let name = &backend.upstream.name;
                log::info!(
                    "route {}: canary {name}: {action:?} by the admin API",
                    self.route
                );
            }
        }
        drop(held);
        self.show_weights();
        Ok(())
    }

    fn position(&self, upstream: &str) -> Result<usize, String> {
        self.backends
            .iter()
            .position(|b| &*b.upstream.name == upstream)
            .ok_or_else(|| format!("no backend `{upstream}` in this split"))
    }
}

/// What `POST /routes/{name}/split` asks, as its JSON is written.
#[derive(Debug, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Change {
    Weights { weights: HashMap<String, u32> },
    Action { action: CanaryAction },
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CanaryAction {
    Promote,
    Pause,
    Resume,
    Rollback,
}
