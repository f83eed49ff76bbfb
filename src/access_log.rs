//! The JSON access log: one object per request, written off the request path.
//!
//! Requests hand a finished line to a bounded queue and never wait: when the writer thread
//! cannot keep up, the line is dropped and counted in `pylon_access_log_dropped_total`. The
//! writer batches lines into one buffered write and reopens its file after `SIGUSR1`, so
//! logrotate can move the file away.

use crate::metrics::METRICS;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stdout,
    File(PathBuf),
}

impl Destination {
    /// Where `[log] access_log` sends the lines: `None` when it is `off`.
    pub fn of(log: &crate::config::LogConfig) -> Option<Destination> {
        match log.access_log.as_str() {
            "off" => None,
            "stdout" => Some(Destination::Stdout),
            path => Some(Destination::File(path.into())),
        }
    }
}

/// One access log line.
#[derive(Serialize)]
pub struct Entry<'a> {
    #[serde(serialize_with = "as_text")]
    pub time: humantime::Rfc3339Timestamp,
    pub request_id: &'a str,
    pub trace_id: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub host: Option<&'a str>,
    /// The path without its query string, which may carry credentials.
    pub path: &'a str,
    pub status: u16,
    /// A gRPC call's `grpc-status`, by name; absent for other requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<&'static str>,
    /// How the route's cache served the request (`hit`, `miss`, ...); absent without a cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub target: Option<&'a str>,
    pub consumer: Option<&'a str>,
    /// Policy decisions taken on this request (`rate_limited`, `auth_failed`, ...).
    pub decisions: &'a [&'a str],
}

/// Written straight into the line: no string of its own per request.
fn as_text<S: serde::Serializer>(t: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// Room for a typical line, so it is not grown on the way.
const LINE: usize = 512;

/// The handle requests write to.
pub struct AccessLog {
    destination: Destination,
    /// Started on first use: a thread started before `pylon -d` daemonizes would not survive
    /// the fork.
    queue: OnceLock<Option<SyncSender<Vec<u8>>>>,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Check that the destination can be opened; the writer starts with the first line.
    pub fn new(destination: Destination) -> io::Result<AccessLog> {
        drop(Sink::open(&destination)?);
        Ok(AccessLog {
            destination,
            queue: OnceLock::new(),
            reopen: Arc::new(AtomicBool::new(false)),
        })
    }

    fn start_writer(&self) -> Option<SyncSender<Vec<u8>>> {
        let sink = match Sink::open(&self.destination) {
            Ok(s) => s,
            Err(e) => {
                log::error!("access log: cannot open {:?}: {e}", self.destination);
                return None;
            }
        };
        let (queue, lines) = sync_channel(QUEUE);
        let (destination, flag) = (self.destination.clone(), Arc::clone(&self.reopen));
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(sink, destination, lines, flag))
            .map_err(|e| log::error!("access log: cannot start the writer: {e}"))
            .ok()?;
        Some(queue)
    }

    /// Queue one entry; never blocks.
    pub fn log(&self, entry: &Entry<'_>) {
        let Some(queue) = self.queue.get_or_init(|| self.start_writer()) else {
            METRICS.access_log_dropped.inc();
            return;
        };
        let mut line = Vec::with_capacity(LINE);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        match queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                METRICS.access_log_dropped.inc();
            }
        }
    }
}

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Sink {
    fn open(destination: &Destination) -> io::Result<Sink> {
        Ok(match destination {
            Destination::Stdout => Sink::Stdout(BufWriter::new(io::stdout())),
            Destination::File(path) => Sink::File(BufWriter::new(open_append(path)?)),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File(w) => w,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// How long the writer sleeps between drains of the queue. Requests never wake it: waking a
/// parked writer costs a futex call and a context switch per request, which measured as a third
/// of the gateway's throughput when the writer shares the proxy's core.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

fn write_loop(
    mut sink: Sink,
    destination: Destination,
    lines: Receiver<Vec<u8>>,
    reopen: Arc<AtomicBool>,
) {
    loop {
        std::thread::sleep(DRAIN_EVERY);
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = sink.writer().flush();
            match Sink::open(&destination) {
                Ok(fresh) => sink = fresh,
                Err(e) => log::error!("access log: cannot reopen {destination:?}: {e}"),
            }
        }
        let w = sink.writer();
        let mut ok = Ok(());
        // Everything queued since the last drain goes into one buffer: few writes for many lines.
        let closed = loop {
            match lines.try_recv() {
                Ok(line) => {
                    ok = ok
                        .and_then(|_| w.write_all(&line))
                        .and_then(|_| w.write_all(b"\n"));
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if let Err(e) = ok.and_then(|_| w.flush()) {
            log::error!("access log: write failed: {e}");
        }
        if closed {
            return;
        }
    }
}

/// Reopens the access log file on `SIGUSR1` (for logrotate). Without an access log it does not
/// listen: `main` ignores `SIGUSR1` from the start, so a stray one never ends the process.
pub struct Reopener(Option<Arc<AtomicBool>>);

impl Reopener {
    pub fn new(log: Option<&AccessLog>) -> Self {
        Reopener(log.map(|l| Arc::clone(&l.reopen)))
    }
}

#[async_trait]
impl BackgroundService for Reopener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(flag) = &self.0 else {
            return;
        };
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            log::error!("cannot listen for SIGUSR1: the access log will not be reopened");
            return;
        };
        loop {
            tokio::select! {
                _ = usr1.recv() => flag.store(true, Ordering::Relaxed),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogConfig;

    #[test]
    fn the_destination_follows_the_log_section() {
        let log = |to: &str| LogConfig {
            access_log: to.into(),
            ..LogConfig::default()
        };
        assert_eq!(Destination::of(&LogConfig::default()), None);
        assert_eq!(Destination::of(&log("off")), None);
        assert_eq!(Destination::of(&log("stdout")), Some(Destination::Stdout));
        assert_eq!(
            Destination::of(&log("/var/log/pylon/access.log")),
            Some(Destination::File("/var/log/pylon/access.log".into()))
        );
    }
}
