//! Configuration reload without a restart, on `SIGHUP`.
//!
//! The file is parsed, validated and compiled into a new snapshot off the request path; only a
//! complete snapshot is swapped in. An invalid file changes nothing: every error is logged with
//! its line and column and the running configuration stays. Pools whose definition did not
//! change are carried over with their health state and connections (see [`Snapshot::build`]).

use crate::config::{self, Config, Diagnostics};
use crate::metrics::METRICS;
use crate::runtime::{SharedSnapshot, Snapshot};
use async_trait::async_trait;
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
    /// The configuration the process started with: its `[server]`, `[admin]`, `[log]` and `[tracing]`
    /// sections (listeners, threads, admin token, log destinations) apply only at start; a
    /// restart or binary upgrade applies changes to them.
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

/// Load, validate and compile `path`, then swap the result in. Returns the number of routes.
/// Counted in `pylon_config_reloads_total{result}`. Blocks: call it off the async runtime.
pub fn reload(
    path: &std::path::Path,
    snapshot: &SharedSnapshot,
    running: &Config,
) -> Result<usize, Diagnostics> {
    let _one_at_a_time = RELOADING.lock().unwrap_or_else(|p| p.into_inner());
    let result = try_reload(path, snapshot, running);
    let label = if result.is_ok() { "success" } else { "error" };
    METRICS.config_reloads.with_label_values(&[label]).inc();
    result
}

fn try_reload(
    path: &std::path::Path,
    snapshot: &SharedSnapshot,
    running: &Config,
) -> Result<usize, Diagnostics> {
    let config = config::load(path)?;
    let current = snapshot.load_full();
    let next = Snapshot::build(&config, Some(&current))
        .map_err(|e| Diagnostics::new(&config.source, vec![e]))?;
    for (section, changed) in [
        ("server", config.server != running.server),
        ("admin", config.admin != running.admin),
        ("log", config.log != running.log),
        ("tracing", config.tracing != running.tracing),
    ] {
        if changed {
            log::warn!(
                "{}: [{section}] changed; it applies only after a restart or a binary upgrade (SIGUSR2)",
                path.display()
            );
        }
    }
    let routes = next.router.len();
    snapshot.store(Arc::new(next));
    Ok(routes)
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
            let result =
                tokio::task::spawn_blocking(move || reload(&path, &snapshot, &running)).await;
            match result {
                Ok(Ok(routes)) => log::info!("configuration reloaded: {routes} routes"),
                Ok(Err(diagnostics)) => {
                    for line in diagnostics.to_string().lines() {
                        log::error!("reload rejected, running configuration kept: {line}");
                    }
                }
                Err(e) => log::error!("reload failed: {e}"),
            }
        }
    }
}
