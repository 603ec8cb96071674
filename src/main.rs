use std::path::PathBuf;
use std::process::ExitCode;

use cistern::config::Config;
use cistern::server::Listeners;
use clap::Parser;

/// cistern: a pull-through caching mirror for Docker Hub.
///
/// Point Docker at it with `"registry-mirrors": ["http://HOST:5000"]` in daemon.json, or a
/// dind service with `--registry-mirror http://HOST:5000`. The configuration file uses CNCF
/// Distribution's schema (a registry:2 proxy config works unchanged); every key can be
/// overridden by a REGISTRY_* environment variable, e.g. REGISTRY_PROXY_PASSWORD.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Path of the configuration file (Distribution's config.yml schema).
    #[arg(short, long, default_value = "config.yml", env = "CISTERN_CONFIG")]
    config: PathBuf,
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
