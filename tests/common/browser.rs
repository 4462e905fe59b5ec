//! Headless Chromium for page tests: a private ChromeDriver per browser, a fresh profile, and
//! helpers to sign in, wait for text and save screenshots.
//!
//! Each [`Browser`] starts `chromedriver --port=<free port>` in its own process group and opens
//! one WebDriver session on it. [`Browser::close`] ends the session cleanly; if a test panics
//! first, dropping the browser deletes the session, kills the process group (ChromeDriver and
//! the Chromium it started) and removes the profile directory. Missing ChromeDriver or Chromium
//! is a loud failure, never a skip.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Deref;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::Server;

/// ChromeDriver, overridable with `SPOOL_CHROMEDRIVER`.
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Chromium, overridable with `SPOOL_CHROMIUM`.
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long ChromeDriver may take to answer `/status`.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How long Chromium may take to open a session (the machine may be busy compiling).
const SESSION_START: Duration = Duration::from_secs(60);
/// The default wait for page content.
pub const WAIT: Duration = Duration::from_secs(10);

/// A headless Chromium session with its own ChromeDriver; derefs to the fantoccini [`Client`].
pub struct Browser {
    client: Client,
    driver: Driver,
}

impl Deref for Browser {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Browser {
    /// A browser with JavaScript on.
    pub async fn start() -> Self {
        Self::launch(true).await
    }

    /// A browser whose pages run no JavaScript (Chrome's content setting; WebDriver's own
    /// `execute` still works, so tests can inspect the page).
    pub async fn without_js() -> Self {
        Self::launch(false).await
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Ends the session (Chromium exits) and stops ChromeDriver.
    pub async fn close(mut self) {
        let closed = self.client.clone().close().await;
        if closed.is_ok() {
            self.driver.session = None;
        }
        // Dropping `self` stops ChromeDriver and removes the profile.
    }

    async fn launch(javascript: bool) -> Self {
        let chromedriver = binary("SPOOL_CHROMEDRIVER", CHROMEDRIVER, "chromium-driver");
        let chromium = binary("SPOOL_CHROMIUM", CHROMIUM, "chromium");
        let mut driver = Driver::start(&chromedriver).await;
        let caps = capabilities(&chromium, &driver.profile, javascript);
        let url = format!("http://127.0.0.1:{}", driver.port);
        let builder = || {
            let mut b = ClientBuilder::rustls().expect("rustls connector for WebDriver");
            b.capabilities(caps.clone());
            b
        };
        let client = match tokio::time::timeout(SESSION_START, builder().connect(&url)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "Chromium ({}) did not start under ChromeDriver: {e}\nChromeDriver log:\n{}",
                chromium.display(),
                driver.log()
            ),
            Err(_) => panic!(
                "Chromium ({}) did not open a WebDriver session within {SESSION_START:?}\n\
                 ChromeDriver log:\n{}",
                chromium.display(),
                driver.log()
            ),
        };
        driver.session = client.session_id().await.ok().flatten();
        Self { client, driver }
    }
}

/// `path` from the environment variable `var` or the default, which must exist.
fn binary(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "browser tests need {} but it does not exist: install Debian's `{package}` package \
         (`apt-get install chromium chromium-driver`; .ci/run does this) or point {var} at it",
        path.display()
    );
    path
}

/// The session's capabilities: headless Chromium with a fresh profile in `profile`.
fn capabilities(chromium: &Path, profile: &Path, javascript: bool) -> Capabilities {
    let mut options = json!({
        "binary": chromium.to_string_lossy(),
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--window-size=1280,900",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    if !javascript {
        options["prefs"] = json!({ "profile.managed_default_content_settings.javascript": 2 });
    }
    let caps = json!({ "browserName": "chrome", "goog:chromeOptions": options });
    match caps {
        Value::Object(map) => map,
        _ => unreachable!("capabilities are an object"),
    }
}

/// A ChromeDriver child process in its own process group, and the profile directory it uses.
struct Driver {
    child: Child,
    port: u16,
    /// Holds ChromeDriver's output and Chromium's profile; removed on drop.
    dir: PathBuf,
    profile: PathBuf,
    /// The open session, deleted on drop when the test did not close it.
    session: Option<String>,
}

impl Driver {
    async fn start(chromedriver: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "spool-browser-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).expect("creating the browser profile directory");
        // A free port can be taken between our probe and ChromeDriver's bind: try a few.
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = File::create(dir.join("chromedriver.log")).expect("chromedriver log file");
            let child = Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
            let mut driver = Self {
                child,
                port,
                dir: dir.clone(),
                profile: profile.clone(),
                session: None,
            };
            if driver.wait_ready().await {
                return driver;
            }
            last_log = driver.log();
            driver.kill();
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!(
            "{} did not answer on its port within {DRIVER_START:?}\nlog:\n{last_log}",
            chromedriver.display()
        );
    }

    /// Polls `/status` until ChromeDriver says it is ready; false if it exited or never did.
    async fn wait_ready(&mut self) -> bool {
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let deadline = Instant::now() + DRIVER_START;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && let Ok(body) = r.json::<Value>().await
                && body["value"]["ready"] == json!(true)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }

    /// Kills ChromeDriver and everything in its process group.
    fn kill(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals only the process group this driver created with `process_group(0)`.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Deletes the session with a blocking request, so Chromium quits even when the test's
    /// runtime is already gone (a panic).
    fn delete_session(&self, id: &str) {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
        let req = format!(
            "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            self.delete_session(&id);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Opens the sign-in page, types `token` and submits; returns once the answer has loaded.
pub async fn submit_token(client: &Client, server: &Server, token: &str) {
    client
        .goto(&server.url("/login"))
        .await
        .expect("opening /login");
    let field = wait_for(client, "#token", WAIT).await;
    field.send_keys(token).await.expect("typing the token");
    client
        .find(Locator::Css("form[action='/login'] button[type=submit]"))
        .await
        .expect("the sign-in button")
        .click()
        .await
        .expect("clicking sign in");
    wait_until(client, WAIT, "the sign-in answer to load", |c| async move {
        let url = c.current_url().await.ok()?;
        let ready = c.execute("return document.readyState", vec![]).await.ok()?;
        let answered = url.path() != "/login" || c.find(Locator::Css("#token-error")).await.is_ok();
        (ready == json!("complete") && answered).then_some(())
    })
    .await;
}

/// Signs in with the server's token and waits for the overview.
pub async fn sign_in(client: &Client, server: &Server) {
    submit_token(client, server, &server.token).await;
    wait_until(
        client,
        WAIT,
        "the overview after signing in",
        |c| async move {
            let url = c.current_url().await.ok()?;
            (url.path() == "/").then_some(())
        },
    )
    .await;
    assert!(
        session_cookie(client).await.is_some(),
        "signed in but the browser holds no `{}` cookie",
        spool::web::auth::COOKIE
    );
}

/// The browser's session cookie value, if it has one.
pub async fn session_cookie(client: &Client) -> Option<String> {
    client
        .get_all_cookies()
        .await
        .expect("reading cookies")
        .into_iter()
        .find(|c| c.name() == spool::web::auth::COOKIE)
        .map(|c| c.value().to_owned())
}

/// Polls `f` with the client until it returns `Some`; panics naming `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(client: &Client, timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f(client.clone()).await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; page {}:\n{}",
                current_url(client).await,
                page_text(client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for an element matching the CSS `selector`.
pub async fn wait_for(client: &Client, selector: &str, timeout: Duration) -> Element {
    let what = format!("an element matching `{selector}`");
    wait_until(client, timeout, &what, |c| async move {
        c.find(Locator::Css(selector)).await.ok()
    })
    .await
}

/// Waits until the first element matching `selector` has text containing `needle`; returns the
/// whole text. The panic message says what the element showed last.
pub async fn wait_for_text(
    client: &Client,
    selector: &str,
    needle: &str,
    timeout: Duration,
) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(el) = client.find(Locator::Css(selector)).await
            && let Ok(text) = el.text().await
        {
            if text.contains(needle) {
                return text;
            }
            last = Some(text);
        }
        if Instant::now() >= deadline {
            let shown = match last {
                Some(t) => format!("it last showed {t:?}"),
                None => "no such element appeared".to_owned(),
            };
            panic!(
                "timed out after {timeout:?} waiting for `{selector}` to contain {needle:?}: \
                 {shown}; page {}:\n{}",
                current_url(client).await,
                page_text(client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element matching `selector`.
pub async fn text_of(client: &Client, selector: &str) -> String {
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| {
            panic!("no element matches `{selector}`: {e}");
        })
        .text()
        .await
        .expect("element text")
}

/// The current URL, for messages.
pub async fn current_url(client: &Client) -> String {
    client
        .current_url()
        .await
        .map_or_else(|e| format!("<unknown: {e}>"), |u| u.to_string())
}

/// The page's visible text (shortened), for messages.
pub async fn page_text(client: &Client) -> String {
    let text = match client.find(Locator::Css("body")).await {
        Ok(body) => body.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.chars().take(2000).collect()
}

/// Where screenshots go: `<target>/screenshots`, with `<target>` from `CARGO_TARGET_DIR` or the
/// crate's `target/`.
pub fn screenshot_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map_or_else(
            || manifest.join("target"),
            |t| {
                if t.is_absolute() { t } else { manifest.join(t) }
            },
        );
    target.join("screenshots")
}

/// Saves the page as `target/screenshots/<name>.png` and returns the path.
pub async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.expect("taking a screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "the screenshot is not a PNG ({} bytes)",
        png.len()
    );
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}
