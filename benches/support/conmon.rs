//! conmon as a baseline (tuning.md, "End to end"), driven without a container: this benchmark's own
//! binary, started again by conmon with [`RUNTIME_ENV`] set, is a fake OCI runtime. Its
//! `create` starts the "container", `sleep infinity` with conmon's stdio (or, with
//! `--console-socket`, a PTY whose master it hands to conmon), and writes its pid. The
//! benchmark then opens the container's stdout through `/proc/<pid>/fd/1` and writes
//! into conmon's pipe (or PTY) itself, as it does for the other relays. Attach clients
//! connect to `<bundle>/attach` (SOCK_SEQPACKET; each message is a stream byte and up to
//! 8192 bytes of output).

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use nix::unistd::Pid;

/// Set (to anything) in the environment of conmon, so that it reaches the runtime.
pub const RUNTIME_ENV: &str = "SB_E2E_FAKE_OCI_RUNTIME";

/// If this process is the fake runtime (conmon started it), does what it was asked and
/// exits.
pub fn dispatch() {
    if std::env::var_os(RUNTIME_ENV).is_none() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let verb = args
        .iter()
        .find(|a| matches!(a.as_str(), "create" | "start" | "state" | "kill" | "delete"));
    match verb.map(String::as_str) {
        Some("create") => {
            let pid_file = flag("--pid-file").expect("create without --pid-file");
            let mut container = Command::new("sleep");
            container.arg("infinity").env_remove(RUNTIME_ENV);
            if let Some(console) = flag("--console-socket") {
                let pty = switchboard::tty::open().expect("openpty");
                let socket = UnixStream::connect(console).expect("console socket");
                sendmsg::<UnixAddr>(
                    socket.as_raw_fd(),
                    &[IoSlice::new(b"/dev/ptmx")],
                    &[ControlMessage::ScmRights(&[pty.master.as_raw_fd()])],
                    MsgFlags::empty(),
                    None,
                )
                .expect("send the PTY master to conmon");
                let slave = || Stdio::from(pty.slave.try_clone().unwrap());
                container.stdin(slave()).stdout(slave()).stderr(slave());
            }
            // Not waited for: this runtime exits now, and conmon (a subreaper) reaps it.
            #[allow(clippy::zombie_processes)]
            let child = container.spawn().expect("start the container");
            std::fs::write(pid_file, child.id().to_string()).expect("write the pid file");
        }
        Some("state") => {
            let id = args.last().map_or("", String::as_str);
            println!("{{\"ociVersion\":\"1.0.2\",\"id\":\"{id}\",\"status\":\"running\"}}");
        }
        _ => {}
    }
    std::process::exit(0);
}

/// conmon's version line, when it is on the PATH.
pub fn installed() -> Option<String> {
    let out = Command::new("conmon").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or("conmon").trim().to_string())
}

/// A running conmon with its container.
pub struct Conmon {
    pub pid: i32,
    container: i32,
    dir: PathBuf,
    pub attach: PathBuf,
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "conmon: timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Conmon {
    /// Starts conmon (pinned to `cpu`) in `dir` with `--log-path log` (`none:`, or
    /// `k8s-file:/dev/null` to pay its line formatting without a disk). Returns it and the
    /// container's output end: its stdout pipe (raised to `pipe_size`), or its PTY's slave.
    pub fn start(dir: &Path, pty: bool, log: &str, cpu: usize, pipe_size: usize) -> (Conmon, OwnedFd) {
        let bundle = dir.join("b");
        let exits = dir.join("e");
        for d in [&bundle, &exits, &dir.join("s")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let runtime = std::env::current_exe().unwrap();
        let mut cmd = Command::new("conmon");
        let path = |p: &Path| p.to_str().unwrap().to_string();
        cmd.args(["--cid", "e2e", "--cuuid", "e2e", "--name", "e2e"])
            .args(["--runtime", &path(&runtime), "--bundle", &path(&bundle)])
            .args(["--socket-dir-path", &path(&dir.join("s"))])
            .args(["--container-pidfile", &path(&bundle.join("ctr.pid"))])
            .args(["--conmon-pidfile", &path(&bundle.join("conmon.pid"))])
            .args(["--exit-dir", &path(&exits), "--persist-dir", &path(&bundle)])
            .args(["--log-path", log])
            .env(RUNTIME_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if pty {
            cmd.arg("--terminal");
        }
        // A thread pinned to `cpu` starts it: the mask is inherited through its forks.
        let status = std::thread::spawn(move || {
            super::relays::pin(0, cpu);
            cmd.status().expect("run conmon")
        })
        .join()
        .unwrap();
        assert!(status.success(), "conmon exited with {status}");
        let mut pid = None;
        wait_for("its pid file", || {
            pid = read_pid(&bundle.join("conmon.pid"));
            pid.is_some()
        });
        let mut container = None;
        wait_for("the container's pid", || {
            container = read_pid(&bundle.join("ctr.pid"));
            container.is_some()
        });
        let attach = bundle.join("attach");
        wait_for("its attach socket", || {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(&attach).is_ok_and(|m| m.file_type().is_socket())
        });
        let (pid, container) = (pid.unwrap(), container.unwrap());
        let out: OwnedFd = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(format!("/proc/{container}/fd/1"))
            .expect("open the container's stdout")
            .into();
        if !pty {
            switchboard::sys::grow_pipe(out.as_fd(), pipe_size).unwrap();
        }
        let conmon = Conmon {
            pid,
            container,
            dir: dir.to_path_buf(),
            attach,
        };
        (conmon, out)
    }

    /// Sockets conmon holds open (its attach clients among them).
    pub fn sockets(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter(|l| l.to_string_lossy().starts_with("socket:"))
                .count()
        })
    }

    /// Its user + system CPU seconds so far.
    pub fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // The fields after the command name (which may hold spaces) start with the state,
        // the third field: utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        (field(14) + field(15)) as f64 / ticks
    }
}

impl Drop for Conmon {
    /// Ends the container (its pid); conmon then sends what is left, closes its attach
    /// clients and exits. Waits for that (SIGKILL after 10 s).
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.container), Signal::SIGKILL);
        let gone = |pid: i32| !Path::new(&format!("/proc/{pid}")).exists();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !gone(self.pid) {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = std::io::stderr().write_all(b"conmon did not exit after its container: killed\n");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
