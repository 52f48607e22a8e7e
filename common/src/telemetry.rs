//! Logs and error reports. Call [`init`] before building the tokio runtime:
//! Sentry hubs are per thread, and worker threads inherit the main hub only
//! if it exists when they are spawned.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps Sentry alive; dropping it flushes pending reports (bounded, ~2 s).
pub struct TelemetryGuard {
    _sentry: Option<sentry::ClientInitGuard>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("sentry", &self._sentry.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "invalid log filter {filter:?}: {source}; use e.g. `info` or `info,host_service=debug`"
    )]
    Filter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("invalid SENTRY_DSN: {0}")]
    Dsn(String),
}

pub fn init(
    service: &'static str,
    environment: &str,
    filter: &str,
    format: LogFormat,
    sentry_dsn: Option<&str>,
) -> Result<TelemetryGuard, TelemetryError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    })?;
    let fmt = match format {
        // Colour only for a person at a terminal: journald, files and pipes get
        // plain text (the log goes to stdout).
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(true)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let sentry_guard = match sentry_dsn.filter(|d| !d.is_empty()) {
        Some(dsn) => {
            let dsn = dsn
                .parse::<sentry::types::Dsn>()
                .map_err(|e| TelemetryError::Dsn(e.to_string()))?;
            Some(sentry::init(sentry::ClientOptions {
                dsn: Some(dsn),
                release: Some(format!("{service}@{}", env!("CARGO_PKG_VERSION")).into()),
                environment: Some(environment.to_owned().into()),
                attach_stacktrace: true,
                ..Default::default()
            }))
        }
        None => None,
    };
    let sentry_layer = sentry_guard
        .as_ref()
        .map(|_| sentry::integrations::tracing::layer());
    // Ignore "already set": tests initialise telemetry more than once.
    let _ = tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt)
        .with(sentry_layer)
        .try_init();
    sentry::configure_scope(|scope| scope.set_tag("service", service));
    Ok(TelemetryGuard {
        _sentry: sentry_guard,
    })
}

/// Reports a fatal error to Sentry (when enabled) and waits briefly for it to
/// leave, so a death notice is not lost with the process.
pub fn report_fatal(message: &str) {
    tracing::error!(fatal = true, "{message}");
    sentry::capture_message(message, sentry::Level::Fatal);
    if let Some(client) = sentry::Hub::current().client() {
        client.flush(Some(std::time::Duration::from_secs(2)));
    }
}
