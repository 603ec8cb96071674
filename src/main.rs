use std::path::PathBuf;
use std::process::ExitCode;

use cistern::config::Config;
use cistern::server::Listeners;
use clap::Parser;

/// cistern: a pull-through caching mirror for Docker Hub and the other registries a fleet pulls from.
///
/// Point Docker at it with `"registry-mirrors": ["http://HOST:5000"]` in daemon.json, or a
/// dind service with `--registry-mirror http://HOST:5000`. The configuration file uses CNCF
/// Distribution's schema (a registry:2 proxy config works unchanged); every key can be
/// overridden by a REGISTRY_* environment variable, e.g. REGISTRY_PROXY_PASSWORD.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Path of the configuration file (Distribution's config.yml schema).
    #[arg(
        short,
        long,
        default_value = "config.yml",
        env = "CISTERN_CONFIG",
        global = true
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Evicts least recently pulled images until the cache is within its budget, on the
    /// configuration's storage, and prints what went and why. Safe beside a running mirror.
    Gc {
        /// Print what would be evicted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Evict down to this size (e.g. 40GiB) instead of cache.maxsize's low watermark.
        #[arg(long)]
        target: Option<String>,
    },
    /// Asks the running mirror (its debug listener, with admin.token from this configuration)
    /// to fetch images now, and prints each one's outcome. Images are name:tag or
    /// name:pattern (node:20-*), as arguments or one per line from a file (`-f -` reads
    /// stdin, e.g. `docker compose config --images | cistern prewarm -f -`).
    Prewarm {
        images: Vec<String>,
        /// Read images from this file, one per line (`-`: standard input).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// The mirror's debug listener (default: http.debug.addr on this host).
        #[arg(long)]
        url: Option<String>,
    },
}

fn main() -> ExitCode {
    cistern::memory::keep_freed_memory();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cistern: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match Config::load(&cli.config, std::env::vars()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cistern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = loaded.config;
    match cli.command {
        Some(Command::Gc { dry_run, target }) => {
            return gc(&config, dry_run, target.as_deref()).await
        }
        Some(Command::Prewarm { images, file, url }) => {
            return prewarm(&config, images, file, url.as_deref()).await
        }
        None => {}
    }
    cistern::telemetry::init_logging(&config.log);
    for warning in loaded.warnings {
        tracing::warn!("{warning}");
    }
    if let Some((before, after)) = cistern::server::raise_open_file_limit() {
        tracing::info!(
            before,
            after,
            "raised the open-file limit to its hard limit"
        );
    }
    let listeners = match Listeners::bind(&config.http).await {
        Ok(listeners) => listeners,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match cistern::serve(&config, listeners, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `cistern gc`: the report goes to stdout, errors to stderr.
async fn gc(config: &Config, dry_run: bool, target: Option<&str>) -> ExitCode {
    let target = match target.map(|t| (t, cistern::config::parse_bytes(t))) {
        Some((_, Some(bytes))) => Some(bytes),
        Some((written, None)) => {
            eprintln!("cistern gc: --target {written:?} is not a size such as 40GiB");
            return ExitCode::FAILURE;
        }
        None => None,
    };
    match cistern::gc(config, dry_run, target).await {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cistern gc: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cistern prewarm`: progress to stdout, errors to stderr; fails when any image failed.
async fn prewarm(
    config: &Config,
    mut images: Vec<String>,
    file: Option<PathBuf>,
    url: Option<&str>,
) -> ExitCode {
    if let Some(file) = file {
        let read = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(&file)
        };
        match read {
            Ok(text) => images.extend(text.lines().map(str::to_owned)),
            Err(e) => {
                eprintln!("cistern prewarm: cannot read {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    match cistern::warm_now::warm_now(config, images.join("\n"), url).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cistern prewarm: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
