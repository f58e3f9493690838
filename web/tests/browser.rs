//! The page in a real browser: headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol, opens the page with its one-time URL, attaches to
//! `switchboard run -d --tty -- sh`, types into the terminal and reads the shell's answer
//! back from it, resizes the window and sees the shell get the new size, and saves a
//! screenshot. Without Chromium it says loudly that it did not run.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::{Gateway, Runtime, run_detached};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium, headless, in a process group of its own (its helpers too), ended by that
/// group's id (its pid) when dropped.
struct Browser {
    child: Child,
    _profile: Runtime,
}

impl Browser {
    /// Starts it; returns it and its DevTools WebSocket address.
    fn start() -> (Browser, String) {
        let profile = Runtime::new("chromium-profile");
        // Without the background-networking flags, Chromium reaches for Google's hosts,
        // which a closed network refuses.
        let mut child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1000,700",
            ])
            .arg(format!("--user-data-dir={}", profile.path.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium says where its DevTools listen");
        (
            Browser {
                child,
                _profile: profile,
            },
            url,
        )
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A DevTools session with one page (flat sessions over the browser's socket).
struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Page {
    fn open(browser_ws: &str, url: &str) -> Page {
        let (ws, _) = tungstenite::connect(browser_ws).expect("the DevTools socket");
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = page.call("Target.createTarget", json!({ "url": url }));
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = page.call("Target.attachToTarget", json!({"targetId": target_id, "flatten": true}));
        page.session = attached["sessionId"].as_str().unwrap().to_string();
        page
    }

    /// Calls `method`; its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::Text(msg.to_string().into())).unwrap();
        loop {
            let Message::Text(t) = self.ws.read().unwrap() else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `js` in the page (awaiting a promise); its value.
    fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `js` is true; `what` says what for when it never is.
    fn wait_for(&mut self, what: &str, js: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(js) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The terminal's visible rows.
    fn screen(&mut self) -> String {
        let rows = self.eval("JSON.stringify(window.sbScreen ? window.sbScreen() : [])");
        let rows: Vec<String> = serde_json::from_str(rows.as_str().unwrap_or("[]")).unwrap_or_default();
        rows.join("\n")
    }

    /// Types `text` as the keyboard would, then Enter.
    fn type_line(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13});
            if kind == "keyDown" {
                key["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", key);
        }
    }
}

/// JS: whether some row of the screen is exactly `text` (trailing blanks aside).
fn row_is(text: &str) -> String {
    format!("window.sbScreen().some((r) => r.trimEnd() === {})", json!(text))
}

#[test]
fn a_browser_attaches_types_reads_resizes_and_shows_the_exit() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "\n*** the browser test DID NOT RUN: {CHROMIUM} is missing (Debian: apt-get install chromium; \
             .ci/run installs it) ***\n"
        );
        return;
    }
    let rt = Runtime::new("web-browser");
    run_detached(&rt.path, "shell", true, &["sh"]);
    let gw = Gateway::start(&rt.path);
    let (_browser, devtools) = Browser::start();
    let mut page = Page::open(&devtools, &gw.url());

    // The one-time URL set the cookie and moved on to the page, which lists the container.
    page.wait_for(
        "the list",
        "document.querySelector('tr[data-id=\"shell\"] button') !== null",
    );
    assert_eq!(
        page.eval("location.search"),
        json!(""),
        "the token left the address bar"
    );
    page.eval("document.querySelector('tr[data-id=\"shell\"] button').click()");
    page.wait_for(
        "the terminal",
        "!!window.sbTerm && document.getElementById('state').textContent === 'attached'",
    );
    page.eval("window.sbTerm.focus()");

    // Keystrokes reach the shell; its output reaches the terminal.
    page.type_line("echo hello-web");
    page.wait_for("hello-web", &row_is("hello-web"));

    // The shell has the terminal's size, and gets the new one when the window changes.
    let size = |page: &mut Page| {
        let rows = page.eval("window.sbTerm.rows").as_u64().unwrap();
        let cols = page.eval("window.sbTerm.cols").as_u64().unwrap();
        (rows, cols)
    };
    let (rows, cols) = size(&mut page);
    page.type_line("stty size");
    page.wait_for("the first size", &row_is(&format!("{rows} {cols}")));
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 640, "height": 420, "deviceScaleFactor": 1, "mobile": false}),
    );
    page.wait_for(
        "the terminal to fit the window",
        &format!("window.sbTerm.cols < {cols}"),
    );
    let (new_rows, new_cols) = size(&mut page);
    assert!(new_rows < rows, "{new_rows} rows after {rows}");
    page.type_line("stty size");
    page.wait_for("the new size", &row_is(&format!("{new_rows} {new_cols}")));

    let shot = page.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("switchboard-web.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("the screenshot: {}", path.display());

    // A dropped connection attaches again at the next byte: what the shell wrote while
    // the page was away comes once.
    page.type_line("(sleep 1; echo while-away) &");
    let typed = "window.sbScreen().some((r) => r.includes('echo while-away) &'))";
    page.wait_for("the command's echo", typed);
    page.eval("window.sbHoldReconnect = true; current.ws.close()");
    page.wait_for("the drop", "document.getElementById('state').className === 'lost'");
    let away = "window.sbScreen().filter((r) => /(^|# )while-away$/.test(r.trimEnd())).length";
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(page.eval(away), json!(0), "written while away: {}", page.screen());
    page.eval("window.sbHoldReconnect = false");
    page.wait_for("the output written while away", &format!("{away} > 0"));
    assert!(
        page.eval("current.lastFrom").as_str().unwrap().parse::<u64>().is_ok(),
        "attached again at a position"
    );
    page.wait_for(
        "attached again",
        "document.getElementById('state').textContent === 'attached'",
    );
    page.type_line("echo back");
    page.wait_for("the shell after the drop", &row_is("back"));
    assert_eq!(page.eval(away), json!(1), "{}", page.screen());

    // Detach leaves the container running; attaching again works.
    page.eval("document.getElementById('detach').click()");
    page.wait_for(
        "the list after the detach",
        "document.querySelector('tr[data-id=\"shell\"] td.running') !== null",
    );
    page.eval("document.querySelector('tr[data-id=\"shell\"] button').click()");
    page.wait_for(
        "attached again",
        "document.getElementById('state').textContent === 'attached'",
    );
    page.eval("window.sbTerm.focus()");

    // The shell's end shows its status.
    page.type_line("exit 5");
    page.wait_for(
        "the exit status",
        "document.getElementById('state').textContent === 'exited (5)'",
    );
}
