//! A deadline in every connection state, and a budget for what requests make the server
//! hold: a body that stalls is answered 408 (or the connection closed) within its
//! deadline, whatever the request; an input request's first record is capped; many
//! connections holding partial first records cannot make the server hold more than its
//! budget, and each is closed by its deadline.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::within;

/// What a connection gets before it closes: the status of its first response, if any,
/// and how long it took to close.
fn outcome(mut s: UnixStream, since: Instant) -> (Option<u16>, Duration) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    }
    let status = std::str::from_utf8(&got)
        .ok()
        .and_then(|t| t.split(' ').nth(1))
        .and_then(|s| s.parse().ok());
    (status, since.elapsed())
}

fn send(sb: &Sb, bytes: &[u8]) -> UnixStream {
    let mut s = sb.connect();
    s.write_all(bytes).unwrap();
    s
}

#[test]
fn a_stalled_body_in_every_state_is_closed_within_its_deadline() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            extra: vec!["--head_timeout=1secs".into()],
            ..Opts::default()
        });
        let start = Instant::now();
        // An output call whose body stops short.
        let mut call = output_request(true);
        let cut = call.len() - 20;
        call.truncate(cut);
        let call = send(&sb, &call);
        // An acknowledgement whose body never comes.
        let ack = send(
            &sb,
            b"POST /acknowledge_container_input_response HTTP/1.1\r\nHost:\r\nContent-Length: 10\r\n\r\n",
        );
        // An input request whose first record stops short.
        let mut first = input_head(true);
        first.extend(chunk(b"200\n{\"type\":"));
        let first = send(&sb, &first);
        // The input slot's holder (no deadline), and a second input request, refused 409,
        // whose body then never ends.
        let mut owner = input_head(true);
        owner.extend(record(FIRST_RECORD));
        owner.extend(record(&stdin_record(b"!")));
        let owner = send(&sb, &owner);
        // It holds the slot once its record reached the container.
        let mut got = [0u8; 1];
        nix::unistd::read(sb.stdin.as_ref().unwrap(), &mut got).unwrap();
        assert_eq!(&got, b"!");
        let mut second = input_head(true);
        second.extend(record(FIRST_RECORD));
        let second = send(&sb, &second);
        for (name, s, want) in [
            ("call", call, Some(408)),
            ("ack", ack, Some(408)),
            ("first record", first, Some(408)),
            ("refused input", second, Some(409)),
        ] {
            let (status, took) = outcome(s, start);
            assert_eq!(status, want, "{name}");
            assert!(took < Duration::from_secs(8), "{name}: closed after {took:?}");
        }
        // The slot's holder is still there: it ends its body and gets its 200.
        let mut owner = owner;
        owner.write_all(LAST_CHUNK).unwrap();
        let mut rest = Vec::new();
        assert_eq!(read_response(&mut owner, &mut rest).unwrap().status, 200);
        // Both input requests are acknowledged, as the agent does.
        for _ in 0..2 {
            assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        }
        sb.close_output();
        drop(owner);
        assert!(sb.wait(20).success());
    });
}

#[test]
fn first_records_are_capped_and_partial_ones_held_within_the_budget() {
    within(120, || {
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, limit.1, limit.1);
        let mut sb = Sb::start(Opts {
            extra: vec!["--head_timeout=4secs".into()],
            ..Opts::default()
        });
        // A first record larger than a call body may be is refused at its length.
        let mut big = input_head(true);
        big.extend(chunk(b"100000\n"));
        let (status, _) = outcome(send(&sb, &big), Instant::now());
        assert_eq!(status, Some(413));
        // 1500 connections each send 60 KB of a first record: 88 MB in all, far past the
        // 32 MiB the server may hold for them.
        let before = sb.rss_kib();
        let start = Instant::now();
        let piece = vec![b'x'; 60_000];
        let mut conns = Vec::new();
        for _ in 0..1500 {
            let mut s = sb.connect();
            s.set_nonblocking(true).unwrap();
            let mut req = input_head(true);
            req.extend(format!("{:x}\r\n65000\n", 60_000 + 6).as_bytes());
            req.extend_from_slice(&piece);
            // What the socket does not take now stays with us (the server stopped
            // reading): that is the point.
            let _ = s.write(&req);
            conns.push(s);
        }
        // Once the server stops taking more (its memory settles), what it holds.
        let mut last = 0;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(200));
            let now = sb.rss_kib();
            if now.abs_diff(last) < 256 {
                break;
            }
            last = now;
        }
        let held = sb.rss_kib().saturating_sub(before);
        eprintln!("the server holds {held} KiB for 1500 partial first records");
        assert!(held < 48 << 10, "the server holds {held} KiB for them");
        // A client of the agent's kind comes while the budget is full, well before the
        // others' deadlines (its own runs meanwhile: it comes later than theirs): it
        // waits for room.
        std::thread::sleep(Duration::from_millis(1000));
        let mut ack = sb.connect();
        ack.write_all(&ack_request(false)).unwrap();
        // Each is closed by its deadline (408, or closed unanswered when the answer
        // cannot go out); the client that waited is served as room comes, with no other
        // connection needed to wake it.
        for s in conns {
            let (status, took) = outcome(s, start);
            assert!(matches!(status, Some(408) | None), "{status:?}");
            assert!(took < Duration::from_secs(30), "closed after {took:?}");
        }
        let (status, _) = outcome(ack, start);
        assert_eq!(status, Some(200), "the waiting client is served");
        sb.close_output();
        assert!(sb.wait(20).success());
    });
}
