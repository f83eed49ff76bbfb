//! Assemble the Pingora server from our configuration: users never write Pingora's YAML.

use crate::access_log::{AccessLog, Reopener};
use crate::admin::Admin;
use crate::cert_expiry::ExpiryWatch;
use crate::config::Config;
use crate::conn_cap::ConnectionCap;
use crate::dashboard::{sampler::Sampler, series::Series};
use crate::keepalive::{KeepAlive, Timeouts};
use crate::policy::cache::fanout::PurgeSubscriber;
use crate::policy::cache::DiskStarter;
use crate::policy::jwt::jwks::JwksRefresher;
use crate::proxy::Gateway;
use crate::reload::Reloader;
use crate::runtime::{SharedSnapshot, Snapshot};
use crate::split::controller::CanaryController;
use crate::tls::accept::Handshakes;
use crate::upgrade::{Drain, Lifecycle, SelfUpgrade};
use crate::upstream::PoolSupervisor;
use arc_swap::ArcSwap;
use pingora::apps::http_app::HttpServer;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

/// How the process was asked to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartMode {
    /// Take over the listening sockets of a running instance.
    pub upgrade: bool,
    pub daemon: bool,
}

/// Pingora's server settings from `[server]`.
pub fn server_conf(config: &Config, mode: StartMode) -> ServerConf {
    let s = &config.server;
    ServerConf {
        daemon: mode.daemon,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        threads: s
            .threads
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, |n| n.get()),
        work_stealing: s.work_stealing,
        upstream_keepalive_pool_size: s.upstream_keepalive.get(),
        grace_period_seconds: Some(s.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.shutdown_timeout.0.as_secs()),
        ..ServerConf::default()
    }
}

/// The built server, and what must happen once it has stopped.
pub struct Pylon {
    server: Server,
    tracer: Option<Arc<crate::otlp::Exporter>>,
}

impl Pylon {
    /// Serve until told to stop (or to hand over to a new process), then send the spans still
    /// queued and exit. The flush runs here, on the main thread after every runtime has
    /// stopped, because no request can add a span any more and nothing can cancel it: a
    /// background task told to flush as the runtimes shut down may be dropped first.
    pub fn run(self) -> ! {
        self.server.run(pingora::server::RunArgs::default());
        if let Some(tracer) = &self.tracer {
            tracer.flush();
        }
        std::process::exit(0)
    }
}

/// The listen addresses (plain, TLS, admin) that cannot be bound, each at its key. Pingora binds
/// them later, on a service's own thread, where a failed bind only ends that service: the
/// process would run on, serving nothing on any of its addresses. So a fresh start checks
/// them first (an upgrade takes the running process's sockets instead).
pub fn unbindable(config: &Config) -> Vec<crate::config::ConfigError> {
    let listen = config.server.listen.iter();
    let tls = config.server.tls.iter().map(|t| &t.listen);
    let admin = config.admin.iter().map(|a| &a.listen);
    listen
        .chain(tls)
        .chain(admin)
        .filter_map(|addr| {
            let why = std::net::TcpListener::bind(addr.get_ref()).err()?;
            Some(crate::config::ConfigError::at(
                addr.span(),
                format!("cannot listen on {}: {why}", addr.get_ref()),
            ))
        })
        .collect()
}

/// Build the server: the proxy on every `listen` address, the admin API and the background
/// services (health checks, reload, log reopening).
pub fn build(config: &Config, snapshot: Snapshot, mode: StartMode) -> Result<Pylon, String> {
    let access_log = match crate::access_log::Destination::of(&config.log) {
        Some(dest) => Some(
            AccessLog::new(dest)
                .map_err(|e| format!("access log {:?}: {e}", config.log.access_log))?,
        ),
        None => None,
    };
    let opt = Opt {
        upgrade: mode.upgrade,
        daemon: mode.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(config, mode));
    // The registry is built here, at start, rather than by the first request that counts
    // something: its fixed metric definitions are checked before any traffic.
    std::sync::LazyLock::force(&crate::metrics::METRICS);
    // Bootstrap (taking over the old process's sockets with `-u`) runs as a service, after
    // `-d` has forked, and the listeners wait for it. Pingora's `daemon_wait_for_ready` is left
    // off: its parent installs the SIGUSR1 handler after forking, so a quick daemon can signal
    // first and kill it (seen in CI). Self-upgrade waits for the successor's upgrade socket
    // instead.
    let bootstrap = server.bootstrap_as_a_service();

    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    // Pingora counts the reuses of a connection, not its requests.
    options.keepalive_request_limit = config.server.keepalive_requests.map(|n| n.get() - 1);
    let reopener = Reopener::new(access_log.as_ref());
    let lifecycle = Lifecycle::default();
    let drain = Drain::new(server.watch_execution_phase(), lifecycle.clone());
    let tracer = crate::otlp::Exporter::new(&config.tracing).map(Arc::new);
    let telemetry = crate::telemetry::Telemetry {
        access_log,
        tracer: tracer.clone(),
    };
    let gateway = Gateway::new(Arc::clone(&shared), telemetry, lifecycle.clone());
    let mut http = HttpProxy::new(gateway, Arc::clone(&server.configuration));
    http.handle_init_modules();
    http.server_options = Some(options);
    let keepalive = KeepAlive::new(
        http,
        Timeouts {
            idle: config.server.keepalive_timeout.get_ref().0,
            header: config.server.header_timeout.0,
            body: config.server.body_timeout.0,
            grace: config.server.grace_period.0,
        },
        ConnectionCap::new(
            config.server.max_connections_per_ip.get(),
            config
                .server
                .trusted_proxies
                .iter()
                .filter_map(|c| crate::config::parse_cidr(c.get_ref()))
                .collect(),
        ),
    );
    let mut proxy = Service::new("pylon".to_string(), keepalive);
    for addr in &config.server.listen {
        // Pingora's default 64 KiB read buffer per connection dominates the memory of idle
        // keep-alive connections; HTTP parsing keeps its own buffer, so reads go unbuffered.
        let buffers = L4BufferSettings::default().read(0);
        proxy.add_listener(ListenerConfig::tcp(addr.get_ref()).l4_buffer(buffers));
    }
    for listener in &config.server.tls {
        let addr = listener.listen.get_ref();
        let handshakes = Handshakes::new(addr.clone(), Arc::clone(&shared) as _);
        let settings = crate::tls::accept::settings(listener, handshakes)?;
        let buffers = L4BufferSettings::default().read(0);
        proxy.add_listener(ListenerConfig::tcp(addr).l4_buffer(buffers).tls(settings));
    }
    server.add_service(proxy).add_dependency(&bootstrap);
    server.add_service(background_service(
        "upstream health checks and discovery",
        PoolSupervisor::new(Arc::clone(&shared) as _),
    ));
    server.add_service(background_service(
        "jwks refresh",
        JwksRefresher {
            live: Arc::clone(&shared) as _,
        },
    ));
    server.add_service(background_service(
        "canary controller",
        CanaryController {
            live: Arc::clone(&shared) as _,
        },
    ));
    server.add_service(background_service(
        "cache disk tiers",
        DiskStarter {
            live: Arc::clone(&shared) as _,
        },
    ));
    server.add_service(background_service(
        "certificate expiry",
        ExpiryWatch {
            live: Arc::clone(&shared) as _,
        },
    ));
    server.add_service(background_service(
        "cache purges",
        PurgeSubscriber {
            live: Arc::clone(&shared) as _,
        },
    ));
    if let Some(admin) = &config.admin {
        // The dashboard's charts, sampled only where there is a dashboard to show them.
        let series = Arc::new(Series::default());
        server.add_service(background_service(
            "dashboard sampler",
            Sampler {
                series: Arc::clone(&series),
                snapshot: Arc::clone(&shared),
            },
        ));
        let app = Admin::new(
            Arc::clone(&shared),
            admin.token.clone(),
            config.source.path.clone(),
            config.clone(),
            series,
        );
        let mut service = Service::new("admin".to_string(), HttpServer::new_app(app));
        service.add_tcp(admin.listen.get_ref());
        server.add_service(service).add_dependency(&bootstrap);
    }
    server.add_service(background_service(
        "config reload",
        Reloader::new(config.source.path.clone(), shared, config.clone()),
    ));
    server.add_service(background_service("access log reopen", reopener));
    server.add_service(background_service("drain", drain));
    let binary = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let upgrade = SelfUpgrade::new(
        binary,
        config.source.path.clone(),
        config.server.upgrade_sock.clone().into(),
        config.server.pid_file.clone().into(),
        lifecycle,
    );
    server.add_service(background_service("self upgrade", upgrade));
    Ok(Pylon { server, tracer })
}
