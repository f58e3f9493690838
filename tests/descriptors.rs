//! Any kind of descriptor as the container's stdio: `/dev/null` as a source and as a
//! logger (the same descriptor for several flags, as Mesos's own tests pass it), a
//! regular file as stdin, and a stream socket or a terminal as the logger whose reader
//! stops: nothing
//! else the server does waits for it.

use std::time::{Duration, Instant};

use common::http::*;
use common::sb::*;
use common::{fill_pattern, within};
use switchboard::wire::Format;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, 0, &mut v);
    v
}

#[test]
fn dev_null_as_source_and_loggers_and_a_file_as_stdin() {
    within(60, || {
        // stderr comes from /dev/null (at its end at once), and /dev/null takes both
        // loggers: one descriptor for three flags.
        let mut sb = Sb::start(Opts {
            devnull: true,
            stdin_file: true,
            ..Opts::default()
        });
        let clients = [sb.attach_output(true), sb.attach_output(false)];
        let out = pattern(1, 300_000);
        sb.write_stdout(&out);
        let input = pattern(2, 100_000);
        assert_eq!(sb.send_input(&input), 200);
        sb.close_output();
        for ((s, rest), format) in clients.into_iter().zip([Format::Protobuf, Format::Json]) {
            assert!(read_stdout(s, rest, format) == out, "{format:?}");
        }
        assert!(sb.wait(30).success());
        assert!(std::fs::read(sb.stdin_path.as_ref().unwrap()).unwrap() == input);
    });
}

#[test]
fn a_socket_logger_that_stops_reading_holds_back_only_the_output() {
    a_stalled_logger_holds_back_only_the_output(Loggers::Sockets);
}

#[test]
fn a_terminal_logger_that_stops_reading_holds_back_only_the_output() {
    a_stalled_logger_holds_back_only_the_output(Loggers::Terminals);
}

fn a_stalled_logger_holds_back_only_the_output(loggers: Loggers) {
    within(90, move || {
        let mut sb = Sb::start(Opts {
            loggers,
            ..Opts::default()
        });
        let container_stdin = sb.stdin.take().unwrap();
        sb.set_logger(LOGGER_PAUSED);
        // Far more than the logger's socket, the server's buffers and the container's
        // pipe hold: the container's writes wait for the logger.
        let total = 8 << 20;
        let data = pattern(3, total);
        let fd = sb.stdout.as_ref().unwrap().try_clone().unwrap();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || write_all(&fd, &data))
        };
        std::thread::sleep(Duration::from_millis(500));
        assert!(!writer.is_finished(), "the stalled logger holds the container back");
        // Meanwhile: new output clients are answered, input reaches stdin, SIGTERM (which
        // only starts reading) changes nothing, and new connections are still served.
        let client = sb.attach_output(true);
        assert_eq!(sb.send_input(b"typed while the logger is stalled\n"), 200);
        let mut got = vec![0u8; 34];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while n < got.len() {
            assert!(Instant::now() < deadline, "stdin got {n} bytes");
            n += nix::unistd::read(&container_stdin, &mut got[n..]).unwrap();
        }
        assert_eq!(&got, b"typed while the logger is stalled\n");
        sb.signal(nix::sys::signal::Signal::SIGTERM);
        let second = sb.attach_output(false);
        assert!(sb.is_running());
        // The logger reads again: every byte reaches it, and both clients.
        sb.set_logger(LOGGER_READS);
        writer.join().unwrap();
        sb.close_output();
        let (s, rest) = client;
        let got = read_stdout(s, rest, Format::Protobuf);
        assert!(data.ends_with(&got), "the first client's bytes are the output's end");
        let (s, rest) = second;
        assert!(data.ends_with(&read_stdout(s, rest, Format::Json)));
        assert!(sb.wait(30).success());
        assert!(*sb.stdout_log.lock().unwrap() == data, "the logger has every byte");
    });
}
