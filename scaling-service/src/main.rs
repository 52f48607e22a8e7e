//! scaling-service: parse → telemetry → crypto provider → runtime → serve and
//! control regions until SIGTERM/SIGINT.

use std::process::ExitCode;

use berth_common::HostId;
use berth_common::{db, entry};
use scaling_service::config::{Cli, Command, TraceCommand};
use scaling_service::host_api::identity::{issue_for_host, HandStartedHost};
use scaling_service::{demand, deploy, service, Error};

fn main() -> ExitCode {
    let cli: Cli = match entry::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let (_telemetry, runtime) = match entry::start("scaling-service", &cli.config.common) {
        Ok(started) => started,
        Err(code) => return code,
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
                    db::connect(&config.database.database_url, "scaling-service deploy", 1).await?;
                db::prepare_schema(&pool, config.database.migrate).await?;
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
                    db::connect(&config.database.database_url, "scaling-service deploy", 1).await?;
                db::prepare_schema(&pool, config.database.migrate).await?;
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
            Some(Command::HostToken {
                host_id,
                region,
                capacity,
                image_id,
                instance_type,
            }) => {
                let pool =
                    db::connect(&config.database.database_url, "scaling-service host-token", 1)
                        .await?;
                db::prepare_schema(&pool, config.database.migrate).await?;
                let host = HandStartedHost {
                    id: HostId::parse(host_id).map_err(Error::HostId)?,
                    region,
                    image_id,
                    instance_type,
                    capacity,
                };
                let token =
                    issue_for_host(&pool, &host, config.registration_timeout_secs).await?;
                // The token alone on stdout, so a script can capture it.
                println!("{token}");
                eprintln!(
                    "host {}: bootstrap token valid for {} s; start its host-service with BERTH_HOST_TOKEN set to it",
                    host.id, config.registration_timeout_secs
                );
                Ok(())
            }
            Some(Command::Trace(TraceCommand::Export {
                region,
                since,
                output,
            })) => {
                let pool =
                    db::connect(&config.database.database_url, "scaling-service trace", 1).await?;
                db::prepare_schema(&pool, config.database.migrate).await?;
                let trace = demand::export(&pool, &region, since, chrono::Utc::now()).await?;
                write_trace(output.as_deref(), &trace.to_csv())?;
                eprintln!(
                    "region {region}: {} assigns since {since}",
                    trace.arrivals.len()
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
    entry::finish("scaling-service", result, Error::exit_code)
}

/// The trace to `path`, or to standard output.
fn write_trace(path: Option<&std::path::Path>, csv: &str) -> Result<(), Error> {
    use std::io::Write;
    let (result, name) = match path {
        Some(path) => (std::fs::write(path, csv), path.display().to_string()),
        None => (
            std::io::stdout().lock().write_all(csv.as_bytes()),
            "standard output".to_owned(),
        ),
    };
    result.map_err(|source| Error::TraceWrite { path: name, source })
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
