//! The drop-in under load and with third-party clients: 32 clients on one
//! 64 MiB stream, a client that never reads, and curl speaking to the socket.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::*;
use switchboard::wire::Format;

const SEEDS: [u64; 2] = [101, 202];

/// Writes `len` pattern bytes to the server's stdout and stderr pipes, keeping within
/// `window` bytes of the slowest reader of `progress`.
fn feed_within(sb: &mut Sb, len: u64, progress: Option<Progress>, window: u64) -> std::thread::JoinHandle<()> {
    let out: OwnedFd = sb.stdout.take().unwrap();
    let err: OwnedFd = sb.stderr.take().unwrap();
    let gate = progress.map(|p| (p, window));
    std::thread::spawn(move || produce(vec![(out, SEEDS[0]), (err, SEEDS[1])], len, 64 << 10, 9, gate))
}

/// Writes `len` pattern bytes to the server's stdout and stderr pipes, keeping pace with
/// `progress` (readers that keep up stay well within a client pipe).
fn feed(sb: &mut Sb, len: u64, progress: Option<Progress>) -> std::thread::JoinHandle<()> {
    feed_within(sb, len, progress, 256 << 10)
}

#[test]
fn thirty_two_clients_get_the_same_64_mib() {
    within(300, || {
        let mut sb = Sb::start(Opts::default());
        let len = 32 << 20; // per stream: 64 MiB in all
        let progress = Progress::default();
        let mut readers: Vec<(OwnedFd, Box<dyn Checker>)> = Vec::new();
        for i in 0..32 {
            let protobuf = i % 2 == 0;
            let mut s = sb.connect();
            s.write_all(&output_request(protobuf)).unwrap();
            let format = if protobuf { Format::Protobuf } else { Format::Json };
            let mut checker = BodyChecker::new(format, SEEDS, Some([len, len]));
            checker.progress = Some(progress.counter());
            readers.push((skip_head(s, &mut checker), Box::new(checker)));
        }
        // The container may run 4 MiB ahead of the slowest client: more than a client's
        // pipe (the zero-copy clients fall behind it, to the history) and than the arena.
        let producer = feed_within(&mut sb, len, Some(progress), 4 << 20);
        read_all(readers, &[]);
        producer.join().unwrap();
        assert!(sb.wait(60).success());
        let logged = sb.stdout_log.lock().unwrap();
        assert_eq!(logged.len() as u64, len);
        assert!(is_pattern(SEEDS[0], 0, &logged));
        assert!(is_pattern(SEEDS[1], 0, &sb.stderr_log.lock().unwrap()));
    });
}

/// Attaches `n` protobuf clients, each to get `len` bytes of both streams, reporting to
/// `progress`; returns them with their checkers, their response heads read.
fn attach_protobuf(sb: &Sb, n: usize, len: u64, progress: &Progress) -> Vec<(OwnedFd, Box<dyn Checker>)> {
    let mut readers: Vec<(OwnedFd, Box<dyn Checker>)> = Vec::new();
    for _ in 0..n {
        let mut s = sb.connect();
        s.write_all(&output_request(true)).unwrap();
        let mut checker = BodyChecker::new(Format::Protobuf, SEEDS, Some([len, len]));
        checker.progress = Some(progress.counter());
        readers.push((skip_head(s, &mut checker), Box::new(checker)));
    }
    readers
}

/// Reads the response head off `s` and returns its descriptor, with any body bytes
/// that came with the head fed to `checker`.
fn skip_head(mut s: std::os::unix::net::UnixStream, checker: &mut BodyChecker) -> OwnedFd {
    let mut rest = Vec::new();
    let (status, _) = read_head(&mut s, &mut rest).unwrap();
    assert_eq!(status, 200);
    checker.feed(&rest);
    s.into()
}

#[test]
fn a_client_that_never_reads_holds_up_no_one() {
    within(120, || {
        let mut sb = Sb::start(Opts::default());
        // Attached and never read.
        let mut stuck = sb.connect();
        stuck.write_all(&output_request(true)).unwrap();
        let progress = Progress::default();
        let mut checker = BodyChecker::new(Format::Json, SEEDS, Some([8 << 20, 8 << 20]));
        checker.progress = Some(progress.counter());
        let mut s = sb.connect();
        s.write_all(&output_request(false)).unwrap();
        let reader = skip_head(s, &mut checker);
        let producer = feed(&mut sb, 8 << 20, Some(progress));
        read_all(vec![(reader, Box::new(checker))], &[]);
        producer.join().unwrap();
        // It was cut off once the history could not hold what it missed; the server
        // exits without waiting for it.
        assert!(sb.wait(30).success());
        assert_eq!(sb.stdout_log.lock().unwrap().len(), 8 << 20);
        drop(stuck);
    });
}

#[test]
fn exit_does_not_wait_forever_for_a_client_that_stopped_reading() {
    within(120, || {
        let mut sb = Sb::start(Opts::default());
        let mut stuck = sb.connect();
        stuck.write_all(&output_request(true)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // More than its socket can hold, less than the lag limit: it is not cut, and at
        // exit its stream cannot finish.
        let producer = feed(&mut sb, 300 << 10, None);
        producer.join().unwrap();
        let started = Instant::now();
        assert!(sb.wait(30).success());
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(15), "exit took {waited:?}");
        assert_eq!(sb.stdout_log.lock().unwrap().len(), 300 << 10);
        drop(stuck);
    });
}

fn curl(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20", "--unix-socket"])
        .arg(socket)
        .args(args)
        .arg("http://localhost/")
        .output()
        .expect("curl runs")
}

#[test]
fn curl_attaches_to_output_in_both_formats() {
    within(60, || {
        if Command::new("curl").arg("--version").output().is_err() {
            eprintln!("curl is not installed: skipped");
            return;
        }
        let mut sb = Sb::start(Opts {
            wait_for_connection: true,
            ..Opts::default()
        });
        sb.write_stdout(b"for curl\n");
        let call = std::str::from_utf8(OUTPUT_CALL).unwrap();
        let socket = sb.socket.clone();
        let json = std::thread::spawn(move || {
            curl(
                &socket,
                &[
                    "-H",
                    "Content-Type: application/json",
                    "-H",
                    "Accept: application/recordio",
                    "-H",
                    "Message-Accept: application/json",
                    "-d",
                    call,
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        // The first client started redirection; close the container so the stream ends.
        sb.close_output();
        let out = json.join().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "62\n{\"type\":\"DATA\",\"data\":{\"type\":\"STDOUT\",\"data\":\"Zm9yIGN1cmwK\"}}"
        );
        assert!(sb.wait(30).success());

        // Protobuf records (binary) from a fresh server.
        let mut sb = Sb::start(Opts {
            wait_for_connection: true,
            ..Opts::default()
        });
        sb.write_stdout(b"hi\n");
        sb.close_output();
        let out = curl(
            &sb.socket,
            &[
                "-H",
                "Content-Type: application/json",
                "-H",
                "Accept: application/recordio",
                "-H",
                "Message-Accept: application/x-protobuf",
                "-d",
                call,
            ],
        );
        assert!(out.status.success());
        assert_eq!(out.stdout, b"11\n\x08\x01\x12\x07\x08\x02\x12\x03hi\n");
        assert!(sb.wait(30).success());
    });
}

#[test]
fn curl_streams_chunked_input() {
    within(60, || {
        if Command::new("curl").arg("--version").output().is_err() {
            eprintln!("curl is not installed: skipped");
            return;
        }
        let mut sb = Sb::start(Opts::default());
        let dir = temp_dir("curl");
        let body = dir.join("body");
        let mut records = Vec::new();
        for r in [
            FIRST_RECORD.to_string(),
            stdin_record(b"typed by curl\n"),
            stdin_record(b""),
        ] {
            records.extend_from_slice(format!("{}\n{r}", r.len()).as_bytes());
        }
        std::fs::write(&body, &records).unwrap();
        let out = curl(
            &sb.socket,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Content-Type: application/recordio",
                "-H",
                "Message-Content-Type: application/json",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &format!("@{}", body.display()),
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "200",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut std::fs::File::from(sb.stdin.take().unwrap()), &mut got).unwrap();
        assert_eq!(got, b"typed by curl\n");
        assert_eq!(exchange(&sb.socket, &ack_request(false)).unwrap().status, 200);
        sb.close_output();
        assert!(sb.wait(30).success());
        let _ = std::fs::remove_dir_all(dir);
    });
}

#[test]
fn past_the_per_user_pipe_budget_clients_are_served_by_copies() {
    // The zero-copy path gives each protobuf client a 1 MiB pipe (256 pages). A user
    // without CAP_SYS_RESOURCE may hold fs.pipe-user-pages-soft pages of pipes; past
    // that, pipes cannot be raised, and the clients they were for take the copy path.
    // Only root can start the server as another user to see it.
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root, to start the server as another user");
        return;
    }
    let soft: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let clients = 100;
    within(300, move || {
        let mut sb = Sb::start(Opts {
            user: Some(65534),
            ..Opts::default()
        });
        let base = sb.fd_count();
        let len = 4 << 20;
        let progress = Progress::default();
        let readers = attach_protobuf(&sb, clients, len, &progress);
        // Each attached client holds its socket, and on the zero-copy path its pipe's
        // two ends.
        let zero_copy = (sb.fd_count() - base - clients) / 2;
        eprintln!("{zero_copy} of {clients} clients on the zero-copy path (pipe-user-pages-soft {soft})");
        assert!(zero_copy > 0, "no client took the zero-copy path");
        if soft > 0 && soft / 256 < clients as u64 {
            assert!(zero_copy < clients, "every pipe was raised past the per-user budget");
        }
        // A second server of the same user, started while the budget is spent, cannot
        // stage its output in pipes: it serves everyone by copies.
        let mut second = Sb::start(Opts {
            user: Some(65534),
            ..Opts::default()
        });
        let mut s = second.connect();
        s.write_all(&output_request(true)).unwrap();
        let small = 256 << 10;
        let mut checker = BodyChecker::new(Format::Protobuf, SEEDS, Some([small, small]));
        let reader = skip_head(s, &mut checker);
        let producer = feed(&mut second, small, None);
        read_all(vec![(reader, Box::new(checker))], &[]);
        producer.join().unwrap();
        assert!(second.wait(60).success());
        assert_eq!(second.stdout_log.lock().unwrap().len() as u64, small);
        // Both kinds get every byte, in order; so does the logger.
        let producer = feed(&mut sb, len, Some(progress));
        read_all(readers, &[]);
        producer.join().unwrap();
        assert!(sb.wait(60).success());
        assert_eq!(sb.stdout_log.lock().unwrap().len() as u64, len);
        assert!(is_pattern(SEEDS[0], 0, &sb.stdout_log.lock().unwrap()));
    });
}

#[test]
fn zero_copy_pipes_leave_descriptors_for_every_allowed_connection() {
    within(120, || {
        // 200 descriptors and 100 connections allowed: 64 are kept for the server's own,
        // 100 for the connections, and the rest, (200 - 64 - 100) / 2 = 18 pipes, for
        // zero-copy clients. All 100 attach; 18 take the zero-copy path, 82 copies.
        let clients = 100;
        let mut sb = Sb::start(Opts {
            nofile: Some(200),
            extra: vec![format!("--max_connections={clients}")],
            ..Opts::default()
        });
        let base = sb.fd_count();
        let len = 1 << 20;
        let progress = Progress::default();
        let readers = attach_protobuf(&sb, clients, len, &progress);
        assert_eq!((sb.fd_count() - base - clients) / 2, 18, "zero-copy clients");
        let producer = feed(&mut sb, len, Some(progress));
        read_all(readers, &[]);
        producer.join().unwrap();
        assert!(sb.wait(60).success());
        assert_eq!(sb.stdout_log.lock().unwrap().len() as u64, len);
    });
}
