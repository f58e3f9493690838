//! The output history on the real drop-in: every output response says the position of
//! its first byte; a client can start some bytes before the newest output
//! (`Switchboard-Tail`) or resume at a position (`Switchboard-From`); clients that fall
//! behind are served from the history instead of cut.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::{Collected, Collector, Rng, fill_pattern, within};
use switchboard::wire::Format;

/// Attaches an output client with extra request headers.
fn attach(sb: &Sb, protobuf: bool, extra: &[&str]) -> UnixStream {
    let mut s = sb.connect();
    s.write_all(&output_request_with(protobuf, extra)).unwrap();
    s
}

/// A client's response: its head, and a reader of its body.
struct Client {
    sock: UnixStream,
    status: u16,
    headers: Vec<(String, String)>,
    collector: Collector,
    out: std::sync::Arc<std::sync::Mutex<Collected>>,
    ended: bool,
}

impl Client {
    fn new(sb: &Sb, protobuf: bool, extra: &[&str]) -> Client {
        let mut sock = attach(sb, protobuf, extra);
        let mut rest = Vec::new();
        let (status, headers) = read_head(&mut sock, &mut rest).expect("a response head");
        let format = if protobuf { Format::Protobuf } else { Format::Json };
        let (mut collector, out) = Collector::new(format);
        let ended = collector.push(&rest);
        Client {
            sock,
            status,
            headers,
            collector,
            out,
            ended,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn position(&self) -> u64 {
        self.header("switchboard-position")
            .expect("a Switchboard-Position header")
            .parse()
            .unwrap()
    }

    /// Reads until the body has `n` payload bytes (or ends).
    fn read_until(&mut self, n: usize) {
        let mut buf = vec![0u8; 1 << 16];
        while !self.ended && self.out.lock().unwrap().len() < n {
            match self.sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.ended = self.collector.push(&buf[..k]),
            }
        }
    }

    /// Reads the body to its end and returns what it carried.
    fn finish(mut self) -> Collected {
        self.read_until(usize::MAX);
        assert!(self.ended, "the body did not end");
        self.out.lock().unwrap().clone()
    }
}

/// Waits until the logger of stdout has `n` bytes.
fn logged(sb: &Sb, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sb.stdout_log.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "the logger did not get {n} bytes");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pattern(seed: u64, start: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, start, &mut v);
    v
}

/// A drop-in that keeps the last MiB of output for clients that come later.
fn with_replay() -> Sb {
    Sb::start(Opts {
        extra: vec!["--replay_bytes=1048576".into()],
        ..Opts::default()
    })
}

#[test]
fn every_output_response_says_where_it_starts() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        sb.write_stdout(&pattern(1, 0, 1000));
        logged(&sb, 1000);
        // Both delivery paths (JSON by copies, protobuf by pipe pages); Mesos's headers as
        // before, and the position of the first byte.
        let json = Client::new(&sb, false, &[]);
        let protobuf = Client::new(&sb, true, &[]);
        for c in [&json, &protobuf] {
            assert_eq!(c.status, 200);
            assert_eq!(c.position(), 1000);
            assert_eq!(c.header("switchboard-skipped"), None);
            assert_eq!(c.header("transfer-encoding"), Some("chunked"));
        }
        sb.write_stdout(&pattern(1, 1000, 10));
        sb.close_output();
        for c in [json, protobuf] {
            assert_eq!(c.finish().stdout, pattern(1, 1000, 10));
        }
        assert!(sb.wait(20).success());
    });
}

#[test]
fn a_tail_gets_the_last_bytes_then_the_live_output() {
    within(60, || {
        let mut sb = with_replay();
        // Two MiB, of which the replay keeps the last one (and a little more: whole
        // records, of at most 64 KiB).
        let total = 2 << 20;
        sb.write_stdout(&pattern(2, 0, total));
        logged(&sb, total);
        let json = Client::new(&sb, false, &["Switchboard-Tail: 100"]);
        let protobuf = Client::new(&sb, true, &["Switchboard-Tail: 100"]);
        for c in [&json, &protobuf] {
            assert_eq!(c.position(), total as u64 - 100);
            assert_eq!(c.header("switchboard-skipped"), None);
        }
        // More than the replay keeps: it starts at the oldest byte kept, and says how many
        // it asked for that are gone.
        let far = Client::new(&sb, true, &["Switchboard-Tail: 2097152"]);
        let skipped: u64 = far.header("switchboard-skipped").unwrap().parse().unwrap();
        assert_eq!(far.position(), skipped);
        assert!((1 << 20) - (64 << 10) < skipped && skipped <= 1 << 20, "{skipped}");
        sb.write_stdout(&pattern(2, total as u64, 50));
        sb.close_output();
        for c in [json, protobuf] {
            assert_eq!(c.finish().stdout, pattern(2, total as u64 - 100, 150));
        }
        let start = far.position();
        assert_eq!(
            far.finish().stdout,
            pattern(2, start, (total as u64 + 50 - start) as usize)
        );
        assert!(sb.wait(20).success());
    });
}

#[test]
fn a_client_that_drops_resumes_where_it_was_with_the_same_interleaving() {
    within(60, || {
        let mut sb = with_replay();
        // A witness that stays, and the client that will drop (on both paths).
        let witness = Client::new(&sb, false, &[]);
        let mut dropping = [Client::new(&sb, true, &[]), Client::new(&sb, false, &[])];
        // Interleaved output of both streams, in pieces.
        let mut rng = Rng(7);
        let (mut out, mut err) = (0u64, 0u64);
        let mut write_some = |sb: &Sb, n: usize| {
            for _ in 0..n {
                let len = 1 + rng.below(20_000) as usize;
                if rng.below(2) == 0 {
                    sb.write_stdout(&pattern(3, out, len));
                    out += len as u64;
                } else {
                    sb.write_stderr(&pattern(4, err, len));
                    err += len as u64;
                }
            }
        };
        write_some(&sb, 40);
        // Each dropping client reads part of it and goes.
        let mut firsts = Vec::new();
        for c in &mut dropping {
            c.read_until(150_000);
            let got = c.out.lock().unwrap().clone();
            firsts.push(got);
        }
        drop(dropping);
        write_some(&sb, 40);
        // They come back where they were.
        let resumed: Vec<Client> = firsts
            .iter()
            .zip([true, false])
            .map(|(got, protobuf)| {
                let from = format!("Switchboard-From: {}", got.len());
                let c = Client::new(&sb, protobuf, &[&from]);
                assert_eq!(c.position(), got.len() as u64);
                assert_eq!(c.header("switchboard-skipped"), None);
                c
            })
            .collect();
        write_some(&sb, 40);
        sb.close_output();
        let all = witness.finish();
        assert_eq!(all.stdout, *sb.stdout_log.lock().unwrap());
        for (first, c) in firsts.into_iter().zip(resumed) {
            let second = c.finish();
            let mut joined = first.interleaved.clone();
            for (s, bytes) in second.interleaved {
                match joined.last_mut() {
                    Some((last, run)) if *last == s => run.extend(bytes),
                    _ => joined.push((s, bytes)),
                }
            }
            assert_eq!(joined, all.interleaved, "the resumed stream, interleaving included");
        }
        assert!(sb.wait(20).success());
    });
}

#[test]
fn bad_starts_are_answered_400() {
    within(60, || {
        let mut sb = Sb::start(Opts::default());
        sb.write_stdout(&pattern(5, 0, 500));
        logged(&sb, 500);
        for (extra, text) in [
            (
                "Switchboard-From: 1500",
                "Switchboard-From 1500 is past the newest output (500)",
            ),
            (
                "Switchboard-From: ten",
                "Switchboard-From must be a number of bytes, not 'ten'",
            ),
            (
                "Switchboard-Tail: -1",
                "Switchboard-Tail must be a number of bytes, not '-1'",
            ),
        ] {
            let r = exchange(&sb.socket, &output_request_with(true, &[extra])).unwrap();
            assert_eq!((r.status, r.text().as_str()), (400, text), "{extra}");
        }
        // Nothing was kept (no replay, no client): a resume starts at the newest byte and
        // says what it missed.
        let c = Client::new(&sb, false, &["Switchboard-From: 100"]);
        assert_eq!((c.position(), c.header("switchboard-skipped")), (500, Some("400")));
        sb.close_output();
        assert!(c.finish().is_empty());
        assert!(sb.wait(20).success());
    });
}

#[test]
fn clients_that_do_not_read_while_much_is_written_get_every_byte() {
    within(60, || {
        // Copying clients (JSON) and pipe clients (protobuf, which fall behind their
        // pipes to the history).
        for protobuf in [false, true] {
            let mut sb = Sb::start(Opts::default());
            // Attached (their response heads came) before any output is written: a client
            // the server has not attached yet starts at the newest output.
            let clients: Vec<(UnixStream, Vec<u8>)> = (0..3)
                .map(|_| {
                    let mut s = attach(&sb, protobuf, &[]);
                    let mut rest = Vec::new();
                    assert_eq!(read_head(&mut s, &mut rest).expect("a response head").0, 200);
                    (s, rest)
                })
                .collect();
            // More than a pipe and the arena hold, before anyone reads.
            let (out, err) = (pattern(6, 0, 1 << 20), pattern(7, 0, 512 << 10));
            sb.write_stdout(&out);
            sb.write_stderr(&err);
            logged(&sb, 1 << 20);
            sb.close_output();
            let format = if protobuf { Format::Protobuf } else { Format::Json };
            for (mut s, rest) in clients {
                let (got, ended) = read_body(&mut s, &rest, format);
                assert!(ended && got.stdout == out && got.stderr == err, "protobuf {protobuf}");
            }
            assert!(sb.wait(20).success());
        }
    });
}

/// An output client that sends its request and reads nothing.
fn stalled(sb: &Sb, protobuf: bool) -> UnixStream {
    attach(sb, protobuf, &[])
}

/// Reads what a client got until its connection closes: its payload, whether the
/// stream ended properly (a cut client's does not), and the position it started at.
fn read_rest(s: UnixStream, format: Format) -> (Collected, bool, u64) {
    let mut s = s;
    let mut rest = Vec::new();
    let (status, headers) = read_head(&mut s, &mut rest).expect("a response head");
    assert_eq!(status, 200);
    let position = headers
        .iter()
        .find(|(n, _)| n == "switchboard-position")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a position");
    let (got, ended) = read_body(&mut s, &rest, format);
    (got, ended, position)
}

/// Writes `total` bytes of pattern 8 to stdout on a thread; returns when it finished.
fn writer(sb: &Sb, total: usize) -> std::thread::JoinHandle<Instant> {
    let fd = sb.stdout.as_ref().unwrap().try_clone().unwrap();
    std::thread::spawn(move || {
        for at in (0..total).step_by(1 << 16) {
            write_all(&fd, &pattern(8, at as u64, (1 << 16).min(total - at)));
        }
        Instant::now()
    })
}

#[test]
fn with_disconnect_a_stalled_client_past_the_history_is_cut_and_the_container_goes_on() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            extra: vec!["--history_bytes=524288".into()],
            ..Opts::default()
        });
        let clients = [stalled(&sb, true), stalled(&sb, false)];
        // Far more than a client's pipe, its socket and the history hold: nothing holds
        // the container back.
        let total = 8 << 20;
        writer(&sb, total).join().unwrap();
        logged(&sb, total);
        sb.close_output();
        for (s, format) in clients.into_iter().zip([Format::Protobuf, Format::Json]) {
            // (It may have attached after the first writes.)
            let (got, ended, at) = read_rest(s, format);
            assert!(!ended, "a cut client's stream ends without its last chunk");
            assert!(got.stdout.len() < total && got.stdout == pattern(8, at, got.stdout.len()));
        }
        assert_eq!(*sb.stdout_log.lock().unwrap(), pattern(8, 0, total));
        assert!(sb.wait(20).success());
    });
}

#[test]
fn with_block_a_stalled_client_holds_the_container_until_the_block_timeout() {
    within(60, || {
        for protobuf in [true, false] {
            let mut sb = Sb::start(Opts {
                extra: vec![
                    "--history_bytes=524288".into(),
                    "--lag_policy=block".into(),
                    "--block_timeout=3secs".into(),
                ],
                ..Opts::default()
            });
            let witness = Client::new(&sb, true, &[]);
            let witness = std::thread::spawn(move || witness.finish());
            let client = stalled(&sb, protobuf);
            let total = 8 << 20;
            let started = Instant::now();
            let writer = writer(&sb, total);
            // The container's write waits for the stalled client: the logger stops short.
            std::thread::sleep(Duration::from_secs(1));
            assert!(!writer.is_finished(), "the container must be held back");
            let held = sb.stdout_log.lock().unwrap().len();
            assert!(held < total, "{held}");
            // Until the block timeout cuts the client.
            let done = writer.join().unwrap();
            assert!(done - started >= Duration::from_secs(3), "{:?}", done - started);
            logged(&sb, total);
            sb.close_output();
            let (got, ended, at) = read_rest(client, if protobuf { Format::Protobuf } else { Format::Json });
            assert!(!ended, "cut at the block timeout");
            assert!(got.stdout == pattern(8, at, got.stdout.len()), "protobuf {protobuf}");
            assert_eq!(witness.join().unwrap().stdout, pattern(8, 0, total));
            assert!(sb.wait(20).success());
        }
    });
}

#[test]
fn with_block_a_client_that_only_trickles_is_cut() {
    within(60, || {
        let mut sb = Sb::start(Opts {
            extra: vec![
                "--history_bytes=524288".into(),
                "--lag_policy=block".into(),
                "--block_timeout=1secs".into(),
            ],
            ..Opts::default()
        });
        let mut client = stalled(&sb, true);
        let total = 8 << 20;
        let writer = writer(&sb, total);
        // A few KiB per block timeout: progress, but not the half of its lag it must take
        // to keep holding the container.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let trickle = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut got = 0usize;
                let mut buf = [0u8; 4096];
                loop {
                    if !done.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return got,
                        Ok(n) => got += n,
                    }
                }
            })
        };
        // Its trickle would take many minutes to let 8 MiB through: the container goes
        // on only because it is cut.
        writer.join().unwrap();
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        logged(&sb, total);
        sb.close_output();
        assert!(sb.wait(20).success());
        let got = trickle.join().unwrap();
        assert!(got < total / 2, "{got}");
    });
}
