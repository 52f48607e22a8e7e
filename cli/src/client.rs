//! The control plane's operator API over HTTP(S): one request, its JSON
//! answer, or the API's typed error as the server gave it.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the control plane URL {0:?} is not an http(s) URL; pass e.g. --url https://berth.example.com")]
    BadUrl(String),
    #[error("refusing to send the operator credential in clear text to {0}: use https:// (plain http is only for loopback)")]
    Cleartext(String),
    #[error("no operator credential: pass --token or set BERTH_OPERATOR_TOKEN (the operator token or an operator's JWT)")]
    NoToken,
    #[error("cannot reach the control plane at {url}: {source}; check --url and that scaling-service runs")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the control plane answered {status} with a body that is not the API's JSON; is {url} a Berth control plane?")]
    NotJson { status: u16, url: String },
}

#[derive(Debug)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(url: &str, token: Option<&str>) -> Result<Self, ClientError> {
        let base = url.trim_end_matches('/').to_owned();
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| ClientError::BadUrl(url.to_owned()))?;
        if base.starts_with("http://") && !is_loopback(rest) {
            return Err(ClientError::Cleartext(base));
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoToken)?
            .to_owned();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: base.clone(),
                source,
            })?;
        Ok(Self { base, token, http })
    }

    /// `method path` with an optional JSON body; the answer's JSON.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let value: Value = serde_json::from_str(&text).map_err(|_| ClientError::NotJson {
            status,
            url: self.base.clone(),
        })?;
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let error = &value["error"];
        Err(ClientError::Api {
            status,
            code: error["code"].as_str().unwrap_or("UNKNOWN").to_owned(),
            message: error["message"].as_str().unwrap_or("").to_owned(),
        })
    }
}

fn is_loopback(authority: &str) -> bool {
    let host = authority.split('/').next().unwrap_or("");
    let name = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(Client::new("http://127.0.0.1:8080", Some("t")).is_ok());
        assert!(Client::new("http://localhost:8080/", Some("t")).is_ok());
        assert!(Client::new("http://[::1]:8080", Some("t")).is_ok());
        assert!(matches!(
            Client::new("http://berth.example.com", Some("t")),
            Err(ClientError::Cleartext(_))
        ));
        assert!(Client::new("https://berth.example.com", Some("t")).is_ok());
        assert!(matches!(
            Client::new("ftp://x", Some("t")),
            Err(ClientError::BadUrl(_))
        ));
        assert!(matches!(
            Client::new("https://x", None),
            Err(ClientError::NoToken)
        ));
    }
}
