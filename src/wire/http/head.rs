//! Request heads: parsed by httparse within [`Limits`], with the framing rules of
//! RFC 9112 (how the body is delimited, whether the connection stays open).

use super::{HttpError, Limits};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
