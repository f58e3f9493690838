//! Hostile and malformed requests against the real drop-in: each is answered
//! with its 4xx (Mesos's 500 where Mesos answers a decoder failure so), or the connection
//! is closed where no answer is possible; after each the server is alive and serves a
//! valid request, an output client attached throughout sees every byte, and the logger
//! is byte-complete at the end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::within;
use switchboard::wire::Format;

/// What a case must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// This status, then (for errors) the connection closed.
    Status(u16),
    /// No answer is possible: the connection is closed.
    Closed,
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    /// Shut our write side after the bytes (the peer sees EOF).
    half_close: bool,
    expect: Expect,
}

fn case(name: &str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name: name.to_string(),
        bytes: bytes.into(),
        half_close: false,
        expect,
    }
}

fn eof_case(name: &str, bytes: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        half_close: true,
        ..case(name, bytes, expect)
    }
}

use Expect::{Closed, Status};

const JSON: &str = "Content-Type: application/json";

/// An input request (JSON records) with the given body bytes after its head, ended by
/// the last chunk.
fn input(body: &[u8]) -> Vec<u8> {
    let mut r = input_head(false);
    r.extend_from_slice(body);
    r.extend_from_slice(LAST_CHUNK);
    r
}

/// An input request whose first record is valid, then `later` (a JSON record).
fn later(rec: &str) -> Vec<u8> {
    let mut body = record(FIRST_RECORD);
    body.extend(record(rec));
    input(&body)
}

/// An input request with protobuf records.
fn pb_input(body: &[u8]) -> Vec<u8> {
    let mut r = b"POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/recordio\r\n\
                  Message-Content-Type: application/x-protobuf\r\nAccept: application/json\r\n\
                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    r.extend_from_slice(body);
    r.extend_from_slice(LAST_CHUNK);
    r
}

fn method(m: &str) -> Vec<u8> {
    format!("{m} / HTTP/1.1\r\nHost:\r\n{JSON}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // Garbage and truncated heads.
        case("binary garbage", b"\x00\x01\x02\x03\r\n\r\n".to_vec(), Status(400)),
        case("a word, no request line", b"hello\r\n\r\n".to_vec(), Status(400)),
        case("request line without version", b"POST /\r\n\r\n".to_vec(), Status(400)),
        case("HTTP/2.0", b"POST / HTTP/2.0\r\nHost:\r\n\r\n".to_vec(), Status(400)),
        case("HTTP/1.2", b"POST / HTTP/1.2\r\nHost:\r\n\r\n".to_vec(), Status(400)),
        case(
            "lower-case version",
            b"POST / http/1.1\r\nHost:\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "header without a colon",
            b"POST / HTTP/1.1\r\nHost\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "space in a header name",
            b"POST / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "folded header line",
            b"POST / HTTP/1.1\r\nA: b\r\n  c\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "NUL in a header value",
            b"POST / HTTP/1.1\r\nA: b\x00c\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "bare LF line ends, no Content-Type",
            b"POST / HTTP/1.1\nHost:\n\n".to_vec(),
            Status(400),
        ),
        case(
            "two spaces in the request line",
            b"POST  / HTTP/1.1\r\n\r\n".to_vec(),
            Status(400),
        ),
        eof_case("head cut in a header", b"POST / HTTP/1.1\r\nHost:".to_vec(), Closed),
        eof_case("head cut in the request line", b"PO".to_vec(), Closed),
        eof_case("nothing at all", Vec::new(), Closed),
        eof_case(
            "head without its blank line",
            b"POST / HTTP/1.1\r\nHost:\r\n".to_vec(),
            Closed,
        ),
        // Oversize heads.
        case(
            "17 KiB header value",
            format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(17 << 10)),
            Status(431),
        ),
        case(
            "65 header fields",
            format!(
                "POST / HTTP/1.1\r\n{}\r\n",
                (0..65).map(|i| format!("X{i}: y\r\n")).collect::<String>()
            ),
            Status(431),
        ),
        case(
            "1 MiB header value",
            format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(1 << 20)),
            Status(431),
        ),
        case(
            "16 KiB of request line",
            format!("POST /{} HTTP/1.1\r\n\r\n", "a".repeat(16 << 10)),
            Status(431),
        ),
        // Targets.
        case("bad percent-encoding", post("/%zz", &[JSON], OUTPUT_CALL), Status(400)),
        case(
            "a path that is not UTF-8",
            post("/%ff", &[JSON], OUTPUT_CALL),
            Status(400),
        ),
        case("asterisk target, GET", b"GET * HTTP/1.1\r\n\r\n".to_vec(), Status(405)),
    ];
    // Every method but POST.
    for m in [
        "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW",
    ] {
        v.push(case(&format!("method {m}"), method(m), Status(405)));
    }
    v.push(case(
        "GET on the acknowledgement path",
        b"GET /acknowledge_container_input_response HTTP/1.1\r\n\r\n".to_vec(),
        Status(405),
    ));
    v.extend([
        // Missing and conflicting headers.
        case("no Content-Type", post("/", &[], OUTPUT_CALL), Status(400)),
        case("Content-Type text/html", post("/", &["Content-Type: text/html"], OUTPUT_CALL), Status(415)),
        case("empty Content-Type", post("/", &["Content-Type:"], OUTPUT_CALL), Status(415)),
        case("RecordIO without Message-Content-Type", post("/", &["Content-Type: application/recordio"], b""), Status(400)),
        case(
            "Message-Content-Type text/plain",
            post("/", &["Content-Type: application/recordio", "Message-Content-Type: text/plain"], b""),
            Status(415),
        ),
        case("Accept text/html", post("/", &[JSON, "Accept: text/html"], OUTPUT_CALL), Status(406)),
        case(
            "Message-Accept text/html",
            post("/", &[JSON, "Accept: application/recordio", "Message-Accept: text/html"], OUTPUT_CALL),
            Status(406),
        ),
        case(
            "Transfer-Encoding and Content-Length",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "Transfer-Encoding gzip",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            Status(501),
        ),
        case(
            "Transfer-Encoding gzip, chunked",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            Status(501),
        ),
        case(
            "Content-Length abc",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "Content-Length -1",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "Content-Length 5, 6",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5, 6\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n".to_vec(),
            Status(400),
        ),
        case(
            "Content-Length 10^15",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 1000000000000000\r\n\r\n".to_vec(),
            Status(413),
        ),
        case(
            "Content-Length past u64",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
            Status(400),
        ),
        case("Content-Encoding gzip", post("/", &[JSON, "Content-Encoding: gzip"], OUTPUT_CALL), Status(415)),
        eof_case(
            "body shorter than Content-Length",
            b"POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"type\"".to_vec(),
            Closed,
        ),
        // Bodies of the output call.
        case("empty output call", post("/", &[JSON], b""), Status(400)),
        case("JSON null", post("/", &[JSON], b"null"), Status(400)),
        case("JSON array", post("/", &[JSON], b"[1,2]"), Status(400)),
        case("JSON string", post("/", &[JSON], b"\"ATTACH_CONTAINER_OUTPUT\""), Status(400)),
        case("JSON cut short", post("/", &[JSON], b"{\"type\":"), Status(400)),
        case("JSON with trailing bytes", post("/", &[JSON], &[OUTPUT_CALL, b"}}"].concat()), Status(400)),
        case("not an output call", post("/", &[JSON], br#"{"type":"GET_HEALTH"}"#), Status(400)),
        case("unknown call type", post("/", &[JSON], br#"{"type":"NO_SUCH_CALL"}"#), Status(400)),
        case(
            "output call without container_id",
            post("/", &[JSON], br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{}}"#),
            Status(400),
        ),
        case(
            "container_id of the wrong type",
            post(
                "/",
                &[JSON],
                br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{"container_id":5}}"#,
            ),
            Status(400),
        ),
        case(
            "JSON nested 30000 deep",
            post("/", &[JSON], format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)).as_bytes()),
            Status(400),
        ),
        case(
            "protobuf garbage",
            post("/", &["Content-Type: application/x-protobuf"], b"\xff\xff\xff\xff\x0f"),
            Status(400),
        ),
        case("output call over 64 KiB", post("/", &[JSON], &vec![b' '; 70 << 10]), Status(413)),
        // Chunked bodies of input requests.
        case("chunk size not hex", [input_head(false), b"zz\r\nab\r\n".to_vec()].concat(), Status(400)),
        case("chunk size negative", [input_head(false), b"-5\r\nhello\r\n".to_vec()].concat(), Status(400)),
        case("chunk size past u64", [input_head(false), b"fffffffffffffffffff\r\n".to_vec()].concat(), Status(400)),
        case(
            "chunk line of 2 KiB",
            [input_head(false), format!("5;{}\r\n", "x".repeat(2048)).into_bytes()].concat(),
            Status(400),
        ),
        case("chunk data without CRLF", [input_head(false), b"1\r\nxYY".to_vec()].concat(), Status(400)),
        case("chunk size with a space inside", [input_head(false), b"1 0\r\n".to_vec()].concat(), Status(400)),
        case(
            "trailers of 9 KiB",
            [input_head(false), format!("0\r\nT: {}\r\n\r\n", "t".repeat(9 << 10)).into_bytes()].concat(),
            Status(400),
        ),
        // The body stream failed (not a clean end of body): Mesos's 500 (docs/protocol.md §11.2).
        eof_case("chunked body cut before the first record", input_head(false), Status(500)),
        // RecordIO framing and records of input requests.
        case("record length not a number", input(&chunk(b"abc\nxyz")), Status(500)),
        case("record length negative", input(&chunk(b"-1\nx")), Status(500)),
        case("record length 10^15", input(&chunk(b"1000000000000000\n")), Status(413)),
        case("record of 2 MiB", input(&chunk(format!("{}\n", 2 << 20).as_bytes())), Status(413)),
        case("first record not JSON", input(&record("{nope")), Status(500)),
        case("first record empty", input(&chunk(b"0\n")), Status(500)),
        case("first record an output call", input(&record(std::str::from_utf8(OUTPUT_CALL).unwrap())), Status(400)),
        case("first record a STDIN record", input(&record(&stdin_record(b"x"))), Status(400)),
        case(
            "first record without container_id",
            input(&record(r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID"}}"#)),
            Status(400),
        ),
        case("first record protobuf garbage", pb_input(&chunk(b"3\n\xff\xff\xff")), Status(500)),
        case("later record GET_HEALTH", later(r#"{"type":"GET_HEALTH"}"#), Status(400)),
        case("later record {}", later("{}"), Status(400)),
        // 500 for a first record that does not deserialise, 400 for a later one
        // (docs/protocol.md §15).
        case("later record not JSON", later("{nope"), Status(400)),
        case(
            "later record STDOUT data",
            later(&process_io(r#"{"type":"DATA","data":{"type":"STDOUT","data":""}}"#)),
            Status(400),
        ),
        case("later record DATA without data", later(&process_io(r#"{"type":"DATA"}"#)), Status(400)),
        case("later record CONTROL without control", later(&process_io(r#"{"type":"CONTROL"}"#)), Status(400)),
        case(
            "later record data not base64",
            later(&process_io(r#"{"type":"DATA","data":{"type":"STDIN","data":"!!!"}}"#)),
            Status(400),
        ),
        case("later record unknown ProcessIO type", later(&process_io(r#"{"type":"NOPE"}"#)), Status(400)),
        case("later record window size on a pipe", later(&resize_record(24, 80)), Status(400)),
        case(
            "later record window size without size",
            later(&process_io(r#"{"type":"CONTROL","control":{"type":"TTY_INFO","tty_info":{}}}"#)),
            Status(400),
        ),
        // Acknowledgements and requests after the end.
        case("acknowledgement with none outstanding", ack_request(false), Status(200)),
        case(
            "acknowledgement with a body",
            b"POST /acknowledge_container_input_response HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
                .to_vec(),
            Status(200),
        ),
        case("request after Connection: close", [ack_request(false), b"GARBAGE\r\n\r\n".to_vec()].concat(), Status(200)),
    ]);
    // A valid record split at every byte, one byte per chunk: whole, 200.
    let mut body = Vec::new();
    for rec in [record(FIRST_RECORD), record(&stdin_record(b"split\n"))] {
        let framed = &rec[rec.iter().position(|&b| b == b'\n').unwrap() + 1..rec.len() - 2];
        for b in framed {
            body.extend(chunk(&[*b]));
        }
    }
    v.push(case("records split at every byte", input(&body), Status(200)));
    v
}

/// Sends one case on a new connection; returns the status it got, or `None` if the
/// connection closed without one.
fn run(socket: &std::path::Path, c: &Case) -> Option<u16> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The server may answer and close before it has read everything: a failed write is
    // part of the case, the answer is what counts.
    let _ = s.write_all(&c.bytes);
    if c.half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let status = read_response(&mut s, &mut Vec::new()).map(|r| r.status);
    if status.is_some_and(|st| st >= 400) {
        // An error closes the connection: nothing more comes.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    status
}

#[test]
fn every_bad_request_gets_its_answer_and_the_server_keeps_serving() {
    within(300, || {
        let mut sb = Sb::start(Opts {
            extra: vec!["--head_timeout=5secs".into()],
            ..Opts::default()
        });
        // An output client attached throughout.
        let mut watcher = sb.connect();
        watcher.write_all(&output_request(true)).unwrap();
        let watched = std::thread::spawn(move || {
            let mut rest = Vec::new();
            let (status, _) = read_head(&mut watcher, &mut rest).expect("a response head");
            assert_eq!(status, 200);
            read_body(&mut watcher, &rest, Format::Protobuf).0
        });
        let cases = cases();
        assert!(cases.len() >= 60, "{} cases", cases.len());
        let mut names = std::collections::HashSet::new();
        let mut expected_log = Vec::new();
        let mut wrong = Vec::new();
        for (n, c) in cases.iter().enumerate() {
            assert!(names.insert(c.name.clone()), "two cases named {}", c.name);
            let started = Instant::now();
            let got = match run(&sb.socket, c) {
                Some(status) => Status(status),
                None => Closed,
            };
            if got != c.expect {
                wrong.push(format!("{}: expected {:?}, got {got:?}", c.name, c.expect));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} took {:?}",
                c.name,
                started.elapsed()
            );
            assert!(sb.is_running(), "the server died after {}", c.name);
            // A valid request is still served (and acknowledges the case, if it was an
            // input request).
            assert_eq!(
                exchange(&sb.socket, &ack_request(false)).map(|r| r.status),
                Some(200),
                "after {}",
                c.name
            );
            let line = format!("case {n} done\n");
            sb.write_stdout(line.as_bytes());
            expected_log.extend_from_slice(line.as_bytes());
        }
        assert!(
            wrong.is_empty(),
            "{} of {} cases got the wrong answer:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
        // The container read what the valid split request carried.
        let mut got = [0u8; 6];
        let stdin = sb.stdin.take().unwrap();
        nix::unistd::read(&stdin, &mut got).unwrap();
        assert_eq!(&got, b"split\n");
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(
            *sb.stdout_log.lock().unwrap(),
            expected_log,
            "the logger has every byte"
        );
        let collected = watched.join().unwrap();
        assert_eq!(collected.stdout, expected_log, "the watcher has every byte");
    });
}

// ---------------------------------------------------------------------------------------
// Who may connect.

/// `curl` as user `uid` against the acknowledgement path: the status it got.
fn ack_as(uid: u32, socket: &std::path::Path) -> String {
    let out = std::process::Command::new("curl")
        .uid(uid)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://localhost/acknowledge_container_input_response")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn allowed_uids_lets_in_only_the_listed_users_and_our_own() {
    use std::os::unix::fs::PermissionsExt;
    within(60, || {
        const NOBODY: u32 = 65534;
        let me = nix::unistd::geteuid().as_raw();
        // Someone else is listed: our own user still gets in, and the socket is born 0666.
        let other = if me == 4242 { 4243 } else { 4242 };
        let mut sb = Sb::start(Opts {
            extra: vec![format!("--allowed_uids={other}")],
            ..Opts::default()
        });
        let mode = std::fs::metadata(&sb.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        assert_eq!(exchange(&sb.socket, &ack_request(false)).map(|r| r.status), Some(200));
        if me == 0 {
            // Another user, not listed: 403, and the server goes on.
            std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(ack_as(NOBODY, &sb.socket), "403");
            assert_eq!(exchange(&sb.socket, &ack_request(false)).map(|r| r.status), Some(200));
        }
        sb.close_output();
        assert!(sb.wait(30).success());
        if me == 0 {
            // Listed: let in. Without the flag, the socket is 0600 and the user cannot
            // even connect (curl's 000).
            let mut sb = Sb::start(Opts {
                extra: vec![format!("--allowed_uids={other},{NOBODY}")],
                ..Opts::default()
            });
            std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(ack_as(NOBODY, &sb.socket), "200");
            sb.close_output();
            assert!(sb.wait(30).success());
            let mut sb = Sb::start(Opts::default());
            std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(ack_as(NOBODY, &sb.socket), "000");
            sb.close_output();
            assert!(sb.wait(30).success());
        }
    });
}

#[test]
fn a_bad_allowed_uids_list_is_a_usage_error() {
    let out = std::process::Command::new(drop_in())
        .args([
            "--allowed_uids=12,bob",
            "--socket_address=/tmp/never",
            "--stdin_to_fd=0",
            "--stdout_from_fd=0",
            "--stdout_to_fd=1",
            "--stderr_from_fd=0",
            "--stderr_to_fd=2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Flag 'allowed_uids' must be user ids separated by commas, not '12,bob'"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Every limit has a flag.

#[test]
fn limit_flags_take_effect() {
    within(60, || {
        let limits = [
            "--max_head_bytes=512",
            "--max_headers=8",
            "--max_chunk_line=16",
            "--max_trailer_bytes=16",
            "--max_call_body=200",
            "--max_record=300",
            "--input_buffer=65536",
        ];
        let mut sb = Sb::start(Opts {
            extra: limits.iter().map(|s| s.to_string()).collect(),
            ..Opts::default()
        });
        let status = |bytes: Vec<u8>| exchange(&sb.socket, &bytes).map(|r| r.status);
        let head = |extra: &str| format!("POST / HTTP/1.1\r\n{JSON}\r\n{extra}Content-Length: 0\r\n\r\n").into_bytes();
        assert_eq!(status(head(&format!("X: {}\r\n", "a".repeat(500)))), Some(431));
        assert_eq!(
            status(head(&(0..7).map(|i| format!("X{i}: 1\r\n")).collect::<String>())),
            Some(431)
        );
        assert_eq!(status(post("/", &[JSON], &[b' '; 201])), Some(413));
        assert_eq!(
            status([input_head(false), b"5;aaaaaaaaaaaaaaaaaaaa\r\n".to_vec()].concat()),
            Some(400)
        );
        assert_eq!(
            status([input_head(false), b"0\r\nT: aaaaaaaaaaaaaaaaaaaa\r\n\r\n".to_vec()].concat()),
            Some(400)
        );
        assert_eq!(status(later(&stdin_record(&[b'x'; 300]))), Some(413));
        assert_eq!(status(ack_request(false)), Some(200));
        // Under the limits: served.
        assert_eq!(status(later(&stdin_record(b"fits\n"))), Some(200));
        let mut got = [0u8; 5];
        nix::unistd::read(sb.stdin.as_ref().unwrap(), &mut got).unwrap();
        assert_eq!(&got, b"fits\n");
        // A container that does not read its stdin: the server reads at most 64 KiB of
        // input ahead, so the client's writes stall well under 1 MiB (socket buffers and
        // the 64 KiB pipe included).
        let mut s = sb.connect();
        s.write_all(&input_head(false)).unwrap();
        s.write_all(&record(FIRST_RECORD)).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let rec = record(&stdin_record(&[b'y'; 64]));
        let mut sent = 0;
        while sent < 8 << 20 {
            match s.write(&rec) {
                Ok(n) => sent += n,
                // Stalled: the server stopped reading.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("writing input: {e}"),
            }
        }
        eprintln!("{sent} bytes of input taken while the container reads nothing");
        assert!(
            sent < 1 << 20,
            "{sent} bytes of input taken while the container reads nothing"
        );
        drop(s);
        // The two input requests answered above are acknowledged.
        for _ in 0..2 {
            assert_eq!(status(ack_request(false)), Some(200));
        }
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

/// Run as another user by `refused_peers_cannot_lock_out_allowed_ones`: holds 200
/// connections to the socket in SB_HOLD until killed.
#[test]
fn hold_connections() {
    let Some(socket) = std::env::var_os("SB_HOLD") else { return };
    let held: Vec<UnixStream> = (0..200).filter_map(|_| UnixStream::connect(&socket).ok()).collect();
    println!("held {}", held.len());
    std::thread::sleep(Duration::from_secs(60));
}

/// A child process killed and reaped (by pid) however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn refused_peers_cannot_lock_out_allowed_ones() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        // Connecting as another user needs root; without it only our own user connects.
        return;
    }
    within(60, || {
        let extra = vec!["--allowed_uids=4242".to_string(), "--max_connections=20".to_string()];
        let mut sb = Sb::start(Opts {
            extra,
            ..Opts::default()
        });
        std::fs::set_permissions(&sb.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let baseline = sb.fd_count();
        let mut holder = Reaped(
            std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    &common::test_name(module_path!(), "hold_connections"),
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("SB_HOLD", &sb.socket)
                .uid(65534)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = std::io::BufReader::new(holder.0.stdout.take().unwrap()).lines();
        let held = loop {
            let line = lines.next().expect("the holder ended early").unwrap();
            if let Some(n) = line.split("held ").nth(1) {
                break n.trim().parse::<usize>().unwrap();
            }
        };
        assert_eq!(held, 200, "the backlog takes them all");
        // At most 64 of them are kept (to be told 403), none for long, and our own user
        // is served all along, though max_connections is 20.
        for _ in 0..5 {
            assert_eq!(exchange(&sb.socket, &ack_request(false)).map(|r| r.status), Some(200));
            assert!(sb.fd_count() <= baseline + 64 + 2, "{} descriptors", sb.fd_count());
            std::thread::sleep(Duration::from_millis(300));
        }
        drop(holder);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}
