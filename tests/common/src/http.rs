//! Requests and responses on a switchboard's socket, as the agent and its clients send
//! and read them: whole responses, the output attach call, input streams, records and
//! acknowledgements.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use switchboard::wire::http::{ChunkedDecoder, Limits};

/// A response: status, headers (names lower-cased), and the body (de-chunked).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response head from `s` (bytes after it stay in `rest`).
pub fn read_head(s: &mut UnixStream, rest: &mut Vec<u8>) -> Option<(u16, Vec<(String, String)>)> {
    switchboard::client::read_head(s, rest)
        .ok()
        .map(|h| (h.status, h.headers))
}

/// Reads a whole response: fixed (`Content-Length`) or chunked to its end.
pub fn read_response(s: &mut UnixStream, rest: &mut Vec<u8>) -> Option<Response> {
    let (status, headers) = read_head(s, rest)?;
    let mut body = Vec::new();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    if chunked {
        let mut d = ChunkedDecoder::new(&Limits::default());
        let mut buf = std::mem::take(rest);
        loop {
            let mut pos = 0;
            let mut done = false;
            while pos < buf.len() {
                let step = d.decode(&buf[pos..]).unwrap();
                pos += step.used;
                body.extend_from_slice(step.data);
                if step.done {
                    done = true;
                    break;
                }
            }
            if done {
                *rest = buf[pos..].to_vec();
                break;
            }
            buf.clear();
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return Some(Response { status, headers, body }),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    } else {
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut buf = std::mem::take(rest);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        body = buf[..len.min(buf.len())].to_vec();
        *rest = buf[len.min(buf.len())..].to_vec();
    }
    Some(Response { status, headers, body })
}

/// Sends `request` on a new connection and reads one response.
pub fn exchange(socket: &Path, request: &[u8]) -> Option<Response> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s, &mut Vec::new())
}

/// A POST with a fixed body and the given extra header lines.
pub fn post(path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost:\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

pub const OUTPUT_CALL: &[u8] =
    br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{"container_id":{"value":"abc"}}}"#;

/// An output attach by `curl` (JSON records unless `protobuf`), its body thrown away.
pub fn curl_attach(socket: &Path, protobuf: bool) -> Child {
    let records = if protobuf {
        "Message-Accept: application/x-protobuf"
    } else {
        "Message-Accept: application/json"
    };
    Command::new("curl")
        .args(["-s", "-N", "-o", "/dev/null", "-X", "POST", "--unix-socket"])
        .arg(socket)
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/recordio",
        ])
        .args(["-H", records, "--data-binary"])
        .arg(std::str::from_utf8(OUTPUT_CALL).unwrap())
        .arg("http://localhost/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The agent's output attach request (JSON records unless `protobuf`).
pub fn output_request(protobuf: bool) -> Vec<u8> {
    output_request_with(protobuf, &[])
}

/// An output attach request with more header lines (`Switchboard-From: 123`, say).
pub fn output_request_with(protobuf: bool, extra: &[&str]) -> Vec<u8> {
    let records = if protobuf {
        "application/x-protobuf"
    } else {
        "application/json"
    };
    let accept = format!("Message-Accept: {records}");
    let mut headers = vec![
        "Accept: application/recordio",
        &accept,
        "Content-Type: application/json",
        "Connection: close",
    ];
    headers.extend_from_slice(extra);
    post("/", &headers, OUTPUT_CALL)
}

/// The head of a chunked input request (JSON records).
pub fn input_head(keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "" } else { "Connection: close\r\n" };
    format!(
        "POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/recordio\r\nMessage-Content-Type: application/json\r\n\
         Accept: application/json\r\nTransfer-Encoding: chunked\r\n{conn}\r\n"
    )
    .into_bytes()
}

/// One HTTP chunk.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A RecordIO record of `json`, in its own chunk.
pub fn record(json: &str) -> Vec<u8> {
    chunk(format!("{}\n{json}", json.len()).as_bytes())
}

pub const FIRST_RECORD: &str = r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID","container_id":{"value":"abc"}}}"#;

pub fn process_io(pio: &str) -> String {
    format!(
        r#"{{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{{"type":"PROCESS_IO","process_io":{pio}}}}}"#
    )
}

pub fn stdin_record(data: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    process_io(&format!(
        r#"{{"type":"DATA","data":{{"type":"STDIN","data":"{b64}"}}}}"#
    ))
}

pub fn resize_record(rows: u32, columns: u32) -> String {
    process_io(&format!(
        r#"{{"type":"CONTROL","control":{{"type":"TTY_INFO","tty_info":{{"window_size":{{"rows":{rows},"columns":{columns}}}}}}}}}"#
    ))
}

pub fn ack_request(keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "" } else { "Connection: close\r\n" };
    format!("POST /acknowledge_container_input_response HTTP/1.1\r\nHost:\r\nContent-Length: 0\r\n{conn}\r\n")
        .into_bytes()
}

/// Reads an output response's body (after `rest`, what followed its head) to its end or
/// its connection's: what it carried, and whether it ended.
pub fn read_body(s: &mut UnixStream, rest: &[u8], format: switchboard::wire::Format) -> (crate::Collected, bool) {
    let (mut collector, out) = crate::Collector::new(format);
    let mut ended = collector.push(rest);
    let mut buf = vec![0u8; 1 << 16];
    while !ended {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => ended = collector.push(&buf[..n]),
        }
    }
    let got = out.lock().unwrap().clone();
    (got, ended)
}

/// [`read_body`] of a body that must end; the stdout it carried.
pub fn read_stdout(mut s: UnixStream, rest: Vec<u8>, format: switchboard::wire::Format) -> Vec<u8> {
    let (got, ended) = read_body(&mut s, &rest, format);
    assert!(ended, "the body did not end");
    got.stdout
}
