//! What every Berth binary's `main` does around its own work: parse flags
//! (help → 0, usage error → 64), start telemetry (bad settings → 78), install
//! the rustls crypto provider, build the runtime, and turn the outcome into an
//! exit code with a death notice to Sentry on failure.

use std::fmt::Display;
use std::process::ExitCode;

use crate::config::{exit, CommonArgs};
use crate::telemetry::{self, TelemetryGuard};

/// Parses the command line; on `--help`/`--version` or a usage error, prints
/// and returns the exit code to end with.
pub fn parse<C: clap::Parser>() -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(exit::USAGE as u8)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Telemetry (before the runtime: Sentry hubs are per thread), the crypto
/// provider, then a multi-threaded runtime.
pub fn start(
    service: &'static str,
    common: &CommonArgs,
) -> Result<(TelemetryGuard, tokio::runtime::Runtime), ExitCode> {
    let guard = telemetry::init(
        service,
        &common.environment,
        &common.log_filter,
        common.log_format,
        common.sentry_dsn.as_deref(),
    )
    .map_err(|e| {
        eprintln!("{service}: {e}");
        ExitCode::from(exit::CONFIG as u8)
    })?;
    crate::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            telemetry::report_fatal(&format!("{service}: starting the async runtime: {e}"));
            ExitCode::from(exit::RUNTIME as u8)
        })?;
    Ok((guard, runtime))
}

/// The exit code for `result`; failures are reported (Sentry + stderr)
/// unless their code is 0 (an expected end, such as a host that is over).
pub fn finish<E: Display>(
    service: &str,
    result: Result<(), E>,
    exit_code: impl Fn(&E) -> i32,
) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if exit_code(&e) == 0 => {
            eprintln!("{service}: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            telemetry::report_fatal(&format!("{service}: {e}"));
            eprintln!("{service}: {e}");
            ExitCode::from(exit_code(&e).clamp(1, 255) as u8)
        }
    }
}
