//! A real `mesos-io-switchboard` process started the way a Mesos agent starts it: the
//! container-side fds inherited (3, 4, 5; one PTY master at 3 in TTY mode), the logger
//! on fds 1 and 2, and the agent's sorted `--name=value` argv including `--help=false`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use switchboard::wire::http::{ChunkedDecoder, Limits};

use super::pipe;

pub const BIN: &str = env!("CARGO_BIN_EXE_mesos-io-switchboard");

#[derive(Default)]
pub struct Opts {
    pub tty: bool,
    pub wait_for_connection: bool,
    pub heartbeat: Option<&'static str>,
    /// Sources that are regular files with this content (Mesos's AttachOutput test),
    /// instead of pipes.
    pub file_sources: Option<Vec<u8>>,
    /// stdin_to_fd is a regular file (Mesos's AttachInput test).
    pub stdin_file: bool,
    pub extra: Vec<String>,
    /// Start it under `prlimit --nofile=N:N` (a soft and hard limit on descriptors).
    pub nofile: Option<u64>,
    /// Start it as this user (and group), through `setpriv` (the test must be root).
    pub user: Option<u32>,
}

/// A running switchboard and the container side of its fds.
pub struct Sb {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// What the container reads from its stdin (pipe read end, or the PTY slave).
    pub stdin: Option<OwnedFd>,
    /// What the container writes to (pipe write ends, or the PTY slave).
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    pub stdout_log: Arc<Mutex<Vec<u8>>>,
    pub stderr_log: Arc<Mutex<Vec<u8>>>,
    loggers: Vec<std::thread::JoinHandle<()>>,
    /// What the logger does (`LOGGER_*`).
    pub logger: Arc<AtomicU8>,
    pub stdin_path: Option<PathBuf>,
}

/// What the logger (the reader of fds 1 and 2) does: reads, pauses, or closes its pipes.
pub const LOGGER_READS: u8 = 0;
pub const LOGGER_PAUSED: u8 = 1;
pub const LOGGER_CLOSED: u8 = 2;

fn collect(fd: OwnedFd, control: Arc<AtomicU8>) -> (Arc<Mutex<Vec<u8>>>, std::thread::JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let h = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match control.load(Ordering::SeqCst) {
                LOGGER_CLOSED => break,
                LOGGER_PAUSED => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                _ => {}
            }
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(20u8)).unwrap_or(0) == 0 {
                continue;
            }
            match nix::unistd::read(&fd, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });
    (out, h)
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("sb-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary runtime directory that, when the test ends however it ends, SIGKILLs
/// every switchboard and container recorded under it (directly, or under the
/// `switchboard/` directory `run` makes in `$XDG_RUNTIME_DIR`), by pid and start time,
/// and is removed.
pub struct Runtime {
    pub path: PathBuf,
}

impl Runtime {
    pub fn new(tag: &str) -> Runtime {
        Runtime { path: temp_dir(tag) }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for dir in [self.path.clone(), self.path.join("switchboard")] {
            for entry in switchboard::agent::supervisor::list(&dir) {
                for process in [entry.info.container(), entry.info.server()].into_iter().flatten() {
                    process.signal(nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Sb {
    pub fn start(opts: Opts) -> Sb {
        let dir = temp_dir("server");
        let socket = dir.join("sock");
        let mut mappings = Vec::new();
        let (mut stdin, mut stdout, mut stderr, mut stdin_path) = (None, None, None, None);
        if opts.tty {
            let pty = switchboard::tty::open().unwrap();
            stdin = Some(pty.slave.try_clone().unwrap());
            stdout = Some(pty.slave.try_clone().unwrap());
            stderr = Some(pty.slave);
            mappings.push(FdMapping {
                parent_fd: pty.master,
                child_fd: 3,
            });
        } else {
            if opts.stdin_file {
                let path = dir.join("stdin");
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .unwrap();
                mappings.push(FdMapping {
                    parent_fd: f.into(),
                    child_fd: 3,
                });
                stdin_path = Some(path);
            } else {
                let (r, w) = pipe(1 << 16);
                stdin = Some(r);
                mappings.push(FdMapping {
                    parent_fd: w,
                    child_fd: 3,
                });
            }
            if let Some(content) = &opts.file_sources {
                for (name, fd) in [("out", 4), ("err", 5)] {
                    let path = dir.join(name);
                    std::fs::write(&path, content).unwrap();
                    let f = std::fs::File::open(&path).unwrap();
                    mappings.push(FdMapping {
                        parent_fd: f.into(),
                        child_fd: fd,
                    });
                }
            } else {
                let (r, w) = pipe(1 << 20);
                stdout = Some(w);
                mappings.push(FdMapping {
                    parent_fd: r,
                    child_fd: 4,
                });
                let (r, w) = pipe(1 << 20);
                stderr = Some(w);
                mappings.push(FdMapping {
                    parent_fd: r,
                    child_fd: 5,
                });
            }
        }
        let (out_r, out_w) = pipe(1 << 20);
        let (err_r, err_w) = pipe(1 << 20);
        let (from_out, from_err, to_stdin) = if opts.tty { (3, 3, 3) } else { (4, 5, 3) };
        let mut args = Vec::new();
        if let Some(h) = opts.heartbeat {
            args.push(format!("--heartbeat_interval={h}"));
        }
        args.push("--help=false".to_string());
        args.push(format!("--socket_address={}", socket.display()));
        args.push(format!("--stderr_from_fd={from_err}"));
        args.push("--stderr_to_fd=2".to_string());
        args.push(format!("--stdin_to_fd={to_stdin}"));
        args.push(format!("--stdout_from_fd={from_out}"));
        args.push("--stdout_to_fd=1".to_string());
        args.push(format!("--tty={}", opts.tty));
        args.push(format!("--wait_for_connection={}", opts.wait_for_connection));
        args.extend(opts.extra.iter().cloned());
        if std::env::var_os("SB_TEST_LOG").is_some() {
            args.push(format!("--log_file={}", dir.join("diagnostics.log").display()));
            args.push("--log_level=debug".into());
        }
        let mut cmd = match (opts.nofile, opts.user) {
            (Some(n), _) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg(BIN);
                c
            }
            (None, Some(uid)) => {
                // Its directory becomes the user's, so that it can bind its socket there.
                nix::unistd::chown(&dir, Some(uid.into()), Some(uid.into())).unwrap();
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    "--",
                    BIN,
                ]);
                c
            }
            (None, None) => Command::new(BIN),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        cmd.fd_mappings(mappings).unwrap();
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let logger = Arc::new(AtomicU8::new(LOGGER_READS));
        let (stdout_log, h1) = collect(out_r, logger.clone());
        let (stderr_log, h2) = collect(err_r, logger.clone());
        let sb = Sb {
            child,
            dir,
            socket,
            stdin,
            stdout,
            stderr,
            stdout_log,
            stderr_log,
            loggers: vec![h1, h2],
            logger,
            stdin_path,
        };
        sb.wait_for_socket();
        sb
    }

    /// Polls for the final socket path, as the agent does (every 10 ms).
    pub fn wait_for_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket.exists() {
            assert!(Instant::now() < deadline, "the socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Writes as the container, on stdout or stderr.
    pub fn write_stdout(&self, data: &[u8]) {
        write_all(self.stdout.as_ref().unwrap(), data);
    }

    pub fn write_stderr(&self, data: &[u8]) {
        write_all(self.stderr.as_ref().unwrap(), data);
    }

    /// The container exits: its output ends.
    pub fn close_output(&mut self) {
        self.stdout = None;
        self.stderr = None;
    }

    /// Waits for the switchboard to exit and its logger pipes to close.
    pub fn wait(&mut self, secs: u64) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for h in self.loggers.drain(..) {
                    h.join().unwrap();
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the switchboard did not exit within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// The logger stops reading (`LOGGER_PAUSED`), reads again, or closes its pipes.
    pub fn set_logger(&self, state: u8) {
        self.logger.store(state, Ordering::SeqCst);
    }

    /// Whether both logger readers have stopped (and closed their pipes).
    pub fn logger_closed(&self) -> bool {
        self.loggers.iter().all(|h| h.is_finished())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// How many descriptors the server holds.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// CPU time the server used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// The server's resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Sb {
    fn drop(&mut self) {
        self.set_logger(LOGGER_CLOSED);
        // A test that starts a process ends it, by its pid.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::env::var_os("SB_TEST_LOG").is_some() {
            eprintln!("diagnostics kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        data = &data[nix::unistd::write(fd, data).unwrap()..];
    }
}

/// A response: status, headers (names lower-cased), and the body (de-chunked).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response head from `s` (bytes after it stay in `rest`).
pub fn read_head(s: &mut UnixStream, rest: &mut Vec<u8>) -> Option<(u16, Vec<(String, String)>)> {
    switchboard::client::read_head(s, rest)
        .ok()
        .map(|h| (h.status, h.headers))
}

/// Reads a whole response: fixed (`Content-Length`) or chunked to its end.
pub fn read_response(s: &mut UnixStream, rest: &mut Vec<u8>) -> Option<Response> {
    let (status, headers) = read_head(s, rest)?;
    let mut body = Vec::new();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    if chunked {
        let mut d = ChunkedDecoder::new(&Limits::default());
        let mut buf = std::mem::take(rest);
        loop {
            let mut pos = 0;
            let mut done = false;
            while pos < buf.len() {
                let step = d.decode(&buf[pos..]).unwrap();
                pos += step.used;
                body.extend_from_slice(step.data);
                if step.done {
                    done = true;
                    break;
                }
            }
            if done {
                *rest = buf[pos..].to_vec();
                break;
            }
            buf.clear();
            let mut chunk = [0u8; 65536];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return Some(Response { status, headers, body }),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    } else {
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut buf = std::mem::take(rest);
        while buf.len() < len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        body = buf[..len.min(buf.len())].to_vec();
        *rest = buf[len.min(buf.len())..].to_vec();
    }
    Some(Response { status, headers, body })
}

/// Sends `request` on a new connection and reads one response.
pub fn exchange(socket: &Path, request: &[u8]) -> Option<Response> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s, &mut Vec::new())
}

/// A POST with a fixed body and the given extra header lines.
pub fn post(path: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost:\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

pub const OUTPUT_CALL: &[u8] =
    br#"{"type":"ATTACH_CONTAINER_OUTPUT","attach_container_output":{"container_id":{"value":"abc"}}}"#;

/// An output attach by `curl` (JSON records unless `protobuf`), its body thrown away.
pub fn curl_attach(socket: &Path, protobuf: bool) -> Child {
    let records = if protobuf {
        "Message-Accept: application/x-protobuf"
    } else {
        "Message-Accept: application/json"
    };
    Command::new("curl")
        .args(["-s", "-N", "-o", "/dev/null", "-X", "POST", "--unix-socket"])
        .arg(socket)
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Accept: application/recordio",
        ])
        .args(["-H", records, "--data-binary"])
        .arg(std::str::from_utf8(OUTPUT_CALL).unwrap())
        .arg("http://localhost/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The agent's output attach request (JSON records unless `protobuf`).
pub fn output_request(protobuf: bool) -> Vec<u8> {
    let records = if protobuf {
        "application/x-protobuf"
    } else {
        "application/json"
    };
    post(
        "/",
        &[
            "Accept: application/recordio",
            &format!("Message-Accept: {records}"),
            "Content-Type: application/json",
            "Connection: close",
        ],
        OUTPUT_CALL,
    )
}

/// The head of a chunked input request (JSON records).
pub fn input_head(keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "" } else { "Connection: close\r\n" };
    format!(
        "POST / HTTP/1.1\r\nHost:\r\nContent-Type: application/recordio\r\nMessage-Content-Type: application/json\r\n\
         Accept: application/json\r\nTransfer-Encoding: chunked\r\n{conn}\r\n"
    )
    .into_bytes()
}

/// One HTTP chunk.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A RecordIO record of `json`, in its own chunk.
pub fn record(json: &str) -> Vec<u8> {
    chunk(format!("{}\n{json}", json.len()).as_bytes())
}

pub const FIRST_RECORD: &str = r#"{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{"type":"CONTAINER_ID","container_id":{"value":"abc"}}}"#;

pub fn process_io(pio: &str) -> String {
    format!(
        r#"{{"type":"ATTACH_CONTAINER_INPUT","attach_container_input":{{"type":"PROCESS_IO","process_io":{pio}}}}}"#
    )
}

pub fn stdin_record(data: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    process_io(&format!(
        r#"{{"type":"DATA","data":{{"type":"STDIN","data":"{b64}"}}}}"#
    ))
}

pub fn resize_record(rows: u32, columns: u32) -> String {
    process_io(&format!(
        r#"{{"type":"CONTROL","control":{{"type":"TTY_INFO","tty_info":{{"window_size":{{"rows":{rows},"columns":{columns}}}}}}}}}"#
    ))
}

pub fn ack_request(keep_alive: bool) -> Vec<u8> {
    let conn = if keep_alive { "" } else { "Connection: close\r\n" };
    format!("POST /acknowledge_container_input_response HTTP/1.1\r\nHost:\r\nContent-Length: 0\r\n{conn}\r\n")
        .into_bytes()
}
