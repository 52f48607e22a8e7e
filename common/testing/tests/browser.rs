//! Self-test of the browser harness: a real headless Chromium loads a
//! `*.gw.test` page from an HTTPS server on loopback whose certificate comes
//! from the test CA, and refuses that page when it does not trust the CA, so
//! trust (not a switched-off check) is what makes later browser tests work.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use berth_testing::browser::{skip_without_browser, Browser, BrowserError, BrowserOptions};
use berth_testing::tls_ca::{Issued, TestCa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GREETING: &str = "hello from a.gw.test over trusted TLS";
const TITLE: &str = "Berth gateway test";
const CONSOLE_PROBE: &str = "berth-console-probe: the page's script ran";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_trusting_the_test_ca_opens_a_gw_test_page_as_a_secure_context(
) -> anyhow::Result<()> {
    if skip_without_browser(
        "a_browser_trusting_the_test_ca_opens_a_gw_test_page_as_a_secure_context",
    ) {
        return Ok(());
    }
    let ca = TestCa::new("Berth browser self-test CA")?;
    let server = GwServer::start(&ca.issue(&["*.gw.test", "gw.test"])?).await?;
    let browser = Browser::start(BrowserOptions {
        trust_ca_pem: Some(ca.ca_pem().to_owned()),
        ..BrowserOptions::default()
    })
    .await?;

    let url = format!("https://a.gw.test:{}/", server.port);
    browser.goto(&url).await?;
    assert_eq!(browser.current_url().await?, url);
    assert_eq!(browser.title().await?, TITLE);
    let page = browser
        .execute(
            "return { greeting: document.getElementById('greeting').textContent, \
                      secure: window.isSecureContext, origin: location.origin };",
            vec![],
        )
        .await?;
    assert_eq!(
        page,
        json!({
            "greeting": GREETING,
            "secure": true,
            "origin": format!("https://a.gw.test:{}", server.port),
        })
    );

    // The page's own fetch goes to the same origin: what a web app does.
    let answer = browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             fetch('/api/ping').then(r => r.json()).then(done, e => done({ error: String(e) }));",
            vec![],
        )
        .await?;
    assert_eq!(
        answer,
        json!({ "pong": true, "host": format!("a.gw.test:{}", server.port) })
    );

    let errors = browser.console_errors().await?;
    assert!(
        errors.iter().any(|e| e.contains(CONSOLE_PROBE)),
        "the page's console.error is not among the console errors: {errors:?}"
    );

    let shot = browser
        .screenshot("browser-self-test/trusted-a.gw.test.png")
        .await?;
    let png = std::fs::read(&shot).with_context(|| format!("reading {}", shot.display()))?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is not a PNG of the page",
        shot.display()
    );

    // Names outside the resolver rules never reach DNS.
    let elsewhere = browser.goto("https://example.com/").await;
    assert!(
        matches!(&elsewhere, Err(BrowserError::WebDriver { message, .. }) if message.contains("ERR_NAME_NOT_RESOLVED")),
        "example.com should not resolve inside the test browser: {elsewhere:?}"
    );

    browser.quit().await?;
    assert_eq!(server.paths(), ["/", "/api/ping"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_without_the_test_ca_refuses_the_gw_test_certificate() -> anyhow::Result<()> {
    if skip_without_browser("a_browser_without_the_test_ca_refuses_the_gw_test_certificate") {
        return Ok(());
    }
    let ca = TestCa::new("Berth browser self-test CA")?;
    let server = GwServer::start(&ca.issue(&["*.gw.test", "gw.test"])?).await?;
    let browser = Browser::start(BrowserOptions::default()).await?;

    let url = format!("https://a.gw.test:{}/", server.port);
    let loaded = browser.goto(&url).await;
    let shown = browser
        .execute(
            "return { text: document.body ? document.body.innerText : '', \
                      secure: window.isSecureContext };",
            vec![],
        )
        .await?;
    browser
        .screenshot("browser-self-test/untrusted-a.gw.test.png")
        .await?;
    // Chromium shows its interstitial in place of the page; chromedriver
    // reports the navigation itself as done.
    assert!(loaded.is_ok(), "loading the interstitial: {loaded:?}");
    assert_eq!(browser.title().await?, "Privacy error");
    let text = shown["text"].as_str().unwrap_or("");
    assert!(
        text.contains("ERR_CERT_AUTHORITY_INVALID") && !text.contains(GREETING),
        "a browser that does not trust the CA should show the certificate interstitial: {shown}"
    );
    assert_eq!(shown["secure"], json!(false));
    browser.quit().await?;
    assert_eq!(
        server.paths(),
        Vec::<String>::new(),
        "the server answered HTTP requests over a certificate the browser should have refused"
    );
    Ok(())
}

/// An HTTPS server on 127.0.0.1 for `*.gw.test`: `/` is a page, `/api/ping`
/// JSON; it records the path of every request it answers.
struct GwServer {
    port: u16,
    paths: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl GwServer {
    async fn start(issued: &Issued) -> anyhow::Result<Self> {
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("parsing the issued certificate")?;
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
            .context("parsing the issued key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let paths = Arc::new(Mutex::new(vec![]));
        let recorded = paths.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let exchange = async {
                        let tls = acceptor.accept(tcp).await?;
                        respond(tls, &recorded).await
                    };
                    // A browser may open a connection it never uses.
                    let _ = tokio::time::timeout(Duration::from_secs(10), exchange).await;
                });
            }
        });
        Ok(Self { port, paths, task })
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

impl Drop for GwServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP/1.1 request, then the connection closes.
async fn respond(
    mut stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    recorded: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let host = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        })
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let (status, content_type, body) = match path.as_str() {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><title>{TITLE}</title></head><body>\
                 <h1 id=\"greeting\">{GREETING}</h1>\
                 <script>console.error({CONSOLE_PROBE:?});</script></body></html>"
            ),
        ),
        "/api/ping" => (
            "200 OK",
            "application/json",
            json!({ "pong": true, "host": host }).to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found".to_owned()),
    };
    if status.starts_with("200") {
        if let Ok(mut paths) = recorded.lock() {
            paths.push(path);
        }
    }
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
