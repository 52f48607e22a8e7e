//! host-service: parse → telemetry → crypto provider → runtime → run until
//! SIGTERM/SIGINT (stop: sessions keep running) or the end of a drain.

use std::process::ExitCode;

use berth_common::config::exit;
use berth_common::entry;
use host_service::config::{Cli, Command};
use host_service::daemon::{self, DrainRequest, Exit};
use host_service::Error;

fn main() -> ExitCode {
    let cli: Cli = match entry::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let (_telemetry, runtime) = match entry::start("host-service", &cli.config.common) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Drain) => {
                daemon::request_drain(&cli.config)
                    .await
                    .map(|request| match request {
                        DrainRequest::Marked(host) => {
                            println!("host {host} marked DRAINING; its daemon drains and exits")
                        }
                        DrainRequest::Already(host, status) => {
                            println!("host {host} is already {status}; nothing to do")
                        }
                    })
            }
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
    entry::finish("host-service", result, Error::exit_code)
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
