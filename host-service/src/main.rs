//! host-service: parse → telemetry → crypto provider → runtime → run until
//! SIGTERM/SIGINT (stop: sessions keep running) or the end of a drain.

use std::process::ExitCode;

use berth_common::config::exit;
use berth_common::{telemetry, tls};
use clap::Parser;
use host_service::config::{Cli, Command};
use host_service::daemon::{self, Exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE as u8);
        }
    };
    let common = &cli.config.common;
    let _telemetry = match telemetry::init(
        "host-service",
        &common.environment,
        &common.log_filter,
        common.log_format,
        common.sentry_dsn.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("host-service: {e}");
            return ExitCode::from(exit::CONFIG as u8);
        }
    };
    tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::report_fatal(&format!("starting the async runtime: {e}"));
            return ExitCode::from(exit::RUNTIME as u8);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Drain) => daemon::request_drain(&cli.config).await.map(|moved| {
                if moved {
                    println!("host marked DRAINING; the daemon drains and exits");
                } else {
                    println!("host was not ACTIVE; nothing to do");
                }
            }),
            Some(Command::Run) | None => {
                let daemon = daemon::start(cli.config).await?;
                match daemon.run_until(stop_signal()).await {
                    Exit::Stopped => tracing::info!("stopped"),
                    Exit::Drained => tracing::info!("drained"),
                }
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.exit_code() == 0 => {
            eprintln!("host-service: {e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            telemetry::report_fatal(&format!("host-service: {e}"));
            eprintln!("host-service: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The first SIGTERM or SIGINT stops gracefully; a second one exits at once.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("host-service: second signal; exiting now");
        std::process::exit(exit::RUNTIME);
    });
}
