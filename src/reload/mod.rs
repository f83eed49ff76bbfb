//! Configuration reload without a restart, on `SIGHUP`.
//!
//! The file is parsed, validated and compiled into a new snapshot off the request path; only a
//! complete snapshot is swapped in. An invalid file changes nothing: every error is logged with
//! its line and column and the running configuration stays. State that outlives a
//! configuration (health, drains, counters, caches) is carried from the running snapshot to
//! the next ([`crate::state`], [`Snapshot::build`]).
//!
//! Each reload is summed up as what it changes ([`diff`]), logged, and kept among the last ten
//! ([`history`]); `POST /reload?dry_run=1` answers the same summary without applying it.

pub mod diff;
pub mod history;

use crate::config::{Config, Diagnostics, ServerConfig};
use crate::load;
use crate::metrics::METRICS;
use crate::runtime::{SharedSnapshot, Snapshot};
use crate::tls::accept::LiveListeners;
use async_trait::async_trait;
use diff::Diff;
use history::{Record, Trigger};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// How often `watch = true` looks at the file.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Background service that reloads the configuration file on `SIGHUP`, and on changes of the
/// file with `server.watch`.
pub struct Reloader {
    path: PathBuf,
    snapshot: SharedSnapshot,
    /// The configuration the process started with: its `[admin]`, `[log]` and `[tracing]`
    /// sections and most `[server]` keys (listeners, threads, admin token, log destinations)
    /// apply only at start; a restart or binary upgrade applies changes to them.
    running: Arc<Config>,
}

impl Reloader {
    pub fn new(path: PathBuf, snapshot: SharedSnapshot, running: Config) -> Self {
        Reloader {
            path,
            snapshot,
            running: Arc::new(running),
        }
    }
}

/// One reload at a time: two overlapping ones (signal, file watch, admin API) could otherwise
/// store an older file's snapshot last.
static RELOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Load, validate and compile `path`, then swap the result in: the number of routes and what
/// changed. Counted in `pylon_config_reloads_total{result}`, logged, and kept in [`history`].
/// Blocks: call it off the async runtime.
pub fn reload(
    path: &std::path::Path,
    snapshot: &SharedSnapshot,
    running: &Config,
    trigger: Trigger,
) -> Result<(usize, Diff), Diagnostics> {
    let _one_at_a_time = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
    let result = prepare(path, snapshot, running).map(|(next, diff)| {
        let routes = next.router.len();
        snapshot.store(Arc::new(next));
        crate::cert_expiry::publish(&snapshot.listeners());
        (routes, diff)
    });
    let label = if result.is_ok() { "success" } else { "error" };
    METRICS.config_reloads.with_label_values(&[label]).inc();
    let record = match &result {
        Ok((routes, diff)) => {
            log::info!("configuration reloaded: {routes} routes; {diff}");
            if !diff.restart_needed.is_empty() {
                log::warn!(
                    "{}: {} changed; applied only after a restart or a binary upgrade (SIGUSR2)",
                    path.display(),
                    diff.restart_needed.join(", ")
                );
            }
            Record::new(trigger, Ok((*routes, diff)))
        }
        Err(diagnostics) => {
            let lines: Vec<String> = diagnostics.to_string().lines().map(String::from).collect();
            for line in &lines {
                log::error!("reload rejected, running configuration kept: {line}");
            }
            Record::new(trigger, Err(lines))
        }
    };
    history::record(record);
    result
}

/// What reloading `path` would change, without applying it: the file is loaded and compiled as
/// a reload would, then dropped. Blocks: call it off the async runtime.
pub fn dry_run(
    path: &std::path::Path,
    snapshot: &SharedSnapshot,
    running: &Config,
) -> Result<(usize, Diff), Diagnostics> {
    prepare(path, snapshot, running).map(|(next, diff)| (next.router.len(), diff))
}

/// The next snapshot compiled from `path` (keeping the running one's state) and its diff.
fn prepare(
    path: &std::path::Path,
    snapshot: &SharedSnapshot,
    running: &Config,
) -> Result<(Snapshot, Diff), Diagnostics> {
    let checked = load::load(path)?;
    let config = &checked.config;
    let current = snapshot.load_full();
    let next = Snapshot::build(&checked, Some(&current))
        .map_err(|e| Diagnostics::new(&config.source, e))?;
    let mut diff = Diff::between(&current.checked, &checked);
    diff.restart_needed = server_keys_needing_restart(&running.server, &config.server);
    for (section, changed) in [
        ("admin", config.admin != running.admin),
        ("log", config.log != running.log),
        ("tracing", config.tracing != running.tracing),
    ] {
        if changed {
            diff.restart_needed.push(format!("[{section}]"));
        }
    }
    Ok((next, diff))
}

/// `[server]` keys a reload applies: the rest are read once, at start.
const RELOADED_SERVER_KEYS: [&str; 4] = [
    "global_policies",
    "trusted_proxies",
    "tls",
    "cert_expiry_warning",
];

/// The `[server]` keys that differ between `running` and `next` and only a restart applies,
/// as `server.KEY`.
fn server_keys_needing_restart(running: &ServerConfig, next: &ServerConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(running), serde_json::to_value(next))
    else {
        return Vec::new();
    };
    a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !RELOADED_SERVER_KEYS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| format!("server.{k}"))
        .chain(tls_listeners_changed(running, next))
        .collect()
}

/// A TLS listener's certificates and client checks are reloaded; its address, minimum
/// version and ALPN are fixed when it starts listening.
fn tls_listeners_changed(running: &ServerConfig, next: &ServerConfig) -> Option<String> {
    let fixed = |s: &ServerConfig| -> Vec<_> {
        s.tls
            .iter()
            .map(|t| (t.listen.get_ref().clone(), t.min_version, t.h2))
            .collect()
    };
    (fixed(running) != fixed(next)).then(|| "server.tls (listen, min_version, h2)".to_string())
}

/// What identifies a version of the file: modification time and size.
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, reload by signal is off: {e}");
                return;
            }
        };
        let watch = self.running.server.watch;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let mut seen = stamp(&self.path);
        loop {
            let by_signal = tokio::select! {
                _ = hangup.recv() => true,
                _ = tick.tick(), if watch => false,
                _ = shutdown.changed() => return,
            };
            let now = stamp(&self.path);
            if !by_signal && now == seen {
                continue;
            }
            seen = now;
            let (path, snapshot, running) = (
                self.path.clone(),
                Arc::clone(&self.snapshot),
                Arc::clone(&self.running),
            );
            // Reading the file and resolving target names block: keep them off the runtime.
            // The reload logs its own outcome.
            let trigger = if by_signal {
                Trigger::Signal
            } else {
                Trigger::Watch
            };
            let reloading = move || reload(&path, &snapshot, &running, trigger);
            if let Err(e) = tokio::task::spawn_blocking(reloading).await {
                log::error!("reload failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_start_time_server_keys_need_a_restart() {
        let running = ServerConfig::default();
        let mut next = ServerConfig {
            trusted_proxies: vec![toml::Spanned::new(0..0, "10.0.0.0/8".into())],
            global_policies: vec![toml::Spanned::new(0..0, "limits".into())],
            ..ServerConfig::default()
        };
        assert!(server_keys_needing_restart(&running, &next).is_empty());
        next.threads = std::num::NonZeroUsize::new(3);
        next.watch = true;
        assert_eq!(
            server_keys_needing_restart(&running, &next),
            ["server.threads", "server.watch"]
        );
    }
}
