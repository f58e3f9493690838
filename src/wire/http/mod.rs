//! HTTP/1.1 for the switchboard socket, sans-IO (docs/protocol.md §8).
//!
//! [`RequestReader`] turns the bytes of one connection, split anywhere, into a sequence
//! of requests: a head, body bytes, an end; then the next pipelined request. Heads are
//! parsed by httparse within [`Limits`]; bodies are framed by `Content-Length` or by a
//! strict chunked decoder (extensions skipped, trailers read and ignored, both bounded).
//! Responses are written with a `Date` header, and streamed ones in chunked encoding;
//! [`parse_response_head`] reads a response head for clients.
//!
//! Request heads are in [`head`], bodies and the request loop in [`body`].

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

mod body;
mod head;

pub use body::{BodyDecoder, ChunkedDecoder, Decoded, Event, RequestReader};
pub use head::{BodyLength, RequestHead, parse_head};

/// Bounds on what a client may make us buffer while reading a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, in bytes.
    pub max_head_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
    /// A chunk-size line, extensions included.
    pub max_chunk_line: usize,
    /// All trailer fields of a chunked body together.
    pub max_trailer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_chunk_line: 1024,
            max_trailer_bytes: 8 * 1024,
        }
    }
}

/// A request we refuse, with the status and the plain-text body to answer it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, reason(self.status), self.message)
    }
}

impl std::error::Error for HttpError {}

/// The reason phrase we send for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a response head: status line, the given headers, `Date`, blank line.
pub fn write_response_head(status: u16, headers: &[(&str, &str)], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Date: {}\r\n\r\n", http_date(SystemTime::now())).as_bytes());
}

/// A complete fixed-length response with a body of `content_type` (none said when the
/// body is empty); `close` adds `Connection: close` (sent when we are about to close the
/// connection).
pub fn content_response(status: u16, content_type: &str, body: &[u8], close: bool) -> Vec<u8> {
    let length = body.len().to_string();
    let mut headers = Vec::with_capacity(3);
    if !body.is_empty() {
        headers.push(("Content-Type", content_type));
    }
    headers.push(("Content-Length", length.as_str()));
    if close {
        headers.push(("Connection", "close"));
    }
    let mut out = Vec::with_capacity(160 + body.len());
    write_response_head(status, &headers, &mut out);
    out.extend_from_slice(body);
    out
}

/// A response head as a client reads it: status and headers (names lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The value of a header (the name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Parses one response head from the start of `buf`: `Ok(None)` means more bytes are
/// needed, `Ok(Some((head, n)))` that the head took `n` bytes. Heads over `max_bytes` or
/// with more than 32 fields are refused.
pub fn parse_response_head(buf: &[u8], max_bytes: usize) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let headers = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = resp.code.unwrap_or(0);
            Ok(Some((ResponseHead { status, headers }, n)))
        }
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => Err(HttpError::new(431, "response head too large")),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HttpError::new(400, e.to_string())),
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a chunk-size line: lowercase hex, CRLF.
pub fn write_chunk_size(len: usize, out: &mut Vec<u8>) {
    let mut line = [0u8; 20];
    out.extend_from_slice(chunk_size_line(len, &mut line));
}

/// The chunk-size line of `len` (lowercase hex, CRLF), written into `buf`.
pub fn chunk_size_line(len: usize, buf: &mut [u8; 20]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, d) in buf[..digits].iter_mut().enumerate() {
        *d = HEX[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits..digits + 2].copy_from_slice(b"\r\n");
    &buf[..digits + 2]
}

/// What follows each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// An IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn response_heads() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Type: application/recordio\r\n\r\nrest";
        assert_eq!(parse_response_head(&text[..20], 1024).unwrap(), None);
        let (head, n) = parse_response_head(text, 1024).unwrap().unwrap();
        assert_eq!((head.status, n), (200, text.len() - 4));
        assert_eq!(head.header("content-type"), Some("application/recordio"));
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nA: b", 8).unwrap_err().status,
            431
        );
        assert_eq!(parse_response_head(b"HTTX", 8).unwrap_err().status, 400);
    }

    #[test]
    fn responses() {
        const TEXT: &str = "text/plain; charset=utf-8";
        let r = String::from_utf8(content_response(
            409,
            TEXT,
            b"Multiple input connections are not allowed",
            false,
        ))
        .unwrap();
        assert!(r.starts_with(
            "HTTP/1.1 409 Conflict\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 42\r\nDate: "
        ));
        assert!(r.ends_with(" GMT\r\n\r\nMultiple input connections are not allowed"));
        let ok = String::from_utf8(content_response(200, TEXT, b"", true)).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nDate: "));
        let mut chunk = Vec::new();
        write_chunk_size(0x39, &mut chunk);
        assert_eq!(chunk, b"39\r\n");
    }

    #[test]
    fn dates() {
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(1_795_609_871)),
            "Wed, 25 Nov 2026 12:31:11 GMT"
        );
        assert_eq!(
            http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }
}
