//! The relay core on real pipes, PTYs and unix sockets: every client gets a
//! byte-identical ordered stream, the logger gets every byte, a client that stops reading
//! is cut off without holding anyone up, a client that leaves disturbs no one, and a PTY
//! ends when its child exits.

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

use common::*;
use switchboard::config::{LagPolicy, RelayConfig, RingConfig};
use switchboard::relay::Framing;
use switchboard::server::fanout::{self, FanoutReport, FanoutSpec};
use switchboard::wire::Format;

const SEEDS: [u64; 2] = [11, 22];

struct Setup {
    clients: Vec<Framing>,
    /// Pattern bytes written to each stream.
    len: u64,
    streams: usize,
    max_chunk: usize,
    /// Clients that stop reading (they are read only after everyone else finished).
    stalled: Vec<usize>,
    /// The stalled clients must get every byte all the same (the history holds them).
    stalled_complete: bool,
    /// Clients whose connection closes before they read anything.
    closed: Vec<usize>,
    relay: RelayConfig,
    /// Protobuf and raw clients by tee and splice.
    zero_copy: bool,
}

impl Setup {
    fn new(clients: Vec<Framing>, len: u64) -> Setup {
        Setup {
            clients,
            len,
            streams: 2,
            max_chunk: 100 * 1024,
            stalled: Vec::new(),
            stalled_complete: false,
            closed: Vec::new(),
            relay: RelayConfig::default(),
            zero_copy: false,
        }
    }
}

/// Runs the relay with producer, logger reader and client reader threads; checks everything.
fn run(setup: Setup) -> (FanoutReport, Vec<Box<dyn Checker>>) {
    let mut sources = Vec::new();
    let mut writers = Vec::new();
    let mut loggers = Vec::new();
    let mut logger_readers: Vec<(OwnedFd, Box<dyn Checker>)> = Vec::new();
    for &seed in &SEEDS[..setup.streams] {
        let (r, w) = pipe(1 << 20);
        sources.push((r, false));
        writers.push((w, seed));
        let (lr, lw) = pipe(1 << 20);
        loggers.push(lw);
        let check = RawChecker {
            seed,
            pos: 0,
            expect_len: Some(setup.len),
            progress: None,
        };
        logger_readers.push((lr, Box::new(check)));
    }
    let mut clients = Vec::new();
    let mut readers: Vec<(OwnedFd, Box<dyn Checker>)> = Vec::new();
    let progress = Progress::default();
    for (i, framing) in setup.clients.iter().enumerate() {
        let (ours, theirs) = socket_pair();
        clients.push((ours, *framing, Vec::new()));
        let stalled = setup.stalled.contains(&i);
        let complete = (!stalled || setup.stalled_complete) && !setup.closed.contains(&i);
        let counter = (complete && !stalled).then(|| progress.counter());
        let checker: Box<dyn Checker> = match framing {
            Framing::Raw => {
                assert_eq!(setup.streams, 1, "raw clients interleave streams: test them with one");
                Box::new(RawChecker {
                    seed: SEEDS[0],
                    pos: 0,
                    expect_len: complete.then_some(setup.len),
                    progress: counter,
                })
            }
            Framing::Chunked(f) => {
                let expect = [setup.len, if setup.streams == 2 { setup.len } else { 0 }];
                let mut c = BodyChecker::new(*f, SEEDS, complete.then_some(expect));
                c.progress = counter;
                Box::new(c)
            }
        };
        if setup.closed.contains(&i) {
            drop(theirs);
        } else {
            readers.push((theirs, checker));
        }
    }
    let spec = FanoutSpec {
        relay: setup.relay,
        sources,
        loggers,
        clients,
        hangup_polls: true,
        policy: LagPolicy::Disconnect,
        zero_copy: setup.zero_copy,
    };
    let relay = std::thread::spawn(move || fanout::run(spec, RingConfig::default()).unwrap());
    let (len, max_chunk) = (setup.len, setup.max_chunk);
    // Readers that keep up stay within half a client pipe (and half the history and the
    // record log); only stalled ones are cut.
    let r = &setup.relay;
    let window = (384 << 10)
        .min(r.history_bytes / 2)
        .min(r.max_records * r.max_record / 2) as u64;
    let producer = std::thread::spawn(move || produce(writers, len, max_chunk, 7, Some((progress, window))));
    let logger = std::thread::spawn(move || read_all(logger_readers, &[]));
    let stalled: Vec<usize> = setup
        .stalled
        .iter()
        .map(|&i| i - setup.closed.iter().filter(|&&c| c < i).count())
        .collect();
    let checkers = read_all(readers, &stalled);
    producer.join().unwrap();
    logger.join().unwrap();
    let report = relay.join().unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(report.leaked_fds, 0, "client descriptors left open");
    (report, checkers)
}

#[test]
fn one_client_each_framing() {
    within(120, || {
        for zero_copy in [false, true] {
            let clients = vec![Framing::Chunked(Format::Json), Framing::Chunked(Format::Protobuf)];
            let (report, _) = run(Setup {
                zero_copy,
                ..Setup::new(clients, 4 << 20)
            });
            assert_eq!(report.stats.clients_cut, 0);
            assert_eq!(report.stats.bytes_read(), 8 << 20);
        }
    });
}

#[test]
fn sixty_four_clients_get_identical_streams() {
    within(120, || {
        let clients: Vec<Framing> = (0..64)
            .map(|i| {
                if i % 2 == 0 {
                    Framing::Chunked(Format::Protobuf)
                } else {
                    Framing::Chunked(Format::Json)
                }
            })
            .collect();
        // Zero copy mixes: the protobuf half by pipe pages, the JSON half by copies.
        for zero_copy in [false, true] {
            let (report, _) = run(Setup {
                zero_copy,
                ..Setup::new(clients.clone(), 2 << 20)
            });
            assert_eq!(report.stats.clients_cut, 0);
        }
    });
}

#[test]
fn raw_protobuf_and_json_clients_at_once() {
    within(120, || {
        // With zero copy, raw and protobuf clients take pipe pages (raw ones from the
        // payload, protobuf ones from the framed records) and JSON ones copies; one stalls
        // on each path and is cut, and nobody else notices.
        let clients: Vec<Framing> = (0..12)
            .map(|i| match i % 3 {
                0 => Framing::Raw,
                1 => Framing::Chunked(Format::Protobuf),
                _ => Framing::Chunked(Format::Json),
            })
            .collect();
        for zero_copy in [false, true] {
            let mut setup = Setup::new(clients.clone(), 24 << 20);
            setup.streams = 1;
            setup.stalled = vec![1, 2];
            setup.zero_copy = zero_copy;
            let (report, _) = run(setup);
            assert_eq!(report.stats.clients_cut, 2);
        }
    });
}

#[test]
fn clients_far_behind_their_pipes_are_served_from_the_history() {
    within(120, || {
        // Three clients (raw, protobuf, JSON) read nothing until 6 MiB went by: pipe
        // clients fall behind their 1 MiB pipes, and the history (8 MiB) serves them.
        // Nobody is cut, and the others never wait.
        let clients = vec![
            Framing::Raw,
            Framing::Chunked(Format::Protobuf),
            Framing::Chunked(Format::Json),
            Framing::Chunked(Format::Protobuf),
            Framing::Raw,
        ];
        for zero_copy in [false, true] {
            let mut setup = Setup::new(clients.clone(), 6 << 20);
            // (Raw clients interleave the streams: one stream.)
            setup.streams = 1;
            setup.stalled = vec![0, 1, 2];
            setup.stalled_complete = true;
            setup.zero_copy = zero_copy;
            let (report, _) = run(setup);
            assert_eq!(report.stats.clients_cut, 0, "{report:?}");
            if zero_copy {
                assert!(report.stats.fell_behind >= 2, "{report:?}");
            }
        }
    });
}

#[test]
fn two_hundred_fifty_six_raw_clients() {
    within(120, || {
        for zero_copy in [false, true] {
            let mut setup = Setup::new(vec![Framing::Raw; 256], 1 << 20);
            setup.streams = 1;
            setup.max_chunk = 4096;
            setup.zero_copy = zero_copy;
            let (report, _) = run(setup);
            assert_eq!(report.stats.clients_cut, 0);
        }
    });
}

#[test]
fn a_client_that_stops_reading_is_cut_and_holds_no_one_up() {
    within(120, || {
        for zero_copy in [false, true] {
            let before = rss_kib();
            let clients = vec![Framing::Chunked(Format::Protobuf); 4];
            let mut setup = Setup::new(clients, 64 << 20);
            setup.stalled = vec![0];
            setup.zero_copy = zero_copy;
            let (report, checkers) = run(setup);
            assert_eq!(report.stats.clients_cut, 1);
            // Behind by more than it could hold: its pipe, or the history.
            assert!(report.stats.bytes_lost > 512 << 10, "{report:?}");
            drop(checkers);
            // 128 MiB went through; memory stays bounded by the buffers, not by the backlog.
            let grown = rss_kib().saturating_sub(before);
            assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
        }
    });
}

#[test]
fn a_client_that_leaves_disturbs_no_one() {
    within(120, || {
        for zero_copy in [false, true] {
            let clients = vec![
                Framing::Chunked(Format::Json),
                Framing::Chunked(Format::Protobuf),
                Framing::Chunked(Format::Protobuf),
            ];
            let mut setup = Setup::new(clients, 8 << 20);
            setup.closed = vec![1];
            setup.zero_copy = zero_copy;
            let (report, _) = run(setup);
            // A departure is not a lag cut.
            assert_eq!(report.stats.clients_cut, 0);
        }
    });
}

#[test]
fn small_writes_and_tiny_records() {
    within(120, || {
        for zero_copy in [false, true] {
            let mut setup = Setup::new(
                vec![Framing::Chunked(Format::Json), Framing::Chunked(Format::Protobuf)],
                200_000,
            );
            setup.max_chunk = 7;
            setup.relay = RelayConfig {
                max_record: 5,
                max_read: 4096,
                max_send_segments: 16,
                ..RelayConfig::default()
            };
            setup.zero_copy = zero_copy;
            let (report, _) = run(setup);
            assert_eq!(report.stats.clients_cut, 0);
        }
    });
}

#[test]
fn pty_output_ends_when_the_child_exits() {
    within(60, || {
        // By copies (JSON) and by pipe pages (protobuf: the PTY is spliced into a pipe).
        for (zero_copy, format) in [(false, Format::Json), (true, Format::Protobuf)] {
            let pty = switchboard::tty::open().unwrap();
            let mut child = Command::new("sh")
                .args(["-c", "printf Hello; printf World 1>&2; exit 3"])
                .stdin(Stdio::from(pty.slave.try_clone().unwrap()))
                .stdout(Stdio::from(pty.slave.try_clone().unwrap()))
                .stderr(Stdio::from(pty.slave))
                .spawn()
                .unwrap();
            let (log_r, log_w) = pipe(1 << 16);
            let (ours, theirs) = socket_pair();
            let spec = FanoutSpec {
                relay: RelayConfig::default(),
                sources: vec![(pty.master, true)],
                loggers: vec![log_w],
                clients: vec![(ours, Framing::Chunked(format), Vec::new())],
                hangup_polls: true,
                policy: LagPolicy::Disconnect,
                zero_copy,
            };
            let relay = std::thread::spawn(move || fanout::run(spec, RingConfig::default()).unwrap());
            let (collector, collected) = Collector::new(format);
            read_all(vec![(theirs, Box::new(collector) as Box<dyn Checker>)], &[]);
            let report = relay.join().unwrap();
            assert_eq!(report.failure, None, "EIO at the end of a PTY is not a failure");
            assert_eq!(child.wait().unwrap().code(), Some(3));
            let mut log = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = nix::unistd::read(&log_r, &mut buf).unwrap();
                if n == 0 {
                    break;
                }
                log.extend_from_slice(&buf[..n]);
            }
            // Both streams arrive merged on the PTY, and are logged and sent as stdout.
            assert_eq!(log, b"HelloWorld");
            let collected = collected.lock().unwrap();
            assert_eq!(collected.stdout, b"HelloWorld");
            assert!(collected.stderr.is_empty() && collected.ended);
        }
    });
}

#[test]
fn fragmented_writes_neither_fail_staging_nor_tear_a_blocking_client() {
    within(120, || {
        // Writes of just over half a page each take a pipe buffer of their own (the next
        // does not fit the page), so a record of 64 KiB is 32 buffers. With 512 KiB of
        // them waiting before the relay starts, whole rounds of such records are staged.
        for policy in [LagPolicy::Disconnect, LagPolicy::Block] {
            const WRITE: usize = 2049;
            let total: u64 = 8 << 20;
            let (src_r, src_w) = pipe(1 << 20);
            let mut buf = vec![0u8; WRITE];
            let mut pos = 0u64;
            for _ in 0..255 {
                fill_pattern(SEEDS[0], pos, &mut buf);
                assert_eq!(nix::unistd::write(&src_w, &buf).unwrap(), WRITE);
                pos += WRITE as u64;
            }
            let (lr, lw) = pipe(1 << 20);
            // The producer keeps within reach of the readers: only fragmentation is
            // tested, not lagging.
            let progress = Progress::default();
            let mut clients = Vec::new();
            let mut readers: Vec<(OwnedFd, Box<dyn Checker>)> = Vec::new();
            for framing in [
                Framing::Chunked(Format::Protobuf),
                Framing::Raw,
                Framing::Chunked(Format::Protobuf),
            ] {
                let (ours, theirs) = socket_pair();
                clients.push((ours, framing, Vec::new()));
                let checker: Box<dyn Checker> = match framing {
                    Framing::Raw => Box::new(RawChecker {
                        seed: SEEDS[0],
                        pos: 0,
                        expect_len: Some(total),
                        progress: Some(progress.counter()),
                    }),
                    Framing::Chunked(f) => {
                        let mut c = BodyChecker::new(f, SEEDS, Some([total, 0]));
                        c.progress = Some(progress.counter());
                        Box::new(c)
                    }
                };
                readers.push((theirs, checker));
            }
            let spec = FanoutSpec {
                relay: RelayConfig::default(),
                sources: vec![(src_r, false)],
                loggers: vec![lw],
                clients,
                hangup_polls: true,
                policy,
                zero_copy: true,
            };
            let relay = std::thread::spawn(move || fanout::run(spec, RingConfig::default()).unwrap());
            let logger = std::thread::spawn(move || {
                let check = RawChecker {
                    seed: SEEDS[0],
                    pos: 0,
                    expect_len: Some(total),
                    progress: None,
                };
                read_all(vec![(lr, Box::new(check) as Box<dyn Checker>)], &[])
            });
            let producer = std::thread::spawn(move || {
                while pos < total {
                    progress.wait_within(pos, 256 << 10);
                    let n = (WRITE as u64).min(total - pos) as usize;
                    fill_pattern(SEEDS[0], pos, &mut buf[..n]);
                    let mut done = 0;
                    while done < n {
                        done += nix::unistd::write(&src_w, &buf[done..n]).unwrap();
                    }
                    pos += n as u64;
                }
            });
            read_all(readers, &[]);
            producer.join().unwrap();
            logger.join().unwrap();
            let report = relay.join().unwrap();
            assert_eq!(report.failure, None);
            assert_eq!(report.stats.clients_cut, 0, "{policy:?}");
        }
    });
}
