//! `switchboard attach` and the output history: `--tail` and `--from` start where asked,
//! and an attachment whose connection drops while the container runs carries on at its
//! position: nothing twice, nothing missed that the switchboard still had, and a note
//! on stderr for what it no longer had or when another switchboard answers.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::sb::{Opts, Runtime, Sb, temp_dir};
use common::{fill_pattern, wait_until, within};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A `switchboard attach` whose stdout and stderr are read as they come.
struct Attach {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Lets the stdout reader go (until then, attach's writes to its stdout block).
    read_stdout: Arc<std::sync::atomic::AtomicBool>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn drain(mut from: impl Read + Send + 'static, to: Arc<Mutex<Vec<u8>>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            to.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Attach {
    /// Starts `switchboard attach ARGS`, its stdout read at once, or only after
    /// [`Attach::read_stdout`] when `stall`.
    fn start(args: &[&str], stall: bool) -> Attach {
        let mut cmd = Command::new(BIN);
        cmd.arg("attach")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let read_stdout = Arc::new(std::sync::atomic::AtomicBool::new(!stall));
        let out = child.stdout.take().unwrap();
        let readers = vec![
            {
                let (to, go) = (stdout.clone(), read_stdout.clone());
                std::thread::spawn(move || {
                    while !go.load(std::sync::atomic::Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    drain(out, to).join().unwrap();
                })
            },
            drain(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Attach {
            child,
            stdout,
            stderr,
            read_stdout,
            readers,
        }
    }

    fn read_stdout(&self) {
        self.read_stdout.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn stdout_len(&self) -> usize {
        self.stdout.lock().unwrap().len()
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until stderr says `text`.
    fn await_note(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stderr_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no '{text}' on stderr: {}",
                self.stderr_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for its exit; its status, stdout and stderr.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<u8>, Vec<u8>) {
        self.read_stdout();
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let out = self.stdout.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (status, out, err)
    }
}

impl Drop for Attach {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(seed: u64, start: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_pattern(seed, start, &mut v);
    v
}

fn socket(sb: &Sb) -> &str {
    sb.socket.to_str().unwrap()
}

/// Removes `note` (a line of its own on stderr) from `err`, once.
fn without_note(err: &[u8], note: &str) -> Vec<u8> {
    let text = format!("\nswitchboard attach: {note}\n");
    let at = err
        .windows(text.len())
        .position(|w| w == text.as_bytes())
        .unwrap_or_else(|| panic!("no note '{note}'"));
    [&err[..at], &err[at + text.len()..]].concat()
}

#[test]
fn tail_and_from_start_where_asked_then_follow() {
    within(60, || {
        let guard = Runtime::new("attach-tail");
        let runtime = guard.path.clone();
        let run = |args: &[&str]| {
            Command::new(BIN)
                .env("XDG_RUNTIME_DIR", &runtime)
                .args(args)
                .output()
                .unwrap()
        };
        // A hundred lines, then it waits for a line of input. (Lines of both streams
        // count in the order the switchboard read them, which is not known here: one
        // stream keeps this exact.)
        let out = run(&[
            "run",
            "--detach",
            // (The raw log is the bytes as the attachments get them.)
            "--log-format",
            "raw",
            "--",
            "sh",
            "-c",
            "i=1; while [ $i -le 100 ]; do echo $i; i=$((i+1)); done; read x; echo \"after $x\"",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let dir = Path::new(&runtime).join("switchboard").join(&id);
        let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("info.json")).unwrap()).unwrap();
        let socket = info["socket"].as_str().unwrap().to_string();
        let socket = socket.as_str();
        wait_until("the output in the log", || {
            std::fs::read_to_string(dir.join("stdout.log")).is_ok_and(|l| l.ends_with("100\n"))
        });
        let tail = Attach::start(&["--no-stdin", "--tail", "3", socket], false);
        let all = Attach::start(&["--no-stdin", "--from", "0", socket], false);
        // Position 20 is the newline of "10\n" (bytes 18 to 20): inside a record.
        let from = Attach::start(&["--no-stdin", "--from", "20", socket], false);
        wait_until("the tail", || tail.stdout_len() >= 10);
        wait_until("the whole output", || all.stdout_len() >= 292);
        wait_until("the later start", || from.stdout_len() >= 272);
        // Then the input that makes it write one more line and exit.
        let input = Command::new(BIN)
            .args(["attach", "--tail", "0", socket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"go\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(input.status.success(), "{}", String::from_utf8_lossy(&input.stderr));
        assert_eq!(String::from_utf8_lossy(&input.stdout), "after go\n");
        let (status, out, err) = tail.finish();
        assert!(status.success(), "{}", String::from_utf8_lossy(&err));
        assert_eq!(String::from_utf8_lossy(&out), "98\n99\n100\nafter go\n");
        assert_eq!(String::from_utf8_lossy(&err), "");
        let log = std::fs::read(dir.join("stdout.log")).unwrap();
        let (status, out, err) = all.finish();
        assert!(status.success());
        assert_eq!((out, err), (log.clone(), Vec::new()));
        let (status, out, _) = from.finish();
        assert!(status.success());
        assert_eq!(out, log[20..]);
    });
}

#[test]
fn a_dropped_connection_resumes_where_it_was_and_another_server_is_said() {
    within(90, || {
        let dir = temp_dir("attach-proxy");
        let mut first = Sb::start(Opts {
            extra: vec!["--replay_bytes=4194304".into()],
            ..Opts::default()
        });
        let proxy = Proxy::start(&dir.join("proxy.sock"), &first.socket);
        let attach = Attach::start(&["--no-stdin", "--from", "0", proxy.path.to_str().unwrap()], false);
        // Both streams, in pieces, before and after the connection drops.
        let (mut out, mut err) = (0u64, 0u64);
        let mut write = |sb: &Sb, pieces: usize| {
            for i in 0..pieces {
                let len = 1000 + (i * 7919) % 30_000;
                if i % 3 == 0 {
                    sb.write_stderr(&pattern(2, err, len));
                    err += len as u64;
                } else {
                    sb.write_stdout(&pattern(1, out, len));
                    out += len as u64;
                }
            }
        };
        write(&first, 60);
        wait_until("some output through the proxy", || attach.stdout_len() > 100_000);
        proxy.drop_connections();
        write(&first, 60);
        attach.await_note("nothing missed");
        write(&first, 30);
        let resumed = "\nswitchboard attach: the connection dropped; continuing where it was, nothing missed\n";
        wait_until("all of it", || {
            attach.stdout_len() == out as usize && attach.stderr.lock().unwrap().len() == err as usize + resumed.len()
        });
        // Now the proxy leads to another switchboard, which numbers its output anew.
        let mut second = Sb::start(Opts {
            extra: vec!["--replay_bytes=1048576".into()],
            ..Opts::default()
        });
        second.write_stdout(b"the second switchboard\n");
        proxy.retarget(&second.socket);
        proxy.drop_connections();
        attach.await_note("restarted");
        first.close_output();
        assert!(first.wait(20).success());
        second.write_stdout(b"and its output\n");
        second.close_output();
        let (status, got_out, got_err) = attach.finish();
        assert!(status.success(), "{}", String::from_utf8_lossy(&got_err));
        assert!(second.wait(20).success());
        let expected_out = [
            first.stdout_log.lock().unwrap().as_slice(),
            b"the second switchboard\nand its output\n",
        ]
        .concat();
        assert!(got_out == expected_out, "stdout differs");
        let got_err = without_note(
            &got_err,
            "the connection dropped; continuing where it was, nothing missed",
        );
        let got_err = without_note(
            &got_err,
            "the connection dropped and the switchboard restarted: continuing with the oldest output it \
             kept; output in between may be missing",
        );
        assert!(got_err == *first.stderr_log.lock().unwrap(), "stderr differs");
    });
}

#[test]
fn an_attachment_cut_for_lagging_resumes_and_says_what_it_missed() {
    within(90, || {
        let mut sb = Sb::start(Opts {
            extra: vec!["--history_bytes=262144".into()],
            ..Opts::default()
        });
        let before = sb.fd_count();
        let attach = Attach::start(&["--no-stdin", "--from", "0", socket(&sb)], true);
        // Attached (it may still start after the first writes, which it is told of).
        wait_until("the attach's connection", || sb.fd_count() > before);
        // It does not read while much more than it, its pipe and the history hold is
        // written: it is cut.
        let total = 6 << 20;
        for at in (0..total).step_by(1 << 16) {
            sb.write_stdout(&pattern(3, at as u64, 1 << 16));
        }
        wait_until("the log", || sb.stdout_log.lock().unwrap().len() == total);
        attach.read_stdout();
        attach.await_note("bytes of output missing");
        sb.write_stdout(&pattern(3, total as u64, 1000));
        sb.close_output();
        let (status, got, err) = attach.finish();
        assert!(status.success());
        let err = String::from_utf8(err).unwrap();
        let number_after = |text: &str| -> Option<usize> { err.split(text).nth(1)?.split(' ').next()?.parse().ok() };
        // It may have attached after the first writes, which nobody kept (no replay).
        let late = number_after("starting ").unwrap_or(0);
        let skipped = number_after("continuing, ").unwrap_or_else(|| panic!("{err}"));
        let log = sb.stdout_log.lock().unwrap().clone();
        assert!(sb.wait(20).success());
        // What it got is the log from where it started, with one gap of exactly the bytes
        // it was told of.
        let log = &log[late..];
        assert_eq!(got.len() + skipped, log.len());
        let same = got.iter().zip(log).take_while(|(a, b)| a == b).count();
        assert!(same < log.len() && log.ends_with(&got[same..]), "a gap, then the rest");
        assert!(skipped > 0 && skipped < total);
    });
}

/// Reads the container's stdin until it has `want` (or ends, for an empty `want`).
fn expect_stdin(fd: &std::os::fd::OwnedFd, want: &[u8]) {
    use std::os::fd::AsFd;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < want.len() || want.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the container's stdin got {got:?}, not {want:?}"
        );
        let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8)).unwrap_or(0) == 0 {
            continue;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the container's stdin: {e}"),
        }
    }
    assert_eq!(got, want);
}

#[test]
fn input_goes_on_through_a_dropped_connection() {
    within(60, || {
        use std::io::Write;
        let dir = temp_dir("attach-input");
        let mut sb = Sb::start(Opts::default());
        let proxy = Proxy::start(&dir.join("proxy.sock"), &sb.socket);
        let mut attach = Command::new(BIN)
            .args(["attach", proxy.path.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut typed = attach.stdin.take().unwrap();
        let stdin = sb.stdin.take().unwrap();
        typed.write_all(b"one\n").unwrap();
        expect_stdin(&stdin, b"one\n");
        // Both connections drop; what is written next goes through the new ones.
        proxy.drop_connections();
        typed.write_all(b"two\n").unwrap();
        expect_stdin(&stdin, b"two\n");
        // The end of input closes the container's stdin.
        drop(typed);
        expect_stdin(&stdin, b"");
        sb.close_output();
        let out = attach.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(sb.wait(20).success());
    });
}

#[test]
fn a_container_that_ended_before_the_input_side_connected_still_shows_its_output() {
    within(30, || {
        use std::io::Write;
        use switchboard::wire::Format;
        use switchboard::wire::message::mesos::agent::ProcessIo;
        use switchboard::wire::message::mesos::agent::process_io::{Data, Type, data};
        let dir = temp_dir("attach-ended");
        let path = dir.join("sb.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A switchboard whose container ended at once: it answers the output request,
        // then stops listening (as ours does once its clients have all the output)
        // before attach's input side connects.
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the request ended early");
                req.extend_from_slice(&buf[..n]);
            }
            drop(listener);
            let pio = ProcessIo {
                r#type: Some(Type::Data as i32),
                data: Some(Data {
                    r#type: Some(data::Type::Stdout as i32),
                    data: Some(b"hi\n".to_vec()),
                }),
                control: None,
            };
            let rec = switchboard::wire::message::record(Format::Protobuf, &pio);
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/recordio\r\n\
                Message-Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
            out.extend_from_slice(format!("{:x}\r\n", rec.len()).as_bytes());
            out.extend_from_slice(&rec);
            out.extend_from_slice(b"\r\n0\r\n\r\n");
            s.write_all(&out).unwrap();
        });
        let attach = Attach::start(&[path.to_str().unwrap()], false);
        let (status, out, err) = attach.finish();
        server.join().unwrap();
        assert!(status.success(), "{status}: {}", String::from_utf8_lossy(&err));
        assert_eq!(out, b"hi\n");
    });
}
