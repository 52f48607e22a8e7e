//! scaling-service: parse → telemetry → crypto provider → runtime → serve and
//! control regions until SIGTERM/SIGINT.

use std::process::ExitCode;

use berth_common::config::exit;
use berth_common::{db, telemetry, tls};
use clap::Parser;
use scaling_service::config::{Cli, Command};
use scaling_service::{deploy, service, Error};

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
        "scaling-service",
        &common.environment,
        &common.log_filter,
        common.log_format,
        common.sentry_dsn.as_deref(),
    ) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("scaling-service: {e}");
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
    let result: Result<(), Error> = runtime.block_on(async {
        let config = cli.config;
        match cli.command {
            Some(Command::DeployStart {
                region,
                image_id,
                client_sha,
            }) => {
                let pool =
                    db::connect(&config.common.database_url, "scaling-service deploy", 1).await?;
                db::migrate(&pool).await?;
                let id = deploy::start(
                    &pool,
                    &region,
                    &image_id,
                    &client_sha,
                    config.deploy_timeout(),
                )
                .await?;
                println!("deploy {id} started: region {region} → image {image_id}");
                Ok(())
            }
            Some(Command::DeployRelease { region }) => {
                let pool =
                    db::connect(&config.common.database_url, "scaling-service deploy", 1).await?;
                deploy::release(&pool, &region).await?;
                println!("region {region}: release signal given");
                Ok(())
            }
            Some(Command::LocalCleanup) => {
                let removed = scaling_service::provider::local::remove_all(
                    &config.local_dir,
                    &config.common.environment,
                );
                println!(
                    "stopped {removed} local hosts of environment {}",
                    config.common.environment
                );
                Ok(())
            }
            Some(Command::Run) | None => {
                let service = service::start(config).await?;
                service.run_until(stop_signal()).await;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::report_fatal(&format!("scaling-service: {e}"));
            eprintln!("scaling-service: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
