//! `llm-scheduler`: the OpenAI-compatible proxy binary. Parses the CLI and config, sets up logging, binds, and
//! hands over to [`proxy::run`]; the `loadtest` subcommand hands over to the `loadtest` crate.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a request allocates a few hundred small buffers (headers, JSON,
/// Redis arguments) across worker threads, where glibc's malloc took about a fifth of the proxy's CPU. The
/// `system-alloc` feature leaves it out, for heap profilers.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A priority-scheduling gateway in front of LLM APIs (OpenAI-compatible, LiteLLM config.yaml).
#[derive(Parser, Debug)]
#[command(
    name = "llm-scheduler",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// LiteLLM-style config.yaml.
    #[arg(long, short, env = "LLM_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,

    /// Port to listen on (0 picks a free one; the log line `listening on ...` names it).
    #[arg(long, default_value_t = 4000)]
    port: u16,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,

    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 30.0)]
    grace_period: f64,

    /// Seconds a connection with no request in flight stays open (overrides general_settings.keepalive_timeout;
    /// default 75). LiteLLM's `--keepalive_timeout` is accepted too.
    #[arg(long, alias = "keepalive_timeout", env = "KEEPALIVE_TIMEOUT")]
    keepalive_timeout: Option<f64>,

    /// Threads that serve requests. 1 runs one event loop on one thread; N > 1 a work-stealing pool of N.
    /// Default: 1 on machines with at most 2 cores (there the pool's cross-thread wake-ups cost more than
    /// the second thread brings: about 50 µs per request), else one per core. Scale a Redis-backed
    /// deployment out with replicas.
    #[arg(long, env = "LLM_SCHEDULER_WORKERS")]
    workers: Option<u16>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file and print its model groups (secrets masked).
    CheckConfig {
        /// The config file.
        file: PathBuf,
    },
    /// Manage the virtual keys of a running proxy: generate, list, delete (with the master key).
    Keys(proxy::KeysCommand),
    /// Load-test an OpenAI-compatible endpoint on this machine and print throughput and latency; exits with
    /// status 1 when more requests fail than --max-error-rate allows (by default, any).
    #[cfg(feature = "loadtest")]
    Loadtest(Box<loadtest::LoadtestArgs>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // --workers is the server's; the load generator keeps one thread per core.
    let workers = match cli.command {
        None => cli.workers,
        Some(_) => None,
    };
    if workers == Some(0) {
        eprintln!("error: --workers (LLM_SCHEDULER_WORKERS) must be at least 1");
        return ExitCode::FAILURE;
    }
    let runtime = match build_runtime(workers, cli.command.is_none()) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::CheckConfig { ref file }) => runtime.block_on(check(file)),
        Some(Command::Keys(ref command)) => runtime
            .block_on(proxy::keys_command(command))
            .map(|answer| println!("{answer}"))
            .map_err(anyhow::Error::from),
        #[cfg(feature = "loadtest")]
        Some(Command::Loadtest(ref args)) => runtime
            .block_on(loadtest::run_cli(args))
            .map(drop)
            .map_err(anyhow::Error::from),
        None => runtime.block_on(serve(cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The async runtime with `workers` threads (see [`Cli::workers`]); without a number, the server's default
/// (`serve`) or one per core.
fn build_runtime(workers: Option<u16>, serve: bool) -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let default = if serve && cores <= 2 { 1 } else { cores };
    let workers = workers.map_or(default, usize::from);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

async fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let report = proxy::check_config(file).await?;
    print!("{}", report.text);
    if !report.skipped.is_empty() {
        anyhow::bail!(
            "{} deployment(s) use a provider prefix that is not supported",
            report.skipped.len()
        );
    }
    Ok(())
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let Some(path) = cli.config else {
        anyhow::bail!("no config: pass --config config.yaml (or set LLM_SCHEDULER_CONFIG)");
    };
    let mut config =
        proxy::Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
    if !(cli.grace_period.is_finite() && cli.grace_period >= 0.0) {
        anyhow::bail!("--grace-period must be a non-negative number of seconds");
    }
    config.grace_period = Duration::from_secs_f64(cli.grace_period);
    if let Some(secs) = cli.keepalive_timeout {
        config
            .connections
            .set_keepalive_secs("--keepalive-timeout", secs)?;
    }
    init_tracing(
        cli.log_format == LogFormat::Json || config.json_logs,
        config.verbose,
    );
    let listener = tokio::net::TcpListener::bind((cli.host.as_str(), cli.port))
        .await
        .with_context(|| format!("binding {}:{}", cli.host, cli.port))?;
    proxy::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// `RUST_LOG` when set; else info (debug for the proxy and router with `litellm_settings.set_verbose`).
fn init_tracing(json: bool, verbose: bool) {
    let default = if verbose {
        "info,proxy=debug,router=debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
