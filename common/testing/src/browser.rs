//! A real browser for end-to-end tests: Debian's headless Chromium driven
//! through chromedriver's W3C WebDriver HTTP API. Each [`Browser`] has a HOME
//! of its own whose NSS database trusts the test CA (the way a user's machine
//! trusts a corporate root; certificate checks stay on), resolves hostnames
//! only by its `--host-resolver-rules` (e.g. `*.gw.test` to 127.0.0.1, never
//! real DNS), and is killed with its chromedriver when dropped.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use reqwest::Method;
use serde_json::{json, Value};

const INSTALL_HINT: &str =
    "apt-get install chromium chromium-driver libnss3-tools, or run scripts/setup";
/// The tools a browser test needs, by the name it is found under on PATH.
const TOOLS: [&str; 3] = ["chromium", "chromedriver", "certutil"];
/// Nickname of the test CA in the NSS database.
const CA_NICKNAME: &str = "berth-test-ca";
/// Page loads and scripts the page itself bounds; a test waiting longer is
/// stuck, not slow.
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Every call to chromedriver: the page-load or script bound plus margin.
const HTTP_TIMEOUT: Duration = Duration::from_secs(45);
/// Chromium's first start on a cold 2-core machine takes a few seconds.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(20);
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;
/// What `MAP * ~NOTFOUND` leaves alone: loopback by name and IPv4 address
/// (the rules match IP literals too).
const LOOPBACK_EXCLUDES: &str = "EXCLUDE localhost, EXCLUDE 127.0.0.1";
/// The key of an element reference in W3C WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Times [`Browser::click`] finds an element again that the page replaced.
const STALE_RETRIES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("{0} not found on PATH: {INSTALL_HINT}")]
    MissingTools(String),
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certutil {args} {outcome}: {output}; is libnss3-tools installed and {dir} writable?")]
    Certutil {
        args: String,
        outcome: String,
        output: String,
        dir: PathBuf,
    },
    #[error("chromedriver exited ({status}) before it was ready; its log ends:\n{log}")]
    DriverExited { status: String, log: String },
    #[error(
        "chromedriver on 127.0.0.1:{port} was not ready after {waited:?}; its log ends:\n{log}"
    )]
    DriverNotReady {
        port: u16,
        waited: Duration,
        log: String,
    },
    #[error("Chromium did not start ({message}); check `{binary} --headless=new --no-sandbox --dump-dom about:blank` works; chromedriver's log ends:\n{log}")]
    SessionNotCreated {
        binary: String,
        message: String,
        log: String,
    },
    #[error("{what}: no answer from chromedriver: {source}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// chromedriver answered with a WebDriver error, e.g. `unknown error`
    /// with `net::ERR_CERT_AUTHORITY_INVALID` for a page it could not load.
    #[error("{what}: chromedriver answered {error}: {message}")]
    WebDriver {
        what: String,
        error: String,
        message: String,
    },
    #[error("{what}: unexpected answer from chromedriver: {answer}")]
    Protocol { what: String, answer: String },
    /// [`Browser::wait_for`]'s condition still did not hold.
    #[error("{what}: not so after {waited:?}; the page last answered {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

/// How to start a [`Browser`].
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// PEM of a CA the browser trusts for websites; `None`: an empty trust
    /// store of its own, so a test CA's certificates are refused.
    pub trust_ca_pem: Option<String>,
    /// Chromium's `--host-resolver-rules`, e.g. `MAP *.gw.test 127.0.0.1`.
    /// Every other hostname but `localhost` fails to resolve: the browser
    /// never asks real DNS. Loopback addresses (`http://127.0.0.1:…`) are
    /// reached as they are.
    pub host_resolver_rules: String,
    /// Where relative screenshot paths go, and chromedriver's log when a
    /// test panics.
    pub artifacts_dir: PathBuf,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        Self {
            trust_ca_pem: None,
            host_resolver_rules: "MAP *.gw.test 127.0.0.1".to_owned(),
            artifacts_dir: default_artifacts_dir(),
        }
    }
}

/// `target/test-artifacts` of this workspace: kept after the run for a
/// human (or CI) to look at.
pub fn default_artifacts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts")
}

/// The tools browser tests need that are not on PATH (empty: all there).
pub fn missing_tools() -> Vec<&'static str> {
    TOOLS
        .into_iter()
        .filter(|tool| find_on_path(tool).is_none())
        .collect()
}

/// For a test to call first: `true` (and a loud SKIPPED line on stderr
/// saying what to install) when a browser cannot run here.
pub fn skip_without_browser(test: &str) -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: {} not found on PATH; {INSTALL_HINT}",
        missing.join(", ")
    );
    true
}

/// A headless Chromium with one WebDriver session.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: Option<String>,
    /// chromedriver, leader of a process group Chromium's processes join.
    driver: Option<Child>,
    /// HOME, profile and logs of this browser; removed on drop.
    root: PathBuf,
    driver_log: PathBuf,
    artifacts_dir: PathBuf,
}

impl Browser {
    /// Starts chromedriver and Chromium and opens a session.
    pub async fn start(options: BrowserOptions) -> Result<Browser, BrowserError> {
        let missing = missing_tools();
        if !missing.is_empty() {
            return Err(BrowserError::MissingTools(missing.join(", ")));
        }
        let chromium =
            find_on_path("chromium").unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        let root = std::env::temp_dir().join(format!(
            "berth-browser-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            // An HTTP(S)_PROXY in the environment must not carry loopback calls.
            .no_proxy()
            .build()
            .map_err(|source| BrowserError::Http {
                what: "building the HTTP client for chromedriver".to_owned(),
                source,
            })?;
        // From here on, dropping `browser` cleans up whatever was made.
        let mut browser = Browser {
            http,
            base: String::new(),
            session: None,
            driver: None,
            driver_log: root.join("chromedriver.log"),
            root,
            artifacts_dir: options.artifacts_dir.clone(),
        };
        let home = browser.root.join("home");
        let profile = browser.root.join("profile");
        for dir in [&home, &profile] {
            fs::create_dir_all(dir).map_err(|source| BrowserError::Io {
                doing: format!("creating {}", dir.display()),
                source,
            })?;
        }
        make_nss_db(&browser.root, &home, options.trust_ca_pem.as_deref()).await?;
        let port = browser.spawn_driver(&home)?;
        browser.base = format!("http://127.0.0.1:{port}");
        browser.wait_until_ready(port).await?;
        browser
            .create_session(&chromium, &profile, &options.host_resolver_rules)
            .await?;
        Ok(browser)
    }

    fn spawn_driver(&mut self, home: &Path) -> Result<u16, BrowserError> {
        let port = free_port()?;
        let log = fs::File::create(&self.driver_log).map_err(|source| BrowserError::Io {
            doing: format!("creating {}", self.driver_log.display()),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| BrowserError::Io {
            doing: format!("opening {} twice", self.driver_log.display()),
            source,
        })?;
        let mut command = Command::new("chromedriver");
        command
            .arg(format!("--port={port}"))
            .arg("--log-level=INFO")
            // Chromium reads the NSS database under $HOME/.pki; chromedriver
            // passes its environment on.
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Its own group, which Chromium's processes inherit: killing the
            // group on drop leaves no browser behind.
            .process_group(0);
        let child = command.spawn().map_err(|source| BrowserError::Io {
            doing: format!("starting chromedriver ({INSTALL_HINT})"),
            source,
        })?;
        self.driver = Some(child);
        Ok(port)
    }

    async fn wait_until_ready(&mut self, port: u16) -> Result<(), BrowserError> {
        let started = Instant::now();
        let status_url = format!("{}/status", self.base);
        loop {
            if let Some(driver) = self.driver.as_mut() {
                if let Ok(Some(status)) = driver.try_wait() {
                    return Err(BrowserError::DriverExited {
                        status: status.to_string(),
                        log: self.log_tail(),
                    });
                }
            }
            let answer = self
                .http
                .get(&status_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(response) = answer {
                if let Ok(body) = response.json::<Value>().await {
                    if body["value"]["ready"] == Value::Bool(true) {
                        return Ok(());
                    }
                }
            }
            if started.elapsed() > DRIVER_READY_TIMEOUT {
                return Err(BrowserError::DriverNotReady {
                    port,
                    waited: started.elapsed(),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_session(
        &mut self,
        chromium: &Path,
        profile: &Path,
        host_resolver_rules: &str,
    ) -> Result<(), BrowserError> {
        let rules = if host_resolver_rules.trim().is_empty() {
            format!("MAP * ~NOTFOUND, {LOOPBACK_EXCLUDES}")
        } else {
            format!("{host_resolver_rules}, MAP * ~NOTFOUND, {LOOPBACK_EXCLUDES}")
        };
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": false,
                    "pageLoadStrategy": "normal",
                    "timeouts": {
                        "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64,
                        "script": SCRIPT_TIMEOUT.as_millis() as u64,
                        "implicit": 0,
                    },
                    "goog:chromeOptions": {
                        "binary": chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            format!("--user-data-dir={}", profile.display()),
                            format!("--host-resolver-rules={rules}"),
                            "--no-proxy-server",
                            "--no-first-run",
                            "--disable-component-update",
                            "--window-size=1280,900",
                        ],
                    },
                    "goog:loggingPrefs": { "browser": "ALL" },
                }
            }
        });
        let url = format!("{}/session", self.base);
        let answer = self
            .http
            .post(&url)
            .timeout(SESSION_TIMEOUT)
            .json(&capabilities)
            .send()
            .await;
        let what = "creating a WebDriver session".to_owned();
        let value = match read_answer(&what, answer).await {
            Ok(value) => value,
            Err(BrowserError::WebDriver { message, .. }) => {
                return Err(BrowserError::SessionNotCreated {
                    binary: chromium.display().to_string(),
                    message,
                    log: self.log_tail(),
                })
            }
            Err(other) => return Err(other),
        };
        let session = value["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Protocol {
                what,
                answer: value.to_string(),
            })?;
        self.session = Some(session.to_owned());
        Ok(())
    }

    /// Navigates to `url` and waits for the page to load (at most 30 s).
    /// A page Chromium cannot load (refused connection, certificate error)
    /// is a [`BrowserError::WebDriver`] whose message names the net error.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.command(
            Method::POST,
            "/url",
            Some(json!({ "url": url })),
            &format!("loading {url}"),
        )
        .await
        .map(drop)
    }

    pub async fn current_url(&self) -> Result<String, BrowserError> {
        self.string(Method::GET, "/url", "reading the current URL")
            .await
    }

    pub async fn title(&self) -> Result<String, BrowserError> {
        self.string(Method::GET, "/title", "reading the page title")
            .await
    }

    /// Runs `script` as a function body in the page (`arguments[i]` are
    /// `args`) and returns what it returns, as JSON.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, BrowserError> {
        self.command(
            Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
            &format!("running script {}", abbreviate(script)),
        )
        .await
    }

    /// Runs `script` with a callback appended to `args`
    /// (`arguments[arguments.length - 1]`); returns what the script passes
    /// it, or a `script timeout` error after 30 s.
    pub async fn execute_async(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        self.command(
            Method::POST,
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
            &format!("running async script {}", abbreviate(script)),
        )
        .await
    }

    /// Runs `script` (as [`execute`](Self::execute) does) every 100 ms until
    /// it returns something other than `null`, `false`, `0` or `""`, and
    /// returns that; a [`BrowserError::Timeout`] naming the last answer after
    /// `timeout`. For what a page shows once something it cannot announce
    /// to WebDriver has happened (a server push, a redirect). A WebDriver
    /// error (a script run mid-navigation) counts as not yet.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        let started = Instant::now();
        loop {
            let last = match self.execute(script, args.clone()).await {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => value.to_string(),
                Err(error @ BrowserError::WebDriver { .. }) => error.to_string(),
                Err(error) => return Err(error),
            };
            if started.elapsed() >= timeout {
                return Err(BrowserError::Timeout {
                    what: what.to_owned(),
                    waited: started.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the first element `css` matches, as a user would: scrolled
    /// into view, refused (`element click intercepted`) if something covers
    /// it. An element the page replaced between finding and clicking it
    /// (a live section re-rendered) is found again.
    pub async fn click(&self, css: &str) -> Result<(), BrowserError> {
        let what = format!("clicking {css}");
        let mut attempts = 0;
        loop {
            let element = self.element(css).await?;
            let clicked = self
                .command(
                    Method::POST,
                    &format!("/element/{element}/click"),
                    None,
                    &what,
                )
                .await;
            match clicked {
                Err(BrowserError::WebDriver { error, .. })
                    if error == "stale element reference" && attempts < STALE_RETRIES =>
                {
                    attempts += 1;
                }
                other => return other.map(drop),
            }
        }
    }

    /// Types `text` into the first element `css` matches (an input or a
    /// textarea), in place of what it held.
    pub async fn fill(&self, css: &str, text: &str) -> Result<(), BrowserError> {
        let element = self.element(css).await?;
        let what = format!("typing into {css}");
        self.command(
            Method::POST,
            &format!("/element/{element}/clear"),
            None,
            &what,
        )
        .await?;
        self.command(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
            &what,
        )
        .await
        .map(drop)
    }

    /// The cookies the current page's URL would be sent, as WebDriver
    /// serializes them (`name`, `value`, `httpOnly`, `secure`, `sameSite`,
    /// …): HttpOnly ones included, which the page's scripts cannot see.
    pub async fn cookies(&self) -> Result<Vec<Value>, BrowserError> {
        let what = "reading the cookies";
        match self.command(Method::GET, "/cookie", None, what).await? {
            Value::Array(cookies) => Ok(cookies),
            other => Err(BrowserError::Protocol {
                what: what.to_owned(),
                answer: other.to_string(),
            }),
        }
    }

    /// The WebDriver reference of the first element `css` matches (a
    /// `no such element` error if none does).
    async fn element(&self, css: &str) -> Result<String, BrowserError> {
        let what = format!("finding {css}");
        let found = self
            .command(
                Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
                &what,
            )
            .await?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BrowserError::Protocol {
                what,
                answer: found.to_string(),
            })
    }

    /// Saves a PNG of the viewport; a relative `path` is taken under the
    /// artifacts directory. Returns where the file went.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> Result<PathBuf, BrowserError> {
        let path = self.artifacts_dir.join(path);
        let encoded = self
            .string(Method::GET, "/screenshot", "taking a screenshot")
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map_err(|e| BrowserError::Protocol {
                what: "taking a screenshot".to_owned(),
                answer: format!("not base64: {e}"),
            })?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| BrowserError::Io {
                doing: format!("creating {}", dir.display()),
                source,
            })?;
        }
        fs::write(&path, png).map_err(|source| BrowserError::Io {
            doing: format!("writing {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    /// The console's SEVERE entries (console.error, uncaught exceptions,
    /// failed loads) logged since the last call: chromedriver hands each
    /// entry out once.
    pub async fn console_errors(&self) -> Result<Vec<String>, BrowserError> {
        let entries = self
            .command(
                Method::POST,
                "/se/log",
                Some(json!({ "type": "browser" })),
                "reading the browser console log",
            )
            .await?;
        let entries = entries.as_array().ok_or_else(|| BrowserError::Protocol {
            what: "reading the browser console log".to_owned(),
            answer: entries.to_string(),
        })?;
        Ok(entries
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| {
                entry["message"]
                    .as_str()
                    .map_or_else(|| entry.to_string(), str::to_owned)
            })
            .collect())
    }

    /// Ends the session (Chromium exits), then stops chromedriver and removes
    /// the browser's HOME and profile.
    pub async fn quit(mut self) -> Result<(), BrowserError> {
        if let Some(session) = self.session.take() {
            let url = format!("{}/session/{session}", self.base);
            let answer = self.http.delete(&url).send().await;
            read_answer("ending the WebDriver session", answer).await?;
        }
        Ok(())
    }

    async fn string(&self, method: Method, path: &str, what: &str) -> Result<String, BrowserError> {
        let value = self.command(method, path, None, what).await?;
        match value {
            Value::String(s) => Ok(s),
            other => Err(BrowserError::Protocol {
                what: what.to_owned(),
                answer: other.to_string(),
            }),
        }
    }

    /// One WebDriver command on this session: its `value`, or the error
    /// chromedriver answered.
    async fn command(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, BrowserError> {
        let session = self
            .session
            .as_deref()
            .ok_or_else(|| BrowserError::Protocol {
                what: what.to_owned(),
                answer: "no session (the browser has quit)".to_owned(),
            })?;
        let url = format!("{}/session/{session}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if method == Method::POST {
            request = request.json(&body.unwrap_or_else(|| json!({})));
        }
        read_answer(what, request.send().await).await
    }

    fn log_tail(&self) -> String {
        tail(&self.driver_log, LOG_TAIL_LINES)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            if let Ok(pid) = i32::try_from(driver.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = driver.kill();
            let _ = driver.wait();
        }
        if std::thread::panicking() {
            // The test failed: keep what chromedriver and Chromium said.
            let kept = self.artifacts_dir.join(format!(
                "chromedriver-{}.log",
                self.root
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            if fs::create_dir_all(&self.artifacts_dir).is_ok()
                && fs::copy(&self.driver_log, &kept).is_ok()
            {
                eprintln!("chromedriver's log: {}", kept.display());
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `$HOME/.pki/nssdb` with an empty password, trusting `ca_pem` (if any) to
/// identify websites: where Chromium on Linux reads user-added roots.
async fn make_nss_db(root: &Path, home: &Path, ca_pem: Option<&str>) -> Result<(), BrowserError> {
    let db_dir = home.join(".pki/nssdb");
    fs::create_dir_all(&db_dir).map_err(|source| BrowserError::Io {
        doing: format!("creating {}", db_dir.display()),
        source,
    })?;
    let db = format!("sql:{}", db_dir.display());
    certutil(&db_dir, &["-d", &db, "-N", "--empty-password"]).await?;
    if let Some(pem) = ca_pem {
        let ca_file = root.join("ca.pem");
        fs::write(&ca_file, pem).map_err(|source| BrowserError::Io {
            doing: format!("writing {}", ca_file.display()),
            source,
        })?;
        let ca_path = ca_file.display().to_string();
        certutil(
            &db_dir,
            &[
                "-d",
                &db,
                "-A",
                "-t",
                "C,,",
                "-n",
                CA_NICKNAME,
                "-i",
                &ca_path,
            ],
        )
        .await?;
    }
    Ok(())
}

async fn certutil(db_dir: &Path, args: &[&str]) -> Result<(), BrowserError> {
    let failed = |outcome: String, output: String| BrowserError::Certutil {
        args: args.join(" "),
        outcome,
        output,
        dir: db_dir.to_owned(),
    };
    let run = tokio::process::Command::new("certutil")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TOOL_TIMEOUT, run)
        .await
        .map_err(|_| {
            failed(
                format!("still running after {TOOL_TIMEOUT:?}"),
                String::new(),
            )
        })?
        .map_err(|e| failed("could not start".to_owned(), e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    Err(failed(
        format!("failed ({})", output.status),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .trim()
        .to_owned(),
    ))
}

/// The `value` of a WebDriver answer, or its error.
async fn read_answer(
    what: &str,
    answer: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, BrowserError> {
    let http = |source| BrowserError::Http {
        what: what.to_owned(),
        source,
    };
    let response = answer.map_err(http)?;
    let status = response.status();
    let body: Value = response.json().await.map_err(http)?;
    let value = body
        .get("value")
        .cloned()
        .ok_or_else(|| BrowserError::Protocol {
            what: what.to_owned(),
            answer: format!("{status}: {body}"),
        })?;
    if status.is_success() {
        return Ok(value);
    }
    match value["error"].as_str() {
        Some(error) => Err(BrowserError::WebDriver {
            what: what.to_owned(),
            error: error.to_owned(),
            message: value["message"].as_str().unwrap_or("").to_owned(),
        }),
        None => Err(BrowserError::Protocol {
            what: what.to_owned(),
            answer: format!("{status}: {body}"),
        }),
    }
}

/// JavaScript's truthiness of a script's answer (objects and arrays, even
/// empty, are true).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A port on 127.0.0.1 that was free a moment ago (chromedriver takes it
/// by number; a race with another process shows as chromedriver exiting).
fn free_port() -> Result<u16, BrowserError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|source| BrowserError::Io {
            doing: "finding a free port on 127.0.0.1 for chromedriver".to_owned(),
            source,
        })
}

/// The last `lines` lines of a log file (at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = vec![];
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn abbreviate(script: &str) -> String {
    let one_line = script.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(60) {
        Some((cut, _)) => format!("{:?}…", &one_line[..cut]),
        None => format!("{one_line:?}"),
    }
}
