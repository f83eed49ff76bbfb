use clap::Parser;
use pylon::config::{self, LogLevel};
use pylon::load;
use pylon::runtime::Snapshot;
use pylon::server::{self, StartMode};
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Pylon, an API gateway on Cloudflare's Pingora.
#[derive(Parser, Debug)]
#[command(name = "pylon", version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(short = 'c', long = "conf", default_value = "conf/pylon.toml")]
    conf: PathBuf,
    /// Validate the configuration and exit: 0 when valid, 1 with every error otherwise.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Take over the listening sockets of the running instance (graceful binary upgrade).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    /// Run in the background, writing `server.pid_file`.
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
}

/// Every connection, client's or target's, is a file descriptor: take as many as the system
/// lets this process have. The systemd unit sets a high limit; started by hand, the soft limit
/// is often 1,024, which 500 proxied WebSocket tunnels would use up.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the local struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> ExitCode {
    // logrotate's SIGUSR1 is caught by a background service once the server runs; until then
    // its default action would end the process (seen when it came right after start).
    // SAFETY: setting a signal's disposition to "ignore" runs no handler code.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_IGN) };
    raise_fd_limit();
    let cli = Cli::parse();
    let checked = match load::load(&cli.conf) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match Snapshot::build(&checked, None) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!(
                "{}",
                config::Diagnostics::new(&checked.config.source, errors)
            );
            return ExitCode::FAILURE;
        }
    };
    let config = checked.config;
    if cli.test {
        println!("{}: configuration is valid", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    let taken = if cli.upgrade {
        Vec::new()
    } else {
        server::unbindable(&config)
    };
    if !taken.is_empty() {
        eprintln!("{}", config::Diagnostics::new(&config.source, taken));
        return ExitCode::FAILURE;
    }
    // Reload and self-upgrade read the file again after `-d` may have changed directory.
    let mut config = config;
    // Absolute, not canonical: a symlinked config (e.g. a swapped ConfigMap) must be followed anew.
    if let Ok(absolute) = std::path::absolute(&cli.conf) {
        config.source.path = absolute;
    }
    let level = match config.log.level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let mode = StartMode {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
    };
    match server::build(&config, snapshot, mode) {
        Ok(pylon) => pylon.run(),
        Err(e) => {
            eprintln!("{}: {e}", cli.conf.display());
            ExitCode::FAILURE
        }
    }
}
