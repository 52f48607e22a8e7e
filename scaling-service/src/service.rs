//! Start and stop: connect, migrate, pick the provider, serve the API and run
//! the region controllers until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_common::db;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::{Config, ProviderKind};
use crate::keys::ControlKeys;
use crate::policy::BufferPolicy;
use crate::provider::aws::AwsProvider;
use crate::provider::local::{LocalProvider, LocalSettings};
use crate::provider::Provider;
use crate::scaler::Scaler;
use crate::{api, controller, gateway, host_api, Error};

#[derive(Debug)]
pub struct Service {
    pub scaler: Arc<Scaler>,
    pub addr: SocketAddr,
    /// The gateway's TLS listener, when it has one.
    pub gateway_addr: Option<SocketAddr>,
}

pub async fn start(config: Config) -> Result<Service, Error> {
    let provider: Arc<dyn Provider> = match config.provider {
        ProviderKind::Aws => Arc::new(AwsProvider::new(config.ec2_endpoint.clone()).await),
        ProviderKind::Local => Arc::new(LocalProvider::new(LocalSettings::of(&config))?),
    };
    start_with_provider(config, provider).await
}

/// Starts with a given provider (tests put a fault-injecting one in front).
pub async fn start_with_provider(
    mut config: Config,
    provider: Arc<dyn Provider>,
) -> Result<Service, Error> {
    let auth = Authenticator::from_config(&config)?;
    if config.control_url.is_none()
        && config.provider == crate::config::ProviderKind::Aws
        && !berth_common::config::is_development(&config.common.environment)
    {
        return Err(Error::NoControlUrl);
    }
    if let Some(path) = &config.user_data_file {
        std::fs::read_to_string(path).map_err(|source| Error::UserData {
            path: path.clone(),
            source,
        })?;
    }
    if config.gateway_tls_cert.is_some() && config.gateway_domain.is_none() {
        return Err(Error::GatewayWithoutDomain);
    }
    let gateway_cert = match (&config.gateway_tls_cert, &config.gateway_tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(gateway::tls::ReloadingCert::load(cert, key)?)),
        _ => None,
    };
    let pool = db::connect(&config.database.database_url, "scaling-service", 32).await?;
    db::prepare_schema(&pool, config.database.migrate).await?;
    let keys = Arc::new(ControlKeys::load_or_create(&pool).await?);
    let gateway_listener = match &gateway_cert {
        Some(_) => {
            let addr = config.gateway_addr;
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::GatewayBind { addr, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| Error::GatewayBind { addr, source })?;
            Some((listener, bound))
        }
        None => None,
    };
    let addr = SocketAddr::new(config.listen_ip, config.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    if config.control_url.is_none() {
        let ip = match addr.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        config.control_url = Some(format!("http://{}", SocketAddr::new(ip, addr.port())));
    }
    let scaler = Arc::new(Scaler::new(
        config,
        pool,
        provider,
        Arc::new(BufferPolicy),
        auth,
        keys,
    ));
    scaler.tasks.spawn(api::serve(scaler.clone(), listener));
    let mut gateway_addr = None;
    if let (Some(gateway), Some(cert), Some((listener, bound))) =
        (&scaler.gateway, gateway_cert, gateway_listener)
    {
        gateway.set_public_port(scaler.config.gateway_public_port.unwrap_or(bound.port()));
        let tls = Arc::new(cert.server_config()?);
        scaler.tasks.spawn(cert.clone().watch(scaler.stop.clone()));
        scaler
            .tasks
            .spawn(gateway::serve_tls(scaler.clone(), listener, tls));
        tracing::info!(addr = %bound, domain = gateway.domain, "browser gateway serving");
        gateway_addr = Some(bound);
    } else if let Some(gateway) = &scaler.gateway {
        if let Some(port) = scaler.config.gateway_public_port {
            gateway.set_public_port(port);
        }
        tracing::info!(
            domain = gateway.domain,
            "browser gateway serving on the API listener (TLS in front)"
        );
    }
    scaler.tasks.spawn(controller::supervise(scaler.clone()));
    scaler.tasks.spawn(host_api::watch::run(scaler.clone()));
    scaler.tasks.spawn(crate::hints::publish(scaler.clone()));
    scaler.tasks.spawn(host_api::heartbeats::run(
        scaler.heartbeats.clone(),
        scaler.db.clone(),
        scaler.stop.clone(),
    ));
    scaler.tasks.spawn(crate::audit::run(
        scaler.audit.clone(),
        scaler.db.clone(),
        scaler.stop.clone(),
    ));
    scaler
        .tasks
        .spawn(crate::operator::history::run(scaler.clone()));
    scaler.tasks.spawn(crate::evidence::watch_database(
        scaler.evidence.clone(),
        scaler.db.clone(),
        scaler.stop.clone(),
    ));
    tracing::info!(%addr, "scaling-service serving");
    Ok(Service {
        scaler,
        addr,
        gateway_addr,
    })
}

impl Service {
    pub async fn run_until(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.scaler.stop.cancelled() => {}
        }
        self.stop().await
    }

    pub async fn stop(self) {
        self.scaler.stop.cancel();
        self.scaler.tasks.close();
        if tokio::time::timeout(Duration::from_secs(30), self.scaler.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not finish within the stop grace");
        }
    }
}
