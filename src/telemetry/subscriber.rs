//! The tracing subscriber, from Distribution's `log.level` and `log.formatter`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the process-wide subscriber. `RUST_LOG` wins over `log.level`, for debugging one
/// module.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("cistern={}", config.level)));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.format {
        // One JSON object per line, for log shippers; span fields (the request id) included.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        // Colours only on a terminal: log files and journald get plain text.
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}
