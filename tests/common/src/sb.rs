//! A real `mesos-io-switchboard` process started the way a Mesos agent starts it: the
//! container-side fds inherited (3, 4, 5; one PTY master at 3 in TTY mode), the logger
//! on fds 1 and 2, and the agent's sorted `--name=value` argv including `--help=false`.

use std::os::fd::AsFd;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::os::{pipe, socket_pair};

/// A binary of the package under test. Cargo builds a package's binaries before its
/// integration tests and benchmarks, into the directory above the one that holds their
/// executables (`target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(path.exists(), "{} is not built", path.display());
    path
}

/// The drop-in, `mesos-io-switchboard`.
pub fn drop_in() -> PathBuf {
    binary("mesos-io-switchboard")
}

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
    /// `/dev/null` (one descriptor, read-write) is the stderr source and both loggers,
    /// as in Mesos's AttachInput test; stdout still comes from a pipe.
    pub devnull: bool,
    /// What the loggers (fds 1 and 2) are.
    pub loggers: Loggers,
    /// Start it under a seccomp filter that refuses io_uring so.
    pub refuse_io_uring: Option<crate::engine::Refuse>,
}

/// What the loggers (the server's fds 1 and 2) are; the test reads their other ends.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Loggers {
    #[default]
    Pipes,
    /// Stream socket pairs.
    Sockets,
    /// Terminals (PTY slaves in raw mode, read at their masters).
    Terminals,
}

/// A PTY in raw mode (bytes pass unchanged): its master, and its slave.
fn raw_pty() -> (OwnedFd, OwnedFd) {
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut attrs = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut attrs);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &attrs).unwrap();
    (pty.master, pty.slave)
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
    /// A fresh directory, private to us (mode 0700) as a runtime directory must be.
    pub fn new(tag: &str) -> Runtime {
        use std::os::unix::fs::PermissionsExt;
        let path = temp_dir(tag);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        Runtime { path }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for dir in [self.path.clone(), self.path.join("switchboard")] {
            for entry in switchboard::agent::supervisor::list(&dir).unwrap_or_default() {
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
                let source: OwnedFd = if opts.devnull {
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .unwrap()
                        .into()
                } else {
                    let (r, w) = pipe(1 << 20);
                    stderr = Some(w);
                    r
                };
                mappings.push(FdMapping {
                    parent_fd: source,
                    child_fd: 5,
                });
            }
        }
        let ((out_r, out_w), (err_r, err_w)) = match opts.loggers {
            Loggers::Sockets => (socket_pair(), socket_pair()),
            Loggers::Pipes => (pipe(1 << 20), pipe(1 << 20)),
            Loggers::Terminals => (raw_pty(), raw_pty()),
        };
        let (from_out, from_err, to_stdin) = if opts.tty { (3, 3, 3) } else { (4, 5, 3) };
        let (to_out, to_err) = if opts.devnull { (5, 5) } else { (1, 2) };
        let mut args = Vec::new();
        if let Some(h) = opts.heartbeat {
            args.push(format!("--heartbeat_interval={h}"));
        }
        args.push("--help=false".to_string());
        args.push(format!("--socket_address={}", socket.display()));
        args.push(format!("--stderr_from_fd={from_err}"));
        args.push(format!("--stderr_to_fd={to_err}"));
        args.push(format!("--stdin_to_fd={to_stdin}"));
        args.push(format!("--stdout_from_fd={from_out}"));
        args.push(format!("--stdout_to_fd={to_out}"));
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
                c.arg(format!("--nofile={n}:{n}")).arg(drop_in());
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
                ])
                .arg(drop_in());
                c
            }
            (None, None) => Command::new(drop_in()),
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        cmd.fd_mappings(mappings).unwrap();
        if let Some(how) = opts.refuse_io_uring {
            crate::engine::refuse_io_uring(&mut cmd, how);
        }
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

    /// Sends an input request carrying `data` and its acknowledgement; its status.
    pub fn send_input(&self, data: &[u8]) -> u16 {
        use crate::http::*;
        use std::io::Write;
        let mut s = self.connect();
        let mut req = input_head(true);
        req.extend(record(FIRST_RECORD));
        for piece in data.chunks(4096) {
            req.extend(record(&stdin_record(piece)));
        }
        req.extend_from_slice(LAST_CHUNK);
        s.write_all(&req).unwrap();
        let mut rest = Vec::new();
        let status = read_response(&mut s, &mut rest).unwrap().status;
        s.write_all(&ack_request(true)).unwrap();
        assert_eq!(read_response(&mut s, &mut rest).unwrap().status, 200);
        status
    }

    /// Attaches an output client and reads its response head: the connection, and what
    /// came after the head.
    pub fn attach_output(&self, protobuf: bool) -> (UnixStream, Vec<u8>) {
        use std::io::Write;
        let mut s = self.connect();
        s.write_all(&crate::http::output_request(protobuf)).unwrap();
        let mut rest = Vec::new();
        let (status, _) = crate::http::read_head(&mut s, &mut rest).expect("a response head");
        assert_eq!(status, 200);
        (s, rest)
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

/// Runs `switchboard ARGS --runtime-dir RUNTIME` to its end, stdin empty.
pub fn cli(runtime: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(binary("switchboard"))
        .args(args)
        .arg("--runtime-dir")
        .arg(runtime)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}
