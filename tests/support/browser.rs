//! A real headless Chromium driven over the DevTools protocol (CDP), for
//! testing the web page as a person would use it. Only the few commands the
//! tests need: evaluate script, press and release the mouse.
//!
//! The microphone is a WAV file (`--use-file-for-fake-audio-capture`), played
//! once from when the page opens it, then silence.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Debian's package puts it (setup.sh installs `chromium`).
const CHROMIUM: &str = "chromium";

pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    page: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Console messages and uncaught exceptions of the page, for failures.
    pub console: Vec<String>,
}

impl Browser {
    /// Open `url` in a fresh headless Chromium whose microphone plays
    /// `microphone` (a WAV file) once.
    pub async fn open(url: &str, microphone: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let child = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!(
                "--use-file-for-fake-audio-capture={}%noloop",
                microphone.display()
            ))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{CHROMIUM}` ({e}): run `bash models/setup.sh`")
            });
        let port = devtools_port(profile.path()).await;
        let page_ws = page_target(port, url).await;
        let (page, _) = tokio_tungstenite::connect_async(page_ws.as_str())
            .await
            .expect("connect to the page's DevTools socket");
        let mut browser = Self {
            child,
            _profile: profile,
            page,
            next_id: 0,
            console: Vec::new(),
        };
        browser.command("Runtime.enable", json!({})).await;
        browser
    }

    /// Send one CDP command and wait for its answer, keeping console
    /// events that arrive meanwhile.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(request.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(Duration::from_secs(30), self.page.next())
                .await
                .unwrap_or_else(|_| panic!("DevTools did not answer {method}"))
                .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                .expect("DevTools socket");
            let Message::Text(text) = message else {
                continue;
            };
            let value: Value = serde_json::from_str(&text).expect("DevTools JSON");
            if value["id"].as_u64() == Some(id) {
                if let Some(error) = value.get("error") {
                    panic!("{method} failed: {error}");
                }
                return value["result"].clone();
            }
            self.keep_console(&value);
        }
    }

    fn keep_console(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = event["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        a["value"]
                            .as_str()
                            .map(String::from)
                            .unwrap_or_else(|| a["description"].to_string())
                    })
                    .collect();
                self.console.push(format!(
                    "console.{}: {}",
                    event["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => self.console.push(format!(
                "exception: {}",
                event["params"]["exceptionDetails"]
            )),
            _ => {}
        }
    }

    /// The value of a script expression (promises are awaited).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(details) = result.get("exceptionDetails") {
            panic!("{expression} threw: {details}");
        }
        result["result"]["value"].clone()
    }

    /// Poll `expression` until it is truthy; its value, or a panic naming
    /// what the page showed.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let shown = self.eval("document.body.innerText").await;
                panic!(
                    "`{expression}` not true within {within:?}.\npage: {}\nconsole: {:#?}",
                    shown.as_str().unwrap_or_default(),
                    self.console
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Press (`down`) or release the left mouse button on the middle of
    /// the element `selector`: real input events, as a person's click.
    pub async fn mouse(&mut self, selector: &str, down: bool) {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let (x, y) = (rect[0].as_f64().unwrap(), rect[1].as_f64().unwrap());
        let kind = if down {
            "mousePressed"
        } else {
            "mouseReleased"
        };
        self.command(
            "Input.dispatchMouseEvent",
            json!({"type": "mouseMoved", "x": x, "y": y}),
        )
        .await;
        self.command(
            "Input.dispatchMouseEvent",
            json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": if down { 1 } else { 0 }, "clickCount": 1}),
        )
        .await;
    }

    /// Save what the page looks like now as a PNG.
    pub async fn screenshot(&mut self, to: &Path) {
        use base64::Engine;
        let shot = self
            .command(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(to, png).expect("write the screenshot");
    }

    pub async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Chromium writes the port it chose to `DevToolsActivePort` in its
/// profile.
async fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    for _ in 0..300 {
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return port;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromium did not open its DevTools port within 30 s");
}

/// The DevTools socket of the tab showing `url`.
async fn page_target(port: u16, url: &str) -> String {
    let list = format!("http://127.0.0.1:{port}/json/list");
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(&list).await {
            let targets: Vec<Value> = response.json().await.unwrap_or_default();
            let page = targets.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
            });
            if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                return ws.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromium shows no tab for {url}");
}
