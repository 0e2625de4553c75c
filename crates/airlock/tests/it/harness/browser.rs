//! Debian's headless Chromium driven over WebDriver (`chromedriver`), for the web page's
//! tests: navigate, find, read, click, type, screenshot. The session and the driver are
//! stopped on drop.

use std::process::{Child, Command, Stdio};

use super::registry::{free_port, wait_ready};

pub struct Browser {
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

fn call(method: reqwest::Method, url: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let url = url.to_owned();
    super::proxy::runtime().block_on(async move {
        let client = reqwest::Client::new();
        let mut request = client.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap_or_else(|e| panic!("chromedriver at {url}: {e}"));
        let value: serde_json::Value = response.json().await.expect("chromedriver answers JSON");
        value["value"].clone()
    })
}

impl Browser {
    pub fn start() -> Browser {
        let driver = super::require("chromedriver", "chromium-driver");
        let chromium = super::require("chromium", "chromium");
        let port = free_port();
        let mut child = Command::new(driver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start chromedriver");
        assert!(wait_ready(port, &mut child), "chromedriver did not start on port {port}");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().expect("a profile folder");
        // The flags of a closed sandbox (no network beyond loopback, running as root).
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": chromium, "args": args}}}});
        let session = call(reqwest::Method::POST, &format!("{base}/session"), Some(capabilities));
        let session = session["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {session}")).to_owned();
        Browser { base, session, driver: child, _profile: profile }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    pub fn go(&self, url: &str) {
        call(reqwest::Method::POST, &self.url("/url"), Some(serde_json::json!({"url": url})));
    }

    pub fn current_url(&self) -> String {
        call(reqwest::Method::GET, &self.url("/url"), None).as_str().unwrap_or_default().to_owned()
    }

    /// The page's visible text ("" while a navigation has no document yet: callers wait).
    pub fn text(&self) -> String {
        let Some(body) = self.find("body") else { return String::new() };
        call(reqwest::Method::GET, &self.url(&format!("/element/{body}/text")), None).as_str().unwrap_or_default().to_owned()
    }

    /// The page as the browser holds it (after scripts).
    pub fn source(&self) -> String {
        call(reqwest::Method::GET, &self.url("/source"), None).as_str().unwrap_or_default().to_owned()
    }

    /// The first element a CSS selector matches.
    pub fn find(&self, selector: &str) -> Option<String> {
        let found = call(reqwest::Method::POST, &self.url("/element"), Some(serde_json::json!({"using": "css selector", "value": selector})));
        // The W3C element reference; an error (no such element) is an object without it.
        found.get("element-6066-11e4-a52e-4f735466cecf").and_then(|v| v.as_str()).map(str::to_owned)
    }

    pub fn click(&self, selector: &str) {
        let element = self.find(selector).unwrap_or_else(|| panic!("no `{selector}` on {}", self.current_url()));
        call(reqwest::Method::POST, &self.url(&format!("/element/{element}/click")), Some(serde_json::json!({})));
    }

    pub fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector).unwrap_or_else(|| panic!("no `{selector}` on {}", self.current_url()));
        call(reqwest::Method::POST, &self.url(&format!("/element/{element}/value")), Some(serde_json::json!({"text": text})));
    }

    /// Runs a script in the page (WebDriver's, not the page's: the page's CSP does not apply).
    pub fn script(&self, script: &str) -> serde_json::Value {
        call(reqwest::Method::POST, &self.url("/execute/sync"), Some(serde_json::json!({"script": script, "args": []})))
    }

    pub fn resize(&self, width: u32, height: u32) {
        call(reqwest::Method::POST, &self.url("/window/rect"), Some(serde_json::json!({"width": width, "height": height})));
    }

    /// A PNG of the viewport, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) {
        let png = call(reqwest::Method::GET, &self.url("/screenshot"), None);
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, png.as_str().expect("base64 PNG")).expect("a PNG");
        std::fs::write(path, bytes).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = super::proxy::runtime().block_on(reqwest::Client::new().delete(self.url("")).send());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
