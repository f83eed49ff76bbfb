use clap::{Args, Parser, Subcommand};
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Which route a request takes in a configuration and why: the near misses, the policy
    /// chain, the upstream and the path after rewrite.
    Explain(Explain),
}

#[derive(Args, Debug)]
struct Explain {
    /// The TOML configuration file.
    #[arg(short = 'c', long = "conf", default_value = "conf/pylon.toml")]
    conf: PathBuf,
    /// The request's method.
    method: Option<String>,
    /// The request's URL (`http://host/path?query`) or path.
    url: Option<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Check a TOML table of `[[expect]]` requests (`method`, `url`, `headers`, `route`)
    /// instead: exit 1 when a request takes another route.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Print the answer as JSON (as `GET /explain` gives it).
    #[arg(long)]
    json: bool,
}

/// Read, check and compile a configuration file; its errors (with `file:line:col`) printed.
fn compile(conf: &std::path::Path) -> Option<(load::Checked, Snapshot)> {
    let checked = match load::load(conf) {
        Ok(c) => c,
        Err(diagnostics) => {
            eprintln!("{diagnostics}");
            return None;
        }
    };
    match Snapshot::build(&checked, None) {
        Ok(snapshot) => Some((checked, snapshot)),
        Err(errors) => {
            let source = &checked.config.source;
            eprintln!("{}", config::Diagnostics::new(source, errors));
            None
        }
    }
}

/// `pylon explain`: 0 when explained (or every expectation held), 1 otherwise.
fn explain(args: &Explain) -> ExitCode {
    use pylon::router::explain::{self, Probe};
    let Some((checked, snapshot)) = compile(&args.conf) else {
        return ExitCode::FAILURE;
    };
    let config = &checked.config;
    if let Some(table) = &args.expect {
        let text = match std::fs::read_to_string(table) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: {e}", table.display());
                return ExitCode::FAILURE;
            }
        };
        return match explain::expect(&snapshot.router, config, &text) {
            Ok((report, all)) => {
                print!("{report}");
                if all {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("{}: {e}", table.display());
                ExitCode::FAILURE
            }
        };
    }
    let (Some(method), Some(url)) = (&args.method, &args.url) else {
        eprintln!("pylon explain -c FILE METHOD URL [-H 'name: value']..., or --expect FILE");
        return ExitCode::FAILURE;
    };
    let probe = Probe {
        method,
        url,
        headers: &args.headers,
    };
    match explain::explain(&snapshot.router, config, &probe) {
        Ok(answer) if args.json => println!("{answer:#}"),
        Ok(answer) => print!("{}", explain::text(&answer)),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
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
    if let Some(Command::Explain(args)) = &cli.command {
        return explain(args);
    }
    let Some((checked, snapshot)) = compile(&cli.conf) else {
        return ExitCode::FAILURE;
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
