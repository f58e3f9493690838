//! What the gateway's tests share: a runtime directory with containers started by the
//! real `switchboard run -d`, the real `switchboard-web` on a loopback port, and a
//! WebSocket client.

#![allow(dead_code)] // (each test binary uses its own part)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::{Message, WebSocket};

pub use common::sb::Runtime;

/// The `switchboard` program, which cargo builds beside this package's when the tests
/// run from the workspace's root (`cargo test`).
pub fn switchboard() -> std::path::PathBuf {
    common::sb::binary("switchboard")
}

/// `switchboard run -d --name NAME [--tty] -- CMD` under `runtime`.
pub fn run_detached(runtime: &Path, name: &str, tty: bool, cmd: &[&str]) {
    let mut c = Command::new(switchboard());
    c.args(["run", "-d", "--name", name, "--runtime-dir"]).arg(runtime);
    if tty {
        c.arg("--tty");
    }
    let out = c.arg("--").args(cmd).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A running `switchboard-web`, ended by its pid when dropped.
pub struct Gateway {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub token: String,
}

impl Gateway {
    pub fn start(runtime: &Path) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-web"))
            .args(["--listen", "127.0.0.1:0", "--runtime-dir"])
            .arg(runtime)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "switchboard web: open http://127.0.0.1:PORT/?token=T"
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        let rest = url.strip_prefix("http://").expect("the URL it printed");
        let (addr, token) = rest.split_once("/?token=").expect("the token in the URL");
        Gateway {
            addr: addr.to_string(),
            token: token.to_string(),
            child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/?token={}", self.addr, self.token)
    }

    /// `GET path` with these extra header lines: the status, the head and the body.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        let text = String::from_utf8_lossy(&all).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, head.to_string(), body.to_string())
    }

    /// The containers, from `GET /api/v1/containers`.
    pub fn containers(&self) -> Vec<serde_json::Value> {
        let (status, _, body) = self.get("/api/v1/containers", &[("Authorization", &self.bearer())]);
        assert_eq!(status, 200, "{body}");
        let body = dechunk(&body);
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// A WebSocket to `path` offering `protocol`, with the token as a bearer and these
    /// extra headers; the handshake's error (its status) when refused.
    pub fn websocket(
        &self,
        path: &str,
        protocol: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(Ws, Option<String>), u16> {
        let mut request = format!("ws://{}{path}", self.addr).into_client_request().unwrap();
        let h = request.headers_mut();
        h.insert("Authorization", HeaderValue::from_str(&self.bearer()).unwrap());
        if let Some(p) = protocol {
            h.insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
        }
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap();
            h.insert(name, HeaderValue::from_str(v).unwrap());
        }
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        match tungstenite::client(request, stream) {
            Ok((ws, response)) => {
                let chosen = response
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .map(|v| v.to_str().unwrap().to_string());
                Ok((ws, chosen))
            }
            Err(tungstenite::handshake::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                Err(r.status().as_u16())
            }
            Err(e) => panic!("the handshake failed: {e}"),
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub type Ws = WebSocket<TcpStream>;

/// A chunked body's data (the gateway's JSON answers are chunked or not, as hyper likes).
fn dechunk(body: &str) -> String {
    if body.trim_start().starts_with('[') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// What came on each channel until the socket closed, and how it closed.
#[derive(Debug, Default)]
pub struct Received {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Channel 3's messages.
    pub errors: Vec<Vec<u8>>,
    /// Text frames (our `from=` extension's positions).
    pub texts: Vec<String>,
    pub close_code: Option<u16>,
    /// The first message's channel and length.
    pub first: Option<(u8, usize)>,
}

/// Reads binary frames (channel first) until the socket closes, or `until` says enough.
pub fn receive(ws: &mut Ws, got: &mut Received, until: impl Fn(&Received) -> bool) {
    loop {
        if until(got) {
            return;
        }
        match ws.read() {
            Ok(Message::Binary(b)) => {
                if got.first.is_none() {
                    got.first = Some((b[0], b.len() - 1));
                }
                match b[0] {
                    1 => got.stdout.extend_from_slice(&b[1..]),
                    2 => got.stderr.extend_from_slice(&b[1..]),
                    3 => got.errors.push(b[1..].to_vec()),
                    c => panic!("a message on channel {c}"),
                }
            }
            Ok(Message::Text(t)) => got.texts.push(t.to_string()),
            Ok(Message::Close(frame)) => {
                got.close_code = Some(frame.map_or(1005, |f| u16::from(f.code)));
                // (Our answering close goes out as we read on.)
                let _ = ws.flush();
                return;
            }
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return,
            Err(e) => panic!("the WebSocket failed: {e} (so far: {} bytes)", got.stdout.len()),
        }
    }
}

/// Sends `data` on `channel`.
pub fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut frame = vec![channel];
    frame.extend_from_slice(data);
    ws.send(Message::Binary(frame.into())).unwrap();
}
