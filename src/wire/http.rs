//! HTTP/1.1 for the switchboard socket, sans-IO (PROTOCOL.md §2.1).
//!
//! [`RequestReader`] turns the bytes of one connection, split anywhere, into a sequence
//! of requests: a head, body bytes, an end; then the next pipelined request. Heads are
//! parsed by httparse within [`Limits`]; bodies are framed by `Content-Length` or by a
//! strict chunked decoder (extensions skipped, trailers read and ignored, both bounded).
//! Responses are written with a `Date` header, and streamed ones in chunked encoding.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// The percent-decoded path, without query string or fragment.
    pub path: String,
    /// The minor version: `HTTP/1.0` or `HTTP/1.1`.
    pub minor_version: u8,
    /// Header fields in arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: BodyLength,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl RequestHead {
    /// The value of a header (case-insensitive name; the last one wins, as in libprocess).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = String> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
    }
}

/// Parses one request head from the start of `buf`. `Ok(None)` means more bytes are
/// needed; `Ok(Some((head, n)))` means the head took `n` bytes.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || HttpError::new(431, format!("Request head exceeds {} bytes", limits.max_head_bytes));
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes {
                Err(too_large())
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::new(
                431,
                format!("More than {} header fields", limits.max_headers),
            ));
        }
        Err(e) => return Err(HttpError::new(400, format!("Malformed request head: {e}"))),
    };
    if n > limits.max_head_bytes {
        return Err(too_large());
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let minor_version = req.version.unwrap_or(1);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string()))
        .collect();
    let path = decode_path(&target)?;
    let mut head = RequestHead {
        method,
        target,
        path,
        minor_version,
        headers,
        body: BodyLength::Length(0),
        keep_alive: false,
        expect_continue: false,
    };
    head.body = body_length(&head)?;
    let connection: Vec<String> = head.header_tokens("connection").collect();
    head.keep_alive = if minor_version == 0 {
        connection.iter().any(|t| t == "keep-alive")
    } else {
        !connection.iter().any(|t| t == "close")
    };
    head.expect_continue = head
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if let Some(encoding) = head.header("content-encoding")
        && !encoding.eq_ignore_ascii_case("identity")
    {
        return Err(HttpError::new(
            415,
            format!("Unsupported Content-Encoding '{encoding}'"),
        ));
    }
    Ok(Some((head, n)))
}

fn body_length(head: &RequestHead) -> Result<BodyLength, HttpError> {
    let codings: Vec<String> = head.header_tokens("transfer-encoding").collect();
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(HttpError::new(
                400,
                "Both Transfer-Encoding and Content-Length are present",
            ));
        }
        return if codings == ["chunked"] {
            Ok(BodyLength::Chunked)
        } else {
            Err(HttpError::new(
                501,
                format!("Unsupported Transfer-Encoding '{}'", codings.join(", ")),
            ))
        };
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|v| v.split(',')) {
        let value = value.trim();
        let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| HttpError::new(400, format!("Invalid Content-Length '{value}'")))?;
        if length.is_some_and(|l| l != n) {
            return Err(HttpError::new(400, "Conflicting Content-Length values"));
        }
        length = Some(n);
    }
    Ok(BodyLength::Length(length.unwrap_or(0)))
}

/// The path of a request target: origin-form or absolute-form, without query or
/// fragment, percent-decoded (libprocess decodes it too).
fn decode_path(target: &str) -> Result<String, HttpError> {
    let mut rest = target;
    if let Some(after) = rest.strip_prefix("http://").or_else(|| rest.strip_prefix("https://")) {
        rest = after.find('/').map_or("/", |i| &after[i..]);
    }
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let raw = &rest.as_bytes()[..end];
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = byte.ok_or_else(|| HttpError::new(400, format!("Malformed percent-encoding in '{target}'")))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| HttpError::new(400, format!("The path of '{target}' is not UTF-8")))
}

/// What one step of body decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Input bytes consumed, framing included.
    pub used: usize,
    /// Body bytes (a slice of the input: no copy). May be empty.
    pub data: &'a [u8],
    /// The body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: then `;` (extensions) or CR.
    SizeWs {
        size: u64,
    },
    /// Extensions, up to CR.
    Extension {
        size: u64,
    },
    /// Saw CR of a size line.
    SizeLf {
        size: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// A strict decoder for `Transfer-Encoding: chunked` bodies.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: ChunkState,
    line: usize,
    trailer: usize,
    max_line: usize,
    max_trailer: usize,
}

impl ChunkedDecoder {
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            line: 0,
            trailer: 0,
            max_line: limits.max_chunk_line,
            max_trailer: limits.max_trailer_bytes,
        }
    }

    /// Decodes from `input` until body data is available, the input runs out, or the
    /// body ends.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, HttpError> {
        let bad = |m: &str| HttpError::new(400, format!("Malformed chunked body: {m}"));
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Data { remaining } => {
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len() - i);
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data { remaining: left }
                    };
                    return Ok(Decoded {
                        used: i + take,
                        data: &input[i..i + take],
                        done: false,
                    });
                }
                ChunkState::Done => break,
                _ => {}
            }
            i += 1;
            self.state = match self.state {
                ChunkState::Size { size, digits } => {
                    self.line += 1;
                    if let Some(d) = (b as char).to_digit(16) {
                        if digits >= 16 {
                            return Err(bad("chunk size too large"));
                        }
                        ChunkState::Size {
                            size: size << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    } else if digits == 0 {
                        return Err(bad("missing chunk size"));
                    } else if b == b'\r' {
                        ChunkState::SizeLf { size }
                    } else if b == b';' {
                        ChunkState::Extension { size }
                    } else if b == b' ' || b == b'\t' {
                        ChunkState::SizeWs { size }
                    } else {
                        return Err(bad("invalid chunk size"));
                    }
                }
                ChunkState::SizeWs { size } => {
                    self.line += 1;
                    if self.line > self.max_line {
                        return Err(bad("chunk size line too long"));
                    }
                    match b {
                        b' ' | b'\t' => ChunkState::SizeWs { size },
                        b';' => ChunkState::Extension { size },
                        b'\r' => ChunkState::SizeLf { size },
                        _ => return Err(bad("invalid chunk size")),
                    }
                }
                ChunkState::Extension { size } => {
                    self.line += 1;
                    if self.line > self.max_line {
                        return Err(bad("chunk size line too long"));
                    }
                    match b {
                        b'\r' => ChunkState::SizeLf { size },
                        b'\n' => return Err(bad("bare LF")),
                        _ => ChunkState::Extension { size },
                    }
                }
                ChunkState::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(bad("expected LF after chunk size"));
                    }
                    self.line = 0;
                    if size == 0 {
                        ChunkState::TrailerStart
                    } else {
                        ChunkState::Data { remaining: size }
                    }
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(bad("missing CRLF after chunk data"));
                    }
                    ChunkState::DataLf
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad("missing CRLF after chunk data"));
                    }
                    ChunkState::Size { size: 0, digits: 0 }
                }
                ChunkState::TrailerStart | ChunkState::Trailer => {
                    let start = self.state == ChunkState::TrailerStart;
                    self.trailer += 1;
                    if self.trailer > self.max_trailer {
                        return Err(bad("trailer section too large"));
                    }
                    match b {
                        b'\r' => ChunkState::TrailerLf { empty: start },
                        b'\n' => return Err(bad("bare LF")),
                        _ => ChunkState::Trailer,
                    }
                }
                ChunkState::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(bad("expected LF in trailer section"));
                    }
                    if empty {
                        self.state = ChunkState::Done;
                        return Ok(Decoded {
                            used: i,
                            data: &[],
                            done: true,
                        });
                    }
                    ChunkState::TrailerStart
                }
                ChunkState::Data { .. } | ChunkState::Done => unreachable!("handled above"),
            };
            if let ChunkState::Size { .. } = self.state
                && self.line > self.max_line
            {
                return Err(bad("chunk size line too long"));
            }
        }
        Ok(Decoded {
            used: i,
            data: &[],
            done: self.state == ChunkState::Done,
        })
    }
}

/// The body decoder of one request.
#[derive(Debug, Clone)]
pub enum BodyDecoder {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

impl BodyDecoder {
    pub fn new(body: BodyLength, limits: &Limits) -> Self {
        match body {
            BodyLength::Length(n) => BodyDecoder::Length { remaining: n },
            BodyLength::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new(limits)),
        }
    }

    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Decoded<'a>, HttpError> {
        match self {
            BodyDecoder::Length { remaining } => {
                let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(input.len());
                *remaining -= take as u64;
                Ok(Decoded {
                    used: take,
                    data: &input[..take],
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(c) => c.decode(input),
        }
    }
}

/// One step of a connection's request stream.
#[derive(Debug)]
pub enum Event<'a> {
    /// A request begins. Its body (possibly empty) follows, then [`Event::End`].
    Head(RequestHead),
    /// Body bytes of the current request.
    Body(&'a [u8]),
    /// The current request's body is complete; the next request may follow.
    End,
}

#[derive(Debug)]
enum ReaderState {
    Head,
    Body(BodyDecoder),
}

/// Splits one connection's bytes into requests, in order (pipelining included).
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    state: ReaderState,
}

impl RequestReader {
    pub fn new(limits: Limits) -> Self {
        RequestReader {
            limits,
            state: ReaderState::Head,
        }
    }

    /// The next event from `buf` (the connection's unconsumed bytes). Returns the number
    /// of bytes used and the event, or `None` when more bytes are needed.
    pub fn next<'a>(&mut self, buf: &'a [u8]) -> Result<(usize, Option<Event<'a>>), HttpError> {
        match &mut self.state {
            ReaderState::Head => match parse_head(buf, &self.limits)? {
                None => Ok((0, None)),
                Some((head, n)) => {
                    self.state = ReaderState::Body(BodyDecoder::new(head.body, &self.limits));
                    Ok((n, Some(Event::Head(head))))
                }
            },
            ReaderState::Body(body) => {
                let d = body.decode(buf)?;
                if d.done && d.data.is_empty() {
                    self.state = ReaderState::Head;
                    Ok((d.used, Some(Event::End)))
                } else if !d.data.is_empty() {
                    // A body that ends exactly at this data: the End comes on the next call.
                    if d.done {
                        self.state = ReaderState::Body(BodyDecoder::Length { remaining: 0 });
                    }
                    Ok((d.used, Some(Event::Body(d.data))))
                } else {
                    Ok((d.used, None))
                }
            }
        }
    }

    /// Whether the reader is between requests.
    pub fn at_request_boundary(&self) -> bool {
        matches!(self.state, ReaderState::Head)
    }
}

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

/// A complete fixed-length response. Error bodies are plain text; `close` adds
/// `Connection: close` (sent when we are about to close the connection).
pub fn fixed_response(status: u16, body: &str, close: bool) -> Vec<u8> {
    let length = body.len().to_string();
    let mut headers = Vec::with_capacity(3);
    if !body.is_empty() {
        headers.push(("Content-Type", "text/plain; charset=utf-8"));
    }
    headers.push(("Content-Length", length.as_str()));
    if close {
        headers.push(("Connection", "close"));
    }
    let mut out = Vec::with_capacity(160 + body.len());
    write_response_head(status, &headers, &mut out);
    out.extend_from_slice(body.as_bytes());
    out
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends a chunk-size line: lowercase hex, CRLF.
pub fn write_chunk_size(len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
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
    use proptest::prelude::*;
    use std::time::Duration;

    fn head(text: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
        parse_head(text.as_bytes(), &Limits::default())
    }

    #[test]
    fn the_agents_request_head() {
        let text = "POST / HTTP/1.1\r\nHost:\r\nAccept: application/recordio\r\nMessage-Accept: application/json\r\n\
                    Content-Type: application/json\r\nContent-Length: 93\r\nConnection: close\r\n\r\n{";
        let (h, n) = head(text).unwrap().unwrap();
        assert_eq!(n, text.len() - 1);
        assert_eq!((h.method.as_str(), h.path.as_str(), h.minor_version), ("POST", "/", 1));
        assert_eq!(h.header("host"), Some(""));
        assert_eq!(h.header("message-accept"), Some("application/json"));
        assert_eq!(h.body, BodyLength::Length(93));
        assert!(!h.keep_alive);
    }

    #[test]
    fn framing_and_connection_rules() {
        let h = head("POST /a%2fb?x=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(
            (h.path.as_str(), h.body, h.keep_alive),
            ("/a/b", BodyLength::Chunked, true)
        );
        let h = head("POST / HTTP/1.0\r\n\r\n").unwrap().unwrap().0;
        assert_eq!((h.body, h.keep_alive), (BodyLength::Length(0), false));
        let h = head("POST / HTTP/1.0\r\nConnection: Keep-Alive\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(h.keep_alive && h.expect_continue);
        let h = head("POST http://x/acknowledge_container_input_response HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(h.path, "/acknowledge_container_input_response");
        let status = |t: &str| head(t).unwrap_err().status;
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            400
        );
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Encoding: gzip\r\n\r\n"), 415);
        assert_eq!(status("POST /%zz HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GARBAGE\r\n\r\n"), 400);
        assert!(
            head("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn head_limits_hold() {
        let limits = Limits {
            max_head_bytes: 100,
            max_headers: 4,
            ..Limits::default()
        };
        let long = format!("POST / HTTP/1.1\r\nX: {}\r\n", "a".repeat(200));
        assert_eq!(parse_head(long.as_bytes(), &limits).unwrap_err().status, 431);
        let partial = format!("POST / HTTP/1.1\r\nX: {}", "a".repeat(200));
        assert_eq!(parse_head(partial.as_bytes(), &limits).unwrap_err().status, 431);
        let many = "POST / HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
        assert_eq!(parse_head(many.as_bytes(), &limits).unwrap_err().status, 431);
        assert_eq!(
            parse_head(b"POST / HTTP/1.1\r\nA: 1\r\n", &limits).unwrap().map(|_| ()),
            None
        );
        // A 1 MiB head is refused once the limit is passed, without waiting for its end.
        let huge = vec![b'a'; 1 << 20];
        assert_eq!(parse_head(&huge, &Limits::default()).unwrap_err().status, 431);
    }

    fn decode_chunked(input: &[u8], limits: &Limits) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut d = ChunkedDecoder::new(limits);
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            let step = d.decode(&input[used..])?;
            used += step.used;
            out.extend_from_slice(step.data);
            if step.done || (step.used == 0 && step.data.is_empty()) || used == input.len() {
                if !step.done && used < input.len() {
                    continue;
                }
                return Ok((out, used, step.done));
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let l = Limits::default();
        let body = b"4\r\nWiki\r\n5;name=val\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (data, used, done) = decode_chunked(body, &l).unwrap();
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&body[used..], b"NEXT");
        assert!(done);
        let bad = |b: &[u8]| decode_chunked(b, &l).unwrap_err().status;
        assert_eq!(bad(b"x\r\n"), 400);
        assert_eq!(bad(b"\r\n"), 400);
        assert_eq!(bad(b"4\nWiki"), 400);
        assert_eq!(bad(b"4\r\nWikiXX"), 400);
        assert_eq!(bad(b"11111111111111111\r\n"), 400);
        assert_eq!(bad(b"0\r\nX: 1\n"), 400);
        assert_eq!(bad(b"1 0\r\n"), 400, "whitespace inside the size");
        // Whitespace before the extensions or the line end is allowed (BWS).
        assert_eq!(decode_chunked(b"2 \t;a=b\r\nhi\r\n0 \r\n\r\n", &l).unwrap().0, b"hi");
        let tight = Limits {
            max_chunk_line: 8,
            max_trailer_bytes: 8,
            ..l
        };
        assert_eq!(
            decode_chunked(b"1;aaaaaaaaaaaaaaaaaaaa\r\n", &tight)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            decode_chunked(b"0\r\nX-Long-Trailer: 1\r\n\r\n", &tight)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn pipelined_requests_in_order() {
        let stream =
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /acknowledge_container_input_response HTTP/1.1\r\n\
                       Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\nPOST /3 HTTP/1.1\r\n\r\n";
        let mut r = RequestReader::new(Limits::default());
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let (used, ev) = r.next(&stream[pos..]).unwrap();
            pos += used;
            match ev {
                Some(Event::Head(h)) => events.push(format!("head {}", h.path)),
                Some(Event::Body(b)) => events.push(format!("body {}", String::from_utf8_lossy(b))),
                Some(Event::End) => events.push("end".into()),
                None => break,
            }
        }
        // The last request has an empty body: its End needs no more bytes.
        let (_, ev) = r.next(&[]).unwrap();
        assert!(matches!(ev, Some(Event::End)));
        assert_eq!(
            events,
            [
                "head /",
                "body abc",
                "end",
                "head /acknowledge_container_input_response",
                "body xy",
                "end",
                "head /3"
            ]
        );
        assert!(r.at_request_boundary());
    }

    #[test]
    fn responses() {
        let r = String::from_utf8(fixed_response(409, "Multiple input connections are not allowed", false)).unwrap();
        assert!(r.starts_with(
            "HTTP/1.1 409 Conflict\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 42\r\nDate: "
        ));
        assert!(r.ends_with(" GMT\r\n\r\nMultiple input connections are not allowed"));
        let ok = String::from_utf8(fixed_response(200, "", true)).unwrap();
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

    proptest! {
        #[test]
        fn chunked_any_split(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..50), 0..6),
            cut in any::<usize>(),
        ) {
            let mut body = Vec::new();
            for c in &chunks {
                body.extend_from_slice(format!("{:X};ext\r\n", c.len()).as_bytes());
                body.extend_from_slice(c);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\nT: v\r\n\r\n");
            let cut = cut % (body.len() + 1);
            let mut d = ChunkedDecoder::new(&Limits::default());
            let mut data = Vec::new();
            let mut done = false;
            for part in [&body[..cut], &body[cut..]] {
                let mut pos = 0;
                while pos < part.len() && !done {
                    let step = d.decode(&part[pos..]).unwrap();
                    pos += step.used;
                    data.extend_from_slice(step.data);
                    done = step.done;
                }
            }
            prop_assert!(done);
            prop_assert_eq!(data, chunks.concat());
        }
    }
}
