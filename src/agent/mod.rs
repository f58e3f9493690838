//! The agent side: launching a switchboard for a container and keeping track of it
//! (docs/protocol.md §7 describes what Mesos's agent does; this is ours).
//!
//! Each container gets a directory under the runtime directory holding its socket, its
//! logs, the switchboard's own diagnostics, and `info.json`: what was launched, written
//! atomically (temporary file, fsync, rename), so a later process can find it again.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use command_fds::{CommandFdExt, FdMapping};
use serde_json::{Value, json};

pub mod cri;
pub mod dirs;
mod exit;
mod listing;
pub mod supervisor;

pub use exit::{EndWatch, ExitRecord};
pub use supervisor::{Ended, ProcessId, Recovery, Supervisor, SupervisorError, Timeouts, boot_id};

/// The runtime directory: `$XDG_RUNTIME_DIR/switchboard` when that is set, else
/// `/run/switchboard` for root and `/tmp/switchboard-$UID` for others.
pub fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("switchboard"),
        _ => {
            let uid = nix::unistd::getuid();
            if uid.is_root() {
                PathBuf::from("/run/switchboard")
            } else {
                PathBuf::from(format!("/tmp/switchboard-{uid}"))
            }
        }
    }
}

/// What was launched for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub id: String,
    pub tty: bool,
    pub command: Vec<String>,
    pub socket: PathBuf,
    pub server_pid: i32,
    /// The server's start time (clock ticks after boot) and the boot: with its pid, they
    /// name the process even after the pid is reused.
    pub server_start: Option<u64>,
    pub boot_id: String,
    pub container_pid: Option<i32>,
    pub container_start: Option<u64>,
    /// Seconds since the epoch.
    pub created: u64,
    pub stdout_log: PathBuf,
    /// `None` with a TTY: both streams are logged as stdout; and with `cri`.
    pub stderr_log: Option<PathBuf>,
    /// The logs are in the CRI format: `stdout_log` is the current file of both streams,
    /// rotated beside it (see [`cri`]).
    pub cri: bool,
}

impl Info {
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "tty": self.tty,
            "command": self.command,
            "socket": self.socket,
            "server_pid": self.server_pid,
            "server_start": self.server_start,
            "boot_id": self.boot_id,
            "container_pid": self.container_pid,
            "container_start": self.container_start,
            "created": self.created,
            "stdout_log": self.stdout_log,
            "stderr_log": self.stderr_log,
            "log_format": if self.cri { "cri" } else { "raw" },
        })
    }

    fn from_json(v: &Value) -> Option<Info> {
        let path = |k: &str| v.get(k).and_then(Value::as_str).map(PathBuf::from);
        Some(Info {
            id: v.get("id")?.as_str()?.to_string(),
            tty: v.get("tty")?.as_bool()?,
            command: v
                .get("command")?
                .as_array()?
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
            socket: path("socket")?,
            server_pid: i32::try_from(v.get("server_pid")?.as_i64()?).ok()?,
            server_start: v.get("server_start").and_then(Value::as_u64),
            boot_id: v.get("boot_id").and_then(Value::as_str).unwrap_or_default().to_string(),
            container_pid: v
                .get("container_pid")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok()),
            container_start: v.get("container_start").and_then(Value::as_u64),
            created: v.get("created")?.as_u64()?,
            stdout_log: path("stdout_log")?,
            stderr_log: path("stderr_log"),
            cri: v.get("log_format").and_then(Value::as_str) == Some("cri"),
        })
    }

    /// The switchboard process, if it was recorded in this boot.
    pub fn server(&self) -> Option<ProcessId> {
        (self.boot_id == boot_id()).then_some(ProcessId {
            pid: self.server_pid,
            start_time: self.server_start?,
        })
    }

    /// The container process, if it was recorded in this boot.
    pub fn container(&self) -> Option<ProcessId> {
        (self.boot_id == boot_id()).then_some(ProcessId {
            pid: self.container_pid?,
            start_time: self.container_start?,
        })
    }

    /// Whether the container runs: its process group, or its switchboard (whose output
    /// a background process of the container may hold open).
    pub fn running(&self) -> bool {
        self.server().is_some_and(|s| s.is_alive()) || self.container().is_some_and(|c| c.group_alive())
    }

    /// Reads a container directory's `info.json`.
    pub fn load(dir: &Path) -> io::Result<Info> {
        dirs::check_owned_dir(dir)?;
        let text = dirs::read_owned(&dir.join("info.json"))?;
        let v: Value = serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Info::from_json(&v).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "info.json lacks fields"))
    }

    /// The info of the container whose socket is `socket`, if it is one of ours.
    pub fn next_to_socket(socket: &Path) -> Option<Info> {
        Info::load(socket.parent()?).ok().filter(|i| i.socket == socket)
    }

    /// Writes `info.json` into `dir` atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> io::Result<()> {
        write_atomically(&dir.join("info.json"), self.to_json().to_string().as_bytes())
    }
}

/// Writes a file so that readers see the old or the new contents, never a mix.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let temp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&temp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A fresh container id: 12 hex digits from the kernel's random source.
pub fn new_id() -> io::Result<String> {
    crate::sys::random_hex(6)
}

/// What to launch.
#[derive(Debug, Clone)]
pub struct Launch {
    pub id: Option<String>,
    pub tty: bool,
    pub runtime_dir: PathBuf,
    /// The socket path (default: `<container dir>/sock`).
    pub socket: Option<PathBuf>,
    /// Where the logs go (default: the container directory).
    pub log_dir: Option<PathBuf>,
    /// Hold the output until the first client attaches.
    pub wait_for_connection: bool,
    pub heartbeat: Option<Duration>,
    /// The container's command, recorded in `info.json`.
    pub command: Vec<String>,
    /// The `switchboard` binary that serves.
    pub server_exe: PathBuf,
    /// Log in the CRI format (through pipes the caller drains with [`cri::drain`]) rather
    /// than raw bytes into files the switchboard appends to.
    pub cri: bool,
    /// With `tty`, the terminal's size (rows, columns) from its creation: the program
    /// starts at the size it will be shown at, instead of 0 x 0 until a client attaches.
    pub window: Option<(u16, u16)>,
}

/// The container's ends of its stdio (the same PTY slave three times with a TTY).
#[derive(Debug)]
pub struct ContainerIo {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// With CRI logs: the read ends of the pipes the switchboard logs stdout (and stderr,
    /// without a TTY) into, to be drained with [`cri::drain`] into the container's log.
    pub logs: Option<(OwnedFd, Option<OwnedFd>)>,
}

/// A launched switchboard, ready for its container.
pub struct Prepared {
    pub info: Info,
    pub dir: PathBuf,
    pub server: Child,
    pub io: ContainerIo,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// Creates the container's directory, pipes or PTY and log files, and starts its
/// switchboard in a session of its own with only its descriptors inherited; returns once
/// the socket accepts connections. A failure leaves nothing behind.
pub fn prepare(launch: &Launch) -> io::Result<Prepared> {
    let id = match &launch.id {
        Some(id) => id.clone(),
        None => new_id()?,
    };
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{id}' cannot name a container"),
        ));
    }
    dirs::make_private(&launch.runtime_dir)?;
    let dir = launch.runtime_dir.join(&id);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            io::Error::new(
                e.kind(),
                format!("a container named '{id}' exists already ({})", dir.display()),
            )
        } else {
            e
        }
    })?;
    match launch_in(launch, &id, &dir) {
        Ok(p) => Ok(p),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn launch_in(launch: &Launch, id: &str, dir: &Path) -> io::Result<Prepared> {
    let socket = launch.socket.clone().unwrap_or_else(|| dir.join("sock"));
    let logs = Logs::open(launch, id, dir)?;
    let mut cmd = Command::new(&launch.server_exe);
    cmd.arg("serve").arg("--socket").arg(&socket);
    cmd.arg("--log-file").arg(dir.join("switchboard.log"));
    let mut mappings = Vec::new();
    let mut io = container_stdio(launch.tty, launch.window, &mut cmd, &mut mappings)?;
    io.logs = logs.readers;
    cmd.args(["--stdout-log-fd", "6", "--stderr-log-fd", "7"]);
    mappings.push(FdMapping {
        parent_fd: logs.stdout_fd,
        child_fd: 6,
    });
    mappings.push(FdMapping {
        parent_fd: logs.stderr_fd,
        child_fd: 7,
    });
    if launch.wait_for_connection {
        cmd.arg("--wait-for-connection");
    }
    if let Some(h) = launch.heartbeat {
        cmd.arg("--heartbeat").arg(format!("{}ms", h.as_millis()));
    }
    // A file left at the socket's path by an earlier server: the new one replaces it
    // once it listens, so readiness is a different file there, not just a file.
    let stale = file_id(&socket);
    let mut server = spawn_server(cmd, mappings)?;
    let info = Info {
        id: id.to_string(),
        tty: launch.tty,
        command: launch.command.clone(),
        socket,
        server_pid: server.id() as i32,
        server_start: supervisor::start_time(server.id() as i32),
        boot_id: boot_id(),
        container_pid: None,
        container_start: None,
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        stdout_log: logs.stdout,
        stderr_log: logs.stderr,
        cri: launch.cri,
    };
    if let Err(e) = wait_for_socket(&info.socket, stale, &mut server, dir).and_then(|()| info.save(dir)) {
        let _ = server.kill();
        let _ = server.wait();
        return Err(e);
    }
    Ok(Prepared {
        info,
        dir: dir.to_path_buf(),
        server,
        io,
    })
}

/// A container's log files, opened for the switchboard to append to.
struct Logs {
    stdout: PathBuf,
    stdout_fd: OwnedFd,
    /// None with a TTY (its output is all stdout); its descriptor is then /dev/null.
    stderr: Option<PathBuf>,
    stderr_fd: OwnedFd,
    /// With CRI logs, the pipes' read ends (the switchboard has the write ends).
    readers: Option<(OwnedFd, Option<OwnedFd>)>,
}

impl Logs {
    /// Opens (creating them, mode 0600) the logs under `launch.log_dir` as `<id>.stdout.log`,
    /// or in the container's directory as `stdout.log`.
    fn open(launch: &Launch, id: &str, dir: &Path) -> io::Result<Logs> {
        let log_dir = launch.log_dir.clone().unwrap_or_else(|| dir.to_path_buf());
        if launch.log_dir.is_some() {
            dirs::make_safe(&log_dir)?;
        }
        let log = |name: &str| -> io::Result<(PathBuf, OwnedFd)> {
            let path = log_dir.join(if launch.log_dir.is_some() {
                format!("{id}.{name}")
            } else {
                name.to_string()
            });
            let f = dirs::open_log(&path)?;
            Ok((path, f.into()))
        };
        if launch.cri {
            return Logs::pipes(launch, id, dir);
        }
        let (stdout, stdout_fd) = log("stdout.log")?;
        let (stderr, stderr_fd) = if launch.tty {
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            (None, null.into())
        } else {
            let (path, fd) = log("stderr.log")?;
            (Some(path), fd)
        };
        Ok(Logs {
            stdout,
            stdout_fd,
            stderr,
            stderr_fd,
            readers: None,
        })
    }

    /// CRI logs: the switchboard logs into pipes, drained into `container.log` in the
    /// container's directory (or in `<log dir>/<id>/`).
    fn pipes(launch: &Launch, id: &str, dir: &Path) -> io::Result<Logs> {
        let log_dir = match &launch.log_dir {
            Some(d) => {
                dirs::make_safe(d)?;
                let own = d.join(id);
                dirs::make_private(&own)?;
                own
            }
            None => dir.to_path_buf(),
        };
        let (out_r, out_w) = pipe()?;
        let (stderr_fd, err_r) = if launch.tty {
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            (null.into(), None)
        } else {
            let (r, w) = pipe()?;
            (w, Some(r))
        };
        Ok(Logs {
            stdout: log_dir.join(cri::FILE),
            stdout_fd: out_w,
            stderr: None,
            stderr_fd,
            readers: Some((out_r, err_r)),
        })
    }
}

/// Makes the container's stdio (three pipes raised to 1 MiB, or a PTY) and passes the
/// switchboard's ends to `cmd` as descriptors 3 to 5 (3 alone for a PTY master); returns
/// the container's ends.
fn container_stdio(
    tty: bool,
    window: Option<(u16, u16)>,
    cmd: &mut Command,
    mappings: &mut Vec<FdMapping>,
) -> io::Result<ContainerIo> {
    if tty {
        let pty = crate::tty::open()?;
        if let Some((rows, columns)) = window {
            crate::tty::set_window_size(std::os::fd::AsFd::as_fd(&pty.master), rows, columns)?;
        }
        cmd.args(["--pty-fd", "3"]);
        mappings.push(FdMapping {
            parent_fd: pty.master,
            child_fd: 3,
        });
        return Ok(ContainerIo {
            stdin: pty.slave.try_clone()?,
            stdout: pty.slave.try_clone()?,
            stderr: pty.slave,
            logs: None,
        });
    }
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    for r in [&stdout_r, &stderr_r] {
        let _ = crate::sys::grow_pipe(r, crate::config::PIPE_BYTES);
    }
    cmd.args(["--stdin-fd", "3", "--stdout-fd", "4", "--stderr-fd", "5"]);
    for (parent_fd, child_fd) in [(stdin_w, 3), (stdout_r, 4), (stderr_r, 5)] {
        mappings.push(FdMapping { parent_fd, child_fd });
    }
    Ok(ContainerIo {
        stdin: stdin_r,
        stdout: stdout_w,
        stderr: stderr_w,
        logs: None,
    })
}

/// Starts the switchboard in a session of its own, with only `mappings` inherited, its
/// stdin and stdout on /dev/null and its stderr a pipe to us (read only if it cannot
/// start: it says why there).
fn spawn_server(mut cmd: Command, mappings: Vec<FdMapping>) -> io::Result<Child> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let last_fd = mappings.iter().map(|m| m.child_fd).max().unwrap_or(2);
    cmd.fd_mappings(mappings).map_err(|e| io::Error::other(e.to_string()))?;
    crate::tty::new_session(&mut cmd, false, last_fd);
    // `cmd` (and the parent's copies of the mapped descriptors) goes once it spawned.
    cmd.spawn()
}

/// The device and inode of the file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Waits until the switchboard's socket appears (it is renamed into place once
/// listening): a file at its path other than `stale`, the one there before.
fn wait_for_socket(socket: &Path, stale: Option<(u64, u64)>, server: &mut Child, dir: &Path) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if file_id(socket).is_some_and(|id| Some(id) != stale) {
            // Its stderr is only for reasons it could not start.
            drop(server.stderr.take());
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            // Its own words: what it printed, else the last line of its log.
            let mut said = String::new();
            if let Some(mut err) = server.stderr.take() {
                let _ = io::Read::read_to_string(&mut err, &mut said);
            }
            let log = std::fs::read_to_string(dir.join("switchboard.log")).unwrap_or_default();
            let last = match said.trim() {
                "" => log.lines().last().unwrap_or("it said nothing").to_string(),
                said => said.to_string(),
            };
            return Err(io::Error::other(format!(
                "the switchboard exited ({status}) before listening: {last}"
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the switchboard did not listen within 10 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips() {
        let info = Info {
            id: "abc".into(),
            tty: true,
            command: vec!["bash".into(), "-l".into()],
            socket: "/run/switchboard/abc/sock".into(),
            server_pid: 42,
            server_start: Some(1234),
            boot_id: "b".into(),
            container_pid: Some(43),
            container_start: Some(1235),
            created: 1_790_000_000,
            stdout_log: "/run/switchboard/abc/stdout.log".into(),
            stderr_log: None,
            cri: true,
        };
        assert_eq!(Info::from_json(&info.to_json()), Some(info));
    }

    #[test]
    fn ids_are_hex() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
