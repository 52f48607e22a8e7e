//! IMDSv2 client, Bottlerocket-style: tokens only (never IMDSv1), the token is
//! cached, refreshed before its TTL runs out and refetched on 401; 404 means
//! "not there" (`None`); every call is bounded in time. The base URL is a
//! parameter so tests and local mode point it at a loopback server.

pub mod server;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::HostId;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// IMDS allows 1..=21600 s.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(21_600);
const ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "invalid IMDS endpoint {0:?}: expected an http:// base URL such as http://169.254.169.254"
    )]
    BadEndpoint(String),
    #[error("instance metadata at {endpoint} refused a session token (HTTP {status}); IMDSv2 is required and IMDSv1 is never used")]
    TokenRefused { endpoint: String, status: u16 },
    #[error("instance metadata at {endpoint} unreachable after {ATTEMPTS} attempts: {source}; on EC2 check the hop limit (≥ 2 from containers), elsewhere set BERTH_IMDS_ENDPOINT or run with BERTH_LOCAL=true")]
    Unreachable {
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("instance metadata {path} answered HTTP {status}")]
    Status { path: String, status: u16 },
    #[error("instance metadata {path} is missing; this does not look like an EC2 instance")]
    Missing { path: String },
    #[error("instance metadata {path} has an invalid value {value:?}: {why}")]
    Invalid {
        path: String,
        value: String,
        why: String,
    },
}

/// Who this instance is, from metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: HostId,
    pub instance_type: String,
    pub region: String,
    pub ami_id: String,
    pub public_ipv4: Option<IpAddr>,
    pub local_ipv4: Option<IpAddr>,
}

#[derive(Debug)]
struct Token {
    value: String,
    refresh_at: Instant,
}

#[derive(Debug)]
pub struct ImdsClient {
    endpoint: String,
    http: reqwest::Client,
    token_ttl: Duration,
    token: Mutex<Option<Token>>,
}

impl ImdsClient {
    pub fn new(endpoint: &str) -> Result<Self, ImdsError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let ok = endpoint.starts_with("http://") && endpoint.len() > "http://".len();
        if !ok {
            return Err(ImdsError::BadEndpoint(endpoint));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            // IMDSv2 rejects proxied token requests; never go through a proxy.
            .no_proxy()
            .build()
            .map_err(|source| ImdsError::Unreachable {
                endpoint: endpoint.clone(),
                source,
            })?;
        Ok(Self {
            endpoint,
            http,
            token_ttl: MAX_TOKEN_TTL,
            token: Mutex::new(None),
        })
    }

    /// Token lifetime to ask for (clamped to 1 s..=6 h).
    pub fn with_token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl.clamp(Duration::from_secs(1), MAX_TOKEN_TTL);
        self
    }

    /// GET a metadata path (e.g. `/latest/meta-data/instance-id`): `None` on 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        // One refetch on 401: the token may have expired or the service restarted.
        for _ in 0..2 {
            let token = self.token().await?;
            let response = self
                .send(|| {
                    self.http
                        .get(format!("{}{path}", self.endpoint))
                        .header(TOKEN_HEADER, &token)
                })
                .await?;
            match response.status().as_u16() {
                200 => {
                    let text = response
                        .text()
                        .await
                        .map_err(|source| self.unreachable(source))?;
                    return Ok(Some(text));
                }
                404 => return Ok(None),
                401 => *self.token.lock().await = None,
                status => {
                    return Err(ImdsError::Status {
                        path: path.to_owned(),
                        status,
                    })
                }
            }
        }
        Err(ImdsError::Status {
            path: path.to_owned(),
            status: 401,
        })
    }

    async fn token(&self) -> Result<String, ImdsError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.value.clone());
        }
        let ttl = self.token_ttl.as_secs().to_string();
        let response = self
            .send(|| {
                self.http
                    .put(format!("{}{TOKEN_PATH}", self.endpoint))
                    .header(TTL_HEADER, &ttl)
            })
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(ImdsError::TokenRefused {
                endpoint: self.endpoint.clone(),
                status,
            });
        }
        let value = response
            .text()
            .await
            .map_err(|source| self.unreachable(source))?;
        if value.is_empty() {
            return Err(ImdsError::TokenRefused {
                endpoint: self.endpoint.clone(),
                status,
            });
        }
        // Refresh with a tenth of the lifetime to spare, so a token never
        // expires between our check and the server's.
        let refresh_at = Instant::now() + self.token_ttl - self.token_ttl / 10;
        *cached = Some(Token {
            value: value.clone(),
            refresh_at,
        });
        Ok(value)
    }

    /// Sends with bounded retries on transport errors and 5xx.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ImdsError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match request().send().await {
                Ok(response) if response.status().is_server_error() && attempt < ATTEMPTS => {}
                Ok(response) => return Ok(response),
                Err(source) if attempt >= ATTEMPTS => return Err(self.unreachable(source)),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt - 1))).await;
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ImdsError {
        ImdsError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    async fn required(&self, path: &str) -> Result<String, ImdsError> {
        let value = self.get(path).await?.ok_or_else(|| ImdsError::Missing {
            path: path.to_owned(),
        })?;
        let value = value.trim();
        let ok =
            !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(ImdsError::Invalid {
                path: path.to_owned(),
                value: value.chars().take(64).collect(),
                why: "expected a short printable value".to_owned(),
            });
        }
        Ok(value.to_owned())
    }

    async fn ip(&self, path: &str) -> Result<Option<IpAddr>, ImdsError> {
        let Some(value) = self.get(path).await? else {
            return Ok(None);
        };
        let value = value.trim();
        value.parse().map(Some).map_err(|_| ImdsError::Invalid {
            path: path.to_owned(),
            value: value.chars().take(64).collect(),
            why: "not an IP address".to_owned(),
        })
    }

    /// Reads the instance's identity: id, type, region, AMI and addresses.
    pub async fn identity(&self) -> Result<InstanceIdentity, ImdsError> {
        const ID: &str = "/latest/meta-data/instance-id";
        let raw_id = self.required(ID).await?;
        let instance_id = HostId::parse(raw_id.clone()).map_err(|e| ImdsError::Invalid {
            path: ID.to_owned(),
            value: raw_id,
            why: e.to_string(),
        })?;
        Ok(InstanceIdentity {
            instance_id,
            instance_type: self.required("/latest/meta-data/instance-type").await?,
            region: self.required("/latest/meta-data/placement/region").await?,
            ami_id: self.required("/latest/meta-data/ami-id").await?,
            public_ipv4: self.ip("/latest/meta-data/public-ipv4").await?,
            local_ipv4: self.ip("/latest/meta-data/local-ipv4").await?,
        })
    }
}
