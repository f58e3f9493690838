//! Request routing and media-type negotiation (docs/protocol.md §9, §15).
//!
//! `Accept` and `Message-Accept` follow libprocess's `acceptsMediaType` exactly; the
//! server's preference order is fixed (JSON, then protobuf, then RecordIO). Where Mesos
//! aborts the server on a bad request we answer with a 4xx (§15);
//! `Content-Type` and `Message-Content-Type` are compared leniently (case and parameters
//! ignored), which no Mesos client can tell apart.

use super::http::{HttpError, RequestHead};
use super::message::Format;

pub const APPLICATION_JSON: &str = "application/json";
pub const APPLICATION_PROTOBUF: &str = "application/x-protobuf";
pub const APPLICATION_RECORDIO: &str = "application/recordio";

/// The path of the acknowledgement endpoint; every other path is a Call.
pub const ACKNOWLEDGE_PATH: &str = "/acknowledge_container_input_response";

/// Whether an `Accept`-style header value allows `media` (libprocess
/// `Request::acceptsMediaType`). A missing header allows everything.
pub fn accepts(header: Option<&str>, media: &str) -> bool {
    let Some(header) = header else { return true };
    let cleaned: String = header.chars().filter(|c| !matches!(c, ' ' | '\t' | '\n')).collect();
    let elements: Vec<Vec<&str>> = cleaned
        .split(',')
        .map(|e| e.split(';').filter(|t| !t.is_empty()).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    let candidates = [media.to_string(), format!("{kind}/*"), "*/*".to_string()];
    for candidate in &candidates {
        for tokens in &elements {
            if !tokens[0].eq_ignore_ascii_case(candidate) {
                continue;
            }
            let params = &tokens[1..];
            if params.len() == 1
                && let Some(q) = params[0].strip_prefix("q=")
            {
                return q.parse::<f64>().is_ok_and(|q| q > 0.0);
            }
            return true;
        }
    }
    false
}

/// How the records of an output response are framed and labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// `Accept` chose JSON or protobuf: `Content-Type` says so, and the body is still
    /// RecordIO of records in that format (docs/protocol.md §10.2).
    Plain(Format),
    /// `Accept` chose RecordIO: `Message-Content-Type` names the record format.
    Streaming(Format),
}

impl ResponseFormat {
    /// The format of each record.
    pub fn record_format(self) -> Format {
        match self {
            ResponseFormat::Plain(f) | ResponseFormat::Streaming(f) => f,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            ResponseFormat::Plain(f) => f.media_type(),
            ResponseFormat::Streaming(_) => APPLICATION_RECORDIO,
        }
    }

    pub fn message_content_type(self) -> Option<&'static str> {
        match self {
            ResponseFormat::Plain(_) => None,
            ResponseFormat::Streaming(f) => Some(f.media_type()),
        }
    }
}

/// How a Call's request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One message (`Content-Type: application/json` or `application/x-protobuf`).
    Single(Format),
    /// A RecordIO stream of messages (`Content-Type: application/recordio`).
    Streaming(Format),
}

/// Ours: `GET /metrics`, the server's figures in the Prometheus text format.
pub const METRICS_PATH: &str = "/metrics";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (ours): `open_metrics` when `Accept` names the OpenMetrics format.
    Metrics { open_metrics: bool },
    /// `POST /acknowledge_container_input_response`: no header checks, body ignored.
    Acknowledge,
    /// A Call on any other path.
    Call { body: BodyFormat, response: ResponseFormat },
}

/// Ours, on `ATTACH_CONTAINER_OUTPUT` (docs/protocol.md §10.8): the request asks to
/// start at a position, or some bytes before the newest output; the response says the
/// position of its first byte, how many bytes the history no longer had, the position of
/// the newest output when it began (what comes before is history), and which server
/// numbered these positions.
pub const FROM_HEADER: &str = "Switchboard-From";
pub const TAIL_HEADER: &str = "Switchboard-Tail";
pub const POSITION_HEADER: &str = "Switchboard-Position";
pub const SKIPPED_HEADER: &str = "Switchboard-Skipped";
pub const NEWEST_HEADER: &str = "Switchboard-Newest";
pub const INSTANCE_HEADER: &str = "Switchboard-Instance";

/// Ours, on `ATTACH_CONTAINER_OUTPUT` to a TTY container (docs/protocol.md §10.9): the
/// request asks for a redraw of the terminal's screen before the output
/// (`Switchboard-Screen: 1`), and says its size (`Switchboard-Window: ROWSxCOLS`); the
/// response says whether the redraw came.
pub const SCREEN_HEADER: &str = "Switchboard-Screen";
pub const WINDOW_HEADER: &str = "Switchboard-Window";
/// A name a client gives its terminal on its output and its input requests, so that its
/// input's resizes change its own window (1 to 64 letters, digits, `.`, `_`, `-`).
pub const TERMINAL_HEADER: &str = "Switchboard-Terminal";

/// What an output call's headers ask (all of it ours; Mesos clients ask nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputAsk {
    pub at: StartAt,
    /// A redraw of the terminal's screen first.
    pub screen: bool,
    /// The client's terminal size: rows and columns.
    pub window: Option<(u16, u16)>,
    /// The name of the client's terminal.
    pub terminal: Option<String>,
}

impl OutputAsk {
    /// At the newest output, nothing else (Mesos's behaviour).
    pub const LIVE: OutputAsk = OutputAsk {
        at: StartAt::Live,
        screen: false,
        window: None,
        terminal: None,
    };
}

/// The terminal a request names (`Switchboard-Terminal`), if it names one.
pub fn terminal_named(head: &RequestHead) -> Result<Option<String>, HttpError> {
    let Some(v) = head.header(TERMINAL_HEADER).map(str::trim) else { return Ok(None) };
    let ok = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    match (1..=64).contains(&v.len()) && v.chars().all(ok) {
        true => Ok(Some(v.to_string())),
        false => Err(HttpError::new(
            400,
            format!("{TERMINAL_HEADER} must be 1 to 64 letters, digits, '.', '_' or '-', not '{v}'"),
        )),
    }
}

/// What an output call's headers ask: where to start, a redraw, a size.
pub fn output_ask(head: &RequestHead) -> Result<OutputAsk, HttpError> {
    let at = start_at(head)?;
    let screen = match head.header(SCREEN_HEADER).map(str::trim) {
        None | Some("0" | "false") => false,
        Some("1" | "true") => true,
        Some(v) => {
            return Err(HttpError::new(
                400,
                format!("{SCREEN_HEADER} must be 1 or 0, not '{v}'"),
            ));
        }
    };
    let window = match head.header(WINDOW_HEADER).map(str::trim) {
        None => None,
        Some(v) => Some(parse_window(v).ok_or_else(|| {
            HttpError::new(
                400,
                format!("{WINDOW_HEADER} must be ROWSxCOLUMNS, each 1 to 65535 (such as 24x80), not '{v}'"),
            )
        })?),
    };
    let terminal = terminal_named(head)?;
    Ok(OutputAsk {
        at,
        screen,
        window,
        terminal,
    })
}

/// `24x80`: rows and columns, each 1 to 65535.
fn parse_window(v: &str) -> Option<(u16, u16)> {
    let (rows, columns) = v.split_once(['x', 'X'])?;
    let n = |t: &str| match t.bytes().all(|b| b.is_ascii_digit()) {
        true => t.parse::<u16>().ok().filter(|&n| n > 0),
        false => None,
    };
    Some((n(rows)?, n(columns)?))
}

/// Where an output client asks to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At the newest output: what comes from now on (Mesos's behaviour, and the default).
    Live,
    /// At this position (`Switchboard-From`: a resume).
    Position(u64),
    /// This many bytes before the newest output (`Switchboard-Tail`).
    Tail(u64),
}

/// Where an output call's headers ask it to start.
fn start_at(head: &RequestHead) -> Result<StartAt, HttpError> {
    let number = |name: &str| {
        head.header(name)
            .map(|v| {
                let v = v.trim();
                match v.bytes().all(|b| b.is_ascii_digit()) {
                    true => v.parse::<u64>().ok(),
                    false => None,
                }
                .ok_or_else(|| HttpError::new(400, format!("{name} must be a number of bytes, not '{v}'")))
            })
            .transpose()
    };
    match (number(FROM_HEADER)?, number(TAIL_HEADER)?) {
        (Some(_), Some(_)) => Err(HttpError::new(
            400,
            format!("{FROM_HEADER} and {TAIL_HEADER} exclude each other"),
        )),
        (Some(p), None) => Ok(StartAt::Position(p)),
        (None, Some(n)) => Ok(StartAt::Tail(n)),
        (None, None) => Ok(StartAt::Live),
    }
}

/// A media type with its parameters and case ignored.
fn essence(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn record_format(media: &str) -> Option<Format> {
    match media {
        APPLICATION_JSON => Some(Format::Json),
        APPLICATION_PROTOBUF => Some(Format::Protobuf),
        _ => None,
    }
}

/// Classifies a request in Mesos's order (docs/protocol.md §9.1).
pub fn route(head: &RequestHead) -> Result<Route, HttpError> {
    if head.method == "GET" && head.path == METRICS_PATH {
        let open_metrics = head.header("accept").is_some_and(|a| {
            a.to_ascii_lowercase().contains("application/openmetrics-text")
                && accepts(Some(a), "application/openmetrics-text")
        });
        return Ok(Route::Metrics { open_metrics });
    }
    if head.method != "POST" {
        return Err(HttpError::new(
            405,
            format!("Expecting 'POST', received '{}'", head.method),
        ));
    }
    if head.path == ACKNOWLEDGE_PATH {
        return Ok(Route::Acknowledge);
    }
    let content_type = head
        .header("content-type")
        .ok_or_else(|| HttpError::new(400, "Expecting 'Content-Type' to be present"))?;
    let body = match essence(content_type).as_str() {
        APPLICATION_RECORDIO => {
            let mct = head.header("message-content-type").ok_or_else(|| {
                HttpError::new(400, "Expecting 'Message-Content-Type' to be set for streaming requests")
            })?;
            let format = record_format(&essence(mct)).ok_or_else(|| {
                HttpError::new(
                    415,
                    "Expecting 'Message-Content-Type' of application/json or application/x-protobuf",
                )
            })?;
            BodyFormat::Streaming(format)
        }
        other => BodyFormat::Single(record_format(other).ok_or_else(|| {
            HttpError::new(
                415,
                "Expecting 'Content-Type' of application/json or application/x-protobuf or application/recordio",
            )
        })?),
    };
    let accept = head.header("accept");
    let response = if accepts(accept, APPLICATION_JSON) {
        ResponseFormat::Plain(Format::Json)
    } else if accepts(accept, APPLICATION_PROTOBUF) {
        ResponseFormat::Plain(Format::Protobuf)
    } else if accepts(accept, APPLICATION_RECORDIO) {
        let message_accept = head.header("message-accept");
        if accepts(message_accept, APPLICATION_JSON) {
            ResponseFormat::Streaming(Format::Json)
        } else if accepts(message_accept, APPLICATION_PROTOBUF) {
            ResponseFormat::Streaming(Format::Protobuf)
        } else {
            return Err(HttpError::new(
                406,
                "Expecting 'Message-Accept' to allow 'application/json' or 'application/x-protobuf'",
            ));
        }
    } else {
        return Err(HttpError::new(
            406,
            "Expecting 'Accept' to allow 'application/json' or 'application/x-protobuf' or 'application/recordio'",
        ));
    };
    Ok(Route::Call { body, response })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::http::{Limits, parse_head};

    #[test]
    fn where_an_output_call_starts() {
        let head = |extra: &str| {
            let text = format!("POST / HTTP/1.1\r\nHost:\r\n{extra}Content-Length: 0\r\n\r\n");
            parse_head(text.as_bytes(), &Limits::default()).unwrap().unwrap().0
        };
        assert_eq!(start_at(&head("")), Ok(StartAt::Live));
        assert_eq!(
            start_at(&head("Switchboard-From: 1234\r\n")),
            Ok(StartAt::Position(1234))
        );
        assert_eq!(start_at(&head("switchboard-tail:  100 \r\n")), Ok(StartAt::Tail(100)));
        for bad in [
            "Switchboard-From: -1\r\n",
            "Switchboard-From: \r\n",
            "Switchboard-Tail: 1e3\r\n",
        ] {
            assert_eq!(start_at(&head(bad)).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            start_at(&head("Switchboard-From: 1\r\nSwitchboard-Tail: 2\r\n"))
                .unwrap_err()
                .message,
            "Switchboard-From and Switchboard-Tail exclude each other"
        );
        assert_eq!(output_ask(&head("")), Ok(OutputAsk::LIVE));
        let ask = output_ask(&head("Switchboard-Screen: 1\r\nSwitchboard-Window: 40x120\r\n")).unwrap();
        assert_eq!((ask.at, ask.screen, ask.window), (StartAt::Live, true, Some((40, 120))));
        assert!(!output_ask(&head("Switchboard-Screen: 0\r\n")).unwrap().screen);
        let named = output_ask(&head("Switchboard-Terminal: a1.b_c-d\r\n")).unwrap();
        assert_eq!(named.terminal.as_deref(), Some("a1.b_c-d"));
        for bad in [
            "Switchboard-Screen: yes\r\n",
            "Switchboard-Window: 40\r\n",
            "Switchboard-Window: 0x80\r\n",
            "Switchboard-Window: 24x70000\r\n",
            "Switchboard-Window: -1x80\r\n",
            "Switchboard-Terminal: a b\r\n",
            "Switchboard-Terminal: \r\n",
        ] {
            assert_eq!(output_ask(&head(bad)).unwrap_err().status, 400, "{bad}");
        }
    }

    fn negotiate(accept: Option<&str>) -> Option<&'static str> {
        [APPLICATION_JSON, APPLICATION_PROTOBUF, APPLICATION_RECORDIO]
            .into_iter()
            .find(|m| accepts(accept, m))
    }

    #[test]
    fn the_accept_table() {
        assert_eq!(negotiate(None), Some(APPLICATION_JSON));
        assert_eq!(negotiate(Some("*/*")), Some(APPLICATION_JSON));
        assert_eq!(negotiate(Some("application/*")), Some(APPLICATION_JSON));
        assert_eq!(
            negotiate(Some("application/recordio, application/json")),
            Some(APPLICATION_JSON)
        );
        assert_eq!(
            negotiate(Some("application/json;q=0, application/recordio")),
            Some(APPLICATION_RECORDIO)
        );
        assert_eq!(negotiate(Some("application/x-protobuf")), Some(APPLICATION_PROTOBUF));
        assert_eq!(negotiate(Some("text/html")), None);
    }

    #[test]
    fn q_values_and_wildcards() {
        assert!(accepts(Some("APPLICATION/JSON"), APPLICATION_JSON));
        assert!(accepts(Some("application/json; q=0.5"), APPLICATION_JSON));
        assert!(!accepts(Some("application/json;q=abc"), APPLICATION_JSON));
        assert!(accepts(Some("application/json;q=0;level=1"), APPLICATION_JSON));
        // The first matching element decides, and exact types are tried before wildcards.
        assert!(!accepts(
            Some("application/json;q=0, application/json"),
            APPLICATION_JSON
        ));
        assert!(!accepts(Some("*/*, application/json;q=0"), APPLICATION_JSON));
        assert!(!accepts(Some("application/*;q=0, */*"), APPLICATION_PROTOBUF));
        assert!(accepts(Some("text/*;q=0, */*"), APPLICATION_PROTOBUF));
        assert!(!accepts(Some(""), APPLICATION_JSON));
    }

    fn route_of(headers: &str) -> Result<Route, HttpError> {
        let text = format!("POST / HTTP/1.1\r\n{headers}\r\n");
        route(&parse_head(text.as_bytes(), &Limits::default()).unwrap().unwrap().0)
    }

    #[test]
    fn routing_and_refusals() {
        use BodyFormat::*;
        assert_eq!(
            route_of(
                "Content-Type: application/json\r\nAccept: application/recordio\r\nMessage-Accept: application/x-protobuf\r\n"
            ),
            Ok(Route::Call {
                body: Single(Format::Json),
                response: ResponseFormat::Streaming(Format::Protobuf)
            })
        );
        assert_eq!(
            route_of("Content-Type: Application/JSON; charset=utf-8\r\n"),
            Ok(Route::Call {
                body: Single(Format::Json),
                response: ResponseFormat::Plain(Format::Json)
            })
        );
        assert_eq!(
            route_of(
                "Content-Type: application/recordio\r\nMessage-Content-Type: application/x-protobuf\r\nAccept: application/x-protobuf\r\nMessage-Accept: text/html\r\n"
            ),
            Ok(Route::Call {
                body: Streaming(Format::Protobuf),
                response: ResponseFormat::Plain(Format::Protobuf)
            })
        );
        let status = |h: &str| route_of(h).unwrap_err();
        assert_eq!(status("").status, 400);
        assert_eq!(status("Content-Type: text/plain\r\n").status, 415);
        assert_eq!(
            status("Content-Type: application/recordio\r\n").message,
            "Expecting 'Message-Content-Type' to be set for streaming requests"
        );
        let e = status("Content-Type: application/recordio\r\nMessage-Content-Type: text/plain\r\n");
        assert_eq!(
            (e.status, e.message.as_str()),
            (
                415,
                "Expecting 'Message-Content-Type' of application/json or application/x-protobuf"
            )
        );
        assert_eq!(
            status("Content-Type: application/json\r\nAccept: text/html\r\n").status,
            406
        );
        assert_eq!(
            status("Content-Type: application/json\r\nAccept: application/recordio\r\nMessage-Accept: text/html\r\n")
                .status,
            406
        );
        let get = parse_head(b"GET / HTTP/1.1\r\n\r\n", &Limits::default())
            .unwrap()
            .unwrap()
            .0;
        assert_eq!(route(&get).unwrap_err().status, 405);
        let ack = parse_head(
            b"POST /acknowledge_container_input_response?x HTTP/1.1\r\n\r\n",
            &Limits::default(),
        )
        .unwrap()
        .unwrap()
        .0;
        assert_eq!(route(&ack), Ok(Route::Acknowledge));
    }
}
