//! The whole system with the browser gateway on: a test CA's wildcard
//! certificate for `*.gw.test` on the gateway's TLS listener, names resolved
//! to loopback by the client (never DNS), and a `desktop` runtime whose
//! default web port is the helper app's (8081: WebSocket echo, streaming,
//! uploads, headers) with busybox httpd's 8080 as a second declared port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_testing::tls_ca::TestCa;
use serde_json::{json, Value};

use super::System;

pub const DOMAIN: &str = "gw.test";

pub struct GatewaySystem {
    pub system: System,
    pub ca: TestCa,
    /// The gateway's TLS listener.
    pub addr: SocketAddr,
    pub certs: PathBuf,
}

impl GatewaySystem {
    /// Two local hosts of two slots, all warm.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With these scaling-service flags too.
    pub async fn start_with(extra: &[&str]) -> Self {
        let ca = TestCa::new("berth gateway test CA").unwrap();
        let certs = std::env::temp_dir().join(format!("berth-gw-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&certs).unwrap();
        let files = ca
            .issue(&[&format!("*.{DOMAIN}"), DOMAIN])
            .unwrap()
            .write_to(&certs, "gateway")
            .unwrap();
        let ports = json!([
            {"container_port": 8081, "protocol": "tcp"},
            {"container_port": 8080, "protocol": "tcp"}
        ]);
        let (cert, key) = (
            files.cert.display().to_string(),
            files.key.display().to_string(),
        );
        let mut flags = vec![
            "--gateway-domain",
            DOMAIN,
            "--gateway-tls-cert",
            &cert,
            "--gateway-tls-key",
            &key,
            "--gateway-addr",
            "127.0.0.1:0",
        ];
        flags.extend_from_slice(extra);
        let system = System::start_with_ports(4, 2, None, &ports, &flags).await;
        let addr = system
            .service
            .as_ref()
            .and_then(|s| s.gateway_addr)
            .expect("the gateway listens with TLS");
        system.warm(2, 4).await;
        Self {
            system,
            ca,
            addr,
            certs,
        }
    }

    /// `https://<label>.gw.test:<port><path>`.
    pub fn url(&self, label: &str, path: &str) -> String {
        format!("https://{label}.{DOMAIN}:{}{path}", self.addr.port())
    }

    /// A client that trusts only the test CA and resolves these labels'
    /// names to the gateway; it keeps no cookies and follows no redirects.
    pub fn client(&self, labels: &[&str]) -> reqwest::Client {
        self.client_via(labels, self.addr)
    }

    /// A client that reaches these labels' names at `gateway` (a replica).
    pub fn client_via(&self, labels: &[&str], gateway: SocketAddr) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.ca_pem().as_bytes()).unwrap(),
            )
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(Duration::from_secs(300));
        for label in labels {
            builder = builder.resolve(&format!("{label}.{DOMAIN}"), gateway);
        }
        builder.build().unwrap()
    }

    /// A login code for the session, asked by its owner with their JWT.
    pub async fn login_code(&self, user: &str, session: &str) -> reqwest::Response {
        let token = berth_tests::client::dev_user_token(
            super::SECRET,
            user,
            None,
            None,
            Duration::from_secs(600),
        );
        reqwest::Client::new()
            .post(format!("{}/sessions/{session}/login-code", self.system.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Logs in to `label` with a fresh code of `user`'s and returns the
    /// cookie pair (`__Host-berth=…`) the gateway set.
    pub async fn log_in(&self, user: &str, label: &str) -> String {
        let session = &label[..36];
        let answer = self.login_code(user, session).await;
        assert_eq!(answer.status(), 201, "login code for {label}");
        let code: Value = answer.json().await.unwrap();
        let code = code["code"].as_str().unwrap();
        let login = self
            .client(&[label])
            .get(self.url(label, &format!("/_berth/login?code={code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200, "login at {label}");
        cookie_pair(&login)
    }

    /// Another control-plane replica as its own process (`binary`), serving
    /// the gateway on its own port; killed when dropped.
    pub async fn replica(
        &self,
        binary: &std::path::Path,
    ) -> (berth_testing::KillOnDrop, SocketAddr) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut argv = self.system.argv[1..].to_vec();
        let at = argv.iter().position(|a| a == "--port").unwrap() + 1;
        argv[at] = "0".into();
        let at = argv.iter().position(|a| a == "--gateway-addr").unwrap() + 1;
        argv[at] = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(binary)
            .args(&argv)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting a gateway replica");
        let replica = berth_testing::KillOnDrop(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        berth_testing::eventually(
            "the replica's gateway to listen",
            Duration::from_secs(30),
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
        (replica, addr)
    }

    /// The client config a WebSocket needs over the gateway's TLS.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(self.ca.ca_pem()) {
            roots.add(cert).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// The scaler's `/metrics` text (operator token).
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/metrics", self.system.url))
            .bearer_auth(berth_testing::OPERATOR_TOKEN)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.system.stop().await;
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

/// The `name=value` of the gateway cookie a response set.
pub fn cookie_pair(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get("set-cookie")
        .expect("a Set-Cookie header")
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().trim().to_owned()
}
