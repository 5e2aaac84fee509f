//! A real browser for the console tests: Debian's headless `chromium`, driven over the Chrome
//! DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on the
//! browser's file descriptors 3 and 4, which a shell maps to our pipes), so no WebSocket
//! client is needed. Pages are opened, scripts evaluated (promises awaited), and screenshots
//! taken.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// How long one protocol call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Browser {
    child: Child,
    input: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

/// A tab, attached to its own protocol session.
pub(crate) struct Page<'a> {
    browser: &'a mut Browser,
    session: String,
}

impl Browser {
    /// Starts headless Chromium with a fresh profile.
    pub(crate) fn launch() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        // fd 3 reads our stdin pipe, fd 4 writes our stdout pipe; Chromium's own output goes
        // to stderr (inherited: shown when a test fails).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec chromium \"$@\" 3<&0 4>&1 1>&2 0</dev/null")
            .arg("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .args(["--remote-debugging-pipe", "--window-size=1400,900", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the console tests drive Debian's chromium: install it (`apt-get install chromium`; .ci/run does)");
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut message = Vec::new();
            match output.read_until(0, &mut message) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    message.pop();
                    let Ok(value) = serde_json::from_slice::<Value>(&message) else { continue };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        Browser { child, input, messages, next_id: 0, _profile: profile }
    }

    /// One protocol call (in `session`, else to the browser): its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).and_then(|()| self.input.flush()).expect("chromium exited");
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message =
                self.messages.recv_timeout(left).unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            // Events: not needed.
        }
    }

    /// A new tab on `url`, its page loaded.
    pub(crate) fn open(&mut self, url: &str) -> Page<'_> {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_string();
        let attached = self.call(None, "Target.attachToTarget", json!({ "targetId": target, "flatten": true }));
        let session = attached["sessionId"].as_str().unwrap().to_string();
        let mut page = Page { browser: self, session };
        page.call("Page.enable", json!({}));
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        );
        page.call("Page.navigate", json!({ "url": url }));
        page.wait_for("the page to load", Duration::from_secs(30), "document.readyState === 'complete'");
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Page<'_> {
    fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.browser.call(Some(&session), method, params)
    }

    /// Evaluates `script` in the page (a promise is awaited): its value, as JSON.
    pub(crate) fn eval(&mut self, script: &str) -> Value {
        let result =
            self.call("Runtime.evaluate", json!({ "expression": script, "awaitPromise": true, "returnByValue": true }));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{script} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `script` until its value is truthy (a non-empty, non-false, non-null,
    /// non-zero value): that value.
    pub(crate) fn wait_for(&mut self, what: &str, timeout: Duration, script: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(script);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
                Value::Bool(true) => true,
            };
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} ({script})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `selector` selects as a user would: a mouse press and release at its
    /// middle (for an SVG path, the middle of its stroke), scrolled into view first.
    pub(crate) fn click(&mut self, selector: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({0}); if (!e) return null; \
             e.scrollIntoView({{ block: 'center', inline: 'center' }}); \
             if (e instanceof SVGGeometryElement && e.getTotalLength() > 0) {{ \
               const p = e.getPointAtLength(e.getTotalLength() / 2).matrixTransform(e.getScreenCTM()); \
               return [p.x, p.y]; }} \
             const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()",
            serde_json::to_string(selector).unwrap()
        );
        let at = self.eval(&script);
        let (x, y) = match at.as_array().map(|a| (a[0].as_f64(), a[1].as_f64())) {
            Some((Some(x), Some(y))) => (x, y),
            _ => panic!("nothing to click at {selector}"),
        };
        for kind in ["mousePressed", "mouseReleased"] {
            let event = json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 });
            self.call("Input.dispatchMouseEvent", event);
        }
    }

    /// Types `text` into the input `selector` selects, replacing what it held, as a user would
    /// (trusted key input: the page's input handlers run).
    pub(crate) fn type_into(&mut self, selector: &str, text: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({0}); if (!e) return false; e.focus(); e.select(); return true; }})()",
            serde_json::to_string(selector).unwrap()
        );
        assert_eq!(self.eval(&script), Value::Bool(true), "nothing to type into at {selector}");
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Chooses `value` in the select `selector` selects (its change handlers run).
    pub(crate) fn choose(&mut self, selector: &str, value: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({0}); if (!e) return false; e.value = {1}; \
             e.dispatchEvent(new Event('change', {{ bubbles: true }})); return e.value === {1}; }})()",
            serde_json::to_string(selector).unwrap(),
            serde_json::to_string(value).unwrap()
        );
        assert_eq!(self.eval(&script), Value::Bool(true), "no option {value:?} at {selector}");
    }

    /// Saves a PNG of the viewport.
    pub(crate) fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

/// Where the tests save their screenshots: the target directory (`CARGO_TARGET_DIR`, else
/// `target/`).
pub(crate) fn artefact(name: &str) -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| crate::support::repo_path("target"), std::path::PathBuf::from);
    target.join(name)
}
