//! The drop-in `mesos-io-switchboard`, started as an agent starts it, against the protocol
//! (docs/protocol.md): Mesos's five standalone server tests, the compatibility checklist,
//! and the error catalogue (§15), on real pipes, PTYs, sockets and signals.

use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use common::http::*;
use common::sb::*;
use common::{Checker, Collector, within};
use nix::sys::signal::Signal;
use switchboard::wire::Format;

/// The "Lorem ipsum" payload of Mesos's tests: 446 bytes doubled to 1,826,816 bytes.
fn lorem() -> Vec<u8> {
    let p = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia deserunt mollit anim id est laborum.\n";
    let mut out = p.to_vec();
    while out.len() < 1 << 20 {
        out.extend_from_slice(&out.clone());
    }
    out
}

/// Reads an output stream to its end and returns what it carried.
fn read_output(mut s: std::os::unix::net::UnixStream, format: Format) -> (Response, common::Collected) {
    let mut rest = Vec::new();
    let (status, headers) = read_head(&mut s, &mut rest).expect("a response head");
    let (mut collector, out) = Collector::new(format);
    let mut ended = collector.push(&rest);
    let mut buf = vec![0u8; 1 << 16];
    while !ended {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => ended = collector.push(&buf[..n]),
        }
    }
    collector.finish();
    let collected = out.lock().unwrap().clone();
    (
        Response {
            status,
            headers,
            body: Vec::new(),
        },
        collected,
    )
}

fn attach(sb: &Sb, protobuf: bool) -> std::os::unix::net::UnixStream {
    let mut s = sb.connect();
    s.write_all(&output_request(protobuf)).unwrap();
    s
}

// ---------------------------------------------------------------------------------------
// Mesos's own server tests (IOSwitchboardServerTest in io_switchboard_tests.cpp), reproduced
// standalone: the same flags, descriptors and requests, and what those tests expect.

#[test]
fn mesos_redirect_log() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let payload = lorem();
        assert_eq!(payload.len(), 1_826_816);
        sb.write_stdout(&payload);
        sb.write_stderr(&payload);
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), payload);
        assert_eq!(*sb.stderr_log.lock().unwrap(), payload);
    });
}

#[test]
fn mesos_attach_output() {
    within(60, || {
        let payload = lorem();
        let mut sb = Sb::start(Opts {
            wait_for_connection: true,
            file_sources: Some(payload.clone()),
            ..Opts::default()
        });
        let mut s = sb.connect();
        s.write_all(&post(
            "/",
            &["Accept: application/json", "Content-Type: application/json"],
            OUTPUT_CALL,
        ))
        .unwrap();
        let (resp, out) = read_output(s, Format::Json);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        // JSON Accept: Content-Type says JSON, yet the body is RecordIO.
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("message-content-type"), None);
        assert_eq!(out.stdout, payload);
        assert_eq!(out.stderr, payload);
        assert!(out.ended);
        assert!(sb.wait(30).success());
    });
}

#[test]
fn mesos_send_heartbeat() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            heartbeat: Some("10ms"),
            ..Opts::default()
        });
        let mut s = attach(&sb, false);
        let mut rest = Vec::new();
        let (status, _) = read_head(&mut s, &mut rest).unwrap();
        assert_eq!(status, 200);
        let (mut collector, out) = Collector::new(Format::Json);
        collector.push(&rest);
        let mut buf = [0u8; 4096];
        while out.lock().unwrap().heartbeats < 5 {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            collector.push(&buf[..n]);
        }
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn mesos_attach_input() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            stdin_file: true,
            // As Mesos's test: /dev/null is the stderr source and both loggers.
            devnull: true,
            ..Opts::default()
        });
        let payload = lorem();
        let mut s = sb.connect();
        let mut req = input_head(true);
        req.extend(record(FIRST_RECORD));
        for piece in payload.chunks(4096) {
            req.extend(record(&stdin_record(piece)));
        }
        req.extend_from_slice(LAST_CHUNK);
        s.write_all(&req).unwrap();
        let mut rest = Vec::new();
        let resp = read_response(&mut s, &mut rest).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("0"));
        // The acknowledgement on the same (keep-alive) connection.
        s.write_all(&ack_request(true)).unwrap();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        drop(s);
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(std::fs::read(sb.stdin_path.as_ref().unwrap()).unwrap(), payload);
    });
}

#[test]
fn mesos_receive_heartbeat() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut s = sb.connect();
        let mut req = input_head(true);
        req.extend(record(FIRST_RECORD));
        let hb = r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"PROCESS_IO","container_id":{"value":"abc"},"process_io":{"type":"CONTROL","control":{"type":"HEARTBEAT","heartbeat":{"interval":{"nanoseconds":10000000}}}}}}"#;
        for _ in 0..5 {
            req.extend(record(hb));
        }
        req.extend_from_slice(LAST_CHUNK);
        s.write_all(&req).unwrap();
        let mut rest = Vec::new();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        s.write_all(&ack_request(true)).unwrap();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        drop(s);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn tty_output_merges_into_stdout_and_ends_with_exit_0() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            tty: true,
            ..Opts::default()
        });
        let slave = sb.stdout.take().unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "printf Hello; printf World 1>&2"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(slave.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(slave))
            .spawn()
            .unwrap();
        assert!(child.wait().unwrap().success());
        sb.stdin = None;
        sb.stderr = None;
        // PTY EIO is the end of the stream: exit 0, unlike Mesos's 1.
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"HelloWorld");
        assert!(sb.stderr_log.lock().unwrap().is_empty());
    });
}

// ---------------------------------------------------------------------------------------
// Appendix A.

#[test]
fn socket_appears_only_when_listening_and_is_private() {
    within(30, || {
        use std::os::unix::fs::PermissionsExt;
        let mut sb = Sb::start(Opts::default());
        assert!(!switchboard::server::socket::provisional(&sb.socket).exists());
        let mode = std::fs::metadata(&sb.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn container_pipes_are_raised_to_one_mebibyte() {
    within(30, || {
        let mut sb = Sb::start(Opts::default());
        for fd in [sb.stdout.as_ref().unwrap(), sb.stderr.as_ref().unwrap()] {
            let size = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
            assert_eq!(size as usize, switchboard::config::PIPE_BYTES);
        }
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn output_in_both_formats_with_exact_headers() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let json = attach(&sb, false);
        let protobuf = attach(&sb, true);
        let mut plain = sb.connect();
        plain
            .write_all(&post(
                "/",
                &["Accept: application/x-protobuf", "Content-Type: application/json"],
                OUTPUT_CALL,
            ))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        sb.write_stdout(b"out\n");
        sb.write_stderr(b"err\n");
        sb.close_output();
        for (s, format, ct, mct) in [
            (json, Format::Json, "application/recordio", Some("application/json")),
            (
                protobuf,
                Format::Protobuf,
                "application/recordio",
                Some("application/x-protobuf"),
            ),
            (plain, Format::Protobuf, "application/x-protobuf", None),
        ] {
            let (resp, out) = read_output(s, format);
            assert_eq!(resp.status, 200);
            assert_eq!(resp.header("content-type"), Some(ct));
            assert_eq!(resp.header("message-content-type"), mct);
            assert!(resp.header("date").is_some());
            assert_eq!(
                (out.stdout.as_slice(), out.stderr.as_slice(), out.ended),
                (&b"out\n"[..], &b"err\n"[..], true)
            );
        }
        assert!(sb.wait(30).success());
    });
}

#[test]
fn no_replay_for_late_clients() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        sb.write_stdout(b"before\n");
        std::thread::sleep(Duration::from_millis(300));
        let s = attach(&sb, false);
        std::thread::sleep(Duration::from_millis(300));
        sb.write_stdout(b"after\n");
        sb.close_output();
        let (_, out) = read_output(s, Format::Json);
        assert_eq!(out.stdout, b"after\n");
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"before\nafter\n");
    });
}

#[test]
fn wait_for_connection_holds_output_until_the_first_client() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            wait_for_connection: true,
            ..Opts::default()
        });
        sb.write_stdout(b"early\n");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            sb.stdout_log.lock().unwrap().is_empty(),
            "nothing is read before the first client"
        );
        let s = attach(&sb, false);
        sb.close_output();
        let (_, out) = read_output(s, Format::Json);
        assert_eq!(out.stdout, b"early\n");
        assert!(sb.wait(30).success());
    });
}

#[test]
fn sigterm_unblocks_a_waiting_server_and_does_not_stop_a_running_one() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            wait_for_connection: true,
            ..Opts::default()
        });
        sb.write_stdout(b"drained\n");
        sb.signal(Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"drained\n");
        // A second SIGTERM (Mesos aborts) changes nothing either.
        sb.signal(Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(200));
        assert!(sb.is_running());
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn input_reaches_stdin_and_an_empty_record_closes_it() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut s = sb.connect();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&stdin_record(b"hello ")));
        req.extend(record(&stdin_record(b"world\n")));
        req.extend(record(&stdin_record(b"")));
        req.extend_from_slice(LAST_CHUNK);
        s.write_all(&req).unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 200);
        // The container reads the bytes, then EOF.
        let mut got = Vec::new();
        let stdin = std::fs::File::from(sb.stdin.take().unwrap());
        std::io::Read::read_to_end(&mut &stdin, &mut got).unwrap();
        assert_eq!(got, b"hello world\n");
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn one_input_at_a_time_and_the_slot_is_freed_however_it_ends() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut first = sb.connect();
        let mut head = input_head(false);
        head.extend(record(FIRST_RECORD));
        first.write_all(&head).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let mut second = sb.connect();
        second.write_all(&head).unwrap();
        let resp = read_response(&mut second, &mut Vec::new()).unwrap();
        assert_eq!(
            (resp.status, resp.text().as_str()),
            (409, "Multiple input connections are not allowed")
        );
        // The first client vanishes mid-body: its slot must be freed (Mesos leaks it).
        drop(first);
        std::thread::sleep(Duration::from_millis(200));
        let mut third = sb.connect();
        let mut req = head.clone();
        req.extend_from_slice(LAST_CHUNK);
        third.write_all(&req).unwrap();
        assert_eq!(read_response(&mut third, &mut Vec::new()).unwrap().status, 200);
        for _ in 0..3 {
            assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        }
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn resize_sets_the_window_size_of_the_pty() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            tty: true,
            ..Opts::default()
        });
        let mut s = sb.connect();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&resize_record(24, 80)));
        // An empty DATA record does nothing on a TTY.
        req.extend(record(&stdin_record(b"")));
        req.extend(record(&stdin_record(b"typed\n")));
        req.extend_from_slice(LAST_CHUNK);
        s.write_all(&req).unwrap();
        assert_eq!(read_response(&mut s, &mut Vec::new()).unwrap().status, 200);
        let slave = sb.stdin.as_ref().unwrap();
        assert_eq!(switchboard::tty::window_size(slave.as_fd()).unwrap(), (24, 80));
        let mut buf = [0u8; 64];
        let n = nix::unistd::read(slave, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"typed\n");
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        sb.stdin = None;
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn input_open_at_output_end_gets_200_a_second_later_and_exit_waits_for_the_ack() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut s = sb.connect();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        s.write_all(&req).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        sb.close_output();
        let started = std::time::Instant::now();
        let resp = read_response(&mut s, &mut Vec::new()).unwrap();
        let waited = started.elapsed();
        assert_eq!(resp.status, 200);
        assert!(waited >= Duration::from_millis(800), "answered after {waited:?}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(sb.is_running(), "exits only after the acknowledgement");
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        assert!(sb.wait(30).success());
    });
}

#[test]
fn pipelined_requests_on_a_keep_alive_connection_are_answered_in_order() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut s = sb.connect();
        let mut req = ack_request(true);
        req.extend(post("/", &["Content-Type: text/plain"], b"x"));
        s.write_all(&req).unwrap();
        let mut rest = Vec::new();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 415);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

// ---------------------------------------------------------------------------------------
// The error catalogue (docs/protocol.md §15): every row answered with its status; the
// server keeps serving.

fn status_of(sb: &Sb, request: &[u8]) -> (u16, String) {
    let r = exchange(&sb.socket, request).expect("a response");
    (r.status, r.text())
}

#[test]
fn error_catalogue() {
    within(90, || {
        let mut sb = Sb::start(Opts::default());
        let json = "Content-Type: application/json";
        let rows: Vec<(&str, Vec<u8>, u16, &str)> = vec![
            ("1 not POST", b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec(), 405, ""),
            (
                "2 no Content-Type",
                post("/", &[], OUTPUT_CALL),
                400,
                "Expecting 'Content-Type' to be present",
            ),
            (
                "3 unknown Content-Type",
                post("/", &["Content-Type: text/html"], OUTPUT_CALL),
                415,
                "",
            ),
            (
                "4 RecordIO without Message-Content-Type",
                post("/", &["Content-Type: application/recordio"], b""),
                400,
                "Expecting 'Message-Content-Type' to be set for streaming requests",
            ),
            (
                "5 bad Message-Content-Type",
                post(
                    "/",
                    &["Content-Type: application/recordio", "Message-Content-Type: text/html"],
                    b"",
                ),
                415,
                "Expecting 'Message-Content-Type' of application/json or application/x-protobuf",
            ),
            (
                "6 Accept not negotiable",
                post("/", &[json, "Accept: text/html"], OUTPUT_CALL),
                406,
                "",
            ),
            (
                "7 Message-Accept not negotiable",
                post(
                    "/",
                    &[json, "Accept: application/recordio", "Message-Accept: text/html"],
                    OUTPUT_CALL,
                ),
                406,
                "",
            ),
            (
                "9 body does not parse",
                post("/", &[json], b"{\"type\":"),
                400,
                "Failed to parse body into JSON",
            ),
            (
                "10 not an output call",
                post("/", &[json], br#"{"type":"GET_HEALTH"}"#),
                400,
                "",
            ),
            ("10 no type", post("/", &[json], b"{}"), 400, ""),
        ];
        for (name, request, status, text) in rows {
            let (got, body) = status_of(&sb, &request);
            assert_eq!(got, status, "row {name}: {body}");
            assert!(body.starts_with(text), "row {name}: {body}");
        }
        // 8: Message-Accept with a non-streaming Accept is ignored.
        let mut s = sb.connect();
        s.write_all(&post(
            "/",
            &[json, "Accept: application/json", "Message-Accept: text/html"],
            OUTPUT_CALL,
        ))
        .unwrap();
        assert_eq!(read_head(&mut s, &mut Vec::new()).unwrap().0, 200);
        drop(s);
        // 11: a first record that is not a CONTAINER_ID input call; 12: bad framing /
        // undecodable first record; 13: no first record at all.
        let input = |records: &[u8]| {
            let mut r = input_head(false);
            r.extend_from_slice(records);
            r.extend_from_slice(LAST_CHUNK);
            r
        };
        assert_eq!(status_of(&sb, &input(&record(&stdin_record(b"x")))).0, 400);
        let (code, text) = status_of(&sb, &input(&chunk(b"-1\nx")));
        assert_eq!(code, 500);
        assert!(
            text.starts_with("Decoder failure: Failed to decode length '-'"),
            "{text}"
        );
        assert_eq!(status_of(&sb, &input(&record("{nope"))).0, 500);
        assert_eq!(
            status_of(&sb, &input(b"")),
            (400, "IOSwitchboard received EOF while reading request body".into())
        );
        // 15, 16: later records that are not input calls, or invalid ones.
        let later = |rec: &str| {
            let mut r = record(FIRST_RECORD);
            r.extend(record(rec));
            status_of(&sb, &input(&r))
        };
        assert_eq!(later(r#"{"type":"GET_HEALTH"}"#).0, 400);
        assert_eq!(
            later(&process_io(r#"{"type":"DATA","data":{"type":"STDOUT","data":""}}"#)),
            (400, "Expecting 'process_io.data.type' to be 'STDIN'".into())
        );
        // 17: resize on a non-TTY.
        assert_eq!(
            later(&resize_record(24, 80)),
            (
                400,
                "Unable to set the window size: Inappropriate ioctl for device".into()
            )
        );
        // 19: an acknowledgement with none outstanding is fine... after the inputs above
        // (each counted once), acknowledge them all, then one more.
        for _ in 0..7 {
            assert_eq!(status_of(&sb, &ack_request(false)).0, 200);
        }
        assert_eq!(status_of(&sb, &ack_request(false)).0, 200);
        // Still serving, and the logger gets everything.
        sb.write_stdout(b"still here\n");
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"still here\n");
    });
}

#[test]
fn stdin_write_failure_is_a_500_and_output_goes_on() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // The container closed its stdin.
        sb.stdin = None;
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&stdin_record(b"nobody reads this")));
        req.extend_from_slice(LAST_CHUNK);
        // Twice: the failed request freed the input slot (no 409 for the next one).
        for _ in 0..2 {
            let r = exchange(&sb.socket, &req).unwrap();
            assert_eq!(
                (r.status, r.text().as_str()),
                (500, "Failed writing to stdin: Failed: Broken pipe")
            );
            assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        }
        sb.write_stdout(b"output goes on\n");
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"output goes on\n");
    });
}

#[test]
fn flag_errors_and_bad_descriptors() {
    within(30, || {
        let out = std::process::Command::new(drop_in()).arg("--help").output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("Usage: mesos-io-switchboard [options]"));
        let out = std::process::Command::new(drop_in()).arg("--bogus").output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).starts_with("Failed to load unknown flag 'bogus'"));
        let dir = temp_dir("badfd");
        let out = std::process::Command::new(drop_in())
            .args([
                "--help=false",
                &format!("--socket_address={}", dir.join("s").display()),
                "--stderr_from_fd=97",
                "--stderr_to_fd=2",
                "--stdin_to_fd=98",
                "--stdout_from_fd=99",
                "--stdout_to_fd=1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "EXIT with status 1: Failed redirecting stdout: Bad file descriptor\n"
        );
        // Numbers the server opens itself (3 and up: its signalfd, its ring, its log) are
        // not the container's: with nothing inherited there (a shell closes whatever the
        // test's environment left open), the same error.
        let out = std::process::Command::new("sh")
            .args(["-c", "exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&-; exec \"$0\" \"$@\""])
            .arg(drop_in())
            .args([
                "--help=false",
                &format!("--socket_address={}", dir.join("s").display()),
                &format!("--log_file={}", dir.join("log").display()),
                "--stderr_from_fd=4",
                "--stderr_to_fd=2",
                "--stdin_to_fd=5",
                "--stdout_from_fd=3",
                "--stdout_to_fd=1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "EXIT with status 1: Failed redirecting stdout: Bad file descriptor\n"
        );
        let _ = std::fs::remove_dir_all(dir);
    });
}

// ---------------------------------------------------------------------------------------
// Regressions from the review of the server (tests named after what went wrong).

#[test]
fn clients_that_close_without_reading_their_response_crash_nothing() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // Keep-alive acknowledgements and a keep-alive 409, fire and forget.
        let mut holder = sb.connect();
        let mut head = input_head(true);
        head.extend(record(FIRST_RECORD));
        holder.write_all(&head).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for _ in 0..200 {
            let mut s = sb.connect();
            let mut req = head.clone();
            req.extend_from_slice(LAST_CHUNK);
            let _ = s.write_all(&req);
        }
        std::thread::sleep(Duration::from_millis(500));
        // One acknowledgement per input request (the 409s included), each unread.
        for _ in 0..201 {
            let mut s = sb.connect();
            let _ = s.write_all(&ack_request(true));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(sb.is_running());
        drop(holder);
        sb.write_stdout(b"alive\n");
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"alive\n");
    });
}

#[test]
fn an_output_attach_pipelined_behind_another_request_works() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut s = sb.connect();
        let mut req = ack_request(true);
        req.extend(output_request(false));
        s.write_all(&req).unwrap();
        let mut rest = Vec::new();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        std::thread::sleep(Duration::from_millis(300));
        sb.write_stdout(b"to the pipelined client\n");
        sb.close_output();
        let (status, _) = read_head(&mut s, &mut rest).unwrap();
        assert_eq!(status, 200);
        let (mut collector, out) = Collector::new(Format::Json);
        let mut ended = collector.push(&rest);
        let mut buf = [0u8; 4096];
        while !ended {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0);
            ended = collector.push(&buf[..n]);
        }
        assert_eq!(out.lock().unwrap().stdout, b"to the pipelined client\n");
        assert!(sb.wait(30).success());
    });
}

#[test]
fn a_record_sent_one_byte_per_chunk_arrives_whole() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let data: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut body = Vec::new();
        for r in [FIRST_RECORD.to_string(), stdin_record(&data)] {
            body.extend_from_slice(format!("{}\n{r}", r.len()).as_bytes());
        }
        let mut req = input_head(false);
        for b in &body {
            req.extend(chunk(std::slice::from_ref(b)));
        }
        req.extend_from_slice(LAST_CHUNK);
        let reader = {
            let stdin = std::fs::File::from(sb.stdin.take().unwrap());
            std::thread::spawn(move || {
                let mut got = vec![0u8; 20_000];
                std::io::Read::read_exact(&mut &stdin, &mut got).unwrap();
                got
            })
        };
        assert_eq!(exchange(&sb.socket, &req).unwrap().status, 200);
        assert_eq!(reader.join().unwrap(), data);
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn a_writer_that_hangs_up_frees_the_slot_and_stdin_bytes_stay_in_order() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // More than the stdin pipe holds: the write blocks until the container reads.
        let big = vec![b'a'; 200_000];
        let mut first = sb.connect();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&stdin_record(&big)));
        first.write_all(&req).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        std::thread::sleep(Duration::from_millis(300));
        a_second_writer_follows(&mut sb, &big);
    });
}

/// The slot is free again: a second input's bytes reach stdin right behind the first
/// one's record being written (`big`), and nothing else of the first's; then the end.
fn a_second_writer_follows(sb: &mut Sb, big: &[u8]) {
    let socket = sb.socket.clone();
    let second = std::thread::spawn(move || {
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&stdin_record(b"bbbb")));
        req.extend_from_slice(LAST_CHUNK);
        exchange(&socket, &req).unwrap().status
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut got = vec![0u8; big.len() + 4];
    std::io::Read::read_exact(&mut &std::fs::File::from(sb.stdin.take().unwrap()), &mut got).unwrap();
    assert_eq!(second.join().unwrap(), 200);
    assert_eq!(&got[..big.len()], big);
    assert_eq!(&got[big.len()..], b"bbbb", "the rest of the first body went with it");
    for _ in 0..2 {
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
    }
    sb.close_output();
    assert!(sb.wait(30).success());
}

#[test]
fn a_writer_that_hangs_up_with_a_full_input_buffer_frees_the_slot() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // One record more than the stdin pipe holds (its write waits for the container),
        // then more than --input_buffer (1 MiB) behind it: the body is read no further,
        // and only a poll can tell that the client left.
        let big = vec![b'a'; 200_000];
        let mut first = sb.connect();
        let handle = first.try_clone().unwrap();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(record(&stdin_record(&big)));
        for _ in 0..12 {
            req.extend(record(&stdin_record(&[b'z'; 100_000])));
        }
        // (It blocks once the server stops reading; the hang-up ends it.)
        let writer = std::thread::spawn(move || {
            let _ = first.write_all(&req);
        });
        std::thread::sleep(Duration::from_millis(500));
        // The client goes, both ways, with its body half sent.
        handle.shutdown(std::net::Shutdown::Both).unwrap();
        writer.join().unwrap();
        drop(handle);
        std::thread::sleep(Duration::from_millis(100));
        a_second_writer_follows(&mut sb, &big);
    });
}

#[test]
fn requests_in_progress_at_exit_get_503_at_once() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // An input request whose first record has not arrived: no acknowledgement is owed.
        let mut s = sb.connect();
        s.write_all(&input_head(false)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        sb.close_output();
        let r = read_response(&mut s, &mut Vec::new()).unwrap();
        assert_eq!(r.status, 503);
        assert!(sb.wait(30).success());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "exit waited {:?}",
            started.elapsed()
        );
    });
}

#[test]
fn a_partial_record_at_the_end_of_an_input_body_is_dropped_with_200() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend(chunk(b"50\n{\"type\""));
        req.extend_from_slice(LAST_CHUNK);
        assert_eq!(exchange(&sb.socket, &req).unwrap().status, 200);
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}

#[test]
fn the_waited_for_client_cannot_hold_the_container_back_for_ever() {
    within(90, || {
        // A JSON client (copy path) and a protobuf one (zero-copy path).
        for protobuf in [false, true] {
            let extra = vec!["--block_timeout=1secs".to_string()];
            let mut sb = Sb::start(Opts {
                wait_for_connection: true,
                extra,
                ..Opts::default()
            });
            // The first client (it gets every byte, holding the container back) never
            // reads.
            let stuck = attach(&sb, protobuf);
            let out = sb.stdout.take().unwrap();
            let data = vec![b'x'; 12 << 20];
            let writer = std::thread::spawn(move || write_all(&out, &data));
            // The container's writes go through once the client is given up on (when
            // neither its pipe nor the history can hold what it has not taken).
            writer.join().unwrap();
            sb.close_output();
            assert!(sb.wait(30).success());
            assert_eq!(sb.stdout_log.lock().unwrap().len(), 12 << 20);
            drop(stuck);
        }
    });
}

#[test]
fn a_vanished_input_client_is_acknowledged_once_and_others_still_get_their_answer() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        // A starts an input request and vanishes mid-body; the agent acknowledges it
        // anyway, as it does after failing to get a response (docs/protocol.md §7, §12).
        let mut a = sb.connect();
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        a.write_all(&req).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(a);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        // B's request is open when the output ends: it gets its 200 a second later, and
        // the server waits for B's acknowledgement (A's counted once, not twice).
        let mut b = sb.connect();
        b.write_all(&req).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        sb.close_output();
        let answer = read_response(&mut b, &mut Vec::new()).unwrap();
        assert_eq!(answer.status, 200);
        std::thread::sleep(Duration::from_millis(500));
        assert!(sb.is_running(), "the server must wait for B's acknowledgement");
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        assert!(sb.wait(30).success());
    });
}

#[test]
fn acknowledgements_are_awaited_for_ack_timeout_at_most() {
    within(60, || {
        let extra = vec!["--ack_timeout=1secs".to_string()];
        let mut sb = Sb::start(Opts {
            extra,
            ..Opts::default()
        });
        let mut req = input_head(false);
        req.extend(record(FIRST_RECORD));
        req.extend_from_slice(LAST_CHUNK);
        // Answered, and never acknowledged; and one that vanished, never acknowledged.
        assert_eq!(exchange(&sb.socket, &req).unwrap().status, 200);
        let mut gone = sb.connect();
        gone.write_all(&req[..req.len() - LAST_CHUNK.len()]).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(gone);
        let started = std::time::Instant::now();
        sb.close_output();
        assert!(sb.wait(30).success());
        // Answers go out a second after the end of output; then ack_timeout.
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
    });
}
