//! A client of Berth, as a client app would write it: get a session from the
//! scaler with the user's JWT, send json_transport to the host over HTTPS
//! pinned to the fingerprint the scaler returned, use the app, end the session.

use std::time::Duration;

use berth_common::tls;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what}: HTTP {status} {code}: {message}")]
    Api {
        what: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{what}: {source}")]
    Http {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("the scaler's answer lacks {0}")]
    Incomplete(&'static str),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// A session as the scaler hands it out.
#[derive(Debug, Clone, Deserialize)]
pub struct Assigned {
    pub session_id: String,
    pub status: String,
    pub token: Option<String>,
    pub host: AssignedHost,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AssignedHost {
    pub id: String,
    pub ip: Option<String>,
    pub api_port: Option<u16>,
    pub cert_sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Port {
    pub container_port: u16,
    pub protocol: String,
    /// None for a proxy-only port (reached through the host's proxy).
    pub host_port: Option<u16>,
}

impl Port {
    pub fn tcp(&self) -> bool {
        self.protocol == "tcp"
    }

    /// How the port is reached: `8080/tcp→20278`, or `8080/tcp→proxy`.
    pub fn describe(&self) -> String {
        match self.host_port {
            Some(host_port) => format!("{}/{}→{host_port}", self.container_port, self.protocol),
            None => format!("{}/{}→proxy", self.container_port, self.protocol),
        }
    }
}

async fn answer(
    what: &'static str,
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, ClientError> {
    let response = response.map_err(|source| ClientError::Http { what, source })?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(ClientError::Api {
        what,
        status,
        code: body["error"]["code"]
            .as_str()
            .unwrap_or("UNKNOWN")
            .to_owned(),
        message: body["error"]["message"].as_str().unwrap_or("").to_owned(),
    })
}

/// The scaler's API with one user's token.
#[derive(Debug, Clone)]
pub struct ScalerClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ScalerClient {
    pub fn new(base: &str, user_token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: user_token.to_owned(),
            http,
        }
    }

    pub async fn assign(
        &self,
        runtime: &str,
        regions: &[&str],
        client_session_id: Option<&str>,
    ) -> Result<Assigned, ClientError> {
        let body =
            json!({"runtime": runtime, "regions": regions, "client_session_id": client_session_id});
        let value = answer(
            "assign",
            self.http
                .post(format!("{}/sessions", self.base))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await,
        )
        .await?;
        serde_json::from_value(value)
            .map_err(|_| ClientError::Incomplete("session_id, status and host"))
    }

    pub async fn session(&self, id: &str) -> Result<Value, ClientError> {
        answer(
            "session status",
            self.http
                .get(format!("{}/sessions/{id}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await,
        )
        .await
    }

    pub async fn sessions(&self) -> Result<Value, ClientError> {
        answer(
            "listing sessions",
            self.http
                .get(format!("{}/sessions", self.base))
                .bearer_auth(&self.token)
                .send()
                .await,
        )
        .await
    }

    pub async fn delete(&self, id: &str) -> Result<Value, ClientError> {
        answer(
            "ending a session",
            self.http
                .delete(format!("{}/sessions/{id}", self.base))
                .bearer_auth(&self.token)
                .send()
                .await,
        )
        .await
    }

    /// The regions and their buffers: an operator surface, so it takes the
    /// operator token rather than the user's.
    pub async fn regions(&self, operator_token: &str) -> Result<Value, ClientError> {
        answer(
            "listing regions",
            self.http
                .get(format!("{}/regions", self.base))
                .bearer_auth(operator_token)
                .send()
                .await,
        )
        .await
    }
}

/// A host's API, reached only if it presents the certificate the scaler vouched for.
#[derive(Debug, Clone)]
pub struct HostClient {
    base: String,
    http: reqwest::Client,
}

impl HostClient {
    pub fn pinned(host: &AssignedHost) -> Result<Self, ClientError> {
        let ip = host.ip.clone().ok_or(ClientError::Incomplete("host.ip"))?;
        let port = host
            .api_port
            .ok_or(ClientError::Incomplete("host.api_port"))?;
        let pin = host
            .cert_sha256
            .as_deref()
            .ok_or(ClientError::Incomplete("host.cert_sha256"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls::pinned_client_config(pin)?)
            .timeout(Duration::from_secs(90))
            .build()
            .map_err(|source| ClientError::Http {
                what: "building the host client",
                source,
            })?;
        Ok(Self {
            base: format!("https://{ip}:{port}"),
            http,
        })
    }

    /// The pinned HTTP client, for requests this type has no method for.
    pub fn raw(&self) -> &reqwest::Client {
        &self.http
    }

    /// `https://<host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends the session's configuration; answers once the app is ready.
    pub async fn json_transport(
        &self,
        session_id: &str,
        token: &str,
        config: &Value,
    ) -> Result<Vec<Port>, ClientError> {
        let body = json!({"session_id": session_id, "json_data": config.to_string()});
        let value = answer(
            "json_transport",
            self.http
                .put(format!("{}/json_transport", self.base))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await,
        )
        .await?;
        serde_json::from_value(value["ports"].clone()).map_err(|_| ClientError::Incomplete("ports"))
    }

    pub async fn delete(&self, session_id: &str, token: &str) -> Result<Value, ClientError> {
        answer(
            "ending a session on its host",
            self.http
                .delete(format!("{}/sessions/{session_id}", self.base))
                .bearer_auth(token)
                .send()
                .await,
        )
        .await
    }

    pub async fn status(&self, session_id: &str, token: &str) -> Result<Value, ClientError> {
        answer(
            "session status on its host",
            self.http
                .get(format!("{}/sessions/{session_id}", self.base))
                .bearer_auth(token)
                .send()
                .await,
        )
        .await
    }
}

/// A user token signed with a shared HS256 secret (development setups).
pub fn dev_user_token(
    secret: &str,
    user: &str,
    audience: Option<&str>,
    issuer: Option<&str>,
    ttl: Duration,
) -> String {
    let mut claims =
        json!({"sub": user, "exp": chrono::Utc::now().timestamp() + ttl.as_secs() as i64});
    if let Some(aud) = audience {
        claims["aud"] = json!(aud);
    }
    if let Some(iss) = issuer {
        claims["iss"] = json!(iss);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}
