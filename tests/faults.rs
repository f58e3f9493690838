//! Faults against the real drop-in: clients SIGKILLed mid-stream by the hundreds,
//! thousands of idle connections, a trickling request head, running out of descriptors,
//! a logger that stops reading or goes away, and a container killed mid-write. The server
//! keeps serving, loses nothing, and returns to where it was.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::{BodyChecker, Checker, Progress, is_pattern, read_all, within};
use switchboard::wire::Format;

const SEEDS: [u64; 2] = [11, 22];

/// Waits up to `secs` for `cond`.
fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} did not happen within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An output client whose response head was read; its body goes to `checker`.
fn watcher(sb: &Sb, checker: &mut BodyChecker) -> OwnedFd {
    let mut s = sb.connect();
    s.write_all(&output_request(true)).unwrap();
    let mut rest = Vec::new();
    let (status, _) = read_head(&mut s, &mut rest).unwrap();
    assert_eq!(status, 200);
    checker.feed(&rest);
    s.into()
}

#[test]
fn hundreds_of_clients_killed_mid_stream_disturb_no_one() {
    within(240, || {
        let mut sb = Sb::start(Opts::default());
        let progress = Progress::default();
        let mut checker = BodyChecker::new(Format::Protobuf, SEEDS, None);
        let seen = progress.counter();
        checker.progress = Some(seen.clone());
        let reader = watcher(&sb, &mut checker);
        let reading = std::thread::spawn(move || read_all(vec![(reader, Box::new(checker))], &[]));
        let baseline = sb.fd_count();
        // The container writes until the waves are over, keeping pace with the watcher.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let out = sb.stdout.take().unwrap();
        sb.stderr = None;
        let producer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 << 10];
                let mut pos = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    progress.wait_within(pos, 256 << 10);
                    common::fill_pattern(SEEDS[0], pos, &mut buf);
                    write_all(&out, &buf);
                    pos += buf.len() as u64;
                    // About 6 MB/s: fifty curls on two cores keep up with it.
                    std::thread::sleep(Duration::from_millis(5));
                }
                pos
            })
        };
        // Four waves of fifty clients, each killed with SIGKILL while the stream flows.
        let mut killed = 0;
        for _ in 0..4 {
            let mut wave: Vec<std::process::Child> = (0..50).map(|_| curl_attach(&sb.socket, true)).collect();
            // They attach and stream before they die (a few of fifty curls starved of CPU
            // may already have been cut for lagging: that is the lag policy at work).
            eventually(30, "most attaches", || sb.fd_count() >= baseline + 40);
            std::thread::sleep(Duration::from_millis(100));
            for c in &mut wave {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
            }
            for mut c in wave {
                c.wait().unwrap();
                killed += 1;
            }
            assert!(sb.is_running());
        }
        assert_eq!(killed, 200);
        // Every dead client's connection is closed again. (The count may be below the
        // baseline: the zero-copy path closes a stream's staging pipe end once the
        // stream, here stderr, has ended.)
        eventually(10, "closing the dead clients' connections", || {
            sb.fd_count() <= baseline
        });
        stop.store(true, Ordering::SeqCst);
        let len = producer.join().unwrap();
        assert!(len > 1 << 20, "only {len} bytes flowed");
        assert!(sb.wait(60).success());
        // The watcher got every byte, in order (its checker checks content), and so did the
        // logger.
        reading.join().unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), len);
        let out = sb.stdout_log.lock().unwrap();
        assert_eq!(out.len() as u64, len);
        assert!(is_pattern(SEEDS[0], 0, &out));
    });
}

/// Raises this process's soft descriptor limit to its hard limit.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    hard
}

#[test]
fn two_thousand_idle_connections_are_held_and_cost_little() {
    within(120, || {
        assert!(raise_nofile() >= 2200, "the test needs 2000 descriptors and some");
        let sb = Sb::start(Opts::default());
        let baseline = sb.fd_count();
        let rss_before = sb.rss_kib();
        let idle: Vec<UnixStream> = (0..2000).map(|_| UnixStream::connect(&sb.socket).unwrap()).collect();
        eventually(20, "accepting 2000 connections", || sb.fd_count() >= baseline + 2000);
        let rss_idle = sb.rss_kib();
        // Still serving: a request, and output to a client attached now.
        assert_eq!(exchange(&sb.socket, &ack_request(false)).map(|r| r.status), Some(200));
        let mut checker = BodyChecker::new(Format::Protobuf, SEEDS, None);
        let reader = watcher(&sb, &mut checker);
        let mut s = UnixStream::from(reader);
        sb.write_stdout(b"still served\n");
        let mut rest = Vec::new();
        let mut buf = [0u8; 4096];
        while !rest.windows(12).any(|w| w == b"still served") {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&buf[..n]);
        }
        drop(s);
        drop(idle);
        eventually(20, "closing 2000 connections", || sb.fd_count() == baseline);
        let per_conn = rss_idle.saturating_sub(rss_before) * 1024 / 2000;
        eprintln!("RSS {rss_before} KiB idle, {rss_idle} KiB with 2000 connections: {per_conn} bytes each");
        assert!(per_conn < 8 << 10, "{per_conn} bytes of RSS per idle connection");
    });
}

#[test]
fn a_trickling_request_head_is_cut_by_the_head_timeout() {
    within(60, || {
        let sb = Sb::start(Opts {
            extra: vec!["--head_timeout=2secs".into()],
            ..Opts::default()
        });
        let mut slow = sb.connect();
        let started = Instant::now();
        let head = b"POST / HTTP/1.1\r\nContent-Type: application/json\r\n";
        let mut answer = None;
        for &b in head {
            if slow.write_all(&[b]).is_err() {
                break;
            }
            // Others are served meanwhile.
            assert_eq!(exchange(&sb.socket, &ack_request(false)).map(|r| r.status), Some(200));
            std::thread::sleep(Duration::from_millis(1000));
            if started.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Some(r) = read_response(&mut slow, &mut Vec::new()) {
            answer = Some(r.status);
        }
        assert_eq!(answer, Some(408));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(6),
            "{took:?}"
        );
    });
}

#[test]
fn running_out_of_descriptors_neither_spins_nor_crashes_and_recovers() {
    within(120, || {
        raise_nofile();
        // 40 descriptors: a few dozen connections exhaust them.
        let sb = Sb::start(Opts {
            nofile: Some(40),
            ..Opts::default()
        });
        let conns: Vec<UnixStream> = (0..80).map(|_| UnixStream::connect(&sb.socket).unwrap()).collect();
        eventually(10, "running out of descriptors", || sb.fd_count() >= 39);
        std::thread::sleep(Duration::from_millis(300));
        let ticks = sb.cpu_ticks();
        std::thread::sleep(Duration::from_secs(2));
        let used = sb.cpu_ticks() - ticks;
        // Retrying every 100 ms costs nearly nothing; a spin would cost ~200 ticks.
        assert!(used < 20, "{used} ticks of CPU in 2 s while out of descriptors");
        let mut sb = sb;
        assert!(sb.is_running());
        // Descriptors free up: the queued connections and new ones are served.
        drop(conns);
        let started = Instant::now();
        eventually(10, "serving again", || {
            exchange(&sb.socket, &ack_request(false)).is_some_and(|r| r.status == 200)
        });
        eprintln!("served again {:?} after descriptors freed up", started.elapsed());
        sb.write_stdout(b"after\n");
        sb.close_output();
        assert!(sb.wait(30).success());
        assert_eq!(*sb.stdout_log.lock().unwrap(), b"after\n");
    });
}

#[test]
fn a_logger_that_stops_reading_pauses_the_container_and_loses_nothing() {
    within(120, || {
        let mut sb = Sb::start(Opts::default());
        sb.set_logger(LOGGER_PAUSED);
        let len: u64 = 16 << 20;
        let written = Arc::new(AtomicU64::new(0));
        let out = sb.stdout.take().unwrap();
        let w = written.clone();
        let producer = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut pos = 0;
            while pos < len {
                common::fill_pattern(SEEDS[0], pos, &mut buf);
                let n = nix::unistd::write(&out, &buf).unwrap();
                pos += n as u64;
                w.store(pos, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_secs(2));
        // The container is held back: container pipe, server buffer and logger pipe are
        // full (about 3 MiB), and it waits.
        let held = written.load(Ordering::SeqCst);
        assert!(held < 6 << 20, "{held} bytes written while the logger was stopped");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(written.load(Ordering::SeqCst), held, "it stays held back");
        assert!(sb.is_running());
        sb.set_logger(LOGGER_READS);
        producer.join().unwrap();
        sb.stderr = None;
        assert!(sb.wait(60).success());
        let log = sb.stdout_log.lock().unwrap();
        assert_eq!(log.len() as u64, len);
        assert!(is_pattern(SEEDS[0], 0, &log), "every byte, in order");
    });
}

#[test]
fn a_logger_that_goes_away_ends_the_server_with_status_1() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let mut checker = BodyChecker::new(Format::Protobuf, SEEDS, None);
        let reader = watcher(&sb, &mut checker);
        sb.set_logger(LOGGER_CLOSED);
        eventually(5, "the logger closing", || sb.logger_closed());
        // The next output cannot be logged (EPIPE): a failure (docs/protocol.md §4.2, §4.4).
        let _ = nix::unistd::write(sb.stdout.as_ref().unwrap(), b"unloggable\n");
        let status = sb.wait(30);
        assert_eq!(status.code(), Some(1));
        // The attached client's stream ends too.
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut UnixStream::from(reader), &mut rest);
    });
}

#[test]
fn a_container_killed_mid_write_ends_the_stream_cleanly() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        let out = sb.stdout.take().unwrap();
        sb.stderr = None;
        let mut child = Command::new("sh")
            .args(["-c", "while :; do echo 0123456789; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        assert!(sb.wait(30).success());
        // Every write the container made is logged whole.
        let log = sb.stdout_log.lock().unwrap();
        assert!(!log.is_empty());
        assert_eq!(log.len() % 11, 0);
        assert!(log.chunks(11).all(|l| l == b"0123456789\n"));
    });
}

#[test]
fn connections_past_max_connections_are_closed_at_once() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            extra: vec!["--max_connections=5".into()],
            ..Opts::default()
        });
        let baseline = sb.fd_count();
        let held: Vec<UnixStream> = (0..5).map(|_| sb.connect()).collect();
        eventually(10, "accepting five", || sb.fd_count() == baseline + 5);
        // The sixth is closed without an answer.
        let mut sixth = sb.connect();
        let _ = sixth.write_all(&ack_request(false));
        assert!(read_response(&mut sixth, &mut Vec::new()).is_none());
        assert_eq!(sb.fd_count(), baseline + 5);
        // They go: new ones are served.
        drop(held);
        eventually(10, "serving again", || {
            exchange(&sb.socket, &ack_request(false)).is_some_and(|r| r.status == 200)
        });
        sb.close_output();
        assert!(sb.wait(30).success());
    });
}
