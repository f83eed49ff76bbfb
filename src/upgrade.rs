//! Zero-downtime binary upgrades.
//!
//! Pingora hands the listening sockets to a new process started with `-u` when the old one gets
//! `SIGQUIT`, keeps serving for a few seconds, then stops accepting and drains. Two things are
//! added here:
//!
//! - [`Drain`]: from the moment the hand-over starts (or `SIGTERM`), every response says
//!   `Connection: close`. Busy keep-alive clients then move to fresh connections, which the new
//!   process accepts, before the old one closes its idle connections; without it, a client that
//!   reuses a connection just as it is closed sees an error.
//! - [`SelfUpgrade`]: on `SIGUSR2` the process starts its own successor (`pylon -u -d` from the
//!   same binary path, so a freshly installed binary), waits until it listens for the sockets,
//!   then sends itself `SIGQUIT`. The successor descends from the running process, so it stays in
//!   its systemd unit, which follows it through `PIDFile`.

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast;

/// How long to wait for the successor to listen on the upgrade socket.
const SUCCESSOR_TIMEOUT: Duration = Duration::from_secs(30);

/// Where this process is in its life, as far as upgrades care.
#[derive(Clone, Default)]
pub struct Lifecycle(Arc<(AtomicBool, AtomicBool)>);

impl Lifecycle {
    /// The listening sockets are in hand (bound, or taken over from the old process).
    pub fn has_listeners(&self) -> bool {
        self.0 .0.load(Ordering::Relaxed)
    }

    /// Handing over or shutting down.
    pub fn is_draining(&self) -> bool {
        self.0 .1.load(Ordering::Relaxed)
    }
}

/// Follows Pingora's execution phase into the [`Lifecycle`].
pub struct Drain {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    lifecycle: Lifecycle,
}

impl Drain {
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, lifecycle: Lifecycle) -> Self {
        Drain {
            phases: Mutex::new(Some(phases)),
            lifecycle,
        }
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        loop {
            match phases.recv().await {
                Ok(ExecutionPhase::BootstrapComplete) => {
                    self.lifecycle.0 .0.store(true, Ordering::Relaxed);
                }
                Ok(
                    ExecutionPhase::GracefulUpgradeTransferringFds
                    | ExecutionPhase::GracefulUpgradeCloseTimeout
                    | ExecutionPhase::GracefulTerminate
                    | ExecutionPhase::ShutdownStarted,
                ) => {
                    self.lifecycle.0 .1.store(true, Ordering::Relaxed);
                    log::info!("draining: responses now close their connections");
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Starts a successor on `SIGUSR2` and hands it the listeners.
#[derive(Clone)]
pub struct SelfUpgrade {
    binary: PathBuf,
    config: PathBuf,
    upgrade_sock: PathBuf,
    pid_file: PathBuf,
    lifecycle: Lifecycle,
}

impl SelfUpgrade {
    pub fn new(
        binary: PathBuf,
        config: PathBuf,
        upgrade_sock: PathBuf,
        pid_file: PathBuf,
        lifecycle: Lifecycle,
    ) -> Self {
        SelfUpgrade {
            binary,
            config,
            upgrade_sock,
            pid_file,
            lifecycle,
        }
    }

    /// Start `pylon -u -d` and wait until it listens for the sockets. Blocks.
    fn start_successor(&self) -> std::io::Result<()> {
        // The successor creates the socket when it is ready to receive; a stale one from an
        // earlier upgrade must not be mistaken for that.
        let _ = std::fs::remove_file(&self.upgrade_sock);
        let mut child = std::process::Command::new(&self.binary)
            .arg("-u")
            .arg("-d")
            .arg("-c")
            .arg(&self.config)
            .spawn()?;
        // Reap the foreground half of the daemon when it exits.
        std::thread::spawn(move || child.wait());
        let deadline = Instant::now() + SUCCESSOR_TIMEOUT;
        while !self.upgrade_sock.exists() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(
                    "the successor never listened for the sockets",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

#[async_trait]
impl BackgroundService for SelfUpgrade {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
            log::error!("cannot listen for SIGUSR2: self-upgrade is off");
            return;
        };
        loop {
            tokio::select! {
                _ = usr2.recv() => {}
                _ = shutdown.changed() => return,
            }
            // A process still taking over its sockets has nothing to hand on yet, and one
            // already handing over must not start a second successor.
            if !self.lifecycle.has_listeners() || self.lifecycle.is_draining() {
                log::warn!("SIGUSR2 ignored: this process is not serving on its own listeners yet, or is draining");
                continue;
            }
            log::info!("SIGUSR2: starting {} -u -d", self.binary.display());
            let this = self.clone();
            let started = tokio::task::spawn_blocking(move || this.start_successor()).await;
            match started.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
                Ok(()) => {
                    // Pingora's own SIGQUIT handling sends the sockets and drains this process.
                    // SAFETY: kill(2) on our own pid with a valid signal has no memory effects.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGQUIT);
                    }
                    return;
                }
                Err(e) => {
                    log::error!("upgrade aborted, still serving: {e}");
                    // The successor may have moved our pid file aside before failing.
                    let _ = std::fs::write(&self.pid_file, std::process::id().to_string());
                }
            }
        }
    }
}
